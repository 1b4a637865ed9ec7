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
and trade-off settings come from the config.json of the first task, which
must be a transfer workdir (`multitask.search_supernets`). Writes
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
        from nat_jax.nat import multitask

        print(json.dumps(multitask.search_supernets(
            _DIR.value, _OBJECTIVES.value, _CONSTRAINTS.value, _SEED.value,
            _EVALUATE.value, _OUTPUT.value, _GENERATIONS.value, _ITERATIONS.value,
            _POP_SIZE.value, _ARCHIVE_INIT.value, _LATENCY.value)))
        return
    from nat_jax.nat import retarget

    summary = retarget.search_workdir(_DIR.value, _OBJECTIVES.value,
                                      _CONSTRAINTS.value, _SEED.value,
                                      _EVALUATE.value, _OUTPUT.value,
                                      _GENERATIONS.value, _LATENCY.value)
    print(json.dumps(summary))


if __name__ == "__main__":
    cli.run(main)
