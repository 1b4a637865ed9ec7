"""The workdir protocol shared by every resumable entry point.

A workdir holds `config.json` (the run's full config, read back by
`read_config`; a rerun with the same config resumes, a different one is
refused), JSON-lines logs read back by
`read_jsonl` (a line cut by a crash is dropped), and, for a finished
transfer run, `result.json`, `archive.json` and the task supernet set under
`supernet/` (one supernet per width multiplier, `supernet/w1.0/`,
`supernet/w1.2/`: `nat_jax.model.supernet_set`). Writing goes through
`write_json` (temp file + rename), so a crash never leaves a half-written
file behind.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

from nat_jax.space import search_space as ss

SUPERNET_SUBDIR = "supernet"


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write `obj` as indented JSON to `path`."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))
    os.replace(tmp, path)


def flatten(cfg: dict, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1} (config diffs name the dotted field)."""
    out = {}
    for k, v in cfg.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_diff(old: dict, new: dict) -> list[str]:
    """Dotted names of the fields that differ between two config dicts."""
    a, b = flatten(old), flatten(json.loads(json.dumps(new)))
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def _read_json(path: pathlib.Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        raise ValueError(f"{path} is corrupt; use a new --workdir.") from None


def read_config(workdir: str | os.PathLike) -> dict:
    """The config a run wrote to WORKDIR/config.json (the one reader of it).

    Raises:
      ValueError: one line naming the workdir when it has no config.json (not
        a run's workdir), or naming a corrupt config.json.
    """
    path = pathlib.Path(workdir) / "config.json"
    if not path.is_file():
        raise ValueError(f"{workdir} has no config.json: pass the --workdir of a "
                         f"run (experiments.transfer writes one).")
    return _read_json(path)


def check_config(workdir: str | os.PathLike, config_dict: dict,
                 filename: str = "config.json", what: str = "run") -> None:
    """Writes `filename`, or checks that an existing one is the same run.

    Raises:
      ValueError: the workdir holds a different run (names up to four fields
        with old -> new values) or a corrupt config file.
    """
    workdir = pathlib.Path(workdir)
    path = workdir / filename
    if path.exists():
        old = _read_json(path)
        diff = config_diff(old, config_dict)
        if diff:
            a, b = flatten(old), flatten(json.loads(json.dumps(config_dict)))
            shown = ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in diff[:4])
            raise ValueError(f"--workdir {workdir} holds a different {what} "
                             f"({shown}); use a new --workdir or the same flags "
                             f"to resume.")
    write_json(path, json.loads(json.dumps(config_dict)))


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Rows of a JSON-lines file ([] if absent); stops at a line cut by a crash."""
    path = pathlib.Path(path)
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return rows


def append_jsonl(path: str | os.PathLike, row: dict) -> None:
    """Append one JSON line (flushed) to `path`."""
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()


def resolve_supernet_dir(path: str | os.PathLike) -> str:
    """A supernet checkpoint dir, or a set of them, from itself or from a
    transfer workdir (its `supernet/` folder); `nat_jax.model.supernet_set` reads
    the widths in it."""
    p = pathlib.Path(path)
    if not p.exists():
        raise ValueError(f"Supernet directory {path} does not exist.")
    if (p / SUPERNET_SUBDIR).is_dir():
        return str(p / SUPERNET_SUBDIR)
    return str(p)


def pick_arch(workdir: str | os.PathLike, pick: int, space: ss.SearchSpace
              ) -> ss.Arch:
    """The arch of `result.json["picks"][pick]` of a finished transfer workdir.

    `space` is the one the archive's genotypes are written in: the run's
    space with the widths of its supernet set
    (`supernet_set.set_space(workdir)`);
    the arch's width is its genotype's width gene.
    """
    wd = pathlib.Path(workdir)
    for name in ("result.json", "archive.json"):
        if not (wd / name).is_file():
            raise ValueError(f"--pick needs a finished transfer workdir; {wd / name} "
                             f"is missing.")
    picks = json.loads((wd / "result.json").read_text()).get("picks", [])
    if not -len(picks) <= pick < len(picks):
        raise ValueError(f"--pick={pick} is out of range: {wd}/result.json has "
                         f"{len(picks)} picks.")
    entries = json.loads((wd / "archive.json").read_text())["entries"]
    return space.decode(entries[picks[pick]]["genes"])
