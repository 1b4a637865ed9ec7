"""The supernet a run starts from, fitted to its task's classes.

`load_for_task` reads a converted supernet directory (experiments.convert_ofa)
or an official OFA `.pth` file and replaces the classifier with a fresh one
when the task has other classes or `reset_classifier` is set (paper section
4.4: "the last linear layer is reset"; the saved metadata does not record
the dataset, so the config says it); `from_config` does that for a run's
`--config.supernet`, or initialises a random supernet when none is given.
`resolve` turns "pretrained:NAME" into the supernet shipped under
nat_jax/assets/pretrained/NAME, so a config names it from any cwd.
"""

from __future__ import annotations

import dataclasses
import pathlib

import jax
from absl import logging

from nat_jax import search_space as ss
from nat_jax import supernet as supernet_lib

PRETRAINED_PREFIX = "pretrained:"
PRETRAINED_DIR = pathlib.Path(__file__).resolve().parent / "assets" / "pretrained"


def resolve(name: str) -> str:
    """The path of a `--config.supernet` value.

    "pretrained:small_fashion_mnist/w1.0" is the supernet shipped in the
    package (nat_jax/assets/pretrained/small_fashion_mnist/w1.0), wherever
    the run starts; anything else is returned unchanged.

    Raises:
      FileNotFoundError: "pretrained:NAME" that the package does not ship.
    """
    if not name.startswith(PRETRAINED_PREFIX):
        return name
    rel = name[len(PRETRAINED_PREFIX):].strip("/")
    path = PRETRAINED_DIR / rel
    if not rel or ".." in pathlib.PurePosixPath(rel).parts or not path.is_dir():
        shipped = sorted(str(p.parent.relative_to(PRETRAINED_DIR))
                         for p in PRETRAINED_DIR.glob("*/*/metadata.json"))
        raise FileNotFoundError(f"--supernet {name}: no such shipped supernet; use "
                                f"pretrained:one of {shipped}.")
    return str(path)


def load_for_task(directory: str, space: ss.SearchSpace, num_classes: int,
                  key: jax.Array, dropout_rate: float,
                  reset_classifier: bool = False):
    """A supernet with a fresh classifier when the classes differ or
    `reset_classifier` is set.

    Args:
      directory: an orbax supernet from experiments.convert_ofa, or an
        official OFA `.pth` file (read directly; needs torch).
      space: the run's space (one width; its resolutions).
      num_classes: the task's classes.
      key: PRNG key of the fresh classifier.
      dropout_rate: dropout before the classifier during adaptation.
      reset_classifier: re-initialise the classifier even when the class
        count agrees (a different dataset with as many classes).

    Returns:
      (model, variables) with variables {"params", "batch_stats"}.

    Raises:
      FileNotFoundError: no such directory (the message names the converter).
      ValueError: the supernet's space or width is not the configured one.
    """
    if pathlib.Path(directory).is_file():
        from nat_jax import pretrained  # torch only on this path

        width = space.widths[0]
        model, variables = pretrained.load_ofa_checkpoint(
            str(directory), width, num_classes, key,
            space=dataclasses.replace(ss.OFA_MBV3, widths=(width,)),
            dropout_rate=dropout_rate)
        if dataclasses.replace(model.space, resolutions=space.resolutions) != space:
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
                         f"the configured search space / width {space.widths[0]}.")
    model = model.clone(space=space, dropout_rate=dropout_rate)
    if model.num_classes != num_classes or reset_classifier:
        logging.info("Replacing the %d-class classifier with a fresh %d-class one.",
                     model.num_classes, num_classes)
        model = model.clone(num_classes=num_classes)
        params = dict(variables["params"])
        params.update(supernet_lib.init_classifier(model, key))
        variables = {**variables, "params": params}
    return model, variables


def from_config(config, space: ss.SearchSpace, num_classes: int, key: jax.Array):
    """The run's starting supernet: `config.supernet`, else a random one.

    Returns:
      (model, variables) as `load_for_task`.
    """
    dropout = config.adapt.dropout_rate
    if config.supernet:
        return load_for_task(resolve(config.supernet), space, num_classes, key,
                             dropout, reset_classifier=config.reset_classifier)
    logging.warning("No --supernet given: starting from a RANDOMLY initialised "
                    "supernet (fine for the CPU demo; for real transfer convert an "
                    "ImageNet OFA checkpoint with experiments.convert_ofa).")
    return supernet_lib.init_supernet(space, config.width, num_classes, key,
                                      dropout_rate=dropout)
