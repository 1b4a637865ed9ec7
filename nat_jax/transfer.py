"""Neural Architecture Transfer end to end (paper Algorithm 1), resumable.

`run(config, workdir)` alternates, after a warm-up adaptation of the new
classifier:

  1. adapt the supernet (Algorithm 5; one subnet per batch sampled from the
     archive's per-gene distribution, Eq. 3);
  2. evaluate every archive member not yet measured with the current weights
     (BN re-calibration, then validation top-1/top-5);
  3. fit the RBF-ensemble predictor and run the evolutionary search
     (Algorithms 2-4) on predicted error plus the complexity objectives;
  4. add the K chosen candidates to the archive and evaluate them.

Everything a rerun needs lives in `workdir`: `config.json`, `archive.json`
(written after every evaluated subnet), orbax checkpoints of the train state
(every `adapt.checkpoint_every` steps), `metrics.jsonl` (one line per
iteration), `progress.json`, plots and, at the end, `report.md` and the
params-only task supernet under `supernet/`. Rerunning the same command
continues from the last completed step and never repeats finished work.

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
import numpy as np
from absl import logging

from nat_jax import adaptation, checkpoint, data, evaluation, evolution, objectives
from nat_jax import pipeline
from nat_jax import rank_stats, reporting, sharding
from nat_jax import search_space as ss
from nat_jax import workdir as workdir_lib
from nat_jax import supernet as supernet_lib
from nat_jax import tradeoff
from nat_jax.archive import Archive

def _maybe_kill(phase: str, count: int) -> None:
    """SIGKILLs this process when NAT_JAX_KILL_AT names this point (tests)."""
    spec = os.environ.get("NAT_JAX_KILL_AT", "")
    if spec and spec == f"{phase}:{count}":
        os.kill(os.getpid(), signal.SIGKILL)


def get_space(name: str) -> ss.SearchSpace:
    spaces = {"ofa_mbv3": ss.OFA_MBV3, "tiny": ss.SearchSpace.tiny()}
    if name not in spaces:
        raise ValueError(f"Unknown search space {name!r}; known: {sorted(spaces)}.")
    return spaces[name]


def enable_latency(path: str) -> None:
    """Registers the "latency" objective from a lookup table file, if given."""
    if path:
        from nat_jax import latency  # imports the subnet builder; only when used

        if not pathlib.Path(path).is_file():
            raise FileNotFoundError(
                f"Latency table {path} not found; build one on the target device "
                f"with python -m experiments.build_latency_table --output={path}")
        latency.register_table(path)


def run_space(config) -> ss.SearchSpace:
    """The configured space, with its width pinned (one supernet has one width)
    and, if `config.resolutions` is set, restricted to those resolutions."""
    space = get_space(config.space)
    space.width_index(config.width)
    res = tuple(int(r) for r in config.get("resolutions", ())) or space.resolutions
    for r in res:
        space.resolution_index(r)
    return dataclasses.replace(space, widths=(float(config.width),),
                               resolutions=tuple(sorted(set(res))))


def parse_objectives(text: str, space: ss.SearchSpace, num_classes: int):
    """(names, complexity_fn) from "top1_error,madds,...": 2 to 12 objectives."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names or names[0] != "top1_error":
        raise ValueError(f"Objectives must start with top1_error, got {text!r} "
                         f"(e.g. top1_error,madds).")
    if not 2 <= len(names) <= 12:
        raise ValueError(f"NAT takes 2 to 12 objectives, got {len(names)}: {names}.")
    if len(set(names)) != len(names):
        raise ValueError(f"Repeated objective in {names}.")
    return names, objectives.complexity_fn(space, tuple(names[1:]), num_classes)


# ------------------------------------------------------------------- run
class _Run:
    """State of one transfer run (host side)."""

    def __init__(self, config, workdir: pathlib.Path):
        self.cfg = config
        self.workdir = workdir
        self.space = run_space(config)
        self.key = jax.random.key(config.seed)
        self.dataset = data.load(config.dataset, data_dir=config.data_dir or None)
        self.num_classes = self.dataset.num_classes
        enable_latency(config.get("latency_table", ""))
        self.names, self.complexity = parse_objectives(
            config.objectives, self.space, self.num_classes)
        self.model, variables = self._supernet()
        self.steps_per_epoch = self._steps_per_epoch()
        a = config.adapt
        self.steps_per_round = [a.warmup_epochs * self.steps_per_epoch] + [
            a.epochs_per_iter * self.steps_per_epoch] * (config.search.iterations - 1)
        total = sum(self.steps_per_round)
        self.total_steps = max(sum(self.steps_per_round), 1)
        self.adapt_cfg = adaptation.AdaptConfig(
            lr=a.lr, momentum=a.momentum, weight_decay=a.weight_decay,
            label_smoothing=a.label_smoothing, checkpoint_every=a.checkpoint_every)
        self.mesh = sharding.data_mesh()
        self.ckpt = checkpoint.TrainCheckpointer(str(workdir / "ckpt"), max_to_keep=2)
        state = adaptation.create_train_state(self.model, variables, self.adapt_cfg,
                                              self.total_steps,
                                              jax.random.fold_in(self.key, 1))
        loader_kw = dict(num_devices=self.mesh.size)
        if self.ckpt.latest_step() is not None:
            state, extra = self.ckpt.restore(state)
            self.loader = pipeline.TrainLoader.restore(
                self.dataset.train, extra["loader"], **loader_kw)
            logging.info("Resuming adaptation from step %d.", int(state.step))
        else:
            self.loader = pipeline.TrainLoader(self.dataset.train, a.batch_size,
                                               seed=config.seed, **loader_kw)
        self.state = state
        self.calibration = pipeline.CalibrationSet(
            self.dataset.train, config.eval.calib_images, config.eval.calib_batch_size,
            seed=config.seed, num_devices=self.mesh.size)
        self.archive = self._archive()

    # ----------------------------------------------------------- set-up
    def _supernet(self):
        width = self.cfg.width
        if self.cfg.supernet:
            model, variables = load_for_task(
                self.cfg.supernet, self.space, self.num_classes,
                jax.random.fold_in(self.key, 2), self.cfg.adapt.dropout_rate)
        else:
            logging.warning("No --supernet given: starting from a RANDOMLY initialised "
                            "supernet (fine for the CPU demo; for real transfer "
                            "convert an ImageNet OFA checkpoint with "
                            "experiments.convert_ofa).")
            model, variables = supernet_lib.init_supernet(
                self.space, width, self.num_classes, jax.random.fold_in(self.key, 2),
                dropout_rate=self.cfg.adapt.dropout_rate)
        return model, variables

    def _steps_per_epoch(self) -> int:
        n = len(self.dataset.train) // self.cfg.adapt.batch_size
        cap = self.cfg.adapt.max_steps_per_epoch
        return max(1, min(n, cap) if cap else n)

    def _archive(self) -> Archive:
        path = self.workdir / "archive.json"
        if path.exists():
            arc = Archive.load(path, self.space)
            logging.info("Resuming: archive of %d subnets from %s", len(arc), path)
            return arc
        arc = Archive(self.space)
        k = jax.random.fold_in(self.key, 3)
        init = np.asarray(self.space.sample(k, self.cfg.search.archive_init))
        ends = [self.space.encode(self.space.min_arch()),
                self.space.encode(self.space.max_arch())]
        genes = np.concatenate([init, np.stack(ends)])
        arc.add(genes, iteration=0, objectives=self._objectives(genes))
        arc.save(path)
        return arc

    def _objectives(self, genes: np.ndarray) -> list[dict[str, float]]:
        vals = np.asarray(self.complexity(np.asarray(genes, np.int32)))
        return [{n: float(v) for n, v in zip(self.names[1:], row)} for row in vals]

    # ------------------------------------------------------------ phases
    def variables(self) -> dict:
        return {"params": self.state.params, "batch_stats": self.state.batch_stats}

    def adapt_round(self, r: int) -> None:
        """Adaptation round r (0 = warm-up) up to its cumulative step target."""
        target = sum(self.steps_per_round[:r + 1])
        done = int(self.state.step)
        if done >= target:
            return
        probs = adaptation.gene_distribution(self.space, self.archive.genes(),
                                             self.adapt_cfg.floor)
        logging.info("Adaptation round %d: global steps %d..%d of %d", r, done,
                     target, self.total_steps)
        prog = reporting.Progress(f"adapt round {r}", target - done)
        self.state, m = adaptation.adapt(
            self.state, self.model, self.loader, probs, target - done,
            self.adapt_cfg, mesh=self.mesh, checkpointer=self.ckpt,
            progress=lambda step, d: (prog.update(
                step + 1 - done, f"loss={d['loss']:.3f} lr={d['lr']:.4f}"),
                _maybe_kill("adapt", step + 1)))
        logging.info("Adaptation round %d done: mean loss %.3f, %.0f images/s", r,
                     m["loss"], m["images_per_s"])

    def evaluate_pending(self, version: int) -> float:
        """Measures every member not yet evaluated with weights `version`.

        Subnets are evaluated grouped by resolution (one compile each) and
        the archive is saved after every subnet, so a crash loses at most one.
        """
        todo = self.archive.pending(version)
        if not todo:
            return 0.0
        t0 = time.time()
        prog = reporting.Progress(f"evaluate (weights v{version})", len(todo))
        by_res: dict[int, list[int]] = {}
        for i in todo:
            by_res.setdefault(self.archive.entries[i].genes[0], []).append(i)
        variables, count = self.variables(), [0]
        for idx in by_res.values():
            def record(j, n, res, idx=idx):
                self.archive.record(idx[j], res["top1"], res["top5"], version)
                self.archive.save(self.workdir / "archive.json")
                count[0] += 1
                prog.update(count[0], f"top1={res['top1']:.2f}")
                if version >= 2:
                    _maybe_kill("evaluate", count[0])

            evaluation.evaluate_subnets(
                self.model, variables, [self.archive.entries[i].genes for i in idx],
                self.space, self.dataset.val, self.dataset.train, self._eval_cfg(),
                mesh=self.mesh, progress=record, calibration=self.calibration)
        return time.time() - t0

    def _eval_cfg(self):
        e = self.cfg.eval
        return evaluation.EvalConfig(batch_size=e.batch_size,
                                     calib_images=e.calib_images,
                                     calib_batch_size=e.calib_batch_size,
                                     calib_seed=self.cfg.seed)

    def search(self, it: int) -> tuple[float, np.ndarray, np.ndarray]:
        """Fits the predictor, searches, adds K candidates (iteration it + 1)."""
        t0 = time.time()
        s = self.cfg.search
        conf = search_config(s)
        genes, errors = self.archive.genes(), self.archive.errors()
        result = evolution.search(jax.random.fold_in(self.key, 1000 + it), self.space,
                                  genes, errors, self.complexity, conf)
        ok = np.asarray(result.candidate_valid)
        cands = np.asarray(self.space.canonicalize(np.asarray(result.candidates)))[ok]
        pred_err = np.asarray(result.candidate_objectives)[ok, 0]
        added = self.archive.add(cands, iteration=it + 1,
                                 objectives=self._objectives(cands))
        for i in added:
            row = np.flatnonzero((cands == self.archive.entries[i].genes).all(-1))[0]
            self.archive.entries[i].predicted_top1 = float(100.0 - pred_err[row])
        self.archive.save(self.workdir / "archive.json")
        return time.time() - t0, cands, pred_err

    # ----------------------------------------------------------- metrics
    def iteration_metrics(self, it: int, times: dict[str, float]) -> dict:
        F = self.archive.objective_matrix(self.names)
        ok = np.isfinite(F).all(-1)
        new = [e for e in self.archive.entries if e.iteration == it + 1
               and e.predicted_top1 is not None and e.top1 is not None]
        tau = rho = math.nan
        if len(new) >= 3:
            pred = np.array([e.predicted_top1 for e in new])
            meas = np.array([e.top1 for e in new])
            tau = float(rank_stats.kendall(pred, meas))
            rho = float(rank_stats.spearman(pred, meas))
        norm = self._normaliser()
        hv = float(tradeoff.hypervolume(F[ok] / norm, np.ones(len(self.names)) * 1.0,
                                        key=jax.random.key(it)))
        best = self.archive.entries[int(np.nanargmin(F[:, 0]))]
        return {"iteration": it, "archive_size": len(self.archive),
                "hypervolume": hv, "kendall_tau_new": tau, "spearman_new": rho,
                "best_top1": best.top1, "n_front": int(len(self._front_idx())),
                "times_s": times}

    def _normaliser(self) -> np.ndarray:
        """Fixed per-objective scale: error in [0, 100]; others by the max subnet."""
        init = [e for e in self.archive.entries if e.iteration == 0]
        F0 = np.array([[e.objectives[n] for n in self.names[1:]] for e in init])
        return np.concatenate([[100.0], F0.max(0) * 1.05])

    def _front_idx(self) -> np.ndarray:
        F = self.archive.objective_matrix(self.names)
        ok = np.flatnonzero(np.isfinite(F).all(-1))
        nd = np.asarray(tradeoff.nondominated(F[ok]))
        return ok[nd]

    def finish(self) -> dict:
        """Front, high trade-off picks, plots, report.md, params-only supernet."""
        F = self.archive.objective_matrix(self.names)
        front = self._front_idx()
        k = min(self.cfg.final.num_tradeoff, len(front))
        picks = [int(front[i]) for i in np.asarray(
            tradeoff.high_tradeoff(F[front] / self._normaliser(), k))]
        most_acc = int(front[np.argmin(F[front, 0])])
        if most_acc not in picks:
            picks.append(most_acc)
        supernet_dir = self.workdir / "supernet"
        if supernet_dir.exists():  # left by a crash inside finish(): redo it
            shutil.rmtree(supernet_dir)
        supernet_lib.save_supernet(str(supernet_dir), self.model, self.variables())
        summary = {"front": [int(i) for i in front], "picks": picks,
                   "supernet_dir": str(supernet_dir)}
        (self.workdir / "result.json").write_text(json.dumps(summary, indent=1))
        reporting.plot_front(self.workdir / "plots" / "front_final.png", self.archive,
                             self.names, front, picks, self.cfg.baselines.to_dict(),
                             title=f"NAT on {self.cfg.dataset}: final archive")
        reporting.write_report(self.workdir / "report.md", self.cfg, self.archive,
                               self.names, front, picks,
                               workdir_lib.read_jsonl(self.workdir / "metrics.jsonl"))
        return summary


def search_config(s) -> evolution.SearchConfig:
    """evolution.SearchConfig from the config's `search` block."""
    return evolution.SearchConfig(
        pop_size=s.pop_size, generations=s.generations,
        crossover_prob=s.crossover_prob, mutation_prob=s.mutation_prob,
        mutation_eta=s.eta_m, n_members=s.ensemble_size,
        n_candidates=s.candidates_per_iter)


def load_for_task(directory: str, space: ss.SearchSpace, num_classes: int,
                  key: jax.Array, dropout_rate: float):
    """A supernet with a fresh classifier when the classes differ.

    `directory` is an orbax supernet from experiments.convert_ofa, or an
    official OFA `.pth` file (read directly; needs torch).
    """
    if pathlib.Path(directory).is_file():
        from nat_jax import pretrained  # torch only on this path

        width = space.widths[0]
        model, variables = pretrained.load_ofa_checkpoint(
            str(directory), width, num_classes, key,
            space=dataclasses.replace(ss.OFA_MBV3, widths=(width,)),
            dropout_rate=dropout_rate)
        if dataclasses.replace(model.space, resolutions=space.resolutions) != space:
            raise ValueError(f"{directory} is an OFA MobileNetV3 checkpoint; use "
                             f"--config.space=ofa_mbv3 with it.")
        return model.clone(space=space), variables
    if not pathlib.Path(directory).exists():
        raise FileNotFoundError(
            f"--supernet {directory} does not exist. Download an official OFA "
            f"checkpoint (ofa_mbv3_d234_e346_k357_w1.0 or _w1.2) and convert it: "
            f"python -m experiments.convert_ofa --checkpoint=FILE --width=1.0 "
            f"--output={directory}")
    model, variables = supernet_lib.load_supernet(directory)
    same = dataclasses.replace(model.space, widths=space.widths,
                               resolutions=space.resolutions) == space
    if not same or model.width not in space.widths:
        raise ValueError(f"Supernet {directory} (width {model.width}) does not match "
                         f"the configured search space / width {space.widths[0]}.")
    model = model.clone(space=space, dropout_rate=dropout_rate)
    if model.num_classes != num_classes:
        logging.info("Replacing the %d-class classifier with a fresh %d-class one.",
                     model.num_classes, num_classes)
        model = model.clone(num_classes=num_classes)
        params = dict(variables["params"])
        params.update(supernet_lib.init_classifier(model, key))
        variables = {**variables, "params": params}
    return model, variables


def run(config, workdir: str | os.PathLike) -> dict:
    """Runs (or resumes) NAT with `config` in `workdir`; returns the summary."""
    workdir = pathlib.Path(workdir)
    workdir_lib.check_config(workdir, config.to_dict())
    done = workdir / "progress.json"
    if done.exists() and json.loads(done.read_text()).get("done"):
        logging.info("%s holds a finished run; nothing to do.", workdir)
        return json.loads((workdir / "result.json").read_text())
    r = _Run(config, workdir)
    done_metrics = {m["iteration"] for m in workdir_lib.read_jsonl(workdir / "metrics.jsonl")}
    iterations = config.search.iterations
    for it in range(iterations):
        if it in done_metrics:
            continue
        times = {}
        t0 = time.time()
        r.adapt_round(it)
        times["adapt"] = time.time() - t0
        times["evaluate"] = r.evaluate_pending(version=it + 1)
        if not any(e.iteration == it + 1 for e in r.archive.entries):
            times["search"], _, _ = r.search(it)
        times["evaluate_new"] = r.evaluate_pending(version=it + 1)
        metrics = r.iteration_metrics(it, times)
        with open(workdir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(metrics) + "\n")
        reporting.write_scalars(workdir / "tensorboard", it, metrics)
        reporting.plot_front(workdir / "plots" / f"front_iter_{it:02d}.png",
                             r.archive, r.names, r._front_idx(), [],
                             config.baselines.to_dict(),
                             title=f"NAT on {config.dataset}: iteration {it}")
        logging.info("Iteration %d/%d: archive %d, HV %.4f, best top-1 %.2f%%, "
                     "tau(new) %.2f", it + 1, iterations, metrics["archive_size"],
                     metrics["hypervolume"], metrics["best_top1"],
                     metrics["kendall_tau_new"])
    summary = r.finish()
    (workdir / "progress.json").write_text(json.dumps({"done": True}))
    return summary
