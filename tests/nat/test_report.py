"""Reporting: TensorBoard files (read back by tensorboard), plots, report."""

import jax
import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator

from nat_jax.nat import report as report_lib
from nat_jax.runtime import progress as progress_lib
from nat_jax.runtime import tb_events
from nat_jax.search.archive import Archive
from nat_jax.space import search_space as ss


def test_scalars_are_readable_by_tensorboard(tmp_path):
    tb_events.write_scalars(tmp_path, 0, {"hypervolume": 0.5, "best_top1": 81.0,
                                          "times_s": {"adapt": 3.0}, "note": "x",
                                          "tau": float("nan")})
    tb_events.write_scalars(tmp_path, 1, {"hypervolume": 0.75})
    acc = event_accumulator.EventAccumulator(str(tmp_path))
    acc.Reload()
    assert set(acc.Tags()["scalars"]) == {"hypervolume", "best_top1", "times_s/adapt"}
    assert [(s.step, s.value) for s in acc.Scalars("hypervolume")] == [(0, 0.5),
                                                                       (1, 0.75)]


def test_masked_crc32c_known_value():
    # CRC-32C("123456789") = 0xE3069283 (the standard check value), then masked.
    crc = 0xE3069283
    masked = (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF
    assert tb_events._masked_crc(b"123456789") == masked


def _archive():
    space = ss.SearchSpace.tiny()
    arc = Archive(space)
    g = np.asarray(space.sample(jax.random.key(0), 12))
    arc.add(g, iteration=0, objectives=[{"madds": float(i)} for i in range(len(g))])
    for i in range(len(arc)):
        arc.record(i, top1=50.0 + i, top5=90.0, version=1)
    return arc


@pytest.mark.slow
def test_plot_and_report_are_written(tmp_path):
    arc = _archive()
    names = ["top1_error", "madds"]
    png = tmp_path / "plots" / "front.png"
    report_lib.plot_front(png, arc, names, front=[0, len(arc) - 1], picks=[0],
                         baselines={"MobileNetV2": [45.0, 3.0]}, title="t")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000

    class Cfg:
        dataset, variant, seed, space, width, supernet = "d", "tiny", 0, "tiny", 1.0, ""

    metrics = [{"iteration": 0, "archive_size": 12, "hypervolume": 0.4,
                "best_top1": 61.0, "kendall_tau_new": 0.5, "times_s": {"a": 2.0}}]
    report_lib.write_report(tmp_path / "report.md", Cfg, arc, names, [0, 11], [11],
                           metrics)
    text = (tmp_path / "report.md").read_text()
    assert "| 11 | 61.00 | 90.00 | 11.000 |" in text and "| 0 | 12 | 0.4000" in text
    assert "Appendix F outlier test: not applicable" in text


def test_outlier_line_states_the_appendix_f_test():
    # T = (5, 1, 2, 3): mu = 2, sigma = sqrt(2/3) over the other three.
    res = {"n": 4, "top_index": 7, "top_value": 5.0, "rest_mean": 2.0,
           "rest_std": (2 / 3) ** 0.5, "threshold": 2.0 + 3 * (2 / 3) ** 0.5,
           "n_sigma": 3.0, "z": 3.67, "passes": True}
    line = report_lib.outlier_line(res)
    assert line.startswith("Appendix F outlier test: top T = 5 (subnet #7) vs "
                           "mu + 3 sigma = 4.449 ")
    assert "over the other 3 front members: passes" in line
    assert ": fails" in report_lib.outlier_line({**res, "passes": False})


class _Clock:
    """A fake clock: each call returns the next of the given times."""

    def __init__(self, times):
        self.times = list(times)

    def __call__(self):
        return self.times.pop(0)


def _capture(monkeypatch):
    lines = []
    monkeypatch.setattr(progress_lib.logging, "info",
                        lambda fmt, *args: lines.append(fmt % args))
    return lines


def test_progress_rate_and_eta_leave_out_the_compiling_first_step(monkeypatch):
    lines = _capture(monkeypatch)
    # Start at 0; step 1 (with compilation) ends at 100 s; then 1 s per step.
    clock = _Clock([0.0, 100.0] + [100.0 + i for i in range(1, 20)])
    prog = progress_lib.Progress("adapt", 20, every_s=5.0, clock=clock)
    for done in range(1, 21):
        prog.update(done)
    assert "first step took 1m40s" in lines[0] and "ETA" not in lines[0]
    # 19 s for steps 2..20: 1 step/s; the old measure (20 steps / 119 s)
    # would say 0.17/s.
    assert prog.seconds_per_unit == 1.0
    assert "20/20 (100%) 1.00/s, ETA 0m00s" in lines[-1]
    # At step 6 (t = 105 s): 14 steps left at 1 s each.
    assert any("6/20 (30%) 1.00/s, ETA 0m14s" in line for line in lines)


def test_progress_with_one_step_has_no_rate():
    prog = progress_lib.Progress("p", 1, clock=_Clock([0.0, 3.0]))
    prog.update(1)
    assert prog.seconds_per_unit is None


def test_run_eta_adds_every_phase_and_marks_untimed_ones():
    eta = progress_lib.RunEta({"adapt": "steps", "evaluate": "subnets"})
    eta.observe("adapt", 0.5)
    eta.observe("evaluate", 2.0)
    eta.observe("search", None)          # nothing measured: stays untimed
    remaining = {"adapt": 100, "evaluate": 30, "search": 2}
    # 100 * 0.5 + 30 * 2 = 110 s known; the search is not timed yet.
    assert eta.line(remaining) == (
        "whole run: ETA >= 1m50s (adapt: 100 steps 0m50s, evaluate: 30 subnets "
        "1m00s, search: 2 not timed yet)")
    eta.observe("search", 10.0)
    assert eta.line(remaining).startswith("whole run: ETA 2m10s (")
    assert eta.line({"adapt": 0, "search": 0}) == (
        "whole run: ETA 0m00s (adapt: 0 steps done, search: 0 done)")
