"""NSGA-III survival against pymoo (test-only oracle) and DTLZ problems."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting
from pymoo.util.ref_dirs import get_reference_directions

from nat_jax.search import nsga3, tradeoff
from tests import dtlz


@pytest.mark.oracle
@pytest.mark.parametrize("m,p", [(2, 99), (3, 12), (5, 6), (8, 3), (10, 2)])
def test_das_dennis_matches_pymoo(m, p):
    ours = nsga3.reference_directions(m, p)
    ref = get_reference_directions("das-dennis", m, n_partitions=p)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours.sum(1), 1.0)
    assert set(map(tuple, np.round(ours, 9))) == set(map(tuple, np.round(ref, 9)))


@pytest.mark.oracle
def test_two_layer_matches_pymoo_multi_layer():
    ours = nsga3.reference_directions_two_layer(8, 3, 2, 0.5)
    ref = get_reference_directions(
        "multi-layer",
        get_reference_directions("das-dennis", 8, n_partitions=3, scaling=1.0),
        get_reference_directions("das-dennis", 8, n_partitions=2, scaling=0.5))
    np.testing.assert_allclose(ours.sum(1), 1.0)
    assert set(map(tuple, np.round(ours, 9))) == set(map(tuple, np.round(ref, 9)))


def test_default_directions_fit_population():
    for m in (2, 3, 5, 8, 10, 12, 15):
        rd = nsga3.default_reference_directions(m, 100)
        assert rd.shape[1] == m and len(rd) <= 100 and len(rd) >= m


@pytest.mark.oracle
@pytest.mark.parametrize("m", [2, 3, 5])
def test_ranks_match_pymoo(m):
    rng = np.random.default_rng(m)
    rank_fn = jax.jit(nsga3.nondominated_rank)
    for trial in range(3):  # integer values: many ties and duplicates
        F = rng.integers(0, 6, (150, m)).astype(np.float32)
        ours = np.asarray(rank_fn(F))
        ref = np.empty(len(F), int)
        for i, front in enumerate(NonDominatedSorting().do(F)):
            ref[front] = i
        np.testing.assert_array_equal(ours, ref)


@pytest.mark.slow
def test_nan_rows_rank_last_and_never_survive_finite():
    rng = np.random.default_rng(0)
    F = rng.random((40, 3)).astype(np.float32)
    F[[3, 7, 11], 1] = np.nan
    rank = np.asarray(nsga3.nondominated_rank(F))
    assert rank[[3, 7, 11]].min() > rank[np.isfinite(F).all(1)].max()
    rd = nsga3.reference_directions(3, 4)
    idx = np.asarray(nsga3.survive(F, 37, rd, jax.random.key(0)))
    assert set(idx) == set(range(40)) - {3, 7, 11}


@pytest.mark.slow
@pytest.mark.oracle
def test_survival_matches_pymoo_fronts_and_niche_coverage():
    from pymoo.algorithms.moo.nsga3 import ReferenceDirectionSurvival
    from pymoo.core.population import Population
    from pymoo.core.problem import Problem

    rng = np.random.default_rng(1)
    rd = nsga3.reference_directions(3, 8)                    # 45 directions
    survive = nsga3.survive_info
    for trial in range(4):
        F = rng.random((120, 3)) ** 2                          # several fronts
        F = F / np.linalg.norm(F, axis=1, keepdims=True) * rng.uniform(1, 1.3, (120, 1))
        F = F.astype(np.float32)
        n_survive = 60
        info = survive(F, n_survive, rd, jax.random.key(trial))
        ours = np.asarray(info.indices)
        assert len(set(ours)) == n_survive
        pop = Population.new(F=F.astype(np.float64), index=np.arange(120))
        theirs = ReferenceDirectionSurvival(rd).do(
            Problem(n_var=1, n_obj=3), pop, n_survive=n_survive,
            random_state=np.random.default_rng(trial))
        theirs = theirs.get("index")
        rank = np.asarray(info.rank)
        last = rank[ours].max()
        # Identical accepted fronts, the rest from the same split front.
        assert set(ours[rank[ours] < last]) == set(theirs[rank[theirs] < last])
        assert np.all(rank[theirs] <= last)
        # Niching covers as many reference directions as pymoo's.
        niche = np.asarray(info.niche)
        assert len(set(niche[ours])) >= len(set(niche[theirs])) - 1


# ------------------------------------------------------------------ DTLZ runs
@pytest.mark.slow
@pytest.mark.oracle
@pytest.mark.parametrize("m,problems", [(3, ("dtlz1", "dtlz2")), (8, ("dtlz2",))])
def test_dtlz_igd_not_worse_than_pymoo(m, problems):
    """Paper Appendix B scaled to CI: 3 seeds, 150 generations, k = 5.

    Both runs use the same population, generations, reference directions and
    real-coded operators (SBX eta 30 / PM eta 20), so only the survival
    differs. Fails when our mean IGD exceeds pymoo's by more than 10% plus
    two standard errors of the difference. One compiled run serves both
    problems (the problem is traced). 5 and 10 objectives, and DTLZ1
    beyond 3, run in benchmarks/nsga3_dtlz.py to keep CI short (within a CI
    budget DTLZ1 does not converge and its IGD spread across seeds exceeds
    the mean).
    """
    from pymoo.algorithms.moo.nsga3 import NSGA3
    from pymoo.optimize import minimize
    from pymoo.problems import get_problem

    rd = nsga3.default_reference_directions(m, 100)
    pop = (len(rd) + 3) // 4 * 4
    seeds, gens, n_var = 3, 150, m + 4
    for name in problems:
        which = 0 if name == "dtlz1" else 1
        front = rd * 0.5 if which == 0 else rd / np.linalg.norm(rd, axis=1)[:, None]
        keys = jax.random.split(jax.random.key(m), seeds)
        F = np.asarray(dtlz.run_nsga3(keys, which, m, n_var, pop, gens,
                                  jnp.asarray(rd, jnp.float32)))
        ours = np.array([tradeoff.igd(f, front) for f in F])
        problem = get_problem(name, n_var=n_var, n_obj=m)
        theirs = np.array([
            tradeoff.igd(minimize(problem, NSGA3(ref_dirs=rd, pop_size=pop),
                                  ("n_gen", gens), seed=s).pop.get("F"), front)
            for s in range(seeds)])
        se = np.sqrt(ours.var(ddof=1) / seeds + theirs.var(ddof=1) / seeds)
        assert ours.mean() <= 1.1 * theirs.mean() + 2 * se, (name, ours, theirs)


@pytest.mark.slow
def test_survive_twelve_objectives_keeps_first_front_when_it_fits():
    rng = np.random.default_rng(7)
    F = rng.random((60, 12)).astype(np.float32)
    F[:10] *= 0.05                       # ten rows that dominate most others
    rank = np.asarray(nsga3.nondominated_rank(F))
    rd = nsga3.default_reference_directions(12, 30)
    idx = np.asarray(nsga3.survive(F, 30, rd, jax.random.key(0)))
    assert len(set(idx)) == 30
    last = rank[idx].max()
    assert set(np.flatnonzero(rank < last)) <= set(idx)
    assert np.all(rank[idx] <= last)
