r"""Times one many-task search iteration at 12 objectives (README figure).

Usage:
  python docs/time_multitask_search.py [--tasks=11] [--repeats=3] \
      [--pop_size=100] [--generations=100] [--n_members=500]

`nat_jax.search.evolution.search_many` on the ofa_mbv3 space with T tasks (11 by
default) plus MAdds (12 objectives, as in paper Appendix F), the paper's
Table 2 search settings (population 100, 100 generations, 500 RBF members,
K = 8) and an archive of 100 subnets with synthetic errors (the search's
cost does not depend on the values). Prints the compile-and-first-call time
and the median of `--repeats` further calls (new keys), in seconds.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np

from nat_jax.search import evolution
from nat_jax.space import objectives
from nat_jax.space import search_space as ss


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=11)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--archive", type=int, default=100)
    p.add_argument("--pop_size", type=int, default=100)
    p.add_argument("--generations", type=int, default=100)
    p.add_argument("--n_members", type=int, default=500)
    a = p.parse_args(argv)
    space = ss.OFA_MBV3
    genes = np.unique(np.asarray(space.canonicalize(
        space.sample(jax.random.key(0), 2 * a.archive))), axis=0)[:a.archive]
    rng = np.random.default_rng(0)
    errors = 20 + 10 * rng.random((len(genes), a.tasks))
    fn = objectives.complexity_fn(space, ("madds",))
    cfg = evolution.SearchConfig(pop_size=a.pop_size, generations=a.generations,
                                 n_members=a.n_members, n_candidates=8)

    def once(i):
        t = time.perf_counter()
        res = evolution.search_many(jax.random.key(i), space, genes, errors, fn, cfg)
        jax.block_until_ready(res.candidates)
        return time.perf_counter() - t

    first = once(0)
    times = [once(i + 1) for i in range(a.repeats)]
    out = {"objectives": a.tasks + 1, "archive": len(genes), "pop_size": a.pop_size,
           "generations": a.generations, "n_members": a.n_members,
           "first_call_s": round(first, 2),
           "median_s": round(float(np.median(times)), 2),
           "devices": str(jax.devices()[0].platform)}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
