"""The NAT archive: every evaluated subnet, for one task or many, as JSON.

Each entry is keyed by its canonical genotype (so two genotypes of one network
are one entry) and records, for every task of the archive (`Archive.tasks`:
NAT's run has one, the many-task search of paper Appendix F one per
dataset), the measured top-1/top-5 accuracy of the latest evaluation, which
supernet weights it was measured with ("version": completed adaptation
rounds of a transfer run; 0 for the fixed task supernets of a many-task
search) and the predictor's top-1; plus each complexity objective and the
iteration it joined the archive. Host-side and small: a plain dataclass, not
a pytree.

One task is the case T = 1: `Entry.top1`, `.top5`, `.version`,
`.predicted_top1` and `.error` read and write that task's value,
`Archive.errors()` is its float32[n] column and `"top1_error"` its objective;
with several tasks, index the per-task lists (`Entry.task_top1[t]`), pass
`task=` (an index or a name) and name an objective `"top1_error:TASK"`.

The archive keeps every subnet ever measured (the history). `working` maps a
NAT iteration to the indices of the working archive A of Algorithm 1 formed
then (0: the initial archive, line 2; t + 1: `Selection(A ∪ P_t, N)` after
the search of iteration t, line 11): adaptation (Eq. 3), measurement (line 5),
the predictor and the final front use A, never the stale rest of the history.

JSON: the single unnamed task (`Archive(space)`) writes one value per field
and entry (the archive.json of a transfer run); named tasks write `"tasks"`
and a {task: value} object per field, measured tasks only (the
joint_archive.json of a many-task search). Both forms load, including the
files runs wrote before the two archive types became one.
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

# The task of a single-task archive (written without names).
SINGLE_TASK = ("task",)
ERROR = "top1_error"


class _OneTask:
    """`Entry.NAME`: the one task's value of the list `Entry.task_NAME`."""

    def __set_name__(self, owner, name: str) -> None:
        self.field = f"task_{name}"

    def _values(self, entry) -> list:
        values = getattr(entry, self.field)
        if len(values) != 1:
            raise ValueError(f"This entry holds {len(values)} tasks; read "
                             f"{self.field}[t] for one of them.")
        return values

    def __get__(self, entry, owner=None):
        return self if entry is None else self._values(entry)[0]

    def __set__(self, entry, value) -> None:
        self._values(entry)[0] = value


@dataclasses.dataclass
class Entry:
    """One archive member; per-task lists follow `Archive.tasks`.

    `task_top1`/`task_top5`/`task_predicted_top1` are percentages (None = not
    measured / not predicted), `task_version` the weights version of each
    measurement (-1 = not measured). The properties `top1`, `top5`, `version`,
    `predicted_top1` and `error` are the one task's (ValueError with several).
    """

    genes: tuple[int, ...]
    iteration: int
    task_top1: list[float | None] = dataclasses.field(default_factory=lambda: [None])
    task_top5: list[float | None] = dataclasses.field(default_factory=lambda: [None])
    task_version: list[int] = dataclasses.field(default_factory=lambda: [-1])
    task_predicted_top1: list[float | None] = dataclasses.field(
        default_factory=lambda: [None])
    objectives: dict[str, float] = dataclasses.field(default_factory=dict)

    top1 = _OneTask()
    top5 = _OneTask()
    version = _OneTask()
    predicted_top1 = _OneTask()

    @property
    def error(self) -> float:
        """Top-1 error in percent (NaN while unmeasured)."""
        return math.nan if self.top1 is None else 100.0 - self.top1


@dataclasses.dataclass
class Archive:
    """Evaluated subnets of one NAT run (insertion order is kept).

    Attributes:
      space: the search space of every genotype.
      entries: the members.
      working: NAT iteration -> indices of the working archive A.
      tasks: the task names (SINGLE_TASK: NAT's one task).
    """

    space: ss.SearchSpace
    entries: list[Entry] = dataclasses.field(default_factory=list)
    working: dict[int, list[int]] = dataclasses.field(default_factory=dict)
    tasks: tuple[str, ...] = SINGLE_TASK

    def __post_init__(self):
        self.tasks = tuple(self.tasks)
        if not self.tasks or len(set(self.tasks)) != len(self.tasks) or not all(
                isinstance(t, str) and t for t in self.tasks):
            raise ValueError(f"Archive tasks must be distinct non-empty names, got "
                             f"{self.tasks!r}.")

    def __len__(self) -> int:
        return len(self.entries)

    def _index(self) -> dict[tuple[int, ...], int]:
        return {e.genes: i for i, e in enumerate(self.entries)}

    def task_index(self, task: int | str | None) -> int:
        """Position of `task` (an index or a name; None: the only task)."""
        if task is None:
            if len(self.tasks) != 1:
                raise ValueError(f"The archive holds {len(self.tasks)} tasks "
                                 f"{self.tasks}; pass task= (an index or a name).")
            return 0
        if isinstance(task, str):
            if task not in self.tasks:
                raise ValueError(f"No task {task!r} in the archive; its tasks are "
                                 f"{self.tasks}.")
            return self.tasks.index(task)
        if not 0 <= int(task) < len(self.tasks):
            raise ValueError(f"Task index {task} is out of range for "
                             f"{len(self.tasks)} tasks.")
        return int(task)

    def canonical(self, genes: Sequence[int]) -> tuple[int, ...]:
        g = self.space.validate_genes(np.asarray(genes))
        return tuple(int(x) for x in self.space.canonicalize(g))

    def __contains__(self, genes: Sequence[int]) -> bool:
        return self.canonical(genes) in self._index()

    def add(self, genes: Iterable[Sequence[int]], iteration: int,
            objectives: Iterable[dict[str, float]] | None = None,
            predicted_top1: Iterable[Sequence[float]] | None = None) -> list[int]:
        """Adds new genotypes (duplicates ignored); returns indices of added ones.

        `predicted_top1`: per genotype, the predicted top-1 (%) of every task.
        """
        index = self._index()
        genes = list(genes)
        n_tasks = len(self.tasks)
        objectives = list(objectives) if objectives is not None else [{}] * len(genes)
        predicted = (list(predicted_top1) if predicted_top1 is not None
                     else [[None] * n_tasks] * len(genes))
        added = []
        for g, obj, pred in zip(genes, objectives, predicted):
            key = self.canonical(g)
            if key in index:
                continue
            pred = [None if p is None else float(p) for p in pred]
            if len(pred) != n_tasks:
                raise ValueError(f"predicted_top1 has {len(pred)} values per subnet "
                                 f"for {n_tasks} tasks; give one per task.")
            index[key] = len(self.entries)
            added.append(len(self.entries))
            self.entries.append(Entry(key, iteration, [None] * n_tasks,
                                      [None] * n_tasks, [-1] * n_tasks, pred,
                                      dict(obj)))
        return added

    def get(self, genes: Sequence[int]) -> Entry:
        return self.entries[self._index()[self.canonical(genes)]]

    def pending(self, version: int, among: Sequence[int] | None = None,
                task: int | str | None = None) -> list[int]:
        """Indices of entries (of `among`, default all) not yet measured with
        weights `version` on `task` (None: on every task), in increasing
        order."""
        idx = range(len(self.entries)) if among is None else sorted(among)
        tasks = (range(len(self.tasks)) if task is None
                 else [self.task_index(task)])
        return [i for i in idx
                if any(self.entries[i].task_version[t] < version for t in tasks)]

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

    def record(self, i: int, top1: float, top5: float, version: int,
               task: int | str | None = None) -> None:
        """Records entry i's measurement on `task` (None: the only task)."""
        t = self.task_index(task)
        e = self.entries[i]
        e.task_top1[t], e.task_top5[t] = float(top1), float(top5)
        e.task_version[t] = int(version)

    # ------------------------------------------------------------ arrays
    def genes(self) -> np.ndarray:
        """int32[n, num_genes] canonical genotypes."""
        return np.array([e.genes for e in self.entries], np.int32).reshape(
            len(self.entries), self.space.num_genes)

    def error_matrix(self) -> np.ndarray:
        """float32[n, T] top-1 error in percent (NaN where unmeasured)."""
        return np.array([[math.nan if v is None else 100.0 - v for v in e.task_top1]
                         for e in self.entries], np.float32).reshape(
                             len(self.entries), len(self.tasks))

    def errors(self, task: int | str | None = None) -> np.ndarray:
        """float32[n] top-1 error (%) on `task` (None: the only task)."""
        return self.error_matrix()[:, self.task_index(task)]

    def complete(self) -> np.ndarray:
        """bool[n]: measured on every task."""
        return np.all(np.isfinite(self.error_matrix()), axis=1)

    def objective_matrix(self, names: Sequence[str]) -> np.ndarray:
        """float64[n, len(names)]; "top1_error" is the measured error of the
        only task, "top1_error:TASK" that of TASK."""
        cols = []
        for name in names:
            if name == ERROR or name.startswith(ERROR + ":"):
                task = None if name == ERROR else name[len(ERROR) + 1:]
                cols.append(self.errors(task).astype(np.float64))
            else:
                cols.append(np.array([e.objectives.get(name, math.nan)
                                      for e in self.entries], np.float64))
        return np.stack(cols, axis=-1) if cols else np.zeros((len(self), 0))

    def objective_scale(self, names: Sequence[str]) -> np.ndarray:
        """float64[len(names)] fixed per-objective scale for the hypervolume:
        100 for an error, the initial archive's (iteration 0) largest value
        x 1.05 for any other objective."""
        init = [i for i, e in enumerate(self.entries) if e.iteration == 0]
        F = self.objective_matrix(names)[init]
        return np.array([100.0 if n == ERROR or n.startswith(ERROR + ":")
                         else np.nanmax(F[:, j]) * 1.05
                         for j, n in enumerate(names)], np.float64)

    # -------------------------------------------------------------- JSON
    def to_json(self) -> dict[str, Any]:
        single = self.tasks == SINGLE_TASK

        def per_task(values, unset):
            if single:
                return values[0]
            return {t: v for t, v in zip(self.tasks, values) if v != unset}

        rows = []
        for e in self.entries:
            arch = self.space.decode(e.genes)
            rows.append({
                "genes": list(e.genes),
                "encoding": arch.to_encoding(self.space),
                "resolution": arch.resolution,
                "width": arch.width,
                "ofa": arch.to_ofa(self.space),
                "top1": per_task(e.task_top1, None),
                "top5": per_task(e.task_top5, None),
                "version": per_task(e.task_version, -1),
                "iteration": e.iteration,
                "objectives": e.objectives,
                "predicted_top1": per_task(e.task_predicted_top1, None),
            })
        out = {} if single else {"tasks": list(self.tasks)}
        return {**out, "num_genes": self.space.num_genes, "entries": rows,
                "working": {str(t): list(v) for t, v in sorted(self.working.items())}}

    @classmethod
    def from_json(cls, obj: dict[str, Any], space: ss.SearchSpace) -> "Archive":
        if obj.get("num_genes") != space.num_genes:
            raise ValueError(
                f"Archive has {obj.get('num_genes')} genes per subnet but the search "
                f"space has {space.num_genes}: it belongs to another search space.")
        arc = cls(space, tasks=tuple(obj.get("tasks", SINGLE_TASK)))
        for r in obj["entries"]:
            if "tasks" in obj:
                # A joint archive written before versions were kept per task
                # measured every value with its task's final weights: 0.
                top1 = dict(r.get("top1") or {})
                ver = r.get("version", {t: 0 for t in top1})
                values = [[d.get(t, unset) for t in arc.tasks] for d, unset in (
                    (top1, None), (dict(r.get("top5") or {}), None),
                    (dict(ver), -1), (dict(r.get("predicted_top1") or {}), None))]
            else:
                values = [[r.get("top1")], [r.get("top5")], [int(r["version"])],
                          [r.get("predicted_top1")]]
            arc.entries.append(Entry(arc.canonical(r["genes"]), int(r["iteration"]),
                                     *values, dict(r.get("objectives", {}))))
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
