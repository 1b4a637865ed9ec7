"""Algorithm 1's archive (lines 2, 6, 11) and Eq. 3 on the working archive.

Oracles: pymoo's nondominated sorting (Algorithm 4 keeps whole fronts in
order and cuts only the last one it needs), Eq. 3's frequencies counted by
hand, and the paper's initial archive written out.
"""

import types

import jax
import numpy as np
import pytest
from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

from nat_jax.nat import run_config, transfer
from nat_jax.runtime import progress as progress_lib
from nat_jax.search.archive import Archive
from nat_jax.space import objectives
from nat_jax.space import search_space as ss

# Slow: whole runs or expensive shared fixtures (over ~30 s on 2 cores).
pytestmark = pytest.mark.slow

SPACE = ss.SearchSpace.tiny()
NAMES = ("top1_error", "madds")


def _run(tmp_path=None, N=12, P=100, mode="paper", floor=0.0):
    loop = run_config.LoopConfig(
        archive_size=N, predictor_train_size=P, archive_update=mode,
        archive_init=7, iterations=3)
    fn = objectives.complexity_fn(SPACE, NAMES[1:], 10)
    plan = types.SimpleNamespace(
        task=types.SimpleNamespace(space=SPACE, names=NAMES, complexity=fn),
        loop=loop, search=types.SimpleNamespace(pop_size=8, n_candidates=2),
        adapt=types.SimpleNamespace(floor=floor))
    return types.SimpleNamespace(plan=plan, key=jax.random.key(0),
                                 workdir=tmp_path)


def _distinct(n, seed):
    g = np.asarray(SPACE.sample(jax.random.key(seed), 4 * n))
    _, first = np.unique(g, axis=0, return_index=True)
    assert len(first) >= n
    return g[np.sort(first)[:n]]


def _measured_archive(genes, n_working, seed=0):
    """History of `genes` (all measured, random top-1); A = the first rows."""
    rng = np.random.default_rng(seed)
    r = _run()
    arc = Archive(SPACE)
    arc.add(genes, iteration=0, objectives=transfer._objectives(r, genes))
    for i in range(len(arc)):
        arc.record(i, top1=float(rng.uniform(20, 90)), top5=99.0, version=1)
    arc.set_working(0, range(n_working))
    return arc


def _fronts(F):
    return NonDominatedSorting().do(np.asarray(F, np.float64))


def _check_front_first(F, chosen, n):
    """`chosen` (row indices of F) is an Algorithm 4 survivor set of size n:
    every front before the one that is cut is whole, nothing after it."""
    chosen = set(int(i) for i in chosen)
    assert len(chosen) == min(n, len(F))
    taken = 0
    for front in _fronts(F):
        front = set(int(i) for i in front)
        if taken + len(front) <= n:
            assert front <= chosen
        elif taken >= n:
            assert not front & chosen
        else:
            assert len(front & chosen) == n - taken
        taken += len(front)


def test_selection_keeps_n_survivors_of_a_union_p_by_fronts():
    genes = _distinct(40, 1)
    arc = _measured_archive(genes[:24], n_working=18)   # 6 history-only members
    A = list(range(18))
    # P_t: 4 copies of A members, 3 history members outside A, 2 penalised
    # (NaN) rows, 16 new subnets (2 duplicated), with predicted errors.
    rng = np.random.default_rng(3)
    pop = np.concatenate([genes[:4], genes[19:22], genes[30:32], genes[24:40],
                          genes[26:28]])
    pred = rng.uniform(20, 90, len(pop))
    pred[7:9] = np.nan
    pred[-2:] = pred[11:13]                      # the same two subnets again
    madds = np.asarray(objectives.complexity_fn(SPACE, NAMES[1:], 10)(pop))[:, 0]
    result = types.SimpleNamespace(population=pop,
                                   objectives=np.stack([pred, madds], 1))
    N = 12
    r = _run(N=N)
    transfer._select_archive(r, arc, 0, result)
    working = arc.working[1]
    # The oracle's union: A with measured error, then P_t rows not in A
    # (first copy of a duplicate), with predicted error; NaN rows dropped.
    F_meas = arc.objective_matrix(NAMES)
    union, F = [], []
    for i in A:
        union.append(tuple(arc.entries[i].genes))
        F.append(F_meas[i])
    for g, p, m in zip(map(tuple, pop.tolist()), pred, madds):
        if g in union or not np.isfinite(p):
            continue
        union.append(g)
        F.append([p, m])
    chosen = [union.index(arc.entries[i].genes) for i in working]
    _check_front_first(np.array(F), chosen, N)
    assert len(working) == N == len(set(working))
    # Bookkeeping: history members outside A re-enter without a new entry,
    # new survivors join with their predicted top-1 and no measurement.
    assert len(arc) == 24 + sum(1 for i in working if i >= 24)
    for i in working:
        e = arc.entries[i]
        if i >= 24:
            row = [tuple(x) for x in pop.tolist()].index(e.genes)
            assert e.iteration == 1 and e.top1 is None
            assert e.predicted_top1 == pytest.approx(100.0 - pred[row])
        else:
            assert e.iteration == 0 and e.version == 1
    # A round trip through JSON keeps the working archives.
    again = Archive.from_json(arc.to_json(), SPACE)
    assert again.working == arc.working


def test_predictor_is_fitted_on_the_top_ranked_of_the_working_archive():
    genes = _distinct(40, 2)
    arc = _measured_archive(genes, n_working=30)
    arc.entries[35].top1 = None                      # unmeasured history member
    arc.entries[35].version = -1
    r = _run(P=10)
    idx = transfer.predictor_train_set(r, arc, 0)
    assert set(idx) <= set(range(30))
    F = arc.objective_matrix(NAMES)[:30]
    _check_front_first(F, idx, 10)
    # A working archive smaller than the train size: all of it.
    assert list(transfer.predictor_train_set(_run(P=100), arc, 0)) == list(range(30))
    # 0 = every measured subnet of the history (the authors' choice).
    everyone = transfer.predictor_train_set(_run(P=0), arc, 0)
    assert list(everyone) == [i for i in range(40) if i != 35]


def test_eq3_counts_only_the_working_archive(monkeypatch):
    genes = _distinct(30, 4)
    arc = _measured_archive(genes, n_working=10)
    big = np.asarray(SPACE.encode(SPACE.max_arch()))
    arc.add(np.stack([big] * 1), iteration=0,
            objectives=transfer._objectives(_run(), big[None]))
    arc.set_working(1, [0, 3, 5, 7, 9, 30])
    seen = {}

    def fake_adapt(state, model, loader, probs, n, cfg, **kw):
        seen["probs"] = np.asarray(probs)
        seen["model"] = model
        return state, {"loss": 0.0, "images_per_s": 1.0, "steps_per_width": {}}

    monkeypatch.setattr(transfer.adaptation, "adapt", fake_adapt)
    monkeypatch.setattr(transfer, "_log_eta", lambda *a: None)
    r = _run()
    r.steps_per_round, r.step, r.states = [4, 4], 4, {1.0: None, 1.2: None}
    r.models = {1.0: "w1.0 supernet", 1.2: "w1.2 supernet"}
    r.loader = r.mesh = r.ckpt = None
    r.total_steps, r.eta = 8, progress_lib.RunEta()
    transfer.adapt_round(r, arc, 1)
    assert seen["model"] == r.models            # the set: the width is searched
    # Eq. 3 by hand: p(X_i = j) = #{a in A: a_i = j} / |A|, the width gene
    # (index 1) too: it is not pinned.
    members = [arc.entries[i].genes for i in [0, 3, 5, 7, 9, 30]]
    want = np.zeros_like(seen["probs"])
    for g in members:
        for i, v in enumerate(g):
            want[i, v] += 1.0 / len(members)
    np.testing.assert_allclose(seen["probs"], want, atol=1e-6)
    # Round 0 used the initial A (the first 10), not the whole history.
    r.steps_per_round, r.step = [4, 4], 0
    transfer.adapt_round(r, arc, 0)
    want0 = np.zeros_like(want)
    for g in (arc.entries[i].genes for i in range(10)):
        for i, v in enumerate(g):
            want0[i, v] += 0.1
    np.testing.assert_allclose(seen["probs"], want0, atol=1e-6)


@pytest.mark.parametrize("mode", ["paper", "authors"])
def test_initial_archive(tmp_path, mode):
    r = _run(tmp_path, N=9, mode=mode)
    arc = transfer.initial_archive(r)
    smallest = tuple(int(x) for x in SPACE.canonicalize(np.asarray(
        SPACE.encode(SPACE.min_arch(resolution=SPACE.resolutions[0])))))
    genes = [e.genes for e in arc.entries]
    assert SPACE.decode(smallest).width == 1.0      # the narrowest supernet
    if mode == "paper":        # line 2: N members, the smallest subnet among them
        assert len(arc) == 9 and genes[-1] == smallest
    else:                      # archive_init samples + smallest + largest
        largest = tuple(int(x) for x in SPACE.encode(SPACE.max_arch(width=1.2)))
        assert len(arc) == 9 and genes[-2:] == [smallest, largest]
    assert arc.working == {0: list(range(len(arc)))}
    assert all(e.top1 is None for e in arc.entries)
    assert Archive.load(tmp_path / "archive.json", SPACE).working == arc.working


def test_gene_entropy_by_hand():
    p = np.array([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0], [0.25, 0.25, 0.5]])
    want = np.log(2) + 0.0 + (2 * 0.25 * np.log(4) + 0.5 * np.log(2))
    assert transfer.gene_entropy(p) == pytest.approx(want)
