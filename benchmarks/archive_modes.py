"""Algorithm 1's archive update, `paper` vs `authors`, on synthetic problems.

Issue #12's comparison on a fixed ground truth: the outer loop of Algorithm 1
(initial archive, predictor fit, surrogate search, archive update) in both
`search.archive_update` modes, where "measuring" a subnet is a call to the
synthetic top-1 error of `benchmarks.search_iteration.synthetic_error` (a
power law in MAdds plus per-gene effects over the OFA MobileNetV3 space)
instead of evaluating a supernet. Problems:

* `2obj`: (synthetic top-1 error, MAdds);
* `3obj`: (synthetic top-1 error, MAdds, #params);

MAdds and #params are exact (`objectives.complexity_fn`, the function the
transfer loop gets in its plan's `TransferTask`; wrapped in `PaddedRows` so
that host-side calls compile once per 64 rows, values unchanged).

The mode logic is the transfer loop's own code: `transfer.initial_archive`
(line 2) and `transfer.search_step` (lines 6-11: `predictor_train_set`, i.e.
Algorithm 4 on A's measured objectives in "paper" mode and the whole history
in "authors" mode, `evolution.search`, then `Selection(A ∪ P_t, N)` or the
K-candidate growth), called with a host-side stand-in of the loop's `_Run`
that holds what those functions read (the run's `run_config.TransferPlan`
with this benchmark's task space/names/complexity, PRNG key, a scratch
workdir, an ETA sink). The mode settings
come from `experiments/configs/transfer.py:paper`, with `archive_update`,
`predictor_train_size` (0 in "authors" mode, as the README's authors recipe)
and the sizes below overridden. Both modes start from archives of the same
size (paper: N - 1 samples + the smallest subnet; authors: N - 2 samples +
the smallest + the largest) and the same seed.

Measurement: after every update the unmeasured members of A are measured
(Algorithm 1 line 5; new survivors "right away"). The ground truth does not
change between iterations, so a subnet is measured once; `true evals` counts
distinct subnets measured. A supernet run also re-measures all of A after
every adaptation round (line 5): `run evals` adds that cost (sum over
iterations of |A_t| + the new ones). Budgets differ by design: "paper"
measures the unmeasured NSGA-III survivors (up to min(pop, N) per
iteration), "authors" exactly K. Fronts are therefore also compared at equal
true evaluations: "authors" runs until its count reaches what "paper" spends
in its first iteration (N + min(pop, N), at least `--iterations`); E* = the
smaller of the two final counts (per seed), and each mode's front of
everything measured at its last iteration with at most E* evaluations.

Metrics per iteration: hypervolume of A's measured front (what the loop
returns) and of everything measured so far, both on objectives min-max
normalised by a fixed box (a uniform sample of 2,000 subnets, key 123, the
same for every seed and mode; lower corner extended by 25% of the sample's
range, values clipped at 0) with the reference point (1, ..., 1), so every
HV lies in [0, 1]; Kendall tau (`rank_stats.kendall`) between the predicted
and the true error of the subnets new to the archive in that iteration, and
their mean predicted - true error (the predictor's bias, which tau cannot
see); |A|, members new to A, history size and evaluation counts. Printed as
Markdown (means over seeds); `--out` writes everything as JSON.

Predictor input scaling (`evolution.SearchConfig.predictor_bounds`, both
modes): `--predictor_bounds=data` (default: min-max of the rows it is fitted
on) or `space` (the space's gene bounds).

Usage: python -m benchmarks.archive_modes [--seeds=3] [--iterations=6]
  [--members=200] [--problems=2obj,3obj] [--predictor_bounds=data|space]
  [--out=archive_modes.json] [--tiny]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import pathlib
import tempfile
import time
import types

import jax
import numpy as np

from benchmarks.search_iteration import SPACE, synthetic_error
from experiments.configs import transfer as transfer_configs
from nat_jax.nat import run_config, transfer
from nat_jax.runtime import progress as progress_lib
from nat_jax.search import evolution, rank_stats, tradeoff
from nat_jax.space import objectives

PROBLEMS = {"2obj": ("top1_error", "madds"),
            "3obj": ("top1_error", "madds", "params")}
MODES = ("paper", "authors")
MARGIN = 0.25  # lower corner of the HV box: sample min - MARGIN x range


# Default sizes: Table 2's search (population 100, 100 generations, K = 8)
# with 200 RBFs (Table 2: 500, `--members=500`) and the archive scaled down
# from N = 300 / top-100 to N = 100 / top-50, so that both modes, both
# problems and 3 seeds fit a short run (each run's seconds are printed).
# "authors" runs `authors_iterations` (0 = enough to measure as many subnets
# as "paper" measures in its first iteration, at most min(pop, N) + N) so that
# the fronts also meet at an equal number of true evaluations.
DEFAULT = dict(iterations=6, authors_iterations=0, archive_size=100,
               train_size=50, n_candidates=8, pop_size=100, generations=100,
               n_members=200, pad_multiple=256, seeds=3, predictor_bounds="data")
TINY = dict(iterations=2, authors_iterations=0, archive_size=12, train_size=8,
            n_candidates=2, pop_size=8, generations=3, n_members=10,
            pad_multiple=64, seeds=1, predictor_bounds="data")


def iterations(mode: str, sizes: dict) -> int:
    """Iterations of `mode`: "authors" defaults to enough for its true
    evaluations to reach N + min(pop, N), and at least `iterations`."""
    if mode == "paper" or sizes["authors_iterations"] > 0:
        return sizes["iterations"] if mode == "paper" else sizes["authors_iterations"]
    need = min(sizes["pop_size"], sizes["archive_size"])
    return max(sizes["iterations"], -(-need // sizes["n_candidates"]))


def mode_config(mode: str, sizes: dict):
    """The `paper` transfer config with `search.archive_update = mode`.

    Both modes start from archives of `archive_size` subnets; "authors" fits
    the predictor on the whole history (`predictor_train_size = 0`).
    """
    if mode not in MODES:
        raise ValueError(f"Unknown mode {mode!r}; use one of {MODES}.")
    c = transfer_configs.get_config("paper")
    c.search.update(
        archive_update=mode, iterations=iterations(mode, sizes),
        archive_size=sizes["archive_size"], archive_init=sizes["archive_size"] - 2,
        predictor_train_size=sizes["train_size"] if mode == "paper" else 0,
        n_candidates=sizes["n_candidates"], pop_size=sizes["pop_size"],
        generations=sizes["generations"], n_members=sizes["n_members"],
        pad_multiple=sizes["pad_multiple"])
    return c


class PaddedRows:
    """A complexity function that pads host-side inputs to a multiple of
    `multiple` rows (repeating the last row) so that its jitted body compiles
    once per padded size, not once per archive update; traced inputs (inside
    `evolution.search`) pass straight through. Row-wise, so values are
    unchanged: float[n, m] for genes int[n, num_genes]."""

    def __init__(self, fn, multiple: int = 64):
        self.fn, self.multiple = fn, multiple

    def __call__(self, genes):
        if isinstance(genes, jax.core.Tracer) or len(genes) == 0:
            return self.fn(genes)
        g = np.asarray(genes)
        pad = np.repeat(g[-1:], (-len(g)) % self.multiple, axis=0)
        return np.asarray(self.fn(np.concatenate([g, pad])))[: len(g)]


def stand_in_run(config, workdir: str, names, complexity, seed: int,
                 predictor_bounds: str = "data"):
    """What `transfer.initial_archive` / `transfer.search_step` read of a
    `_Run`: the plan of `config` (validated: the ranges a real run would
    accept) with this benchmark's space, objectives and complexity, and the
    search config's `predictor_bounds` set to `predictor_bounds`."""
    plan = run_config.plan(config)
    task = run_config.TransferTask(SPACE, plan.task.dataset, tuple(names),
                                   complexity)
    plan = dataclasses.replace(plan, task=task, search=dataclasses.replace(
        plan.search, predictor_bounds=predictor_bounds))
    return types.SimpleNamespace(
        plan=plan, workdir=pathlib.Path(workdir), key=jax.random.key(seed),
        eta=progress_lib.RunEta())


def measure(archive, among) -> int:
    """Records the synthetic top-1 of every unmeasured member of `among`;
    returns how many were measured (the true evaluations spent)."""
    todo = [int(i) for i in among if archive.entries[int(i)].top1 is None]
    if todo:
        err = synthetic_error(archive.genes()[todo])
        for i, e in zip(todo, err):
            archive.record(i, 100.0 - e, 100.0 - e, version=1)
    return len(todo)


def hv_box(complexity) -> tuple[np.ndarray, np.ndarray]:
    """Fixed normalisation box: lower corner float[m], upper corner float[m]
    (= the reference point after normalisation) from 2,000 uniform subnets."""
    genes = np.asarray(SPACE.sample(jax.random.key(123), 2000))
    F = np.concatenate([synthetic_error(genes)[:, None],
                        np.asarray(complexity(genes), np.float64)], 1)
    lo, hi = F.min(0), F.max(0)
    return lo - MARGIN * (hi - lo), hi


def normalise(F, box) -> np.ndarray:
    """float[n, m] objectives -> the HV box's units, clipped at 0."""
    lo, hi = box
    return np.clip((np.asarray(F, np.float64) - lo) / (hi - lo), 0.0, None)


def hv(F, box) -> float:
    """Hypervolume in [0, 1] of F[n, m] (finite rows) w.r.t. (1, ..., 1)."""
    F = np.asarray(F, np.float64)
    F = F[np.isfinite(F).all(-1)]
    if not len(F):
        return 0.0
    return float(tradeoff.hypervolume(normalise(F, box), np.ones(F.shape[1])))


def snapshot(archive, names, box, it: int) -> dict:
    """One row: sizes, HVs and the predictor's tau on the subnets new at `it`."""
    F = archive.objective_matrix(names)
    A = np.asarray(archive.working_at(it), np.int64)
    measured = np.isfinite(F[:, 0])
    new = [e for e in archive.entries if e.iteration == it and it > 0
           and e.predicted_top1 is not None and e.top1 is not None]
    pairs = [[100.0 - e.predicted_top1, e.error] for e in new]
    tau = bias = math.nan
    if len(pairs) >= 3:
        tau = float(rank_stats.kendall(*np.asarray(pairs).T))
    if pairs:
        bias = float(np.mean([p - t for p, t in pairs]))
    entered = set(A.tolist()) - set(archive.working_at(it - 1)) if it else set()
    return {"iteration": it, "archive_size": int(len(A)),
            "history_size": len(archive), "true_evals": int(measured.sum()),
            "unmeasured_in_A": int((~measured[A]).sum()),
            "entered_A": len(entered),
            "hv_A": hv(F[A], box), "hv_all": hv(F[measured], box),
            "kendall_tau_new": tau, "bias_new": bias, "n_new": len(pairs),
            "new_pred_true_error": pairs}


def run_mode(mode: str, problem: str, seed: int, sizes: dict, complexity,
             box) -> dict:
    """Algorithm 1's outer loop with the synthetic measurement; one record."""
    names = PROBLEMS[problem]
    config = mode_config(mode, sizes)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        r = stand_in_run(config, tmp, names, complexity, seed,
                         sizes["predictor_bounds"])
        archive = transfer.initial_archive(r)                  # line 2
        measure(archive, archive.working_at(0))                # line 5, round 0
        run_evals = len(archive.working_at(0))
        rows = [dict(snapshot(archive, names, box, 0), run_evals=run_evals)]
        for it in range(iterations(mode, sizes)):
            if it:                      # a supernet run re-measures A (line 5)
                run_evals += len(archive.working_at(it))
            transfer.search_step(r, archive, it)               # lines 6-11
            run_evals += measure(archive, archive.working_at(it + 1))
            rows.append(dict(snapshot(archive, names, box, it + 1),
                             run_evals=run_evals))
    F = archive.objective_matrix(names)
    A = np.asarray(archive.working_at(iterations(mode, sizes)), np.int64)
    FA = F[A][np.isfinite(F[A]).all(-1)]
    front = normalise(FA[np.asarray(tradeoff.nondominated(FA))], box)
    return {"problem": problem, "mode": mode, "seed": seed, "rows": rows,
            "final_front_normalised": front.tolist(),
            "wall_s": time.perf_counter() - t0}


def equal_evals(runs: list[dict]) -> list[dict]:
    """Per (problem, seed): E* = the smaller final evaluation count of the two
    modes and each mode's HV of everything measured at its last iteration
    with at most E* evaluations."""
    out = []
    by = {(r["problem"], r["seed"], r["mode"]): r for r in runs}
    for problem, seed, mode in by:
        if mode != MODES[0] or (problem, seed, MODES[1]) not in by:
            continue
        pair = {m: by[(problem, seed, m)]["rows"] for m in MODES}
        e_star = min(rows[-1]["true_evals"] for rows in pair.values())
        row = {"problem": problem, "seed": seed, "evals": e_star}
        for m, rows in pair.items():
            last = [x for x in rows if x["true_evals"] <= e_star][-1]
            row[m] = {"iteration": last["iteration"], "hv_all": last["hv_all"],
                      "true_evals": last["true_evals"]}
        out.append(row)
    return out


def benchmark(sizes: dict, problems=tuple(PROBLEMS), seeds: int | None = None,
              log=print) -> dict:
    """Every (problem, mode, seed) run plus the equal-evaluation comparison."""
    seeds = sizes["seeds"] if seeds is None else seeds
    runs, boxes = [], {}
    for problem in problems:
        # One complexity function per problem: the search compiles once for it.
        fn = PaddedRows(objectives.complexity_fn(SPACE, PROBLEMS[problem][1:],
                                                 1000))
        box = hv_box(fn)
        boxes[problem] = {"lower": box[0].tolist(), "upper": box[1].tolist()}
        for seed in range(seeds):
            for mode in MODES:
                run = run_mode(mode, problem, seed, sizes, fn, box)
                log(f"{problem} {mode:7s} seed {seed}: {run['wall_s']:.1f} s, "
                    f"{run['rows'][-1]['true_evals']} evals, HV(A) "
                    f"{run['rows'][0]['hv_A']:.3f} -> {run['rows'][-1]['hv_A']:.3f}")
                runs.append(run)
    return {"settings": dict(sizes, seeds=seeds), "problems": {
                p: list(PROBLEMS[p]) for p in problems},
            "space": "ofa_mbv3", "hv_box": boxes, "hv_margin": MARGIN,
            "reference_point": "(1, ..., 1) in the box's units",
            "runs": runs, "equal_evals": equal_evals(runs)}


# -------------------------------------------------------------- printing
def _ms(values, fmt="{:.3f}") -> str:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], float)
    if not len(v):
        return "n/a"
    s = fmt.format(v.mean())
    return s + (" ± " + fmt.format(v.std()) if len(v) > 1 else "")


def _tau_mean(rows) -> float:
    t = [x["kendall_tau_new"] for x in rows if np.isfinite(x["kendall_tau_new"])]
    return float(np.mean(t)) if t else math.nan


_BOUNDS_TEXT = {"data": "training rows' min-max (predictor_bounds=data)",
                "space": "space's gene bounds (predictor_bounds=space)"}


def markdown(result: dict) -> str:
    """Equal-iteration and equal-evaluation tables (mean ± std over seeds),
    then one per-iteration table per problem."""
    s = result["settings"]
    T = s["iterations"]
    lines = [
        f"Algorithm 1, `paper` vs `authors`, synthetic ground truth over ofa_mbv3; "
        f"{s['seeds']} seed(s); N = {s['archive_size']} (both modes start from N "
        f"subnets), paper predictor on the top {s['train_size']} of A, authors on "
        f"the whole history, K = {s['n_candidates']}; search: population "
        f"{s['pop_size']}, {s['generations']} generations, {s['n_members']} RBFs; "
        f"predictor inputs scaled by the "
        f"{_BOUNDS_TEXT[s.get('predictor_bounds', 'data')]}.",
        "HV: objectives normalised by a fixed box from 2,000 uniform subnets "
        f"(lower corner extended by {result['hv_margin']:.0%} of the range, "
        "clipped at 0), reference point (1, ..., 1).", ""]
    for p, b in result["hv_box"].items():
        lines.append(f"- {p} box: lower {np.round(b['lower'], 3).tolist()}, upper "
                     f"(reference) {np.round(b['upper'], 3).tolist()}")
    lines += ["", f"After {T} iterations (equal iterations):", "",
              "| problem | mode | true evals | run evals | \\|A\\| / history | "
              "entered A per iteration | HV(A) initial | HV(A) | HV(all measured) | "
              "tau new (mean over iterations) | predicted - true error on new |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in result["problems"]:
        for m in MODES:
            runs = [r for r in result["runs"] if r["problem"] == p and r["mode"] == m]
            if not runs:
                continue
            at = [r["rows"][T] for r in runs]
            body = [r["rows"][1:T + 1] for r in runs]
            bias = [np.nanmean([x["bias_new"] for x in b]) for b in body]
            entered = [np.mean([x["entered_A"] for x in b]) for b in body]
            lines.append(
                f"| {p} | {m} | {_ms([x['true_evals'] for x in at], '{:.0f}')} | "
                f"{_ms([x['run_evals'] for x in at], '{:.0f}')} | "
                f"{_ms([x['archive_size'] for x in at], '{:.0f}')} / "
                f"{_ms([x['history_size'] for x in at], '{:.0f}')} | "
                f"{_ms(entered, '{:.1f}')} | "
                f"{_ms([r['rows'][0]['hv_A'] for r in runs])} | "
                f"{_ms([x['hv_A'] for x in at])} | {_ms([x['hv_all'] for x in at])} | "
                f"{_ms([_tau_mean(b) for b in body], '{:.2f}')} | "
                f"{_ms(bias, '{:.2f}')} |")
    lines += ["", "At equal true evaluations E* (per seed the smaller final count "
              "of the two modes; each mode's front of everything measured at its "
              "last iteration with at most E* evaluations):", "",
              "| problem | E* | " + " | ".join(
                  f"{m} HV(all) | {m} evals (iteration)" for m in MODES) + " |",
              "|---|---|" + "---|---|" * len(MODES)]
    for p in result["problems"]:
        e = [x for x in result["equal_evals"] if x["problem"] == p]
        if not e:
            continue
        cells = [p, _ms([x["evals"] for x in e], "{:.0f}")]
        for m in MODES:
            cells += [_ms([x[m]["hv_all"] for x in e]),
                      f"{_ms([x[m]['true_evals'] for x in e], '{:.0f}')} "
                      f"({_ms([x[m]['iteration'] for x in e], '{:.1f}')})"]
        lines.append("| " + " | ".join(cells) + " |")
    for p in result["problems"]:
        per = {m: [r["rows"] for r in result["runs"]
                   if r["problem"] == p and r["mode"] == m] for m in MODES}
        n_rows = max(len(rows) for v in per.values() for rows in v)
        lines += ["", f"Per iteration, {p} (means over seeds; evals = true "
                  "evaluations so far, entered = members of A new to A):", "",
                  "| iteration | " + " | ".join(
                      f"{m} evals | {m} entered | {m} HV(A) | {m} HV(all) | "
                      f"{m} tau new" for m in MODES) + " |",
                  "|---" * (1 + 5 * len(MODES)) + "|"]
        for it in range(n_rows):
            cells = [str(it)]
            for m in MODES:
                rows = [x[it] for x in per[m] if it < len(x)]
                if not rows:
                    cells += [""] * 5
                    continue
                cells += [_ms([x["true_evals"] for x in rows], "{:.0f}"),
                          _ms([x["entered_A"] for x in rows], "{:.0f}"),
                          _ms([x["hv_A"] for x in rows]),
                          _ms([x["hv_all"] for x in rows]),
                          _ms([x["kendall_tau_new"] for x in rows], "{:.2f}")]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true",
                        help="test size (seconds): N = 12, 2 iterations, 1 seed")
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--iterations", type=int, default=None,
                        help="paper-mode iterations (default 6)")
    parser.add_argument("--members", type=int, default=None,
                        help="RBF ensemble size (default 200; Table 2: 500)")
    parser.add_argument("--problems", default=",".join(PROBLEMS))
    parser.add_argument("--predictor_bounds", default=None,
                        choices=evolution.PREDICTOR_BOUNDS,
                        help="predictor input scaling: the fitted rows' min-max "
                             "(data, default) or the space's gene bounds (space)")
    parser.add_argument("--out", default="", help="write the results as JSON")
    args = parser.parse_args(argv)
    sizes = dict(TINY if args.tiny else DEFAULT)
    if args.iterations is not None:
        sizes["iterations"] = args.iterations
    if args.members is not None:
        sizes["n_members"] = args.members
    if args.predictor_bounds is not None:
        sizes["predictor_bounds"] = args.predictor_bounds
    problems = tuple(p.strip() for p in args.problems.split(",") if p.strip())
    bad = [p for p in problems if p not in PROBLEMS]
    if bad:
        parser.error(f"unknown problem(s) {bad}; use some of {list(PROBLEMS)}.")
    t0 = time.perf_counter()
    result = benchmark(sizes, problems, args.seeds)
    result["wall_s"] = time.perf_counter() - t0
    print(markdown(result))
    print(f"\nwall time {result['wall_s']:.0f} s")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
