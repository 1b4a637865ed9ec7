r"""Build a per-layer latency lookup table for this device, and check it.

Usage:
  python -m experiments.build_latency_table --space=ofa_mbv3 --width=1.0 \
      --batch_size=1 --output=tables/latency_cpu.json
  python -m experiments.build_latency_table --space=tiny --batch_size=16 \
      --resolutions=32 --stat=min --num_check=8 --output=/tmp/lat_tiny.json

Every distinct layer configuration (stem, block slot x (kernel, expand) x
resolution, head) is timed as its own jitted function; the table predicts a
subnet's latency as a gather + sum. --num_check random subnets (plus the
smallest and largest) are then measured whole, and the rank correlation
(Spearman, Kendall) and mean relative error are printed and stored in the
table under "check" (a figure to read, not a pass/fail test). Use the table as
an objective with `--config.latency_table=FILE` and `--objectives=...,latency`
(in Python: `objectives.complexity_fn(space, names, custom={"latency":
latency.table_fn(FILE, space)})`).
"""

from __future__ import annotations

import dataclasses
import json
import os

from absl import app, flags

from experiments import cli
from nat_jax.space.search_space import SPACE_NAMES

_SPACE = flags.DEFINE_enum("space", "ofa_mbv3", list(SPACE_NAMES), "Search space.")
_WIDTH = flags.DEFINE_list("width", None, "Width multipliers (default: all of the "
                           "space's).")
_BATCH = flags.DEFINE_integer("batch_size", 1, "Batch size the latency refers to.")
_CLASSES = flags.DEFINE_integer("num_classes", 1000, "Classifier outputs.")
_RES = flags.DEFINE_list("resolutions", None, "Resolutions to time (default all; "
                         "the rest are fitted as a + b r^2).")
_OUTPUT = flags.DEFINE_string("output", None, "Output JSON path.")
_REPEATS = flags.DEFINE_integer("repeats", 20, "Timed runs per layer.")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed runs per layer.")
_STAT = flags.DEFINE_enum("stat", "median", ["median", "min"], "Statistic of the "
                          "repeats (min is robust on a shared, noisy machine).")
_NUM_CHECK = flags.DEFINE_integer("num_check", 10, "Random subnets to check the "
                                  "table against (0: skip).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the check subnets.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not _OUTPUT.value:
        raise ValueError("--output is required (a .json path).")
    if _BATCH.value < 1 or _CLASSES.value < 1 or _REPEATS.value < 1:
        raise ValueError("--batch_size, --num_classes and --repeats must be >= 1.")
    import jax
    import numpy as np

    from nat_jax.deploy import latency
    from nat_jax.runtime import progress as progress_lib
    from nat_jax.space import search_space as ss

    space = ss.get_space(_SPACE.value)
    if _WIDTH.value:
        widths = tuple(float(w) for w in _WIDTH.value)
        for w in widths:
            space.width_index(w)
        space = dataclasses.replace(space, widths=widths)
    res = [int(r) for r in _RES.value] if _RES.value else None
    prog = progress_lib.Progress("latency table", 1)

    def progress(done, total):
        prog.total = total
        prog.update(done)

    table = latency.build_table(space, _BATCH.value, _CLASSES.value, res,
                                _WARMUP.value, _REPEATS.value, progress=progress,
                                stat=_STAT.value)
    if _NUM_CHECK.value > 0:
        genes = np.concatenate([
            np.stack([space.encode(space.min_arch(space.resolutions[0])),
                      space.encode(space.max_arch(space.resolutions[-1]))]),
            np.asarray(space.sample(jax.random.key(_SEED.value), _NUM_CHECK.value))])
        table.check = latency.check_table(table, genes, _WARMUP.value, _REPEATS.value)
    table.save(_OUTPUT.value)
    summary = {"output": os.path.abspath(_OUTPUT.value), "device": table.device,
               "overhead_ms": table.overhead_ms}
    if table.check:
        summary.update({k: table.check[k] for k in ("spearman", "kendall",
                                                    "mean_rel_error")})
        summary["num_checked"] = len(table.check["rows"])
    print(json.dumps(summary))


if __name__ == "__main__":
    cli.run(main)
