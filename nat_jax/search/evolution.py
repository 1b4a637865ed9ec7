"""One surrogate-assisted search iteration of NAT (paper Algorithm 3).

`search` fits the RBF ensemble on the archive (genotypes, measured top-1
error), then runs `generations` generations of binary tournament, uniform
crossover, rounded polynomial mutation, repair and NSGA-III survival as one
jitted `lax.scan` over the objectives `[predicted error, complexity...]`,
where `complexity_fn(genes int32[n, g]) -> float32[n, m]` is any vectorised
jittable function (e.g. `objectives.complexity_fn(space, ("madds",))`).
The predictor scales its inputs by the archive's own ranges or, with
`predictor_bounds="space"`, by the space's gene bounds.

Initial population: NSGA-III survivors of the archive under its measured
objectives (the authors start from the archive's front), topped up with
fresh samples when the archive is smaller than the population. Offspring
that duplicate a parent or an earlier offspring get NaN objectives, which
NSGA-III ranks last (static shapes: they are penalised, not removed).

Candidates (the authors' subset selection): from the final population,
minus archive members and duplicates, K are picked greedily; pick `k` works
on complexity objective `k mod m` and takes the candidate that minimises the
standard deviation of the gaps between the sorted values of the archive's
nondominated front plus the candidates picked so far (so it fills the
largest gap), ties broken by lower predicted error. The authors solve this
subset problem with a small GA on one complexity objective; greedy picks in
round robin extend it to several. If the population holds fewer than K
eligible members, fresh random samples top it up, ordered by predicted
error.

Reuse: the scan is compiled once per (space, complexity_fn, config, padded
archive size); create `complexity_fn` once and pass the same object every
iteration.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from nat_jax.search import nsga3, operators, predictor
from nat_jax.space import search_space as ss

ComplexityFn = Callable[[jax.Array], jax.Array]
# SearchConfig.predictor_bounds: predictor input ranges from the fitted rows
# ("data") or the space's gene bounds ("space").
PREDICTOR_BOUNDS = ("data", "space")


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """Hyperparameters of one search iteration (defaults: paper Table 2).

    Attributes:
      pop_size: population size (even, >= 4).
      generations: generations per iteration.
      crossover_prob: probability that a parent pair is crossed.
      mutation_prob: per-gene mutation probability.
      mutation_eta: polynomial mutation distribution index.
      mutation_variant: "paper" (Eq. 2 as printed) or "pymoo" (bounded PM),
        see `operators.polynomial_mutation`.
      n_members: RBF ensemble size.
      sample_fraction, feature_fraction: subsets each member sees.
      n_candidates: K, subnets returned for evaluation.
      pad_multiple: archive rows are padded to a multiple of this.
      predictor_bounds: how the predictor scales its inputs (the paper does
        not say): "data" = min-max of the archive rows it is fitted on,
        "space" = the search space's gene bounds (`predictor_bounds`).
    """

    pop_size: int = 100
    generations: int = 100
    crossover_prob: float = 0.9
    mutation_prob: float = 0.1
    mutation_eta: float = 1.0
    mutation_variant: str = "paper"
    n_members: int = 500
    sample_fraction: float = 0.7
    feature_fraction: float = 0.7
    n_candidates: int = 8
    pad_multiple: int = 64
    predictor_bounds: str = "space"

    def __post_init__(self):
        if self.predictor_bounds not in PREDICTOR_BOUNDS:
            raise ValueError(f"predictor_bounds must be one of {PREDICTOR_BOUNDS}, "
                             f"got {self.predictor_bounds!r}.")
        if self.pop_size < 4 or self.pop_size % 2:
            raise ValueError(f"pop_size must be even and >= 4, got {self.pop_size}.")
        if self.generations < 0:
            raise ValueError(f"generations must be >= 0, got {self.generations}.")
        if not 1 <= self.n_candidates <= self.pop_size:
            raise ValueError(f"Cannot pick n_candidates={self.n_candidates} from "
                             f"pop_size={self.pop_size}.")
        for name in ("crossover_prob", "mutation_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1].")


class SearchResult(NamedTuple):
    """Output of `search`.

    candidates: int32[K, g] canonical genotypes to evaluate next.
    candidate_objectives: float32[K, 1 + m] their predicted error + complexity.
    candidate_valid: bool[K], False only if the space ran out of new genotypes.
    population: int32[pop, g] final population.
    objectives: float32[pop, 1 + m] its objectives (NaN = penalised duplicate).
    predictor: the fitted `RBFEnsemble` (call `.predict(genes)`).
    """

    candidates: jax.Array
    candidate_objectives: jax.Array
    candidate_valid: jax.Array
    population: jax.Array
    objectives: jax.Array
    predictor: predictor.RBFEnsemble


def predictor_bounds(space: ss.SearchSpace, config: SearchConfig
                     ) -> tuple[np.ndarray, np.ndarray] | None:
    """Input ranges for `predictor.fit_ensemble` under `config.predictor_bounds`:
    None ("data": the fitted rows' min and max) or ("space") the space's
    (lower_bounds, upper_bounds), each int32[num_genes], under which every
    genotype of the space scales into [0, 1]."""
    if config.predictor_bounds == "space":
        return space.lower_bounds, space.upper_bounds
    return None


def _gap_std(values: jax.Array, mask: jax.Array) -> jax.Array:
    """Std of the gaps between sorted masked values (0 when < 2 values)."""
    v = jnp.sort(jnp.where(mask, values, jnp.inf))
    gaps = jnp.diff(v)
    ok = jnp.isfinite(gaps)
    n = jnp.maximum(ok.sum(), 1)
    g = jnp.where(ok, gaps, 0.0)
    mean = g.sum() / n
    return jnp.sqrt(jnp.sum(jnp.where(ok, (g - mean) ** 2, 0.0)) / n)


def select_candidates(pool_f: jax.Array, eligible: jax.Array, front_f: jax.Array,
                      front_mask: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """Greedy gap-filling subset selection (see module docstring).

    Args:
      pool_f: float32[p, 1 + m] objectives of the pool (column 0 = error).
      eligible: bool[p] members that may be picked.
      front_f: float32[a, 1 + m] archive objectives; front_mask: bool[a].
      k: static number of picks.

    Returns:
      (int32[k] pool indices, bool[k] valid picks).
    """
    m = pool_f.shape[1] - 1
    p = pool_f.shape[0]

    def pick(carry, j):
        chosen, avail = carry
        obj = 1 + (j % max(m, 1)) if m > 0 else 0
        col = jax.lax.dynamic_index_in_dim(pool_f, obj, axis=1, keepdims=False)
        fcol = jax.lax.dynamic_index_in_dim(front_f, obj, axis=1, keepdims=False)
        base_v = jnp.concatenate([fcol, col])
        base_m = jnp.concatenate([front_mask, chosen])

        def score(i):
            return _gap_std(base_v, base_m.at[front_f.shape[0] + i].set(True))

        s = jax.vmap(score)(jnp.arange(p))
        s = jnp.where(avail, s, jnp.inf)
        err = jnp.where(avail, pool_f[:, 0], jnp.inf)
        best = jnp.lexsort((err, s))[0]
        ok = avail[best]
        return (chosen.at[best].set(ok | chosen[best]),
                avail.at[best].set(False)), (best.astype(jnp.int32), ok)

    init = (jnp.zeros((p,), bool), eligible)
    _, (idx, ok) = jax.lax.scan(pick, init, jnp.arange(k))
    return idx, ok


@functools.partial(jax.jit, static_argnames=("space", "complexity_fn", "config"))
def _search_core(key, archive_genes, archive_errors, archive_valid,
                 space: ss.SearchSpace, complexity_fn: ComplexityFn,
                 config: SearchConfig):
    pop = config.pop_size
    k_fit, k_init, k_pad, k_scan, k_extra = jax.random.split(key, 5)
    d = archive_genes.shape[1]
    n_feat = min(d, max(1, int(np.ceil(config.feature_fraction * d))))
    bounds = predictor_bounds(space, config)
    params = predictor.fit_ensemble(k_fit, archive_genes, archive_errors,
                                    archive_valid, config.n_members,
                                    config.sample_fraction, n_feat, bounds)

    fast = predictor.evaluator(params)

    def evaluate(genes):
        err = predictor.evaluate(fast, genes)
        return jnp.concatenate([err[:, None], complexity_fn(genes)], axis=1)

    arch_f = jnp.concatenate([archive_errors[:, None], complexity_fn(archive_genes)],
                             axis=1)
    arch_f = jnp.where(archive_valid[:, None], arch_f, jnp.nan)
    n_obj = arch_f.shape[1]
    ref_dirs = jnp.asarray(nsga3.default_reference_directions(n_obj, pop),
                           jnp.float32)
    # Initial population: archive survivors (+ fresh samples if too few).
    fresh = space.sample(k_pad, pop)
    cand = jnp.concatenate([archive_genes, fresh], axis=0)
    cand_f = jnp.concatenate([arch_f, jnp.full((pop, n_obj), jnp.inf)], axis=0)
    cand_f = jnp.where(operators.duplicate_mask(cand)[:, None], jnp.nan, cand_f)
    # Fresh samples rank after every archive member but before NaN padding.
    cand_f = jnp.where(jnp.isinf(cand_f), 1e20, cand_f)
    idx = nsga3.survive(cand_f, pop, ref_dirs, k_init)
    genes0 = cand[idx]
    state = nsga3.init(genes0, evaluate(genes0))
    lo = jnp.asarray(space.lower_bounds)
    hi = jnp.asarray(space.upper_bounds)

    def generation(state, key):
        k_sel, k_x, k_m, k_s = jax.random.split(key, 4)
        parents = operators.binary_tournament(k_sel, state.rank, pop)
        genes = state.population
        c1, c2 = operators.uniform_crossover(k_x, genes[parents[: pop // 2]],
                                             genes[parents[pop // 2:]],
                                             config.crossover_prob)
        off = jnp.concatenate([c1, c2], axis=0)
        off = operators.polynomial_mutation(k_m, off, lo, hi, config.mutation_prob,
                                            config.mutation_eta,
                                            variant=config.mutation_variant)
        off = operators.repair(space, off)
        f = evaluate(off)
        dup = operators.duplicate_mask(off, genes)
        f = jnp.where(dup[:, None], jnp.nan, f)
        return nsga3.tell(state, off, f, ref_dirs, k_s), None

    keys = jax.random.split(k_scan, config.generations)
    state, _ = jax.lax.scan(generation, state, keys)

    # Candidate pool: final population, then fresh samples as a fallback.
    extra = space.sample(k_extra, pop)
    pool = jnp.concatenate([state.population, extra], axis=0)
    pool_f = jnp.concatenate([state.objectives, evaluate(extra)], axis=0)
    ref = jnp.where(archive_valid[:, None], archive_genes, -1)
    bad = operators.duplicate_mask(pool, ref) | ~jnp.all(jnp.isfinite(pool_f), 1)
    in_pop = jnp.arange(2 * pop) < pop
    front = (nsga3.nondominated_rank(arch_f) == 0) & archive_valid
    k = config.n_candidates
    idx, ok = select_candidates(pool_f, ~bad & in_pop, arch_f, front, k)
    # Top up from the fallback samples by predicted error.
    used = jnp.zeros((2 * pop,), bool).at[idx].set(ok)
    err = jnp.where(~bad & ~in_pop & ~used, pool_f[:, 0], jnp.inf)
    order = jnp.argsort(err)
    n_missing = k - ok.sum()
    fill_rank = jnp.cumsum(~ok) - 1
    fill = order[jnp.clip(fill_rank, 0, 2 * pop - 1)]
    fill_ok = jnp.isfinite(err[fill]) & (fill_rank < n_missing)
    idx = jnp.where(ok, idx, fill)
    ok = ok | fill_ok
    return (pool[idx], pool_f[idx], ok, state.population, state.objectives, params)


def search(key: jax.Array, space: ss.SearchSpace, archive_genes, archive_errors,
           complexity_fn: ComplexityFn, config: SearchConfig = SearchConfig()
           ) -> SearchResult:
    """One NAT search iteration; returns the K genotypes to evaluate next.

    Args:
      key: PRNG key.
      space: the SearchSpace (bounds, canonical form, sampling).
      archive_genes: int[n, num_genes] evaluated genotypes (n >= 3).
      archive_errors: float[n] their measured top-1 error (minimised).
      complexity_fn: jittable `int32[n, g] -> float32[n, m]`, m >= 1.
      config: SearchConfig.

    Returns:
      SearchResult with K distinct canonical candidates not in the archive.
    """
    genes = np.asarray(archive_genes)
    errors = np.asarray(archive_errors, np.float32)
    if genes.ndim != 2 or genes.shape[1] != space.num_genes:
        raise ValueError(f"archive_genes must be [n, {space.num_genes}], got "
                         f"{genes.shape}.")
    if errors.shape != (genes.shape[0],):
        raise ValueError(f"archive_errors must be [{genes.shape[0]}], got "
                         f"{errors.shape}.")
    if genes.shape[0] < predictor.MIN_SAMPLES:
        raise ValueError(f"Need at least {predictor.MIN_SAMPLES} archive members, "
                         f"got {genes.shape[0]}.")
    if not np.all(np.isfinite(errors)):
        raise ValueError("archive_errors hold NaN/inf: drop failed evaluations.")
    if np.any(genes < space.lower_bounds) or np.any(genes > space.upper_bounds):
        raise ValueError("archive_genes fall outside the space's bounds.")
    genes = np.asarray(space.canonicalize(genes))
    gp, ep, valid = predictor.pad_rows(genes, errors, config.pad_multiple)
    out = _search_core(key, jnp.asarray(gp), jnp.asarray(ep), jnp.asarray(valid),
                       space, complexity_fn, config)
    cands, cand_f, ok, pop, pop_f, params = out
    model = predictor.RBFEnsemble(config.n_members, config.sample_fraction,
                                  config.feature_fraction, params,
                                  predictor_bounds(space, config))
    return SearchResult(cands, cand_f, ok, pop, pop_f, model)
