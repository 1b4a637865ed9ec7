"""Archive: canonical dedupe, pending/record bookkeeping, JSON round trip, one
or many tasks, and the archive files runs wrote before #23."""

import json

import jax
import numpy as np
import pytest

from nat_jax.search.archive import SINGLE_TASK, Archive
from nat_jax.space import search_space as ss

S = ss.OFA_MBV3


def test_add_dedupes_on_canonical_genotype_and_tracks_versions(tmp_path):
    arc = Archive(S)
    a = [8, 1] + [5, 6, 0, 2] + [1, 1, 0, 0] * 4
    b = [8, 1] + [5, 6, 2, 0] + [1, 1, 0, 0] * 4   # same network as a
    c = [3, 0] + [9] * 20
    assert arc.add([a, b, c], iteration=0, objectives=[{"madds": 1.0}] * 3) == [0, 1]
    assert len(arc) == 2 and b in arc and arc.get(a) is arc.entries[0]
    assert arc.pending(1) == [0, 1] and np.isnan(arc.errors()).all()
    arc.record(1, top1=91.5, top5=99.0, version=1)
    assert arc.pending(1) == [0] and arc.pending(2) == [0, 1]
    np.testing.assert_allclose(arc.errors()[1], 8.5)
    np.testing.assert_allclose(arc.objective_matrix(["top1_error", "madds"])[1],
                               [8.5, 1.0])
    arc.save(tmp_path / "archive.json")
    back = Archive.load(tmp_path / "archive.json", S)
    assert back.entries == arc.entries
    row = json.loads((tmp_path / "archive.json").read_text())["entries"][1]
    assert row["encoding"] == "03" + "0" + "9" * 20 and row["ofa"]["d"] == [4] * 5


def test_archive_genes_are_canonical_int32():
    arc = Archive(S)
    g = np.asarray(S.sample(jax.random.key(0), 20))
    arc.add(g, iteration=0)
    out = arc.genes()
    assert out.dtype == np.int32 and out.shape == (len(arc), 22)
    np.testing.assert_array_equal(S.canonicalize(out), out)


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="No archive"):
        Archive.load(tmp_path / "missing.json", S)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="corrupt"):
        Archive.load(tmp_path / "bad.json", S)
    arc = Archive(ss.SearchSpace.tiny())
    arc.save(tmp_path / "tiny.json")
    with pytest.raises(ValueError, match="another search space"):
        Archive.load(tmp_path / "tiny.json", S)


def test_working_archive_per_iteration_and_pending_among(tmp_path):
    space = ss.SearchSpace.tiny()
    arc = Archive(space)
    g = np.asarray(space.sample(jax.random.key(1), 30))
    _, first = np.unique(g, axis=0, return_index=True)
    g = g[np.sort(first)[:8]]
    arc.add(g, iteration=0)
    assert arc.working_at(5) == list(range(8))      # nothing recorded: every entry
    arc.set_working(0, [0, 1, 2, 3])
    arc.set_working(2, [5, 3, 1, 7])
    assert arc.working_at(0) == arc.working_at(1) == [0, 1, 2, 3]
    assert arc.working_at(2) == arc.working_at(9) == [1, 3, 5, 7]
    for i in (1, 3):
        arc.record(i, 50.0, 90.0, version=2)
    assert arc.pending(2, arc.working_at(2)) == [5, 7]
    assert arc.pending(2) == [0, 2, 4, 5, 6, 7]
    arc.save(tmp_path / "a.json")
    back = Archive.load(tmp_path / "a.json", space)
    assert back.working == {0: [0, 1, 2, 3], 2: [1, 3, 5, 7]}
    assert json.loads((tmp_path / "a.json").read_text())["working"]["2"] == [
        1, 3, 5, 7]
    with pytest.raises(ValueError, match="outside the 8 entries"):
        arc.set_working(3, [0, 8])


TINY = ss.SearchSpace.tiny()
# archive.json of a transfer run as `Archive.to_json` wrote it before the
# single- and the many-task archives became one type (main f3dcb5b).
OLD_ARCHIVE = {"num_genes": 6, "entries": [
    {"genes": [0, 0, 4, 8, 1, 9], "encoding": "0004819", "resolution": 32,
     "width": 1.0, "ofa": {"ks": [3, 5, 3, 7], "e": [4, 6, 3, 6], "d": [2, 2]},
     "top1": 61.25, "top5": 90.0, "version": 1, "iteration": 0,
     "objectives": {"madds": 1.5}, "predicted_top1": None},
    {"genes": [1, 1, 9, 8, 8, 8], "encoding": "0119888", "resolution": 40,
     "width": 1.2, "ofa": {"ks": [7, 5, 5, 5], "e": [6, 6, 6, 6], "d": [2, 2]},
     "top1": 70.5, "top5": 95.0, "version": 2, "iteration": 0,
     "objectives": {"madds": 2.5}, "predicted_top1": 69.0},
    {"genes": [2, 0, 3, 0, 5, 0], "encoding": "0203050", "resolution": 48,
     "width": 1.0, "ofa": {"ks": [7, 3, 5, 3], "e": [3, 3, 4, 3], "d": [1, 1]},
     "top1": None, "top5": None, "version": -1, "iteration": 0,
     "objectives": {"madds": 0.5}, "predicted_top1": None}],
    "working": {"0": [0, 1, 2], "1": [1, 2]}}
# joint_archive.json of a many-task search as `multitask.JointArchive.to_json`
# wrote it (main f3dcb5b; "space" abridged: it was never read back).
OLD_JOINT_ARCHIVE = {"tasks": ["mnist", "digits"], "num_genes": 6,
                     "space": {"kernels": [3, 5, 7]}, "entries": [
    {"genes": [0, 0, 4, 8, 1, 9], "encoding": "0004819", "resolution": 32,
     "iteration": 0, "top1": {"mnist": 61.25, "digits": 30.0},
     "top5": {"mnist": 99.0, "digits": 80.0}, "predicted_top1": {},
     "objectives": {"madds": 1.5}},
    {"genes": [1, 1, 9, 8, 8, 8], "encoding": "0119888", "resolution": 40,
     "iteration": 0, "top1": {"mnist": 70.5}, "top5": {"mnist": 99.0},
     "predicted_top1": {}, "objectives": {"madds": 2.5}},
    {"genes": [2, 0, 3, 0, 5, 0], "encoding": "0203050", "resolution": 48,
     "iteration": 1, "top1": {"mnist": 58.0, "digits": 40.0},
     "top5": {"mnist": 99.0, "digits": 80.0},
     "predicted_top1": {"mnist": 55.0, "digits": 44.0},
     "objectives": {"madds": 0.5}}]}


def test_a_transfer_archive_json_written_before_loads_and_is_rewritten_as_is(
        tmp_path):
    (tmp_path / "archive.json").write_text(json.dumps(OLD_ARCHIVE))
    arc = Archive.load(tmp_path / "archive.json", TINY)
    assert arc.tasks == SINGLE_TASK and len(arc) == 3
    assert [e.top1 for e in arc.entries] == [61.25, 70.5, None]
    assert [e.version for e in arc.entries] == [1, 2, -1]
    assert arc.entries[1].predicted_top1 == 69.0 and arc.entries[1].top5 == 95.0
    np.testing.assert_allclose(arc.errors(), [38.75, 29.5, np.nan])
    assert arc.pending(2) == [0, 2] and arc.working_at(1) == [1, 2]
    np.testing.assert_allclose(arc.objective_matrix(["top1_error", "madds"])[0],
                               [38.75, 1.5])
    assert arc.to_json() == OLD_ARCHIVE       # the single-task form is unchanged


def test_a_joint_archive_json_written_before_loads(tmp_path):
    (tmp_path / "joint_archive.json").write_text(json.dumps(OLD_JOINT_ARCHIVE))
    arc = Archive.load(tmp_path / "joint_archive.json", TINY)
    assert arc.tasks == ("mnist", "digits")
    np.testing.assert_allclose(arc.error_matrix(),
                               [[38.75, 70.0], [29.5, np.nan], [42.0, 60.0]])
    assert arc.complete().tolist() == [True, False, True]
    # Every old joint measurement was taken with the final weights: version 0.
    assert arc.pending(0, task="digits") == arc.pending(0) == [1]
    assert arc.pending(0, task="mnist") == []
    assert arc.entries[2].task_predicted_top1 == [55.0, 44.0]
    assert arc.entries[0].task_predicted_top1 == [None, None]
    F = arc.objective_matrix(["top1_error:mnist", "top1_error:digits", "madds"])
    np.testing.assert_allclose(F[2], [42.0, 60.0, 0.5])
    np.testing.assert_allclose(
        arc.objective_scale(["top1_error:mnist", "top1_error:digits", "madds"]),
        [100.0, 100.0, 2.5 * 1.05])


def test_many_tasks_record_per_task_and_round_trip(tmp_path):
    arc = Archive(TINY, tasks=("a", "b"))
    g = OLD_ARCHIVE["entries"]
    assert arc.add([e["genes"] for e in g], 0, [{"madds": 1.0}] * 3,
                   [[50.0, 60.0], [None, 40.0], [1.0, 2.0]]) == [0, 1, 2]
    arc.record(0, 70.0, 90.0, version=0, task="b")
    arc.record(2, 80.0, 95.0, version=0, task=0)
    assert arc.pending(0, task="a") == [0, 1] and arc.pending(0, task=1) == [1, 2]
    assert arc.pending(0) == [0, 1, 2] and not arc.complete().any()
    np.testing.assert_allclose(arc.errors("b"), [30.0, np.nan, np.nan])
    arc.save(tmp_path / "j.json")
    row = json.loads((tmp_path / "j.json").read_text())["entries"][0]
    assert row["top1"] == {"b": 70.0} and row["version"] == {"b": 0}
    assert row["predicted_top1"] == {"a": 50.0, "b": 60.0}
    back = Archive.load(tmp_path / "j.json", TINY)
    assert back.tasks == ("a", "b") and back.entries == arc.entries
    with pytest.raises(ValueError, match="holds 2 tasks"):
        arc.errors()
    with pytest.raises(ValueError, match="read task_top1"):
        arc.entries[0].top1
    with pytest.raises(ValueError, match="holds 2 tasks"):
        arc.objective_matrix(["top1_error", "madds"])
    with pytest.raises(ValueError, match="No task 'c'"):
        arc.record(0, 1.0, 1.0, 0, task="c")
    with pytest.raises(ValueError, match="one per task"):
        arc.add([[0, 0, 1, 0, 1, 0]], 1, [{}], [[1.0]])
    with pytest.raises(ValueError, match="distinct non-empty names"):
        Archive(TINY, tasks=("a", "a"))
