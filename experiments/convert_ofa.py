r"""Convert an official OFA MobileNetV3 `.pth` supernet into a nat-jax checkpoint.

Usage:
  python -m experiments.convert_ofa --checkpoint=ofa_mbv3_d234_e346_k357_w1.0 \
      --width=1.0 --output=ckpt/ofa_w1.0 [--num_classes=N --seed=0]

Reading the `.pth` needs PyTorch (`pip install torch==2.13.0`). The output
directory is an orbax checkpoint with JSON metadata; load it with
`nat_jax.supernet.load_supernet`. With --num_classes different from the
checkpoint's, the classifier is re-initialised from --seed.
"""

from __future__ import annotations

import jax
from absl import app, flags

from experiments import cli
from nat_jax import pretrained, search_space, supernet

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "OFA .pth file.")
_WIDTH = flags.DEFINE_string("width", None, "Width multiplier: 1.0 or 1.2.")
_OUTPUT = flags.DEFINE_string("output", None, "New output directory.")
_NUM_CLASSES = flags.DEFINE_integer("num_classes", None,
                                    "Classes (default: the checkpoint's).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of a re-initialised classifier.")


def convert(path: str, width: float, output: str, num_classes: int | None = None,
            seed: int = 0) -> dict:
    """Convert and save; returns a summary dict."""
    model, variables = pretrained.load_ofa_checkpoint(
        path, width, num_classes, key=jax.random.key(seed),
        space=search_space.OFA_MBV3)
    supernet.save_supernet(output, model, variables)
    n = sum(x.size for x in jax.tree.leaves(variables["params"]))
    return {"output": output, "width": width, "num_classes": model.num_classes,
            "params": int(n)}


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    for name, flag in (("checkpoint", _CHECKPOINT), ("width", _WIDTH),
                       ("output", _OUTPUT)):
        if flag.value is None:
            raise ValueError(f"--{name} is required.")
    if _WIDTH.value not in ("1.0", "1.2"):
        raise ValueError(f"--width must be 1.0 or 1.2, got {_WIDTH.value!r}.")
    try:
        summary = convert(_CHECKPOINT.value, float(_WIDTH.value), _OUTPUT.value,
                          _NUM_CLASSES.value, _SEED.value)
    except ImportError as err:
        raise ValueError(str(err)) from None
    print(summary)


if __name__ == "__main__":
    cli.run(main)
