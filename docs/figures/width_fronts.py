"""The default run's front with the width searched vs pinned to each width.

    python -m docs.figures.width_fronts [--workdir=runs/widths] [--seed=0]
    python -m docs.figures.width_fronts --no-run --both=runs/default \
        --w1.0=runs/pin1.0 --w1.2=runs/pin1.2   # re-read three finished runs

Runs the default `python -m experiments.transfer` three times with the same
config, seed and budget (issue 13's measurement): both widths searched (the
default), `--config.widths=1.0` and `--config.widths=1.2`. Prints a Markdown
table (best validation top-1, best top-1 at three MAdds budgets, hypervolume
of each run's measured working-archive front under one common reference:
error / 100, MAdds / (1.05 x the largest MAdds of all runs), and how many of
the front's members are of each width) and draws the three fronts, each
member marked by its width, to `docs/img/width_fronts.png` (`--plot`). The runs
share the machine, so their wall times are not compared.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]

RUNS = {"both widths searched": [], "pinned to w1.0": ["--config.widths=1.0"],
        "pinned to w1.2": ["--config.widths=1.2"]}


def working_members(workdir: pathlib.Path) -> np.ndarray:
    """float64[n, 3]: (top-1 error %, MAdds M, width) of the final working
    archive A's measured members (all entries for a run without `working`)."""
    arc = json.loads((pathlib.Path(workdir) / "archive.json").read_text())
    entries = arc["entries"]
    working = arc.get("working") or {}
    idx = (working[max(working, key=int)] if working
           else list(range(len(entries))))
    pts = [(100.0 - entries[i]["top1"], entries[i]["objectives"]["madds"],
            entries[i]["width"]) for i in idx if entries[i].get("top1") is not None]
    return np.asarray(pts, np.float64).reshape(-1, 3)


def run_all(base: pathlib.Path, runs: dict[str, list[str]], seed: int
            ) -> dict[str, pathlib.Path]:
    """Starts `python -m experiments.transfer` once per {name: extra flags}
    side by side (workdirs base/run0, run1, ...), waits; {name: workdir}."""
    base.mkdir(parents=True, exist_ok=True)
    procs = {}
    for i, (name, extra) in enumerate(runs.items()):
        wd = base / f"run{i}"
        cmd = [sys.executable, "-m", "experiments.transfer", f"--workdir={wd}",
               f"--config.seed={seed}", *extra]
        log = open(base / f"run{i}.log", "w")
        procs[name] = (wd, subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=log))
    for name, (wd, proc) in procs.items():
        if proc.wait() != 0:
            raise SystemExit(f"error: the {name} run failed; see {wd}.log")
    return {name: wd for name, (wd, _) in procs.items()}


def table(workdirs: dict[str, pathlib.Path]) -> tuple[str, dict]:
    """The Markdown comparison and {run: front members float64[k, 3]}."""
    from nat_jax.search import tradeoff

    pts = {name: working_members(wd) for name, wd in workdirs.items()}
    scale = 1.05 * max(p[:, 1].max() for p in pts.values())
    budgets = np.quantile(np.concatenate([p[:, 1] for p in pts.values()]),
                          [0.25, 0.5, 1.0])
    lines = ["| run | best top-1 | " + " | ".join(
        f"best top-1 at <= {b:.2f}M MAdds" for b in budgets)
        + " | hypervolume (measured front of A) | front members (w1.0 / w1.2) |",
        "|---" * (5 + len(budgets)) + "|"]
    fronts = {}
    for name, p in pts.items():
        acc = 100.0 - p[:, 0]
        at = [f"{acc[p[:, 1] <= b].max():.1f}%" if (p[:, 1] <= b).any() else "-"
              for b in budgets]
        F = np.stack([p[:, 0] / 100.0, p[:, 1] / scale], 1)
        hv = tradeoff.hypervolume(F, np.ones(2))
        front = p[np.asarray(tradeoff.nondominated(p[:, :2]))]
        fronts[name] = front
        n10 = int(np.sum(np.isclose(front[:, 2], 1.0)))
        lines.append(f"| {name} | {acc.max():.1f}% | " + " | ".join(at)
                     + f" | {hv:.4f} | {n10} / {len(front) - n10} |")
    return "\n".join(lines), fronts


def plot(fronts: dict, pts: dict, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    colours = dict(zip(fronts, ("C0", "C1", "C2")))
    for name, front in fronts.items():
        p = pts[name]
        ax.scatter(p[:, 1], 100 - p[:, 0], s=8, alpha=0.25, color=colours[name])
        order = np.argsort(front[:, 1])
        ax.step(front[order, 1], 100 - front[order, 0], where="post",
                color=colours[name], label=name)
        for marker, w in (("o", 1.0), ("^", 1.2)):
            m = np.isclose(front[:, 2], w)
            ax.scatter(front[m, 1], 100 - front[m, 0], marker=marker, s=40,
                       color=colours[name], edgecolor="k")
    ax.scatter([], [], marker="o", color="w", edgecolor="k", label="w1.0 member")
    ax.scatter([], [], marker="^", color="w", edgecolor="k", label="w1.2 member")
    ax.set_xlabel("MAdds (M)")
    ax.set_ylabel("validation top-1 (%)")
    ax.set_title("Working archive A (dots) and its front, by width")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default="runs/widths")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-run", action="store_true",
                   help="read finished runs given by --both/--w1.0/--w1.2")
    p.add_argument("--both")
    p.add_argument("--w1.0", dest="w10")
    p.add_argument("--w1.2", dest="w12")
    p.add_argument("--plot", default=str(ROOT / "docs" / "img" / "width_fronts.png"))
    args = p.parse_args()
    if args.no_run:
        if not (args.both and args.w10 and args.w12):
            p.error("--no-run needs --both, --w1.0 and --w1.2 (three workdirs)")
        workdirs = dict(zip(RUNS, map(pathlib.Path, (args.both, args.w10, args.w12))))
    else:
        workdirs = run_all(pathlib.Path(args.workdir), RUNS, args.seed)
    text, fronts = table(workdirs)
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    print(text)
    if args.plot:
        plot(fronts, {n: working_members(wd) for n, wd in workdirs.items()},
             pathlib.Path(args.plot))
        print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
