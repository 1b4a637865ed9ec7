r"""NAT: transfer an OFA supernet to a dataset and search its trade-off front.

Usage:
  python -m experiments.transfer     # CPU demo: shipped supernet -> MNIST, tiny config
  python -m experiments.transfer --dataset=dtd --workdir=runs/dtd \
      --config=experiments/configs/transfer.py:paper \
      --supernet=ckpt/ofa_w1.0,ckpt/ofa_w1.2 \
      --objectives=top1_error,madds
  python -m experiments.transfer --dataset=/data/my_images --workdir=runs/mine

Every setting is a field of the config (experiments/configs/transfer.py):
--config.search.generations=50 and so on. --dataset, --objectives, --supernet,
--seed and --latency_table are short for --config.dataset, --config.objectives,
--config.supernet, --config.seed and --config.latency_table (the same field,
with the config file's default; giving both forms is refused). The width
multiplier is searched (the genotype's second gene): --supernet gives one
supernet per width, as a set directory (w1.0/, w1.2/: a run's supernet/ or
pretrained:small_fashion_mnist) or as PATH,PATH (orbax dirs or official OFA
.pth files); --config.widths=1.0 pins one width. --workdir is
where the run lives; rerunning the same command resumes from the last
completed step. Every field is checked before anything is written: a bad
flag, missing data, an unknown objective or a missing supernet prints one
`error:` line and exits with status 2.
"""

from __future__ import annotations

import os

from absl import app, flags, logging

from experiments import cli

_CONFIG_FILE = os.path.join(os.path.dirname(__file__), "configs", "transfer.py")
ALIASES = ("dataset", "objectives", "supernet", "seed", "latency_table")

_CONFIG = cli.define_config(
    f"{_CONFIG_FILE}:tiny", "Config file[:variant] (tiny, paper or test); "
    "--dataset, --objectives, --supernet, --seed, --latency_table are short for "
    "--config.<the same name>.", aliases=ALIASES)
_WORKDIR = flags.DEFINE_string(
    "workdir", "runs/default", "Output directory; rerunning the same command resumes.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    cli.quiet_library_logs()
    from nat_jax.nat import transfer  # after flag parsing: keeps --help fast

    config = _CONFIG.value
    logging.info("Workdir %s; config:\n%s", _WORKDIR.value, config)
    summary = transfer.run(config, _WORKDIR.value)  # validates before any write
    print(f"Done. Report: {os.path.join(_WORKDIR.value, 'report.md')}; "
          f"{len(summary['front'])} nondominated subnets, picks {summary['picks']}.")


if __name__ == "__main__":
    cli.run(main)
