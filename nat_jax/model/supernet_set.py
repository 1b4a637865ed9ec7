"""One supernet per width multiplier: the directory layout and its I/O.

The paper searches the width multiplier as the genotype's second gene (NAT
section 3.2, Fig. 2b), over OFA's two separately trained supernets (w1.0 and
w1.2). Each width keeps its own weight set, so a run, a task supernet and the
shipped pretrained supernets are *sets* of single-width supernets:

    DIR/w1.0/   a `supernet.save_supernet` directory (metadata.json, state/)
    DIR/w1.2/   the same for width 1.2

A single-width `save_supernet` directory is also a set (of one width), and a
transfer workdir stands for its `supernet/` folder (`workdir.SUPERNET_SUBDIR`),
so every loader here accepts all three.
"""

from __future__ import annotations

import pathlib
from typing import Mapping

from nat_jax.model import supernet as supernet_lib
from nat_jax.runtime import checkpoint
from nat_jax.runtime import workdir as workdir_lib


def width_dir_name(width: float) -> str:
    """The subfolder of a width's supernet: "w1.0", "w1.2" (as OFA names them)."""
    return f"w{float(width)}"


def _is_supernet_dir(path: pathlib.Path) -> bool:
    if not (path / checkpoint.METADATA_FILE).is_file():
        return False
    return checkpoint.load_metadata(str(path)).get("kind") == supernet_lib.SUPERNET_KIND


def width_dirs(directory: str | pathlib.Path) -> dict[float, str]:
    """{width: supernet dir} of a supernet set, a single supernet or a workdir.

    Raises:
      ValueError: the path does not exist or holds no supernet.
    """
    p = pathlib.Path(workdir_lib.resolve_supernet_dir(directory))
    if _is_supernet_dir(p):
        width = float(checkpoint.load_metadata(str(p))["width"])
        return {width: str(p)}
    found = {}
    for sub in sorted(p.glob("w*")):
        if sub.is_dir() and _is_supernet_dir(sub):
            found[float(checkpoint.load_metadata(str(sub))["width"])] = str(sub)
    if not found:
        raise ValueError(f"{directory} holds no supernet: expected a "
                         f"supernet.save_supernet directory or w<width>/ folders "
                         f"of them (as a transfer run's supernet/ folder).")
    return found


def widths(directory: str | pathlib.Path) -> tuple[float, ...]:
    """The widths whose supernets `directory` holds, ascending."""
    return tuple(sorted(width_dirs(directory)))


def load_width(directory: str | pathlib.Path, width: float):
    """(model, variables) of one width's supernet from a set (only that one is
    read from disk).

    Raises:
      ValueError: the set has no supernet of that width (the message lists the
        widths it has).
    """
    dirs = width_dirs(directory)
    for w, path in dirs.items():
        if abs(w - float(width)) < 1e-9:
            return supernet_lib.load_supernet(path)
    raise ValueError(f"{directory} has no width-{float(width)} supernet; it holds "
                     f"widths {sorted(dirs)}.")


def load_all(directory: str | pathlib.Path) -> dict[float, tuple]:
    """{width: (model, variables)} of every supernet of a set."""
    return {w: supernet_lib.load_supernet(path)
            for w, path in sorted(width_dirs(directory).items())}


def save_all(directory: str | pathlib.Path, supernets: Mapping[float, tuple]
             ) -> None:
    """Save {width: (model, variables)} as DIR/w<width>/ supernet dirs.

    Raises:
      ValueError: a model's width is not its key.
    """
    for width, (model, variables) in sorted(supernets.items()):
        if abs(model.width - float(width)) > 1e-9:
            raise ValueError(f"supernet of width {model.width} given as width "
                             f"{width}.")
        supernet_lib.save_supernet(
            str(pathlib.Path(directory) / width_dir_name(width)), model, variables)
