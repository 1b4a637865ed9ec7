"""What a transfer run shows a person: progress lines, plots, report, scalars.

* `Progress`: a log line per phase step with rate and ETA (absl logging);
  `RunEta`: the whole run's ETA from every phase's measured rate.
* `plot_front`: archive + nondominated front + picks + user baselines (PNG).
* `write_report`: `report.md` summarising the front and the selected subnets.
* `write_scalars`: TensorBoard event files written directly (the record format
  and the few protobuf fields it needs), so TensorFlow is not needed.
"""

from __future__ import annotations

import math
import os
import pathlib
import struct
import time
from typing import Any, Callable, Sequence

import numpy as np
from absl import logging


class Progress:
    """Logs `name: i/n (pct) rate, ETA` at most every `every_s` seconds.

    The first unit of a phase includes compiling (seconds to minutes), so it
    is reported on its own ("first step took 0m41s (with compilation)") and
    the rate and ETA are measured from the end of the first unit on.

    Args:
      name: the phase, e.g. "adapt round 2".
      total: units in the phase.
      every_s: minimum seconds between lines (the last unit always logs).
      unit: what is counted ("step", "subnet").
      clock: seconds as a float (tests pass a fake one).
    """

    def __init__(self, name: str, total: int, every_s: float = 10.0,
                 unit: str = "step", clock: Callable[[], float] = time.perf_counter):
        self.name, self.total, self.every_s = name, max(int(total), 1), every_s
        self.unit, self.clock = unit, clock
        self.t0 = clock()
        self.first: tuple[int, float] | None = None   # (done, time) after unit 1
        self.latest: tuple[int, float] | None = None
        self.last = -math.inf

    @property
    def seconds_per_unit(self) -> float | None:
        """Seconds per unit after the first (None until two updates)."""
        if self.first is None or self.latest is None:
            return None
        units = self.latest[0] - self.first[0]
        return (self.latest[1] - self.first[1]) / units if units > 0 else None

    def update(self, done: int, extra: str = "") -> None:
        now = self.clock()
        if self.first is None:
            self.first = self.latest = (done, now)
            self.last = now
            what = self.unit if done == 1 else f"{done} {self.unit}s"
            logging.info("%s: %d/%d, first %s took %s (with compilation, if any; "
                         "rates start after it) %s", self.name, done, self.total,
                         what, _fmt_s(now - self.t0), extra)
            return
        self.latest = (done, now)
        if now - self.last < self.every_s and done < self.total:
            return
        self.last = now
        per = self.seconds_per_unit
        rate = 1.0 / per if per else float("nan")
        eta = (self.total - done) * per if per else float("nan")
        logging.info("%s: %d/%d (%.0f%%) %.2f/s, ETA %s %s", self.name, done,
                     self.total, 100.0 * done / self.total, rate, _fmt_s(eta), extra)


class RunEta:
    """Whole-run ETA: remaining units of each phase times its seconds per unit.

    Phases report their measured seconds per unit with `observe` (a phase's
    `Progress.seconds_per_unit`, which leaves out compilation, or the time
    of one search); `line(remaining)` turns the remaining units of every
    phase into one log line, marking phases not timed yet.

    Args:
      units: phase -> what its units are, e.g. {"adapt": "steps"}.
    """

    def __init__(self, units: dict[str, str] | None = None):
        self.units = dict(units or {})
        self.per_unit: dict[str, float] = {}

    def observe(self, phase: str, seconds_per_unit: float | None) -> None:
        if seconds_per_unit is not None and math.isfinite(seconds_per_unit):
            self.per_unit[phase] = max(float(seconds_per_unit), 0.0)

    def seconds(self, remaining: dict[str, int]) -> float:
        """Estimated seconds left (NaN while a phase with work is untimed)."""
        total = 0.0
        for phase, units in remaining.items():
            if units > 0:
                total += units * self.per_unit.get(phase, math.nan)
        return total

    def line(self, remaining: dict[str, int]) -> str:
        """E.g. "whole run: ETA 12m30s (adapt: 600 steps 8m00s, ...)"."""
        parts = []
        for phase, units in remaining.items():
            per = self.per_unit.get(phase)
            if not units:
                t = "done"
            else:
                t = _fmt_s(units * per) if per is not None else "not timed yet"
            what = f" {self.units[phase]}" if phase in self.units else ""
            parts.append(f"{phase}: {units}{what} {t}")
        known = {p: u for p, u in remaining.items() if p in self.per_unit}
        lower = ">= " if any(u > 0 and p not in known
                             for p, u in remaining.items()) else ""
        return (f"whole run: ETA {lower}{_fmt_s(self.seconds(known))} "
                f"({', '.join(parts)})")


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
                 metrics: Sequence[dict[str, Any]],
                 outlier: dict[str, Any] | None = None,
                 working: Sequence[int] | None = None) -> None:
    """Markdown summary: run settings, per-iteration metrics, front, picks.

    Args:
      outlier: `tradeoff.outlier_test` of the front's trade-off values with
        `top_index` an archive index (Appendix F), or None (front < 2).
      working: the final working archive A (default: every entry).
    """
    space = archive.space
    n_work = len(archive) if working is None else len(working)
    lines = [f"# NAT transfer report: {config.dataset}", "",
             f"- config variant: `{config.variant}`, seed {config.seed}, search space "
             f"`{config.space}`, widths searched {list(space.widths)} (one "
             f"supernet each)",
             f"- supernet: `{config.supernet or 'random initialisation'}`",
             f"- objectives (minimised): {', '.join(names)}",
             f"- archive: {n_work} subnets in the working archive A "
             f"({len(archive)} ever measured, in archive.json); {len(front)} "
             f"nondominated in A", "",
             "## Iterations", "",
             "| iter | archive | hypervolume | best top-1 | Kendall tau (new) | "
             "time (s) | of it compiling (s) |", "|---|---|---|---|---|---|---|"]
    for m in metrics:
        times = m.get("times_s", {})
        t = sum(v for k, v in times.items() if not k.endswith("_compile"))
        c = sum(v for k, v in times.items() if k.endswith("_compile"))
        lines.append(f"| {m['iteration']} | {m['archive_size']} | "
                     f"{m['hypervolume']:.4f} | {m['best_top1']:.2f} | "
                     f"{m['kendall_tau_new']:.2f} | {t:.0f} | {c:.0f} |")
    header = ["#", "top-1 (%)", "top-5 (%)"] + [_label(n) for n in names[1:]] + [
        "res", "width", "depths", "encoding"]
    lines += ["", "## Selected subnets (high trade-off + most accurate)", "",
              outlier_line(outlier), "",
              "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for i in picks:
        lines.append(_row(i, archive, names, space))
    lines += ["", "## Nondominated front", "", "| " + " | ".join(header) + " |",
              "|" + "---|" * len(header)]
    for i in sorted(front, key=lambda i: archive.entries[i].error):
        lines.append(_row(i, archive, names, space))
    lines += ["", "![final front](plots/front_final.png)", ""]
    pathlib.Path(path).write_text("\n".join(lines))


def outlier_line(res: dict[str, Any] | None) -> str:
    """Appendix F's test of the top trade-off subnet as one sentence."""
    if res is None:
        return ("Appendix F outlier test: not applicable (fewer than two "
                "nondominated subnets).")
    verdict = "passes" if res["passes"] else "fails"
    return (f"Appendix F outlier test: top T = {res['top_value']:.4g} (subnet "
            f"#{res['top_index']}) vs mu + {res['n_sigma']:g} sigma = "
            f"{res['threshold']:.4g} (mu = {res['rest_mean']:.4g}, sigma = "
            f"{res['rest_std']:.4g}) over the other {res['n'] - 1} front members: "
            f"{verdict}" + (" (the top pick stands out statistically)." if
                            res["passes"] else " (no single subnet stands out; "
                            "consider every pick)."))


def _row(i: int, archive, names, space) -> str:
    e = archive.entries[i]
    arch = space.decode(e.genes)
    objs = [f"{e.objectives.get(n, float('nan')):.3f}" for n in names[1:]]
    return "| " + " | ".join([str(i), f"{e.top1:.2f}", f"{e.top5:.2f}", *objs,
                              str(arch.resolution), str(arch.width),
                              "".join(map(str, arch.d)),
                              "`" + arch.to_encoding(space) + "`"]) + " |"


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


def write_scalars(logdir: str | os.PathLike, step: int,
                  metrics: dict[str, Any]) -> None:
    """Appends numeric `metrics` (nested dicts flattened with '/') as scalars."""
    logdir = pathlib.Path(logdir)
    logdir.mkdir(parents=True, exist_ok=True)
    path = logdir / "events.out.tfevents.nat_jax"
    flat = {}
    for k, v in metrics.items():
        items = v.items() if isinstance(v, dict) else [(None, v)]
        for sub, x in items:
            number = isinstance(x, (int, float)) and not isinstance(x, bool)
            if number and np.isfinite(x):
                flat[k if sub is None else f"{k}/{sub}"] = float(x)
    with open(path, "ab") as f:
        if f.tell() == 0:
            f.write(_record(_event(0, time.time(), version="brain.Event:2")))
        f.write(_record(_event(step, time.time(), flat)))
