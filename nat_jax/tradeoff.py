"""Front quality indicators and high trade-off point selection (NumPy / JAX).

All objectives are minimised.

* `nondominated(F)`: mask of the Pareto-nondominated rows.
* `hypervolume(F, ref, key=None)`: volume dominated by `F` and bounded by
  `ref`. Exact for 1-3 objectives (2-D sweep; 3-D slicing along the last
  objective, each slice a 2-D sweep); a Monte-Carlo estimate with an explicit
  PRNG key beyond three objectives.
* `igd(F, reference_front)`: mean over the reference front of the Euclidean
  distance to the nearest row of `F`.
* `high_tradeoff(F, k)`: the paper's Appendix C selection, the trade-off
  measure of Rachmawati & Srinivasan (2009). On the nondominated rows, with
  objectives normalised to [0, 1] over that front,

      T(x_i) = min_{x_j in N(x_i)}  sum_m max(0, f_m(x_j) - f_m(x_i))
                                   / sum_m max(0, f_m(x_i) - f_m(x_j)),

  the least sacrifice per unit gain when moving from x_i to a neighbour.
  A large T means every move away from x_i costs much more than it gains:
  a knee. `N(x_i)` is every other front member, or its `n_neighbors`
  nearest in normalised objective space. The `k` rows with the largest T
  are returned (ties keep the lower index).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def nondominated(F) -> np.ndarray:
    """bool[n]: rows of F[n, m] that no other row Pareto-dominates."""
    F = np.asarray(F, np.float64)
    le = np.all(F[:, None, :] <= F[None, :, :], axis=-1)
    lt = np.any(F[:, None, :] < F[None, :, :], axis=-1)
    return ~np.any(le & lt, axis=0)


def _hv2d(F: np.ndarray, ref: np.ndarray) -> float:
    F = F[np.all(F < ref, axis=1)]
    if len(F) == 0:
        return 0.0
    F = F[np.lexsort((F[:, 1], F[:, 0]))]
    hv, best_y = 0.0, ref[1]
    for x, y in F:  # sweep along the first objective
        if y < best_y:
            hv += (ref[0] - x) * (best_y - y)
            best_y = y
    return hv


def _hv3d(F: np.ndarray, ref: np.ndarray) -> float:
    F = F[np.all(F < ref, axis=1)]
    if len(F) == 0:
        return 0.0
    F = F[np.argsort(F[:, 2], kind="stable")]
    zs = np.append(F[:, 2], ref[2])
    hv = 0.0
    for i in range(len(F)):
        dz = zs[i + 1] - zs[i]
        if dz > 0:
            hv += dz * _hv2d(F[: i + 1, :2], ref[:2])
    return hv


def hypervolume(F, ref, key: jax.Array | None = None, n_samples: int = 200_000
                ) -> float:
    """Hypervolume of F[n, m] w.r.t. reference point ref[m].

    Args:
      F: objectives; rows not strictly better than `ref` everywhere add 0.
      ref: reference point.
      key: PRNG key, required for m > 3 (Monte-Carlo estimate).
      n_samples: Monte-Carlo samples (standard error ~ V / sqrt(4 n)).
    """
    F = np.asarray(F, np.float64)
    ref = np.asarray(ref, np.float64)
    if F.ndim != 2 or ref.shape != (F.shape[1],):
        raise ValueError(f"Expected F[n, m] and ref[m], got {F.shape}, {ref.shape}.")
    F = F[np.all(np.isfinite(F), axis=1)]
    m = F.shape[1]
    if m == 1:
        return float(max(0.0, ref[0] - F[:, 0].min())) if len(F) else 0.0
    if m == 2:
        return _hv2d(F, ref)
    if m == 3:
        return _hv3d(F, ref)
    if key is None:
        raise ValueError(f"hypervolume with {m} > 3 objectives is a Monte-Carlo "
                         "estimate: pass a PRNG key.")
    F = F[np.all(F < ref, axis=1)]
    if len(F) == 0:
        return 0.0
    F = F[nondominated(F)]
    lo = F.min(0)
    box = float(np.prod(ref - lo))
    u = jax.random.uniform(key, (n_samples, m), jnp.float32)
    pts = jnp.asarray(lo) + u * jnp.asarray(ref - lo)
    Fj = jnp.asarray(F, jnp.float32)

    def chunk(p):
        return jnp.any(jnp.all(Fj[None] <= p[:, None], -1), -1)

    hit = jax.lax.map(chunk, pts.reshape(-1, 1000, m) if n_samples % 1000 == 0
                      else pts[None])
    return box * float(jnp.mean(hit))


def igd(F, reference_front) -> float:
    """Inverted generational distance of F[n, m] to reference_front[r, m]."""
    F = np.asarray(F, np.float64)
    R = np.asarray(reference_front, np.float64)
    d = np.sqrt(((R[:, None, :] - F[None, :, :]) ** 2).sum(-1))
    return float(d.min(1).mean())


def tradeoff_values(F, n_neighbors: int | None = None) -> np.ndarray:
    """Trade-off measure T (module docstring) of each row of a front F[n, m].

    Rows are assumed mutually nondominated. Returns float64[n]; +inf when no
    neighbour offers any gain (cannot happen on a proper front with n > 1).
    """
    F = np.asarray(F, np.float64)
    n = F.shape[0]
    lo, hi = F.min(0), F.max(0)
    Fn = (F - lo) / np.where(hi > lo, hi - lo, 1.0)
    diff = Fn[None, :, :] - Fn[:, None, :]        # [i, j, m] = f(x_j) - f(x_i)
    sacrifice = np.maximum(diff, 0).sum(-1)
    gain = np.maximum(-diff, 0).sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(gain > 0, sacrifice / np.where(gain > 0, gain, 1), np.inf)
    np.fill_diagonal(ratio, np.inf)
    if n_neighbors is not None and n_neighbors < n - 1:
        dist = np.sqrt((diff ** 2).sum(-1))
        np.fill_diagonal(dist, np.inf)
        far = np.argsort(dist, axis=1, kind="stable")[:, n_neighbors:]
        np.put_along_axis(ratio, far, np.inf, axis=1)
    return ratio.min(1)


def high_tradeoff(F, k: int, n_neighbors: int | None = None) -> np.ndarray:
    """Indices (int64[<= k]) of the k highest trade-off nondominated rows.

    Args:
      F: float[n, m] objectives (any rows; dominated ones are never picked).
      k: number of points to return (fewer if the front is smaller).
      n_neighbors: neighbourhood size of the trade-off measure (None = all).
    """
    F = np.asarray(F, np.float64)
    if F.ndim != 2 or F.shape[0] == 0:
        raise ValueError(f"Expected a non-empty F[n, m], got shape {F.shape}.")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}.")
    ok = np.all(np.isfinite(F), axis=1)
    idx = np.flatnonzero(ok)
    # One representative of duplicated rows.
    _, first = np.unique(F[idx], axis=0, return_index=True)
    idx = idx[np.sort(first)]
    idx = idx[nondominated(F[idx])]
    if len(idx) <= 1:
        return idx[:k]
    t = tradeoff_values(F[idx], n_neighbors)
    order = np.argsort(-t, kind="stable")
    return idx[order[:k]]
