"""Accuracy predictors: the RBF ensemble of NAT (Algorithm 2) and baselines.

Inputs are integer genotypes `X int[n, d]` (any integer features), targets
`y float[n]` (top-1 error or accuracy; nothing assumes which). Features are
min-max scaled to [0, 1], by default with the training data's ranges, or with
given per-feature `bounds` (lo, hi), e.g. a search space's gene bounds
(constant features, hi == lo, map to 0); targets are standardised,
predictions are mapped back. The paper (Sec. 3.3, Algorithm 2) does not say
how inputs are scaled. The training-range default lets a predictor fitted on
a concentrated archive (paper mode: the top-ranked subnets of A) map a
candidate far outside [0, 1] on a feature the archive barely varies, where
the cubic RBF extrapolates wildly; the space's bounds keep every genotype of
the space in [0, 1] (benchmarks/archive_modes.py measures both).

RBF member (the authors' choice): an interpolating cubic RBF with a linear
tail, `s(x) = sum_i w_i ||x - x_i||^3 + c_0 + c^T x`, fitted by solving

    [[Phi + lam I, P], [P^T, -mu I]] [w; c] = [y; 0],   P = [1, X].

`lam` (1e-6 relative) makes duplicate training rows harmless (they would
make `Phi` singular); `mu` (1e-6) handles a rank-deficient tail (constant
or collinear features, fewer samples than features). Both are far below the
data's scale, so the member still interpolates distinct points.

Ensemble (Algorithm 2): `n_members` (500) members, each fitted on a random
subset of `sample_fraction` of the samples (without replacement) and of
`feature_fraction` of the features; the prediction is the members' mean.
The fit is `jax.vmap`ped over members and jitted; the fitted ensemble is a
pytree (`RBFParams`). Prediction (`evaluator` + `evaluate`) runs over all
members at once in cache-sized blocks of centres and skips the centres that
only exist because of padding (see `evaluator`).

Baselines: a single RBF on all samples and features (`RBF`), and a Gaussian
process with an RBF kernel and fixed, median-heuristic length scale (`GP`).
Rank correlations: `spearman`, `kendall` (numpy, tie-aware).
"""

from __future__ import annotations

import dataclasses
import math

import chex
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

MIN_SAMPLES = 3


@flax.struct.dataclass
class Scaler:
    x_min: jax.Array   # float32[d]
    x_scale: jax.Array  # float32[d], 1 / range (0 for constant features)
    y_mean: jax.Array  # float32 scalar
    y_std: jax.Array   # float32 scalar


@flax.struct.dataclass
class RBFParams:
    """Fitted cubic RBF members (leading axis = member).

    Members are stored over all d features with unused ones zeroed, so the
    ensemble is evaluated with large matrix products instead of M small
    gathered ones (and the mean of the linear tails is one linear function).

    centers: float32[M, s, d] scaled training points, 0 on unused features;
      only the first `n_active` of the s slots are real centres, the rest
      is padding (static shapes) with weight 0;
    mask: float32[M, d] 1 on the member's features;
    weights: float32[M, s]; tail: float32[M, d + 1] (constant first, 0 on
    unused features); scaler: Scaler;
    n_active: int32 scalar, centres per member (same for every member).
    """

    centers: jax.Array
    mask: jax.Array
    weights: jax.Array
    tail: jax.Array
    scaler: Scaler
    n_active: jax.Array


def check_bounds(bounds) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(lo, hi) per-feature input ranges as tuples of floats; raises
    ValueError unless both are finite, of one length d >= 1, and lo <= hi."""
    try:
        lo, hi = (np.asarray(b, np.float64).reshape(-1) for b in bounds)
    except (TypeError, ValueError):
        raise ValueError("bounds must be a pair (lo, hi) of per-feature "
                         "sequences.") from None
    if lo.shape != hi.shape or not lo.size:
        raise ValueError(f"bounds lo and hi need one equal length d >= 1, got "
                         f"{lo.size} and {hi.size}.")
    if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi)) and np.all(lo <= hi)):
        raise ValueError("bounds must be finite with lo <= hi per feature.")
    return tuple(lo.tolist()), tuple(hi.tolist())


def _check(X, y):
    X = np.asarray(X)
    y = np.asarray(y, np.float64)
    chex.assert_rank((X, y), (2, 1), exception_type=ValueError,
                     custom_message="pass genotypes X[n, d] and targets y[n].")
    chex.assert_equal_shape_prefix((X, y), 1, exception_type=ValueError,
                                   custom_message="X and y need one row each per "
                                   "genotype.")
    if X.shape[0] < MIN_SAMPLES:
        raise ValueError(f"Need at least {MIN_SAMPLES} training samples, got "
                         f"{X.shape[0]}.")
    if not np.all(np.isfinite(y)):
        raise ValueError("Targets contain NaN/inf; drop failed evaluations first.")
    return X, y


def _check_queries(X, d: int) -> jax.Array:
    """X[n, d] with the fitted number of features d, as a jax array."""
    X = jnp.asarray(X)
    chex.assert_shape(X, (None, d), exception_type=ValueError,
                      custom_message=f"predict genotypes X[n, {d}], the features "
                      f"the predictor was fitted on.")
    return X


def fit_scaler(X: jax.Array, y: jax.Array, valid: jax.Array | None = None,
               bounds: tuple[jax.Array, jax.Array] | None = None) -> Scaler:
    """Min-max feature scaling and target standardisation from valid rows.

    Args:
      X: [n, d] inputs; y: float[n] targets; valid: optional bool[n] rows
        to use (default all).
      bounds: optional (lo, hi), each float[d]: scale features by these
        fixed ranges, x' = (x - lo) / (hi - lo), instead of the valid rows'
        min and max (features with hi == lo map to 0 either way).

    Returns:
      Scaler (jittable; `bounds` may be traced).
    """
    X = jnp.asarray(X, jnp.float32)
    y = jnp.asarray(y, jnp.float32)
    valid = jnp.ones(y.shape, bool) if valid is None else valid
    n = jnp.maximum(valid.sum(), 1)
    if bounds is None:
        lo = jnp.min(jnp.where(valid[:, None], X, jnp.inf), 0)
        hi = jnp.max(jnp.where(valid[:, None], X, -jnp.inf), 0)
    else:
        lo, hi = (jnp.broadcast_to(jnp.asarray(b, jnp.float32), X.shape[1:])
                  for b in bounds)
    rng = hi - lo
    scale = jnp.where(rng > 0, 1.0 / jnp.where(rng > 0, rng, 1.0), 0.0)
    mean = jnp.sum(jnp.where(valid, y, 0.0)) / n
    std = jnp.sqrt(jnp.sum(jnp.where(valid, (y - mean) ** 2, 0.0)) / n)
    return Scaler(lo, scale, mean, jnp.where(std > 1e-12, std, 1.0))


def _cubic(a: jax.Array, b: jax.Array) -> jax.Array:
    """||a_i - b_j||^3, [n, m]."""
    d2 = (jnp.sum(a * a, -1)[:, None] + jnp.sum(b * b, -1)[None, :]
          - 2.0 * a @ b.T)
    d2 = jnp.maximum(d2, 0.0)
    return d2 * jnp.sqrt(d2)


def fit_rbf(x: jax.Array, t: jax.Array, active: jax.Array | None = None,
            lam: float = 1e-6, mu: float = 1e-6) -> tuple[jax.Array, jax.Array]:
    """One interpolating cubic RBF with linear tail on scaled data.

    Args:
      x: float32[s, f] scaled inputs; t: float32[s] standardised targets.
      active: optional bool[s]; inactive rows get weight 0 (static shapes).

    Returns:
      (weights float32[s], tail float32[f + 1]). A non-finite solve (not
      seen in practice) returns zeros, i.e. the training mean.
    """
    s, f = x.shape
    active = jnp.ones((s,), bool) if active is None else active
    both = active[:, None] & active[None, :]
    phi = jnp.where(both, _cubic(x, x), 0.0)
    scale = 1.0 + jnp.sum(jnp.abs(phi)) / jnp.maximum(both.sum(), 1)
    phi = phi + jnp.diag(jnp.where(active, lam * scale, 1.0))
    p = jnp.where(active[:, None], jnp.concatenate([jnp.ones((s, 1)), x], 1), 0.0)
    a = jnp.block([[phi, p], [p.T, -mu * jnp.eye(f + 1)]])
    rhs = jnp.concatenate([jnp.where(active, t, 0.0), jnp.zeros((f + 1,))])
    sol = jnp.linalg.solve(a, rhs)
    sol = jnp.where(jnp.all(jnp.isfinite(sol)), sol, 0.0)
    return jnp.where(active, sol[:s], 0.0), sol[s:]


def _scale_x(scaler: Scaler, X) -> jax.Array:
    X = jnp.asarray(X, jnp.float32)
    return ((X - jnp.broadcast_to(scaler.x_min, X.shape))
            * jnp.broadcast_to(scaler.x_scale, X.shape))


def fit_ensemble(key: jax.Array, X: jax.Array, y: jax.Array, valid: jax.Array,
                 n_members: int, sample_fraction: float, n_features: int,
                 bounds: tuple[jax.Array, jax.Array] | None = None) -> RBFParams:
    """Fits `n_members` RBFs on random sample/feature subsets (vmapped).

    Pure and jittable (sizes static); rows with `valid == False` are padding
    and never used, so one compile serves archives of any size up to n.

    Args:
      key: PRNG key; X: [n, d] genotypes; y: float[n] targets; valid: bool[n].
      n_members: ensemble size; sample_fraction: each member uses
        ceil(sample_fraction * n_valid) (at least MIN_SAMPLES) valid rows;
      n_features: features per member (<= d).
      bounds: optional (lo float[d], hi float[d]) input scaling ranges
        (`fit_scaler`); None = the valid rows' min and max.
    """
    scaler = fit_scaler(X, y, valid, bounds)
    xs = _scale_x(scaler, X)
    ts = (jnp.asarray(y, jnp.float32) - scaler.y_mean) / scaler.y_std
    n, d = xs.shape
    s_max = min(n, max(MIN_SAMPLES, math.ceil(sample_fraction * n)))
    n_valid = valid.sum()
    n_use = jnp.minimum(n_valid, jnp.maximum(
        MIN_SAMPLES, jnp.ceil(sample_fraction * n_valid).astype(jnp.int32)))

    def member(k):
        k_s, k_f = jax.random.split(k)
        score = jax.random.uniform(k_s, (n,)) + jnp.where(valid, 0.0, 2.0)
        rows = jnp.argsort(score)[:s_max]
        cols = jax.random.permutation(k_f, d)[:n_features]
        x = xs[rows][:, cols]
        active = jnp.arange(s_max) < n_use
        w, tail = fit_rbf(x, ts[rows], active)
        mask = jnp.zeros((d,), jnp.float32).at[cols].set(1.0)
        centers = xs[rows] * mask[None, :]
        tail_full = jnp.zeros((d + 1,), jnp.float32).at[0].set(tail[0])
        tail_full = tail_full.at[1 + cols].set(tail[1:])
        return centers, mask, w, tail_full

    centers, mask, w, tail = jax.vmap(member)(jax.random.split(key, n_members))
    return RBFParams(centers=centers, mask=mask, weights=w, tail=tail,
                     scaler=scaler, n_active=n_use.astype(jnp.int32))


_fit_ensemble_jit = jax.jit(fit_ensemble, static_argnames=(
    "n_members", "sample_fraction", "n_features"))


# Centres per evaluation block (all members together): the [n, block]
# distance, cube and weight arrays of one block stay in the L2 cache.
BLOCK_CENTERS = 1024


class Evaluator(flax.struct.PyTreeNode):
    """Ensemble laid out for blocked evaluation (see `evaluator`).

    With M members, k = max(1, min(s, BLOCK_CENTERS // M)) centre slots per
    member and block, and b = ceil(s / k) blocks:
    centers: float32[b, d, M * k], -2 x the masked centres; column m * k + i
      of block j is slot j * k + i of member m;
    sq_norms: float32[b, M * k] squared norms of the masked centres;
    weights: float32[b, M * k] member weights / M (0 on padding slots);
    mask: float32[M, d]; tail: float32[d + 1] mean linear tail;
    n_blocks: int32 scalar, blocks holding active centres; scaler: Scaler.
    """

    centers: jax.Array
    sq_norms: jax.Array
    weights: jax.Array
    mask: jax.Array
    tail: jax.Array
    n_blocks: jax.Array
    scaler: Scaler


def evaluator(params: RBFParams) -> Evaluator:
    """Lays the ensemble out for `evaluate` (hoist it out of loops).

    With centre c_mi masked to member m's features, the squared distance of
    x to it is `(x*x) . mask_m - 2 x . c_mi + |c_mi|^2`: the first term is
    one [n, d] x [d, M] product shared by the member's centres, the second a
    [n, d] x [d, M * k] product per block, the third a constant. Blocks hold
    the same k slots of every member, so the blocks past the active centres
    (`n_active`, padding) are skipped at run time.
    """
    m, s, d = params.centers.shape
    k = max(1, min(s, BLOCK_CENTERS // m))
    b = -(-s // k)
    active = jnp.arange(b * k) < params.n_active
    c = jnp.pad(params.centers, ((0, 0), (0, b * k - s), (0, 0)))
    w = jnp.where(active, jnp.pad(params.weights, ((0, 0), (0, b * k - s))), 0.0)

    def blocks(a):  # [M, b * k, ...] -> [b, ..., M * k]
        a = a.reshape((m, b, k) + a.shape[2:])
        a = jnp.moveaxis(a, (0, 2), (-2, -1))
        return a.reshape(a.shape[:-2] + (m * k,))

    return Evaluator(centers=blocks(-2.0 * c), sq_norms=blocks(jnp.sum(c * c, -1)),
                     weights=blocks(w / m), mask=params.mask,
                     tail=params.tail.mean(0),
                     n_blocks=(params.n_active + k - 1) // k, scaler=params.scaler)


def evaluate(ev: Evaluator, X: jax.Array) -> jax.Array:
    """Ensemble mean prediction from an `Evaluator`, float32[n] (jittable).

    Each member is `s(x) = sum_i w_i ||x - x_i||^3 + c_0 + c^T x` on its own
    features (paper Sec. 3.3, Algorithm 2; module docstring); the ensemble
    is their mean. Blocks are summed separately (float32 partial sums of
    M * k terms), which keeps the rounding error at ~1e-6 of the targets.
    """
    xs = _scale_x(ev.scaler, X)
    m = ev.mask.shape[0]
    k = ev.weights.shape[1] // m
    x2 = jnp.repeat((xs * xs) @ ev.mask.T, k, axis=1)  # [n, M * k]

    def block(j, acc):
        d2 = jnp.maximum(xs @ ev.centers[j] + ev.sq_norms[j][None, :] + x2, 0.0)
        # The cube as its own elementwise pass, then a matvec: on XLA:CPU
        # faster than one fused multiply-and-sum.
        return acc + (d2 * jnp.sqrt(d2)) @ ev.weights[j]

    out = jax.lax.fori_loop(0, ev.n_blocks, block,
                            jnp.zeros(xs.shape[0], jnp.float32))
    out = out + ev.tail[0] + xs @ ev.tail[1:]
    return out * ev.scaler.y_std + ev.scaler.y_mean


def predict_ensemble(params: RBFParams, X: jax.Array) -> jax.Array:
    """Mean prediction of all members, float32[n] in target units (jittable)."""
    return evaluate(evaluator(params), X)


_predict_jit = jax.jit(predict_ensemble)


def pad_rows(X, y, multiple: int = 32):
    """Pads X[n, d], y[n] to a multiple of `multiple` rows; returns valid mask.

    Padding keeps the number of compiled shapes small as an archive grows.
    """
    X, y = np.asarray(X), np.asarray(y, np.float32)
    n = X.shape[0]
    n_pad = -(-n // multiple) * multiple
    Xp = np.concatenate([X, np.repeat(X[:1], n_pad - n, 0)], 0)
    yp = np.concatenate([y, np.zeros(n_pad - n, np.float32)])
    return Xp, yp, np.arange(n_pad) < n


@dataclasses.dataclass(frozen=True)
class RBFEnsemble:
    """NAT's RBF ensemble (Algorithm 2).

    Example:
      >>> model = RBFEnsemble().fit(key, genes, errors)
      >>> pred = model.predict(new_genes)

    Attributes:
      n_members: ensemble size (paper: 500).
      sample_fraction: fraction of samples each member sees.
      feature_fraction: fraction of features each member sees.
      params: fitted `RBFParams` (None until `fit`).
      bounds: None (scale inputs by the training data's min and max) or
        (lo, hi), each d numbers: fixed per-feature input ranges, e.g.
        `(space.lower_bounds, space.upper_bounds)` (see `fit_scaler`);
        stored as tuples of floats.
    """

    n_members: int = 500
    sample_fraction: float = 0.7
    feature_fraction: float = 0.7
    params: RBFParams | None = None
    bounds: tuple[tuple[float, ...], tuple[float, ...]] | None = None

    def __post_init__(self):
        if self.n_members < 1:
            raise ValueError(f"n_members must be >= 1, got {self.n_members}.")
        for name in ("sample_fraction", "feature_fraction"):
            v = getattr(self, name)
            if not 0.0 < v <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {v}.")
        if self.bounds is not None:
            object.__setattr__(self, "bounds", check_bounds(self.bounds))

    def n_features(self, d: int) -> int:
        """Features per member for d features."""
        return min(d, max(1, math.ceil(self.feature_fraction * d)))

    def fit(self, key: jax.Array, X, y) -> "RBFEnsemble":
        """Returns a fitted copy. Raises ValueError below MIN_SAMPLES rows."""
        X, y = _check(X, y)
        if self.bounds is not None and len(self.bounds[0]) != X.shape[1]:
            raise ValueError(f"bounds have {len(self.bounds[0])} features but X has "
                             f"{X.shape[1]}; pass one (lo, hi) pair per column.")
        bounds = None if self.bounds is None else tuple(
            jnp.asarray(b, jnp.float32) for b in self.bounds)
        Xp, yp, valid = pad_rows(X, y)
        params = _fit_ensemble_jit(key, jnp.asarray(Xp), jnp.asarray(yp),
                                   jnp.asarray(valid), self.n_members,
                                   self.sample_fraction, self.n_features(X.shape[1]),
                                   bounds)
        return dataclasses.replace(self, params=params)

    def predict(self, X) -> jax.Array:
        """float32[n] predictions for genotypes X[n, d]."""
        if self.params is None:
            raise ValueError("RBFEnsemble.predict called before fit.")
        return _predict_jit(self.params, _check_queries(X, self.params.mask.shape[-1]))


@dataclasses.dataclass(frozen=True)
class RBF:
    """Baseline: one cubic RBF on all samples and features."""

    params: RBFParams | None = None

    def fit(self, key: jax.Array, X, y) -> "RBF":
        X, y = _check(X, y)
        key = jax.random.key(0) if key is None else key  # deterministic anyway
        params = _fit_ensemble_jit(key, jnp.asarray(X), jnp.asarray(y, jnp.float32),
                                   jnp.ones(X.shape[0], bool), 1, 1.0, X.shape[1])
        return dataclasses.replace(self, params=params)

    def predict(self, X) -> jax.Array:
        if self.params is None:
            raise ValueError("RBF.predict called before fit.")
        return _predict_jit(self.params, _check_queries(X, self.params.mask.shape[-1]))


@jax.jit
def _gp_fit(xs: jax.Array, t: jax.Array, noise: float):
    d2 = _cubic(xs, xs) ** (2.0 / 3.0)
    ell2 = jnp.nanmedian(jnp.where(d2 > 0, d2, jnp.nan))
    ell2 = jnp.where(jnp.isfinite(ell2), jnp.maximum(ell2, 1e-6), 1.0)
    k = jnp.exp(-0.5 * d2 / ell2) + noise * jnp.eye(xs.shape[0])
    return jnp.linalg.solve(k, t), ell2


@jax.jit
def _gp_predict(xq: jax.Array, xs: jax.Array, alpha: jax.Array, ell2: jax.Array):
    d2 = _cubic(xq, xs) ** (2.0 / 3.0)
    return jnp.exp(-0.5 * d2 / ell2) @ alpha


@dataclasses.dataclass(frozen=True)
class GP:
    """Baseline: GP regression, squared-exponential kernel, fixed hyperparameters.

    Length scale = median pairwise distance of the scaled training inputs
    (a common heuristic, no marginal-likelihood fit); noise variance
    `noise` on standardised targets. Returns the posterior mean.
    """

    noise: float = 1e-3
    state: tuple | None = None

    def fit(self, key: jax.Array, X, y) -> "GP":
        del key  # deterministic
        X, y = _check(X, y)
        scaler = fit_scaler(X, y)
        xs = _scale_x(scaler, X)
        t = (jnp.asarray(y, jnp.float32) - scaler.y_mean) / scaler.y_std
        alpha, ell2 = _gp_fit(xs, t, self.noise)
        return dataclasses.replace(self, state=(scaler, xs, alpha, ell2))

    def predict(self, X) -> jax.Array:
        if self.state is None:
            raise ValueError("GP.predict called before fit.")
        scaler, xs, alpha, ell2 = self.state
        X = _check_queries(X, xs.shape[-1])
        out = _gp_predict(_scale_x(scaler, X), xs, alpha, ell2)
        return out * scaler.y_std + scaler.y_mean
