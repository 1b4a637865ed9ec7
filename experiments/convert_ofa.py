r"""Convert official OFA MobileNetV3 `.pth` supernets into a nat-jax supernet set.

Usage:
  python -m experiments.convert_ofa \
      --checkpoint=ofa_mbv3_d234_e346_k357_w1.0,ofa_mbv3_d234_e346_k357_w1.2 \
      --output=ckpt/ofa_mbv3 [--num_classes=N --seed=0]
  python -m experiments.convert_ofa --checkpoint=ofa_mbv3_d234_e346_k357_w1.2 \
      --width=1.2 --output=ckpt/ofa_mbv3          # one width at a time

OFA publishes one supernet per width multiplier (w1.0 and w1.2), and NAT
searches the width as the genotype's second gene (section 3.2). --output is a
supernet set (`nat_jax.model.supernet_set`): each checkpoint is written to
OUTPUT/w<width>/ (an orbax checkpoint with JSON metadata), so the two
commands above, or the first alone, give OUTPUT/w1.0/ and OUTPUT/w1.2/. Give
OUTPUT to `--config.supernet` of experiments.transfer; load one width with
`nat_jax.model.supernet_set.load_width(OUTPUT, 1.2)`. A width folder that already
exists is refused (delete it to convert again). --width (comma-separated, one
per checkpoint) is checked against each file; by default it is read from the
file's channel counts. With --num_classes different from the checkpoint's,
the classifier is re-initialised from --seed. Reading a `.pth` needs PyTorch
(`pip install torch==2.13.0`).
"""

from __future__ import annotations

import pathlib

import jax
from absl import app, flags

from experiments import cli
from nat_jax.model import pretrained, supernet, supernet_set
from nat_jax.runtime import checkpoint
from nat_jax.space import search_space

_CHECKPOINT = flags.DEFINE_list("checkpoint", None, "OFA .pth file(s), "
                                "comma-separated (e.g. the w1.0 and w1.2 ones).")
_WIDTH = flags.DEFINE_list("width", None, "Width multiplier of each checkpoint: "
                           "1.0 or 1.2 (default: read from the file).")
_OUTPUT = flags.DEFINE_string("output", None, "Supernet set folder: each width goes "
                              "to OUTPUT/w<width>/.")
_NUM_CLASSES = flags.DEFINE_integer("num_classes", None,
                                    "Classes (default: the checkpoint's).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of a re-initialised classifier.")


def _check_output(output: str) -> None:
    p = pathlib.Path(output)
    if p.is_dir() and (p / checkpoint.METADATA_FILE).is_file():
        raise ValueError(f"--output {output} is itself a supernet checkpoint; give "
                         f"the folder of the set (each width goes to "
                         f"OUTPUT/w<width>/).")


def convert(path: str, width: float | None, output: str,
            num_classes: int | None = None, seed: int = 0) -> dict:
    """Convert one `.pth` into OUTPUT/w<width>/ of a supernet set.

    Args:
      path: the OFA `.pth` file.
      width: its width multiplier (None: read from the file).
      output: the set folder.
      num_classes, seed: a fresh classifier of that many classes from `seed`.

    Returns:
      {"output": the width's folder, "set": output, "width", "num_classes",
       "params"}.

    Raises:
      ValueError: the width folder exists already, or the file is not an
        OFA MobileNetV3 supernet of that width.
    """
    _check_output(output)
    space = search_space.OFA_MBV3
    state_dict = pretrained.read_state_dict(path)
    file_width = pretrained.checkpoint_width(state_dict, space)
    width = file_width if width is None else float(width)
    target = pathlib.Path(output) / supernet_set.width_dir_name(width)
    if target.exists():
        raise ValueError(f"{target} exists already; delete it to convert the "
                         f"width-{width} supernet again.")
    model, variables = pretrained.convert_state_dict(
        state_dict, width, num_classes, key=jax.random.key(seed), space=space)
    supernet.save_supernet(str(target), model, variables)
    n = sum(x.size for x in jax.tree.leaves(variables["params"]))
    return {"output": str(target), "set": output, "width": width,
            "num_classes": model.num_classes, "params": int(n)}


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    for name, flag in (("checkpoint", _CHECKPOINT), ("output", _OUTPUT)):
        if not flag.value:
            raise ValueError(f"--{name} is required.")
    paths = _CHECKPOINT.value
    widths = _WIDTH.value or [None] * len(paths)
    if len(widths) != len(paths):
        raise ValueError(f"--width has {len(widths)} value(s) for {len(paths)} "
                         f"checkpoint(s); give one per checkpoint, or none.")
    for w in widths:
        if w is not None and w not in ("1.0", "1.2"):
            raise ValueError(f"--width must be 1.0 or 1.2, got {w!r}.")
    widths = [None if w is None else float(w) for w in widths]
    given = [w for w in widths if w is not None]
    if len(set(given)) != len(given):
        raise ValueError(f"--width lists a width twice ({_WIDTH.value}); a set "
                         f"holds one supernet per width.")
    _check_output(_OUTPUT.value)
    summaries = []
    try:
        for path, width in zip(paths, widths):
            summaries.append(convert(path, width, _OUTPUT.value, _NUM_CLASSES.value,
                                     _SEED.value))
    except ImportError as err:
        raise ValueError(str(err)) from None
    print({"set": _OUTPUT.value, "widths": list(supernet_set.widths(_OUTPUT.value)),
           "converted": summaries})


if __name__ == "__main__":
    cli.run(main)
