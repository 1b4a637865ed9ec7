"""Archive: canonical dedupe, pending/record bookkeeping, JSON round trip."""

import json

import jax
import numpy as np
import pytest

from nat_jax.search.archive import Archive
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
