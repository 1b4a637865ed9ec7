r"""Search an adapted task supernet for new objectives or constraints.

Usage:
  python -m experiments.search --supernet_dir=runs/default \
      --objectives=top1_error,params --constraints='madds<=0.5'

SUPERNET_DIR is the --workdir of a finished experiments.transfer run. No
training happens: the run's archive refits the predictor, the search runs on
the new objectives, and the most promising subnets are measured on the
adapted supernet. Writes front.json, front.png and summary.json under
SUPERNET_DIR/search_<objectives> (or --output).
"""

from __future__ import annotations

import json

from absl import app, flags

from experiments import cli

_DIR = flags.DEFINE_string("supernet_dir", None, "Workdir of a transfer run.")
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


@cli.one_line_errors
def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not _DIR.value:
        raise ValueError("--supernet_dir is required (a transfer run's --workdir).")
    cli.quiet_library_logs()
    from nat_jax import retarget

    summary = retarget.search_workdir(_DIR.value, _OBJECTIVES.value,
                                      _CONSTRAINTS.value, _SEED.value,
                                      _EVALUATE.value, _OUTPUT.value,
                                      _GENERATIONS.value, _LATENCY.value)
    print(json.dumps(summary))


if __name__ == "__main__":
    app.run(main)
