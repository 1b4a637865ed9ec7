"""The README's comparison scripts read runs correctly (docs/width_fronts.py,
also used by docs/transfer_vs_scratch.py)."""

import json

import pytest

from docs import width_fronts


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
