"""The one training toolkit: loss, schedule, SGD, train state, sharded step, guard.

Used by supernet adaptation (`nat_jax.train.adaptation`, NAT section 3.6,
Algorithm 5), OFA's progressive shrinking (`nat_jax.train.progressive_shrinking`)
and fine-tuning an extracted subnet (`nat_jax.deploy.finetune`, section 4.3).
Each of those modules writes its own step as a pure `step(state, batch,
*inputs, model=..., config=...) -> (state, metrics)` from these parts:

  cross_entropy    the label-smoothed softmax cross-entropy (all use 0.1).
  loss_fn          forward pass in train mode (BatchNorm statistics of the
  loss_and_grads   batch, dropout) and a criterion (default: that loss), and
                   its `jax.value_and_grad` in the params.
  learning_rate    the one schedule: linear warm-up, then cosine to an end
                   value (adaptation: no warm-up, 0.01 -> 0; progressive
                   shrinking: OFA's warm-up; fine-tuning: warm-up from 0).
  masked_sgd       PyTorch's SGD restricted to a subnet's weights (adaptation
                   and progressive shrinking); `masked_sgd_update` applies it
                   to a TrainState.
  step_metrics     {"loss", "top1", "lr", "grad_norm"} of a step.
  TrainState       params, batch_stats, opt_state, step, PRNG key and, when a
                   run keeps one, an exponential moving average of the weights.
  jit_train_step   `jax.jit` over a 1-D ("data",) mesh (`nat_jax.runtime.sharding`),
                   cached per (step, mesh, model, config): the batch sharded on
                   "data", everything else replicated, the state donated.
                   BatchNorm statistics are those of the global batch; one CPU,
                   several GPUs, a TPU slice or several hosts run the same code.
  FiniteGuard      checks the loss and gradient norm of EVERY step (one step
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
            label_smoothing: float, model_args: tuple = (),
            criterion: Callable[[jax.Array, jax.Array], jax.Array] | None = None):
    """Train-mode forward pass of `model` and its loss.

    Args:
      model: a Flax module whose `apply(variables, images, *model_args,
        train=True, ...)` returns logits float[B, C] and updates the
        "batch_stats" collection.
      params, batch_stats: its variables.
      batch: {"image": float32[B, R, R, 3], "label": int32[B]}.
      dropout_key: PRNG key of the "dropout" stream.
      label_smoothing: see `cross_entropy`.
      model_args: extra positional inputs (the supernet's subnet arrays).
      criterion: `criterion(logits, labels)` -> scalar loss in place of
        `cross_entropy(logits, labels, label_smoothing)` (progressive
        shrinking's distillation loss).

    Returns:
      (loss, (logits float[B, C], new batch_stats)): differentiate with
      `jax.value_and_grad(..., has_aux=True)` in `params` (`loss_and_grads`).
    """
    logits, upd = model.apply(
        {"params": params, "batch_stats": batch_stats}, batch["image"],
        *model_args, train=True, rngs={"dropout": dropout_key},
        mutable=["batch_stats"])
    if criterion is None:
        loss = cross_entropy(logits, batch["label"], label_smoothing)
    else:
        loss = criterion(logits, batch["label"])
    return loss, (logits, upd["batch_stats"])


def loss_and_grads(model, params, batch_stats, batch: dict, dropout_key: jax.Array,
                   label_smoothing: float, model_args: tuple = (),
                   criterion: Callable | None = None):
    """`loss_fn` and its gradient in `params`.

    Returns:
      (loss, logits, new batch_stats, grads like params).
    """
    (loss, (logits, stats)), grads = jax.value_and_grad(
        functools.partial(loss_fn, model), has_aux=True)(
            params, batch_stats, batch, dropout_key, label_smoothing, model_args,
            criterion)
    return loss, logits, stats, grads


def top1(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Fraction of the batch whose arg-max logit is the label (float scalar)."""
    return jnp.mean(jnp.argmax(logits, -1) == labels)


def step_metrics(loss: jax.Array, top1: jax.Array, lr: jax.Array, grads) -> dict:
    """{"loss", "top1" (batch accuracy, fraction), "lr", "grad_norm"} of a step
    (what `FiniteGuard` checks and the runs log)."""
    return {"loss": loss, "top1": top1, "lr": lr,
            "grad_norm": optax.tree.norm(grads)}


# -------------------------------------------------------------- schedule


def learning_rate(step, peak: float, total_steps: int, *, warmup_steps: int = 0,
                  warmup_from: float = 0.0, end: float = 0.0) -> jax.Array:
    """The learning rate at `step` (0-based): linear warm-up, then cosine.

    With W = `warmup_steps` and T = `total_steps` (the warm-up included):
      step < W:       warmup_from + step / W * (peak - warmup_from)
      W <= step:      end + 0.5 * (peak - end) * (1 + cos(pi * t)),
                      t = min((step - W) / (T - W), 1)
    These are `optax.warmup_cosine_decay_schedule(warmup_from, peak, W, T,
    end)`'s values, written out rather than called: with W = 0 this is bit
    for bit supernet adaptation's float32 cosine (NAT Sec. 4.4: "initialized
    at 0.01 and annealed to zero"), which optax's form rounds differently in
    the last bit at some steps (so runs repeat earlier ones exactly).
    Fine-tuning (Sec. 4.3) warms up from 0; OFA's progressive shrinking
    counts its warm-up steps from 1 (`Phase.learning_rate`).

    Args:
      step: int scalar (Python or traced).
      peak: the rate at the end of the warm-up.
      total_steps: T >= W + 1 (Python int).
      warmup_steps: W >= 0.
      warmup_from: the rate at step 0 when W > 0.
      end: the rate from step T on.

    Returns:
      float32 scalar.
    """
    w, total = int(warmup_steps), int(total_steps)
    if w < 0 or total <= w:
        raise ValueError(f"A schedule needs 0 <= warmup_steps < total_steps, got "
                         f"warmup_steps={warmup_steps}, total_steps={total_steps}.")
    s = jnp.asarray(step, jnp.float32)
    t = jnp.clip((s - w) / (total - w), 0.0, 1.0)
    cosine = end + 0.5 * (peak - end) * (1.0 + jnp.cos(jnp.pi * t))
    if w == 0:
        return cosine
    return jnp.where(s < w, warmup_from + s / w * (peak - warmup_from), cosine)


# -------------------------------------------------------------------- SGD


def masked_sgd(params, grads, momentum, mask, lr, config):
    """PyTorch SGD restricted to a subnet's weights (OFA trains with it).

    Per leaf p with gradient g and momentum buffer b (`torch.optim.SGD`):
      g' = g + weight_decay * p   (only leaves with ndim >= 2: conv/linear
                                   kernels and kernel transforms)
      b' = momentum * b + g'
      p' = p - lr * (g' + momentum * b')  (Nesterov), else p - lr * b'
    where `mask` is True; elsewhere p and b stay exactly as they are (weights
    the sampled subnet does not use keep their value and their momentum).

    Kept as a plain function rather than an optax transformation: written
    as optax updates (`p + (-lr * d)` via `optax.apply_updates`), XLA's
    result differed from this one in the last bits, and runs are meant to
    repeat earlier ones bit for bit.

    Args:
      params, grads, momentum: pytrees of the same structure.
      mask: bool pytree like params (`nat_jax.model.active_weights`).
      lr: scalar learning rate.
      config: has `momentum`, `nesterov`, `weight_decay` (`AdaptConfig`,
        progressive shrinking's `SGDConfig`).

    Returns:
      (new params, new momentum).
    """
    def leaf(p, g, buf, m):
        if p.ndim >= 2 and config.weight_decay:
            g = g + config.weight_decay * p
        new_buf = config.momentum * buf + g
        d = g + config.momentum * new_buf if config.nesterov else new_buf
        return jnp.where(m, p - lr * d, p), jnp.where(m, new_buf, buf)

    both = jax.tree.map(leaf, params, grads, momentum, mask)
    new_p = jax.tree.map(lambda _, t: t[0], params, both)
    new_m = jax.tree.map(lambda _, t: t[1], params, both)
    return new_p, new_m


def masked_sgd_update(state: TrainState, grads, batch_stats, mask, lr,
                      config) -> TrainState:
    """`state` after one `masked_sgd` step (opt_state {"momentum"}): new
    params, momentum and BatchNorm statistics, step + 1."""
    params, momentum = masked_sgd(state.params, grads, state.opt_state["momentum"],
                                  mask, lr, config)
    return state.replace(params=params, batch_stats=batch_stats,
                         opt_state={"momentum": momentum}, step=state.step + 1)


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
    """uint32[2] key data from an int seed, a raw key or a typed key.

    Always a fresh buffer: the train steps donate their state, so two states
    made from one key must not share its array (`key_data` of one typed key
    returns one array, in jax 0.10.2 and 0.12.1 alike; under jax 0.12.1 the
    second width's step then found its key deleted).
    """
    if isinstance(key, int):
        key = jax.random.PRNGKey(key)
    elif jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return jnp.array(key, jnp.uint32, copy=True)


def update_ema(ema: Any, new: Any, decay: float, step: jax.Array) -> Any:
    """`d * ema + (1 - d) * new` with TF's warm-up `d = min(decay, (1 + t) /
    (10 + t))`, t = `step` (the step that produced `new`, from 0)."""
    t = jnp.asarray(step, jnp.float32)
    d = jnp.minimum(decay, (1.0 + t) / (10.0 + t))
    return jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, ema, new)


# ------------------------------------------------------------------ step


@functools.lru_cache(maxsize=32)
def jit_train_step(step_fn: Callable, mesh: jax.sharding.Mesh,
                   num_inputs: int = 1, **static) -> Callable:
    """`step_fn(state, batch, *inputs, **static) -> (state, metrics)` jitted
    over `mesh`.

    The batch (leading axis) is sharded on "data"; the state, the
    `num_inputs` further inputs and both outputs are replicated; the state's
    buffers are donated (use the returned state). With BatchNorm in train
    mode the statistics are those of the global batch, so the result does
    not depend on the device count beyond floating-point reduction order.
    Cached: the same (step_fn, mesh, num_inputs, static), e.g. `model=`,
    `config=` (hashable), gives the same jitted function, so a later call of
    a run reuses its compiled steps.
    """
    repl, data = sharding.replicated(mesh), sharding.batch_sharded(mesh)
    return jax.jit(functools.partial(step_fn, **static),
                   in_shardings=(repl, data) + (repl,) * num_inputs,
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
