r"""Describe one subnet: its encodings, MAdds and params, as one JSON object.

Usage:
  python -m experiments.describe --arch=10000111111111111111111
  python -m experiments.describe --space=tiny --arch=0101854
  python -m experiments.describe --arch='[8, 0, 4, 4, 0, 0, ...]' --num_classes=47
  python -m experiments.describe --arch=path/to/net.subnet

ARCH is a subnet's printed form (its "encoding", as report.md and archive.json
print it: NAT's 23-digit `net.encoding` in OFA's space, 7 digits in the tiny
one), a JSON list of the space's genes, or a path to a `net.subnet` /
`net.config` / `net.encoding` file (or the same JSON inline). --space names
the search space (default ofa_mbv3); --resolution counts MAdds at another input
side (the encoding keeps the subnet's own resolution).
"""

from __future__ import annotations

import json

from absl import app, flags

from experiments import cli
from nat_jax.space import objectives, search_space

_ARCH = flags.DEFINE_string("arch", None, "Encoding, gene list, or JSON file.")
_SPACE = flags.DEFINE_enum("space", "ofa_mbv3", list(search_space.SPACE_NAMES),
                           "Search space of the subnet.")
_NUM_CLASSES = flags.DEFINE_integer("num_classes", 1000, "Classifier outputs.")
_RESOLUTION = flags.DEFINE_integer(
    "resolution", None, "Input side to count MAdds at (any positive size, e.g. "
    "160; default: the subnet's own).")


def describe(arch: search_space.Arch, num_classes: int,
             space: search_space.SearchSpace, resolution: int | None = None
             ) -> dict:
    """The JSON-ready description of `arch`, a subnet of `space`; MAdds at
    input side `resolution` (default the subnet's own)."""
    if num_classes < 1:
        raise ValueError(f"--num_classes must be positive, got {num_classes}.")
    if resolution is not None and resolution < 1:
        raise ValueError(f"--resolution must be positive, got {resolution}.")
    cost = objectives.count(space, arch, num_classes, resolution)
    return {
        "resolution": arch.resolution if resolution is None else resolution,
        "width": arch.width,
        **arch.to_ofa(space),
        "depth_per_stage": list(arch.d),
        "encoding": arch.to_encoding(space),
        "genotype": space.encode(arch).tolist(),
        "net_subnet": arch.to_nat_subnet(space),
        "num_classes": num_classes,
        "madds": cost["madds"],
        "params": cost["params"],
    }


def read_arch(value: str | None, space_name: str) -> search_space.Arch:
    """Parses --arch in space `space_name`: inline text or a file it names.

    When it fails but the text is a subnet of another known space, the
    one-line error says which --space to use.
    """
    if value is None or not value.strip():
        raise ValueError("--arch is required (an encoding, gene list or JSON file).")
    try:
        return search_space.load_arch(value, search_space.get_space(space_name))
    except ValueError as err:
        for other in search_space.SPACE_NAMES:
            if other == space_name:
                continue
            try:
                search_space.load_arch(value, search_space.get_space(other))
            except ValueError:
                continue
            raise ValueError(f"--arch: {str(err).rstrip('.')} (it is a subnet of "
                             f"--space={other}).") from None
        raise ValueError(f"--arch: {err}") from None


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    space = search_space.get_space(_SPACE.value)
    arch = read_arch(_ARCH.value, _SPACE.value)
    print(json.dumps(describe(arch, _NUM_CLASSES.value, space, _RESOLUTION.value)))


if __name__ == "__main__":
    cli.run(main)
