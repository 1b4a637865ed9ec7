"""benchmarks/archive_modes.py at --tiny size: Algorithm 1's two archive modes.

Checks hold by construction of the algorithm (issue #12), not of the code:
"paper" keeps |A| = N after every update (line 11, Algorithm 4 selects N of
A ∪ P_t) and "authors" grows by K; every member of A is measured after each
update (line 5); a measured history only grows, so the hypervolume of
everything measured never drops and ends >= the initial archive's. The
hypervolumes are checked against pymoo's HV and the rank correlations
against scipy's Kendall tau-b (independent oracles).
"""

import json
import math
import os

import numpy as np
import pytest

from benchmarks import archive_modes as am

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SIZES = am.TINY
N, K = SIZES["archive_size"], SIZES["n_candidates"]


@pytest.fixture(scope="module")
def result():
    return am.benchmark(SIZES, log=lambda *_: None)


def _runs(result, mode):
    runs = [r for r in result["runs"] if r["mode"] == mode]
    assert {r["problem"] for r in runs} == set(am.PROBLEMS)
    return runs


@pytest.mark.slow
def test_paper_archive_stays_at_n_and_authors_grows_by_k(result):
    for run in _runs(result, "paper"):
        rows = run["rows"]
        assert len(rows) == SIZES["iterations"] + 1
        assert [x["archive_size"] for x in rows] == [N] * len(rows)
        for a, b in zip(rows, rows[1:]):
            # New subnets per update: at most the population, at most N.
            assert 0 <= b["true_evals"] - a["true_evals"] <= min(SIZES["pop_size"], N)
            assert b["n_new"] <= b["entered_A"] <= N
    for run in _runs(result, "authors"):
        rows = run["rows"]
        assert len(rows) == am.iterations("authors", SIZES) + 1 > SIZES["iterations"]
        sizes = [x["archive_size"] for x in rows]
        assert sizes == [N + K * t for t in range(len(rows))]
        assert all(x["history_size"] == x["archive_size"] for x in rows)  # A = history
        assert all(x["n_new"] == x["entered_A"] == K for x in rows[1:])


@pytest.mark.slow
def test_every_member_of_a_is_measured_and_counted_once(result):
    for run in result["runs"]:
        for x in run["rows"]:
            assert x["unmeasured_in_A"] == 0
            # Fixed ground truth: each subnet of the history measured exactly once.
            assert x["true_evals"] == x["history_size"]
        # A supernet run measures A_0, then re-measures A_t every round.
        run_evals = np.diff([x["run_evals"] for x in run["rows"]])
        new = np.diff([x["true_evals"] for x in run["rows"]])
        assert run["rows"][0]["run_evals"] == N and run_evals[0] == new[0]
        assert np.all(run_evals[1:] >= N + new[1:])


@pytest.mark.slow
def test_hypervolumes_are_in_unit_box_monotone_and_match_pymoo(result):
    from pymoo.indicators.hv import HV

    for run in result["runs"]:
        rows = run["rows"]
        hv_all = np.array([x["hv_all"] for x in rows])
        hv_a = np.array([x["hv_A"] for x in rows])
        assert np.all((0 <= hv_a) & (hv_a <= hv_all + 1e-12) & (hv_all <= 1))
        assert np.all(np.diff(hv_all) >= -1e-12)
        assert hv_all[-1] >= rows[0]["hv_all"] > 0
        if run["mode"] == "authors":
            np.testing.assert_allclose(hv_a, hv_all)
        front = np.asarray(run["final_front_normalised"])
        assert front.shape[1] == len(am.PROBLEMS[run["problem"]])
        oracle = HV(ref_point=np.ones(front.shape[1]))(front)
        np.testing.assert_allclose(rows[-1]["hv_A"], oracle, rtol=1e-9)


@pytest.mark.slow
def test_kendall_tau_on_new_subnets_matches_scipy(result):
    from scipy.stats import kendalltau

    checked = 0
    for run in result["runs"]:
        for x in run["rows"]:
            pairs = np.asarray(x["new_pred_true_error"])
            assert len(pairs) == x["n_new"]
            if len(pairs) < 3:
                assert math.isnan(x["kendall_tau_new"])
                continue
            want = kendalltau(pairs[:, 0], pairs[:, 1]).statistic
            np.testing.assert_allclose(x["kendall_tau_new"], want, rtol=1e-12)
            checked += 1
    assert checked > 0


@pytest.mark.slow
def test_equal_evaluation_comparison_picks_the_last_row_within_budget(result):
    assert len(result["equal_evals"]) == len(am.PROBLEMS) * SIZES["seeds"]
    for e in result["equal_evals"]:
        finals = []
        for m in am.MODES:
            run = next(r for r in result["runs"] if r["mode"] == m
                       and r["problem"] == e["problem"] and r["seed"] == e["seed"])
            rows = run["rows"]
            finals.append(rows[-1]["true_evals"])
            it = e[m]["iteration"]
            assert rows[it]["true_evals"] <= e["evals"]
            assert it == len(rows) - 1 or rows[it + 1]["true_evals"] > e["evals"]
            assert e[m]["hv_all"] == rows[it]["hv_all"]
        assert e["evals"] == min(finals)


@pytest.mark.slow
def test_report_and_json(result):
    text = am.markdown(result)
    for p in am.PROBLEMS:
        assert f"| {p} | paper |" in text and f"| {p} | authors |" in text
    back = json.loads(json.dumps(result))
    assert back["settings"]["archive_size"] == N


def test_unknown_problem_is_refused():
    with pytest.raises(SystemExit):
        am.main(["--tiny", "--problems", "4obj"])


@pytest.mark.slow
def test_predictor_bounds_flag_reaches_the_search(monkeypatch):
    """`predictor_bounds` in the sizes reaches `evolution.search`'s config in
    both modes, and the paper-mode archive still stays at N."""
    seen = []
    search = am.transfer.evolution.search

    def spy(*args, **kwargs):
        seen.append(args[-1].predictor_bounds)
        return search(*args, **kwargs)

    monkeypatch.setattr(am.transfer.evolution, "search", spy)
    sizes = dict(SIZES, predictor_bounds="space")
    fn = am.PaddedRows(am.objectives.complexity_fn(am.SPACE, ("madds",), 1000))
    box = am.hv_box(fn)
    for mode in am.MODES:
        run = am.run_mode(mode, "2obj", 0, sizes, fn, box)
        if mode == "paper":
            assert [x["archive_size"] for x in run["rows"]] == [N] * len(run["rows"])
    assert seen == ["space"] * (SIZES["iterations"] + am.iterations("authors", SIZES))


def test_unknown_predictor_bounds_are_refused():
    with pytest.raises(SystemExit):
        am.main(["--tiny", "--predictor_bounds", "archive"])
