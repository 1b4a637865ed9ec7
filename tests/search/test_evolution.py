"""One NAT search iteration (one task, or T tasks) on known surrogate problems."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import transfer as transfer_cfg
from nat_jax.nat import run_config
from nat_jax.search import evolution as ev
from nat_jax.search import tradeoff
from nat_jax.space import objectives as ob
from nat_jax.space import search_space as ss

SPACE = ss.OFA_MBV3
CFG = ev.SearchConfig(pop_size=40, generations=25, n_members=50, n_candidates=8)


def _error(genes):
    """Synthetic top-1 error: falls with MAdds, plus a genotype-dependent term."""
    g = np.asarray(genes)
    madds = np.asarray(ob.madds(SPACE, g), np.float64) / 1e6
    return 45.0 - 7.0 * np.log(madds / 100.0) + 0.2 * np.cos(g[:, 2:].sum(1) / 3.0)


@pytest.fixture(scope="module")
def setup():
    archive = np.asarray(SPACE.sample(jax.random.key(0), 60))
    archive = np.unique(archive, axis=0)
    fn = ob.complexity_fn(SPACE, ("madds", "params"))
    return archive, _error(archive), fn


@pytest.fixture(scope="module")
def result(setup):
    archive, errors, fn = setup
    return ev.search(jax.random.key(1), SPACE, archive, errors, fn, CFG)


@pytest.mark.slow
def test_search_returns_distinct_new_canonical_candidates(setup, result):
    archive, errors, fn = setup
    res = result
    c = np.asarray(res.candidates)
    assert c.shape == (8, SPACE.num_genes) and c.dtype == np.int32
    assert np.all(np.asarray(res.candidate_valid))
    assert len({tuple(r) for r in c}) == 8
    assert not {tuple(r) for r in c} & {tuple(r) for r in archive}
    np.testing.assert_array_equal(c, np.asarray(SPACE.canonicalize(c)))
    for g in c:
        SPACE.validate_genes(g)
    # Reported objectives are the predictor's and the complexity function's.
    np.testing.assert_allclose(np.asarray(res.candidate_objectives[:, 0]),
                               np.asarray(res.predictors[0].predict(c)), rtol=1e-4)
    np.testing.assert_allclose(np.asarray(res.candidate_objectives[:, 1:]),
                               np.asarray(fn(jnp.asarray(c))), rtol=1e-5)
    assert res.population.shape == (CFG.pop_size, SPACE.num_genes)


def _true_f(genes):
    g = np.asarray(genes)
    return np.stack([_error(g), np.asarray(ob.madds(SPACE, g)) / 1e6,
                     np.asarray(ob.params(SPACE, g)) / 1e6], 1)


@pytest.mark.slow
def test_search_improves_true_hypervolume_over_the_archive(setup, result):
    """The initial population is drawn from the archive, so the final
    population beating the whole archive's hypervolume (under the true error
    function, not the surrogate) means the generations improved it."""
    archive, _, _ = setup
    ref = [60.0, 700.0, 12.0]
    hv_archive = tradeoff.hypervolume(_true_f(archive), ref)
    hv_final = tradeoff.hypervolume(_true_f(result.population), ref)
    assert hv_final > hv_archive * 1.02, (hv_archive, hv_final)


def test_search_validates_inputs(setup):
    archive, errors, fn = setup
    with pytest.raises(ValueError, match="at least 3"):
        ev.search(jax.random.key(0), SPACE, archive[:2], errors[:2], fn, CFG)
    with pytest.raises(ValueError, match="NaN"):
        ev.search(jax.random.key(0), SPACE, archive, errors * np.nan, fn, CFG)
    with pytest.raises(ValueError, match="pop_size"):
        ev.SearchConfig(pop_size=7)


def test_space_bounds_scale_the_predictor_by_the_gene_bounds(setup):
    """predictor_bounds="space": the fitted scaler is the space's gene bounds
    (x - lo) / (hi - lo), computed here with numpy, not the archive's range;
    "data" keeps the archive's own min and max."""
    archive, errors, fn = setup
    small = dict(pop_size=8, generations=2, n_members=8, n_candidates=2)
    concentrated = archive[:20].copy()
    concentrated[:, 0] = np.minimum(concentrated[:, 0], 3)    # narrow resolution
    lo = SPACE.lower_bounds.astype(np.float64)
    hi = SPACE.upper_bounds.astype(np.float64)
    want = np.where(hi > lo, 1.0 / np.where(hi > lo, hi - lo, 1.0), 0.0)
    for mode in ("space", "data"):
        cfg = ev.SearchConfig(predictor_bounds=mode, **small)
        res = ev.search(jax.random.key(2), SPACE, concentrated, errors[:20], fn, cfg)
        sc = res.predictors[0].params.scaler
        if mode == "space":
            np.testing.assert_allclose(np.asarray(sc.x_min), lo)
            np.testing.assert_allclose(np.asarray(sc.x_scale), want, rtol=1e-6)
            assert res.predictors[0].bounds == (tuple(lo), tuple(hi))
        else:
            np.testing.assert_allclose(np.asarray(sc.x_min), concentrated.min(0))
            assert float(sc.x_scale[0]) == pytest.approx(
                1.0 / np.ptp(concentrated[:, 0]))
            assert res.predictors[0].bounds is None
        # The reported predicted errors are the returned model's.
        np.testing.assert_allclose(np.asarray(res.candidate_objectives[:, 0]),
                                   np.asarray(res.predictors[0].predict(
                                       res.candidates)),
                                   rtol=1e-4)
    with pytest.raises(ValueError, match="predictor_bounds"):
        ev.SearchConfig(predictor_bounds="archive")


def test_search_config_defaults_are_the_config_files():
    """A library caller of `search(..., SearchConfig())` gets what a run gets:
    the `search` block of experiments/configs/transfer.py (its "paper"
    variant keeps the block's values; "tiny" and "test" shrink the sizes)."""
    assert ev.SearchConfig() == run_config.search_config(
        transfer_cfg.get_config("paper").search)


# The K candidates of the searches before the single- and the many-task cores
# became one (#23): `evolution._search_core` (T = 1) and
# `multitask._search_many_core` (T = 3) of main f3dcb5b, same keys and inputs.
TINY = ss.SearchSpace.tiny()
BEFORE_TOP_UP = [[1, 0, 9, 6, 5, 0], [1, 1, 9, 8, 8, 8], [2, 1, 7, 9, 4, 8],
                 [2, 1, 3, 7, 3, 4], [0, 0, 8, 4, 3, 0], [0, 0, 8, 2, 2, 3],
                 [2, 1, 1, 1, 9, 8], [1, 0, 9, 0, 4, 9]]
BEFORE_3_GENERATIONS = [
    [0, 0, 4, 8, 1, 9], [1, 0, 1, 0, 1, 7], [0, 0, 4, 0, 2, 8], [0, 0, 3, 0, 5, 0],
    [0, 0, 3, 0, 2, 9], [0, 0, 3, 6, 5, 0], [0, 0, 1, 0, 1, 7], [0, 0, 4, 0, 3, 0],
    [0, 0, 8, 8, 1, 5], [0, 0, 4, 6, 5, 0], [0, 0, 7, 6, 3, 0], [0, 0, 2, 6, 5, 0]]
BEFORE_3_TASKS = [[0, 0, 6, 0, 7, 0], [1, 0, 9, 0, 1, 7], [0, 1, 2, 0, 4, 7],
                  [0, 0, 2, 0, 1, 0], [0, 1, 5, 0, 4, 7], [0, 0, 6, 0, 4, 0]]


@pytest.mark.slow
@pytest.mark.parametrize("cfg,want", [
    # 6 archive members in a population of 8, no generation: at most 2
    # eligible, the other 6 candidates are the top-up samples.
    (ev.SearchConfig(pop_size=8, generations=0, n_members=8, n_candidates=8,
                     pad_multiple=16, predictor_bounds="space"), BEFORE_TOP_UP),
    (ev.SearchConfig(pop_size=16, generations=3, n_members=8, n_candidates=12,
                     pad_multiple=16, predictor_bounds="space"),
     BEFORE_3_GENERATIONS),
])
def test_one_task_core_gives_the_single_task_candidates_of_before(cfg, want):
    """`search_many` with T = 1 and `search` return, for the same key, the
    candidates the single-task search returned before the merge."""
    g = np.unique(np.asarray(TINY.canonicalize(TINY.sample(jax.random.key(5), 12))),
                  axis=0)[:6]
    err = np.asarray(g, np.float64).sum(1)
    fn = ob.complexity_fn(TINY, ("madds",))
    many = ev.search_many(jax.random.key(7), TINY, g, err[:, None], fn, cfg)
    one = ev.search(jax.random.key(7), TINY, g, err, fn, cfg)
    for res in (many, one):
        np.testing.assert_array_equal(np.asarray(res.candidates), want)
        assert np.all(np.asarray(res.candidate_valid)) and len(res.predictors) == 1


@pytest.mark.slow
def test_three_task_core_gives_the_many_task_candidates_of_before():
    g = np.unique(np.asarray(TINY.canonicalize(TINY.sample(jax.random.key(0), 60))),
                  axis=0)[:30]
    w = np.asarray(jax.random.normal(jax.random.key(1), (3, TINY.num_genes)))
    err = 50.0 + g @ w.T
    extra = [None, (g[:3], err[:3, 1] + 1.0), None]   # shared rows: dropped
    cfg = ev.SearchConfig(pop_size=32, generations=3, n_members=6, n_candidates=6,
                          pad_multiple=16, predictor_bounds="data")
    res = ev.search_many(jax.random.key(2), TINY, g, err,
                         ob.complexity_fn(TINY, ("madds",)), cfg, extra)
    np.testing.assert_array_equal(np.asarray(res.candidates), BEFORE_3_TASKS)
    assert res.candidate_objectives.shape == (6, 3 + 1) and len(res.predictors) == 3


def test_search_many_validates_inputs(setup):
    archive, errors, fn = setup
    small = dataclasses.replace(CFG, generations=1)
    with pytest.raises(ValueError, match=r"archive_errors must be \[60, T>=1\]"):
        ev.search_many(jax.random.key(0), SPACE, archive, errors, fn, small)
    with pytest.raises(ValueError, match="measured on every task"):
        ev.search_many(jax.random.key(0), SPACE, archive,
                       np.stack([errors, errors * np.nan], 1), fn, small)
    with pytest.raises(ValueError, match="one error per genotype"):
        ev.search(jax.random.key(0), SPACE, archive, errors[:, None], fn, small)
    with pytest.raises(ValueError, match="2 entries for 1 tasks"):
        ev.search_many(jax.random.key(0), SPACE, archive, errors[:, None], fn, small,
                       [None, None])


# ------------------------------------------------- search_many on known tasks
@pytest.mark.slow
def test_twelve_objectives_predictors_recover_each_task():
    """11 tasks + MAdds. Each task's error is a different linear function of
    the genes; with every member seeing all samples and features, the cubic
    RBF with a linear tail (Algorithm 2) reproduces a linear function
    exactly, so each candidate's predicted error must equal its own task's
    function (a task mix-up or a column shift would show)."""
    space, n_tasks = ss.SearchSpace.tiny(), 11
    genes = np.unique(np.asarray(space.canonicalize(
        space.sample(jax.random.key(0), 60))), axis=0)[:40]
    w = np.asarray(jax.random.normal(jax.random.key(1), (n_tasks, space.num_genes)))

    def true(g):
        return 50.0 + np.asarray(g, np.float64) @ w.T     # [n, T]

    fn = ob.complexity_fn(space, ("madds",))
    cfg = ev.SearchConfig(pop_size=64, generations=3, n_members=4,
                          sample_fraction=1.0, feature_fraction=1.0,
                          n_candidates=6, pad_multiple=16)
    res = ev.search_many(jax.random.key(2), space, genes, true(genes), fn, cfg)
    c = np.asarray(res.candidates)
    f = np.asarray(res.candidate_objectives)
    assert f.shape == (6, n_tasks + 1) and np.all(np.asarray(res.candidate_valid))
    assert len({tuple(r) for r in c}) == 6
    assert not {tuple(r) for r in c} & {tuple(r) for r in genes}
    np.testing.assert_array_equal(c, np.asarray(space.canonicalize(c)))
    np.testing.assert_allclose(f[:, :n_tasks], true(c), atol=0.05)
    np.testing.assert_allclose(f[:, n_tasks:], np.asarray(fn(jnp.asarray(c))),
                               rtol=1e-5)
    for t in (0, n_tasks - 1):
        np.testing.assert_allclose(np.asarray(res.predictors[t].predict(c)),
                                   true(c)[:, t], atol=0.05)


def test_each_task_trains_on_the_shared_rows_plus_only_its_own():
    space = ss.SearchSpace.tiny()
    g = np.unique(np.asarray(space.canonicalize(space.sample(jax.random.key(3),
                                                              20))), axis=0)
    shared, own = g[:4], g[4:9]
    errors = np.arange(8, dtype=np.float32).reshape(4, 2)
    own_err = np.array([1.0, np.nan, 3.0, 4.0, 5.0], np.float32)
    # Task 1's own rows: one duplicates a shared row (the shared value wins),
    # one was never measured (NaN): both are dropped.
    own_genes = np.concatenate([own[:4], shared[:1]])
    xs, ys = ev.training_sets(space, shared, errors, [None, (own_genes, own_err)])
    np.testing.assert_array_equal(xs[0], shared)
    np.testing.assert_array_equal(ys[0], errors[:, 0])
    np.testing.assert_array_equal(xs[1], np.concatenate([shared, own[[0, 2, 3]]]))
    np.testing.assert_array_equal(ys[1], [1, 3, 5, 7, 1, 3, 4])
