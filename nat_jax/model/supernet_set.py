"""One supernet per width multiplier: the directory layout and its I/O.

The paper searches the width multiplier as the genotype's second gene (NAT
section 3.2, Fig. 2b), over OFA's two separately trained supernets (w1.0 and
w1.2). Each width keeps its own weight set, so a run, a task supernet and the
shipped pretrained supernets are *sets* of single-width supernets:

    DIR/w1.0/   a `supernet.save_supernet` directory (metadata.json, state/)
    DIR/w1.2/   the same for width 1.2

A single-width `save_supernet` directory is also a set (of one width), and a
transfer workdir stands for its `supernet/` folder (`workdir.SUPERNET_SUBDIR`),
so every loader here accepts all three. `set_space`, `load_set_width` and
`extract_from_set` read a set's genotype space, one width's supernet in it,
and one subnet extracted from the supernet of its width.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Mapping

from nat_jax.model import subnet as subnet_lib
from nat_jax.model import supernet as supernet_lib
from nat_jax.runtime import checkpoint
from nat_jax.runtime import workdir as workdir_lib
from nat_jax.space import search_space as ss


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


# ------------------------------------------------------- from a supernet set
def set_space(directory: str | os.PathLike) -> ss.SearchSpace:
    """The search space of a supernet set's genotypes (no weights are read).

    The space its supernets were saved with (resolutions of the run), with
    `widths` = the widths the set holds, ascending: the run's widths, in the
    order its genotypes' width gene indexes them (a one-width set is a space
    with that width pinned, as older single-supernet runs wrote it).

    Args:
      directory: a supernet set, one width's supernet dir or a transfer workdir.

    Raises:
      ValueError: no supernet there, or two widths saved with different spaces.
    """
    dirs = width_dirs(directory)
    widths = tuple(sorted(dirs))
    spaces = {w: dataclasses.replace(
        ss.SearchSpace.from_json(checkpoint.load_metadata(d)["space"]),
        widths=widths) for w, d in dirs.items()}
    first = spaces[widths[0]]
    for w, sp in spaces.items():
        if sp != first:
            raise ValueError(f"{directory}: the width-{w} and width-{widths[0]} "
                             f"supernets were saved with different search spaces; "
                             f"a set must come from one run (one --config.space "
                             f"and resolutions).")
    return first


def _has_width(space: ss.SearchSpace, width: float) -> bool:
    return any(abs(w - float(width)) < 1e-9 for w in space.widths)


def load_set_width(directory: str | os.PathLike, width: float,
                   space: ss.SearchSpace | None = None):
    """(model, variables) of the width-`width` supernet of a set, its model's
    space being the set's (`set_space`), so it decodes the set's genotypes.

    Raises:
      ValueError: the set has no supernet of that width (names the widths).
    """
    space = set_space(directory) if space is None else space
    if not _has_width(space, width):
        raise ValueError(f"{directory} has no width-{float(width)} supernet; it "
                         f"holds widths {list(space.widths)}.")
    model, variables = load_width(directory, width)
    return model.clone(space=space), variables


def extract_from_set(directory: str | os.PathLike, arch: ss.Arch,
                     depthwise_impl: str | None = None
                     ) -> tuple[subnet_lib.Subnet, dict, dict, ss.SearchSpace]:
    """(subnet, variables, net_config, space) of `arch`, extracted from the
    supernet of its width (`arch.width`, NAT section 3.2's width gene).

    Only that width's supernet is read. `space` is the set's (`set_space`).

    Args:
      directory: a supernet set, one width's supernet dir or a transfer workdir.
      arch: the subnet; its width must be one the set holds.
      depthwise_impl: overrides the supernet's depthwise implementation.

    Raises:
      ValueError: the set lacks the arch's width, or the arch does not fit
        the set's search space (one line each).
    """
    space = set_space(directory)
    if not _has_width(space, arch.width):
        raise ValueError(f"{directory} has no width-{float(arch.width)} supernet "
                         f"for this subnet; it holds widths {list(space.widths)}.")
    try:
        arch.validate(space)
    except ValueError as err:
        raise ValueError(f"Arch does not fit the supernet's search space: {err}"
                         ) from None
    model, variables = load_set_width(directory, arch.width, space)
    if depthwise_impl is not None:
        model = model.clone(depthwise_impl=depthwise_impl)
    sub, sub_vars, cfg = subnet_lib.extract_subnet(model, variables, arch)
    return sub, sub_vars, cfg, space
