"""Generic NSGA-III survival in `jax.numpy` (Deb & Jain, IEEE TEVC 2014).

All objectives are minimised. Nothing here knows about architectures: the
inputs are float objective matrices `[n, n_obj]`, the outputs indices.

Survival of `n_survive` out of `n` (`survive`):

1. Nondominated sorting (`nondominated_rank`); rows holding any NaN are
   ranked after every finite row (a failed evaluation never survives a finite
   one).
2. Fronts are accepted whole while they fit; the split ("last") front `F_l`
   is the one that does not.
3. Normalisation (`normalize`), over the valid rows (the ideal point and
   extreme points lie on the first front anyway; values within 1e-3 of the
   ideal count as 0 in the ASF, as in the reference code):
   ideal point `z*` = per-objective minimum; extreme point of axis `j` = the
   member minimising the achievement scalarising function
   `ASF(f, e_j) = max_k (f_k - z*_k) / w_k` with `w = e_j` (other weights
   1e-6); the hyperplane through the `n_obj` extreme points gives intercepts
   `a_j`; when the extreme points are degenerate (singular system, residual
   too large, an intercept not above `1e-6`) the nadir falls back to the
   worst value of the first front, and per objective to the worst of the
   population when that is still not above the ideal. An optional
   `Normalization` memory (kept by `tell`) carries the ideal point, the worst
   point (the nadir never exceeds it) and the extreme points across
   generations, as pymoo and Deb's own code do.
4. Association: every member goes to the reference line (through the
   origin along `ref_dirs[j]`) with the smallest perpendicular distance.
5. Niching on `F_l`: niche counts `rho_j` come from the accepted fronts.
   Deb & Jain repeatedly take the reference direction with the smallest
   `rho_j` (ties at random), add its closest `F_l` member if `rho_j == 0`,
   otherwise a random one, and increment `rho_j`. The `p`-th member taken
   from niche `j` is therefore taken when the count reaches `rho_j + p`, so
   the whole sequential loop equals sorting `F_l` by the level
   `rho_j + p` with random ties, which we do in one vectorised sort
   (static shapes, no loop over individuals).

`init`, `ask`-free `tell` and `NSGA3State` give an evosax-style state for
`lax.scan`; variation lives in `nat_jax.search.operators`.
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

_BIG = 1e30


# --------------------------------------------------------------- directions
def reference_directions(n_obj: int, n_partitions: int) -> np.ndarray:
    """Das & Dennis (1998) structured directions on the unit simplex.

    Args:
      n_obj: number of objectives (>= 1).
      n_partitions: divisions per axis (>= 1).

    Returns:
      float64[C(n_obj + n_partitions - 1, n_partitions), n_obj], rows >= 0 that
      sum to 1 (lexicographic order, largest first coordinate last).
    """
    if n_obj < 1 or n_partitions < 1:
        raise ValueError(f"Need n_obj >= 1 and n_partitions >= 1, got {n_obj=}, "
                         f"{n_partitions=}.")
    rows = []
    # Stars and bars: choose positions of n_obj - 1 bars among p + n_obj - 1.
    for bars in itertools.combinations(range(n_partitions + n_obj - 1), n_obj - 1):
        edges = (-1,) + bars + (n_partitions + n_obj - 1,)
        rows.append([edges[i + 1] - edges[i] - 1 for i in range(n_obj)])
    return np.asarray(rows, np.float64) / n_partitions


def reference_directions_two_layer(n_obj: int, outer: int, inner: int,
                                   inner_scale: float = 0.5) -> np.ndarray:
    """Two-layer directions for many objectives (Deb & Jain 2014, Sec. V).

    The inner layer `inner_scale * d + (1 - inner_scale) / n_obj` is shrunk
    toward the centroid so that it holds interior directions that a single
    layer with few partitions lacks.

    Returns:
      float64[n_outer + n_inner, n_obj], rows summing to 1.
    """
    if not 0.0 < inner_scale < 1.0:
        raise ValueError(f"inner_scale must be in (0, 1), got {inner_scale}.")
    outer_d = reference_directions(n_obj, outer)
    inner_d = reference_directions(n_obj, inner) * inner_scale
    inner_d += (1.0 - inner_scale) / n_obj
    return np.concatenate([outer_d, inner_d], axis=0)


def default_reference_directions(n_obj: int, pop_size: int) -> np.ndarray:
    """Directions sized to a population: one layer up to 5 objectives, else two.

    Picks the most partitions whose direction count does not exceed
    `pop_size` (at least 1 partition; for >= 6 objectives an outer layer with
    1-3 partitions plus an inner layer, as Deb & Jain do for 8-15 objectives).
    """
    if n_obj == 1:
        return np.ones((1, 1))
    if n_obj <= 5:
        p = 1
        while math.comb(n_obj + p, p + 1) <= pop_size:
            p += 1
        return reference_directions(n_obj, p)
    best = (reference_directions(n_obj, 1), n_obj)
    for outer in (1, 2, 3):
        for inner in (1, 2, 3):
            if inner > outer:
                continue
            n = (math.comb(n_obj + outer - 1, outer)
                 + math.comb(n_obj + inner - 1, inner))
            if best[1] < n <= pop_size:
                best = (reference_directions_two_layer(n_obj, outer, inner), n)
    return best[0]


# ------------------------------------------------------------------ sorting
def _sanitize(f: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(objectives with invalid rows set to +BIG, bool[n] valid)."""
    f = jnp.asarray(f, jnp.float32)
    valid = jnp.all(jnp.isfinite(f), axis=-1)
    return jnp.where(valid[:, None], f, _BIG), valid


def dominates(f: jax.Array) -> jax.Array:
    """bool[n, n]: `out[i, j]` is True when row i Pareto-dominates row j."""
    le = jnp.all(f[:, None, :] <= f[None, :, :], axis=-1)
    lt = jnp.any(f[:, None, :] < f[None, :, :], axis=-1)
    return le & lt


def nondominated_rank(objectives: jax.Array) -> jax.Array:
    """Front index of every row (0 = nondominated), int32[n].

    Peels fronts with a `lax.while_loop` (one dominance matrix, one
    matrix-vector product per front). Rows with a NaN/inf objective all get
    the rank after the last finite front.
    """
    f, valid = _sanitize(objectives)
    dom = dominates(f).astype(jnp.float32)
    n = f.shape[0]

    def cond(c):
        return jnp.any(c[1] < 0)

    def body(c):
        r, rank = c
        remaining = (rank < 0).astype(jnp.float32)
        dominated = (remaining @ dom) > 0  # dominated by someone remaining
        front = (rank < 0) & ~dominated
        return r + 1, jnp.where(front, r, rank)

    rank0 = jnp.where(valid, -1, n).astype(jnp.int32)
    _, rank = jax.lax.while_loop(cond, body, (jnp.int32(0), rank0))
    last = jnp.max(jnp.where(valid, rank, -1)) + 1
    return jnp.where(valid, rank, last).astype(jnp.int32)


# ------------------------------------------------------------ normalisation
@flax.struct.dataclass
class Normalization:
    """Memory of the normalisation across generations (optional).

    ideal / worst: float32[m] running per-objective minimum / maximum;
    extreme: float32[m, m] previous extreme points (row j for axis j).
    """

    ideal: jax.Array
    worst: jax.Array
    extreme: jax.Array

    @classmethod
    def empty(cls, n_obj: int) -> "Normalization":
        inf = jnp.full((n_obj,), jnp.inf, jnp.float32)
        return cls(inf, -inf, jnp.full((n_obj, n_obj), jnp.inf, jnp.float32))


def normalize(f: jax.Array, valid: jax.Array, first_front: jax.Array,
              memory: Normalization | None = None
              ) -> tuple[jax.Array, jax.Array, Normalization]:
    """Ideal and nadir points (Deb & Jain 2014), optionally with memory.

    Args:
      f: float32[n, m] objectives (invalid rows already +BIG).
      valid: bool[n], the rows that take part.
      first_front: bool[n], the nondominated rows.
      memory: previous `Normalization` (None: this population alone). With
        memory the ideal and worst points are running extrema and the
        previous extreme points compete in the ASF search, as in the
        reference implementations (stabler with many objectives).

    Returns:
      (ideal float32[m], nadir float32[m] with nadir > ideal, new memory).
    """
    m = f.shape[1]
    big = jnp.float32(_BIG)
    memory = Normalization.empty(m) if memory is None else memory
    ideal = jnp.minimum(memory.ideal, jnp.min(jnp.where(valid[:, None], f, big), 0))
    worst = jnp.maximum(memory.worst, jnp.max(jnp.where(valid[:, None], f, -big), 0))
    pool = jnp.concatenate([memory.extreme, f], axis=0)
    pool_ok = jnp.concatenate([jnp.all(jnp.isfinite(memory.extreme), 1), valid])
    ft = pool - ideal[None, :]
    ft = jnp.where(ft < 1e-3, 0.0, ft)
    w = jnp.where(jnp.eye(m, dtype=bool), 1.0, 1e-6)              # [m axes, m]
    asf = jnp.max(ft[None, :, :] / w[:, None, :], axis=-1)         # [m, n']
    asf = jnp.where(pool_ok[None, :], asf, jnp.inf)
    extreme = pool[jnp.argmin(asf, axis=1)]                         # [m, m]
    z = extreme - ideal[None, :]
    b = jnp.linalg.solve(z, jnp.ones((m,), jnp.float32))
    intercepts = 1.0 / b
    ok = jnp.all(jnp.isfinite(b)) & jnp.allclose(z @ b, 1.0, atol=1e-4)
    ok &= jnp.all(intercepts > 1e-6)
    nadir = jnp.minimum(ideal + intercepts, worst)
    worst_front = jnp.max(jnp.where(first_front[:, None], f, -big), axis=0)
    worst_pop = jnp.max(jnp.where(valid[:, None], f, -big), axis=0)
    nadir = jnp.where(ok, nadir, worst_front)
    nadir = jnp.where(nadir - ideal > 1e-6, nadir, worst_pop)
    nadir = jnp.where(nadir - ideal > 1e-6, nadir, ideal + 1.0)
    return ideal, nadir, Normalization(ideal, worst, extreme)


def associate(fn: jax.Array, ref_dirs: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Nearest reference line of every normalised row.

    Args:
      fn: float32[n, m] normalised objectives.
      ref_dirs: float32[H, m].

    Returns:
      (niche int32[n], perpendicular distance float32[n]).
    """
    u = ref_dirs / jnp.linalg.norm(ref_dirs, axis=-1, keepdims=True)
    proj = fn @ u.T                                               # [n, H]
    d2 = jnp.sum(fn * fn, axis=-1, keepdims=True) - proj ** 2
    dist = jnp.sqrt(jnp.maximum(d2, 0.0))
    niche = jnp.argmin(dist, axis=-1).astype(jnp.int32)
    return niche, jnp.take_along_axis(dist, niche[:, None], axis=-1)[:, 0]


# ----------------------------------------------------------------- survival
class SurvivalInfo(NamedTuple):
    """Everything `survive_info` computes, all for the input rows."""

    indices: jax.Array    # int32[n_survive], survivors (best first)
    rank: jax.Array       # int32[n], nondominated front index
    niche: jax.Array      # int32[n], associated reference direction
    distance: jax.Array   # float32[n], perpendicular distance to it
    memory: Normalization  # updated normalisation memory


@functools.partial(jax.jit, static_argnames=("n_survive",))
def survive_info(objectives: jax.Array, n_survive: int, ref_dirs: jax.Array,
                 key: jax.Array, memory: Normalization | None = None
                 ) -> SurvivalInfo:
    """NSGA-III environmental selection; see the module docstring.

    Args:
      objectives: float[n, n_obj], minimised; NaN rows rank last.
      n_survive: static number of survivors (<= n).
      ref_dirs: float[H, n_obj] reference directions.
      key: PRNG key for the random tie-breaks of the niching.
      memory: optional normalisation memory (see `normalize`).

    Returns:
      SurvivalInfo; `indices` lists accepted fronts first, then the niched
      members of the split front in the order niching picked them.
    """
    f, valid = _sanitize(objectives)
    n = f.shape[0]
    if not 0 < n_survive <= n:
        raise ValueError(f"n_survive must be in 1..{n}, got {n_survive}.")
    ref_dirs = jnp.asarray(ref_dirs, jnp.float32)
    rank = nondominated_rank(f)
    # Split front: the smallest rank r with #(rank <= r) >= n_survive.
    counts = jnp.zeros((n + 1,), jnp.int32).at[rank].add(1)
    cum = jnp.cumsum(counts)
    last = jnp.argmax(cum >= n_survive).astype(jnp.int32)
    accepted = rank < last
    in_last = rank == last
    ideal, nadir, memory = normalize(f, valid, (rank == 0) & valid, memory)
    fn = (f - ideal[None, :]) / (nadir - ideal)[None, :]
    niche, dist = associate(fn, ref_dirs)
    h = ref_dirs.shape[0]
    rho = jnp.zeros((h,), jnp.int32).at[niche].add(accepted.astype(jnp.int32))
    k_order, k_tie = jax.random.split(key)
    u = jax.random.uniform(k_order, (n,))
    same = (niche[:, None] == niche[None, :]) & in_last[None, :] & in_last[:, None]
    # Closest split-front member of each niche (ties by index).
    closer = same & ((dist[None, :] < dist[:, None]) |
                     ((dist[None, :] == dist[:, None]) &
                      (jnp.arange(n)[None, :] < jnp.arange(n)[:, None])))
    is_closest = in_last & ~jnp.any(closer, axis=1)
    score = jnp.where(is_closest & (rho[niche] == 0), -1.0, u)
    pos = jnp.sum(same & (score[None, :] < score[:, None]), axis=1)
    level = (rho[niche] + pos).astype(jnp.float32)
    level = level + jax.random.uniform(k_tie, (n,), maxval=0.999)
    sort_key = jnp.where(accepted, -1.0, jnp.where(in_last, level, jnp.inf))
    # Accepted fronts first in rank order (stable), then the niching order.
    sort_key = jnp.where(accepted, rank.astype(jnp.float32) - n - 1.0, sort_key)
    order = jnp.argsort(sort_key, stable=True)[:n_survive].astype(jnp.int32)
    return SurvivalInfo(order, rank, niche, dist, memory)


@functools.partial(jax.jit, static_argnames=("n_survive",))
def survive(objectives: jax.Array, n_survive: int, ref_dirs: jax.Array,
            key: jax.Array) -> jax.Array:
    """Indices (int32[n_survive]) of the NSGA-III survivors of `objectives`.

    Jittable with `n_survive` static. See `survive_info` for the details.
    """
    return survive_info(objectives, n_survive, ref_dirs, key).indices


# -------------------------------------------------------------- scan state
@flax.struct.dataclass
class NSGA3State:
    """Population state for `lax.scan` (evosax-style).

    Attributes:
      population: [pop, n_var] decision vectors (any dtype).
      objectives: float32[pop, n_obj], minimised; NaN = failed evaluation.
      rank: int32[pop], nondominated rank within the population.
      generation: int32 scalar.
      memory: normalisation memory (running ideal/worst, extreme points).
    """

    population: jax.Array
    objectives: jax.Array
    rank: jax.Array
    generation: jax.Array
    memory: Normalization


def init(population: jax.Array, objectives: jax.Array) -> NSGA3State:
    """State of an evaluated initial population."""
    f = jnp.asarray(objectives, jnp.float32)
    return NSGA3State(population, f, nondominated_rank(f), jnp.int32(0),
                      Normalization.empty(f.shape[1]))


def tell(state: NSGA3State, offspring: jax.Array, offspring_objectives: jax.Array,
         ref_dirs: jax.Array, key: jax.Array) -> NSGA3State:
    """Merges parents and evaluated offspring, keeps `pop` NSGA-III survivors."""
    pop = state.population.shape[0]
    x = jnp.concatenate([state.population, offspring], axis=0)
    f = jnp.concatenate([state.objectives,
                         jnp.asarray(offspring_objectives, jnp.float32)], axis=0)
    info = survive_info(f, pop, ref_dirs, key, state.memory)
    idx = info.indices
    # Survivors hold whole fronts 0..l-1 plus part of front l, so their rank
    # among themselves equals their rank in the merged set.
    return NSGA3State(x[idx], f[idx], info.rank[idx], state.generation + 1,
                      info.memory)
