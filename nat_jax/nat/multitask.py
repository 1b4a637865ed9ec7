"""Many objectives across tasks: one search over several adapted supernets.

Paper Appendix F ("Scalability to objectives continued"): the top-1
accuracy on each of several datasets, "computed by inheriting weights from
the dataset-specific supernets", plus #MAdds are the objectives of one
many-objective search; "since the supernets are already adapted to each
dataset, we exclude the supernet adaptation step". The nondominated set is
shown in a parallel-coordinate plot, and the highest trade-off solution
(Appendix C, Eq. 5), if it lies more than mu + 3 sigma above the rest, is the
single network that compromises on every task.

`run_joint_search(tasks, config, workdir)` does that, resumably, with the
search layer exactly as the transfer run uses it (`search.evolution`,
`search.archive`; a many-task search is their T > 1 case):

  0. a joint archive (`Archive` with one task per dataset): every task's own
     picks (`result.json` of its transfer run), the smallest and the largest
     subnet and uniform samples, up to `archive_init` members, each measured
     on every task's supernet (BN re-calibrated on that task's training
     split, top-1 on its validation split: `evaluation.evaluate_subnets`);
  1. per iteration, `evolution.search_many`: one RBF-ensemble accuracy
     predictor per task (Algorithm 2), fitted on that task's measurements
     (the joint archive plus the task's own transfer archive, measured with
     the same final weights), and NSGA-III (Algorithms 3-4) on the
     objectives `[predicted error of task 1, ..., of task T, complexity ...]`;
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

`search_supernets` is the whole run of `python -m experiments.search
--supernet_dir=A,B,...`: it builds the settings from the first task's
config.json (`joint_config`), loads the tasks and runs the search.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import pathlib
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from nat_jax.data import datasets as data
from nat_jax.data import pipeline
from nat_jax.model import supernet_set
from nat_jax.nat import report as report_lib
from nat_jax.nat import retarget, run_config
from nat_jax.runtime import progress as progress_lib
from nat_jax.runtime import workdir as workdir_lib
from nat_jax.search import evolution, predictor, rank_stats, tradeoff
from nat_jax.search.archive import ERROR, Archive
from nat_jax.space import objectives
from nat_jax.space import search_space as ss
from nat_jax.train import evaluation

# "Similar MAdds" of the per-task comparison: at most this multiple of the
# pick's MAdds (Appendix F compares with models of "similar or less #MAdds").
SIMILAR_MADDS = 1.1
# The weights version of every joint-archive measurement: the task supernets
# are final (no adaptation), so there is one version.
VERSION = 0


# ================================================================= the tasks
@dataclasses.dataclass
class TaskSupernet:
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


def _existing(path: str) -> pathlib.Path:
    p = pathlib.Path(path)
    if not p.exists():
        raise ValueError(f"Task {path} does not exist; give a transfer --workdir or "
                         f"SUPERNET_DIR=DATASET.")
    return p


def _unique_name(name: str, taken: set[str]) -> str:
    base = os.path.basename(os.path.normpath(name)) or name
    out, i = base, 2
    while out in taken:
        out, i = f"{base}_{i}", i + 1
    return out


def load_task_supernet(path: str, dataset: str | None, fallback_config,
                       taken: set[str] = frozenset()) -> TaskSupernet:
    """A TaskSupernet from a transfer workdir, or SUPERNET_DIR with its DATASET.

    Args:
      path: a finished experiments.transfer workdir, or a supernet directory.
      dataset: the dataset of a bare supernet directory (None for a workdir;
        for a workdir it overrides its config's dataset: use with care).
      fallback_config: a transfer ConfigDict whose `eval` block (and `seed`)
        measures a bare supernet directory.
      taken: names already used (the new name gets a suffix if needed).
    """
    p = _existing(path)
    if (p / "config.json").is_file() and (p / "archive.json").is_file():
        plan, archive, supernets = retarget.load_workdir(p)
        cfg, ds = plan.config, plan.task.dataset
        if dataset is not None:
            ds = data.load(dataset)
        picks = ()
        if (p / "result.json").is_file():
            picks = tuple(json.loads((p / "result.json").read_text()).get("picks",
                                                                           []))
        name = _unique_name(cfg.dataset if dataset is None else dataset, taken)
        return TaskSupernet(name, str(path), ds, supernets, archive.space,
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
    return TaskSupernet(_unique_name(dataset, taken), str(path), ds, supernets,
                        space, run_config.eval_config(fallback_config))


def _space_diff(a: ss.SearchSpace, b: ss.SearchSpace) -> str:
    return ", ".join(f"{f.name} {getattr(a, f.name)} vs {getattr(b, f.name)}"
                     for f in dataclasses.fields(a)
                     if getattr(a, f.name) != getattr(b, f.name))


def check_spaces(tasks: Sequence[TaskSupernet]) -> ss.SearchSpace:
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


def load_tasks(text: str, fallback_config) -> list[TaskSupernet]:
    """Tasks of a comma-separated list (`parse_tasks`), checked for one space."""
    specs = parse_tasks(text)
    if len(specs) < 2:
        raise ValueError(f"A many-task search needs at least 2 tasks, got {text!r} "
                         f"(one task: use --supernet_dir=WORKDIR alone).")
    tasks: list[TaskSupernet] = []
    for path, ds in specs:
        tasks.append(load_task_supernet(path, ds, fallback_config,
                                        {t.name for t in tasks}))
    check_spaces(tasks)
    return tasks


def joint_objective_names(text: str, task_names: Sequence[str]
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


# ====================================================================== run
@dataclasses.dataclass(frozen=True)
class MultiTaskConfig:
    """Settings of a many-task search (all explicit; from a transfer config:
    `joint_config`).

    Attributes:
      objectives: "top1_error,COMPLEXITY[,...]" (`joint_objective_names`).
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


def joint_config(config, objectives: str, constraints: str = "", seed: int = 0,
                 evaluate: int | None = None, generations: int | None = None,
                 iterations: int | None = None, pop_size: int | None = None,
                 archive_init: int | None = None, latency_table: str = ""
                 ) -> MultiTaskConfig:
    """The MultiTaskConfig of a transfer run's ConfigDict and the overrides.

    Search (`config.search`), trade-off (`config.final`) and latency table
    settings come from `config`; an override that is not None (or "") wins:
    `evaluate` is K per iteration (at most the population), then
    `generations`, `iterations`, `pop_size`, `archive_init`, `latency_table`.
    """
    for name, v in (("evaluate", evaluate), ("generations", generations),
                    ("iterations", iterations), ("pop_size", pop_size),
                    ("archive_init", archive_init)):
        if v is not None and v < 0:
            raise ValueError(f"--{name}={v} is invalid: it must be >= 0.")
    s = run_config.search_config(config.search)
    if pop_size is not None:
        s = dataclasses.replace(s, pop_size=pop_size)
    s = dataclasses.replace(
        s, n_candidates=min(s.n_candidates if evaluate is None else evaluate,
                            s.pop_size),
        generations=s.generations if generations is None else generations)
    return MultiTaskConfig(
        objectives=objectives, search=s,
        iterations=config.search.iterations if iterations is None else iterations,
        archive_init=(config.search.archive_init if archive_init is None
                      else archive_init),
        seed=seed, constraints=constraints,
        latency_table=latency_table or config.get("latency_table", ""),
        tradeoff=run_config.high_tradeoff_kwargs(config.final))


def _objective_rows(fn, names, genes) -> list[dict[str, float]]:
    vals = np.asarray(fn(jnp.asarray(np.asarray(genes, np.int32))))
    return [{n: float(v) for n, v in zip(names, row)} for row in vals]


def initial_genes(tasks: Sequence[TaskSupernet], space: ss.SearchSpace, n: int,
                  key: jax.Array) -> np.ndarray:
    """Each task's own picks, then min and max subnets, then uniform samples."""
    rows = [np.asarray(t.archive.entries[i].genes) for t in tasks if t.archive
            for i in t.picks if 0 <= i < len(t.archive)]
    rows += [space.encode(space.min_arch()), space.encode(space.max_arch())]
    rows += list(np.asarray(space.sample(key, 4 * n + 8)))
    canon = np.asarray(space.canonicalize(np.stack(rows).astype(np.int32)))
    _, first = np.unique(canon, axis=0, return_index=True)
    return canon[np.sort(first)][:n]


def measure_pending(tasks: Sequence[TaskSupernet], archive: Archive, path,
                    mesh=None) -> dict[str, float]:
    """Measures every member on every task it lacks; returns seconds per task."""
    secs = {}
    for t in tasks:
        todo = archive.pending(VERSION, task=t.name)
        if not todo:
            continue
        t0 = time.time()
        prog = progress_lib.Progress(f"measure on {t.name}", len(todo))

        def record(j, n, res, todo=todo, task=t.name):
            archive.record(todo[j], res["top1"], res["top5"], VERSION, task)
            archive.save(path)
            prog.update(len(todo) - len(archive.pending(VERSION, todo, task)))

        retarget.evaluate_set(
            t.supernets, [archive.entries[i].genes for i in todo], t.space,
            t.dataset.val, t.dataset.train, t.eval_config, mesh=mesh,
            progress=record, calibration=t.calibration)
        secs[t.name] = time.time() - t0
    return secs


def joint_metrics(archive: Archive, it: int, names: Sequence[str], feasible,
                  times: dict) -> dict:
    """Hypervolume (Monte-Carlo with key(it) beyond 3 objectives) and the
    per-task predictor rank correlations on the members added at `it`."""
    F = archive.objective_matrix(names)
    ok = archive.complete() & feasible
    hv = float(tradeoff.hypervolume(F[ok] / archive.objective_scale(names),
                                    np.ones(F.shape[1]), key=jax.random.key(it)))
    corr = {}
    new = [e for e in archive.entries if e.iteration == it]
    for j, t in enumerate(archive.tasks):
        pairs = [(e.task_predicted_top1[j], e.task_top1[j]) for e in new
                 if e.task_predicted_top1[j] is not None
                 and e.task_top1[j] is not None]
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


def run_joint_search(tasks: Sequence[TaskSupernet], config: MultiTaskConfig,
                     workdir, mesh=None) -> dict:
    """Runs (or resumes) the many-task search in `workdir`; returns the summary.

    Writes `config.json` (a rerun with other settings is refused),
    `joint_archive.json` (after every measured subnet), `metrics.jsonl` (one
    line per iteration: hypervolume, predictor rank correlation per task,
    seconds), and at the end `front.json`, `result.json`, `report.md`,
    `pcp.png` and `scatter_<task>.png` (see `write_joint_results`).
    """
    workdir = pathlib.Path(workdir)
    space = check_spaces(tasks)
    task_names = tuple(t.name for t in tasks)
    names, complexity = joint_objective_names(config.objectives, task_names)
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
        archive = Archive.load(path, space)
        logging.info("Resuming: joint archive of %d subnets.", len(archive))
    else:
        archive = Archive(space, tasks=task_names)
        g0 = initial_genes(tasks, space, config.archive_init,
                           jax.random.fold_in(key, 0))
        archive.add(g0, 0, _objective_rows(plain, complexity, g0))
        archive.save(path)
    done = {m["iteration"] for m in workdir_lib.read_jsonl(workdir / "metrics.jsonl")}
    if 0 not in done:
        times = {"measure": measure_pending(tasks, archive, path, mesh)}
        _record(workdir, archive, 0, names, feasible_fn, times)
    for it in range(1, config.iterations + 1):
        if it in done:
            continue
        times = {}
        if not any(e.iteration == it for e in archive.entries):
            t0 = time.time()
            ok = archive.complete()
            own = [t.own_measured() for t in tasks]
            res = evolution.search_many(jax.random.fold_in(key, it), space,
                                        archive.genes()[ok],
                                        archive.error_matrix()[ok], fn,
                                        config.search, own)
            valid = np.asarray(res.candidate_valid)
            cands = np.asarray(res.candidates)[valid]
            pred = np.asarray(res.candidate_objectives)[valid, :len(tasks)]
            keep = feasible_fn(cands)
            cands, pred = cands[keep], pred[keep]
            times["search"] = time.time() - t0
            archive.add(cands, it, _objective_rows(plain, complexity, cands),
                        100.0 - pred.astype(np.float64))
            archive.save(path)
            logging.info("Iteration %d: %d candidates (search %.1f s).", it,
                         len(cands), times["search"])
        times["measure"] = measure_pending(tasks, archive, path, mesh)
        _record(workdir, archive, it, names, feasible_fn, times)
    return write_joint_results(workdir, tasks, archive, names, complexity,
                               feasible_fn(archive.genes()), config)


def _record(workdir, archive, it, names, feasible_fn, times) -> None:
    feasible = feasible_fn(archive.genes()) if len(archive) else np.zeros(0, bool)
    m = joint_metrics(archive, it, names, feasible, times)
    workdir_lib.append_jsonl(workdir / "metrics.jsonl", m)
    logging.info("Iteration %d: %d subnets, hypervolume %.4f, %d nondominated.",
                 it, m["archive_size"], m["hypervolume"], m["n_front"])


# ============================================================= the pick
def task_madds(space: ss.SearchSpace, genes, num_classes: int) -> np.ndarray:
    """float64[n] MAdds (millions) with a `num_classes` classifier."""
    fn = objectives.complexity_fn(space, ("madds",), num_classes)
    return np.asarray(fn(jnp.asarray(np.asarray(genes, np.int32))))[:, 0].astype(
        np.float64)


def pick(archive: Archive, names: Sequence[str], feasible: np.ndarray,
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
    F = archive.objective_matrix(names)
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


def single_task_best(task: TaskSupernet, archive: Archive, madds_limit: float
                     ) -> dict | None:
    """The most accurate subnet of the task's own search with MAdds (its
    classifier) <= madds_limit; from the joint archive if it has no own one."""
    if task.archive is not None and len(task.archive):
        genes, err = task.own_measured()
        source = "own search"
    else:
        err = archive.errors(task.name)
        ok = np.flatnonzero(np.isfinite(err))
        genes, err = archive.genes()[ok], err[ok]
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


def write_joint_results(workdir, tasks: Sequence[TaskSupernet], archive: Archive,
                        names: Sequence[str], complexity: Sequence[str],
                        feasible: np.ndarray, config: MultiTaskConfig) -> dict:
    """Writes the outputs of a finished many-task search; returns the summary.

    Files: `front.json` (the nondominated set with its trade-off values),
    `result.json` (the summary), `pcp.png` (one axis per objective, the pick
    highlighted), `scatter_<task>.png` (per task: error vs MAdds of the joint
    archive, its front and the pick, and the task's own archive) and
    `report.md`.
    """

    workdir = pathlib.Path(workdir)
    F = archive.objective_matrix(names)
    sel = pick(archive, names, feasible, config.tradeoff)
    p = sel["pick"]
    entry = archive.entries[p]
    rows = []
    for j, t in enumerate(tasks):
        m = float(task_madds(t.space, [entry.genes], t.dataset.num_classes)[0])
        best = single_task_best(t, archive, SIMILAR_MADDS * m)
        rows.append({"task": t.name, "num_classes": t.dataset.num_classes,
                     "pick_top1": entry.task_top1[j], "pick_madds": m,
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


# ========================================================= the whole run
def search_supernets(supernet_dirs: str, objectives: str, constraints: str = "",
                     seed: int = 0, evaluate: int | None = None,
                     output: str | None = None, generations: int | None = None,
                     iterations: int | None = None, pop_size: int | None = None,
                     archive_init: int | None = None, latency_table: str = "",
                     mesh=None) -> dict:
    """The many-task search of `experiments.search --supernet_dir=A,B,...`.

    Args:
      supernet_dirs: the tasks, comma-separated (`parse_tasks`); the first
        must be a transfer workdir: its config.json gives the search,
        evaluation and trade-off settings (`joint_config`), and measures
        the bare supernet sets.
      objectives, constraints, seed: as in `MultiTaskConfig`.
      evaluate, generations, iterations, pop_size, archive_init,
        latency_table: overrides of the config's values (`joint_config`).
      output: the workdir (default runs/multitask_<task names>); a rerun
        resumes.

    Returns:
      {"output", "pick", "pick_encoding", "outlier_test_passes", "pick_top1"
       (per task), "n_front"}.
    """
    specs = parse_tasks(supernet_dirs)
    for path, _ in specs:
        _existing(path)
    config = ml_collections.FrozenConfigDict(workdir_lib.read_config(specs[0][0]))
    settings = joint_config(config, objectives, constraints, seed, evaluate,
                            generations, iterations, pop_size, archive_init,
                            latency_table)
    tasks = load_tasks(supernet_dirs, config)
    out = output or "runs/multitask_" + "_".join(t.name for t in tasks)
    summary = run_joint_search(tasks, settings, out, mesh)
    return {"output": out, "pick": summary["pick"],
            "pick_encoding": summary["pick_encoding"],
            "outlier_test_passes": (summary["outlier_test"] or {}).get("passes"),
            "pick_top1": {r["task"]: r["pick_top1"] for r in summary["comparison"]},
            "n_front": len(summary["front"])}
