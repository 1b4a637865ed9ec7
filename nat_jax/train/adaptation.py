"""Supernet adaptation (NAT paper section 3.6, Algorithm 5, Eq. 3).

Each training step samples one subnet from the archive's per-gene categorical
distribution (Eq. 3), takes a batch at that subnet's resolution and updates
only the weights the subnet uses with SGD (momentum 0.9, weight decay 3e-5 not
on BN or biases, label smoothing 0.1, as OFA), the learning rate cosine
annealed from 0.01 to 0 as a function of the global step (it continues across
NAT iterations and across a resume).

The subnet is traced data (`{"ks", "e", "d"}` int32 arrays), so one compiled
step serves every subnet of a resolution; the resolution gene picks the image
size, so the genotype is sampled on the host first. Loss, train state,
sharded step and the non-finite guard are the shared `nat_jax.train.training`
ones: `jax.jit` over a 1-D `("data",)` mesh, the batch sharded on "data",
the train state replicated; BatchNorm statistics are those of the global
batch.
The same code runs on one CPU, several GPUs, a TPU slice, or several hosts
after `jax.distributed.initialize()`.

Width search: the width multiplier is the genotype's second gene (Sec. 3.2)
and OFA trains one supernet per width, so a run adapts a set of supernets,
{width: model} with {width: TrainState}. Eq. 3 samples the width gene like any
other; global step s trains only the sampled width's supernet (its state's
`step` is set to s first, so its learning rate and dropout key are those of
the global step), and the other widths' parameters, BatchNorm statistics,
optimiser state and step stay bit-identical. One jitted step per (width,
resolution), never per subnet.

Determinism: the subnet and the dropout key of global step s are
`fold_in(key, s)` draws and the loader's batch depends only on its step, so a
resumed run repeats an uninterrupted one bit for bit (same machine, same
device count).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import time
from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from nat_jax.model import supernet
from nat_jax.model.active_weights import active_param_mask
from nat_jax.runtime import sharding
from nat_jax.space import search_space as ss
from nat_jax.train import training


@dataclasses.dataclass(frozen=True)
class AdaptConfig:
    """Adaptation hyperparameters.

    Defaults are the NAT paper's (SGD, momentum 0.9, lr 0.01 annealed to
    zero; section 4.4) and OFA's training code (Nesterov, weight decay,
    label smoothing), the same values as the `paper` variant of
    experiments/configs/transfer.py; runs build this from the config with
    every field given.

    Attributes:
      lr: initial learning rate (paper: 0.01), cosine annealed to `lr_end`
        over `total_steps` (all epochs of all NAT iterations).
      lr_end: final learning rate (paper: 0).
      momentum: SGD momentum.
      nesterov: Nesterov momentum (OFA's `train_ofa_net.py` uses it).
      weight_decay: L2 on conv/linear kernels and kernel-transform matrices
        (leaves with ndim >= 2); BN scale/bias and biases are not decayed
        (OFA's `no_decay_keys="bn#bias"`).
      label_smoothing: cross-entropy label smoothing (OFA: 0.1).
      floor: mixture weight of a uniform distribution added to Eq. 3 (every
        allowed value keeps probability >= `floor / num_allowed`, see
        `gene_distribution`); 0 (the default, the `paper` config) is Eq. 3
        as printed.
      checkpoint_every: save every this many global steps (with a
        checkpointer); the end of `adapt` is always saved.
      exec_mode: how the training step runs the supernet (`Supernet.exec_mode`):
        "switch" (default: only the sampled subnet's branches) or "masked"
        (the largest subnet's work with inactive weights zeroed; one program
        for every subnet, vmappable). Same losses, gradients and BN updates
        (tests/model/test_supernet.py, tests/train/test_adaptation.py). Their
        step times and compile times, against OFA's PyTorch step, are
        measured by benchmarks/supernet_step.py.
    """

    lr: float = 0.01
    lr_end: float = 0.0
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 3e-5
    label_smoothing: float = 0.1
    floor: float = 0.0
    checkpoint_every: int = 200
    exec_mode: str = "switch"

    def __post_init__(self):
        if self.exec_mode not in supernet.EXEC_MODES:
            raise ValueError(f"exec_mode must be one of {supernet.EXEC_MODES}, "
                             f"got {self.exec_mode!r}.")
        if not 0.0 <= self.floor <= 1.0:
            raise ValueError(f"floor must be in [0, 1], got {self.floor}.")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(
                f"label_smoothing must be in [0, 1), got {self.label_smoothing}.")
        if self.checkpoint_every < 1:
            raise ValueError(
                f"checkpoint_every must be >= 1, got {self.checkpoint_every}.")


# ------------------------------------------------------------------ Eq. 3


def gene_distribution(space: ss.SearchSpace, genes, floor: float = 0.0
                      ) -> np.ndarray:
    """Per-gene categorical distribution of an archive (paper Eq. 3).

    Eq. 3: p(X_i = j) = (# of architectures with option j at the i-th
    integer) / (total # of architectures in the archive). NAT builds it from
    the working archive A (the top-ranked subnets, Algorithm 1 line 11), so
    pass A's genotypes, not the whole history.

    With `floor` > 0 (not in the paper) the frequency is mixed with a
    uniform distribution over the values allowed at position i:
    `(1 - floor) * freq + floor / allowed`, so values never seen keep a small
    nonzero probability. Values outside the bounds have probability 0, and
    an empty archive gives the uniform distribution.

    Args:
      space: the search space.
      genes: int[n, num_genes] archive genotypes (n may be 0).
      floor: mixture weight of the uniform part, in [0, 1].

    Returns:
      float32[num_genes, max(upper_bounds) + 1], rows sum to 1.
    """
    if not 0.0 <= floor <= 1.0:
        raise ValueError(f"floor must be in [0, 1], got {floor}.")
    g = np.asarray(genes, dtype=np.int64).reshape(-1, space.num_genes)
    lo, up = space.lower_bounds, space.upper_bounds
    bad = np.argwhere((g < lo) | (g > up))
    if len(bad):
        row, pos = bad[0]
        raise ValueError(
            f"Archive genotype {row} has value {g[row, pos]} at position {pos}; "
            f"allowed {lo[pos]}..{up[pos]}.")
    num_values = int(up.max()) + 1
    values = np.arange(num_values)
    allowed = (values >= lo[:, None]) & (values <= up[:, None])
    uniform = allowed / allowed.sum(1, keepdims=True)
    if len(g) == 0:
        return uniform.astype(np.float32)
    g = space.canonicalize(g.astype(np.int32))
    counts = np.stack([np.bincount(g[:, i], minlength=num_values)
                       for i in range(space.num_genes)])
    freq = counts / len(g)
    return ((1.0 - floor) * freq + floor * uniform).astype(np.float32)


@functools.partial(jax.jit, static_argnames=("space", "n"))
def sample_from_distribution(key: jax.Array, probs: jax.Array,
                             space: ss.SearchSpace, n: int) -> jax.Array:
    """Draw n canonical genotypes, each gene independently from `probs`.

    Values are clipped to the space's bounds (probabilities outside them are
    0 anyway) and each stage's skipped slots are moved to its end
    (`space.canonicalize`), so every draw is a valid canonical genotype.

    Args:
      key: PRNG key.
      probs: float[num_genes, V] per-gene probabilities (`gene_distribution`).
      space: the search space (static).
      n: number of genotypes (static).

    Returns:
      int32[n, num_genes].
    """
    logits = jnp.log(jnp.asarray(probs, jnp.float32))
    genes = jax.random.categorical(key, logits, axis=-1,
                                   shape=(n, space.num_genes))
    genes = jnp.clip(genes, space.lower_bounds[None, :], space.upper_bounds[None, :])
    return space.canonicalize(genes.astype(jnp.int32))


@functools.partial(jax.jit, static_argnames=("space",))
def sample_for_steps(key: jax.Array, probs: jax.Array, space: ss.SearchSpace,
                     steps: jax.Array) -> jax.Array:
    """The genotype of each global step: int32[len(steps), num_genes].

    Step s draws from `fold_in(fold_in(key, s), 0)`, so it depends only on
    (key, probs, s): a resumed run samples the same subnets.
    """
    def one(s):
        k = jax.random.fold_in(jax.random.fold_in(key, s), 0)
        return sample_from_distribution(k, probs, space, 1)[0]
    return jax.vmap(one)(steps)


def fix_width(probs, space: ss.SearchSpace, width: float) -> np.ndarray:
    """`probs` with the width gene (position 1) pinned to `width`.

    Adapting ONE supernet (one width) of a space with several widths samples
    only its width; a set of supernets (`adapt` with {width: state}) samples
    the width gene from Eq. 3 like any other.
    """
    out = np.array(probs, np.float32, copy=True)
    out[1] = 0.0
    out[1, space.width_index(width)] = 1.0
    return out


# ------------------------------------------------------------ training


def create_train_state(model, variables: dict, config: AdaptConfig,
                       total_steps: int, key: jax.Array | int = 0
                       ) -> training.TrainState:
    """A fresh `training.TrainState` at step 0 (no EMA).

    Args:
      model: the `Supernet` (checked to be one).
      variables: {"params", "batch_stats"} from `init_supernet`.
      config: AdaptConfig.
      total_steps: cosine schedule length: iterations x epochs x steps per
        epoch.
      key: PRNG key (typed or raw) or an int seed for subnet/dropout draws.
    """
    if not hasattr(model, "space"):
        raise ValueError("model must be a nat_jax.model.supernet.Supernet.")
    del config  # SGD's state is the momentum, zero at the start
    momentum = jax.tree.map(jnp.zeros_like, variables["params"])
    return training.TrainState.create(variables, {"momentum": momentum}, key,
                                      total_steps=int(total_steps))


def create_train_states(models: Mapping, variables: Mapping, config: AdaptConfig,
                        total_steps: int, key: jax.Array | int = 0
                        ) -> dict[float, training.TrainState]:
    """{width: `create_train_state`} of a set of supernets, all at step 0 with
    the same key (the subnet and dropout draws of global step s do not
    depend on which width is trained).

    Args:
      models, variables: {width: Supernet}, {width: {"params",
        "batch_stats"}} with the same widths.
    """
    if set(models) != set(variables):
        raise ValueError(f"models have widths {sorted(models)} but variables "
                         f"{sorted(variables)}; give both for the same widths.")
    return {w: create_train_state(models[w], variables[w], config, total_steps,
                                  key) for w in sorted(models)}


def global_step(state) -> int:
    """The global step of a TrainState or of a {width: TrainState} set: the
    step after the last one trained (each width's state holds the global
    step after its own last step)."""
    if isinstance(state, Mapping):
        return max(int(sharding.to_host(s.step)) for s in state.values())
    return int(sharding.to_host(state.step))


def state_name(width: float) -> str:
    """Key of a width's state in a checkpoint tree: "w1.0" (orbax wants
    string keys; the same names as `supernet_set.width_dir_name`)."""
    return f"w{float(width)}"


def checkpoint_tree(states: Mapping) -> dict:
    """{width: TrainState} -> {"w1.0": TrainState, ...} (what is saved)."""
    return {state_name(w): s for w, s in states.items()}


def from_checkpoint_tree(tree: Mapping, widths) -> dict:
    """Inverse of `checkpoint_tree` for `widths`."""
    return {float(w): tree[state_name(w)] for w in widths}


def adapt_step(state: training.TrainState, batch: dict, arch: dict, *, model,
               config: AdaptConfig) -> tuple[training.TrainState, dict]:
    """One SGD step of subnet `arch` on `batch` (pure; `jitted_adapt_step`).

    The learning rate is `training.learning_rate` at the global step: cosine
    from `config.lr` to `config.lr_end` over `state.total_steps`, no warm-up.

    Args:
      state: TrainState.
      batch: {"image": float32[B, R, R, 3], "label": int32[B]}.
      arch: {"ks", "e", "d"} int32 arrays of the subnet.
      model: the Supernet (static).
      config: AdaptConfig (static).

    Returns:
      (new state, `training.step_metrics`: {"loss", "top1", "lr",
      "grad_norm"}).
    """
    dropout_key = jax.random.fold_in(state.step_key(), 1)
    loss, logits, batch_stats, grads = training.loss_and_grads(
        model, state.params, state.batch_stats, batch, dropout_key,
        config.label_smoothing, (arch,))
    lr = training.learning_rate(state.step, config.lr, state.total_steps,
                                end=config.lr_end)
    mask = active_param_mask(model.space, model.width, state.params, arch)
    new = training.masked_sgd_update(state, grads, batch_stats, mask, lr, config)
    return new, training.step_metrics(
        loss, training.top1(logits, batch["label"]), lr, grads)


def jitted_adapt_step(model, config: AdaptConfig, mesh: jax.sharding.Mesh):
    """`adapt_step` jitted over `mesh` (`training.jit_train_step`: batch on
    "data", the rest replicated, state donated, cached).

    One compile per resolution (image shape); the subnet is traced. A model
    with exec_mode None runs `config.exec_mode`.
    """
    if model.exec_mode is None:
        model = model.clone(exec_mode=config.exec_mode)
    return training.jit_train_step(adapt_step, mesh, model=model, config=config)


def adapt(state, model, loader, probs, num_steps: int,
          config: AdaptConfig, mesh: jax.sharding.Mesh | None = None,
          checkpointer=None, progress: Callable[[int, dict], None] | None = None
          ):
    """Algorithm 5: `num_steps` steps, each on one subnet drawn from `probs`.

    Per step (host side): the step's genotype (`sample_for_steps`), the
    loader's batch at its resolution, then the jitted step of the
    genotype's width. The loss and gradient norm of every step are checked
    (`training.FiniteGuard`: step s while step s + 1 runs, and before every
    checkpoint), so no non-finite state is saved.

    One supernet (`state` a TrainState, `model` a Supernet): the width gene
    is pinned to the supernet's (`fix_width`). A set of supernets (`state`
    {width: TrainState}, `model` {width: Supernet}, widths = the space's):
    the width gene is sampled from `probs` (Eq. 3) and global step s trains
    only that width's state, with its `step` set to s (the learning rate is
    a function of the global step); the others stay untouched.

    Args:
      state: `training.TrainState` (e.g. `create_train_state` or restored),
        or {width: TrainState} (`create_train_states`); the trained buffers
        are donated to the step (use the returned state).
      model: the Supernet, or {width: Supernet} (every model's `space` the
        same, its widths the keys).
      loader: `nat_jax.data.pipeline.TrainLoader`-like: `.next(resolution)` gives
        {"image", "label"} numpy arrays (the global batch), `.state()`; if
        `.next` takes `next_resolution`, the next step's is announced.
      probs: float[num_genes, V] from `gene_distribution`.
      num_steps: steps to run now.
      config: AdaptConfig.
      mesh: ("data",) mesh (default `sharding.data_mesh()`).
      checkpointer: `nat_jax.runtime.checkpoint.TrainCheckpointer` or None; saves
        every `config.checkpoint_every` global steps and at the end (a set
        is saved as `checkpoint_tree(states)`, restore it with
        `from_checkpoint_tree`).
      progress: called as progress(step, {"loss", "top1", "lr", "genes"})
        after each step's loss is checked.

    Returns:
      (state, metrics), state of the type given, with metrics "steps",
      "loss" (mean), "last_loss", "top1" (mean batch accuracy, %),
      "images_per_s", "data_s", "step_s" (dispatch), "sync_s" (waiting for
      results), "wall_s", "steps_per_width" ({width: steps}).

    Raises:
      training.NonFiniteError (a RuntimeError): non-finite loss or gradient
        norm; names the step, the genotype and the checkpoint that is kept.
      ValueError: a set whose widths are not its space's.
    """
    single = not isinstance(model, Mapping)
    models = {model.width: model} if single else dict(model)
    states = {model.width: state} if single else dict(state)
    space = next(iter(models.values())).space
    if not single:
        if sorted(models) != list(space.widths) or set(states) != set(models):
            raise ValueError(f"adapt needs one model and state per width of the "
                             f"space {list(space.widths)}; got models "
                             f"{sorted(models)}, states {sorted(states)}.")
        if any(m.space != space for m in models.values()):
            raise ValueError("Every supernet of a set must have the same space.")
    mesh = sharding.data_mesh() if mesh is None else mesh
    step_fns = {w: jitted_adapt_step(m, config, mesh) for w, m in models.items()}
    states = {w: sharding.replicate(s, mesh) for w, s in states.items()}
    start = global_step(states)
    if single:
        probs = fix_width(probs, space, model.width)
    key_data = sharding.to_host(next(iter(states.values())).key)
    all_genes = np.asarray(sample_for_steps(
        jax.random.wrap_key_data(key_data), probs, space,
        np.arange(start, start + num_steps, dtype=np.int32)))
    times = {"data_s": 0.0, "step_s": 0.0}
    announce = "next_resolution" in inspect.signature(loader.next).parameters
    losses, accs = [], []
    per_width = {w: 0 for w in models}
    n_images, t_start = 0, time.perf_counter()

    def checked(step, m, genes):
        losses.append(m["loss"])
        accs.append(m["top1"])
        if progress is not None:
            progress(step, {"loss": m["loss"], "top1": m["top1"], "lr": m["lr"],
                            "genes": genes})

    def saved():
        return states[model.width] if single else checkpoint_tree(states)

    guard = training.FiniteGuard(
        lambda step, genes: (f" on subnet genes={genes.tolist()} "
                             f"({space.decode(genes)})"),
        checkpointer, checked)
    for i in range(num_steps):
        step, genes = start + i, all_genes[i]
        t = time.perf_counter()
        res = space.resolutions[int(genes[0])]
        width = space.widths[int(genes[1])]
        if announce and i + 1 < num_steps:  # lets the loader render ahead
            batch = loader.next(res, next_resolution=space.resolutions[
                int(all_genes[i + 1][0])])
        else:
            batch = loader.next(res)
        batch = sharding.shard_batch(
            {"image": batch["image"], "label": batch["label"]}, mesh)
        arch = space.genes_to_arrays(genes)
        st = states[width]
        if not single:  # this width last trained at an earlier global step
            st = st.replace(step=sharding.replicate(
                jnp.asarray(step, jnp.int32), mesh))
        t2 = time.perf_counter()
        times["data_s"] += t2 - t
        states[width], m = step_fns[width](st, batch, arch)
        times["step_s"] += time.perf_counter() - t2
        per_width[width] += 1
        n_images += batch["label"].shape[0]
        guard.push(step, m, genes)
        done = step + 1
        if checkpointer is not None and (done % config.checkpoint_every == 0
                                         or i == num_steps - 1):
            guard.flush()
            checkpointer.save(done, saved(), {"loader": loader.state(),
                                              "global_step": done})
    guard.flush()
    jax.block_until_ready(states)
    wall = time.perf_counter() - t_start
    metrics = {
        "steps": num_steps,
        "loss": float(np.mean(losses)) if losses else math.nan,
        "last_loss": losses[-1] if losses else math.nan,
        "top1": 100.0 * float(np.mean(accs)) if accs else math.nan,
        "images_per_s": n_images / wall if wall > 0 else math.nan,
        "wall_s": wall, "sync_s": guard.sync_s, "steps_per_width": per_width,
        **times,
    }
    return (states[model.width] if single else states), metrics
