r"""Search an adapted task supernet for new objectives or constraints.

Usage:
  python -m experiments.search --supernet_dir=runs/default \
      --objectives=top1_error,params --constraints='madds<=0.5'

SUPERNET_DIR is the --workdir of a finished experiments.transfer run. No
training happens: the run's archive refits the predictor, the search runs on
the new objectives, and the most promising subnets are measured on the
adapted supernet. The run's supernet/ holds one supernet per width multiplier
(w1.0/, w1.2/; NAT section 3.2's width gene): the search covers every width
it holds, MAdds/params are exact at each subnet's width, and each subnet is
measured on the supernet of its width (summary.json gives each front
member's "width"). Writes front.json, front.png and summary.json under
SUPERNET_DIR/search_<objectives after top1_error>[_<constraints>] (here
runs/default/search_params_madds-le-0.5) or --output; the summary printed
at the end names the folder.

Several tasks (paper Appendix F): give --supernet_dir a comma-separated list
of adapted task supernets, one per dataset, each a transfer workdir or a
supernet set (or one width's supernet directory) followed by =DATASET:
  python -m experiments.search --objectives=top1_error,madds,params \
      --supernet_dir=runs/fashion,runs/mnist,runs/digits --output=runs/joint
One objective per task (top-1 error on its validation split, measured with
its own supernet and classifier, BN re-calibrated on its training split)
plus the complexity objectives; one accuracy predictor per task, NSGA-III on
all of them, --evaluate candidates per iteration measured on every task, for
--iterations iterations after an initial joint archive of --archive_init
subnets (NSGA-III population --pop_size); no adaptation. Search, evaluation
and trade-off settings come from the first task's transfer config
(experiments/configs/transfer.py:tiny when no task has one). Writes
joint_archive.json, front.json, result.json, metrics.jsonl, pcp.png,
scatter_<task>.png and report.md under --output (default
runs/multitask_<task names>); rerunning the same command resumes.
"""

from __future__ import annotations

import json

from absl import app, flags

from experiments import cli

_DIR = flags.DEFINE_string(
    "supernet_dir", None, "Workdir of a transfer run; or several, comma-separated "
    "(WORKDIR or SUPERNET_DIR=DATASET each), for one search over all their tasks.")
_OBJECTIVES = flags.DEFINE_string("objectives", "top1_error,madds",
                                  "Comma-separated, starting with top1_error.")
_CONSTRAINTS = flags.DEFINE_string("constraints", "",
                                   "e.g. 'madds<=300,params<=5' (objective units).")
_SEED = flags.DEFINE_integer("seed", 0, "Search seed.")
_EVALUATE = flags.DEFINE_integer("evaluate", 8, "Subnets measured on the supernet.")
_GENERATIONS = flags.DEFINE_integer("generations", None, "Override generations.")
_OUTPUT = flags.DEFINE_string("output", None, "Output directory.")
_LATENCY = flags.DEFINE_string("latency_table", "", "Latency lookup table (JSON from "
                               "experiments.build_latency_table) for 'latency'.")
_ITERATIONS = flags.DEFINE_integer("iterations", None, "Several tasks: search "
                                   "iterations (default: the config's).")
_POP_SIZE = flags.DEFINE_integer("pop_size", None, "Several tasks: NSGA-III "
                                 "population (default: the config's).")
_ARCHIVE_INIT = flags.DEFINE_integer("archive_init", None, "Several tasks: initial "
                                     "joint archive size (default: the config's).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not _DIR.value:
        raise ValueError("--supernet_dir is required (a transfer run's --workdir).")
    if _EVALUATE.value < 1:
        raise ValueError(f"--evaluate={_EVALUATE.value} is invalid: measure at least "
                         f"1 subnet.")
    if _GENERATIONS.value is not None and _GENERATIONS.value < 0:
        raise ValueError(f"--generations={_GENERATIONS.value} is invalid: it must be "
                         f">= 0.")
    if _SEED.value < 0:
        raise ValueError(f"--seed={_SEED.value} is invalid: it must be >= 0.")
    cli.quiet_library_logs()
    if "," in _DIR.value:
        print(json.dumps(_many_tasks()))
        return
    from nat_jax.nat import retarget

    summary = retarget.search_workdir(_DIR.value, _OBJECTIVES.value,
                                      _CONSTRAINTS.value, _SEED.value,
                                      _EVALUATE.value, _OUTPUT.value,
                                      _GENERATIONS.value, _LATENCY.value)
    print(json.dumps(summary))


def _many_tasks() -> dict:
    """The many-task search of --supernet_dir=A,B,... (paper Appendix F)."""
    import dataclasses
    import pathlib

    import ml_collections

    from nat_jax.nat import multitask, run_config
    from nat_jax.runtime import workdir

    specs = multitask.parse_tasks(_DIR.value)
    cfg = None
    for path, _ in specs:
        if (pathlib.Path(path) / "config.json").is_file():
            cfg = ml_collections.ConfigDict(workdir.read_config(path))
            break
    if cfg is None:
        from experiments.configs import transfer as transfer_config

        cfg = transfer_config.get_config("tiny")
    tasks = multitask.load_tasks(_DIR.value, cfg)
    for flag in (_ITERATIONS, _ARCHIVE_INIT, _POP_SIZE):
        if flag.value is not None and flag.value < 0:
            raise ValueError(f"--{flag.name}={flag.value} is invalid: it must be "
                             f">= 0.")
    s = run_config.search_config(cfg.search)
    if _POP_SIZE.value is not None:
        s = dataclasses.replace(s, pop_size=_POP_SIZE.value)
    s = dataclasses.replace(
        s, n_candidates=min(_EVALUATE.value, s.pop_size),
        generations=s.generations if _GENERATIONS.value is None
        else _GENERATIONS.value)
    config = multitask.MultiTaskConfig(
        objectives=_OBJECTIVES.value, search=s,
        iterations=(cfg.search.iterations if _ITERATIONS.value is None
                    else _ITERATIONS.value),
        archive_init=(cfg.search.archive_init if _ARCHIVE_INIT.value is None
                      else _ARCHIVE_INIT.value),
        seed=_SEED.value, constraints=_CONSTRAINTS.value,
        latency_table=_LATENCY.value or cfg.get("latency_table", ""),
        tradeoff=run_config.high_tradeoff_kwargs(cfg.final))
    out = _OUTPUT.value or "runs/multitask_" + "_".join(t.name for t in tasks)
    summary = multitask.run(tasks, config, out)
    return {"output": out, "pick": summary["pick"],
            "pick_encoding": summary["pick_encoding"],
            "outlier_test_passes": (summary["outlier_test"] or {}).get("passes"),
            "pick_top1": {r["task"]: r["pick_top1"] for r in summary["comparison"]},
            "n_front": len(summary["front"])}


if __name__ == "__main__":
    cli.run(main)
