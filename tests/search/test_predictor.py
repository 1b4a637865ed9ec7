"""RBF ensemble and baselines: accuracy on a smooth function, robustness."""

import jax
import numpy as np
import pytest
from scipy import interpolate, stats

from nat_jax.search import predictor as P
from nat_jax.search import rank_stats
from nat_jax.space import search_space as ss

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


@pytest.mark.slow
def test_ensemble_recovers_rank_order(data):
    X, y = data
    model = P.RBFEnsemble(n_members=500).fit(jax.random.key(1), X[:100], y[:100])
    pred = np.asarray(model.predict(X[100:]))
    assert pred.shape == (200,) and np.all(np.isfinite(pred))
    rho = rank_stats.spearman(pred, y[100:])
    assert rho > 0.9, rho
    assert rank_stats.kendall(pred, y[100:]) > 0.7


@pytest.mark.slow
@pytest.mark.parametrize("cls", [P.RBF, P.GP])
def test_baselines_learn(data, cls):
    X, y = data
    pred = np.asarray(cls().fit(jax.random.key(2), X[:100], y[:100]).predict(X[100:]))
    assert rank_stats.spearman(pred, y[100:]) > 0.8


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.parametrize("cls", [P.RBFEnsemble, P.RBF, P.GP])
def test_wrong_shapes_raise_one_line_value_errors(data, cls):
    X, y = data
    model = cls(n_members=4) if cls is P.RBFEnsemble else cls()
    key = jax.random.key(0)
    with pytest.raises(ValueError, match=r"X\[n, d\] and targets y\[n\]"):
        model.fit(key, X[0], y[:1])           # one genotype, not a batch
    with pytest.raises(ValueError, match="one row each per genotype"):
        model.fit(key, X[:10], y[:9])
    fitted = model.fit(key, X[:10], y[:10])
    with pytest.raises(ValueError, match=rf"X\[n, {X.shape[1]}\]") as e:
        fitted.predict(X[:4, :-1])            # a genotype of another space
    assert "\n" not in str(e.value)
    assert np.asarray(fitted.predict(X[:4])).shape == (4,)


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


@pytest.mark.slow
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


@pytest.mark.slow
@pytest.mark.oracle
def test_public_fit_and_predict_match_scipy_rbfs(data):
    """`RBFEnsemble.fit` pads 50 rows to 64 itself (`pad_rows`)."""
    X, y = data
    model = P.RBFEnsemble(n_members=5).fit(jax.random.key(6), X[:50], y[:50])
    want = _oracle_ensemble(model.params, X[:50], y[:50], X[250:280], 35)
    np.testing.assert_allclose(np.asarray(model.predict(X[250:280])), want,
                               rtol=0, atol=1e-4)


# ------------------------------------------------- fixed input bounds
LO = SPACE.lower_bounds.astype(np.float64)
HI = SPACE.upper_bounds.astype(np.float64)


def test_scaler_with_bounds_is_min_max_by_hand(data):
    """x' = (x - lo) / (hi - lo) per feature (numpy, float64), whatever the
    training rows span; a feature with hi == lo maps to 0. The default still
    uses the valid rows' own min and max."""
    X, y = data
    lo, hi = LO.copy(), HI.copy()
    hi[1] = lo[1] = 1.0                       # one constant feature
    sc = P.fit_scaler(X[:10], y[:10], bounds=(lo, hi))
    want = np.where(hi > lo, (X - lo) / np.where(hi > lo, hi - lo, 1.0), 0.0)
    np.testing.assert_allclose(np.asarray(P._scale_x(sc, X)), want, atol=1e-6)
    valid = np.arange(10) < 6                 # invalid rows change nothing
    sc_v = P.fit_scaler(X[:10], y[:10], valid, bounds=(lo, hi))
    np.testing.assert_allclose(np.asarray(sc_v.x_min), lo)
    assert float(sc_v.y_mean) == pytest.approx(y[:6].mean(), rel=1e-5)
    assert float(sc_v.y_std) == pytest.approx(y[:6].std(), rel=1e-4)
    # Default: the first 6 rows' range.
    sc_d = P.fit_scaler(X[:10], y[:10], valid)
    span = X[:6].max(0) - X[:6].min(0)
    want_d = np.where(span > 0, (X - X[:6].min(0)) / np.where(span > 0, span, 1), 0)
    np.testing.assert_allclose(np.asarray(P._scale_x(sc_d, X)), want_d, atol=1e-6)


def _identity_bounds(d):
    return np.zeros(d), np.ones(d)


def test_bounds_fit_equals_identity_fit_on_prescaled_inputs(data):
    """A model fitted with bounds on X predicts what a model fitted with the
    identity scaling ((0, 1) bounds) on (X - lo) / (hi - lo) predicts, on the
    pre-scaled queries: scaling is the only thing `bounds` changes. The
    training rows span much less than the bounds, so this also differs from
    the default fit."""
    X, y = data
    Xc = X[(X[:, 0] <= 4) & (X[:, 1] == 0)]   # concentrated archive
    assert len(Xc) >= 10
    yc = _smooth(Xc)
    Xq = X[:40]
    ens = P.RBFEnsemble(n_members=8, bounds=(LO, HI))
    fit_b = ens.fit(jax.random.key(7), Xc, yc)
    pre = (Xc - LO) / (HI - LO)
    ident = P.RBFEnsemble(n_members=8, bounds=_identity_bounds(X.shape[1]))
    fit_i = ident.fit(jax.random.key(7), pre, yc)
    got = np.asarray(fit_b.predict(Xq))
    want = np.asarray(fit_i.predict((Xq - LO) / (HI - LO)))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-3 * np.ptp(yc))
    default = np.asarray(P.RBFEnsemble(n_members=8).fit(
        jax.random.key(7), Xc, yc).predict(Xq))
    assert np.max(np.abs(default - got)) > 1e-2 * np.ptp(yc)


@pytest.mark.oracle
def test_bounds_fit_matches_scipy_rbfs(data):
    """With bounds, each member is SciPy's cubic RBF with linear tail on
    (X - lo) / (hi - lo) of its rows and features (float64 oracle)."""
    X, y = data
    fit = jax.jit(P.fit_ensemble, static_argnums=(4, 5, 6))
    valid = np.ones(40, bool)
    params = fit(jax.random.key(8), X[:40], y[:40].astype(np.float32), valid, 4,
                 0.7, 16, (LO.astype(np.float32), HI.astype(np.float32)))
    pred = np.asarray(jax.jit(P.predict_ensemble)(params, X[200:230]))
    xs, xq = (X[:40] - LO) / (HI - LO), (X[200:230] - LO) / (HI - LO)
    preds = []
    for mask, centers in zip(np.asarray(params.mask), np.asarray(params.centers)):
        cols = np.flatnonzero(mask)
        hit = np.all(np.abs(centers[:28, None, cols] - xs[None, :, cols]) < 1e-5, -1)
        rows = hit.argmax(1)
        assert np.all(hit.sum(1) == 1) and len(set(rows)) == 28
        rbf = interpolate.RBFInterpolator(xs[rows][:, cols], y[:40][rows],
                                          kernel="cubic", degree=1)
        preds.append(rbf(xq[:, cols]))
    np.testing.assert_allclose(pred, np.mean(preds, 0), rtol=0, atol=1e-4)


def test_bounds_are_validated():
    with pytest.raises(ValueError, match="lo <= hi"):
        P.RBFEnsemble(bounds=([0, 2], [1, 1]))
    with pytest.raises(ValueError, match="equal length"):
        P.RBFEnsemble(bounds=([0, 0], [1, 1, 1]))
    with pytest.raises(ValueError, match="pair"):
        P.RBFEnsemble(bounds=[0, 1, 2])
    with pytest.raises(ValueError, match="per column"):
        P.RBFEnsemble(n_members=2, bounds=([0.0] * 3, [1.0] * 3)).fit(
            jax.random.key(0), np.zeros((5, 4)), np.arange(5.0))
