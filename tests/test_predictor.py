"""RBF ensemble and baselines: accuracy on a smooth function, robustness."""

import jax
import numpy as np
import pytest
from scipy import interpolate, stats

from nat_jax import predictor as P
from nat_jax import rank_stats
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
    rho = rank_stats.spearman(pred, y[100:])
    assert rho > 0.9, rho
    assert rank_stats.kendall(pred, y[100:]) > 0.7


@pytest.mark.parametrize("cls", [P.RBF, P.GP])
def test_baselines_learn(data, cls):
    X, y = data
    pred = np.asarray(cls().fit(jax.random.key(2), X[:100], y[:100]).predict(X[100:]))
    assert rank_stats.spearman(pred, y[100:]) > 0.8


def test_single_rbf_interpolates(data):
    X, y = data
    model = P.RBF().fit(None, X[:60], y[:60])
    np.testing.assert_allclose(np.asarray(model.predict(X[:60])), y[:60], atol=0.05)


@pytest.mark.oracle
def test_rank_correlations_match_scipy():
    rng = np.random.default_rng(3)
    a, b = rng.integers(0, 8, 60), rng.integers(0, 8, 60) + rng.random(60)
    rho, tau = stats.spearmanr(a, b)[0], stats.kendalltau(a, b)[0]
    assert rank_stats.spearman(a, b) == pytest.approx(rho, abs=1e-12)
    assert rank_stats.kendall(a, b) == pytest.approx(tau, abs=1e-12)


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


def _oracle_ensemble(params, X, y, Xq, n_active):
    """Mean of SciPy cubic RBFs with linear tail (the authors' pySOT
    `RBFInterpolant(CubicKernel, LinearTail)`, i.e. Algorithm 2's member) on
    each member's rows and features, in float64. Rows are recovered by
    matching the member's first `n_active` centres to the scaled data."""
    X, Xq = np.asarray(X, np.float64), np.asarray(Xq, np.float64)
    lo, span = X.min(0), X.max(0) - X.min(0)
    scale = np.where(span > 0, 1.0 / np.where(span > 0, span, 1.0), 0.0)
    xs, xq = (X - lo) * scale, (Xq - lo) * scale
    preds = []
    for mask, centers in zip(np.asarray(params.mask), np.asarray(params.centers)):
        cols = np.flatnonzero(mask)
        hit = np.all(np.abs(centers[:n_active, None, cols] - xs[None, :, cols]) < 1e-5,
                     -1)
        assert np.all(hit.sum(1) == 1), "each centre must be exactly one valid row"
        rows = hit.argmax(1)
        assert len(set(rows)) == n_active  # sampled without replacement
        rbf = interpolate.RBFInterpolator(xs[rows][:, cols], y[rows],
                                          kernel="cubic", degree=1)
        preds.append(rbf(xq[:, cols]))
    return np.mean(preds, 0)


@pytest.mark.oracle
@pytest.mark.parametrize("block", [1024, 24, 6])
def test_ensemble_matches_scipy_rbfs_and_ignores_padding(data, monkeypatch, block):
    """40 valid rows + 24 invalid padding rows with wild targets; each of the
    6 members must be the cubic RBF of ceil(0.7 * 40) = 28 valid rows and 16
    features. Small `block` sizes split the members' centres into blocks of
    4 (24 // 6) and 1 (6 // 6) slots, of which the padding-only ones are
    skipped."""
    X, y = data
    monkeypatch.setattr(P, "BLOCK_CENTERS", block)
    Xp = np.concatenate([X[:40], X[100:124]])
    yp = np.concatenate([y[:40], np.random.default_rng(5).normal(0, 100, 24)])
    valid = np.arange(64) < 40
    fit = jax.jit(P.fit_ensemble, static_argnums=(4, 5, 6))
    params = fit(jax.random.key(4), Xp, yp.astype(np.float32), valid, 6, 0.7, 16)
    pred = np.asarray(jax.jit(P.predict_ensemble)(params, X[200:230]))
    want = _oracle_ensemble(params, X[:40], y[:40], X[200:230], 28)
    np.testing.assert_allclose(pred, want, rtol=0, atol=1e-4)


@pytest.mark.oracle
def test_public_fit_and_predict_match_scipy_rbfs(data):
    """`RBFEnsemble.fit` pads 50 rows to 64 itself (`pad_rows`)."""
    X, y = data
    model = P.RBFEnsemble(n_members=5).fit(jax.random.key(6), X[:50], y[:50])
    want = _oracle_ensemble(model.params, X[:50], y[:50], X[250:280], 35)
    np.testing.assert_allclose(np.asarray(model.predict(X[250:280])), want,
                               rtol=0, atol=1e-4)
