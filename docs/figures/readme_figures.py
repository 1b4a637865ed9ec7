"""Regenerates the README's default-run figures from a real run.

    python -m docs.figures.readme_figures          # run the default job, then update
    python -m docs.figures.readme_figures --workdir=runs/default --no-run  # re-read

Runs `python -m experiments.transfer --workdir=WORKDIR` (the README's main job on
the embedded default), times it, and rewrites the block of README.md between
`<!-- default-run:begin -->` and `<!-- default-run:end -->` with what the run
wrote (config.json, metrics.jsonl, archive.json, result.json, the train
checkpoints), so the README's figures cannot drift from what the code does,
and copies the run's front plot to docs/img/default_front.png.
The load average before and after is part of the text: the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import re
import shutil
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
BEGIN, END = "<!-- default-run:begin -->", "<!-- default-run:end -->"


def _load() -> str:
    return "{:.1f}".format(os.getloadavg()[0])


def _fmt_s(s: float) -> str:
    return f"{int(s // 60)} min {int(round(s % 60))} s"


def _jsonl(path: pathlib.Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _steps(workdir: pathlib.Path) -> int:
    steps = [int(p.name) for p in (workdir / "ckpt").glob("*") if p.name.isdigit()]
    return max(steps, default=0)


def block(workdir: pathlib.Path, wall_s: float | None, loads: tuple[str, str]) -> str:
    cfg = json.loads((workdir / "config.json").read_text())
    arc = json.loads((workdir / "archive.json").read_text())["entries"]
    res = json.loads((workdir / "result.json").read_text())
    metrics = _jsonl(workdir / "metrics.jsonl")
    measured = [e for e in arc if e.get("top1") is not None]
    best = max(e["top1"] for e in measured)
    names = [n for n in cfg["objectives"].split(",") if n != "top1_error"]
    lines = []
    when = (f"**{_fmt_s(wall_s)}** wall time (load average {loads[0]} before, "
            f"{loads[1]} after)" if wall_s is not None else "a re-read run")
    day = time.strftime("%Y-%m-%d", time.localtime(
        (workdir / "archive.json").stat().st_mtime))
    lines.append(
        f"Measured by `python -m docs.figures.readme_figures` on {day}, "
        f"{platform.machine()} with {os.cpu_count()} cores, no GPU: {when}; "
        f"{len(metrics)} iterations, "
        f"{_steps(workdir)} adaptation steps of batch {cfg['adapt']['batch_size']}, "
        f"{len(measured)} subnets measured, best validation top-1 {best:.1f}%, "
        f"final hypervolume {metrics[-1]['hypervolume']:.4f}." if metrics else "")
    lines += ["", "| pick | archive # | encoding | resolution | width | top-1 (%) | "
              + " | ".join(names) + " |",
              "|---" * (6 + len(names)) + "|"]
    for k, i in enumerate(res["picks"]):
        e = arc[i]
        objs = " | ".join(f"{e['objectives'].get(n, float('nan')):.3f}" for n in names)
        lines.append(f"| {k} | {i} | `{e.get('encoding')}` | {e['resolution']} | "
                     f"{e['width']} | {e['top1']:.2f} | {objs} |")
    lines += ["", front_by_width(arc, res["front"], names)]
    return "\n".join(lines)


def front_by_width(arc: list[dict], front: list[int], names: list[str]) -> str:
    """One sentence: how many front members come from each width's supernet
    (the width is searched, gene 2) and the range of top-1 and of the first
    complexity objective each covers."""
    parts = []
    for w in sorted({arc[i]["width"] for i in front}):
        rows = [arc[i] for i in front if arc[i]["width"] == w]
        top1 = [e["top1"] for e in rows]
        obj = [e["objectives"].get(names[0], float("nan")) for e in rows] if names \
            else [float("nan")]
        parts.append(f"{len(rows)} of width {w} (top-1 {min(top1):.1f}-"
                     f"{max(top1):.1f}%, {names[0] if names else ''} "
                     f"{min(obj):.3f}-{max(obj):.3f})")
    return f"Front: {len(front)} subnets, " + "; ".join(parts) + "."


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default="runs/readme_default")
    p.add_argument("--no-run", action="store_true", help="only re-read WORKDIR")
    p.add_argument("--readme", default=str(ROOT / "README.md"))
    args = p.parse_args()
    workdir = pathlib.Path(args.workdir)
    wall, loads = None, (_load(), _load())
    if not args.no_run:
        if workdir.exists():
            print(f"error: {workdir} exists; give a new --workdir (a timed run must "
                  f"start fresh) or --no-run", file=sys.stderr)
            return 2
        before, t0 = _load(), time.time()
        subprocess.run([sys.executable, "-m", "experiments.transfer",
                        f"--workdir={workdir}"], check=True, cwd=ROOT)
        wall, loads = time.time() - t0, (before, _load())
    text = block(workdir, wall, loads)
    front = workdir / "plots" / "front_final.png"
    if front.exists():  # the README shows this run's front too
        shutil.copyfile(front, ROOT / "docs" / "img" / "default_front.png")
    readme = pathlib.Path(args.readme)
    s = readme.read_text()
    if BEGIN not in s or END not in s:
        print(text)
        print(f"error: {readme} has no {BEGIN} ... {END} block", file=sys.stderr)
        return 2
    s = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END),
               lambda _: f"{BEGIN}\n{text}\n{END}", s, flags=re.S)
    readme.write_text(s)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
