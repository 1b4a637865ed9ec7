r"""Pre-train a supernet by OFA's progressive shrinking (NAT Sec. 4.2).

Usage:
  python -m experiments.pretrain --workdir=runs/pretrain_small   # small config
  python -m experiments.pretrain --config=experiments/configs/pretrain.py:ofa \
      --config.dataset=imagenet2012 --workdir=runs/ofa
  python -m experiments.transfer --supernet=runs/pretrain_small/w1.0 ...

The run is `nat_jax.nat.pretrain.pretrain`: one supernet per width of the
space (`--config.widths`, default all), trained through the phases of
`config.phase_order` (nat_jax/train/progressive_shrinking.py) and written to
`<output>/w<width>` (output defaults to the workdir), which
`experiments.transfer --supernet=` reads directly. Rerunning the same command
resumes (per width: the newest checkpoint under `<workdir>/train/w<width>/ckpt`);
a finished width is skipped. Logs: `<workdir>/train/w<width>/metrics.jsonl`
and TensorBoard scalars under `<workdir>/train/w<width>/tb`;
`<workdir>/summary.json` at the end.
"""

from __future__ import annotations

import os

from absl import app, flags

from experiments import cli

_CONFIG_FILE = os.path.join(os.path.dirname(__file__), "configs", "pretrain.py")
ALIASES = ("dataset", "seed")

_CONFIG = cli.define_config(
    f"{_CONFIG_FILE}:small", "Config file[:variant] (small, ofa or test); "
    "--dataset and --seed are short for --config.<the same name>.",
    aliases=ALIASES)
_WORKDIR = flags.DEFINE_string(
    "workdir", "runs/pretrain", "Output directory; rerunning the same command "
    "resumes.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    cli.quiet_library_logs()
    from nat_jax.nat import pretrain  # after flag parsing: keeps --help fast

    total = pretrain.pretrain(_CONFIG.value, _WORKDIR.value)
    for s in total["widths"]:
        test = f", test top-1 {s['test_top1']}" if "test_top1" in s else ""
        print(f"w{s['width']}: {s['supernet']} ({s['steps']} steps, "
              f"{s['train_s']:.0f}s{test})")


if __name__ == "__main__":
    cli.run(main)
