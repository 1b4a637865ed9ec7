"""Costing a population: jitted lookup tables vs the layer-by-layer reference.

Prints genotypes/second of `objectives.count` (a Python walk over the layers of
each Arch, the way a per-individual counter works), the exact NumPy table path
and the jitted jax.numpy path, measured side by side in one run.

Usage: python -m benchmarks.objectives [--n=10000]
"""

import argparse
import time

import jax
import numpy as np

from nat_jax.space import objectives as ob
from nat_jax.space import search_space as ss


def _rate(fn, n, repeats=5):
    fn()
    best = min(_timed(fn) for _ in range(repeats))
    return n / best


def _timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=10_000)
    args = p.parse_args()
    space = ss.OFA_MBV3
    genes = space.sample(jax.random.key(0), args.n)
    np_genes = np.asarray(genes)
    archs = [space.decode(g) for g in np_genes[:500]]
    loop = _rate(lambda: [ob.count(space, a) for a in archs], len(archs), 2)
    table = _rate(lambda: (ob.madds(space, np_genes), ob.params(space, np_genes)),
                  args.n)
    fn = jax.jit(ob.complexity_fn(space, ("madds", "params")))
    jitted = _rate(lambda: fn(genes).block_until_ready(), args.n)
    print(f"{'method':32s} genotypes/s  ratio vs loop")
    for name, r in [("per-arch layer loop (Python)", loop),
                    ("lookup tables, NumPy int64", table),
                    ("lookup tables, jitted jnp", jitted)]:
        print(f"{name:32s} {r:11.0f}  {r / loop:8.1f}x")


if __name__ == "__main__":
    main()
