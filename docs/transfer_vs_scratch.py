"""Transfer vs from scratch on the default target, side by side, same budget.

    python docs/transfer_vs_scratch.py [--workdir=runs/tvs] [--seed=0]

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
import json
import os
import pathlib
import subprocess
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _front_points(workdir: pathlib.Path) -> np.ndarray:
    arc = json.loads((workdir / "archive.json").read_text())
    entries = arc["entries"]
    working = arc.get("working") or {}
    idx = (working[max(working, key=int)] if working
           else list(range(len(entries))))
    pts = [(100.0 - entries[i]["top1"], entries[i]["objectives"]["madds"])
           for i in idx if entries[i].get("top1") is not None]
    return np.asarray(pts, np.float64)


def main() -> int:
    from nat_jax import tradeoff

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default="runs/tvs")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    base = pathlib.Path(args.workdir)
    runs = {"pre-trained (shipped Fashion-MNIST supernet)": [],
            "random initialisation": ["--config.supernet="]}
    procs = {}
    base.mkdir(parents=True, exist_ok=True)
    for i, (name, extra) in enumerate(runs.items()):
        wd = base / f"run{i}"
        cmd = [sys.executable, "-m", "experiments.transfer", f"--workdir={wd}",
               f"--config.seed={args.seed}", *extra]
        log = open(base / f"run{i}.log", "w")
        procs[name] = (wd, subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=log))
    for name, (wd, proc) in procs.items():
        if proc.wait() != 0:
            print(f"error: the {name} run failed; see {wd}.log", file=sys.stderr)
            return 1
    pts = {name: _front_points(wd) for name, (wd, _) in procs.items()}
    scale = 1.05 * max(p[:, 1].max() for p in pts.values())
    budgets = np.quantile(np.concatenate([p[:, 1] for p in pts.values()]),
                          [0.25, 0.5, 1.0])
    head = ("| start | best top-1 | " + " | ".join(
        f"best top-1 at <= {b:.2f}M MAdds" for b in budgets)
        + " | hypervolume (measured front of A) |")
    lines = [head, "|---" * (3 + len(budgets)) + "|"]
    for name, p in pts.items():
        acc = 100.0 - p[:, 0]
        at = [f"{acc[p[:, 1] <= b].max():.1f}%" if (p[:, 1] <= b).any() else "-"
              for b in budgets]
        F = np.stack([p[:, 0] / 100.0, p[:, 1] / scale], 1)
        hv = tradeoff.hypervolume(F, np.ones(2))
        lines.append(f"| {name} | {acc.max():.1f}% | " + " | ".join(at)
                     + f" | {hv:.4f} |")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
