"""Search an adapted task supernet for new objectives, without training.

The paper's promise: once NAT has adapted a supernet to a task, new
deployment targets (another objective, or a constraint such as
"MAdds <= 300M") need only a search. `search_workdir` refits the accuracy
predictor on the run's archive, runs the evolutionary search on the new
objectives (constraint violations are penalised, so feasible subnets dominate
infeasible ones), measures the most promising subnets with the adapted
supernet (BN re-calibration + validation top-1) and returns the measured
front.
"""

from __future__ import annotations

import json
import pathlib
import re
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from nat_jax import data, evaluation, evolution, objectives, pipeline
from nat_jax import reporting, supernet, tradeoff, transfer
from nat_jax.archive import Archive

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


def constrained_fn(space, names, constraints, num_classes):
    """Complexity objectives plus a penalty on every column when infeasible.

    Returns (fn, feasible_fn): fn(genes) -> float32[n, m]; feasible_fn(genes)
    -> bool[n].
    """
    base = objectives.complexity_fn(space, tuple(names), num_classes)
    cons = objectives.complexity_fn(space, tuple(c for c, _ in constraints),
                                    num_classes) if constraints else None
    limits = jnp.asarray([v for _, v in constraints], jnp.float32)

    def violation(genes):
        if cons is None:
            return jnp.zeros(genes.shape[:-1], jnp.float32)
        return jnp.maximum(cons(genes) - limits, 0.0).sum(-1)

    def fn(genes):
        v = violation(genes)
        return base(genes) + jnp.where(v > 0, _PENALTY + v, 0.0)[..., None]

    return fn, lambda genes: np.asarray(violation(jnp.asarray(genes)) <= 0)


def load_workdir(workdir: str | pathlib.Path):
    """(config, archive, model, variables, dataset) of a finished transfer run."""
    workdir = pathlib.Path(workdir)
    for name in ("config.json", "archive.json", "supernet"):
        if not (workdir / name).exists():
            raise FileNotFoundError(
                f"{workdir} has no {name}: pass the --workdir of a finished "
                f"experiments.transfer run.")
    cfg = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))
    space = transfer.run_space(cfg)
    archive = Archive.load(workdir / "archive.json", space)
    model, variables = supernet.load_supernet(str(workdir / "supernet"))
    model = model.clone(space=space)
    dataset = data.load(cfg.dataset, data_dir=cfg.data_dir or None)
    return cfg, archive, model, variables, dataset


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
      output: directory for front.json, front.png and report lines
        (default WORKDIR/search_<objectives>).
      generations: override the run's generations per search.
      latency_table: a table from experiments.build_latency_table (enables the
        "latency" objective; default: the run's own table, if any).
    """
    t0 = time.time()
    cfg, archive, model, variables, dataset = load_workdir(workdir)
    transfer.enable_latency(latency_table or cfg.get("latency_table", ""))
    space = archive.space
    names, _ = transfer.parse_objectives(objective_names, space, dataset.num_classes)
    cons = parse_constraints(constraints)
    fn, feasible = constrained_fn(space, names[1:], cons, dataset.num_classes)
    sconf = transfer.search_config(cfg.search)
    if generations is not None:
        sconf = evolution.SearchConfig(**{**sconf.__dict__, "generations": generations})
    sconf = evolution.SearchConfig(**{**sconf.__dict__, "n_candidates": min(
        max(n_evaluate, 1), sconf.pop_size)})
    measured = np.isfinite(archive.errors())
    result = evolution.search(jax.random.key(seed), space, archive.genes()[measured],
                              archive.errors()[measured], fn, sconf)
    cands = np.asarray(result.candidates)[np.asarray(result.candidate_valid)]
    # Known archive members that meet the constraints compete too.
    pool = np.concatenate([cands, archive.genes()[measured]])
    pool = pool[feasible(pool)]
    if not len(pool):
        raise ValueError(f"No subnet found that satisfies {constraints!r}.")
    pool = np.unique(np.asarray(space.canonicalize(pool)), axis=0)
    pred = np.asarray(result.predictor.predict(pool))
    F = np.concatenate([pred[:, None], np.asarray(fn(jnp.asarray(pool)))], -1)
    order = np.argsort(~np.asarray(tradeoff.nondominated(F)), kind="stable")
    pick = pool[order[:n_evaluate]]
    logging.info("Measuring %d subnets on the adapted supernet.", len(pick))
    res = evaluation.evaluate_subnets(
        model, variables, list(pick), space, dataset.val, dataset.train,
        evaluation.EvalConfig(batch_size=cfg.eval.batch_size,
                              calib_images=cfg.eval.calib_images,
                              calib_batch_size=cfg.eval.calib_batch_size,
                              calib_seed=cfg.seed),
        calibration=pipeline.CalibrationSet(dataset.train, cfg.eval.calib_images,
                                            cfg.eval.calib_batch_size, cfg.seed))
    objs = np.asarray(objectives.complexity_fn(space, tuple(names[1:]),
                                               dataset.num_classes)(jnp.asarray(pick)))
    arc = Archive(space)
    arc.add(pick, iteration=0,
            objectives=[dict(zip(names[1:], map(float, o))) for o in objs])
    for i, r in enumerate(res):
        arc.record(i, r["top1"], r["top5"], version=0)
    Fm = arc.objective_matrix(names)
    front = np.flatnonzero(tradeoff.nondominated(Fm))
    out = pathlib.Path(output or pathlib.Path(workdir) / (
        "search_" + "_".join(n.replace(":", "-") for n in names[1:])))
    out.mkdir(parents=True, exist_ok=True)
    arc.save(out / "front.json")
    reporting.plot_front(out / "front.png", arc, names, front, [], {},
                         title=f"{cfg.dataset}: {', '.join(names[1:])}"
                               + (f" ({constraints})" if constraints else ""))
    summary = {"objectives": names, "constraints": constraints,
               "seconds": time.time() - t0, "front": [
                   {"genes": list(arc.entries[i].genes), "top1": arc.entries[i].top1,
                    **arc.entries[i].objectives} for i in front]}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
