"""One NAT search iteration on a known surrogate problem."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

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
                               np.asarray(res.predictor.predict(c)), rtol=1e-4)
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
    the default keeps the archive's own min and max."""
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
        sc = res.predictor.params.scaler
        if mode == "space":
            np.testing.assert_allclose(np.asarray(sc.x_min), lo)
            np.testing.assert_allclose(np.asarray(sc.x_scale), want, rtol=1e-6)
            assert res.predictor.bounds == (tuple(lo), tuple(hi))
        else:
            np.testing.assert_allclose(np.asarray(sc.x_min), concentrated.min(0))
            assert float(sc.x_scale[0]) == pytest.approx(
                1.0 / np.ptp(concentrated[:, 0]))
            assert res.predictor.bounds is None
        # The reported predicted errors are the returned model's.
        np.testing.assert_allclose(np.asarray(res.candidate_objectives[:, 0]),
                                   np.asarray(res.predictor.predict(res.candidates)),
                                   rtol=1e-4)
    with pytest.raises(ValueError, match="predictor_bounds"):
        ev.SearchConfig(predictor_bounds="archive")
