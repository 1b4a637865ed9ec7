"""The supernets a run starts from, one per width, fitted to its task's classes.

The paper searches the width multiplier (the genotype's second gene, Sec.
3.2, Fig. 2b) over OFA's separately trained supernets (w1.0, w1.2), so a
run holds one supernet per width of its space (`supernet_set`'s layout).
`sources` turns a `--config.supernet` value into {width: path}: a set
directory (DIR/w1.0/, DIR/w1.2/, e.g. a transfer run's `supernet/` or a
shipped one), or a comma-separated list of paths, one per width, each a
converted supernet directory (experiments.convert_ofa) or an official OFA
`.pth` file (its width from the `_w1.2`-style name). `load_for_task` reads
one of them and replaces the classifier with a fresh one when the task has
other classes or `reset_classifier` is set (paper section 4.4: "the last
linear layer is reset"; the saved metadata does not record the dataset, so
the config says it); `starting_supernets` does that for every width of a
run (its `SupernetSource`, part of `run_config.TransferPlan`), or
initialises random supernets when none is given. `resolve` turns
"pretrained:NAME" into the supernet(s) shipped under
nat_jax/assets/pretrained/NAME, so a config names them from any cwd.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re

import jax
from absl import logging

from nat_jax.model import supernet as supernet_lib
from nat_jax.model import supernet_set
from nat_jax.space import search_space as ss

PRETRAINED_PREFIX = "pretrained:"
PRETRAINED_DIR = pathlib.Path(__file__).resolve().parents[1] / "assets" / "pretrained"
# "ofa_mbv3_d234_e346_k357_w1.2" (OFA's names) -> 1.2
_PTH_WIDTH = re.compile(r"_w(\d+(?:\.\d+)?)(?:\.pth)?$")


def resolve(name: str) -> str:
    """The path of one `--config.supernet` item.

    "pretrained:small_fashion_mnist" is the supernet set shipped in the
    package (nat_jax/assets/pretrained/small_fashion_mnist, with w1.0/ and
    w1.2/), "pretrained:small_fashion_mnist/w1.0" one width of it, wherever
    the run starts; anything else is returned unchanged.

    Raises:
      FileNotFoundError: "pretrained:NAME" that the package does not ship.
    """
    if not name.startswith(PRETRAINED_PREFIX):
        return name
    rel = name[len(PRETRAINED_PREFIX):].strip("/")
    path = PRETRAINED_DIR / rel
    if not rel or ".." in pathlib.PurePosixPath(rel).parts or not path.is_dir():
        sets = {str(p.parent.parent.relative_to(PRETRAINED_DIR))
                for p in PRETRAINED_DIR.glob("*/*/metadata.json")}
        raise FileNotFoundError(f"--supernet {name}: no such shipped supernet; use "
                                f"pretrained:one of {sorted(sets)}.")
    return str(path)


def pth_width(path: str) -> float:
    """The width of an official OFA `.pth` file from its name (`..._w1.2`).

    Raises:
      ValueError: the name does not say the width.
    """
    m = _PTH_WIDTH.search(pathlib.Path(path).name)
    if not m:
        raise ValueError(f"--supernet {path}: cannot tell the width of this OFA "
                         f"checkpoint from its name; keep OFA's name ending in "
                         f"_w1.0 or _w1.2 (e.g. ofa_mbv3_d234_e346_k357_w1.2).")
    return float(m.group(1))


def sources(value: str) -> dict[float, str]:
    """{width: path} of a `--config.supernet` value.

    Args:
      value: a supernet set directory (w<width>/ folders, a transfer workdir
        or its supernet/, "pretrained:NAME"), or comma-separated paths, one
        per width: supernet directories (width from their metadata) or
        official OFA `.pth` files (width from the name).

    Raises:
      FileNotFoundError: a path that does not exist (names the converter).
      ValueError: a directory without a supernet, a `.pth` name without a
        width, or two supernets of one width.
    """
    found: dict[float, str] = {}
    for item in (v.strip() for v in str(value).split(",")):
        if not item:
            continue
        path = resolve(item)
        p = pathlib.Path(path)
        if p.is_file():
            widths = {pth_width(path): path}
        elif p.is_dir():
            widths = supernet_set.width_dirs(path)
        else:
            raise FileNotFoundError(
                f"--supernet {path} does not exist. Download the official OFA "
                f"checkpoints (ofa_mbv3_d234_e346_k357_w1.0 and _w1.2) and pass "
                f"them (or convert each: python -m experiments.convert_ofa "
                f"--checkpoint=FILE --width=1.0 --output={path}).")
        for w, wp in widths.items():
            if w in found:
                raise ValueError(f"--supernet gives two width-{w} supernets "
                                 f"({found[w]} and {wp}); give one per width.")
            found[w] = wp
    return found


def check_covers(found: dict[float, str], space: ss.SearchSpace,
                 value: str) -> None:
    """Refuses supernets that lack a width of `space`.

    Raises:
      ValueError: one line naming the missing widths and what to pass.
    """
    missing = [w for w in space.widths if w not in found]
    if missing:
        have = [str(w) for w in sorted(found) if w in space.widths]
        pin = f", or pass --config.widths={','.join(have)}" if have else ""
        raise ValueError(
            f"--supernet {value} holds widths {sorted(found)} but the run "
            f"searches widths {list(space.widths)}: add a supernet of width "
            f"{', '.join(map(str, missing))} (a set DIR with w1.0/ and w1.2/, or "
            f"PATH,PATH: one per width){pin}.")


def load_for_task(directory: str, space: ss.SearchSpace, num_classes: int,
                  key: jax.Array, dropout_rate: float,
                  reset_classifier: bool = False, width: float | None = None):
    """One width's supernet with a fresh classifier when the classes differ or
    `reset_classifier` is set.

    Args:
      directory: an orbax supernet from experiments.convert_ofa (or one
        width of a set), or an official OFA `.pth` file (read directly;
        needs torch).
      space: the run's space (its widths and resolutions); the returned
        model's `space` is this one.
      num_classes: the task's classes.
      key: PRNG key of the fresh classifier.
      dropout_rate: dropout before the classifier during adaptation.
      reset_classifier: re-initialise the classifier even when the class
        count agrees (a different dataset with as many classes).
      width: the width of a `.pth` file (default: from its name, else the
        space's only width).

    Returns:
      (model, variables) with variables {"params", "batch_stats"}.

    Raises:
      FileNotFoundError: no such directory (the message names the converter).
      ValueError: the supernet's space or width is not one of the configured.
    """
    if pathlib.Path(directory).is_file():
        from nat_jax.model import pretrained  # torch only on this path

        if width is None:
            width = (space.widths[0] if len(space.widths) == 1
                     and not _PTH_WIDTH.search(pathlib.Path(directory).name)
                     else pth_width(directory))
        if width not in space.widths:
            raise ValueError(f"{directory} is a width-{width} OFA checkpoint, not "
                             f"of the configured widths {list(space.widths)}.")
        model, variables = pretrained.load_ofa_checkpoint(
            str(directory), width, num_classes, key,
            space=dataclasses.replace(ss.OFA_MBV3, widths=(width,)),
            dropout_rate=dropout_rate)
        if dataclasses.replace(model.space, resolutions=space.resolutions,
                               widths=space.widths) != space:
            raise ValueError(f"{directory} is an OFA MobileNetV3 checkpoint; use "
                             f"--config.space=ofa_mbv3 with it.")
        return model.clone(space=space), variables
    if not pathlib.Path(directory).exists():
        raise FileNotFoundError(
            f"--supernet {directory} does not exist. Download an official OFA "
            f"checkpoint (ofa_mbv3_d234_e346_k357_w1.0 or _w1.2) and convert it: "
            f"python -m experiments.convert_ofa --checkpoint=FILE --width=1.0 "
            f"--output={directory}")
    model, variables = supernet_lib.load_supernet(directory)
    same = dataclasses.replace(model.space, widths=space.widths,
                               resolutions=space.resolutions) == space
    if not same or model.width not in space.widths:
        raise ValueError(f"Supernet {directory} (width {model.width}) does not match "
                         f"the configured search space / widths "
                         f"{list(space.widths)}.")
    model = model.clone(space=space, dropout_rate=dropout_rate)
    if model.num_classes != num_classes or reset_classifier:
        logging.info("Replacing the %d-class classifier with a fresh %d-class one.",
                     model.num_classes, num_classes)
        model = model.clone(num_classes=num_classes)
        params = dict(variables["params"])
        params.update(supernet_lib.init_classifier(model, key))
        variables = {**variables, "params": params}
    return model, variables


@dataclasses.dataclass(frozen=True)
class SupernetSource:
    """Where a run's starting supernets come from (`--config.supernet` and
    the fields that shape the loaded models).

    Attributes:
      value: a `--config.supernet` value (see `sources`); "" = random init.
      reset_classifier: re-initialise the classifier even when the class
        count agrees (paper section 4.4).
      dropout_rate: dropout before the classifier during adaptation.
    """

    value: str
    reset_classifier: bool
    dropout_rate: float


def starting_supernets(source: SupernetSource, space: ss.SearchSpace,
                       num_classes: int, key: jax.Array) -> dict[float, tuple]:
    """The run's starting supernets, one per width of `space`: those of
    `source.value`, else random ones.

    Width w (the i-th of `space.widths`) gets the classifier / random
    initialisation key `fold_in(key, i)`.

    Returns:
      {width: (model, variables)} as `load_for_task`, ascending widths.

    Raises:
      FileNotFoundError, ValueError: see `sources`, `check_covers`,
        `load_for_task` (all one line).
    """
    dropout = source.dropout_rate
    keys = {w: jax.random.fold_in(key, i) for i, w in enumerate(space.widths)}
    if source.value:
        found = sources(source.value)
        check_covers(found, space, source.value)
        return {w: load_for_task(found[w], space, num_classes, keys[w], dropout,
                                 reset_classifier=source.reset_classifier, width=w)
                for w in space.widths}
    logging.warning("No --supernet given: starting from RANDOMLY initialised "
                    "supernets (fine for the CPU demo; for real transfer convert "
                    "ImageNet OFA checkpoints with experiments.convert_ofa).")
    return {w: supernet_lib.init_supernet(space, w, num_classes, keys[w],
                                          dropout_rate=dropout)
            for w in space.widths}
