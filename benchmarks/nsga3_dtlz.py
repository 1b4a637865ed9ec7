"""NSGA-III survival vs pymoo's on DTLZ1/DTLZ2 (paper Appendix B, scaled).

Both runs use the same population (reference directions rounded up to a
multiple of 4), generations, Das-Dennis directions (two layers from 6
objectives) and real-coded operators (SBX eta 30, PM eta 20, pymoo's NSGA3
defaults), so the survival is what differs. Prints the IGD (mean and std
over seeds) against the exact Pareto front sampled at the directions, and
the wall time of each (ours: vmapped over seeds, compile included).

Usage: python -m benchmarks.nsga3_dtlz [--seeds=5] [--objectives=3,5,8,10]
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from nat_jax.search import nsga3, tradeoff
from tests.dtlz import run_nsga3  # the DTLZ runner of the tests


def main():
    from pymoo.algorithms.moo.nsga3 import NSGA3
    from pymoo.optimize import minimize
    from pymoo.problems import get_problem

    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--objectives", default="3,5,8,10")
    args = parser.parse_args()
    print(f"{'problem':8s} {'m':>3s} {'pop':>4s} {'gens':>5s} {'IGD nat-jax':>18s} "
          f"{'IGD pymoo':>18s} {'s ours':>7s} {'s pymoo':>8s}")
    for name, which, extra, gens in (("dtlz1", 0, 4, 400), ("dtlz2", 1, 9, 250)):
        for m in map(int, args.objectives.split(",")):
            rd = nsga3.default_reference_directions(m, 100)
            pop = (len(rd) + 3) // 4 * 4
            n_var = m + extra
            front = rd * 0.5 if which == 0 else rd / np.linalg.norm(rd, axis=1)[:, None]
            t0 = time.perf_counter()
            F = np.asarray(run_nsga3(jax.random.split(jax.random.key(m), args.seeds),
                                      which, m, n_var, pop, gens,
                                      jnp.asarray(rd, jnp.float32)))
            t_ours = time.perf_counter() - t0
            ours = np.array([tradeoff.igd(f, front) for f in F])
            t0 = time.perf_counter()
            problem = get_problem(name, n_var=n_var, n_obj=m)
            theirs = np.array([tradeoff.igd(minimize(
                problem, NSGA3(ref_dirs=rd, pop_size=pop), ("n_gen", gens),
                seed=s).pop.get("F"), front) for s in range(args.seeds)])
            t_theirs = time.perf_counter() - t0
            print(f"{name:8s} {m:3d} {pop:4d} {gens:5d} "
                  f"{ours.mean():9.4f} ± {ours.std():6.4f} "
                  f"{theirs.mean():9.4f} ± {theirs.std():6.4f} "
                  f"{t_ours:7.1f} {t_theirs:8.1f}", flush=True)


if __name__ == "__main__":
    main()
