"""NAT transfer configs: `paper` (Table 2 / section 4.4), `tiny`, `test`.

`tiny` (the default) is a real transfer sized for a small CPU (its time: the
README's default-run table): the shipped Fashion-MNIST supernets of the
`small` space (both widths, w1.0 and w1.2, the width gene searched) to MNIST
(`mnist_mini`), classifier reset, Algorithm 1 with a working archive of
N = 40. `test` is the
smoke-test size of tests/nat/test_transfer.py.

Usage:
  python -m experiments.transfer                                   # tiny, embedded data
  python -m experiments.transfer --dataset=dtd --workdir=runs/dtd \\
      --config=experiments/configs/transfer.py:paper \\
      --supernet=ckpt/ofa_mbv3_w1.0,ckpt/ofa_mbv3_w1.2
Override any field: --config.search.generations=50 --config.adapt.batch_size=64
(--dataset, --objectives, --supernet, --seed and --latency_table are short for
--config.dataset etc.; they are the same field, with this file's default.)

This file is the only place that holds a default of a transfer run: every
field has the name of the library field it becomes (nat_jax.nat.run_config.plan
passes each one explicitly into a typed TransferPlan; the dataclass defaults
equal this file's, tests/nat/test_run_config.py), and
nat_jax.nat.run_config.validate checks each field's range before anything runs.
"""

import ml_collections


def get_config(variant: str = "tiny") -> ml_collections.ConfigDict:
    """Every default of a transfer run lives here (one place, STYLE.md P2)."""
    if variant not in ("tiny", "paper", "test"):
        raise ValueError(f"Unknown config variant {variant!r}; use 'tiny', 'paper' or "
                         f"'test'.")
    c = ml_collections.ConfigDict()
    c.variant = variant
    c.seed = 0
    c.dataset = "fashion_mnist_mini"
    c.data_dir = ""                    # "" = nat_jax.data.datasets.default_data_dir()
    c.space = "ofa_mbv3"               # or "tiny"
    c.resolutions = ()                 # subset of the space's resolutions; () = all
    c.widths = ()                      # width multipliers searched (gene 2, Sec.
                                       # 3.2; one supernet each), e.g.
                                       # --config.widths=1.0 pins one; () = every
                                       # width of the space
    c.supernet = ""                    # a set DIR with w1.0/, w1.2/ (a transfer
                                       # run's supernet/, a shipped one:
                                       # "pretrained:small_fashion_mnist", any
                                       # cwd), or PATH,PATH: one per width, each
                                       # an orbax dir (experiments.convert_ofa)
                                       # or an official OFA .pth (width from
                                       # its _w1.2 name); "" = random init
    c.compile_cache = True             # persistent XLA cache in WORKDIR/jax_cache:
                                       # resumed runs reuse compiled programs
    c.reset_classifier = True          # section 4.4: "the last linear layer is
                                       # reset" (also when the class count agrees)
    # Objectives, all minimised; top1_error is always first.
    c.objectives = "top1_error,madds"
    c.latency_table = ""               # JSON from experiments.build_latency_table:
                                       # enables the "latency" objective (ms)
    c.baselines = ml_collections.ConfigDict()   # name -> [error %, obj2, ...] for plots

    # evolution.SearchConfig (Algorithms 2-4) plus the outer loop (Algorithm 1).
    c.search = ml_collections.ConfigDict(dict(
        iterations=30,                 # paper Table 2
        archive_update="paper",        # paper: A <- Selection(A u P_t, N) (Alg. 1
                                       # l.11); authors: + K candidates, no cut
        archive_size=300,              # N (Table 2), paper mode: N - 1 uniform
                                       # samples + the smallest subnet to start
        predictor_train_size=100,      # Table 2; top-ranked of A (Algorithm 4);
                                       # 0 = every measured subnet (authors)
        archive_init=100,              # authors mode: uniform samples (+ min, max)
        n_candidates=8,                # authors mode: K per iteration
        pop_size=100,
        generations=100,
        crossover_prob=0.9,
        mutation_prob=0.1,
        mutation_eta=1.0,              # Eq. 2 distribution index
        mutation_variant="paper",      # operators.polynomial_mutation: paper | pymoo
        n_members=500,                 # RBF ensemble (Algorithm 2)
        sample_fraction=0.7,           # samples each member is fitted on
        feature_fraction=0.7,          # features each member sees
        predictor_bounds="space",      # input scaling (paper: unspecified): space =
                                       # gene bounds | data = fitted rows' min-max
        pad_multiple=64,               # archive rows padded to this (fewer compiles)
    ))
    # adaptation.AdaptConfig (Algorithm 5) plus the epoch bookkeeping.
    c.adapt = ml_collections.ConfigDict(dict(
        epochs_per_iter=5,             # paper: 5 epochs per iteration
        warmup_epochs=5,               # per width, before the first evaluation
        batch_size=128,
        lr=0.01,                       # cosine-annealed to lr_end over the whole run
        lr_end=0.0,
        momentum=0.9,
        nesterov=True,                 # OFA's train_ofa_net.py
        weight_decay=3e-5,
        label_smoothing=0.1,
        dropout_rate=0.1,
        floor=0.0,                     # Eq. 3 uniform mixture (0 = Eq. 3 as printed)
        checkpoint_every=200,          # steps
        max_steps_per_epoch=0,         # 0 = full epochs
        exec_mode="switch",            # training step: switch (only the sampled
                                       # subnet's branches) | masked
    ))
    # evaluation.EvalConfig (BN re-calibration + validation top-1/top-5).
    c.eval = ml_collections.ConfigDict(dict(
        batch_size=256,
        calib_images=2000,             # OFA's BN re-calibration set
        calib_batch_size=200,
        subnets_per_call=1,            # subnets per compiled call (vmap)
        cache_bytes=1 << 30,           # keep a resolution's eval batches in memory
    ))
    # The final choice (Appendix C): tradeoff.high_tradeoff + the most accurate.
    c.final = ml_collections.ConfigDict(dict(
        num_tradeoff=4,
        tradeoff_variant="paper",      # paper | authors | all (search/tradeoff.py)
        tradeoff_neighbors=0,          # 0 = the paper's m nearest neighbours
        tradeoff_epsilon=0.125,        # neighbourhood ball of the "authors" variant
    ))

    if variant == "tiny":  # transfer the shipped Fashion-MNIST supernet to MNIST
        c.space = "small"
        c.dataset = "mnist_mini"
        c.supernet = "pretrained:small_fashion_mnist"   # w1.0/ and w1.2/
        c.resolutions = (28,)          # one resolution: one compile per phase
        c.search.update(iterations=4, archive_size=40, predictor_train_size=20,
                        archive_init=12, n_candidates=4,
                        pop_size=32, generations=30, n_members=100)
        c.adapt.update(epochs_per_iter=2, warmup_epochs=4, batch_size=64,
                       lr=0.1, checkpoint_every=50, max_steps_per_epoch=0,
                       dropout_rate=0.0)
        c.eval.update(batch_size=200, calib_images=256, calib_batch_size=128)
        c.final.update(num_tradeoff=3)
    if variant == "test":  # smoke-test size for the end-to-end tests (seconds)
        c.compile_cache = False  # tests share one process: keep its JAX cache
        c.space = "tiny"
        c.resolutions = (32,)
        c.search.update(iterations=2, archive_size=6, predictor_train_size=5,
                        archive_init=4, n_candidates=2,
                        pop_size=8, generations=3, n_members=10)
        c.adapt.update(epochs_per_iter=1, warmup_epochs=1, batch_size=32, lr=0.05,
                       checkpoint_every=4, max_steps_per_epoch=12, dropout_rate=0.0)
        c.eval.update(batch_size=200, calib_images=64, calib_batch_size=32)
        c.final.update(num_tradeoff=2)
    return c
