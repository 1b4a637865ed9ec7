"""Search an adapted task supernet for new objectives, without training.

The paper's promise: once NAT has adapted a supernet to a task, new
deployment targets (another objective, or a constraint such as
"MAdds <= 300M") need only a search. `search_workdir` refits the accuracy
predictor on the run's archive, runs the evolutionary search on the new
objectives (constraint violations are penalised, so feasible subnets dominate
infeasible ones), measures the most promising subnets with the adapted
supernet (BN re-calibration + validation top-1) and returns the measured
front.

A run's task supernet is a set: one supernet per width multiplier (NAT
section 3.2, the genotype's second gene; `nat_jax.model.supernet_set`). The search
covers every width the set holds (the run's space with those widths), the
complexity objectives are exact at each subnet's own width, and each subnet
is measured on the supernet of its width (`evaluate_set`).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from nat_jax.data import pipeline
from nat_jax.model import supernet_set
from nat_jax.nat import report as report_lib
from nat_jax.nat import run_config
from nat_jax.runtime import workdir as workdir_lib
from nat_jax.search import evolution, tradeoff
from nat_jax.search.archive import Archive
from nat_jax.train import evaluation

_CONSTRAINT = re.compile(r"^\s*([\w.:]+)\s*(<=|<)\s*([0-9.eE+-]+)\s*$")
_PENALTY = 1e6


def parse_constraints(text: str) -> list[tuple[str, float]]:
    """"madds<=300,params<=5" -> [("madds", 300.0), ("params", 5.0)].

    Values are in the objective's units (millions for madds/params).
    """
    out = []
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        m = _CONSTRAINT.match(part)
        if not m:
            raise ValueError(f"Bad constraint {part!r}; write e.g. madds<=300 "
                             f"(objective, <= or <, a number).")
        out.append((m.group(1), float(m.group(3))))
    return out


def constrained_fn(space, names, constraints, num_classes, latency_table: str = ""):
    """Complexity objectives plus a penalty on every column when infeasible.

    Args:
      space: the run's search space.
      names: the non-error objectives.
      constraints: [(objective, limit)] from `parse_constraints`.
      num_classes: classes of the task.
      latency_table: a latency table file (for "latency"), or "".

    Returns (fn, feasible_fn): fn(genes) -> float32[n, m]; feasible_fn(genes)
    -> bool[n].
    """
    base = run_config.complexity_objectives(names, space, num_classes,
                                            latency_table)
    cons = run_config.complexity_objectives(
        [c for c, _ in constraints], space, num_classes,
        latency_table) if constraints else None
    limits = jnp.asarray([v for _, v in constraints], jnp.float32)

    def violation(genes):
        if cons is None:
            return jnp.zeros(genes.shape[:-1], jnp.float32)
        return jnp.maximum(cons(genes) - limits, 0.0).sum(-1)

    def fn(genes):
        v = violation(genes)
        return base(genes) + jnp.where(v > 0, _PENALTY + v, 0.0)[..., None]

    return fn, lambda genes: np.asarray(violation(jnp.asarray(genes)) <= 0)


def output_name(names, constraints) -> str:
    """The default output folder: "search_" + the objectives after top1_error,
    then each constraint, joined by "_" (top1_error,params with madds<=0.5:
    "search_params_madds-le-0.5")."""
    parts = [n.replace(":", "-") for n in names[1:]]
    parts += [f"{n.replace(':', '-')}-le-{v:g}" for n, v in constraints]
    return "search_" + "_".join(parts)


def load_workdir(workdir: str | pathlib.Path
                 ) -> tuple[run_config.TransferPlan, Archive, dict]:
    """(plan, archive, supernets) of a finished transfer run.

    `plan` is the run's config.json resolved (`run_config.plan`: its data
    loaded, `plan.task.dataset`); `supernets` is {width: (model,
    variables)}, one per width of the run's
    supernet set (every model's space is the archive's: the run's space with
    the set's widths, so one genotype decodes the same on every width).

    Raises:
      FileNotFoundError: not a finished transfer workdir.
      ValueError: the archive holds subnets of a width the set lacks.
    """
    workdir = pathlib.Path(workdir)
    for name in ("config.json", "archive.json", "supernet"):
        if not (workdir / name).exists():
            raise FileNotFoundError(
                f"{workdir} has no {name}: pass the --workdir of a finished "
                f"experiments.transfer run.")
    # validated: e.g. field names of an older version are refused in one line
    plan = run_config.plan(workdir_lib.read_config(workdir), num_devices=1)
    widths = supernet_set.widths(workdir)
    space = dataclasses.replace(plan.task.space, widths=widths)
    entries = json.loads((workdir / "archive.json").read_text()).get("entries", [])
    missing = sorted({float(e["width"]) for e in entries if "width" in e}
                     - set(widths))
    if missing:
        raise ValueError(f"{workdir}/archive.json has subnets of width(s) {missing} "
                         f"but its supernet set holds only widths {list(widths)}; "
                         f"restore the missing supernet/w<width>/ folder(s).")
    archive = Archive.load(workdir / "archive.json", space)
    supernets = {w: supernet_set.load_set_width(workdir, w, space) for w in widths}
    return plan, archive, supernets


def evaluate_set(supernets, genes_list, space, dataset_split, calib_split,
                 config: evaluation.EvalConfig, *, mesh=None, progress=None,
                 calibration=None) -> list[dict]:
    """`evaluation.evaluate_subnets` over a supernet set: each genotype is
    measured on the supernet of its width (gene 2, NAT section 3.2).

    Args:
      supernets: {width: (model, variables)}, every model's space `space`.
      genes_list: genotypes (int[num_genes] each) of `space`, any widths.
      space: the search space of the genotypes.
      dataset_split, calib_split, config, mesh, calibration, progress: as
        `evaluation.evaluate_subnets` (progress gets indices into
        `genes_list`).

    Returns:
      One result dict per genotype, in the order given.

    Raises:
      ValueError: a genotype's width has no supernet in the set.
    """
    return evaluation.evaluate_subnets(
        {w: m for w, (m, _) in supernets.items()},
        {w: v for w, (_, v) in supernets.items()}, list(genes_list), space,
        dataset_split, calib_split, config, mesh=mesh, progress=progress,
        calibration=calibration)


def search_workdir(workdir, objective_names: str, constraints: str = "",
                   seed: int = 0, n_evaluate: int = 8, output=None,
                   generations: int | None = None, latency_table: str = "") -> dict:
    """Searches a transfer run's supernet for new objectives; returns the front.

    Args:
      workdir: a finished experiments.transfer workdir.
      objective_names: "top1_error,OBJ[,OBJ...]" (any registered objective).
      constraints: e.g. "madds<=300" (units of the objective).
      seed: search seed.
      n_evaluate: subnets of the predicted front measured on the supernet.
      output: directory for front.json, front.png and summary.json
        (default WORKDIR/`output_name(...)`, e.g. search_params_madds-le-0.5).
      generations: override the run's generations per search.
      latency_table: a table from experiments.build_latency_table (enables the
        "latency" objective; default: the run's own table, if any).
    """
    t0 = time.time()
    names = run_config.objective_names(objective_names)
    cons = parse_constraints(constraints)
    plan, archive, supernets = load_workdir(workdir)
    dataset = plan.task.dataset
    table = latency_table or plan.latency_table
    space = archive.space
    fn, feasible = constrained_fn(space, names[1:], cons, dataset.num_classes, table)
    sconf = plan.search
    if generations is not None:
        sconf = dataclasses.replace(sconf, generations=generations)
    sconf = dataclasses.replace(sconf, n_candidates=min(max(n_evaluate, 1),
                                                        sconf.pop_size))
    # The final working archive A (paper mode): its members were measured with
    # the final weights; older history members were measured with older ones.
    final = np.zeros(len(archive), bool)
    final[archive.working_at(max(archive.working, default=0))] = True
    measured = np.isfinite(archive.errors()) & final
    result = evolution.search(jax.random.key(seed), space, archive.genes()[measured],
                              archive.errors()[measured], fn, sconf)
    cands = np.asarray(result.candidates)[np.asarray(result.candidate_valid)]
    # Known archive members that meet the constraints compete too.
    pool = np.concatenate([cands, archive.genes()[measured]])
    pool = pool[feasible(pool)]
    if not len(pool):
        raise ValueError(f"No subnet found that satisfies {constraints!r}.")
    pool = np.unique(np.asarray(space.canonicalize(pool)), axis=0)
    pred = np.asarray(result.predictors[0].predict(pool))
    F = np.concatenate([pred[:, None], np.asarray(fn(jnp.asarray(pool)))], -1)
    order = np.argsort(~np.asarray(tradeoff.nondominated(F)), kind="stable")
    pick = pool[order[:n_evaluate]]
    logging.info("Measuring %d subnets on the adapted supernet.", len(pick))
    ecfg = plan.eval
    res = evaluate_set(
        supernets, list(pick), space, dataset.val, dataset.train, ecfg,
        calibration=pipeline.CalibrationSet(dataset.train, ecfg.calib_images,
                                            ecfg.calib_batch_size, ecfg.calib_seed))
    objs = np.asarray(run_config.complexity_objectives(
        names[1:], space, dataset.num_classes, table)(jnp.asarray(pick)))
    arc = Archive(space)
    arc.add(pick, iteration=0,
            objectives=[dict(zip(names[1:], map(float, o))) for o in objs])
    for i, r in enumerate(res):
        arc.record(i, r["top1"], r["top5"], version=0)
    Fm = arc.objective_matrix(names)
    front = np.flatnonzero(tradeoff.nondominated(Fm))
    out = pathlib.Path(output or pathlib.Path(workdir) / output_name(names, cons))
    out.mkdir(parents=True, exist_ok=True)
    arc.save(out / "front.json")
    report_lib.plot_front(out / "front.png", arc, names, front, [], {},
                         title=f"{dataset.spec.name}: {', '.join(names[1:])}"
                               + (f" ({constraints})" if constraints else ""))
    summary = {"objectives": list(names), "constraints": constraints,
               "output": str(out),
               "seconds": time.time() - t0, "front": [
                   {"genes": list(arc.entries[i].genes),
                    "width": space.decode(arc.entries[i].genes).width,
                    "top1": arc.entries[i].top1,
                    **arc.entries[i].objectives} for i in front]}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
