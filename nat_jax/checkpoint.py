"""Save and restore pytrees with JSON metadata (orbax).

Layout of a checkpoint directory:

    DIR/metadata.json   JSON dict (what the pytree is: model config, ...)
    DIR/state/          orbax StandardCheckpointer pytree

`save_pytree` / `load_pytree` are generic; `save_supernet` / `load_supernet`
store a supernet's variables with its width, classes and search space.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from nat_jax import search_space as ss

METADATA_FILE = "metadata.json"
STATE_DIR = "state"


def save_pytree(directory: str, tree: Any, metadata: dict) -> None:
    """Write `tree` (arrays) and JSON `metadata` to a new `directory`."""
    directory = os.path.abspath(os.fspath(directory))
    state = os.path.join(directory, STATE_DIR)
    if os.path.exists(state):
        raise ValueError(f"{directory} already holds a checkpoint; choose a new "
                         f"directory.")
    os.makedirs(directory, exist_ok=True)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(state, tree)
    with open(os.path.join(directory, METADATA_FILE), "w") as f:
        json.dump(metadata, f, indent=1, sort_keys=True)


def load_metadata(directory: str) -> dict:
    """The JSON metadata of a checkpoint directory (ValueError if absent/corrupt)."""
    directory = os.path.abspath(os.fspath(directory))
    path = os.path.join(directory, METADATA_FILE)
    if not os.path.isdir(directory):
        raise ValueError(f"Checkpoint directory {directory} does not exist.")
    state = os.path.join(directory, STATE_DIR)
    if not os.path.isfile(path) or not os.path.isdir(state):
        raise ValueError(f"{directory} is not a nat-jax checkpoint (needs "
                         f"{METADATA_FILE} and {STATE_DIR}/).")
    try:
        with open(path) as f:
            meta = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"Corrupt checkpoint metadata {path}: {err}.") from None
    if not isinstance(meta, dict):
        raise ValueError(f"Corrupt checkpoint metadata {path}: not a JSON object.")
    return meta


def load_pytree(directory: str, target: Any | None = None) -> tuple[Any, dict]:
    """(tree, metadata) from `save_pytree`; `target` (arrays or ShapeDtypeStructs)
    fixes structure and shapes."""
    meta = load_metadata(directory)
    state = os.path.join(os.path.abspath(os.fspath(directory)), STATE_DIR)
    abstract = None
    if target is not None:
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), target)
    try:
        with ocp.StandardCheckpointer() as ckptr:
            tree = ckptr.restore(state, abstract)
    except Exception as err:  # orbax raises many types for damaged files
        raise ValueError(f"Cannot restore checkpoint {directory}: "
                         f"{type(err).__name__}: {str(err)[:300]}") from None
    return tree, meta


def space_to_json(space: ss.SearchSpace) -> dict:
    return dataclasses.asdict(space)


def space_from_json(d: dict) -> ss.SearchSpace:
    try:
        net = ss.NetSpec(**{k: tuple(v) if isinstance(v, list) else v
                            for k, v in d["net"].items()})
        rest = {k: tuple(v) for k, v in d.items() if k != "net"}
        return ss.SearchSpace(net=net, **rest)
    except (KeyError, TypeError) as err:
        raise ValueError(f"Corrupt search space in checkpoint metadata: {err!r}.")


def save_supernet(directory: str, model, variables: dict) -> None:
    """Save a `supernet.Supernet` and its variables (params + batch_stats)."""
    meta = {
        "kind": "nat_jax.Supernet",
        "width": model.width,
        "num_classes": model.num_classes,
        "dropout_rate": model.dropout_rate,
        "space": space_to_json(model.space),
    }
    tree = {"params": variables["params"], "batch_stats": variables["batch_stats"]}
    save_pytree(directory, tree, meta)


def load_supernet(directory: str):
    """(model, variables) saved by `save_supernet`."""
    from nat_jax import supernet  # supernet does not import checkpoint

    meta = load_metadata(directory)
    if meta.get("kind") != "nat_jax.Supernet":
        raise ValueError(f"{directory} does not hold a supernet (kind="
                         f"{meta.get('kind')!r}).")
    space = space_from_json(meta["space"])
    model = supernet.Supernet(space, float(meta["width"]), int(meta["num_classes"]),
                              dropout_rate=float(meta.get("dropout_rate", 0.1)))
    shapes = supernet.variable_shapes(model)
    tree, _ = load_pytree(directory, shapes)
    return model, dict(tree)


# ------------------------------------------------- adaptation train state


class TrainCheckpointer:
    """Keep-N orbax CheckpointManager for resumable training (adaptation).

    Each step directory holds the train state pytree ("state", restored onto
    the shardings of a target) and a JSON dict ("extra": the data loader's
    position and anything else JSON-able). Saves are synchronous, so a
    checkpoint on disk is complete once `save` returns.

    Args:
      directory: root directory (created if missing).
      max_to_keep: number of most recent checkpoints kept.
    """

    def __init__(self, directory: str, max_to_keep: int = 3):
        if int(max_to_keep) < 1:
            raise ValueError(f"max_to_keep must be >= 1, got {max_to_keep}.")
        self.directory = os.path.abspath(os.fspath(directory))
        options = ocp.CheckpointManagerOptions(
            max_to_keep=int(max_to_keep), create=True,
            enable_async_checkpointing=False)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def save(self, step: int, state: Any, extra: dict | None = None) -> None:
        """Save `state` (pytree) and JSON `extra` as checkpoint `step`."""
        self._manager.save(int(step), args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            extra=ocp.args.JsonSave(extra or {})), force=True)
        self._manager.wait_until_finished()

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def restore(self, target: Any, step: int | None = None) -> tuple[Any, dict]:
        """(state, extra) of checkpoint `step` (default: latest).

        `target` is a pytree like the saved state (arrays or
        ShapeDtypeStructs, with shardings where they should land).
        """
        step = self.latest_step() if step is None else int(step)
        if step is None:
            raise ValueError(f"No checkpoint under {self.directory}.")

        def abstract(x):
            sharding = getattr(x, "sharding", None)
            return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding)

        out = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(jax.tree.map(abstract, target)),
            extra=ocp.args.JsonRestore()))
        return out["state"], dict(out["extra"] or {})

    def close(self) -> None:
        self._manager.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
