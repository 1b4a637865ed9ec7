"""NAT transfer configs: `paper` (Table 2 / section 4.4), `tiny` (CPU demo), `test`.

Usage:
  python -m experiments.transfer                                   # tiny, embedded data
  python -m experiments.transfer --dataset=dtd --workdir=runs/dtd \\
      --config=experiments/configs/transfer.py:paper --supernet=ckpt/ofa_mbv3_w1.0
Override any field: --config.search.generations=50 --config.adapt.batch_size=64
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
    c.data_dir = ""                    # "" = nat_jax.data.default_data_dir()
    c.space = "ofa_mbv3"               # or "tiny"
    c.resolutions = ()                 # subset of the space's resolutions; () = all
    c.width = 1.0
    c.supernet = ""                    # orbax dir from experiments.convert_ofa; "" = random
    # Objectives, all minimised; top1_error is always first.
    c.objectives = "top1_error,madds"
    c.latency_table = ""               # JSON from experiments.build_latency_table:
                                       # enables the "latency" objective (ms)
    c.baselines = ml_collections.ConfigDict()   # name -> [error %, obj2, ...] for plots

    c.search = ml_collections.ConfigDict(dict(
        iterations=30,                 # paper Table 2
        archive_init=100,              # uniform samples, plus the min and max subnets
        candidates_per_iter=8,         # K, as the authors' code
        pop_size=100,
        generations=100,
        crossover_prob=0.9,
        mutation_prob=0.1,
        eta_m=1.0,
        ensemble_size=500,
    ))
    c.adapt = ml_collections.ConfigDict(dict(
        epochs_per_iter=5,             # paper: 5 epochs per iteration
        warmup_epochs=5,               # before the first evaluation (new classifier)
        batch_size=128,
        lr=0.01,                       # cosine-annealed to 0 over the whole run
        momentum=0.9,
        weight_decay=3e-5,
        label_smoothing=0.1,
        dropout_rate=0.1,
        checkpoint_every=200,          # steps
        max_steps_per_epoch=0,         # 0 = full epochs
    ))
    c.eval = ml_collections.ConfigDict(dict(
        batch_size=256,
        calib_images=2000,             # OFA's BN re-calibration set
        calib_batch_size=200,
    ))
    c.final = ml_collections.ConfigDict(dict(num_tradeoff=4))

    if variant == "tiny":
        c.space = "tiny"
        c.search.update(iterations=4, archive_init=12, candidates_per_iter=4,
                        pop_size=32, generations=30, ensemble_size=100)
        c.adapt.update(epochs_per_iter=3, warmup_epochs=6, batch_size=64,
                       lr=0.1, checkpoint_every=50, max_steps_per_epoch=0,
                       dropout_rate=0.0)
        c.eval.update(batch_size=200, calib_images=256, calib_batch_size=128)
        c.final.update(num_tradeoff=3)
    if variant == "test":  # smoke-test size for the end-to-end tests (seconds)
        c.space = "tiny"
        c.resolutions = (32,)
        c.search.update(iterations=2, archive_init=4, candidates_per_iter=2,
                        pop_size=8, generations=3, ensemble_size=10)
        c.adapt.update(epochs_per_iter=1, warmup_epochs=1, batch_size=32, lr=0.05,
                       checkpoint_every=4, max_steps_per_epoch=12, dropout_rate=0.0)
        c.eval.update(batch_size=200, calib_images=64, calib_batch_size=32)
        c.final.update(num_tradeoff=2)
    return c
