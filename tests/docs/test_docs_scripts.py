"""The docs' comparison scripts read runs correctly (docs/figures/width_fronts.py,
also used by docs/figures/transfer_vs_scratch.py)."""

import json
import os
import pathlib
import subprocess
import sys
import time

import pytest

from docs.figures import readme_figures, width_fronts


def _write_run(path, rows, working):
    path.mkdir()
    entries = [{"top1": t, "objectives": {"madds": m}, "width": w}
               for t, m, w in rows]
    (path / "archive.json").write_text(json.dumps(
        {"entries": entries, "working": {"0": list(range(len(rows))),
                                         "1": working}}))


def test_width_table_hand_computed(tmp_path):
    # run a: A = {0, 1, 2}; entry 3 is history outside the final A
    _write_run(tmp_path / "a", [(80.0, 1.0, 1.0), (90.0, 2.0, 1.2),
                                (70.0, 1.5, 1.0), (99.0, 0.5, 1.0)], [0, 1, 2])
    _write_run(tmp_path / "b", [(85.0, 1.0, 1.0)], [0])
    text, fronts = width_fronts.table({"a": tmp_path / "a", "b": tmp_path / "b"})
    rows = text.splitlines()
    assert len(rows) == 4
    # front of a: (80 %, 1.0 M, w1.0) and (90 %, 2.0 M, w1.2); entry 2 dominated
    assert sorted(map(tuple, fronts["a"].tolist())) == [(10.0, 2.0, 1.2),
                                                         (20.0, 1.0, 1.0)]
    assert rows[2].endswith("| 1 / 1 |") and rows[3].endswith("| 1 / 0 |")
    # hypervolume, reference (1, 1), MAdds / (1.05 x 2.0): the union of the
    # boxes [0.2, 1] x [1/2.1, 1] and [0.1, 1] x [2/2.1, 1], by hand
    s = 2.1
    hv = 0.8 * (1 - 1 / s) + 0.9 * (1 - 2 / s) - 0.8 * (1 - 2 / s)
    assert float(rows[2].split("|")[-3]) == pytest.approx(hv, abs=1e-3)
    # run b alone: one box [0.15, 1] x [1/2.1, 1]
    assert float(rows[3].split("|")[-3]) == pytest.approx(0.85 * (1 - 1 / s),
                                                          abs=1e-3)
    # best top-1 per budget: budgets are quantiles of all A members' MAdds
    assert "| 90.0% |" in rows[2] and "| 85.0% |" in rows[3]


@pytest.mark.parametrize("name", ["readme_figures", "width_fronts",
                                  "transfer_vs_scratch", "make_offline_tasks"])
def test_figure_scripts_run_as_modules_from_the_root(name):
    # the way the docs run them: `python -m docs.figures.NAME`, no sys.path edits
    root = pathlib.Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-m", f"docs.figures.{name}", "--help"],
                         cwd=root, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "usage:" in out.stdout


def test_readme_block_states_date_machine_and_figures(tmp_path):
    wd = tmp_path / "run"
    _write_run(wd, [(80.0, 1.0, 1.0), (90.0, 2.0, 1.2)], [0, 1])
    arc = json.loads((wd / "archive.json").read_text())
    for i, e in enumerate(arc["entries"]):
        e.update(encoding=f"enc{i}", resolution=28)
    (wd / "archive.json").write_text(json.dumps(arc))
    (wd / "config.json").write_text(json.dumps(
        {"objectives": "top1_error,madds", "adapt": {"batch_size": 64}}))
    (wd / "result.json").write_text(json.dumps({"picks": [1, 0], "front": [0, 1]}))
    (wd / "metrics.jsonl").write_text('{"hypervolume": 0.5}\n' * 4)
    (wd / "ckpt" / "700").mkdir(parents=True)
    text = readme_figures.block(wd, 226.0, ("2.0", "1.8"))
    day = time.strftime("%Y-%m-%d", time.localtime((wd / "archive.json").stat()
                                                   .st_mtime))
    assert text.startswith("Measured by `python -m docs.figures.readme_figures` "
                           f"on {day}, ")
    assert ("**3 min 46 s** wall time (load average 2.0 before, 1.8 after); "
            "4 iterations, 700 adaptation steps of batch 64, 2 subnets measured, "
            "best validation top-1 90.0%, final hypervolume 0.5000.") in text
    assert "| 0 | 1 | `enc1` | 28 | 1.2 | 90.00 | 2.000 |" in text
    assert text.endswith("Front: 2 subnets, 1 of width 1.0 (top-1 80.0-80.0%, "
                         "madds 1.000-1.000); 1 of width 1.2 (top-1 90.0-90.0%, "
                         "madds 2.000-2.000).")
