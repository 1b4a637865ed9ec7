"""Progress lines with rate and ETA for long phases (absl logging).

* `Progress`: a log line per phase step with rate and ETA;
* `RunEta`: the whole run's ETA from every phase's measured rate.
"""

from __future__ import annotations

import math
import time
from typing import Callable

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
