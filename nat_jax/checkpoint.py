"""Save and restore pytrees with JSON metadata (orbax).

Layout of a checkpoint directory:

    DIR/metadata.json   JSON dict (what the pytree is: model config, ...)
    DIR/state/          orbax StandardCheckpointer pytree

`save_pytree` / `load_pytree` are generic (the supernet, subnet and latency
modules build their own directory kinds on them); `TrainCheckpointer` is the
one resumable train-state manager (adaptation, fine-tuning, pretraining).
This module imports nothing else from nat_jax.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

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
