"""One NAT search iteration at paper Table 2 defaults: nat-jax vs a reference.

nat-jax: `evolution.search` (jitted RBF-ensemble fit + one `lax.scan` over 100
generations of NSGA-III, population 100, ensemble 500).

Reference, built the way the original NAT/NSGANetV2 code is: pymoo NSGA3 with
the archive as initial population, uniform crossover (0.9), polynomial
mutation (eta 1.0, per-variable probability 0.1) rounded to integers,
duplicate elimination, over a 500-member RBF ensemble in NumPy/SciPy
(`scipy.interpolate.RBFInterpolator`, cubic kernel, linear tail) fitted on the
same random sample/feature fractions. Both get the analytic MAdds/params, so
the comparison is about the search machinery only.

The archive holds `--archive` evaluated genotypes with a synthetic but
realistic top-1 error (power law in MAdds plus per-gene effects). Printed:
wall time per iteration (nat-jax after compilation; compile time separately),
the ratio, and the hypervolume of both final populations under the *true*
synthetic error (reference point: 1.05 x the archive's worst values). The
CPU load average is printed before and after, since timings on a shared
machine depend on it.

Usage: python -m benchmarks.search_iteration [--archive=100] [--seed=0]
  [--repeats=3] [--objectives=both|madds|madds,params]
"""

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from nat_jax.search import evolution as ev
from nat_jax.search import tradeoff
from nat_jax.space import objectives as ob
from nat_jax.space import search_space as ss

SPACE = ss.OFA_MBV3


def synthetic_error(genes) -> np.ndarray:
    """Top-1 error (%) of genotypes: a power law in MAdds plus gene effects."""
    g = np.asarray(genes)
    g = np.asarray(SPACE.canonicalize(g))
    madds = np.asarray(ob.madds(SPACE, g), np.float64) / 1e6
    table = np.random.default_rng(1234).normal(0, 1, (SPACE.num_genes, 17))
    effect = table[np.arange(SPACE.num_genes), g].sum(-1) / np.sqrt(SPACE.num_genes)
    return 18.0 + 25.0 * (madds / 100.0) ** -0.7 + 0.6 * effect


def true_objectives(genes, names) -> np.ndarray:
    cols = [synthetic_error(genes)]
    for n in names:
        cols.append(np.asarray(getattr(ob, n)(SPACE, np.asarray(genes))) / 1e6)
    return np.stack(cols, 1)


class NumpyRBFEnsemble:
    """The reference predictor: 500 SciPy cubic RBFs on random subsets."""

    def __init__(self, n_members=500, sample_fraction=0.7, feature_fraction=0.7,
                 seed=0):
        self.n, self.sf, self.ff = n_members, sample_fraction, feature_fraction
        self.rng = np.random.default_rng(seed)

    def fit(self, X, y):
        from scipy.interpolate import RBFInterpolator
        X = np.asarray(X, np.float64)
        self.lo, rng = X.min(0), X.max(0) - X.min(0)
        self.scale = np.where(rng > 0, 1 / np.where(rng > 0, rng, 1), 0)
        Xs = (X - self.lo) * self.scale
        n, d = X.shape
        ns, nf = int(np.ceil(self.sf * n)), int(np.ceil(self.ff * d))
        self.members = []
        while len(self.members) < self.n:
            rows = self.rng.choice(n, ns, replace=False)
            cols = self.rng.choice(d, nf, replace=False)
            try:
                m = RBFInterpolator(Xs[rows][:, cols], y[rows], kernel="cubic",
                                    degree=1)
            except np.linalg.LinAlgError:  # constant column in this subset
                continue
            self.members.append((cols, m))
        return self

    def predict(self, X):
        Xs = (np.asarray(X, np.float64) - self.lo) * self.scale
        return np.mean([m(Xs[:, cols]) for cols, m in self.members], axis=0)


def reference_search(archive, errors, names, pop_size=100, generations=100, seed=0):
    from pymoo.algorithms.moo.nsga3 import NSGA3
    from pymoo.core.problem import Problem
    from pymoo.operators.crossover.ux import UX
    from pymoo.operators.mutation.pm import PM
    from pymoo.operators.repair.rounding import RoundingRepair
    from pymoo.optimize import minimize

    pred = NumpyRBFEnsemble(seed=seed).fit(archive, errors)

    class Surrogate(Problem):
        def __init__(self):
            super().__init__(n_var=SPACE.num_genes, n_obj=1 + len(names),
                             xl=SPACE.lower_bounds, xu=SPACE.upper_bounds, vtype=int)

        def _evaluate(self, x, out, *args, **kwargs):
            x = np.asarray(SPACE.canonicalize(np.round(x).astype(np.int32)))
            cols = [pred.predict(x)]
            cols += [np.asarray(getattr(ob, n)(SPACE, x)) / 1e6 for n in names]
            out["F"] = np.stack(cols, 1)

    n_obj = 1 + len(names)
    from nat_jax.search import nsga3
    ref_dirs = nsga3.default_reference_directions(n_obj, pop_size)
    algo = NSGA3(ref_dirs=ref_dirs, pop_size=pop_size, sampling=archive,
                 crossover=UX(prob=0.9),
                 mutation=PM(prob=1.0, prob_var=0.1, eta=1.0, vtype=float,
                             repair=RoundingRepair()),
                 eliminate_duplicates=True)
    res = minimize(Surrogate(), algo, ("n_gen", generations), seed=seed)
    return np.asarray(SPACE.canonicalize(np.round(res.pop.get("X")).astype(np.int32)))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--archive", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--objectives", default="both",
                        choices=("both", "madds", "madds,params"))
    args = parser.parse_args()
    sets = ((("madds",), ("madds", "params")) if args.objectives == "both"
            else (tuple(args.objectives.split(",")),))
    print(f"devices: {jax.devices()}; load average {_load()}")
    archive = np.unique(np.asarray(SPACE.sample(jax.random.key(args.seed),
                                                args.archive + 20)), axis=0)
    archive = archive[: args.archive]
    errors = synthetic_error(archive)
    for names in sets:
        fn = ob.complexity_fn(SPACE, names)
        # Table 2 sizes; inputs scaled like the reference's RBFs (min-max of
        # the fitted rows), not by the run default's gene bounds.
        cfg = ev.SearchConfig(predictor_bounds="data")
        t0 = time.perf_counter()
        res = ev.search(jax.random.key(1), SPACE, archive, errors, fn, cfg)
        jax.block_until_ready(res.candidates)
        first = time.perf_counter() - t0
        times = []
        for r in range(args.repeats):
            t0 = time.perf_counter()
            out = ev.search(jax.random.key(2 + r), SPACE, archive, errors, fn, cfg)
            jax.block_until_ready(out.candidates)
            times.append(time.perf_counter() - t0)
        ours = min(times)
        t0 = time.perf_counter()
        ref_pop = reference_search(archive, errors, names, seed=args.seed)
        theirs = time.perf_counter() - t0
        f_arch = true_objectives(archive, names)
        ref_pt = f_arch.max(0) * 1.05
        hv = {k: tradeoff.hypervolume(true_objectives(p, names), ref_pt)
              for k, p in (("nat-jax", np.asarray(res.population)),
                           ("reference", ref_pop), ("archive", archive))}
        print(f"objectives: error + {'+'.join(names)} | archive {len(archive)}, "
              f"pop 100, 100 generations, ensemble 500")
        print(f"  nat-jax   : {ours:7.2f} s/iteration (best of {args.repeats}; "
              f"first call incl. compile {first:.1f} s)")
        print(f"  reference : {theirs:7.2f} s/iteration (pymoo NSGA3 + SciPy RBFs)")
        print(f"  speed-up  : {theirs / ours:7.1f}x")
        print(f"  hypervolume (true error): nat-jax {hv['nat-jax']:.4g}, "
              f"reference {hv['reference']:.4g}, archive {hv['archive']:.4g}")
    print(f"load average {_load()}")


def _load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


if __name__ == "__main__":
    jnp.zeros(())
    main()
