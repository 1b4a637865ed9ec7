"""Fine-tuning configs: `paper` (NAT section 4.3 recipe) and `tiny` (CPU, seconds).

Usage:
  python -m experiments.finetune --supernet_dir=runs/default --pick=0
  python -m experiments.finetune --supernet_dir=runs/dtd --pick=1 \\
      --config=experiments/configs/finetune.py:paper --config.epochs=300
Override any field: --config.batch_size=64 --config.randaug_magnitude=5

Every field of nat_jax.deploy.finetune.FinetuneConfig is a field here under the same
name (`finetune.make_config` takes each from the config, none from the
dataclass), except `steps` (`steps`, or `epochs` over train + val) and
`warmup_steps` (`warmup_epochs`); `eval_batch_size` and `calib_images` go to
`finetune.finetune`.
"""

import ml_collections


def get_config(variant: str = "tiny") -> ml_collections.ConfigDict:
    """Every default of a fine-tuning run lives here (STYLE.md P2)."""
    if variant not in ("tiny", "paper"):
        raise ValueError(f"Unknown config variant {variant!r}; use 'tiny' or 'paper'.")
    c = ml_collections.ConfigDict()
    c.variant = variant
    c.seed = 0
    c.epochs = 150.0              # over train + val (NAT's full training split)
    c.steps = 0                   # > 0 overrides epochs
    c.batch_size = 128
    c.lr = 0.008                  # peak; EfficientNet's 0.016 per 256 images
    c.warmup_epochs = 3.0
    c.rmsprop_decay = 0.9         # paper 4.3
    c.rmsprop_eps = 1e-3
    c.momentum = 0.9              # paper 4.3
    c.weight_decay = 1e-5         # paper 4.3
    c.bn_momentum = 0.01          # PyTorch convention = TF/paper 0.99
    c.dropout_rate = 0.2          # paper 4.3
    c.drop_connect_rate = 0.2     # paper 4.3 (stochastic depth, linear in depth)
    c.label_smoothing = 0.1
    c.ema_decay = 0.9999          # EMA of weights (0 = off)
    c.randaug_ops = 2             # RandAugment N
    c.randaug_magnitude = 9.0     # RandAugment M (0..10)
    c.checkpoint_every = 1000     # steps
    c.log_every = 100
    c.eval_batch_size = 256
    c.calib_images = 2000         # BN re-calibration of the inherited weights

    if variant == "tiny":
        # CPU-sized: fewer steps, so faster BN/EMA averages and milder RandAugment.
        c.epochs = 0.0
        c.steps = 300             # about 5 epochs of the embedded data
        c.batch_size = 64
        c.lr = 0.01
        c.warmup_epochs = 0.0
        c.bn_momentum = 0.1
        c.ema_decay = 0.99
        c.randaug_magnitude = 5.0
        c.checkpoint_every = 100
        c.log_every = 50
        c.eval_batch_size = 200
        c.calib_images = 256
    return c
