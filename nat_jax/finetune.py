"""Fine-tune an extracted subnet on the full training split (NAT section 4.3).

    model, variables, arch, space = inherit(supernet_dir, arch)  # weights
    result = run(config, workdir, supernet_dir, arch, dataset)     # resumable

Recipe (paper 4.3, EfficientNet-style): RMSProp (decay 0.9, momentum 0.9,
eps 1e-3 inside the square root, TF's accumulator start of 1), weight decay
1e-5 on conv/linear kernels (L2, added to the gradient), cosine learning
rate after a linear warm-up, BatchNorm momentum 0.99 in TF's convention
(0.01 in PyTorch's), dropout 0.2 before the classifier, drop-connect 0.2
(stochastic depth on residual blocks, linear in depth), RandAugment
(`nat_jax.randaugment`) on top of the random-resized-crop / flip / jitter
pipeline, label smoothing 0.1 and an exponential moving average of weights
and BN statistics (TF's `min(decay, (1 + t) / (10 + t))` warm-up) that is
evaluated and exported.

Data parallel: `jax.jit` over a 1-D ("data",) mesh of all devices; the batch
is sharded on "data" (BN statistics cover the global batch), the state is
replicated. Resumable: the train state is saved with orbax every
`checkpoint_every` steps; the batch of step t depends only on (seed, t), so a
resumed run sees the same data as an uninterrupted one.

The subnet's BatchNorm layers update running statistics with PyTorch momentum
0.1 (`nat_jax.layers`); the train step rescales that update to `bn_momentum`:
`old + (m / 0.1) * (new - old)` equals `(1 - m) old + m batch` exactly.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import functools
import json
import math
import os
import pathlib
import time
from typing import Any, Mapping

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from nat_jax import augment as aug
from nat_jax import data, deployment, export, layers, pipeline
from nat_jax import search_space as ss
from nat_jax import subnet as subnet_lib
from nat_jax import supernet as supernet_lib
from nat_jax import sharding
from nat_jax import workdir as workdir_lib
from nat_jax.randaugment import RandAugment


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """Fine-tuning hyper-parameters (defaults: paper 4.3 / EfficientNet)."""

    steps: int = 1000
    batch_size: int = 128
    lr: float = 0.008                  # peak; EfficientNet's 0.016 per 256 images
    warmup_steps: int = 0
    rmsprop_decay: float = 0.9
    rmsprop_eps: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 1e-5
    bn_momentum: float = 0.01          # PyTorch convention (TF: 0.99)
    dropout_rate: float = 0.2
    drop_connect_rate: float = 0.2
    label_smoothing: float = 0.1
    ema_decay: float = 0.9999          # 0 disables the EMA
    randaug_ops: int = 2
    randaug_magnitude: float = 9.0
    checkpoint_every: int = 500
    log_every: int = 50
    seed: int = 0

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"steps and batch_size must be >= 1, got {self.steps=},"
                             f" {self.batch_size=}.")
        if not 0.0 <= self.bn_momentum <= 1.0 or not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"Need bn_momentum in [0, 1] and ema_decay in [0, 1), "
                             f"got {self.bn_momentum=}, {self.ema_decay=}.")
        for name in ("dropout_rate", "drop_connect_rate", "label_smoothing"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got "
                                 f"{getattr(self, name)}.")


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    ema_params: Any
    ema_batch_stats: Any

    def variables(self, ema: bool = True) -> dict:
        if ema:
            return {"params": self.ema_params, "batch_stats": self.ema_batch_stats}
        return {"params": self.params, "batch_stats": self.batch_stats}


# ------------------------------------------------------------------- inherit
def inherit(supernet_dir: str, arch: ss.Arch, depthwise_impl: str | None = None
            ) -> tuple[subnet_lib.Subnet, dict, dict, ss.SearchSpace]:
    """(subnet, variables, net_config, space) extracted from a saved supernet.

    Args:
      supernet_dir: a `supernet.save_supernet` dir or a transfer workdir.
      arch: the subnet; its width must be the supernet's.
    """
    sdir = workdir_lib.resolve_supernet_dir(supernet_dir)
    model, variables = supernet_lib.load_supernet(sdir)
    space = model.space
    try:
        arch.validate(space)
    except ValueError as err:
        raise ValueError(f"Arch does not fit the supernet's search space: {err}"
                         ) from None
    if depthwise_impl is not None:
        model = model.clone(depthwise_impl=depthwise_impl)
    sub, sub_vars, cfg = subnet_lib.extract_subnet(model, variables, arch)
    return sub, sub_vars, cfg, space


# ---------------------------------------------------------------------- data
class AugmentedLoader:
    """Training batches with crop/flip/jitter plus RandAugment; batch t is a
    pure function of (seed, t). Iterating yields from `start_step` on, with
    `prefetch` batches rendered ahead in a thread."""

    def __init__(self, split: data.Split, batch_size: int, resolution: int,
                 seed: int, randaug: RandAugment, num_devices: int = 1,
                 prefetch: int = 2):
        self._order = pipeline.TrainLoader(split, batch_size, seed,
                                           num_devices=num_devices, prefetch=0)
        self.split, self.resolution, self.seed = split, resolution, seed
        self.randaug, self.prefetch = randaug, prefetch

    def batch(self, step: int) -> dict[str, np.ndarray]:
        images, labels = self.split.read(self._order.positions(step))
        rng = np.random.default_rng([self.seed, 1, step])
        params = aug.sample_train_params(rng, np.array([im.shape[:2] for im in images]),
                                         aug.AugmentConfig())
        x = aug.crop_resize(images, params.boxes, self.resolution)
        x = self.randaug(x, np.random.default_rng([self.seed, 3, step]))
        return {"image": aug.finish(x, params), "label": labels.astype(np.int32)}

    def iterate(self, start_step: int, end_step: int):
        with cf.ThreadPoolExecutor(1) as pool:
            first = range(start_step, min(end_step, start_step + self.prefetch))
            futs = {s: pool.submit(self.batch, s) for s in first}
            for s in range(start_step, end_step):
                nxt = s + self.prefetch
                if nxt < end_step:
                    futs[nxt] = pool.submit(self.batch, nxt)
                yield s, futs.pop(s).result()


# -------------------------------------------------------------------- train
def _optimizer(cfg: FinetuneConfig) -> optax.GradientTransformation:
    sched = optax.warmup_cosine_decay_schedule(
        0.0, cfg.lr, max(cfg.warmup_steps, 0), max(cfg.steps, cfg.warmup_steps + 1))
    decay_mask = functools.partial(jax.tree.map, lambda p: p.ndim > 1)
    return optax.chain(
        optax.add_decayed_weights(cfg.weight_decay, mask=decay_mask),
        optax.rmsprop(sched, decay=cfg.rmsprop_decay, eps=cfg.rmsprop_eps,
                      initial_scale=1.0, eps_in_sqrt=True, momentum=cfg.momentum))


def create_state(variables: Mapping, cfg: FinetuneConfig) -> TrainState:
    """A fresh state (the EMA starts at the given weights; own buffers, so the
    jitted step may donate the state)."""
    copy = functools.partial(jax.tree.map, lambda x: jnp.array(x, copy=True))
    params, stats = copy(variables["params"]), copy(variables["batch_stats"])
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      batch_stats=stats, opt_state=_optimizer(cfg).init(params),
                      ema_params=copy(params), ema_batch_stats=copy(stats))


def train_step(state: TrainState, batch: dict, key: jax.Array, *,
               model: subnet_lib.Subnet, cfg: FinetuneConfig):
    """One RMSProp step; returns (state, {"loss", "accuracy", "lr"})."""
    key = jax.random.fold_in(key, state.step)
    labels = jax.nn.one_hot(batch["label"], model.num_classes)
    labels = optax.smooth_labels(labels, cfg.label_smoothing)

    def loss_fn(params):
        logits, upd = model.apply(
            {"params": params, "batch_stats": state.batch_stats}, batch["image"],
            train=True, rngs={"dropout": key}, mutable=["batch_stats"])
        loss = optax.softmax_cross_entropy(logits, labels).mean()
        return loss, (logits, upd["batch_stats"])

    (loss, (logits, new_stats)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state.params)
    scale = cfg.bn_momentum / layers.BN_MOMENTUM
    stats = jax.tree.map(lambda o, n: o + scale * (n - o), state.batch_stats,
                         new_stats)
    tx = _optimizer(cfg)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    t = state.step.astype(jnp.float32)
    d = jnp.minimum(cfg.ema_decay, (1.0 + t) / (10.0 + t))
    ema = functools.partial(jax.tree.map, lambda e, p: d * e + (1.0 - d) * p)
    new = TrainState(step=state.step + 1, params=params, batch_stats=stats,
                     opt_state=opt_state, ema_params=ema(state.ema_params, params),
                     ema_batch_stats=ema(state.ema_batch_stats, stats))
    acc = (jnp.argmax(logits, -1) == batch["label"]).mean()
    lr = optax.warmup_cosine_decay_schedule(
        0.0, cfg.lr, max(cfg.warmup_steps, 0),
        max(cfg.steps, cfg.warmup_steps + 1))(state.step)
    return new, {"loss": loss, "accuracy": acc, "lr": lr}


@functools.lru_cache(maxsize=8)
def jitted_train_step(model, cfg: FinetuneConfig, mesh: jax.sharding.Mesh):
    """`train_step` jitted over `mesh` (batch on "data", the rest replicated)."""
    repl, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    return jax.jit(functools.partial(train_step, model=model, cfg=cfg),
                   in_shardings=(repl, sharded, repl), out_shardings=(repl, repl),
                   donate_argnums=0)


def train(state: TrainState, model: subnet_lib.Subnet, loader: AugmentedLoader,
          cfg: FinetuneConfig, ckpt_dir: str | None = None,
          mesh: jax.sharding.Mesh | None = None, metrics_path: str | None = None,
          until: int | None = None) -> TrainState:
    """Runs from `state.step` to `until` (default `cfg.steps`), checkpointing
    every `cfg.checkpoint_every` steps and at the end to `ckpt_dir`."""
    end = cfg.steps if until is None else min(int(until), cfg.steps)
    mesh = mesh or sharding.data_mesh()
    step_fn = jitted_train_step(model, cfg, mesh)
    state = sharding.replicate(state, mesh)
    key = jax.random.key(cfg.seed)
    mngr = _manager(ckpt_dir) if ckpt_dir else None
    start, t0, last = int(state.step), time.time(), {}
    logging.info("Fine-tuning steps %d..%d of %d (compiling the train step "
                 "first).", start, end, cfg.steps)
    for s, batch in loader.iterate(start, end):
        state, m = step_fn(state, sharding.shard_batch(batch, mesh), key)
        done = s + 1
        if done % cfg.log_every == 0 or done == cfg.steps:
            last = {k: float(v) for k, v in m.items()}
            if not math.isfinite(last["loss"]):
                raise RuntimeError(f"Non-finite loss at fine-tuning step {done}.")
            last.update(step=done, elapsed_s=time.time() - t0)
            logging.info("step %d: loss %.4f acc %.3f lr %.5f", done, last["loss"],
                         last["accuracy"], last["lr"])
            if metrics_path:
                with open(metrics_path, "a") as f:
                    f.write(json.dumps(last) + "\n")
        if mngr and (done % cfg.checkpoint_every == 0 or done == end):
            host = jax.device_get(state)  # numpy: fast, sharding-free files
            mngr.save(done, args=ocp.args.StandardSave(host), force=True)
            mngr.wait_until_finished()
    if mngr:
        mngr.close()
    return state


def _manager(directory: str) -> ocp.CheckpointManager:
    opts = ocp.CheckpointManagerOptions(max_to_keep=2, create=True,
                                        enable_async_checkpointing=False)
    return ocp.CheckpointManager(os.path.abspath(directory), options=opts)


def restore_latest(state: TrainState, ckpt_dir: str) -> TrainState:
    """`state` from the newest checkpoint under `ckpt_dir`, else unchanged."""
    if not os.path.isdir(ckpt_dir):
        return state
    with _manager(ckpt_dir) as mngr:
        step = mngr.latest_step()
        if step is None:
            return state
        logging.info("Resuming fine-tuning from step %d.", step)
        host = jax.device_get(state)
        return mngr.restore(step, args=ocp.args.StandardRestore(host))


# ----------------------------------------------------------------------- run
def run(cfg: FinetuneConfig, workdir: str, supernet_dir: str, arch: ss.Arch,
        dataset: str, data_dir: str | None = None, eval_batch_size: int = 256,
        calib_images: int = 2000) -> dict:
    """Extract, re-calibrate, evaluate, fine-tune, evaluate, export (resumable).

    Writes WORKDIR/{finetune.json (config + arch), ckpt/, metrics.jsonl,
    result.json, model/ (export.save_subnet of the EMA weights, or the raw
    ones when ema_decay is 0)}. Rerunning continues from the last checkpoint;
    a finished workdir returns its result.json.

    Returns:
      {"before": eval dict, "after": eval dict, "after_raw": ..., ...}.
    """
    wd = pathlib.Path(workdir)
    if (wd / "result.json").is_file() and export.is_subnet_dir(str(wd / "model")):
        return json.loads((wd / "result.json").read_text())
    run_info = {"config": dataclasses.asdict(cfg), "arch": dataclasses.asdict(arch),
                "supernet_dir": os.path.abspath(supernet_dir), "dataset": dataset}
    workdir_lib.check_config(wd, run_info, "finetune.json", "fine-tuning run")
    ds = data.load(dataset, data_dir=data_dir)
    sub, variables, net_cfg, space = inherit(supernet_dir, arch)
    if sub.num_classes != ds.num_classes:
        raise ValueError(f"The supernet has {sub.num_classes} classes but {dataset} "
                         f"has {ds.num_classes}; fine-tune the task supernet of a "
                         f"transfer run on the same dataset.")
    if ds.test is None:
        raise ValueError(f"{dataset} has no test split to report accuracy on.")
    sub = sub.clone(dropout_rate=cfg.dropout_rate,
                    drop_connect_rate=cfg.drop_connect_rate)
    train_split = data.full_train_split(ds)
    r = arch.resolution
    mesh = sharding.data_mesh()
    n_dev = mesh.devices.size
    calib_bs = max(n_dev, min(200, calib_images) // n_dev * n_dev)
    variables = deployment.recalibrate_bn(sub, variables, pipeline.calibration_batches(
        train_split, r, calib_images, calib_bs, seed=cfg.seed, num_devices=n_dev))
    before = deployment.evaluate(sub, variables, ds.test, r, eval_batch_size, mesh)
    logging.info("Inherited weights (BN re-calibrated): test top-1 %.2f%%",
                 before["top1"])
    if cfg.batch_size % n_dev:
        raise ValueError(f"batch_size {cfg.batch_size} must be a multiple of the "
                         f"{n_dev} devices.")
    loader = AugmentedLoader(train_split, cfg.batch_size, r, cfg.seed,
                             RandAugment(cfg.randaug_ops, cfg.randaug_magnitude),
                             num_devices=n_dev)
    state = restore_latest(create_state(variables, cfg), str(wd / "ckpt"))
    t0 = time.time()
    state = train(state, sub, loader, cfg, str(wd / "ckpt"), mesh,
                  str(wd / "metrics.jsonl"))
    train_s = time.time() - t0
    state = jax.device_get(state)
    after_raw = deployment.evaluate(sub, state.variables(ema=False), ds.test, r,
                                    eval_batch_size, mesh)
    use_ema = cfg.ema_decay > 0
    after = (deployment.evaluate(sub, state.variables(ema=True), ds.test, r,
                                 eval_batch_size, mesh) if use_ema else after_raw)
    result = {"dataset": dataset, "before": before, "after": after,
              "after_raw": after_raw, "ema": use_ema, "steps": cfg.steps,
              "train_seconds_this_run": train_s, "num_devices": n_dev,
              "arch": dataclasses.asdict(arch), "net_subnet": arch.to_nat_subnet(space)}
    export.save_subnet(str(wd / "model"), sub.clone(drop_connect_rate=0.0),
                       state.variables(ema=use_ema), net_cfg, arch, space,
                       extra={"dataset": dataset, "test_top1": after["top1"],
                              "test_top5": after["top5"],
                              "test_top1_before_finetune": before["top1"],
                              "finetune_steps": cfg.steps})
    result = json.loads(json.dumps(result))  # what a rerun reads back
    (wd / "result.json").write_text(json.dumps(result, indent=1))
    return result


def make_config(c: Mapping[str, Any], num_train: int) -> FinetuneConfig:
    """A FinetuneConfig from an experiments/configs/finetune.py dict.

    `steps` > 0 wins; otherwise steps = epochs * (num_train // batch_size).
    """
    per_epoch = max(1, num_train // int(c["batch_size"]))
    steps = int(c["steps"]) or int(round(float(c["epochs"]) * per_epoch))
    if steps < 1:
        raise ValueError(f"Fine-tuning needs steps > 0 or epochs > 0, got "
                         f"steps={c['steps']}, epochs={c['epochs']}.")
    fields = {f.name for f in dataclasses.fields(FinetuneConfig)}
    kw = {k: c[k] for k in c if k in fields and k != "steps"}
    kw["warmup_steps"] = int(round(float(c.get("warmup_epochs", 0.0)) * per_epoch))
    return FinetuneConfig(steps=steps, **kw)
