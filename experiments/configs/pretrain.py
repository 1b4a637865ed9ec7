"""Supernet pre-training configs (OFA progressive shrinking): `ofa`, `small`, `test`.

Usage:
  python -m experiments.pretrain --config=experiments/configs/pretrain.py:small \\
      --workdir=runs/pretrain_small
  python -m experiments.pretrain --config=experiments/configs/pretrain.py:ofa \\
      --config.dataset=imagenet2012 --config.space=ofa_mbv3 --workdir=runs/ofa

`ofa` holds OFA's published schedules (Cai et al., ICLR 2020, and the released
`train_ofa_net.py`; see shared/reference/ofa_progressive_shrinking.md): the
comment beside each value says where it comes from. `small` is the shipped CPU
run (the full Fashion-MNIST, the `small` space, both widths; far fewer epochs
than OFA). `test` runs a few steps per phase on the embedded data.

Each phase is a ConfigDict under `phases` (run in the order of `phase_order`):
subnets per step, epochs (may be fractional), warm-up epochs, base lr (scaled
by batch_size / 64 as OFA scales per 64-image worker), warm-up start lr (OFA:
the base lr) and the distillation ratio.
"""

import ml_collections

PHASE_ORDER = ("full", "kernel", "depth_1", "depth_2", "expand_1", "expand_2")


def _phase(subnets, epochs, warmup_epochs, base_lr, kd_ratio):
    return ml_collections.ConfigDict(dict(
        subnets=subnets, epochs=float(epochs), warmup_epochs=float(warmup_epochs),
        base_lr=float(base_lr), kd_ratio=float(kd_ratio)))


def get_config(variant: str = "small") -> ml_collections.ConfigDict:
    """Every default of a pre-training run lives here."""
    if variant not in ("ofa", "small", "test"):
        raise ValueError(f"Unknown config variant {variant!r}; use 'ofa', 'small' or "
                         f"'test'.")
    c = ml_collections.ConfigDict()
    c.variant = variant
    c.seed = 0
    c.dataset = "fashion_mnist"         # the source task (Debian package, MIT)
    c.data_dir = ""
    c.space = "small"                   # a registered space or "small"
    c.widths = ()                       # () = every width of the space
    c.resolutions = ()                  # subset of the space's; () = all
    c.num_classes = 0                   # 0 = the dataset's
    c.output = ""                       # supernets go to OUTPUT/w<width>;
                                        # "" = the workdir
    c.batch_size = 64                   # OFA: 64 images per worker
    c.lr_scale_batch = 64               # lr = base_lr * batch_size / this (OFA)
    c.momentum = 0.9                    # OFA run config
    c.nesterov = True                   # OFA run config
    c.weight_decay = 3e-5               # OFA: 3e-5, not on BN / biases
    c.label_smoothing = 0.1             # OFA
    c.dropout_rate = 0.1                # OFA
    c.min_crop_scale = 0.08             # OFA's random resized crop scale
    c.checkpoint_every = 100            # steps
    c.max_steps_per_epoch = 0           # 0 = full epochs
    c.eval_images = 2000                # validation images per corner subnet
    c.calib_images = 2000               # BN re-calibration images (OFA: 2000)
    c.eval_batch_size = 250
    c.test_corners = True               # final top-1 of corner subnets on test
    c.phase_order = PHASE_ORDER
    # OFA's published schedules (paper Sec. 3.2 / Appendix, train_ofa_net.py).
    c.phases = ml_collections.ConfigDict(dict(
        # The teacher: OFA trains the full network first (the released script
        # starts from that checkpoint; its own recipe is not part of it). 180
        # epochs, lr 0.08 per 64 images: OFA's `train_ofa_net` defaults.
        full=_phase(1, 180, 5, 0.08, 0.0),
        kernel=_phase(1, 120, 5, 3e-2, 1.0),     # paper/script: 120 ep, 3e-2, 5
        depth_1=_phase(2, 25, 0, 2.5e-3, 1.0),   # script: d {3,4}, 25 ep, 2.5e-3
        depth_2=_phase(2, 120, 5, 7.5e-3, 1.0),  # script: d {2,3,4}, 120 ep, 7.5e-3
        expand_1=_phase(4, 25, 0, 2.5e-3, 1.0),  # script: e {4,6}, 25 ep, 2.5e-3
        expand_2=_phase(4, 120, 5, 7.5e-3, 1.0), # script: e {3,4,6}, 120 ep, 7.5e-3
    ))
    if variant == "ofa":
        c.space = "ofa_mbv3"
        c.dataset = "imagenet2012"
        c.eval_images = 10000
    if variant == "small":
        # The shipped CPU run (its cost: nat_jax/assets/pretrained/
        # small_fashion_mnist/PROVENANCE.txt): every phase with OFA's options
        # and subnets per step, but a few hundred steps each instead of OFA's
        # 25-120 epochs.
        c.max_steps_per_epoch = 100     # an "epoch" here is 100 steps (6400 images)
        c.checkpoint_every = 50
        c.eval_images = 1000
        c.calib_images = 500
        c.min_crop_scale = 0.25         # OFA's 0.08 crops 28 px items to a few px
        c.phases.full.update(epochs=2.5, warmup_epochs=0.1, base_lr=0.1)
        c.phases.kernel.update(epochs=1.0, warmup_epochs=0.0, base_lr=0.03)
        c.phases.depth_1.update(epochs=0.3, warmup_epochs=0.0, base_lr=0.01)
        c.phases.depth_2.update(epochs=0.6, warmup_epochs=0.0, base_lr=0.02)
        c.phases.expand_1.update(epochs=0.3, warmup_epochs=0.0, base_lr=0.01)
        c.phases.expand_2.update(epochs=0.5, warmup_epochs=0.0, base_lr=0.02)
    if variant == "test":
        c.dataset = "fashion_mnist_mini"
        c.space = "tiny"
        c.resolutions = (32,)           # one compile
        c.batch_size = 16
        c.max_steps_per_epoch = 2
        c.checkpoint_every = 2
        c.eval_images = 32
        c.calib_images = 32
        c.eval_batch_size = 32
        c.test_corners = False
        c.dropout_rate = 0.0
        c.phase_order = ("full", "kernel", "depth_1", "expand_1")
        for name in PHASE_ORDER:
            c.phases[name].update(epochs=1, warmup_epochs=0, base_lr=0.05)
    return c
