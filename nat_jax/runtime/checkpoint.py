"""Save and restore pytrees with JSON metadata (orbax).

Layout of a checkpoint directory:

    DIR/metadata.json   JSON dict (what the pytree is: model config, ...)
    DIR/state/          orbax StandardCheckpointer pytree

`save_pytree` / `load_pytree` are generic (the supernet, subnet and latency
modules build their own directory kinds on them); `TrainCheckpointer` is the
one resumable train-state manager (adaptation and fine-tuning). Orbax's
INFO logs (dozens of lines per checkpoint) are dropped around its calls;
its warnings and errors still show. This module imports nothing else from
nat_jax.
"""

from __future__ import annotations

import contextlib
import json
import logging as py_logging
import os
import sys
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

METADATA_FILE = "metadata.json"
STATE_DIR = "state"


class DropOrbaxInfo(py_logging.Filter):
    """Drops records below WARNING that orbax logs (dozens per checkpoint).

    The one orbax log filter: `quiet_orbax` puts it on the absl logger around
    this module's orbax calls; `experiments.cli.quiet_library_logs` puts it on
    the log handlers of an entry point.
    """

    def filter(self, record: py_logging.LogRecord) -> bool:
        return record.levelno >= py_logging.WARNING or "orbax" not in record.pathname


_ORBAX_FILTER = DropOrbaxInfo()
_quiet_depth = [0]


@contextlib.contextmanager
def quiet_orbax():
    """Within the block, orbax's INFO/DEBUG records on the absl logger are
    dropped (orbax logs through absl); warnings and errors pass."""
    logger = py_logging.getLogger("absl")
    if _quiet_depth[0] == 0:
        logger.addFilter(_ORBAX_FILTER)
    _quiet_depth[0] += 1
    try:
        yield
    finally:
        _quiet_depth[0] -= 1
        if _quiet_depth[0] == 0:
            logger.removeFilter(_ORBAX_FILTER)


def save_pytree(directory: str, tree: Any, metadata: dict) -> None:
    """Write `tree` (arrays) and JSON `metadata` to a new `directory`."""
    directory = os.path.abspath(os.fspath(directory))
    state = os.path.join(directory, STATE_DIR)
    if os.path.exists(state):
        raise ValueError(f"{directory} already holds a checkpoint; choose a new "
                         f"directory.")
    os.makedirs(directory, exist_ok=True)
    with quiet_orbax(), ocp.StandardCheckpointer() as ckptr:
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
        with quiet_orbax(), ocp.StandardCheckpointer() as ckptr:
            tree = ckptr.restore(state, abstract)
    except Exception as err:  # orbax raises many types for damaged files
        raise ValueError(f"Cannot restore checkpoint {directory}: "
                         f"{type(err).__name__}: {str(err)[:300]}") from None
    return tree, meta


# ------------------------------------------------------ train state


class TrainCheckpointer:
    """Keep-N orbax CheckpointManager for resumable training.

    Each step directory holds the train state pytree ("state", restored onto
    the shardings of a target) and a JSON dict ("extra": the data loader's
    position and anything else JSON-able). Saves are synchronous, so a
    checkpoint on disk is complete once `save` returns. A damaged newest
    checkpoint does not block resuming: `restore` falls back to the newest
    intact one with a one-line warning naming the damaged ones.

    Args:
      directory: root directory (created if missing).
      max_to_keep: number of most recent checkpoints kept.
    """

    def __init__(self, directory: str | os.PathLike, max_to_keep: int = 3):
        if int(max_to_keep) < 1:
            raise ValueError(f"max_to_keep must be >= 1, got {max_to_keep}.")
        self.directory = os.path.abspath(os.fspath(directory))
        options = ocp.CheckpointManagerOptions(
            max_to_keep=int(max_to_keep), create=True,
            enable_async_checkpointing=False)
        with quiet_orbax():
            self._manager = ocp.CheckpointManager(self.directory, options=options)

    def save(self, step: int, state: Any, extra: dict | None = None) -> None:
        """Save `state` (pytree) and JSON `extra` as checkpoint `step`.

        An existing checkpoint of the same step (one a restore skipped as
        damaged, then trained past again) is replaced.
        """
        step = int(step)
        with quiet_orbax():
            if step in self._manager.all_steps():
                self._manager.delete(step)
            self._manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                extra=ocp.args.JsonSave(extra or {})), force=True)
            self._manager.wait_until_finished()

    def latest_step(self) -> int | None:
        """The newest checkpoint's step (intact or not), None if there is none."""
        with quiet_orbax():
            return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """Steps of the checkpoints on disk, ascending."""
        with quiet_orbax():
            return sorted(self._manager.all_steps())

    def restore(self, target: Any, step: int | None = None) -> tuple[Any, dict]:
        """(state, extra) of checkpoint `step`, default: the newest intact one.

        Args:
          target: a pytree like the saved state (arrays or ShapeDtypeStructs,
            with shardings where they should land).
          step: a given step (no fallback), or None.

        Raises:
          ValueError: no checkpoint, or none can be read (names each step
            and the first error).
        """
        if step is not None:
            return self._restore(target, int(step))
        steps = sorted(self.all_steps(), reverse=True)
        if not steps:
            raise ValueError(f"No checkpoint under {self.directory}.")
        damaged = []
        for s in steps:
            try:
                out = self._restore(target, s)
            except Exception as err:  # orbax raises many types for damaged files
                damaged.append((s, err))
                continue
            if damaged:
                logging.warning(
                    "Checkpoint step %s in %s is damaged (%s); resuming from "
                    "step %d.", ", ".join(str(d) for d, _ in damaged),
                    self.directory, _short(damaged[0][1]), s)
            return out
        raise ValueError(
            f"No intact checkpoint in {self.directory}: steps "
            f"{', '.join(str(d) for d, _ in damaged)} are damaged "
            f"({_short(damaged[0][1])}); delete the directory to start over.")

    def _restore(self, target: Any, step: int) -> tuple[Any, dict]:
        _drop_closed_loop_noise()

        def abstract(x):
            sharding = getattr(x, "sharding", None)
            return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding)

        with quiet_orbax():
            out = self._manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(jax.tree.map(abstract, target)),
                extra=ocp.args.JsonRestore()))
        return out["state"], dict(out["extra"] or {})

    def close(self) -> None:
        with quiet_orbax():
            self._manager.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _short(err: Exception) -> str:
    """`Type: first line of the message`, at most ~160 characters."""
    lines = str(err).strip().splitlines()
    msg = lines[0] if lines else ""
    msg = msg if len(msg) <= 140 else msg[:137] + "..."
    return f"{type(err).__name__}: {msg}"


def _drop_closed_loop_noise() -> None:
    """Silences the "Event loop is closed" tracebacks of a failed restore.

    When orbax's read of a damaged checkpoint fails, tensorstore callbacks
    still pending on other threads later hit the closed asyncio loop, and
    Python prints each as an unraisable-exception traceback (the error
    itself is reported by `TrainCheckpointer.restore`). This wraps
    `sys.unraisablehook` once to drop exactly that RuntimeError; every other
    unraisable exception still reaches the previous hook.
    """
    prev = sys.unraisablehook
    if getattr(prev, "drops_closed_loop", False):
        return

    def hook(unraisable):
        exc = unraisable.exc_value
        if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
            return
        prev(unraisable)

    hook.drops_closed_loop = True
    sys.unraisablehook = hook
