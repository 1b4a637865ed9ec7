r"""NAT: transfer an OFA supernet to a dataset and search its trade-off front.

Usage:
  python -m experiments.transfer                 # CPU demo: embedded data, tiny config
  python -m experiments.transfer --dataset=dtd --workdir=runs/dtd \
      --config=experiments/configs/transfer.py:paper \
      --supernet=checkpoints/ofa_mbv3_w1.0 --objectives=top1_error,madds
  python -m experiments.transfer --dataset=/data/my_images --workdir=runs/mine

Rerunning the same command resumes from the last completed step.
"""

from __future__ import annotations

import os

from absl import app, flags, logging
from ml_collections import config_flags

from experiments import cli

_CONFIG_FILE = os.path.join(os.path.dirname(__file__), "configs", "transfer.py")

_CONFIG = config_flags.DEFINE_config_file(
    "config", f"{_CONFIG_FILE}:tiny", "Config file[:variant] (tiny or paper).",
    lock_config=True)
_DATASET = flags.DEFINE_string(
    "dataset", None, "Registry name (see nat_jax.data.DATASET_NAMES) or the path of an "
    "image folder; default: the config's (embedded fashion_mnist_mini).")
_WORKDIR = flags.DEFINE_string(
    "workdir", "runs/default", "Output directory; rerunning the same command resumes.")
_OBJECTIVES = flags.DEFINE_string(
    "objectives", None, "Comma-separated, starting with top1_error, e.g. "
    "top1_error,madds,params or top1_error,madds,my_pkg.my_mod:my_fn.")
_SUPERNET = flags.DEFINE_string(
    "supernet", None, "Orbax supernet directory written by experiments.convert_ofa.")
_SEED = flags.DEFINE_integer("seed", None, "Random seed (default: the config's).")
_LATENCY = flags.DEFINE_string(
    "latency_table", None, "Latency lookup table from experiments.build_latency_table; "
    "enables the 'latency' objective (ms).")


def resolve_config(config, dataset=None, objectives=None, supernet=None, seed=None,
                   latency_table=None):
    """Applies the flag overrides onto a copy of `config`."""
    config = config.copy_and_resolve_references()
    with config.unlocked():
        if dataset is not None:
            config.dataset = dataset
        if objectives is not None:
            config.objectives = objectives
        if supernet is not None:
            config.supernet = supernet
        if seed is not None:
            config.seed = seed
        if latency_table is not None:
            config.latency_table = latency_table
    return config


@cli.one_line_errors
def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    cli.quiet_library_logs()
    from nat_jax import transfer  # after flag parsing: keeps --help fast

    config = resolve_config(_CONFIG.value, _DATASET.value, _OBJECTIVES.value,
                            _SUPERNET.value, _SEED.value, _LATENCY.value)
    logging.info("Workdir %s; config:\n%s", _WORKDIR.value, config)
    summary = transfer.run(config, _WORKDIR.value)
    print(f"Done. Report: {os.path.join(_WORKDIR.value, 'report.md')}; "
          f"{len(summary['front'])} nondominated subnets, picks {summary['picks']}.")


if __name__ == "__main__":
    app.run(main)
