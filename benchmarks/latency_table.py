r"""Latency lookup table vs measuring subnets, side by side on this machine.

Usage:
  python -m benchmarks.latency_table                    # tiny space, CPU-sized
  python -m benchmarks.latency_table --space=ofa_mbv3 --resolutions=192,224,256

Builds the per-layer table, measures --num_check subnets whole (the smallest,
the largest and random ones), and prints the table's rank correlation and
relative error, plus the cost of costing a population by table lookup (jitted
gather + sum) against measuring each subnet (compile + timed runs).

The measured-vs-predicted rank correlation depends on the machine and its load,
so it is reported here, never asserted (tests/deploy/test_latency.py checks the
table's arithmetic against a deterministic stand-in for the clock).
"""

from __future__ import annotations

import json
import time

import jax
import numpy as np
from absl import app, flags

from nat_jax.deploy import latency
from nat_jax.space import objectives
from nat_jax.space import search_space as ss

_SPACE = flags.DEFINE_enum("space", "tiny", list(ss.SPACE_NAMES), "Search space.")
_BATCH = flags.DEFINE_integer("batch_size", 16, "Batch size.")
_RES = flags.DEFINE_list("resolutions", None, "Resolutions to time (default all).")
_NUM_CHECK = flags.DEFINE_integer("num_check", 12, "Subnets measured whole.")
_STAT = flags.DEFINE_enum("stat", "min", ["median", "min"], "Statistic of repeats.")
_REPEATS = flags.DEFINE_integer("repeats", 20, "Timed runs per layer / subnet.")


def main(argv):
    del argv
    space = ss.get_space(_SPACE.value)
    res = [int(r) for r in _RES.value] if _RES.value else None
    t0 = time.perf_counter()
    table = latency.build_table(space, _BATCH.value, 10, res, repeats=_REPEATS.value,
                                stat=_STAT.value)
    build_s = time.perf_counter() - t0
    genes = np.concatenate([
        np.stack([space.encode(space.min_arch(space.resolutions[0])),
                  space.encode(space.max_arch(space.resolutions[-1]))]),
        np.asarray(space.sample(jax.random.key(0), _NUM_CHECK.value - 2))])
    t0 = time.perf_counter()
    chk = latency.check_table(table, genes, repeats=_REPEATS.value)
    measure_s = (time.perf_counter() - t0) / len(genes)
    fn = jax.jit(objectives.complexity_fn(
        space, ["latency"], 10, custom={"latency": latency.table_fn(table, space)}))
    pop = np.asarray(space.sample(jax.random.key(1), 10_000))
    jax.block_until_ready(fn(pop))
    t0 = time.perf_counter()
    jax.block_until_ready(fn(pop))
    lookup_s = (time.perf_counter() - t0) / len(pop)
    print(json.dumps({
        "device": table.device, "space": _SPACE.value, "batch_size": _BATCH.value,
        "stat": _STAT.value, "table_build_s": round(build_s, 1),
        "subnets_checked": len(genes), "spearman": round(chk["spearman"], 3),
        "kendall": round(chk["kendall"], 3),
        "mean_rel_error": round(chk["mean_rel_error"], 3),
        "measure_one_subnet_s": round(measure_s, 3),
        "table_lookup_per_subnet_us": round(lookup_s * 1e6, 4),
        "lookup_speedup_vs_measuring": round(measure_s / lookup_s)}, indent=1))
    for r in chk["rows"]:
        print(r)


if __name__ == "__main__":
    app.run(main)
