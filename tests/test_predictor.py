"""RBF ensemble and baselines: accuracy on a smooth function, robustness."""

import jax
import numpy as np
import pytest
from scipy import stats

from nat_jax import predictor as P
from nat_jax import search_space as ss

SPACE = ss.OFA_MBV3
W = np.random.default_rng(0).uniform(0.5, 1.5, SPACE.num_genes)


def _smooth(genes):
    """A smooth, nonlinear function of the genotype (scaled to [0, 1] genes)."""
    x = np.asarray(genes, np.float64) / np.maximum(SPACE.upper_bounds, 1)
    z = x @ W
    return 30.0 - 10.0 * np.tanh(z / 6.0) + 0.3 * (x[:, 0] - 0.5) ** 2


@pytest.fixture(scope="module")
def data():
    X = np.asarray(SPACE.sample(jax.random.key(0), 300))
    return X, _smooth(X)


def test_ensemble_recovers_rank_order(data):
    X, y = data
    model = P.RBFEnsemble(n_members=500).fit(jax.random.key(1), X[:100], y[:100])
    pred = np.asarray(model.predict(X[100:]))
    assert pred.shape == (200,) and np.all(np.isfinite(pred))
    rho = P.spearman(pred, y[100:])
    assert rho > 0.9, rho
    assert P.kendall(pred, y[100:]) > 0.7


@pytest.mark.parametrize("cls", [P.RBF, P.GP])
def test_baselines_learn(data, cls):
    X, y = data
    pred = np.asarray(cls().fit(jax.random.key(2), X[:100], y[:100]).predict(X[100:]))
    assert P.spearman(pred, y[100:]) > 0.8


def test_single_rbf_interpolates(data):
    X, y = data
    model = P.RBF().fit(None, X[:60], y[:60])
    np.testing.assert_allclose(np.asarray(model.predict(X[:60])), y[:60], atol=0.05)


@pytest.mark.oracle
def test_rank_correlations_match_scipy():
    rng = np.random.default_rng(3)
    a, b = rng.integers(0, 8, 60), rng.integers(0, 8, 60) + rng.random(60)
    assert P.spearman(a, b) == pytest.approx(stats.spearmanr(a, b)[0], abs=1e-12)
    assert P.kendall(a, b) == pytest.approx(stats.kendalltau(a, b)[0], abs=1e-12)


def test_robust_to_duplicates_tiny_sets_and_constant_targets(data):
    X, y = data
    small = P.RBFEnsemble(n_members=16)
    dup = np.concatenate([X[:5]] * 4)
    pred = small.fit(jax.random.key(0), dup, _smooth(dup) + np.arange(20) * 0.01)
    assert np.all(np.isfinite(np.asarray(pred.predict(X[:20]))))
    tiny = small.fit(jax.random.key(0), X[:3], y[:3]).predict(X[:20])
    assert np.all(np.isfinite(np.asarray(tiny)))
    const = small.fit(jax.random.key(0), X[:30], np.full(30, 12.5)).predict(X[:20])
    np.testing.assert_allclose(np.asarray(const), 12.5, atol=1e-3)
    with pytest.raises(ValueError, match="at least 3"):
        small.fit(jax.random.key(0), X[:2], y[:2])
    with pytest.raises(ValueError, match="before fit"):
        small.predict(X[:2])


def test_padding_does_not_change_the_fit(data):
    X, y = data
    key = jax.random.key(4)
    model = P.RBFEnsemble(n_members=8, sample_fraction=1.0)
    a = model.fit(key, X[:40], y[:40]).predict(X[200:210])
    Xp, yp, valid = P.pad_rows(X[:40], y[:40], 64)
    params = P._fit_ensemble_jit(key, Xp, yp, valid, 8, 1.0, model.n_features(22))
    b = P._predict_jit(params, X[200:210])
    # Same members' features; with every valid row used the fits coincide.
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-3, atol=1e-3)
