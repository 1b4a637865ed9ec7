"""Front quality indicators and high trade-off point selection (NumPy / JAX).

All objectives are minimised.

* `nondominated(F)`: mask of the Pareto-nondominated rows.
* `hypervolume(F, ref, key=None)`: volume dominated by `F` and bounded by
  `ref`. Exact for 1-3 objectives (2-D sweep; 3-D slicing along the last
  objective, each slice a 2-D sweep); a Monte-Carlo estimate with an explicit
  PRNG key beyond three objectives.
* `igd(F, reference_front)`: mean over the reference front of the Euclidean
  distance to the nearest row of `F`.
* `tradeoff_values(F)` / `high_tradeoff(F, k)`: the trade-off measure of the
  paper's Appendix C, Eq. 5, and the `k` nondominated rows with the largest
  value. Objectives are min-max normalised over the front. Appendix C
  defines, for a move from x_i to x_j,

      Avg.Loss(i, j) = sum_k max(0, f_k(j) - f_k(i)) / #{k: f_k(j) > f_k(i)}
      Avg.Gain(i, j) = sum_k max(0, f_k(i) - f_k(j)) / #{k: f_k(i) > f_k(j)}
      T(i) = min_{j in B(i)} Avg.Loss(i, j) / Avg.Gain(i, j)      (Eq. 5)

  with B(i) the m nearest neighbours of x_i in normalised objective space
  (m = number of objectives). Reading of the printed text:

  - Eq. 5 prints `max` over B(i). The prose that follows says a high value
    means x_i "causes the largest average loss in some objectives to make a
    unit average gain in other objectives to choose any of its neighbors",
    i.e. even the cheapest move away from x_i is expensive: that is the
    minimum over the neighbours, as in Rachmawati & Srinivasan (2009) and
    the authors' code (`HighTradeoffPoints`, `nanmin`; the paper's source
    [97] is not in our copy of its reference list). The printed max gives
    every interior point of a two-slope front the same value and cannot
    single out its knee (tests/search/test_tradeoff.py), so we take it as a typo.
  - The printed count in Avg.Loss reads `f_k(j) > f_k(j)` (always false); we
    read `f_k(j) > f_k(i)`. The printed upper limit `M` in Avg.Gain is read
    as `m`. An empty count has an empty sum: the average is then 0.
  - A neighbour with no gain gives an infinite ratio (cannot happen between
    distinct members of a nondominated front). Ties in distance keep the
    neighbour with the lower index.

  `variant` selects the reading: "paper" (default, the above), "authors"
  (nsganetv2's `post_search.HighTradeoffPoints` on pymoo's `NeighborFinder`:
  sums instead of averages, B(i) = the epsilon = 0.125 ball around x_i, or
  its min(2m, n - 1) nearest when the ball, x_i included, holds fewer
  points) and "all" (this module's earlier measure: sums, B(i) = every other
  member or its `n_neighbors` nearest).
* `outlier_test(values)`: Appendix F's check that the highest trade-off
  value lies more than mu + 3 sigma of the other values (Appendix C: the
  highest trade-off point is the preferred choice "if this highest trade-off
  value is much larger statistically than other solutions").
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
    pts = jnp.asarray(lo)[None, :] + u * jnp.asarray(ref - lo)[None, :]
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


TRADEOFF_VARIANTS = ("paper", "authors", "all")


def _normalise(F: np.ndarray) -> np.ndarray:
    lo, hi = F.min(0), F.max(0)
    return (F - lo) / np.where(hi > lo, hi - lo, 1.0)


def _nearest(dist: np.ndarray, k: int) -> np.ndarray:
    """bool[n, n]: the k nearest columns of each row (ties: lower index)."""
    n = dist.shape[0]
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    mask = np.zeros((n, n), bool)
    np.put_along_axis(mask, order, True, axis=1)
    return mask


def tradeoff_values(F, n_neighbors: int | None = None, *, variant: str = "paper",
                    epsilon: float = 0.125) -> np.ndarray:
    """Trade-off measure T (Appendix C, Eq. 5; module docstring) of each row.

    Args:
      F: float[n, m] objectives (minimised) of a front; rows are assumed
        distinct and mutually nondominated.
      n_neighbors: |B(i)|. "paper": defaults to m (the paper's choice);
        "all": None means every other row; "authors": must be None.
      variant: "paper", "authors" or "all" (module docstring).
      epsilon: ball radius of the "authors" neighbourhood (normalised units).

    Returns:
      float64[n]. "paper"/"all": +inf where no neighbour offers a gain;
      "authors": NaN where every neighbour is a duplicate (pymoo's nanmin).
    """
    if variant not in TRADEOFF_VARIANTS:
        raise ValueError(f"Unknown trade-off variant {variant!r}; use one of "
                         f"{TRADEOFF_VARIANTS}.")
    F = np.asarray(F, np.float64)
    if F.ndim != 2 or F.shape[0] == 0:
        raise ValueError(f"Expected a non-empty F[n, m], got shape {F.shape}.")
    n, m = F.shape
    Fn = _normalise(F)
    diff = Fn[None, :, :] - Fn[:, None, :]        # [i, j, k] = f_k(j) - f_k(i)
    dist = np.sqrt((diff ** 2).sum(-1))
    loss = np.maximum(diff, 0).sum(-1)
    gain = np.maximum(-diff, 0).sum(-1)
    if variant == "paper":
        loss = loss / np.maximum((diff > 0).sum(-1), 1)
        gain = gain / np.maximum((diff < 0).sum(-1), 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(gain > 0, loss / np.where(gain > 0, gain, 1), np.inf)
    if variant == "authors":
        if n_neighbors is not None:
            raise ValueError("variant='authors' uses an epsilon ball; pass "
                             "epsilon, not n_neighbors.")
        # pymoo NeighborFinder(epsilon, n_min_neigbors="auto"): the ball
        # (x_i included); if it holds fewer than min(2m, n - 1) points, the
        # min(2m, n - 1) + 1 nearest (x_i included). x_i itself gives 0/0.
        n_min = min(2 * m, n - 1)
        ball = dist <= epsilon
        small = ball.sum(1) < n_min
        near = np.where(small[:, None], _nearest(dist, n_min + 1), ball)
        ratio = np.where((gain == 0) & (loss == 0), np.nan, ratio)
        ratio = np.where(near, ratio, np.nan)
        out = np.full(n, np.nan)
        has = ~np.all(np.isnan(ratio), axis=1)
        out[has] = np.nanmin(ratio[has], axis=1)
        return out
    np.fill_diagonal(ratio, np.inf)
    if variant == "paper" and n_neighbors is None:
        n_neighbors = m
    if n_neighbors is not None and n_neighbors < n - 1:
        if n_neighbors < 1:
            raise ValueError(f"n_neighbors must be >= 1, got {n_neighbors}.")
        np.fill_diagonal(dist, np.inf)
        far = np.argsort(dist, axis=1, kind="stable")[:, n_neighbors:]
        np.put_along_axis(ratio, far, np.inf, axis=1)
    return ratio.min(1)


def front_tradeoffs(F, n_neighbors: int | None = None, *, variant: str = "paper",
                    epsilon: float = 0.125) -> tuple[np.ndarray, np.ndarray]:
    """Trade-off values of the distinct nondominated finite rows of F.

    Args:
      F: float[n, m] objectives (any rows).
      n_neighbors, variant, epsilon: as in `tradeoff_values`.

    Returns:
      (idx int64[p], T float64[p]): row indices of F (first copy of each
      duplicated row, in index order) and their trade-off values. A single
      row gets T = +inf.
    """
    F = np.asarray(F, np.float64)
    if F.ndim != 2 or F.shape[0] == 0:
        raise ValueError(f"Expected a non-empty F[n, m], got shape {F.shape}.")
    ok = np.all(np.isfinite(F), axis=1)
    idx = np.flatnonzero(ok)
    # One representative of duplicated rows.
    _, first = np.unique(F[idx], axis=0, return_index=True)
    idx = idx[np.sort(first)]
    idx = idx[nondominated(F[idx])]
    if len(idx) <= 1:
        return idx, np.full(len(idx), np.inf)
    return idx, tradeoff_values(F[idx], n_neighbors, variant=variant,
                                epsilon=epsilon)


def high_tradeoff(F, k: int, n_neighbors: int | None = None, *,
                  variant: str = "paper", epsilon: float = 0.125) -> np.ndarray:
    """Indices (int64[<= k]) of the k highest trade-off nondominated rows.

    Args:
      F: float[n, m] objectives (any rows; dominated ones are never picked).
      k: number of points to return (fewer if the front is smaller).
      n_neighbors, variant, epsilon: as in `tradeoff_values` (default: the
        paper's Eq. 5 with the m nearest neighbours).

    Returns:
      Row indices of F, highest T first (ties keep the lower index).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}.")
    idx, t = front_tradeoffs(F, n_neighbors, variant=variant, epsilon=epsilon)
    if len(idx) <= 1:
        return idx[:k]
    order = np.argsort(-t, kind="stable")
    return idx[order[:k]]


def outlier_test(values, n_sigma: float = 3.0, ddof: int = 0) -> dict:
    """Appendix F's test: is the highest trade-off value an outlier?

    Appendix F reports that "the highest trade-off solution is more than
    (mu + 3 sigma) trade-off away from the rest of 44 solutions": mu and
    sigma are the mean and standard deviation of the other values (the top
    one excluded), and the test passes when T_top > mu + 3 sigma. The paper
    does not say which standard deviation; `ddof=0` (population) is the
    default, as in pymoo's `find_outliers_upper_tail`.

    Args:
      values: float[p] trade-off values of a front (e.g. `front_tradeoffs`).
      n_sigma: the multiple of sigma (3 in the paper).
      ddof: delta degrees of freedom of sigma.

    Returns:
      dict with `n` (p), `top_index` (argmax, first on ties), `top_value`,
      `rest_mean`, `rest_std`, `threshold` (= rest_mean + n_sigma rest_std),
      `z` ((top - rest_mean) / rest_std; inf when rest_std = 0 and top is
      larger) and `passes` (bool). With p = 1 there is nothing to compare:
      the statistics are NaN and `passes` is False.
    """
    v = np.asarray(values, np.float64)
    if v.ndim != 1 or v.size == 0:
        raise ValueError(f"Expected a non-empty 1-D array of values, got {v.shape}.")
    top = int(np.argmax(v))
    res = {"n": int(v.size), "top_index": top, "top_value": float(v[top]),
           "n_sigma": float(n_sigma)}
    if v.size == 1:
        return {**res, "rest_mean": np.nan, "rest_std": np.nan,
                "threshold": np.nan, "z": np.nan, "passes": False}
    if not np.all(np.isfinite(v)):
        raise ValueError("outlier_test needs finite values: use the trade-offs of "
                         "a front without duplicate rows (front_tradeoffs).")
    rest = np.delete(v, top)
    if rest.size - ddof <= 0:
        raise ValueError(f"ddof={ddof} needs more than {ddof + 1} values.")
    mu, sigma = float(rest.mean()), float(rest.std(ddof=ddof))
    gap = v[top] - mu
    z = gap / sigma if sigma > 0 else (np.inf if gap > 0 else 0.0)
    thr = mu + n_sigma * sigma
    return {**res, "rest_mean": mu, "rest_std": sigma, "threshold": thr,
            "z": float(z), "passes": bool(v[top] > thr)}
