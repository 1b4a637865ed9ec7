"""Neural Architecture Transfer end to end (paper Algorithm 1), resumable.

`run(config, workdir)` reads as Algorithm 1: an initial working archive A
(line 2), a warm-up adaptation of the new classifier, then per iteration:

  1. adapt the supernet (Algorithm 5; one subnet per batch sampled from the
     per-gene distribution of the working archive A, Eq. 3);
  2. measure every member of A not yet measured with the current weights
     (line 5, `f <- S_w(A, D_vld)`: BN re-calibration, validation top-1);
  3. fit the RBF-ensemble predictor (line 6) on the top-ranked
     `search.predictor_train_size` of A (Algorithm 4 on the measured
     objectives; 0 = every measured subnet) and run the evolutionary search
     (line 8, Algorithms 2-4) on predicted error plus the complexity
     objectives;
  4. update A (`search.archive_update`):
     "paper": line 11, `A <- Selection(A ∪ P_t, N)`: the search's whole
       final population P_t joins A with its predicted error, Algorithm 4
       (NSGA-III survival) keeps N = `search.archive_size`; the survivors
       never measured are measured right away with the current weights (and
       with every later weights at line 5);
     "authors": the authors' nsganetv2 growth: K = `search.n_candidates`
       gap-filling candidates are added and A is the whole history;

The width multiplier is searched (the genotype's second gene, Sec. 3.2): a
run holds one supernet per width of its space (`config.widths`, default
all; OFA's w1.0 and w1.2 are separately trained), Eq. 3 samples the width
gene like any other, each adaptation step trains only the sampled width's
supernet, and each subnet is measured on its width's supernet.

At the end it picks the high trade-off subnets of A's measured front
(Appendix C, with Appendix F's outlier test in report.md) plus the most
accurate one. The initial A is, in "paper" mode, N - 1 uniform samples plus
the smallest subnet at the smallest resolution (size N, Table 2: 300); in
"authors" mode `search.archive_init` samples plus the smallest (at the
smallest resolution, as nsganetv2's `initialize`) and the largest subnet.
Every subnet ever measured stays in `archive.json` with its latest
measurement; its "working" map records A per iteration. The config is
resolved once into a `run_config.TransferPlan` (validated, data loaded,
objectives built) at `run`'s entry, and every phase reads only the plan; the
starting supernets come from `task_supernet`, the workdir protocol from
`workdir`.

Everything a rerun needs lives in `workdir`: `config.json`, `data.json`
(the split's fingerprint: a rerun on other data is refused), `archive.json`
(written after every evaluated subnet), orbax checkpoints of the train state
(every `adapt.checkpoint_every` steps), `metrics.jsonl` (one line per
iteration), `progress.json`, plots and, at the end, `report.md` and the
params-only task supernets under `supernet/` (`supernet_set`'s layout:
supernet/w1.0/, supernet/w1.2/, one folder per width of the run). Nothing
is written before the config, data, objectives and supernets have been
checked. Rerunning the same
command continues from the last completed step and never repeats finished
work.

Checkpoints hold every width's train state and the global step, so a kill at
any phase and a rerun give the identical archive and weights of every width.

Fault injection (for the resume tests): NAT_JAX_KILL_AT="adapt:S" sends
SIGKILL to this process right after global adaptation step S;
"evaluate:N" right after the N-th subnet evaluated with re-adapted weights
(weights version >= 2).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import shutil
import signal
import time

import jax
import ml_collections
import numpy as np
from absl import logging

from nat_jax.data import datasets as data
from nat_jax.data import pipeline
from nat_jax.model import supernet as supernet_lib
from nat_jax.model import supernet_set
from nat_jax.nat import report as report_lib
from nat_jax.nat import run_config, task_supernet
from nat_jax.runtime import checkpoint, compile_cache, sharding, tb_events
from nat_jax.runtime import progress as progress_lib
from nat_jax.runtime import workdir as workdir_lib
from nat_jax.search import evolution, nsga3, rank_stats, tradeoff
from nat_jax.search.archive import Archive
from nat_jax.train import adaptation, evaluation, training


# ----------------------------------------------------------- Algorithm 1
def run(config: ml_collections.ConfigDict | run_config.TransferPlan,
        workdir: str | os.PathLike) -> dict:
    """Runs (or resumes) NAT in `workdir`; returns the summary.

    Args:
      config: a transfer config (experiments/configs/transfer.py), resolved
        here once by `run_config.plan`, or a plan already resolved.
      workdir: where the run lives; rerunning the same config resumes.

    Raises:
      ValueError, FileNotFoundError: a bad config field, missing data, an
        unknown objective, a missing or mismatched supernet, a workdir of
        another run or of other data; all before anything is written.
    """
    workdir = pathlib.Path(workdir)
    plan = (config if isinstance(config, run_config.TransferPlan)
            else run_config.plan(config))                  # validated, data loaded
    if _finished(workdir, plan):
        logging.info("%s holds a finished run; nothing to do.", workdir)
        return json.loads((workdir / "result.json").read_text())
    key = jax.random.key(plan.seed)
    task = plan.task
    supernets = task_supernet.starting_supernets(          # one per width
        plan.supernet, task.space, task.num_classes, jax.random.fold_in(key, 2))
    _claim_workdir(workdir, plan)                          # the first write
    if plan.compile_cache:  # resumed runs and re-evaluations reuse programs
        compile_cache.enable(str(workdir / "jax_cache"))
    r = _setup(plan, workdir, supernets, key)
    archive = initial_archive(r)                           # line 2
    done = {m["iteration"] for m in workdir_lib.read_jsonl(workdir / "metrics.jsonl")}
    for it in range(plan.loop.iterations):
        if it in done:
            continue
        times = {}  # seconds per phase, and "<phase>_compile" of those
        with compile_cache.phase(times, "adapt"):
            r.states = adapt_round(r, archive, it)         # Algorithm 5
        with compile_cache.phase(times, "evaluate"):       # line 5
            n_eval = evaluate_pending(r, archive, it + 1, archive.working_at(it))
        if it + 1 not in archive.working:
            with compile_cache.phase(times, "search"):     # lines 6-11
                search_step(r, archive, it)
        with compile_cache.phase(times, "evaluate_new"):
            n_eval += evaluate_pending(r, archive, it + 1,
                                       archive.working_at(it + 1))
        _seconds_per_subnet(times, n_eval)
        record_iteration(r, archive, it, times)
    summary = finish(r, archive)                           # Appendix C picks
    workdir_lib.write_json(workdir / "progress.json", {"done": True})
    return summary


# --------------------------------------------------------------- set-up
@dataclasses.dataclass
class _Run:
    """What the phases of one run share (host side); `states` change.

    `plan` is the resolved config (the only settings the phases read);
    `models` and `states` hold one supernet and one train state per width
    of the run's space (ascending widths).
    """

    plan: run_config.TransferPlan
    workdir: pathlib.Path
    models: dict[float, supernet_lib.Supernet]
    key: jax.Array
    mesh: jax.sharding.Mesh
    steps_per_round: list[int]
    ckpt: checkpoint.TrainCheckpointer
    loader: pipeline.TrainLoader
    calibration: pipeline.CalibrationSet
    states: dict[float, training.TrainState]
    eta: progress_lib.RunEta

    @property
    def total_steps(self) -> int:
        return max(sum(self.steps_per_round), 1)

    @property
    def step(self) -> int:
        """The global adaptation step (`adaptation.global_step`)."""
        return adaptation.global_step(self.states)

    def variables(self) -> dict[float, dict]:
        """{width: {"params", "batch_stats"}} of the current weights."""
        return {w: s.variables() for w, s in self.states.items()}


def _finished(workdir: pathlib.Path, plan: run_config.TransferPlan) -> bool:
    """True when `workdir` holds a finished run of this very config."""
    done = workdir / "progress.json"
    if not done.is_file():
        return False
    try:
        finished = json.loads(done.read_text()).get("done")
        same = not workdir_lib.config_diff(workdir_lib.read_config(workdir),
                                           plan.config.to_dict())
    except ValueError:  # no or corrupt config.json: check_config writes or names it
        return False
    return bool(finished and same)


def _claim_workdir(workdir: pathlib.Path, plan: run_config.TransferPlan) -> None:
    """Writes (or checks) config.json and the data split's fingerprint."""
    workdir_lib.check_config(workdir, plan.config.to_dict())
    check_split(workdir, plan.task.dataset)


def check_split(workdir: pathlib.Path, dataset: data.Dataset) -> None:
    """Records the split a run uses in data.json; refuses a different one.

    Raises:
      ValueError: data.json holds another split fingerprint (files added,
        removed or renamed since the run started), or is corrupt.
    """
    path = workdir / "data.json"
    sizes = {s.name: len(s) for s in (dataset.train, dataset.val, dataset.test)
             if s is not None}
    info = {"split_fingerprint": data.split_fingerprint(dataset), "sizes": sizes,
            "num_classes": dataset.num_classes}
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError:
            raise ValueError(f"{path} is corrupt; use a new --workdir.") from None
        if old.get("split_fingerprint") != info["split_fingerprint"]:
            raise ValueError(
                f"--workdir {workdir} was started on other data: the train/val/"
                f"test split of {dataset.spec.name} has changed since (files added,"
                f" removed or renamed; images per split {old.get('sizes')} -> "
                f"{sizes}); restore the data or use a new --workdir.")
        return
    workdir_lib.write_json(path, info)


def _setup(plan: run_config.TransferPlan, workdir: pathlib.Path, supernets: dict,
           key: jax.Array) -> _Run:
    """Mesh, step plan, train states and loader (restored if checkpointed).

    Args:
      supernets: {width: (model, variables)}, one per width of the space.
    """
    task, e = plan.task, plan.epochs
    steps_per_epoch = e.steps_per_epoch(len(task.dataset.train))
    # The warm-up trains the reset classifiers before anything is ranked
    # (fidelity A2); each width's supernet has its own, and Eq. 3 on the
    # uniform initial archive splits the steps about evenly, so the warm-up
    # is `warmup_epochs` per width.
    steps_per_round = [e.warmup_epochs * steps_per_epoch * len(supernets)] + [
        e.epochs_per_iter * steps_per_epoch] * (plan.loop.iterations - 1)
    mesh = sharding.data_mesh()
    ckpt = checkpoint.TrainCheckpointer(str(workdir / "ckpt"), max_to_keep=2)
    models = {w: m for w, (m, _) in supernets.items()}
    states = adaptation.create_train_states(
        models, {w: v for w, (_, v) in supernets.items()}, plan.adapt,
        max(sum(steps_per_round), 1), jax.random.fold_in(key, 1))
    if ckpt.latest_step() is not None:  # every width's state + the global step
        tree, extra = ckpt.restore(adaptation.checkpoint_tree(states))
        states = adaptation.from_checkpoint_tree(tree, states)
        loader = pipeline.TrainLoader.restore(task.dataset.train, extra["loader"],
                                              num_devices=mesh.size)
        logging.info("Resuming adaptation from global step %d.",
                     adaptation.global_step(states))
    else:
        loader = pipeline.TrainLoader(task.dataset.train, e.batch_size,
                                      seed=plan.seed, num_devices=mesh.size)
    calibration = pipeline.CalibrationSet(
        task.dataset.train, plan.eval.calib_images, plan.eval.calib_batch_size,
        seed=plan.eval.calib_seed, num_devices=mesh.size)
    return _Run(plan=plan, workdir=workdir, models=models, key=key, mesh=mesh,
                steps_per_round=steps_per_round, ckpt=ckpt, loader=loader,
                calibration=calibration, states=states, eta=progress_lib.RunEta(
                    {"adapt": "steps", "evaluate": "subnets", "search": "searches"}))


# --------------------------------------------------------------- phases
def initial_archive(r: _Run) -> Archive:
    """The archive of `archive.json`, or a new one (Algorithm 1 line 2).

    "paper": `search.archive_size` - 1 uniform samples plus the smallest
    subnet at the smallest resolution and width (A has size N); "authors":
    `search.archive_init` samples plus the smallest (smallest resolution
    and width) and the largest subnet (widest). All unmeasured; all form the
    working archive.
    """
    path = r.workdir / "archive.json"
    space = r.plan.task.space
    if path.exists():
        arc = Archive.load(path, space)
        logging.info("Resuming: archive of %d subnets from %s", len(arc), path)
        return arc
    arc = Archive(space)
    loop = r.plan.loop
    paper = loop.archive_update == "paper"
    n = loop.archive_size - 1 if paper else loop.archive_init
    init = np.asarray(space.sample(jax.random.fold_in(r.key, 3), n)).reshape(
        n, space.num_genes)
    ends = [space.encode(space.min_arch(resolution=space.resolutions[0]))]
    if not paper:
        ends.append(space.encode(space.max_arch(width=space.widths[-1])))
    genes = np.concatenate([init, np.stack(ends)])
    arc.add(genes, iteration=0, objectives=_objectives(r, genes))
    arc.set_working(0, range(len(arc)))
    arc.save(path)
    return arc


def _objectives(r: _Run, genes: np.ndarray) -> list[dict[str, float]]:
    task = r.plan.task
    vals = np.asarray(task.complexity(np.asarray(genes, np.int32)))
    return [{n: float(v) for n, v in zip(task.names[1:], row)} for row in vals]


def adapt_round(r: _Run, archive: Archive, it: int
                ) -> dict[float, training.TrainState]:
    """Adaptation round `it` (0 = warm-up) up to its cumulative step target.

    Eq. 3 over A samples every gene, the width too; each step trains the
    sampled width's supernet only (`adaptation.adapt` on the set).
    """
    target = sum(r.steps_per_round[:it + 1])
    done = r.step
    if done >= target:
        return r.states
    probs = adaptation.gene_distribution(               # Eq. 3 over A
        r.plan.task.space, archive.genes()[archive.working_at(it)],
        r.plan.adapt.floor)
    logging.info("Adaptation round %d: global steps %d..%d of %d", it, done, target,
                 r.total_steps)
    prog = progress_lib.Progress(f"adapt round {it}", target - done)

    def progress(step, d):
        prog.update(step + 1 - done, f"loss={d['loss']:.3f} lr={d['lr']:.4f}")
        _maybe_kill("adapt", step + 1)

    states, m = adaptation.adapt(r.states, r.models, r.loader, probs,
                                 target - done, r.plan.adapt, mesh=r.mesh,
                                 checkpointer=r.ckpt, progress=progress)
    logging.info("Adaptation round %d done: mean loss %.3f, %.0f images/s, "
                 "steps per width %s", it, m["loss"], m["images_per_s"],
                 m["steps_per_width"])
    r.eta.observe("adapt", prog.seconds_per_unit)
    r.states = states
    _log_eta(r, archive, it)
    return states


def evaluate_pending(r: _Run, archive: Archive, version: int,
                     among: list[int] | None = None) -> float:
    """Measures every member (of `among`, default all) not yet evaluated
    with weights `version`.

    Subnets are evaluated grouped by resolution and width (one compile
    each; each on its width's supernet) and the archive is saved after
    every subnet, so a crash loses at most one. Returns how many subnets
    were measured.
    """
    todo = archive.pending(version, among)
    if not todo:
        return 0
    prog = progress_lib.Progress(f"evaluate (weights v{version})", len(todo),
                              unit="subnet")
    count = [0]

    def record(j, n, res):
        archive.record(todo[j], res["top1"], res["top5"], version)
        archive.save(r.workdir / "archive.json")
        count[0] += 1
        prog.update(count[0], f"top1={res['top1']:.2f}")
        if version >= 2:
            _maybe_kill("evaluate", count[0])

    evaluation.evaluate_subnets(
        r.models, r.variables(), [archive.entries[i].genes for i in todo],
        r.plan.task.space, r.plan.task.dataset.val, r.plan.task.dataset.train,
        r.plan.eval,
        mesh=r.mesh, progress=record, calibration=r.calibration)
    r.eta.observe("evaluate", prog.seconds_per_unit)
    _log_eta(r, archive, version - 1)
    return len(todo)


def _seconds_per_subnet(times: dict, n: int) -> None:
    """times["evaluate_s_per_subnet"]: evaluation seconds per measured subnet
    of this iteration, compiles excluded (60 / it = subnets per minute)."""
    if n:
        phases = ("evaluate", "evaluate_new")
        secs = sum(times.get(p, 0.0) - times.get(f"{p}_compile", 0.0)
                   for p in phases)
        times["evaluate_s_per_subnet"] = secs / n
        logging.info("Evaluated %d subnets: %.1f subnets/min (compiles excluded)",
                     n, 60.0 * n / max(secs, 1e-9))


def rank_top(objectives, n: int, key: jax.Array) -> np.ndarray:
    """Algorithm 4 (NSGA-III survival, `nsga3.survive`): the `n` top-ranked
    rows of `objectives`, all of them when there are at most `n`.

    Args:
      objectives: float[p, m] minimised objectives; NaN rows rank last.
      n: how many to keep (>= 1).
      key: PRNG key of the niching ties.

    Returns:
      int64[min(n, p)] sorted row indices.
    """
    F = np.asarray(objectives, np.float32)
    if F.ndim != 2:
        raise ValueError(f"objectives must be [p, m], got shape {F.shape}.")
    if n < 1:
        raise ValueError(f"Cannot keep n={n} members; pass n >= 1.")
    if len(F) <= n:
        return np.arange(len(F))
    ref = np.asarray(nsga3.default_reference_directions(F.shape[1], n), np.float32)
    idx = np.asarray(nsga3.survive(jax.numpy.asarray(F), n, jax.numpy.asarray(ref),
                                   key))
    return np.sort(idx.astype(np.int64))


def predictor_train_set(r: _Run, archive: Archive, it: int) -> np.ndarray:
    """Archive indices the predictor is fitted on (Algorithm 1 line 6).

    Table 2 "Train size 100" and section 3.3 ("restricting the surrogate
    model to ... the current objective trade-off"): the top-ranked
    `search.predictor_train_size` members of A by Algorithm 4 on their
    measured objectives; 0 = every measured subnet of the history (the
    authors' nsganetv2 fits on its whole archive).
    """
    size = r.plan.loop.predictor_train_size
    F = archive.objective_matrix(r.plan.task.names)
    if size == 0:
        return np.flatnonzero(np.isfinite(F[:, 0]))
    A = np.asarray(archive.working_at(it), np.int64)
    A = A[np.isfinite(F[A]).all(-1)]
    top = rank_top(F[A], size, jax.random.fold_in(r.key, 2000 + it))
    return A[top]


def search_step(r: _Run, archive: Archive, it: int) -> float:
    """Fits the predictor, searches and updates A (lines 6-11 of Algorithm 1).

    Records the working archive of iteration it + 1 (see the module
    docstring for the two `search.archive_update` modes). Returns the
    seconds taken.
    """
    t0 = time.time()
    train = predictor_train_set(r, archive, it)
    task = r.plan.task
    result = evolution.search(jax.random.fold_in(r.key, 1000 + it), task.space,
                              archive.genes()[train], archive.errors()[train],
                              task.complexity, r.plan.search)
    if r.plan.loop.archive_update == "paper":
        _select_archive(r, archive, it, result)
    else:
        ok = np.asarray(result.candidate_valid)
        cands = np.asarray(task.space.canonicalize(
            np.asarray(result.candidates)))[ok]
        pred_err = np.asarray(result.candidate_objectives)[ok, 0]
        added = archive.add(cands, iteration=it + 1, objectives=_objectives(r, cands))
        for i in added:
            row = np.flatnonzero((cands == archive.entries[i].genes).all(-1))[0]
            archive.entries[i].predicted_top1 = float(100.0 - pred_err[row])
        archive.set_working(it + 1, range(len(archive)))
    archive.save(r.workdir / "archive.json")
    seconds = time.time() - t0
    r.eta.observe("search", seconds)
    return seconds


def _select_archive(r: _Run, archive: Archive, it: int,
                    result: evolution.SearchResult) -> None:
    """`A <- Selection(A ∪ P_t, N)` (Algorithm 1 line 11, Algorithm 4).

    A's members enter with their measured error (weights of round it), the
    search's final population P_t with its predicted error; members of P_t
    already in A, duplicated or penalised (NaN) are dropped. New survivors
    join the history (unmeasured, with their predicted top-1); survivors of
    the history outside A are re-measured like every member of A.
    """
    names = r.plan.task.names
    A = archive.working_at(it)
    F_A = archive.objective_matrix(names)[A]
    pop = np.asarray(r.plan.task.space.canonicalize(np.asarray(result.population)))
    pop_f = np.asarray(result.objectives, np.float64)
    in_a = {archive.entries[i].genes for i in A}
    rows, seen = [], set()
    for j, g in enumerate(map(tuple, pop.tolist())):
        if g in in_a or g in seen or not np.isfinite(pop_f[j]).all():
            continue
        seen.add(g)
        rows.append(j)
    rows = np.asarray(rows, np.int64)
    F = np.concatenate([F_A, pop_f[rows]]) if len(rows) else F_A
    keep = rank_top(F, r.plan.loop.archive_size,
                    jax.random.fold_in(r.key, 3000 + it))
    working = [A[i] for i in keep if i < len(A)]
    new_rows = rows[[i - len(A) for i in keep if i >= len(A)]]
    genes = pop[new_rows]
    added = set(archive.add(genes, iteration=it + 1,
                            objectives=_objectives(r, genes)))
    index = {e.genes: i for i, e in enumerate(archive.entries)}
    for g, row in zip(map(tuple, genes.tolist()), new_rows):
        i = index[g]
        working.append(i)
        if i in added:
            archive.entries[i].predicted_top1 = float(100.0 - pop_f[row, 0])
    archive.set_working(it + 1, working)


def record_iteration(r: _Run, archive: Archive, it: int, times: dict) -> None:
    """metrics.jsonl line, TensorBoard scalars, front plot and a log line."""
    metrics = iteration_metrics(r, archive, it, times)
    workdir_lib.append_jsonl(r.workdir / "metrics.jsonl", metrics)
    tb_events.write_scalars(r.workdir / "tensorboard", it, metrics)
    task = r.plan.task
    report_lib.plot_front(r.workdir / "plots" / f"front_iter_{it:02d}.png", archive,
                         task.names, front_indices(archive, task.names,
                                                   archive.working_at(it + 1)), [],
                         r.plan.baselines,
                         title=f"NAT on {task.dataset.spec.name}: iteration {it}")
    logging.info("Iteration %d/%d: archive %d, HV %.4f, best top-1 %.2f%%, "
                 "tau(new) %.2f", it + 1, r.plan.loop.iterations,
                 metrics["archive_size"], metrics["hypervolume"],
                 metrics["best_top1"], metrics["kendall_tau_new"])


def finish(r: _Run, archive: Archive) -> dict:
    """Front, high trade-off picks, plots, report.md, the params-only task
    supernets (supernet/w<width>/, one per width of the run)."""
    plan = r.plan
    names = plan.task.names
    F = archive.objective_matrix(names)
    final = archive.working_at(plan.loop.iterations)
    front = front_indices(archive, names, final)
    k = min(plan.final.num_tradeoff, len(front))
    kwargs = run_config.high_tradeoff_kwargs(plan.final)
    Fn = F[front] / normaliser(archive, names)
    picks = [int(front[i]) for i in np.asarray(tradeoff.high_tradeoff(Fn, k,
                                                                       **kwargs))]
    outlier = outlier_summary(Fn, front, kwargs)
    most_acc = int(front[np.argmin(F[front, 0])])
    if most_acc not in picks:
        picks.append(most_acc)
    supernet_dir = r.workdir / "supernet"
    if supernet_dir.exists():  # left by a crash inside finish(): redo it
        shutil.rmtree(supernet_dir)
    variables = r.variables()
    supernet_set.save_all(supernet_dir, {w: (m, variables[w])
                                         for w, m in r.models.items()})
    summary = {"front": [int(i) for i in front], "picks": picks,
               "working_archive": [int(i) for i in final],
               "outlier_test": outlier, "supernet_dir": str(supernet_dir)}
    (r.workdir / "result.json").write_text(json.dumps(summary, indent=1))
    report_lib.plot_front(r.workdir / "plots" / "front_final.png", archive, names,
                         front, picks, plan.baselines,
                         title=f"NAT on {plan.task.dataset.spec.name}: final archive")
    report_lib.write_report(r.workdir / "report.md", plan.config, archive, names, front,
                           picks, workdir_lib.read_jsonl(r.workdir / "metrics.jsonl"),
                           outlier=outlier, working=final)
    return summary


def outlier_summary(Fn: np.ndarray, front: np.ndarray, kwargs: dict) -> dict | None:
    """Appendix F's mu + 3 sigma test of the highest trade-off front member
    (`tradeoff.outlier_test` on `tradeoff.front_tradeoffs`), JSON-ready;
    None for a front of fewer than two members."""
    idx, T = tradeoff.front_tradeoffs(Fn, **kwargs)
    if len(idx) < 2:
        return None
    res = tradeoff.outlier_test(T)
    out = {k: (bool(v) if isinstance(v, (bool, np.bool_)) else
               int(v) if isinstance(v, (int, np.integer)) else float(v))
           for k, v in res.items()}
    out["top_index"] = int(front[idx[res["top_index"]]])
    return out


# -------------------------------------------------------------- metrics
def iteration_metrics(r: _Run, archive: Archive, it: int,
                      times: dict[str, float]) -> dict:
    """Hypervolume, predictor rank correlation on the new members, sizes,
    members of A per width."""
    task = r.plan.task
    names = task.names
    F = archive.objective_matrix(names)
    A = np.asarray(archive.working_at(it + 1), np.int64)
    ok = A[np.isfinite(F[A]).all(-1)]
    new = [e for e in archive.entries if e.iteration == it + 1
           and e.predicted_top1 is not None and e.top1 is not None]
    tau = rho = math.nan
    if len(new) >= 3:
        pred = np.array([e.predicted_top1 for e in new])
        meas = np.array([e.top1 for e in new])
        tau = float(rank_stats.kendall(pred, meas))
        rho = float(rank_stats.spearman(pred, meas))
    hv = float(tradeoff.hypervolume(F[ok] / normaliser(archive, names),
                                    np.ones(len(names)) * 1.0, key=jax.random.key(it)))
    best = archive.entries[int(ok[np.argmin(F[ok, 0])])]
    used = archive.working_at(it)                  # what adaptation round it used
    probs = adaptation.gene_distribution(task.space, archive.genes()[used],
                                         r.plan.adapt.floor)
    return {"iteration": it, "archive_size": int(len(A)),
            "history_size": len(archive),
            "hypervolume": hv, "kendall_tau_new": tau, "spearman_new": rho,
            "best_top1": best.top1,
            "n_front": int(len(front_indices(archive, names, A))),
            "eq3_count": len(used), "eq3_entropy": gene_entropy(probs),
            "width_counts": width_counts(task.space, archive.genes()[A]),
            "times_s": times}


def width_counts(space, genes) -> dict[str, int]:
    """{"1.0": members, "1.2": members}: how many genotypes (int[n,
    num_genes]) have each width of `space` (gene 2)."""
    g = np.asarray(genes, np.int64).reshape(-1, space.num_genes)
    n = np.bincount(g[:, 1], minlength=len(space.widths))
    return {str(w): int(c) for w, c in zip(space.widths, n)}


def gene_entropy(probs: np.ndarray) -> float:
    """Entropy (nats) of Eq. 3's distribution: the sum over genes of each
    gene's categorical entropy, probs float[num_genes, values]."""
    p = np.asarray(probs, np.float64)
    return float(-np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)))


def normaliser(archive: Archive, names) -> np.ndarray:
    """Fixed per-objective scale: error in [0, 100]; others by the max subnet
    of the initial archive (x 1.05)."""
    init = [e for e in archive.entries if e.iteration == 0]
    F0 = np.array([[e.objectives[n] for n in names[1:]] for e in init])
    return np.concatenate([[100.0], F0.max(0) * 1.05])


def front_indices(archive: Archive, names, among=None) -> np.ndarray:
    """Archive indices of the measured nondominated members (of `among`,
    default every entry)."""
    F = archive.objective_matrix(names)
    idx = np.arange(len(archive)) if among is None else np.asarray(among, np.int64)
    ok = idx[np.isfinite(F[idx]).all(-1)]
    nd = np.asarray(tradeoff.nondominated(F[ok]))
    return ok[nd]


# ------------------------------------------------------------- progress
def _log_eta(r: _Run, archive: Archive, it: int) -> None:
    """One 'whole run: ETA ...' line from the remaining work of each phase."""
    loop, s = r.plan.loop, r.plan.search
    iters = loop.iterations
    searched = it + 1 in archive.working
    size = len(archive.working_at(it + 1))
    if loop.archive_update == "paper":   # about half of A renewed per search
        k, grow = min(s.pop_size, loop.archive_size) // 2, 0
    else:
        k = grow = s.n_candidates
    size += 0 if searched else grow
    evals = len(archive.pending(it + 1, archive.working_at(it + 1)))
    evals += 0 if searched else k
    evals += sum(size + k + grow * (j - it) for j in range(it + 1, iters))
    remaining = {"adapt": r.total_steps - r.step, "evaluate": evals,
                 "search": iters - it - (1 if searched else 0)}
    logging.info("%s", r.eta.line(remaining))


def _maybe_kill(phase: str, count: int) -> None:
    """SIGKILLs this process when NAT_JAX_KILL_AT names this point (tests)."""
    spec = os.environ.get("NAT_JAX_KILL_AT", "")
    if spec and spec == f"{phase}:{count}":
        os.kill(os.getpid(), signal.SIGKILL)
