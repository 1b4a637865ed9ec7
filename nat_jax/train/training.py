"""The one training toolkit: loss, train state, sharded step, non-finite guard.

Used by supernet adaptation (`nat_jax.train.adaptation`, NAT section 3.6,
Algorithm 5) and by fine-tuning an extracted subnet (`nat_jax.deploy.finetune`,
section 4.3). Each of those modules writes its own update rule (masked SGD,
RMSProp + EMA) as a pure `train_step(state, batch, *inputs) -> (state,
metrics)`; this module holds what they share:

  cross_entropy   the label-smoothed softmax cross-entropy (both use 0.1).
  loss_fn         forward pass in train mode (BatchNorm statistics of the
                  batch, dropout) and that loss, for `jax.value_and_grad`.
  TrainState      params, batch_stats, opt_state, step, PRNG key and, when a
                  run keeps one, an exponential moving average of the weights.
  jit_train_step  `jax.jit` over a 1-D ("data",) mesh (`nat_jax.runtime.sharding`):
                  the batch sharded on "data", everything else replicated,
                  the state donated. BatchNorm statistics are those of the
                  global batch; one CPU, several GPUs, a TPU slice or several
                  hosts run the same code.
  FiniteGuard     checks the loss and gradient norm of EVERY step (one step
                  late, so the host never waits for the step it just
                  dispatched) and before every checkpoint, so a non-finite
                  state is never saved.

Checkpointing is `nat_jax.runtime.checkpoint.TrainCheckpointer`.
"""

from __future__ import annotations

import functools
import math
import time
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax

from nat_jax.runtime import sharding

# ------------------------------------------------------------------ loss


def cross_entropy(logits: jax.Array, labels: jax.Array,
                  label_smoothing: float) -> jax.Array:
    """Mean softmax cross-entropy against label-smoothed one-hot targets.

    Targets are `(1 - eps) * one_hot(label) + eps / C` (eps =
    `label_smoothing`, C classes), as OFA's and EfficientNet's training code.

    Args:
      logits: float[B, C].
      labels: int[B] class indices.
      label_smoothing: eps in [0, 1).

    Returns:
      float32 scalar.
    """
    targets = jax.nn.one_hot(labels, logits.shape[-1])
    targets = optax.smooth_labels(targets, label_smoothing)
    return jnp.mean(optax.softmax_cross_entropy(logits, targets))


def loss_fn(model, params, batch_stats, batch: dict, dropout_key: jax.Array,
            label_smoothing: float, model_args: tuple = ()):
    """Train-mode forward pass of `model` and its smoothed cross-entropy.

    Args:
      model: a Flax module whose `apply(variables, images, *model_args,
        train=True, ...)` returns logits float[B, C] and updates the
        "batch_stats" collection.
      params, batch_stats: its variables.
      batch: {"image": float32[B, R, R, 3], "label": int32[B]}.
      dropout_key: PRNG key of the "dropout" stream.
      label_smoothing: see `cross_entropy`.
      model_args: extra positional inputs (the supernet's subnet arrays).

    Returns:
      (loss, (logits float[B, C], new batch_stats)): differentiate with
      `jax.value_and_grad(..., has_aux=True)` in `params`.
    """
    logits, upd = model.apply(
        {"params": params, "batch_stats": batch_stats}, batch["image"],
        *model_args, train=True, rngs={"dropout": dropout_key},
        mutable=["batch_stats"])
    loss = cross_entropy(logits, batch["label"], label_smoothing)
    return loss, (logits, upd["batch_stats"])


def top1(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Fraction of the batch whose arg-max logit is the label (float scalar)."""
    return jnp.mean(jnp.argmax(logits, -1) == labels)


# ----------------------------------------------------------------- state


@flax.struct.dataclass
class TrainState:
    """Everything a resumed training run needs besides the loader position.

    Attributes:
      params, batch_stats: model variables.
      opt_state: the optimiser's state (a pytree; adaptation:
        {"momentum": like params}, fine-tuning: optax RMSProp's).
      step: int32 scalar, the global step (drives learning-rate schedules).
      key: uint32[2] raw PRNG key data; step s draws from `step_key()`.
      ema_params, ema_batch_stats: exponential moving average of params
        and batch_stats (`update_ema`), or None when the run keeps none.
      total_steps: schedule length (static; adaptation's cosine).
    """

    params: Any
    batch_stats: Any
    opt_state: Any
    step: jax.Array
    key: jax.Array
    ema_params: Any = None
    ema_batch_stats: Any = None
    total_steps: int = flax.struct.field(pytree_node=False, default=1)

    @classmethod
    def create(cls, variables: dict, opt_state: Any, key: jax.Array | int,
               *, ema: bool = False, total_steps: int = 1) -> "TrainState":
        """A state at step 0 holding copies of `variables` (the jitted step
        donates its state, so the caller's arrays stay valid).

        Args:
          variables: {"params", "batch_stats"}.
          opt_state: the optimiser's initial state for `variables["params"]`.
          key: typed or raw PRNG key, or an int seed.
          ema: keep an EMA, starting at `variables`.
          total_steps: schedule length (>= 1).
        """
        if int(total_steps) < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}.")
        copy = functools.partial(jax.tree.map, jnp.copy)
        params, stats = copy(variables["params"]), copy(variables["batch_stats"])
        return cls(params=params, batch_stats=stats, opt_state=opt_state,
                   step=jnp.zeros((), jnp.int32), key=raw_key(key),
                   ema_params=copy(params) if ema else None,
                   ema_batch_stats=copy(stats) if ema else None,
                   total_steps=int(total_steps))

    def variables(self, ema: bool = False) -> dict:
        """{"params", "batch_stats"}: the EMA's if `ema`, else the raw ones."""
        if ema:
            if self.ema_params is None:
                raise ValueError("This train state keeps no EMA; use ema=False.")
            return {"params": self.ema_params, "batch_stats": self.ema_batch_stats}
        return {"params": self.params, "batch_stats": self.batch_stats}

    def step_key(self) -> jax.Array:
        """Typed key of this step: `fold_in(key, step)` (a resumed run repeats
        an uninterrupted one's draws)."""
        return jax.random.fold_in(jax.random.wrap_key_data(self.key), self.step)


def raw_key(key: jax.Array | int) -> jax.Array:
    """uint32[2] key data from an int seed, a raw key or a typed key."""
    if isinstance(key, int):
        key = jax.random.PRNGKey(key)
    elif jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return jnp.asarray(key, jnp.uint32)


def update_ema(ema: Any, new: Any, decay: float, step: jax.Array) -> Any:
    """`d * ema + (1 - d) * new` with TF's warm-up `d = min(decay, (1 + t) /
    (10 + t))`, t = `step` (the step that produced `new`, from 0)."""
    t = jnp.asarray(step, jnp.float32)
    d = jnp.minimum(decay, (1.0 + t) / (10.0 + t))
    return jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, ema, new)


# ------------------------------------------------------------------ step


def jit_train_step(step_fn: Callable, mesh: jax.sharding.Mesh,
                   num_inputs: int = 1) -> Callable:
    """`step_fn(state, batch, *inputs) -> (state, metrics)` jitted over `mesh`.

    The batch (leading axis) is sharded on "data"; the state, the
    `num_inputs` further inputs and both outputs are replicated; the state's
    buffers are donated (use the returned state). With BatchNorm in train
    mode the statistics are those of the global batch, so the result does
    not depend on the device count beyond floating-point reduction order.
    """
    repl, data = sharding.replicated(mesh), sharding.batch_sharded(mesh)
    return jax.jit(step_fn, in_shardings=(repl, data) + (repl,) * num_inputs,
                   out_shardings=(repl, repl), donate_argnums=0)


# ----------------------------------------------------------------- guard


class NonFiniteError(RuntimeError):
    """A training step produced a non-finite loss or gradient norm."""


class FiniteGuard:
    """Checks the loss and gradient norm of every step, one step late.

    Usage per step: dispatch the jitted step, then `push(step, metrics)`;
    `push` first checks the previous step (whose results are ready by then,
    so the host does not stall the device), then holds this one. Call
    `flush()` before saving a checkpoint and after the last step: every
    saved state comes from steps that were all checked.

    Args:
      describe: `describe(step, context)` -> text naming where it happened
        (e.g. " on subnet genes=[...]"), appended to the error message.
      checkpointer: the run's `TrainCheckpointer` (or None); the error
        message says which of its checkpoints is kept.
      on_step: called as `on_step(step, host_metrics, context)` for every
        checked step (progress, logs), in step order.
    """

    def __init__(self, describe: Callable[[int, Any], str] | None = None,
                 checkpointer=None,
                 on_step: Callable[[int, dict, Any], None] | None = None):
        self.describe = describe
        self.checkpointer = checkpointer
        self.on_step = on_step
        self.sync_s = 0.0  # host time spent waiting for step results
        self._pending = None

    def push(self, step: int, metrics: dict, context: Any = None) -> None:
        """Checks the held step, then holds `step` (metrics: device scalars
        with at least "loss" and "grad_norm")."""
        self.flush()
        self._pending = (step, metrics, context)

    def flush(self) -> None:
        """Checks the held step now (raises NonFiniteError)."""
        if self._pending is None:
            return
        step, metrics, context = self._pending
        self._pending = None
        t = time.perf_counter()
        host = {k: float(sharding.to_host(v)) for k, v in metrics.items()}
        self.sync_s += time.perf_counter() - t
        loss, gnorm = host["loss"], host["grad_norm"]
        if not (math.isfinite(loss) and math.isfinite(gnorm)):
            where = self.describe(step, context) if self.describe else ""
            raise NonFiniteError(
                f"Non-finite loss {loss} (gradient norm {gnorm}) at global step "
                f"{step}{where}; training stopped, {self.kept()}.")
        if self.on_step is not None:
            self.on_step(step, host, context)

    def kept(self) -> str:
        """What is on disk: the newest checkpoint's step, or that none exists."""
        if self.checkpointer is None:
            return "nothing was saved (no checkpointer)"
        step = self.checkpointer.latest_step()
        if step is None:
            return (f"no checkpoint exists yet in {self.checkpointer.directory} "
                    "(a rerun starts from the beginning)")
        return (f"checkpoint step {step} in {self.checkpointer.directory} is kept "
                "(a rerun resumes from it)")
