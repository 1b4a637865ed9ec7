"""The NAT archive: every evaluated subnet, readable as JSON.

Each entry is keyed by its canonical genotype (so two genotypes of one network
are one entry) and records the measured top-1/top-5 accuracy of the latest
evaluation, which supernet weights ("version": number of completed adaptation
rounds) it was measured with, each complexity objective, and the iteration it
joined the archive. Host-side and small: a plain dataclass, not a pytree.

The archive keeps every subnet ever measured (the history). `working` maps a
NAT iteration to the indices of the working archive A of Algorithm 1 formed
then (0: the initial archive, line 2; t + 1: `Selection(A ∪ P_t, N)` after
the search of iteration t, line 11): adaptation (Eq. 3), measurement (line 5),
the predictor and the final front use A, never the stale rest of the history.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
from typing import Any, Iterable, Sequence

import numpy as np

from nat_jax.space import search_space as ss


@dataclasses.dataclass
class Entry:
    """One archive member. `top1`/`top5` are percentages; None = not measured."""

    genes: tuple[int, ...]
    iteration: int
    top1: float | None = None
    top5: float | None = None
    version: int = -1
    objectives: dict[str, float] = dataclasses.field(default_factory=dict)
    predicted_top1: float | None = None

    @property
    def error(self) -> float:
        """Top-1 error in percent (NaN while unmeasured)."""
        return math.nan if self.top1 is None else 100.0 - self.top1


@dataclasses.dataclass
class Archive:
    """Evaluated subnets of one NAT run (insertion order is kept)."""

    space: ss.SearchSpace
    entries: list[Entry] = dataclasses.field(default_factory=list)
    working: dict[int, list[int]] = dataclasses.field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.entries)

    def _index(self) -> dict[tuple[int, ...], int]:
        return {e.genes: i for i, e in enumerate(self.entries)}

    def canonical(self, genes: Sequence[int]) -> tuple[int, ...]:
        g = self.space.validate_genes(np.asarray(genes))
        return tuple(int(x) for x in self.space.canonicalize(g))

    def __contains__(self, genes: Sequence[int]) -> bool:
        return self.canonical(genes) in self._index()

    def add(self, genes: Iterable[Sequence[int]], iteration: int,
            objectives: Iterable[dict[str, float]] | None = None) -> list[int]:
        """Adds new genotypes (duplicates ignored); returns indices of added ones."""
        index = self._index()
        genes = list(genes)
        objectives = list(objectives) if objectives is not None else [{}] * len(genes)
        added = []
        for g, obj in zip(genes, objectives):
            key = self.canonical(g)
            if key in index:
                continue
            index[key] = len(self.entries)
            added.append(len(self.entries))
            self.entries.append(Entry(key, iteration, objectives=dict(obj)))
        return added

    def get(self, genes: Sequence[int]) -> Entry:
        return self.entries[self._index()[self.canonical(genes)]]

    def pending(self, version: int, among: Sequence[int] | None = None
                ) -> list[int]:
        """Indices of entries (of `among`, default all) not yet measured with
        weights `version`, in increasing order."""
        idx = range(len(self.entries)) if among is None else sorted(among)
        return [i for i in idx if self.entries[i].version < version]

    def set_working(self, iteration: int, indices: Iterable[int]) -> None:
        """Records the working archive A formed at NAT `iteration`."""
        idx = sorted(int(i) for i in indices)
        if idx and not 0 <= idx[0] <= idx[-1] < len(self.entries):
            raise ValueError(f"Working-archive indices {idx[0]}..{idx[-1]} fall "
                             f"outside the {len(self.entries)} entries.")
        self.working[int(iteration)] = idx

    def working_at(self, iteration: int) -> list[int]:
        """Indices of A as of NAT `iteration`: the latest set formed at or
        before it (every entry when no working archive was recorded)."""
        past = [t for t in self.working if t <= iteration]
        if not past:
            return list(range(len(self.entries)))
        return list(self.working[max(past)])

    def record(self, i: int, top1: float, top5: float, version: int) -> None:
        e = self.entries[i]
        e.top1, e.top5, e.version = float(top1), float(top5), int(version)

    # ------------------------------------------------------------ arrays
    def genes(self) -> np.ndarray:
        """int32[n, num_genes] canonical genotypes."""
        return np.array([e.genes for e in self.entries], np.int32).reshape(
            len(self.entries), self.space.num_genes)

    def errors(self) -> np.ndarray:
        """float32[n] top-1 error in percent (NaN where unmeasured)."""
        return np.array([e.error for e in self.entries], np.float32)

    def objective_matrix(self, names: Sequence[str]) -> np.ndarray:
        """float64[n, len(names)]; "top1_error" is the measured error."""
        cols = []
        for name in names:
            if name == "top1_error":
                cols.append(self.errors().astype(np.float64))
            else:
                cols.append(np.array([e.objectives.get(name, math.nan)
                                      for e in self.entries], np.float64))
        return np.stack(cols, axis=-1) if cols else np.zeros((len(self), 0))

    # -------------------------------------------------------------- JSON
    def to_json(self) -> dict[str, Any]:
        rows = []
        for e in self.entries:
            arch = self.space.decode(e.genes)
            rows.append({
                "genes": list(e.genes),
                "encoding": arch.to_encoding(self.space),
                "resolution": arch.resolution,
                "width": arch.width,
                "ofa": arch.to_ofa(self.space),
                "top1": e.top1,
                "top5": e.top5,
                "version": e.version,
                "iteration": e.iteration,
                "objectives": e.objectives,
                "predicted_top1": e.predicted_top1,
            })
        return {"num_genes": self.space.num_genes, "entries": rows,
                "working": {str(t): list(v) for t, v in sorted(self.working.items())}}

    @classmethod
    def from_json(cls, obj: dict[str, Any], space: ss.SearchSpace) -> "Archive":
        if obj.get("num_genes") != space.num_genes:
            raise ValueError(
                f"Archive has {obj.get('num_genes')} genes per subnet but the search "
                f"space has {space.num_genes}: it belongs to another search space.")
        arc = cls(space)
        for r in obj["entries"]:
            arc.entries.append(Entry(
                genes=arc.canonical(r["genes"]), iteration=int(r["iteration"]),
                top1=r.get("top1"), top5=r.get("top5"), version=int(r["version"]),
                objectives=dict(r.get("objectives", {})),
                predicted_top1=r.get("predicted_top1")))
        for t, idx in dict(obj.get("working", {})).items():
            arc.set_working(int(t), idx)
        return arc

    def save(self, path: str | os.PathLike) -> None:
        """Atomic write (a crash never leaves a half-written archive)."""
        path = pathlib.Path(path)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=1))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike, space: ss.SearchSpace) -> "Archive":
        path = pathlib.Path(path)
        try:
            obj = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"No archive at {path}.") from None
        except json.JSONDecodeError as err:
            raise ValueError(f"Archive {path} is corrupt ({err.msg}); delete it to "
                             f"start over or restore it from a backup.") from None
        return cls.from_json(obj, space)

