"""One surrogate-assisted search iteration of NAT (paper Algorithm 3), for
one task or many (Appendix F).

`search_many` fits one RBF ensemble (Algorithm 2) per task, side by side
(`jax.vmap`), each on its task's measured top-1 errors, then runs
`generations` generations of binary tournament, uniform crossover, rounded
polynomial mutation, repair and NSGA-III survival (Algorithm 4) as one
jitted `lax.scan` over the objectives `[predicted error of task 1, ..., of
task T, complexity...]`, where `complexity_fn(genes int32[n, g]) ->
float32[n, m]` is any vectorised jittable function (e.g.
`objectives.complexity_fn(space, ("madds",))`). NAT's single-task search is
the T = 1 case: `search` (errors float[n]) calls the same core. The
predictors scale their inputs by the space's gene bounds or, with
`predictor_bounds="data"`, by the ranges of the rows they are fitted on.

Initial population: NSGA-III survivors of the archive under its measured
objectives (the authors start from the archive's front), topped up with
fresh samples when the archive is smaller than the population (the fresh
samples get objectives 1e20: they rank after every archive member and before
the NaN rows). Offspring that duplicate a parent or an earlier offspring get
NaN objectives, which NSGA-III ranks last (static shapes: they are
penalised, not removed).

Candidates (the authors' subset selection): from the final population,
minus archive members and duplicates, K are picked greedily on the
objectives `[mean predicted error over the tasks, complexity...]` (for one
task: its predicted error); pick `k` works on complexity objective `k mod m`
and takes the candidate that minimises the standard deviation of the gaps
between the sorted values of the archive's nondominated front plus the
candidates picked so far (so it fills the largest gap), ties broken by lower
(mean) predicted error. The authors solve this subset problem with a small
GA on one complexity objective; greedy picks in round robin extend it to
several. If the population holds fewer than K eligible members, fresh random
samples top it up, ordered by (mean) predicted error.

Reuse: the scan is compiled once per (space, complexity_fn, config, number
of tasks, padded row counts); create `complexity_fn` once and pass the same
object every iteration.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple, Sequence

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
    """Hyperparameters of one search iteration.

    The defaults are the `search` block of experiments/configs/transfer.py
    as its "paper" variant keeps it (paper Table 2 where the paper gives a
    value): a library caller of `search(..., SearchConfig())` gets what a
    paper-sized run gets.

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
      predictor_bounds: how the predictors scale their inputs (the paper does
        not say): "space" = the search space's gene bounds
        (`predictor_bounds`), "data" = min-max of the rows each is fitted on.
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
    """Output of `search` and `search_many` (T tasks, m complexity objectives).

    candidates: int32[K, g] canonical genotypes to evaluate next.
    candidate_objectives: float32[K, T + m] their predicted errors (one per
      task) and complexities.
    candidate_valid: bool[K], False only if the space ran out of new genotypes.
    population: int32[pop, g] final population.
    objectives: float32[pop, T + m] its objectives (NaN = penalised duplicate).
    predictors: one fitted `RBFEnsemble` per task (call `.predict(genes)`).
    """

    candidates: jax.Array
    candidate_objectives: jax.Array
    candidate_valid: jax.Array
    population: jax.Array
    objectives: jax.Array
    predictors: tuple[predictor.RBFEnsemble, ...]


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
def _search_core(key, fit_genes, fit_errors, fit_valid, arch_genes, arch_errors,
                 arch_valid, space: ss.SearchSpace, complexity_fn: ComplexityFn,
                 config: SearchConfig):
    """Jitted body of `search_many`: fit_* [T, n_fit, ...] are each task's
    predictor training rows, arch_* [n, ...] the rows measured on every task
    (errors [n, T]), all padded (valid masks)."""
    pop, k = config.pop_size, config.n_candidates
    n_tasks = fit_genes.shape[0]
    k_fit, k_init, k_pad, k_scan, k_extra = jax.random.split(key, 5)
    d = fit_genes.shape[2]
    n_feat = min(d, max(1, int(np.ceil(config.feature_fraction * d))))
    # One RBF ensemble (Algorithm 2) per task, fitted side by side. One task
    # fits with k_fit itself, T > 1 with split(k_fit, T): the key streams of
    # the single- and the many-task searches are both kept.
    fit = functools.partial(predictor.fit_ensemble, n_members=config.n_members,
                            sample_fraction=config.sample_fraction,
                            n_features=n_feat, bounds=predictor_bounds(space, config))
    # One task runs unbatched: XLA's batched (vmapped) linear solves round
    # differently, and the RBF interpolation systems amplify that, so a
    # vmap over T = 1 would not reproduce the single-task search.
    if n_tasks == 1:
        params = jax.tree.map(lambda a: a[None], fit(k_fit, fit_genes[0],
                                                     fit_errors[0], fit_valid[0]))
        one = predictor.evaluator(jax.tree.map(lambda a: a[0], params))

        def predict(genes):  # [n, g] -> [T = 1, n]
            return predictor.evaluate(one, genes)[None]
    else:
        params = jax.vmap(fit)(jax.random.split(k_fit, n_tasks), fit_genes,
                               fit_errors, fit_valid)
        evals = jax.vmap(predictor.evaluator)(params)

        def predict(genes):  # [n, g] -> [T, n]
            return jax.vmap(predictor.evaluate, in_axes=(0, None))(evals, genes)

    def evaluate(genes):  # [n, g] -> [n, T + m]
        return jnp.concatenate([predict(genes).T, complexity_fn(genes)], axis=1)

    arch_f = jnp.concatenate([arch_errors, complexity_fn(arch_genes)], axis=1)
    arch_f = jnp.where(arch_valid[:, None], arch_f, jnp.nan)
    n_obj = arch_f.shape[1]
    ref_dirs = jnp.asarray(nsga3.default_reference_directions(n_obj, pop),
                           jnp.float32)
    # Initial population: archive survivors, fresh samples after them (1e20:
    # after every archive member, before the NaN padding and duplicates).
    fresh = space.sample(k_pad, pop)
    cand = jnp.concatenate([arch_genes, fresh])
    cand_f = jnp.concatenate([arch_f, jnp.full((pop, n_obj), 1e20)])
    cand_f = jnp.where(operators.duplicate_mask(cand)[:, None], jnp.nan, cand_f)
    genes0 = cand[nsga3.survive(cand_f, pop, ref_dirs, k_init)]
    state = nsga3.init(genes0, evaluate(genes0))
    lo, hi = jnp.asarray(space.lower_bounds), jnp.asarray(space.upper_bounds)

    def generation(state, key):  # Algorithm 3 with Algorithm 4 survival
        k_sel, k_x, k_m, k_s = jax.random.split(key, 4)
        parents = operators.binary_tournament(k_sel, state.rank, pop)
        g = state.population
        c1, c2 = operators.uniform_crossover(k_x, g[parents[:pop // 2]],
                                             g[parents[pop // 2:]],
                                             config.crossover_prob)
        off = operators.polynomial_mutation(
            k_m, jnp.concatenate([c1, c2]), lo, hi, config.mutation_prob,
            config.mutation_eta, variant=config.mutation_variant)
        off = operators.repair(space, off)
        f = jnp.where(operators.duplicate_mask(off, g)[:, None], jnp.nan,
                      evaluate(off))
        return nsga3.tell(state, off, f, ref_dirs, k_s), None

    state, _ = jax.lax.scan(generation, state,
                            jax.random.split(k_scan, config.generations))
    # Candidate pool: the final population, then fresh samples as a fallback.
    extra = space.sample(k_extra, pop)
    pool = jnp.concatenate([state.population, extra])
    pool_f = jnp.concatenate([state.objectives, evaluate(extra)])
    known = jnp.where(arch_valid[:, None], arch_genes, -1)
    bad = operators.duplicate_mask(pool, known) | ~jnp.all(jnp.isfinite(pool_f), 1)
    in_pop = jnp.arange(2 * pop) < pop

    def summary(f):  # [n, T + m] -> [n, 1 + m]: mean predicted error first
        return jnp.concatenate([f[:, :n_tasks].mean(1, keepdims=True),
                                f[:, n_tasks:]], axis=1)

    front = (nsga3.nondominated_rank(arch_f) == 0) & arch_valid
    idx, ok = select_candidates(summary(pool_f), ~bad & in_pop, summary(arch_f),
                                front, k)
    # Top up: the n-th missing pick is the n-th best fallback sample by (mean)
    # predicted error; it is valid if such a sample exists.
    spare = jnp.where(~bad & ~in_pop, summary(pool_f)[:, 0], jnp.inf)
    nth = jnp.cumsum(~ok) - 1
    fill = jnp.argsort(spare)[jnp.clip(nth, 0, 2 * pop - 1)]
    fill_ok = ~ok & jnp.isfinite(spare[fill])
    idx = jnp.where(ok, idx, fill)
    return (pool[idx], pool_f[idx], ok | fill_ok, state.population,
            state.objectives, params)


def training_sets(space: ss.SearchSpace, genes, errors, extra_data=None
                  ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each task's predictor training data: the shared rows plus its own.

    Args:
      space: the shared SearchSpace.
      genes: int[n, g] subnets measured on every task; errors: float[n, T].
      extra_data: None, or per task None or (genes int[n_t, g], errors
        float[n_t]) measured on that task only; rows already in `genes`
        and non-finite errors are dropped (the shared measurement wins).

    Returns:
      ([int32[n + k_t, g]] canonical genes, [float32[n + k_t]] errors) per task.
    """
    genes = np.asarray(space.canonicalize(np.asarray(genes, np.int32)), np.int32)
    errors = np.asarray(errors, np.float32)
    n_tasks = errors.shape[1]
    extra_data = list(extra_data) if extra_data is not None else [None] * n_tasks
    if len(extra_data) != n_tasks:
        raise ValueError(f"extra_data has {len(extra_data)} entries for {n_tasks} "
                         f"tasks; give one (or None) per task.")
    known = {tuple(r) for r in genes.tolist()}
    xs, ys = [], []
    for t, extra in enumerate(extra_data):
        x, y = genes, errors[:, t]
        if extra is not None and len(extra[0]):
            eg = np.asarray(space.canonicalize(np.asarray(
                extra[0], np.int32).reshape(-1, space.num_genes)), np.int32)
            ey = np.asarray(extra[1], np.float32).reshape(-1)
            keep = np.isfinite(ey) & np.array([tuple(r) not in known
                                               for r in eg.tolist()], bool)
            x, y = np.concatenate([x, eg[keep]]), np.concatenate([y, ey[keep]])
        xs.append(x)
        ys.append(y)
    return xs, ys


def _pad(x: np.ndarray, n: int) -> np.ndarray:
    """Rows of x, then its first row repeated up to n rows."""
    return np.concatenate([x, np.repeat(x[:1], n - len(x), 0)])


def search(key: jax.Array, space: ss.SearchSpace, archive_genes, archive_errors,
           complexity_fn: ComplexityFn, config: SearchConfig = SearchConfig()
           ) -> SearchResult:
    """One NAT search iteration (one task); returns the K genotypes to evaluate.

    Args:
      key: PRNG key.
      space: the SearchSpace (bounds, canonical form, sampling).
      archive_genes: int[n, num_genes] evaluated genotypes (n >= 3).
      archive_errors: float[n] their measured top-1 error (minimised).
      complexity_fn: jittable `int32[n, g] -> float32[n, m]`, m >= 1.
      config: SearchConfig.

    Returns:
      SearchResult (T = 1) with K distinct canonical candidates not in the
      archive.
    """
    errors = np.asarray(archive_errors, np.float32)
    n = np.shape(archive_genes)[0] if np.ndim(archive_genes) else 0
    if errors.shape != (n,):
        raise ValueError(f"archive_errors must be [{n}] (one error per genotype), "
                         f"got {errors.shape}.")
    return search_many(key, space, archive_genes, errors[:, None], complexity_fn,
                       config)


def search_many(key: jax.Array, space: ss.SearchSpace, archive_genes,
                archive_errors, complexity_fn: ComplexityFn,
                config: SearchConfig = SearchConfig(),
                extra_data: Sequence[tuple[Any, Any] | None] | None = None
                ) -> SearchResult:
    """One surrogate-assisted search iteration over T tasks (Appendix F).

    Args:
      key: PRNG key.
      space: the shared SearchSpace.
      archive_genes: int[n, num_genes] subnets measured on every task (n >= 3).
      archive_errors: float[n, T] their measured top-1 errors (%), one
        column per task.
      complexity_fn: jittable `int32[n, g] -> float32[n, m]`, m >= 1; pass
        the same object every iteration (one compile).
      config: SearchConfig (population, generations, operators, RBF
        ensemble, K = n_candidates, padding).
      extra_data: optional, per task, (genes int[n_t, g], errors float[n_t])
        measured on that task only (its own single-task archive): added to
        that task's predictor training data (`training_sets`).

    Returns:
      SearchResult with K distinct canonical candidates not in the archive.
    """
    genes = np.asarray(archive_genes)
    errors = np.asarray(archive_errors, np.float32)
    if genes.ndim != 2 or genes.shape[1] != space.num_genes:
        raise ValueError(f"archive_genes must be [n, {space.num_genes}], got "
                         f"{genes.shape}.")
    if errors.ndim != 2 or errors.shape[0] != genes.shape[0] or not errors.shape[1]:
        raise ValueError(f"archive_errors must be [{genes.shape[0]}, T>=1], got "
                         f"{errors.shape}.")
    if genes.shape[0] < predictor.MIN_SAMPLES:
        raise ValueError(f"Need at least {predictor.MIN_SAMPLES} archive members "
                         f"(measured on every task), got {genes.shape[0]}.")
    if not np.all(np.isfinite(errors)):
        raise ValueError("archive_errors hold NaN/inf: drop failed evaluations "
                         "(keep only the subnets measured on every task).")
    if np.any(genes < space.lower_bounds) or np.any(genes > space.upper_bounds):
        raise ValueError("archive_genes fall outside the space's bounds.")
    genes = np.asarray(space.canonicalize(genes.astype(np.int32)), np.int32)
    xs, ys = training_sets(space, genes, errors, extra_data)
    mult = config.pad_multiple
    n_fit = -(-max(len(x) for x in xs) // mult) * mult
    n_arc = -(-len(genes) // mult) * mult
    fit_genes = np.stack([_pad(x, n_fit) for x in xs])
    fit_errors = np.stack([np.pad(y, (0, n_fit - len(y))) for y in ys])
    fit_valid = np.stack([np.arange(n_fit) < len(y) for y in ys])
    out = _search_core(
        key, jnp.asarray(fit_genes), jnp.asarray(fit_errors), jnp.asarray(fit_valid),
        jnp.asarray(_pad(genes, n_arc)), jnp.asarray(_pad(errors, n_arc)),
        jnp.asarray(np.arange(n_arc) < len(genes)), space, complexity_fn, config)
    cands, cand_f, ok, pop, pop_f, params = out
    models = tuple(predictor.RBFEnsemble(
        config.n_members, config.sample_fraction, config.feature_fraction,
        jax.tree.map(lambda a, t=t: a[t], params), predictor_bounds(space, config))
        for t in range(len(xs)))
    return SearchResult(cands, cand_f, ok, pop, pop_f, models)
