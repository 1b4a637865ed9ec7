"""Many objectives across tasks: one search over several adapted supernets.

Paper Appendix F ("Scalability to objectives continued"): the top-1
accuracy on each of several datasets, "computed by inheriting weights from
the dataset-specific supernets", plus #MAdds are the objectives of one
many-objective search; "since the supernets are already adapted to each
dataset, we exclude the supernet adaptation step". The nondominated set is
shown in a parallel-coordinate plot, and the highest trade-off solution
(Appendix C, Eq. 5), if it lies more than mu + 3 sigma above the rest, is the
single network that compromises on every task.

`run(tasks, names, config, workdir)` does that, resumably:

  0. a joint archive: every task's own picks (`result.json` of its transfer
     run), the smallest and the largest subnet and uniform samples, up to
     `archive_init` members, each measured on every task's supernet (BN
     re-calibrated on that task's training split, top-1 on its validation
     split: `evaluation.evaluate_subnets`);
  1. per iteration, `search_many`: one RBF-ensemble accuracy predictor per
     task (Algorithm 2), fitted on that task's measurements (the joint
     archive plus the task's own transfer archive, measured with the same
     final weights), and NSGA-III (Algorithms 3-4) on the objectives
     `[predicted error of task 1, ..., of task T, complexity ...]`;
  2. the K chosen candidates are measured on every task and join the archive;
  3. at the end: the nondominated set, Appendix C's trade-off values, the
     pick (highest value), Appendix F's mu + 3 sigma test, and for every task
     the pick's accuracy against the best subnet of the task's own search at
     similar (at most `SIMILAR_MADDS` x the pick's) MAdds.

Every task keeps its own classifier (class counts may differ); the
complexity objectives count the first task's classifier. A task's supernet is
a set, one per width multiplier (NAT section 3.2's width gene;
`nat_jax.model.supernet_set`): a subnet is measured on the supernet of its width.
All tasks must share one search space (same space, widths and resolutions):
the genotype must mean the same network on every task.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import pathlib
import time
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from nat_jax.data import datasets as data
from nat_jax.data import pipeline
from nat_jax.model import supernet_set
from nat_jax.nat import report as report_lib
from nat_jax.nat import retarget, run_config
from nat_jax.runtime import progress as progress_lib
from nat_jax.runtime import workdir as workdir_lib
from nat_jax.search import evolution, nsga3, operators, predictor, rank_stats, tradeoff
from nat_jax.search.archive import Archive
from nat_jax.space import objectives
from nat_jax.space import search_space as ss
from nat_jax.train import evaluation

ERROR = "top1_error"
# "Similar MAdds" of the per-task comparison: at most this multiple of the
# pick's MAdds (Appendix F compares with models of "similar or less #MAdds").
SIMILAR_MADDS = 1.1


# ================================================================ the search
class ManySearchResult(NamedTuple):
    """Output of `search_many` (T tasks, m complexity objectives).

    candidates: int32[K, g] canonical genotypes to measure next.
    candidate_objectives: float32[K, T + m] their predicted errors (%) and
      complexities.
    candidate_valid: bool[K], False only if the space ran out of new genotypes.
    population: int32[pop, g]; objectives: float32[pop, T + m] (NaN =
      penalised duplicate).
    predictors: one fitted `predictor.RBFEnsemble` per task.
    """

    candidates: jax.Array
    candidate_objectives: jax.Array
    candidate_valid: jax.Array
    population: jax.Array
    objectives: jax.Array
    predictors: tuple[predictor.RBFEnsemble, ...]


def _pad(x: np.ndarray, n: int) -> np.ndarray:
    """Rows of x repeated from its first row up to n rows."""
    return np.concatenate([x, np.repeat(x[:1], n - len(x), 0)]) if len(x) < n else x


@functools.partial(jax.jit, static_argnames=("space", "complexity_fn", "config"))
def _search_many_core(key, fit_genes, fit_errors, fit_valid, arch_genes, arch_errors,
                      arch_valid, space: ss.SearchSpace, complexity_fn,
                      config: evolution.SearchConfig):
    """Jitted body of `search_many` (shapes: see there, all padded)."""
    pop, k = config.pop_size, config.n_candidates
    n_tasks = fit_genes.shape[0]
    k_fit, k_init, k_pad, k_scan, k_extra = jax.random.split(key, 5)
    d = fit_genes.shape[2]
    n_feat = min(d, max(1, math.ceil(config.feature_fraction * d)))
    # One RBF ensemble (Algorithm 2) per task, fitted side by side.
    fit = functools.partial(predictor.fit_ensemble, n_members=config.n_members,
                            sample_fraction=config.sample_fraction,
                            n_features=n_feat,
                            bounds=evolution.predictor_bounds(space, config))
    params = jax.vmap(fit)(jax.random.split(k_fit, n_tasks), fit_genes, fit_errors,
                           fit_valid)
    evals = jax.vmap(predictor.evaluator)(params)

    def evaluate(genes):  # [n, g] -> [n, T + m]
        err = jax.vmap(predictor.evaluate, in_axes=(0, None))(evals, genes)
        return jnp.concatenate([err.T, complexity_fn(genes)], axis=1)

    arch_f = jnp.concatenate([arch_errors, complexity_fn(arch_genes)], axis=1)
    arch_f = jnp.where(arch_valid[:, None], arch_f, jnp.nan)
    n_obj = arch_f.shape[1]
    ref_dirs = jnp.asarray(nsga3.default_reference_directions(n_obj, pop),
                           jnp.float32)
    # Start: NSGA-III survivors of the measured archive, fresh samples after.
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
    # K candidates: the greedy gap-filling subset selection of
    # `evolution.select_candidates` on [mean predicted error, complexity]
    # (ties go to the lower mean error), from the final population minus the
    # archive; fresh samples by mean predicted error if too few are new.
    extra = space.sample(k_extra, pop)
    pool = jnp.concatenate([state.population, extra])
    pool_f = jnp.concatenate([state.objectives, evaluate(extra)])
    known = jnp.where(arch_valid[:, None], arch_genes, -1)
    bad = operators.duplicate_mask(pool, known) | ~jnp.all(jnp.isfinite(pool_f), 1)
    in_pop = jnp.arange(2 * pop) < pop

    def summary(f):  # [n, T + m] -> [n, 1 + m]
        return jnp.concatenate([f[:, :n_tasks].mean(1, keepdims=True),
                                f[:, n_tasks:]], axis=1)

    front = (nsga3.nondominated_rank(arch_f) == 0) & arch_valid
    idx, ok = evolution.select_candidates(summary(pool_f), ~bad & in_pop,
                                          summary(arch_f), front, k)
    used = jnp.zeros((2 * pop,), bool).at[idx].set(ok)
    spare = jnp.where(~bad & ~in_pop & ~used, summary(pool_f)[:, 0], jnp.inf)
    nth = jnp.cumsum(~ok) - 1                     # the n-th missing pick
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


def search_many(key: jax.Array, space: ss.SearchSpace, archive_genes,
                archive_errors, complexity_fn: Callable,
                config: evolution.SearchConfig,
                extra_data: Sequence[tuple[Any, Any]] | None = None
                ) -> ManySearchResult:
    """One surrogate-assisted many-task search iteration (Appendix F).

    Args:
      key: PRNG key.
      space: the shared SearchSpace.
      archive_genes: int[n, num_genes] subnets measured on every task.
      archive_errors: float[n, T] their measured top-1 errors (%), one
        column per task.
      complexity_fn: jittable `int32[n, g] -> float32[n, m]`, m >= 1; pass
        the same object every iteration (one compile).
      config: evolution.SearchConfig (population, generations, operators,
        RBF ensemble, K = n_candidates, padding).
      extra_data: optional, per task, (genes int[n_t, g], errors float[n_t])
        measured on that task only (its own single-task archive): added to
        that task's predictor training data.

    Returns:
      ManySearchResult with K distinct canonical candidates not in the archive.
    """
    genes = np.asarray(archive_genes)
    errors = np.asarray(archive_errors, np.float32)
    if genes.ndim != 2 or genes.shape[1] != space.num_genes:
        raise ValueError(f"archive_genes must be [n, {space.num_genes}], got "
                         f"{genes.shape}.")
    if errors.ndim != 2 or errors.shape[0] != genes.shape[0] or not errors.shape[1]:
        raise ValueError(f"archive_errors must be [{genes.shape[0]}, T>=1], got "
                         f"{errors.shape}.")
    if not np.all(np.isfinite(errors)):
        raise ValueError("archive_errors hold NaN/inf: keep only the subnets "
                         "measured on every task.")
    if genes.shape[0] < predictor.MIN_SAMPLES:
        raise ValueError(f"Need at least {predictor.MIN_SAMPLES} subnets measured "
                         f"on every task, got {genes.shape[0]}.")
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
    out = _search_many_core(
        key, jnp.asarray(fit_genes), jnp.asarray(fit_errors), jnp.asarray(fit_valid),
        jnp.asarray(_pad(genes, n_arc)), jnp.asarray(_pad(errors, n_arc)),
        jnp.asarray(np.arange(n_arc) < len(genes)), space, complexity_fn, config)
    cands, cand_f, ok, pop, pop_f, params = out
    models = tuple(predictor.RBFEnsemble(
        config.n_members, config.sample_fraction, config.feature_fraction,
        jax.tree.map(lambda a, t=t: a[t], params),
        bounds=evolution.predictor_bounds(space, config)) for t in range(len(xs)))
    return ManySearchResult(cands, cand_f, ok, pop, pop_f, models)


# ================================================================= the tasks
@dataclasses.dataclass
class Task:
    """One adapted task supernet and its data.

    Attributes:
      name: short unique name (the dataset's, e.g. "mnist_mini", "digits").
      source: the path given (a transfer workdir or a supernet set).
      dataset: its data (validation split measured, training split for BN).
      supernets: {width: (model, variables)}: the adapted supernet of each
        width of its set (its own classifier), every model's space `space`.
      space: its search space, with the widths of its set.
      eval_config: the task's evaluation settings (its transfer config's).
      archive: the task's own single-task archive (None for a bare supernet
        directory), measured with the same weights.
      picks: archive indices of its own final picks (result.json).
    """

    name: str
    source: str
    dataset: data.Dataset
    supernets: dict[float, tuple[Any, dict]]
    space: ss.SearchSpace
    eval_config: evaluation.EvalConfig
    archive: Archive | None = None
    picks: tuple[int, ...] = ()

    @functools.cached_property
    def calibration(self) -> pipeline.CalibrationSet:
        c = self.eval_config
        return pipeline.CalibrationSet(self.dataset.train, c.calib_images,
                                       c.calib_batch_size, c.calib_seed)

    def own_measured(self) -> tuple[np.ndarray, np.ndarray]:
        """(genes, errors %) of the own archive measured with the final weights."""
        if self.archive is None or not len(self.archive):
            return (np.zeros((0, self.space.num_genes), np.int32),
                    np.zeros((0,), np.float32))
        last = max(e.version for e in self.archive.entries)
        ok = [i for i, e in enumerate(self.archive.entries)
              if e.version == last and e.top1 is not None]
        return self.archive.genes()[ok], self.archive.errors()[ok]


def parse_tasks(text: str) -> list[tuple[str, str | None]]:
    """"runs/a,ckpt/b=mnist_mini" -> [("runs/a", None), ("ckpt/b", "mnist_mini")].

    Each item is a transfer workdir, or a supernet directory followed by
    `=DATASET` (a registered name or an image folder).
    """
    out = []
    for item in filter(None, (s.strip() for s in str(text).split(","))):
        path, _, ds = item.partition("=")
        out.append((path.strip(), ds.strip() or None))
    if len({p for p, _ in out}) != len(out):
        raise ValueError(f"A task is listed twice in {text!r}; give each adapted "
                         f"supernet once.")
    return out


def _unique_name(name: str, taken: set[str]) -> str:
    base = os.path.basename(os.path.normpath(name)) or name
    out, i = base, 2
    while out in taken:
        out, i = f"{base}_{i}", i + 1
    return out


def load_task(path: str, dataset: str | None, fallback_config,
              taken: set[str] = frozenset()) -> Task:
    """A Task from a transfer workdir, or from SUPERNET_DIR with its DATASET.

    Args:
      path: a finished experiments.transfer workdir, or a supernet directory.
      dataset: the dataset of a bare supernet directory (None for a workdir;
        for a workdir it overrides its config's dataset: use with care).
      fallback_config: a transfer ConfigDict whose `eval` block (and `seed`)
        measures a bare supernet directory.
      taken: names already used (the new name gets a suffix if needed).
    """
    p = pathlib.Path(path)
    if not p.exists():
        raise ValueError(f"Task {path} does not exist; give a transfer --workdir or "
                         f"SUPERNET_DIR=DATASET.")
    if (p / "config.json").is_file() and (p / "archive.json").is_file():
        plan, archive, supernets = retarget.load_workdir(p)
        cfg, ds = plan.config, plan.task.dataset
        if dataset is not None:
            ds = data.load(dataset)
        picks = ()
        if (p / "result.json").is_file():
            picks = tuple(json.loads((p / "result.json").read_text()).get("picks",
                                                                           []))
        return Task(_unique_name(cfg.dataset if dataset is None else dataset, taken),
                    str(path), ds, supernets, archive.space,
                    run_config.eval_config(cfg), archive, picks)
    if dataset is None:
        raise ValueError(f"{path} is not a finished transfer workdir (no config.json "
                         f"and archive.json); for a supernet directory write "
                         f"{path}=DATASET.")
    space = supernet_set.set_space(p)
    supernets = {w: supernet_set.load_set_width(p, w, space)
                 for w in supernet_set.widths(p)}
    ds = data.load(dataset)
    for w, (model, _) in supernets.items():
        if ds.num_classes != model.num_classes:
            raise ValueError(f"Supernet {path} (width {w}) has a "
                             f"{model.num_classes}-class classifier but {dataset} "
                             f"has {ds.num_classes} classes; give the supernet "
                             f"adapted to {dataset}.")
    return Task(_unique_name(dataset, taken), str(path), ds, supernets, space,
                run_config.eval_config(fallback_config))


def _space_diff(a: ss.SearchSpace, b: ss.SearchSpace) -> str:
    return ", ".join(f"{f.name} {getattr(a, f.name)} vs {getattr(b, f.name)}"
                     for f in dataclasses.fields(a)
                     if getattr(a, f.name) != getattr(b, f.name))


def check_spaces(tasks: Sequence[Task]) -> ss.SearchSpace:
    """The shared search space; a one-line ValueError if two tasks differ."""
    first = tasks[0]
    for t in tasks[1:]:
        if t.space != first.space:
            raise ValueError(
                f"Task {t.name} ({t.source}) has another search space than "
                f"{first.name} ({first.source}): {_space_diff(first.space, t.space)}"
                f"; adapt every task from the same --config.space, widths and "
                f"resolutions.")
    return first.space


def load_tasks(text: str, fallback_config) -> list[Task]:
    """Tasks of a comma-separated list (`parse_tasks`), checked for one space."""
    specs = parse_tasks(text)
    if len(specs) < 2:
        raise ValueError(f"A many-task search needs at least 2 tasks, got {text!r} "
                         f"(one task: use --supernet_dir=WORKDIR alone).")
    tasks: list[Task] = []
    for path, ds in specs:
        tasks.append(load_task(path, ds, fallback_config, {t.name for t in tasks}))
    check_spaces(tasks)
    return tasks


def objective_names(text: str, task_names: Sequence[str]
                    ) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(all objective names, complexity names) from "top1_error,madds,...".

    `top1_error` (first) becomes one objective per task, "top1_error:TASK";
    at least one complexity objective follows.
    """
    names = tuple(n.strip() for n in str(text).split(",") if n.strip())
    if not names or names[0] != ERROR:
        raise ValueError(f"Objectives must start with top1_error, got {text!r} "
                         f"(e.g. top1_error,madds).")
    rest = names[1:]
    if not rest or ERROR in rest or len(set(rest)) != len(rest):
        raise ValueError(f"Give top1_error once, then one or more distinct "
                         f"complexity objectives (e.g. top1_error,madds), got "
                         f"{text!r}.")
    return tuple(f"{ERROR}:{t}" for t in task_names) + rest, rest


# ============================================================ joint archive
@dataclasses.dataclass
class JointEntry:
    """One subnet of the joint archive; top-1 values are percentages."""

    genes: tuple[int, ...]
    iteration: int
    top1: dict[str, float] = dataclasses.field(default_factory=dict)
    top5: dict[str, float] = dataclasses.field(default_factory=dict)
    predicted_top1: dict[str, float] = dataclasses.field(default_factory=dict)
    objectives: dict[str, float] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class JointArchive:
    """Subnets measured on every task (insertion order kept, canonical genes)."""

    space: ss.SearchSpace
    tasks: tuple[str, ...]
    entries: list[JointEntry] = dataclasses.field(default_factory=list)

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, genes, iteration: int, objectives: Sequence[dict],
            predicted: Sequence[dict] | None = None) -> list[int]:
        """Adds new canonical genotypes (known ones ignored); returns indices."""
        known = {e.genes for e in self.entries}
        added = []
        predicted = list(predicted) if predicted is not None else [{}] * len(genes)
        for g, obj, pred in zip(genes, objectives, predicted):
            key = tuple(int(x) for x in self.space.canonicalize(
                self.space.validate_genes(np.asarray(g))))
            if key in known:
                continue
            known.add(key)
            added.append(len(self.entries))
            self.entries.append(JointEntry(key, iteration, objectives=dict(obj),
                                           predicted_top1=dict(pred)))
        return added

    def pending(self, task: str) -> list[int]:
        return [i for i, e in enumerate(self.entries) if task not in e.top1]

    def genes(self) -> np.ndarray:
        return np.array([e.genes for e in self.entries], np.int32).reshape(
            len(self), self.space.num_genes)

    def errors(self) -> np.ndarray:
        """float64[n, T] top-1 errors (%), NaN where not measured."""
        return np.array([[100.0 - e.top1[t] if t in e.top1 else np.nan
                          for t in self.tasks] for e in self.entries],
                        np.float64).reshape(len(self), len(self.tasks))

    def objective_matrix(self, complexity: Sequence[str]) -> np.ndarray:
        """float64[n, T + m]: the task errors, then the complexity objectives."""
        c = np.array([[e.objectives.get(n, np.nan) for n in complexity]
                      for e in self.entries], np.float64).reshape(
                          len(self), len(complexity))
        return np.concatenate([self.errors(), c], axis=1)

    def complete(self) -> np.ndarray:
        """bool[n]: measured on every task."""
        return np.all(np.isfinite(self.errors()), axis=1)

    def to_json(self) -> dict:
        rows = []
        for e in self.entries:
            arch = self.space.decode(e.genes)
            rows.append({"genes": list(e.genes),
                         "encoding": arch.to_encoding(self.space),
                         "resolution": arch.resolution, "iteration": e.iteration,
                         "top1": e.top1, "top5": e.top5,
                         "predicted_top1": e.predicted_top1,
                         "objectives": e.objectives})
        return {"tasks": list(self.tasks), "num_genes": self.space.num_genes,
                "space": self.space.to_json(), "entries": rows}

    @classmethod
    def from_json(cls, obj: dict, space: ss.SearchSpace) -> "JointArchive":
        if obj.get("num_genes") != space.num_genes:
            raise ValueError("The joint archive belongs to another search space; "
                             "use a new --output.")
        arc = cls(space, tuple(obj["tasks"]))
        for r in obj["entries"]:
            arc.entries.append(JointEntry(
                tuple(int(x) for x in r["genes"]), int(r["iteration"]),
                dict(r["top1"]), dict(r["top5"]), dict(r["predicted_top1"]),
                dict(r["objectives"])))
        return arc

    def save(self, path) -> None:
        workdir_lib.write_json(path, self.to_json())

    @classmethod
    def load(cls, path, space: ss.SearchSpace) -> "JointArchive":
        try:
            return cls.from_json(json.loads(pathlib.Path(path).read_text()), space)
        except json.JSONDecodeError:
            raise ValueError(f"{path} is corrupt; delete it to start over.") from None


# ====================================================================== run
@dataclasses.dataclass(frozen=True)
class MultiTaskConfig:
    """Settings of a many-task search (all explicit: see experiments/search.py).

    Attributes:
      objectives: "top1_error,COMPLEXITY[,...]" (`objective_names`).
      search: evolution.SearchConfig; its n_candidates is K per iteration.
      iterations: search iterations after the initial archive.
      archive_init: size of the initial joint archive (at least 3).
      seed: PRNG seed of the samples and the searches.
      constraints: e.g. "madds<=300" (`retarget.parse_constraints`); the
        nondominated set and the pick are taken among feasible subnets.
      latency_table: table file for the "latency" objective, or "".
      tradeoff: keyword arguments of `tradeoff.front_tradeoffs`.
    """

    objectives: str
    search: evolution.SearchConfig
    iterations: int
    archive_init: int
    seed: int
    constraints: str
    latency_table: str
    tradeoff: dict

    def __post_init__(self):
        if self.iterations < 0:
            raise ValueError(f"iterations={self.iterations} is invalid: it must be "
                             f">= 0.")
        if self.archive_init < predictor.MIN_SAMPLES:
            raise ValueError(f"archive_init={self.archive_init} is invalid: it must "
                             f"be >= {predictor.MIN_SAMPLES}.")

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self),
                "search": dataclasses.asdict(self.search)}


def _objective_rows(fn, names, genes) -> list[dict[str, float]]:
    vals = np.asarray(fn(jnp.asarray(np.asarray(genes, np.int32))))
    return [{n: float(v) for n, v in zip(names, row)} for row in vals]


def initial_genes(tasks: Sequence[Task], space: ss.SearchSpace, n: int,
                  key: jax.Array) -> np.ndarray:
    """Each task's own picks, then min and max subnets, then uniform samples."""
    rows = [np.asarray(t.archive.entries[i].genes) for t in tasks if t.archive
            for i in t.picks if 0 <= i < len(t.archive)]
    rows += [space.encode(space.min_arch()), space.encode(space.max_arch())]
    rows += list(np.asarray(space.sample(key, 4 * n + 8)))
    canon = np.asarray(space.canonicalize(np.stack(rows).astype(np.int32)))
    _, first = np.unique(canon, axis=0, return_index=True)
    return canon[np.sort(first)][:n]


def measure_pending(tasks: Sequence[Task], archive: JointArchive, path,
                    mesh=None) -> dict[str, float]:
    """Measures every member on every task it lacks; returns seconds per task."""
    secs = {}
    for t in tasks:
        todo = archive.pending(t.name)
        if not todo:
            continue
        t0 = time.time()
        prog = progress_lib.Progress(f"measure on {t.name}", len(todo))

        def record(j, n, res, todo=todo, task=t.name):
            e = archive.entries[todo[j]]
            e.top1[task], e.top5[task] = float(res["top1"]), float(res["top5"])
            archive.save(path)
            prog.update(sum(task in archive.entries[i].top1 for i in todo))

        retarget.evaluate_set(
            t.supernets, [archive.entries[i].genes for i in todo], t.space,
            t.dataset.val, t.dataset.train, t.eval_config, mesh=mesh,
            progress=record, calibration=t.calibration)
        secs[t.name] = time.time() - t0
    return secs


def normaliser(archive: JointArchive, n_tasks: int, complexity: Sequence[str]
               ) -> np.ndarray:
    """Fixed scale per objective: errors by 100, the others by the initial
    archive's maximum x 1.05 (as the transfer run's hypervolume)."""
    F = archive.objective_matrix(complexity)
    init = np.array([e.iteration == 0 for e in archive.entries])
    return np.concatenate([np.full(n_tasks, 100.0),
                           np.nanmax(F[init, n_tasks:], axis=0) * 1.05])


def iteration_metrics(archive: JointArchive, it: int, complexity, feasible,
                      times: dict) -> dict:
    """Hypervolume (Monte-Carlo with key(it) beyond 3 objectives) and the
    per-task predictor rank correlations on the members added at `it`."""
    T = len(archive.tasks)
    F = archive.objective_matrix(complexity)
    ok = archive.complete() & feasible
    hv = float(tradeoff.hypervolume(F[ok] / normaliser(archive, T, complexity),
                                    np.ones(F.shape[1]), key=jax.random.key(it)))
    corr = {}
    new = [e for e in archive.entries if e.iteration == it and e.predicted_top1]
    for t in archive.tasks:
        pairs = [(e.predicted_top1[t], e.top1[t]) for e in new
                 if t in e.predicted_top1 and t in e.top1]
        tau = rho = math.nan
        if len(pairs) >= 3:
            pred, meas = np.array(pairs).T
            tau = float(rank_stats.kendall(pred, meas))
            rho = float(rank_stats.spearman(pred, meas))
        corr[t] = {"kendall_tau": tau, "spearman": rho, "n": len(pairs)}
    front = np.flatnonzero(ok)[tradeoff.nondominated(F[ok])] if ok.any() else []
    return {"iteration": it, "archive_size": len(archive), "n_objectives": F.shape[1],
            "hypervolume": hv, "n_front": int(len(front)), "predictor": corr,
            "times_s": times}


def run(tasks: Sequence[Task], config: MultiTaskConfig, workdir,
        mesh=None) -> dict:
    """Runs (or resumes) the many-task search in `workdir`; returns the summary.

    Writes `config.json` (a rerun with other settings is refused),
    `joint_archive.json` (after every measured subnet), `metrics.jsonl` (one
    line per iteration: hypervolume, predictor rank correlation per task,
    seconds), and at the end `front.json`, `result.json`, `report.md`,
    `pcp.png` and `scatter_<task>.png` (see `finish`).
    """
    workdir = pathlib.Path(workdir)
    space = check_spaces(tasks)
    task_names = tuple(t.name for t in tasks)
    names, complexity = objective_names(config.objectives, task_names)
    cons = retarget.parse_constraints(config.constraints)
    num_classes = tasks[0].dataset.num_classes
    fn, feasible_fn = retarget.constrained_fn(space, complexity, cons, num_classes,
                                              config.latency_table)
    plain = run_config.complexity_objectives(complexity, space, num_classes,
                                             config.latency_table)
    run_cfg = {"tasks": [{"name": t.name, "source": os.path.abspath(t.source),
                          "dataset": t.dataset.spec.name,
                          "num_classes": t.dataset.num_classes,
                          "split": data.split_fingerprint(t.dataset),
                          "eval": dataclasses.asdict(t.eval_config)} for t in tasks],
               "objectives": list(names), **config.to_dict()}
    workdir_lib.check_config(workdir, run_cfg, what="many-task search")
    path = workdir / "joint_archive.json"
    key = jax.random.key(config.seed)
    if path.exists():
        archive = JointArchive.load(path, space)
        logging.info("Resuming: joint archive of %d subnets.", len(archive))
    else:
        archive = JointArchive(space, task_names)
        g0 = initial_genes(tasks, space, config.archive_init,
                           jax.random.fold_in(key, 0))
        archive.add(g0, 0, _objective_rows(plain, complexity, g0))
        archive.save(path)
    done = {m["iteration"] for m in workdir_lib.read_jsonl(workdir / "metrics.jsonl")}
    if 0 not in done:
        times = {"measure": measure_pending(tasks, archive, path, mesh)}
        _record(workdir, archive, 0, complexity, feasible_fn, times)
    for it in range(1, config.iterations + 1):
        if it in done:
            continue
        times = {}
        if not any(e.iteration == it for e in archive.entries):
            t0 = time.time()
            ok = archive.complete()
            own = [t.own_measured() for t in tasks]
            res = search_many(jax.random.fold_in(key, it), space, archive.genes()[ok],
                              archive.errors()[ok], fn, config.search, own)
            valid = np.asarray(res.candidate_valid)
            cands = np.asarray(res.candidates)[valid]
            pred = np.asarray(res.candidate_objectives)[valid, :len(tasks)]
            keep = feasible_fn(cands)
            cands, pred = cands[keep], pred[keep]
            times["search"] = time.time() - t0
            archive.add(cands, it, _objective_rows(plain, complexity, cands),
                        [{n: 100.0 - float(p) for n, p in zip(task_names, row)}
                         for row in pred])
            archive.save(path)
            logging.info("Iteration %d: %d candidates (search %.1f s).", it,
                         len(cands), times["search"])
        times["measure"] = measure_pending(tasks, archive, path, mesh)
        _record(workdir, archive, it, complexity, feasible_fn, times)
    return finish(workdir, tasks, archive, names, complexity,
                  feasible_fn(archive.genes()), config)


def _record(workdir, archive, it, complexity, feasible_fn, times) -> None:
    feasible = feasible_fn(archive.genes()) if len(archive) else np.zeros(0, bool)
    m = iteration_metrics(archive, it, complexity, feasible, times)
    workdir_lib.append_jsonl(workdir / "metrics.jsonl", m)
    logging.info("Iteration %d: %d subnets, hypervolume %.4f, %d nondominated.",
                 it, m["archive_size"], m["hypervolume"], m["n_front"])


# ============================================================= the pick
def task_madds(space: ss.SearchSpace, genes, num_classes: int) -> np.ndarray:
    """float64[n] MAdds (millions) with a `num_classes` classifier."""
    fn = objectives.complexity_fn(space, ("madds",), num_classes)
    return np.asarray(fn(jnp.asarray(np.asarray(genes, np.int32))))[:, 0].astype(
        np.float64)


def pick(archive: JointArchive, complexity: Sequence[str], feasible: np.ndarray,
         tradeoff_kwargs: dict) -> dict:
    """The nondominated set, trade-off values and the high trade-off pick.

    Among the members measured on every task (and feasible): the distinct
    nondominated rows (`tradeoff.front_tradeoffs`, Appendix C Eq. 5), the
    row with the highest trade-off value, and Appendix F's mu + 3 sigma test
    of that value against the rest (`tradeoff.outlier_test`).

    Returns:
      {"front": archive indices, "tradeoff": values, "pick": archive index,
       "outlier": outlier_test dict (None with fewer than 2 front members)}.
    """
    F = archive.objective_matrix(complexity)
    ok = np.flatnonzero(archive.complete() & feasible)
    if not len(ok):
        raise ValueError("No subnet is measured on every task (and feasible).")
    idx, t = tradeoff.front_tradeoffs(F[ok], **tradeoff_kwargs)
    front = ok[idx]
    finite = np.isfinite(t)
    if len(front) == 1 or not finite.any():
        return {"front": front.tolist(), "tradeoff": t.tolist(),
                "pick": int(front[0]), "outlier": None}
    top = int(np.nanargmax(np.where(finite, t, -np.inf)))
    test = tradeoff.outlier_test(t[finite]) if finite.sum() > 1 else None
    return {"front": front.tolist(), "tradeoff": t.tolist(), "pick": int(front[top]),
            "outlier": test}


def single_task_best(task: Task, archive: JointArchive, madds_limit: float
                     ) -> dict | None:
    """The most accurate subnet of the task's own search with MAdds (its
    classifier) <= madds_limit; from the joint archive if it has no own one."""
    if task.archive is not None and len(task.archive):
        genes, err = task.own_measured()
        source = "own search"
    else:
        ok = [i for i, e in enumerate(archive.entries) if task.name in e.top1]
        genes = archive.genes()[ok]
        err = archive.errors()[ok, list(archive.tasks).index(task.name)]
        source = "joint archive"
    if not len(genes):
        return None
    madds = task_madds(task.space, genes, task.dataset.num_classes)
    ok = np.flatnonzero(madds <= madds_limit)
    if not len(ok):
        return None
    best = ok[np.argmin(err[ok])]
    return {"genes": [int(x) for x in genes[best]], "top1": 100.0 - float(err[best]),
            "madds": float(madds[best]), "source": source}


def finish(workdir, tasks: Sequence[Task], archive: JointArchive,
           names: Sequence[str], complexity: Sequence[str], feasible: np.ndarray,
           config: MultiTaskConfig) -> dict:
    """Writes the outputs of a finished many-task search; returns the summary.

    Files: `front.json` (the nondominated set with its trade-off values),
    `result.json` (the summary), `pcp.png` (one axis per objective, the pick
    highlighted), `scatter_<task>.png` (per task: error vs MAdds of the joint
    archive, its front and the pick, and the task's own archive) and
    `report.md`.
    """

    workdir = pathlib.Path(workdir)
    F = archive.objective_matrix(complexity)
    sel = pick(archive, complexity, feasible, config.tradeoff)
    p = sel["pick"]
    entry = archive.entries[p]
    rows = []
    for j, t in enumerate(tasks):
        m = float(task_madds(t.space, [entry.genes], t.dataset.num_classes)[0])
        best = single_task_best(t, archive, SIMILAR_MADDS * m)
        rows.append({"task": t.name, "num_classes": t.dataset.num_classes,
                     "pick_top1": entry.top1[t.name], "pick_madds": m,
                     "single_task": best})
    metrics = workdir_lib.read_jsonl(workdir / "metrics.jsonl")
    summary = {"tasks": [t.name for t in tasks], "objectives": list(names),
               "front": sel["front"], "tradeoff": sel["tradeoff"], "pick": p,
               "pick_genes": list(entry.genes),
               "pick_encoding": archive.space.decode(entry.genes).to_encoding(
                   archive.space),
               "pick_width": archive.space.decode(entry.genes).width,
               "widths": list(archive.space.widths),
               "pick_objectives": dict(zip(names, map(float, F[p]))),
               "outlier_test": sel["outlier"], "comparison": rows,
               "similar_madds": SIMILAR_MADDS,
               "hypervolume": [m["hypervolume"] for m in metrics]}
    workdir_lib.write_json(workdir / "front.json", {
        "objectives": list(names), "members": [
            {"index": i, "genes": list(archive.entries[i].genes),
             "width": archive.space.decode(archive.entries[i].genes).width,
             "objectives": dict(zip(names, map(float, F[i]))), "tradeoff": v}
            for i, v in zip(sel["front"], sel["tradeoff"])]})
    workdir_lib.write_json(workdir / "result.json", summary)
    front = np.asarray(sel["front"])
    labels = [report_lib.axis_label(n) for n in names]
    report_lib.plot_pcp(workdir / "pcp.png", F[front], labels,
                              int(np.flatnonzero(front == p)[0]),
                              title=f"{len(front)} nondominated subnets, "
                                    f"{len(names)} objectives")
    ok = archive.complete() & feasible
    for j, t in enumerate(tasks):
        own = t.own_measured()
        report_lib.plot_task_scatter(
            workdir / f"scatter_{t.name}.png", t.name,
            joint=(task_madds(t.space, archive.genes()[ok], t.dataset.num_classes),
                   F[ok, j]),
            front=(task_madds(t.space, archive.genes()[front],
                              t.dataset.num_classes), F[front, j]),
            pick=(rows[j]["pick_madds"], 100.0 - rows[j]["pick_top1"]),
            own=(task_madds(t.space, own[0], t.dataset.num_classes), own[1]),
            best=None if rows[j]["single_task"] is None else (
                rows[j]["single_task"]["madds"],
                100.0 - rows[j]["single_task"]["top1"]))
    report_lib.write_multitask_report(workdir / "report.md", summary, metrics,
                                  [t.source for t in tasks])
    return summary
