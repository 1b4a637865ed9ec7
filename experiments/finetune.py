r"""Fine-tune a subnet of a NAT run with inherited weights (paper section 4.3).

Usage:
  python -m experiments.finetune --supernet_dir=runs/default --pick=0
  python -m experiments.finetune --supernet_dir=runs/default \
      --arch='[1, 0, 4, 7, 5, 9]' --workdir=runs/default/finetune_custom
  python -m experiments.finetune --supernet_dir=runs/dtd --pick=1 \
      --config=experiments/configs/finetune.py:paper

--supernet_dir is a transfer workdir (its supernet/, dataset and picks are
used), a supernet set (DIR/w1.0/, DIR/w1.2/: one supernet per width
multiplier, nat_jax.model.supernet_set) or one width's supernet checkpoint
directory. The subnet's width (its genotype's second gene, NAT section 3.2)
selects the supernet its weights come from; only that one is read, and a set
without that width is refused in one line. --pick=N fine-tunes
result.json["picks"][N]; --arch takes what experiments.describe takes (an
encoding, a JSON gene list / net.subnet / net.config, or a file). The subnet
is extracted with its weights, BN re-calibrated and evaluated, fine-tuned on
train + val, evaluated on the test split and saved to WORKDIR/model (loadable
with nat_jax.deploy.export.load_subnet). The default WORKDIR is
SUPERNET_DIR/finetune_pickN for --pick=N and SUPERNET_DIR/finetune_ENCODING
for --arch (one folder per subnet). Rerunning the same command resumes or,
once finished, prints the result again; a workdir that holds another subnet
or config is refused.
"""

from __future__ import annotations

import json
import os
import pathlib

from absl import app, flags, logging

from experiments import cli

_CONFIG_FILE = os.path.join(os.path.dirname(__file__), "configs", "finetune.py")
_CONFIG = cli.define_config(f"{_CONFIG_FILE}:tiny",
                            "Config file[:variant] (tiny or paper).")
_SUPERNET_DIR = flags.DEFINE_string(
    "supernet_dir", None, "Transfer workdir, supernet set (w1.0/, w1.2/) or one "
    "width's supernet checkpoint directory.")
_ARCH = flags.DEFINE_string("arch", None, "Subnet: encoding, genes, JSON or file.")
_PICK = flags.DEFINE_integer("pick", None, "Index into result.json['picks'].")
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Output dir (default SUPERNET_DIR/finetune_pickN, or "
    "SUPERNET_DIR/finetune_ENCODING for --arch); rerunning resumes.")
_DATASET = flags.DEFINE_string(
    "dataset", None, "Dataset (default: the transfer run's, else the embedded one).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Prepared data directory.")


def transfer_dataset(supernet_dir: str) -> tuple[str | None, str | None]:
    """(dataset, data_dir) recorded in a transfer workdir's config.json;
    (None, None) for a supernet set or checkpoint directory (no config.json)."""
    from nat_jax.runtime import workdir

    if not (pathlib.Path(supernet_dir) / "config.json").is_file():
        return None, None
    cfg = workdir.read_config(supernet_dir)
    return cfg.get("dataset"), cfg.get("data_dir") or None


def read_arch(value: str, space, sdir: str):
    """--arch in the set's space; a subnet of a width the set lacks is refused
    in one line that names the widths it holds."""
    import dataclasses

    from nat_jax.space import search_space

    try:
        return search_space.load_arch(value, space)
    except ValueError as err:
        wide = dataclasses.replace(
            space, widths=search_space.base_space(space).widths)
        try:
            arch = search_space.load_arch(value, wide)
        except ValueError:
            raise err from None
        if arch.width in space.widths:
            raise
        raise ValueError(f"--arch has width {arch.width} but {sdir} holds "
                         f"supernets of widths {list(space.widths)}; fine-tune it "
                         f"from a set with a w{arch.width}/ supernet.") from None


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not _SUPERNET_DIR.value:
        raise ValueError("--supernet_dir is required (a transfer workdir or a "
                         "supernet checkpoint directory).")
    if (_ARCH.value is None) == (_PICK.value is None):
        raise ValueError("Give exactly one of --arch and --pick.")
    if not os.path.isdir(_SUPERNET_DIR.value):
        raise ValueError(f"--supernet_dir {_SUPERNET_DIR.value} does not exist.")
    cli.quiet_library_logs()
    from nat_jax.data import datasets as data
    from nat_jax.deploy import finetune
    from nat_jax.model import supernet_set
    from nat_jax.runtime import workdir

    sdir = _SUPERNET_DIR.value
    space = supernet_set.set_space(sdir)  # the genotypes' space: the set's widths
    if _PICK.value is not None:
        arch = workdir.pick_arch(sdir, _PICK.value, space)
    else:
        arch = read_arch(_ARCH.value, space, sdir)
    dataset, data_dir = transfer_dataset(sdir)
    dataset = _DATASET.value or dataset or data.EMBEDDED
    data_dir = _DATA_DIR.value or data_dir
    ds = data.load(dataset, data_dir=data_dir)
    c = _CONFIG.value
    cfg = finetune.make_config(c, len(ds.train) + len(ds.val))
    workdir = _WORKDIR.value or finetune.default_workdir(sdir, arch, space,
                                                          _PICK.value)
    logging.info("Fine-tuning %s on %s in %s:\n%s", arch, dataset, workdir, cfg)
    res = finetune.finetune(cfg, workdir, sdir, arch, dataset, data_dir,
                       eval_batch_size=c.eval_batch_size,
                       calib_images=c.calib_images)
    print(json.dumps({"workdir": workdir, "model_dir": os.path.join(workdir, "model"),
                      "test_top1_before": res["before"]["top1"],
                      "test_top1_after": res["after"]["top1"],
                      "test_top5_after": res["after"]["top5"]}))


if __name__ == "__main__":
    cli.run(main)
