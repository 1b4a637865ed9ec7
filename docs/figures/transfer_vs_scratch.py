"""Transfer vs from scratch on the default target, side by side, same budget.

    python -m docs.figures.transfer_vs_scratch [--workdir=runs/tvs] [--seed=0]

Runs the default `python -m experiments.transfer` twice with the same config,
seed and budget: once from the shipped pre-trained supernet (the default) and
once from a randomly initialised one (`--config.supernet=`), then prints a
Markdown table: best validation top-1, the best top-1 at three MAdds budgets,
and the hypervolume of each run's measured working-archive front under one
common reference point (error / 100, MAdds / (1.05 x the largest MAdds of both
runs)). Issue 14's "the number that shows NAT working"; reported whatever it
is. Both runs share the machine, so their wall times are not compared.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

from docs.figures.width_fronts import run_all, table


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default="runs/tvs")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    base = pathlib.Path(args.workdir)
    runs = {"pre-trained (shipped Fashion-MNIST supernet)": [],
            "random initialisation": ["--config.supernet="]}
    workdirs = run_all(base, runs, args.seed)
    text, _ = table(workdirs)
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    print(text)
    return 0

if __name__ == "__main__":
    sys.exit(main())
