"""Device mesh and sharding helpers: the one place that places data on devices.

Data parallelism in nat-jax is `jax.jit` over a 1-D `("data",)` mesh: batches
are sharded on their leading axis, variables and optimiser state replicated.
The same code runs on one CPU, several GPUs, a TPU slice, or several hosts
after `jax.distributed.initialize()` (every host then holds the same global
batch and contributes the rows of its own devices).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

DATA = P("data")
REPLICATED = P()


def data_mesh(devices=None) -> jax.sharding.Mesh:
    """1-D ("data",) mesh over `devices` (default: all devices of all hosts).

    Built with `Mesh` directly: `jax.make_mesh` would default to Explicit axes.
    """
    devices = jax.devices() if devices is None else list(devices)
    return jax.sharding.Mesh(np.asarray(devices), ("data",))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
    """The sharding that puts a full copy on every device of `mesh`."""
    return NamedSharding(mesh, REPLICATED)


def batch_sharded(mesh: jax.sharding.Mesh) -> NamedSharding:
    """The sharding that splits the leading axis over the "data" axis."""
    return NamedSharding(mesh, DATA)


def replicate(tree: Any, mesh: jax.sharding.Mesh) -> Any:
    """Put a pytree on every device of `mesh` (replicated)."""
    return jax.device_put(tree, replicated(mesh))


def shard_batch(batch: Any, mesh: jax.sharding.Mesh) -> Any:
    """Shard the leading (batch) axis of every array over the "data" axis.

    With several processes every host holds the same global batch (same
    loader seed) and contributes the rows of its own devices.
    """
    sharding = batch_sharded(mesh)
    if jax.process_count() == 1:
        return jax.device_put(batch, sharding)
    n_proc, idx = jax.process_count(), jax.process_index()

    def put(x):
        x = np.asarray(x)
        per = x.shape[0] // n_proc
        return jax.make_array_from_process_local_data(
            sharding, x[idx * per:(idx + 1) * per], x.shape)
    return jax.tree.map(put, batch)


def shard_or_replicate(x, mesh: jax.sharding.Mesh) -> jax.Array:
    """float32 images sharded on "data" when they split evenly, else replicated."""
    x = np.asarray(x, np.float32)
    if x.shape[0] % mesh.size == 0:
        return shard_batch(x, mesh)
    return jax.device_put(x, replicated(mesh))


def to_host(x) -> np.ndarray:
    """Host copy of a replicated array (also when it spans several hosts)."""
    if isinstance(x, jax.Array):
        return np.asarray(x.addressable_data(0))
    return np.asarray(x)


def round_batch(batch_size: int, mesh: jax.sharding.Mesh) -> int:
    """The largest multiple of the device count <= batch_size (at least one each)."""
    n = mesh.size
    return max(n, batch_size // n * n)
