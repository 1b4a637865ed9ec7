"""What a transfer run shows a person: progress lines, plots, report, scalars.

* `Progress`: a log line per phase step with rate and ETA (absl logging).
* `plot_front`: archive + nondominated front + picks + user baselines (PNG).
* `write_report`: `report.md` summarising the front and the selected subnets.
* `write_scalars`: TensorBoard event files written directly (the record format
  and the few protobuf fields it needs), so TensorFlow is not needed.
"""

from __future__ import annotations

import os
import pathlib
import struct
import time
from typing import Any, Sequence

import numpy as np
from absl import logging


class Progress:
    """Logs `name: i/n (pct) rate, ETA` at most every `every_s` seconds."""

    def __init__(self, name: str, total: int, every_s: float = 10.0):
        self.name, self.total, self.every_s = name, max(int(total), 1), every_s
        self.t0 = time.time()
        self.last = -1e9

    def update(self, done: int, extra: str = "") -> None:
        now = time.time()
        if now - self.last < self.every_s and done < self.total:
            return
        self.last = now
        elapsed = now - self.t0
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - done) / rate if rate > 0 else float("nan")
        logging.info("%s: %d/%d (%.0f%%) %.2f/s, ETA %s %s", self.name, done,
                     self.total, 100.0 * done / self.total, rate, _fmt_s(eta), extra)


def _fmt_s(s: float) -> str:
    if not np.isfinite(s):
        return "?"
    m, s = divmod(int(s), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


# ------------------------------------------------------------------ plots
def plot_front(path: str | os.PathLike, archive, names: Sequence[str],
               front: Sequence[int], picks: Sequence[int],
               baselines: dict[str, Sequence[float]] | None = None,
               title: str = "") -> None:
    """Scatter of top-1 error vs each other objective (one panel each)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    F = archive.objective_matrix(names)
    iters = np.array([e.iteration for e in archive.entries])
    n_panels = max(len(names) - 1, 1)
    fig, axes = plt.subplots(1, n_panels, figsize=(5.2 * n_panels, 4.2), squeeze=False)
    for j, ax in enumerate(axes[0], start=1):
        ok = np.isfinite(F[:, 0])
        sc = ax.scatter(F[ok, j], F[ok, 0], c=iters[ok], cmap="viridis", s=18,
                        alpha=0.7, label="archive (colour = iteration added)")
        if len(front):
            f = np.asarray(front)
            order = f[np.argsort(F[f, j])]
            ax.plot(F[order, j], F[order, 0], "-o", color="tab:red", ms=4,
                    label="nondominated (all objectives)")
        if len(picks):
            p = np.asarray(picks)
            ax.scatter(F[p, j], F[p, 0], marker="*", s=220, color="gold",
                       edgecolor="k", zorder=5, label="selected")
        for name, vals in (baselines or {}).items():
            if len(vals) == len(names):
                ax.scatter([vals[j]], [vals[0]], marker="s", color="k")
                ax.annotate(name, (vals[j], vals[0]), fontsize=8,
                            xytext=(4, 4), textcoords="offset points")
        ax.set_xlabel(_label(names[j]))
        ax.set_ylabel("top-1 error (%)")
        ax.grid(alpha=0.3)
        if j == 1:
            ax.legend(fontsize=7, loc="upper right")
    fig.colorbar(sc, ax=axes[0, -1], label="iteration")
    fig.suptitle(title)
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def _label(name: str) -> str:
    return {"madds": "#MAdds (M)", "params": "#params (M)",
            "latency": "latency (ms)"}.get(name, name)


# ----------------------------------------------------------------- report
def write_report(path: str | os.PathLike, config, archive, names: Sequence[str],
                 front: Sequence[int], picks: Sequence[int],
                 metrics: Sequence[dict[str, Any]]) -> None:
    """Markdown summary: run settings, per-iteration metrics, front, picks."""
    space = archive.space
    lines = [f"# NAT transfer report: {config.dataset}", "",
             f"- config variant: `{config.variant}`, seed {config.seed}, search space "
             f"`{config.space}`, width {config.width}",
             f"- supernet: `{config.supernet or 'random initialisation'}`",
             f"- objectives (minimised): {', '.join(names)}",
             f"- archive: {len(archive)} evaluated subnets; "
             f"{len(front)} nondominated", "",
             "## Iterations", "",
             "| iter | archive | hypervolume | best top-1 | Kendall tau (new) | "
             "time (s) |", "|---|---|---|---|---|---|"]
    for m in metrics:
        t = sum(m.get("times_s", {}).values())
        lines.append(f"| {m['iteration']} | {m['archive_size']} | "
                     f"{m['hypervolume']:.4f} | {m['best_top1']:.2f} | "
                     f"{m['kendall_tau_new']:.2f} | {t:.0f} |")
    header = ["#", "top-1 (%)", "top-5 (%)"] + [_label(n) for n in names[1:]] + [
        "res", "depths", "genotype"]
    lines += ["", "## Selected subnets (high trade-off + most accurate)", "",
              "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for i in picks:
        lines.append(_row(i, archive, names, space))
    lines += ["", "## Nondominated front", "", "| " + " | ".join(header) + " |",
              "|" + "---|" * len(header)]
    for i in sorted(front, key=lambda i: archive.entries[i].error):
        lines.append(_row(i, archive, names, space))
    lines += ["", "![final front](plots/front_final.png)", ""]
    pathlib.Path(path).write_text("\n".join(lines))


def _row(i: int, archive, names, space) -> str:
    e = archive.entries[i]
    arch = space.decode(e.genes)
    objs = [f"{e.objectives.get(n, float('nan')):.3f}" for n in names[1:]]
    return "| " + " | ".join([str(i), f"{e.top1:.2f}", f"{e.top5:.2f}", *objs,
                              str(arch.resolution), "".join(map(str, arch.d)),
                              "`" + "".join(map(str, e.genes[2:])) + "`"]) + " |"


# ---------------------------------------------------------- TensorBoard
def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _crc32c_table()


def _masked_crc(data: bytes) -> int:
    c = 0xFFFFFFFF
    for b in data:
        c = _CRC_TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    c ^= 0xFFFFFFFF
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field_bytes(num: int, payload: bytes) -> bytes:
    return _varint(num << 3 | 2) + _varint(len(payload)) + payload


def _event(step: int, wall: float, scalars: dict[str, float] | None = None,
           version: str | None = None) -> bytes:
    ev = b"\x09" + struct.pack("<d", wall) + b"\x10" + _varint(step)
    if version is not None:
        ev += _field_bytes(3, version.encode())
    if scalars:
        summary = b"".join(
            _field_bytes(1, _field_bytes(1, tag.encode()) + b"\x15" +
                         struct.pack("<f", float(v)))
            for tag, v in scalars.items())
        ev += _field_bytes(5, summary)
    return ev


def _record(data: bytes) -> bytes:
    n = struct.pack("<Q", len(data))
    return n + struct.pack("<I", _masked_crc(n)) + data + struct.pack(
        "<I", _masked_crc(data))


def write_scalars(logdir: str | os.PathLike, step: int, metrics: dict[str, Any]) -> None:
    """Appends numeric `metrics` (nested dicts flattened with '/') as scalars."""
    logdir = pathlib.Path(logdir)
    logdir.mkdir(parents=True, exist_ok=True)
    path = logdir / "events.out.tfevents.nat_jax"
    flat = {}
    for k, v in metrics.items():
        items = v.items() if isinstance(v, dict) else [(None, v)]
        for sub, x in items:
            if isinstance(x, (int, float)) and not isinstance(x, bool) and np.isfinite(x):
                flat[k if sub is None else f"{k}/{sub}"] = float(x)
    with open(path, "ab") as f:
        if f.tell() == 0:
            f.write(_record(_event(0, time.time(), version="brain.Event:2")))
        f.write(_record(_event(step, time.time(), flat)))
