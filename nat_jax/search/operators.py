"""Variation operators for integer (and real) genotypes, all jittable.

Integer operators (NAT, paper Sec. 3.4 and Table 2):

* `binary_tournament`: two random members, the lower nondominated rank wins,
  equal ranks are decided by a fair coin. This is what the authors' pymoo
  setup does (NSGA-III's tournament compares feasibility, then picks at
  random; our rank comparison adds the elitist preference that the paper's
  "binary tournament" describes). Niching is left to survival.
* `uniform_crossover`: with probability `prob` (0.9) a pair exchanges every
  gene independently with probability 1/2, giving two offspring; otherwise
  the offspring are copies of the parents.
* `polynomial_mutation`: each gene mutates with probability `prob` (0.1) by
  polynomial mutation with index `eta` (1.0), then is rounded to the nearest
  integer (and clipped, a no-op up to float error). Two variants:

  - `variant="paper"` (default), Eq. 2 as printed in Sec. 3.4, with
    `u ~ U(0, 1)`, `p = 1/(1 + eta)` and bounds `[lo, hi]`:
    `u <= 1/2: x' = x + ((2u)^p - 1)(x - lo)`,
    `u > 1/2:  x' = x + (1 - (2(1 - u))^p)(hi - x)`.
    The step towards a bound scales with the distance to that bound.
  - `variant="pymoo"`, Deb's bounded polynomial mutation (pymoo's `PM`,
    what the authors' nsganetv2 `int_pm` rounds). With
    `d1 = (x - lo) / (hi - lo)`, `d2 = (hi - x) / (hi - lo)`:
    `u <= 1/2: dq = (2u + (1 - 2u)(1 - d1)^(eta+1))^p - 1`,
    `u > 1/2: dq = 1 - (2(1 - u) + 2(u - 1/2)(1 - d2)^(eta+1))^p`,
    `x' = x + dq (hi - lo)`. It equals Eq. 2 only when `x` is on a bound.

  `mutation_pmf` gives the exact distribution of the rounded `x'` of either
  variant (closed form of the inverse CDF).
* `repair`: clip to bounds, then the search space's canonical form.
* `duplicate_mask`: marks rows equal to an earlier row or to any row of a
  reference set (population or archive) so that the caller can penalise
  them; shapes stay static.

Real-coded SBX (`sbx_crossover`) and polynomial mutation without rounding
(`real_polynomial_mutation`) serve the DTLZ checks of the NSGA-III survival.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def binary_tournament(key: jax.Array, rank: jax.Array, n_select: int) -> jax.Array:
    """Indices (int32[n_select]) of tournament winners.

    Args:
      key: PRNG key.
      rank: int32[pop] nondominated rank (lower is better).
      n_select: static number of winners.
    """
    k_pair, k_coin = jax.random.split(key)
    pop = rank.shape[0]
    pairs = jax.random.randint(k_pair, (n_select, 2), 0, pop)
    ra, rb = rank[pairs[:, 0]], rank[pairs[:, 1]]
    coin = jax.random.bernoulli(k_coin, 0.5, (n_select,))
    a_wins = (ra < rb) | ((ra == rb) & coin)
    return jnp.where(a_wins, pairs[:, 0], pairs[:, 1]).astype(jnp.int32)


def uniform_crossover(key: jax.Array, parents_a: jax.Array, parents_b: jax.Array,
                      prob: float = 0.9) -> tuple[jax.Array, jax.Array]:
    """Two offspring per pair by uniform crossover.

    Args:
      parents_a, parents_b: [n_pairs, n_var] parents.
      prob: probability that a pair is crossed at all.

    Returns:
      Two [n_pairs, n_var] offspring arrays (complementary gene picks).
    """
    k_do, k_gene = jax.random.split(key)
    do = jax.random.bernoulli(k_do, prob, (parents_a.shape[0], 1))
    swap = jax.random.bernoulli(k_gene, 0.5, parents_a.shape) & do
    return (jnp.where(swap, parents_b, parents_a),
            jnp.where(swap, parents_a, parents_b))


def _pm_delta(u, x, lo, hi, eta):
    span = jnp.maximum(hi - lo, 1e-12)
    d1, d2 = (x - lo) / span, (hi - x) / span
    p = 1.0 / (eta + 1.0)
    low = (2 * u + (1 - 2 * u) * (1 - d1) ** (eta + 1)) ** p - 1
    high = 1 - (2 * (1 - u) + 2 * (u - 0.5) * (1 - d2) ** (eta + 1)) ** p
    return jnp.where(u <= 0.5, low, high) * span


def real_polynomial_mutation(key: jax.Array, x: jax.Array, lower, upper,
                             prob: float, eta: float) -> jax.Array:
    """Deb's bounded polynomial mutation of real vectors (no rounding).

    Args:
      x: float[n, n_var]; lower, upper: float[n_var] bounds.
      prob: per-variable mutation probability; eta: distribution index.
    """
    x, lo, hi, do, u = _mutation_draws(key, x, lower, upper, prob)
    y = jnp.clip(x + _pm_delta(u, x, lo, hi, eta), lo, hi)
    return jnp.where(do, y, x)


def _mutation_draws(key, x, lower, upper, prob):
    """(x, lo, hi, do, u) as float32[n, n_var]: which variables mutate (each
    with probability `prob`) and their uniform draws u."""
    k_do, k_u = jax.random.split(key)
    x = jnp.asarray(x, jnp.float32)
    lo = jnp.broadcast_to(jnp.asarray(lower, jnp.float32), x.shape)
    hi = jnp.broadcast_to(jnp.asarray(upper, jnp.float32), x.shape)
    do = jax.random.bernoulli(k_do, prob, x.shape)
    u = jax.random.uniform(k_u, x.shape)
    return x, lo, hi, do, u


MUTATION_VARIANTS = ("paper", "pymoo")


def _check_variant(variant: str) -> None:
    if variant not in MUTATION_VARIANTS:
        raise ValueError(f"Unknown mutation variant {variant!r}; use one of "
                         f"{MUTATION_VARIANTS}.")


def _pm_delta_paper(u, x, lo, hi, eta):
    """Step `x' - x` of Eq. 2 (Sec. 3.4) for uniform draws `u`."""
    p = 1.0 / (1.0 + eta)
    low = ((2 * u) ** p - 1) * (x - lo)
    high = (1 - (2 * (1 - u)) ** p) * (hi - x)
    return jnp.where(u <= 0.5, low, high)


def polynomial_mutation(key: jax.Array, genes: jax.Array, lower, upper,
                        prob: float = 0.1, eta: float = 1.0,
                        variant: str = "paper") -> jax.Array:
    """Integer polynomial mutation, rounded to the nearest integer (Eq. 2).

    Args:
      key: PRNG key.
      genes: int[n, n_var]; lower, upper: int[n_var] inclusive bounds.
      prob: per-gene mutation probability (the paper's pm).
      eta: distribution index (the paper's eta_m).
      variant: "paper" (Eq. 2 as printed) or "pymoo" (bounded PM of
        pymoo / nsganetv2); see the module docstring.

    Returns:
      int32[n, n_var], every gene within its bounds.
    """
    _check_variant(variant)
    if variant == "pymoo":
        y = real_polynomial_mutation(key, jnp.asarray(genes, jnp.float32), lower,
                                     upper, prob, eta)
    else:
        x, lo, hi, do, u = _mutation_draws(key, genes, lower, upper, prob)
        y = jnp.where(do, x + _pm_delta_paper(u, x, lo, hi, eta), x)
    y = jnp.clip(jnp.round(y), jnp.broadcast_to(jnp.asarray(lower), y.shape),
                 jnp.broadcast_to(jnp.asarray(upper), y.shape))
    return y.astype(jnp.int32)


def _paper_cdf(t: float, x: float, lo: float, hi: float, eta: float) -> float:
    """P(x' <= t) for the continuous Eq. 2 mutant of `x` (before rounding).

    From u <= 1/2: x' <= t < x iff u <= ((t - lo)/(x - lo))^(eta+1) / 2.
    From u > 1/2: x <= x' <= t iff u <= 1 - ((hi - t)/(hi - x))^(eta+1) / 2.
    A gene on a bound keeps its value with probability 1/2 (an atom at x).
    """
    if t < lo:
        return 0.0
    if t >= hi:
        return 1.0
    if t < x:  # here lo <= t < x, so x > lo
        return 0.5 * ((t - lo) / (x - lo)) ** (eta + 1)
    return 1.0 - 0.5 * ((hi - t) / (hi - x)) ** (eta + 1)  # x <= t < hi


def _pymoo_cdf(t: float, x: float, lo: float, hi: float, eta: float) -> float:
    """P(x' <= t) for the continuous bounded-PM mutant of `x` (pymoo form)."""
    span = hi - lo
    d1, d2 = (x - lo) / span, (hi - x) / span
    a, b = (1 - d1) ** (eta + 1), (1 - d2) ** (eta + 1)
    t = min(max(t, lo), hi)
    if t < x:
        if a >= 1:  # x == lower: nothing below x.
            return 0.0
        dq = (t - x) / span
        return ((dq + 1) ** (eta + 1) - a) / (1 - a) * 0.5
    if b >= 1:
        return 1.0 if t >= x else 0.5
    dq = (t - x) / span
    if dq >= 1:
        return 1.0
    # (1 - dq)^(eta+1) = 2(1 - u) + 2(u - 1/2) b, solve for u.
    v = (1 - dq) ** (eta + 1)
    return (2 - v - b) / (2 * (1 - b)) if b < 1 else 1.0


def mutation_pmf(x: int, lower: int, upper: int, eta: float = 1.0,
                 variant: str = "paper") -> np.ndarray:
    """Exact distribution of one mutated integer gene (given it mutates).

    `P(x' = k) = F(k + 1/2) - F(k - 1/2)` with `F` the CDF of the continuous
    mutant, `F(lower - 1/2) = 0` and `F(upper + 1/2) = 1` (rounding to the
    nearest integer; ties have probability zero). For `variant="paper"`
    (Eq. 2), with `r = eta + 1`:
    `F(t) = ((t - lower)/(x - lower))^r / 2` for `lower <= t < x` and
    `F(t) = 1 - ((upper - t)/(upper - x))^r / 2` for `x <= t < upper`.

    Args:
      x: current value, lower <= x <= upper.
      lower, upper: inclusive integer bounds.
      eta: distribution index.
      variant: "paper" or "pymoo", as in `polynomial_mutation`.

    Returns:
      float64[upper - lower + 1], P(x' = lower + i).
    """
    _check_variant(variant)
    if not lower <= x <= upper:
        raise ValueError(f"Need lower <= x <= upper, got {lower}, {x}, {upper}.")
    lo, hi, xf = float(lower), float(upper), float(x)
    if hi <= lo:
        return np.ones(1)
    cdf = _paper_cdf if variant == "paper" else _pymoo_cdf
    edges = [cdf(k + 0.5, xf, lo, hi, eta) for k in range(int(lower), int(upper))]
    pmf = np.diff(np.concatenate([[0.0], edges, [1.0]]))
    return np.clip(pmf, 0.0, 1.0)


def sbx_crossover(key: jax.Array, parents_a: jax.Array, parents_b: jax.Array,
                  lower, upper, prob: float = 1.0, eta: float = 30.0,
                  prob_var: float = 0.5) -> tuple[jax.Array, jax.Array]:
    """Simulated binary crossover (Deb & Agrawal 1995), bounded variant.

    Each pair is crossed with probability `prob`, each variable with
    `prob_var`; children are swapped per variable with probability 1/2.
    """
    ks = jax.random.split(key, 4)
    a = jnp.asarray(parents_a, jnp.float32)
    b = jnp.asarray(parents_b, jnp.float32)
    lo = jnp.broadcast_to(jnp.asarray(lower, jnp.float32), a.shape)
    hi = jnp.broadcast_to(jnp.asarray(upper, jnp.float32), a.shape)
    y1, y2 = jnp.minimum(a, b), jnp.maximum(a, b)
    gap = jnp.maximum(y2 - y1, 1e-12)
    u = jax.random.uniform(ks[0], a.shape)

    def child(beta_bound_side, sign):
        beta = 1.0 + 2.0 * beta_bound_side / gap
        alpha = 2.0 - beta ** (-(eta + 1.0))
        betaq = jnp.where(u <= 1.0 / alpha, (u * alpha) ** (1.0 / (eta + 1.0)),
                          (1.0 / (2.0 - u * alpha)) ** (1.0 / (eta + 1.0)))
        return 0.5 * (y1 + y2 + sign * betaq * gap)

    c1 = jnp.clip(child(y1 - lo, -1.0), lo, hi)
    c2 = jnp.clip(child(hi - y2, 1.0), lo, hi)
    swap = jax.random.bernoulli(ks[1], 0.5, a.shape)
    c1, c2 = jnp.where(swap, c2, c1), jnp.where(swap, c1, c2)
    do = (jax.random.bernoulli(ks[2], prob, (a.shape[0], 1))
          & jax.random.bernoulli(ks[3], prob_var, a.shape)
          & (jnp.abs(a - b) > 1e-14))
    return jnp.where(do, c1, a), jnp.where(do, c2, b)


def repair(space, genes: jax.Array) -> jax.Array:
    """Clip to the space's bounds, then canonicalise (int32[n, num_genes])."""
    genes = jnp.asarray(genes)
    lo = jnp.broadcast_to(jnp.asarray(space.lower_bounds), genes.shape)
    hi = jnp.broadcast_to(jnp.asarray(space.upper_bounds), genes.shape)
    return space.canonicalize(jnp.clip(genes, lo, hi))


def duplicate_mask(genes: jax.Array, reference: jax.Array | None = None
                   ) -> jax.Array:
    """bool[n]: row equals an earlier row of `genes` or any row of `reference`.

    The first copy of a repeated row is kept (False); every later copy is
    marked. Static shapes: callers penalise marked rows (e.g. NaN objectives,
    which NSGA-III ranks last) instead of removing them.
    """
    n = genes.shape[0]
    eq = jnp.all(genes[:, None, :] == genes[None, :, :], axis=-1)
    earlier = jnp.tril(jnp.ones((n, n), bool), k=-1)
    dup = jnp.any(eq & earlier, axis=1)
    if reference is not None and reference.shape[0] > 0:
        ref_eq = jnp.all(genes[:, None, :] == reference[None, :, :], axis=-1)
        dup |= jnp.any(ref_eq, axis=1)
    return dup
