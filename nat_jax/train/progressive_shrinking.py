"""Supernet pre-training by OFA's progressive shrinking (NAT Sec. 4.2).

NAT warms its supernet up "following the progressive shrinking algorithm
[OFA], where the supernet is first trained at full-scale, with subnets
corresponding to different options (expand ratio, kernel size, # of layers)
being gradually activated" (NAT Sec. 4.2). Phases (Cai et al., ICLR 2020,
Sec. 3.2, and the `ofa` package's `progressive_shrinking.py`):

  full     the largest subnet, cross-entropy only (it becomes the teacher);
  kernel   kernel sizes elastic: the kernel-transform matrices learn;
  depth_i  elastic depth, the i + 1 largest depths per stage;
  expand_i elastic expand, the i + 1 largest ratios; before each expand
           phase the middle channels are re-ordered by importance
           (`nat_jax.model.reorder`, OFA's `re_organize_middle_weights(i - 1)`).

Every phase but "full" distils from the teacher (the network at the end of
the last phase without distillation), run on the batch in train-mode BN
without dropout as OFA's script does, and accumulates the gradients of
`subnets` subnets per step, each drawn uniformly from the phase's options
(per block kernel and expand, per stage depth), into one SGD step (Nesterov,
weight decay not on BN or biases; `training.masked_sgd` restricted to the
union of the subnets' active weights, so a phase never changes weights no
subnet of it uses, e.g. "full" leaves the transform matrices at identity).
Each phase starts a fresh optimiser (momentum 0) and schedule: `warmup`
epochs from `warmup_lr` to `lr`, then cosine to 0 over `epochs` (OFA's
`warmup_adjust_learning_rate` / `calc_learning_rate`; `Phase.learning_rate`,
on the toolkit's `training.learning_rate`). The input resolution
is drawn per batch from the space's resolutions.

One compiled step per resolution serves every phase: the subnets are traced
arrays stacked to `max_subnets`, a traced count says how many are used
(`lax.cond` skips the rest) and a traced `kd_ratio` switches the teacher.
Determinism: the subnets and resolution of global step s come from
(seed, s), the batch from the loader's step, dropout from fold_in(key, s);
a killed run resumes from its newest checkpoint to the same weights.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from nat_jax.model import reorder
from nat_jax.model.active_weights import active_param_mask
from nat_jax.runtime import checkpoint, sharding
from nat_jax.space import search_space as ss
from nat_jax.train import training

PHASE_KINDS = ("full", "kernel", "depth", "expand")


# ------------------------------------------------------------------- loss


def soft_cross_entropy(logits: jax.Array, soft_targets: jax.Array) -> jax.Array:
    """OFA's `cross_entropy_loss_with_soft_target`: mean_b sum_c -t log_softmax.

    Args:
      logits: float[B, C] student logits.
      soft_targets: float[B, C] target distributions.

    Returns:
      float32 scalar.
    """
    return jnp.mean(jnp.sum(-soft_targets * jax.nn.log_softmax(logits), axis=-1))


def distillation_loss(logits: jax.Array, labels: jax.Array,
                      teacher_logits: jax.Array, kd_ratio: jax.Array | float,
                      label_smoothing: float) -> jax.Array:
    """OFA's training loss with knowledge distillation (kd_type "ce").

    loss = kd_ratio * soft_cross_entropy(logits, softmax(teacher_logits))
           + label-smoothed cross-entropy(logits, labels)

    Args:
      logits: float[B, C]; labels: int[B]; teacher_logits: float[B, C] (no
        gradient flows into them); kd_ratio: scalar (0 = plain CE).
      label_smoothing: eps of `training.cross_entropy`.
    """
    soft = jax.nn.softmax(jax.lax.stop_gradient(teacher_logits), axis=-1)
    return kd_ratio * soft_cross_entropy(logits, soft) + training.cross_entropy(
        logits, labels, label_smoothing)


# ----------------------------------------------------------------- phases


@dataclasses.dataclass(frozen=True)
class Phase:
    """One phase of progressive shrinking.

    Attributes:
      name: "full", "kernel", "depth_<i>" or "expand_<i>" (i >= 1).
      kernels, expands, depths: the choices subnets are drawn from.
      subnets: subnets per step (gradients accumulated).
      epochs, warmup_epochs: cosine epochs and warm-up epochs (may be
        fractional; the phase runs round((epochs + warmup) * steps/epoch)).
      lr, warmup_lr: peak and warm-up start learning rates.
      kd_ratio: distillation weight (0: cross-entropy only).
      reorder_stage: re-order the middle channels with this
        `expand_stage` before the phase, or -1 for no re-ordering.
    """

    name: str
    kernels: tuple[int, ...]
    expands: tuple[int, ...]
    depths: tuple[int, ...]
    subnets: int
    epochs: float
    warmup_epochs: float
    lr: float
    warmup_lr: float
    kd_ratio: float
    reorder_stage: int = -1

    def num_steps(self, steps_per_epoch: int) -> int:
        return max(1, int(round((self.epochs + self.warmup_epochs)
                                * steps_per_epoch)))

    def learning_rate(self, step: int, steps_per_epoch: int) -> jax.Array:
        """OFA's schedule at `step` of this phase (0-based, within the phase).

        Warm-up (step < W = warmup_epochs * steps/epoch): warmup_lr + (step +
        1) / W * (lr - warmup_lr) (OFA's `warmup_adjust_learning_rate` counts
        T_cur = i + 1); then 0.5 * lr * (1 + cos(pi * t / T)), t the step after
        warm-up, T = epochs * steps/epoch (`calc_learning_rate`). Both are
        `training.learning_rate`, the warm-up evaluated one step later.
        """
        w = int(round(self.warmup_epochs * steps_per_epoch))
        total = max(self.num_steps(steps_per_epoch), w + 1)
        return training.learning_rate(step + 1 if step < w else step, self.lr,
                                      total, warmup_steps=w,
                                      warmup_from=self.warmup_lr)


def make_phase(space: ss.SearchSpace, name: str, *, subnets: int, epochs: float,
               warmup_epochs: float, lr: float, warmup_lr: float,
               kd_ratio: float) -> Phase:
    """The `Phase` called `name` in `space` (OFA's options per phase).

    "full": largest kernel, expand, depth; "kernel": all kernels; "depth_i":
    all kernels, the i + 1 largest depths; "expand_i": all kernels and
    depths, the i + 1 largest expand ratios, re-ordered with stage i - 1.
    """
    ks, es, ds = space.kernels, space.expands, space.depths
    kind, _, num = name.partition("_")
    if kind not in PHASE_KINDS or (kind in ("depth", "expand")) != bool(num):
        raise ValueError(f"Unknown phase {name!r}; use full, kernel, depth_I or "
                         f"expand_I (I >= 1).")
    i = int(num) if num.isdigit() else 0
    opts = dict(kernels=ks[-1:], expands=es[-1:], depths=ds[-1:])
    stage = -1
    if kind != "full":
        opts["kernels"] = ks
    if kind == "depth":
        _check_index(name, i, len(ds))
        opts["depths"] = ds[-(i + 1):]
    if kind == "expand":
        _check_index(name, i, len(es))
        opts.update(depths=ds, expands=es[-(i + 1):])
        stage = i - 1
    if int(subnets) < 1:
        raise ValueError(f"Phase {name}: subnets must be >= 1, got {subnets}.")
    return Phase(name, subnets=int(subnets), epochs=float(epochs),
                 warmup_epochs=float(warmup_epochs), lr=float(lr),
                 warmup_lr=float(warmup_lr), kd_ratio=float(kd_ratio),
                 reorder_stage=stage, **opts)


def _check_index(name, i, n):
    if not 1 <= i < n:
        raise ValueError(f"Phase {name}: the index must be in 1..{n - 1} for this "
                         f"space.")


def sample_subnets(space: ss.SearchSpace, phase: Phase, max_subnets: int,
                   seed: int, step: int) -> tuple[int, dict[str, np.ndarray]]:
    """The resolution and subnets of global step `step` (host side, seeded).

    Each subnet takes per block a kernel and an expand ratio and per stage a
    depth, uniformly from the phase's options (OFA's `sample_active_subnet`);
    skipped blocks hold 0. Rows past `phase.subnets` repeat the first (they
    are not run).

    Returns:
      (resolution, {"ks": int32[max_subnets, num_blocks], "e": same,
      "d": int32[max_subnets, num_stages]}).
    """
    rng = np.random.default_rng([int(seed), 7, int(step)])
    res = int(rng.choice(space.resolutions))
    n, nb = space.num_stages, space.num_blocks
    ks = rng.choice(phase.kernels, (phase.subnets, nb))
    es = rng.choice(phase.expands, (phase.subnets, nb))
    ds = rng.choice(phase.depths, (phase.subnets, n))
    pos = np.tile(np.arange(space.max_depth), n)
    active = pos[None] < np.repeat(ds, space.max_depth, axis=1)
    arrays = {"ks": np.where(active, ks, 0), "e": np.where(active, es, 0), "d": ds}
    pad = max_subnets - phase.subnets
    if pad < 0:
        raise ValueError(f"Phase {phase.name} has {phase.subnets} subnets per step "
                         f"but max_subnets is {max_subnets}.")
    return res, {k: np.concatenate([v, np.repeat(v[:1], pad, 0)]).astype(np.int32)
                 for k, v in arrays.items()}


# ------------------------------------------------------------------- step


@dataclasses.dataclass(frozen=True)
class SGDConfig:
    """The optimiser of every phase (OFA: SGD, Nesterov, momentum 0.9,
    weight decay 3e-5 not on BN/biases; label smoothing 0.1)."""

    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 3e-5
    label_smoothing: float = 0.1


def teacher_logits(model, teacher: dict, images: jax.Array) -> jax.Array:
    """The full network's logits on `images` with train-mode BN (batch
    statistics, as OFA's script puts the teacher in train mode), no dropout,
    running statistics discarded."""
    arch = model.space.max_arch(width=model.width).as_arrays()
    logits, _ = model.apply(teacher, images, arch, train=False, bn_mode="train",
                            mutable=["batch_stats"])
    return jax.lax.stop_gradient(logits)


def shrink_step(state: training.TrainState, batch: dict, archs: dict,
                n_active: jax.Array, kd_ratio: jax.Array, lr: jax.Array,
                teacher: dict, *, model, config: SGDConfig
                ) -> tuple[training.TrainState, dict]:
    """One progressive-shrinking step (pure; jit with `training.jit_train_step`).

    The teacher runs once (skipped when kd_ratio == 0); the first `n_active`
    subnets of `archs` run in turn on the batch, each updating the BN running
    statistics, their gradients summed (PyTorch's accumulating `backward`);
    one masked SGD step on the union of their active weights.

    Args:
      state: TrainState (opt_state {"momentum"}).
      batch: {"image": float32[B, R, R, 3], "label": int32[B]}.
      archs: {"ks", "e": int32[S, num_blocks], "d": int32[S, num_stages]}.
      n_active: int32 scalar <= S.
      kd_ratio, lr: float32 scalars.
      teacher: {"params", "batch_stats"} of the teacher.

    Returns:
      (state, `training.step_metrics` with "loss" and "top1" the means over
      the subnets).
    """
    images, labels = batch["image"], batch["label"]
    t_logits = jax.lax.cond(
        kd_ratio > 0, lambda: teacher_logits(model, teacher, images),
        lambda: jnp.zeros((images.shape[0], model.num_classes), jnp.float32))
    criterion = functools.partial(distillation_loss, teacher_logits=t_logits,
                                  kd_ratio=kd_ratio,
                                  label_smoothing=config.label_smoothing)
    zeros = jax.tree.map(jnp.zeros_like, state.params)
    no_mask = jax.tree.map(lambda p: jnp.zeros(p.shape, bool), state.params)

    def body(carry, xs):
        i, arch = xs
        grads, mask, stats, loss_sum, acc_sum = carry

        def run(carry):
            grads, mask, stats, loss_sum, acc_sum = carry
            key = jax.random.fold_in(state.step_key(), i + 1)
            loss, logits, stats, g = training.loss_and_grads(
                model, state.params, stats, batch, key, config.label_smoothing,
                (arch,), criterion)
            m = active_param_mask(model.space, model.width, state.params, arch)
            return (jax.tree.map(jnp.add, grads, g),
                    jax.tree.map(jnp.logical_or, mask, m), stats,
                    loss_sum + loss, acc_sum + training.top1(logits, labels))
        return jax.lax.cond(i < n_active, run, lambda c: c, carry), None

    n_max = archs["d"].shape[0]
    init = (zeros, no_mask, state.batch_stats, jnp.float32(0), jnp.float32(0))
    (grads, mask, stats, loss_sum, acc_sum), _ = jax.lax.scan(
        body, init, (jnp.arange(n_max), archs))
    new = training.masked_sgd_update(state, grads, stats, mask, lr, config)
    n = n_active.astype(jnp.float32)
    return new, training.step_metrics(loss_sum / n, acc_sum / n, lr, grads)


# ------------------------------------------------------------------- loop


def _copy(tree):
    return jax.tree.map(lambda x: jnp.array(x, copy=True), tree)


def run_phases(model, variables: dict, phases: Sequence[Phase], loader,
               steps_per_epoch: int, workdir: str, *, seed: int = 0,
               config: SGDConfig = SGDConfig(), mesh=None,
               checkpoint_every: int = 100,
               on_phase_start: Callable[[Phase, int, int], None] | None = None,
               on_step: Callable[[int, Phase, int, dict], None] | None = None,
               on_phase_end: Callable[[Phase, dict, dict], None] | None = None,
               stop_after: int | None = None) -> dict:
    """Runs (or resumes) `phases` in order; returns the final variables.

    Layout of `workdir`: `ckpt/` (`checkpoint.TrainCheckpointer`: the train
    state and the loader position), `teacher/` (the teacher's variables,
    written when the first distilling phase starts).

    Args:
      model: the `Supernet`; variables: its initial {"params", "batch_stats"}
        (ignored when a checkpoint exists).
      phases: from `make_phase`.
      loader: `pipeline.TrainLoader` at step 0 (restored to the checkpoint's
        step here); its `steps_per_epoch` is `steps_per_epoch`.
      seed: subnet/resolution draws and the dropout key.
      checkpoint_every: save every this many global steps and at each
        phase end.
      on_phase_start: on_phase_start(phase, first step, steps) before a
        phase's first step (also a resumed one's).
      on_step: on_step(global_step, phase, phase_step, host metrics) after
        each step's loss is checked.
      on_phase_end: on_phase_end(phase, variables, info) after each phase.
      stop_after: stop (after a checkpoint) once this global step is done
        (tests of resuming).

    Raises:
      training.NonFiniteError: a non-finite loss or gradient norm.
    """
    space = model.space
    mesh = sharding.data_mesh() if mesh is None else mesh
    lengths = [p.num_steps(steps_per_epoch) for p in phases]
    starts = np.concatenate([[0], np.cumsum(lengths)]).astype(int)
    max_subnets = max(p.subnets for p in phases)
    ckpt = checkpoint.TrainCheckpointer(os.path.join(workdir, "ckpt"))
    teacher_dir = os.path.join(workdir, "teacher")
    momentum = jax.tree.map(jnp.zeros_like, variables["params"])
    state = training.TrainState.create(variables, {"momentum": momentum}, seed,
                                       total_steps=int(starts[-1]))
    state = sharding.replicate(state, mesh)
    if ckpt.latest_step() is not None:
        state, extra = ckpt.restore(state)
        loader.step = int(extra["loader"]["step"])
    teacher = None
    if os.path.isdir(teacher_dir):
        teacher, _ = checkpoint.load_pytree(teacher_dir, variables)
        teacher = sharding.replicate(dict(teacher), mesh)
    step_fn = training.jit_train_step(shrink_step, mesh, num_inputs=5,
                                      model=model, config=config)
    done = int(sharding.to_host(state.step))
    guard = training.FiniteGuard(
        lambda s, ctx: f" in phase {ctx[0].name}", ckpt,
        lambda s, m, ctx: on_step and on_step(s, ctx[0], ctx[1], m))
    for p_idx, phase in enumerate(phases):
        if done >= starts[p_idx + 1]:
            continue
        k0 = done - int(starts[p_idx])
        if k0 == 0:  # a fresh phase: new optimiser, re-ordering, teacher
            params, stats = state.params, state.batch_stats
            if phase.reorder_stage >= 0:
                v = reorder.reorder_middle({"params": params, "batch_stats": stats},
                                           space, model.width, phase.reorder_stage)
                params, stats = v["params"], v["batch_stats"]
            state = sharding.replicate(state.replace(
                params=params, batch_stats=stats,
                opt_state={"momentum": jax.tree.map(jnp.zeros_like, params)}), mesh)
        if phase.kd_ratio > 0 and teacher is None:
            teacher = _copy(state.variables())
            checkpoint.save_pytree(teacher_dir, jax.device_get(teacher),
                                   {"kind": "nat_jax.pretrain.teacher",
                                    "phase": phase.name})
        # not used when kd_ratio == 0, but never the donated state's buffers
        tvars = teacher if teacher is not None else _copy(state.variables())
        if on_phase_start is not None:
            on_phase_start(phase, k0, lengths[p_idx])
        n_active = jnp.int32(phase.subnets)
        kd = jnp.float32(phase.kd_ratio)
        t0 = time.perf_counter()
        for k in range(k0, lengths[p_idx]):
            g = int(starts[p_idx]) + k
            res, archs = sample_subnets(space, phase, max_subnets, seed, g)
            batch = loader.next(res)
            batch = sharding.shard_batch(
                {"image": batch["image"], "label": batch["label"]}, mesh)
            lr = jnp.float32(phase.learning_rate(k, steps_per_epoch))
            state, m = step_fn(state, batch, archs, n_active, kd, lr, tvars)
            guard.push(g, m, (phase, k))
            done = g + 1
            end = k == lengths[p_idx] - 1
            if done % checkpoint_every == 0 or end or done == stop_after:
                guard.flush()
                ckpt.save(done, state, {"loader": loader.state(),
                                        "phase": phase.name})
            if done == stop_after:
                guard.flush()
                return jax.device_get(state.variables())
        guard.flush()
        if on_phase_end is not None:
            on_phase_end(phase, jax.device_get(state.variables()),
                         {"steps": lengths[p_idx], "global_step": done,
                          "wall_s": time.perf_counter() - t0})
    guard.flush()
    return jax.device_get(state.variables())


def corner_genes(space: ss.SearchSpace, width: float, resolution: int
                 ) -> dict[str, np.ndarray]:
    """Genotypes of OFA's validation corners at `resolution`: the smallest and
    the largest subnet, and the largest kernel/expand at the smallest depth."""
    nb, ns = space.num_blocks, space.num_stages
    out = {}
    for name, k, e, d in (("min", 0, 0, 0), ("max", -1, -1, -1),
                          ("max_ke_min_d", -1, -1, 0)):
        arch = ss.Arch.from_ofa([space.kernels[k]] * nb, [space.expands[e]] * nb,
                                [space.depths[d]] * ns, resolution, width, space)
        out[name] = np.asarray(space.encode(arch))
    return out
