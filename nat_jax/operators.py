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
  Deb's bounded polynomial mutation with index `eta` (1.0) on the real line,
  then is rounded and clipped to its bounds (paper Eq. 2; the authors use
  pymoo's polynomial mutation followed by rounding). With
  `d1 = (x - lo) / (hi - lo)`, `d2 = (hi - x) / (hi - lo)`, `u ~ U(0, 1)`:
  `u <= 1/2: dq = (2u + (1 - 2u)(1 - d1)^(eta+1))^(1/(eta+1)) - 1`,
  `u > 1/2: dq = 1 - (2(1 - u) + 2(u - 1/2)(1 - d2)^(eta+1))^(1/(eta+1))`,
  `x' = round(x + dq (hi - lo))`. `mutation_pmf` gives the exact
  distribution of `x'` (used by the tests).
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
    k_do, k_u = jax.random.split(key)
    x = jnp.asarray(x, jnp.float32)
    lo = jnp.asarray(lower, jnp.float32)
    hi = jnp.asarray(upper, jnp.float32)
    do = jax.random.bernoulli(k_do, prob, x.shape)
    u = jax.random.uniform(k_u, x.shape)
    y = jnp.clip(x + _pm_delta(u, x, lo, hi, eta), lo, hi)
    return jnp.where(do, y, x)


def polynomial_mutation(key: jax.Array, genes: jax.Array, lower, upper,
                        prob: float = 0.1, eta: float = 1.0) -> jax.Array:
    """Integer polynomial mutation: real PM, rounded and clipped (Eq. 2).

    Args:
      genes: int[n, n_var]; lower, upper: int[n_var] inclusive bounds.

    Returns:
      int32[n, n_var], every gene within its bounds.
    """
    y = real_polynomial_mutation(key, jnp.asarray(genes, jnp.float32), lower,
                                 upper, prob, eta)
    y = jnp.clip(jnp.round(y), jnp.asarray(lower), jnp.asarray(upper))
    return y.astype(jnp.int32)


def mutation_pmf(x: int, lower: int, upper: int, eta: float = 1.0) -> np.ndarray:
    """Exact distribution of one mutated integer gene (given it mutates).

    Returns:
      float64[upper - lower + 1], P(x' = lower + i).
    """
    lo, hi, x = float(lower), float(upper), float(x)
    span = hi - lo
    if span <= 0:
        return np.ones(1)
    d1, d2 = (x - lo) / span, (hi - x) / span
    a, b = (1 - d1) ** (eta + 1), (1 - d2) ** (eta + 1)

    def cdf(t):  # P(x + dq * span <= t) for the continuous mutant.
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

    edges = [cdf(k + 0.5) for k in range(int(lower), int(upper))] + [1.0]
    pmf = np.diff(np.concatenate([[0.0], edges]))
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
    lo = jnp.asarray(lower, jnp.float32)
    hi = jnp.asarray(upper, jnp.float32)
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
    lo = jnp.asarray(space.lower_bounds)
    hi = jnp.asarray(space.upper_bounds)
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
