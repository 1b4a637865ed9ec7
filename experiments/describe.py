r"""Describe one subnet: its encodings, MAdds and params, as one JSON object.

Usage:
  python -m experiments.describe --arch=10000111111111111111111
  python -m experiments.describe --arch='[8, 0, 4, 4, 0, 0, ...]' --num_classes=47
  python -m experiments.describe --arch=path/to/net.subnet

ARCH is NAT's 23-digit `net.encoding`, a JSON list of 22 genes, or a path to a
`net.subnet` / `net.config` / `net.encoding` file (or the same JSON inline).
"""

from __future__ import annotations

import json
import pathlib

from absl import app, flags

from experiments import cli
from nat_jax import objectives, search_space

_ARCH = flags.DEFINE_string("arch", None, "NAT encoding, gene list, or JSON file.")
_NUM_CLASSES = flags.DEFINE_integer("num_classes", 1000, "Classifier outputs.")


def describe(arch: search_space.Arch, num_classes: int,
             space: search_space.SearchSpace = search_space.OFA_MBV3) -> dict:
    """The JSON-ready description of `arch`."""
    if num_classes < 1:
        raise ValueError(f"--num_classes must be positive, got {num_classes}.")
    cost = objectives.count(space, arch, num_classes)
    return {
        "resolution": arch.resolution,
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


def read_arch(value: str) -> search_space.Arch:
    """Parses --arch: inline text, or the contents of a file it names."""
    if value is None or not value.strip():
        raise ValueError("--arch is required (NAT encoding, gene list or JSON file).")
    path = pathlib.Path(value)
    looks_inline = value.strip()[0] in "[{" or value.strip().isdigit()
    if not looks_inline:
        if not path.is_file():
            raise ValueError(f"--arch {value!r} is neither an encoding nor a file.")
        value = path.read_text()
    return search_space.parse_arch(value)


@cli.one_line_errors
def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    arch = read_arch(_ARCH.value)
    print(json.dumps(describe(arch, _NUM_CLASSES.value)))


if __name__ == "__main__":
    app.run(main)
