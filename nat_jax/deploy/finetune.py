"""Fine-tune an extracted subnet on the full training split (NAT section 4.3).

    subnet, variables, net_config, space = inherit(supernet_dir, arch)
    result = finetune(config, workdir, supernet_dir, arch, dataset)  # resumable

Recipe (paper 4.3, EfficientNet-style): RMSProp (decay 0.9, momentum 0.9,
eps 1e-3 inside the square root, TF's accumulator start of 1), weight decay
1e-5 on conv/linear kernels (L2, added to the gradient), cosine learning
rate after a linear warm-up, BatchNorm momentum 0.99 in TF's convention
(0.01 in PyTorch's), dropout 0.2 before the classifier, drop-connect 0.2
(stochastic depth on residual blocks, linear in depth), RandAugment
(`nat_jax.data.randaugment`) on top of the random-resized-crop / flip / jitter
pipeline, label smoothing 0.1 and an exponential moving average of weights
and BN statistics (TF's `min(decay, (1 + t) / (10 + t))` warm-up) that is
evaluated and exported.

Training uses the shared toolkit (`nat_jax.train.training`): its loss,
`TrainState`, the sharded jit over a 1-D ("data",) mesh (batch sharded on
"data", BN statistics of the global batch, state replicated) and the
non-finite guard on every step. Resumable: the state is saved with
`checkpoint.TrainCheckpointer` every `checkpoint_every` steps (a damaged
newest checkpoint falls back to the one before); the batch of step t depends
only on (seed, t), so a resumed run sees the same data as an uninterrupted
one. A workdir holds one run: a rerun with another subnet or config is
refused (`default_workdir` names a folder per subnet).

The subnet's BatchNorm layers update running statistics with PyTorch momentum
0.1 (`nat_jax.model.layers`); the train step rescales that update to `bn_momentum`:
`old + (m / 0.1) * (new - old)` equals `(1 - m) old + m batch` exactly.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import functools
import json
import os
import pathlib
import time
from typing import Any, Mapping

import jax
import numpy as np
import optax
from absl import logging

from nat_jax.data import augment as aug
from nat_jax.data import datasets as data
from nat_jax.data import pipeline
from nat_jax.data.randaugment import RandAugment
from nat_jax.deploy import export
from nat_jax.model import layers, supernet_set
from nat_jax.model import subnet as subnet_lib
from nat_jax.runtime import checkpoint, sharding
from nat_jax.runtime import workdir as workdir_lib
from nat_jax.space import search_space as ss
from nat_jax.train import calibration, evaluation, training


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """Fine-tuning hyper-parameters (paper 4.3 / EfficientNet).

    Built from experiments/configs/finetune.py by `make_config` (every field
    is a config field; `steps` and `warmup_steps` come from epochs there).
    Defaults are those of the config's `paper` variant; `steps` and
    `warmup_steps` depend on the dataset size and have none.

    Attributes:
      steps: training steps (cosine schedule length).
      warmup_steps: linear warm-up steps from learning rate 0.
      batch_size: global batch (a multiple of the device count).
      lr: peak learning rate (EfficientNet's 0.016 per 256 images).
      rmsprop_decay, rmsprop_eps, momentum: RMSProp (paper: 0.9, 1e-3, 0.9).
      weight_decay: L2 on leaves with ndim >= 2 (paper: 1e-5).
      bn_momentum: BatchNorm momentum, PyTorch convention (paper: TF 0.99).
      dropout_rate, drop_connect_rate: paper 0.2 and 0.2.
      label_smoothing: 0.1.
      ema_decay: EMA of weights and BN statistics; 0 keeps no EMA.
      randaug_ops, randaug_magnitude: RandAugment N and M (0..10).
      checkpoint_every, log_every: steps.
      seed: data order, augmentation and dropout.
    """

    steps: int
    warmup_steps: int
    batch_size: int = 128
    lr: float = 0.008
    rmsprop_decay: float = 0.9
    rmsprop_eps: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 1e-5
    bn_momentum: float = 0.01
    dropout_rate: float = 0.2
    drop_connect_rate: float = 0.2
    label_smoothing: float = 0.1
    ema_decay: float = 0.9999
    randaug_ops: int = 2
    randaug_magnitude: float = 9.0
    checkpoint_every: int = 1000
    log_every: int = 100
    seed: int = 0

    def __post_init__(self):
        for name in ("steps", "batch_size", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}.")
        if not 0.0 <= self.bn_momentum <= 1.0 or not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"Need bn_momentum in [0, 1] and ema_decay in [0, 1), "
                             f"got {self.bn_momentum=}, {self.ema_decay=}.")
        for name in ("dropout_rate", "drop_connect_rate", "label_smoothing"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got "
                                 f"{getattr(self, name)}.")


# ------------------------------------------------------------------- inherit
def inherit(supernet_dir: str, arch: ss.Arch, depthwise_impl: str | None = None
            ) -> tuple[subnet_lib.Subnet, dict, dict, ss.SearchSpace]:
    """(subnet, variables, net_config, space) extracted from a saved supernet.

    The weights come from the supernet of the arch's width (NAT section 3.2:
    the width multiplier is the genotype's second gene; each width has its
    own supernet, `nat_jax.model.supernet_set`); only that one is read.

    Args:
      supernet_dir: a transfer workdir, its supernet set (`supernet/` with
        `w1.0/`, `w1.2/`) or one width's `supernet.save_supernet` dir.
      arch: the subnet; its width must be one the set holds and it must fit
        the supernets' search space.
      depthwise_impl: overrides the supernet's depthwise implementation.

    Returns:
      `space` is the set's (`supernet_set.set_space`): the space its genotypes
      (archive, picks) are written in.
    """
    return supernet_set.extract_from_set(supernet_dir, arch, depthwise_impl)


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
        return {"image": aug.to_network_input(x, params),
                "label": labels.astype(np.int32)}

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
def _schedule(cfg: FinetuneConfig) -> optax.Schedule:
    """`training.learning_rate`: linear warm-up from 0 to `lr`, then cosine
    to 0 at `steps`."""
    return functools.partial(training.learning_rate, peak=cfg.lr,
                             total_steps=max(cfg.steps, cfg.warmup_steps + 1),
                             warmup_steps=cfg.warmup_steps)


def _optimizer(cfg: FinetuneConfig) -> optax.GradientTransformation:
    decay_mask = functools.partial(jax.tree.map, lambda p: p.ndim > 1)
    return optax.chain(
        optax.add_decayed_weights(cfg.weight_decay, mask=decay_mask),
        optax.rmsprop(_schedule(cfg), decay=cfg.rmsprop_decay, eps=cfg.rmsprop_eps,
                      initial_scale=1.0, eps_in_sqrt=True, momentum=cfg.momentum))


def create_state(variables: Mapping, cfg: FinetuneConfig) -> training.TrainState:
    """A fresh `training.TrainState` (copies of `variables`; the EMA, kept
    when `ema_decay` > 0, starts at them; dropout keys from `cfg.seed`)."""
    return training.TrainState.create(
        variables, _optimizer(cfg).init(variables["params"]), cfg.seed,
        ema=cfg.ema_decay > 0, total_steps=cfg.steps)


def finetune_step(state: training.TrainState, batch: dict, *,
                  model: subnet_lib.Subnet, config: FinetuneConfig):
    """One RMSProp step (pure; `train` jits it with `training.jit_train_step`).

    Args:
      state: TrainState.
      batch: {"image": float32[B, R, R, 3], "label": int32[B]}.
      model: the Subnet with dropout/drop-connect rates set (static).
      config: FinetuneConfig (static).

    Returns:
      (new state, `training.step_metrics`: {"loss", "top1", "lr",
      "grad_norm"}).
    """
    loss, logits, new_stats, grads = training.loss_and_grads(
        model, state.params, state.batch_stats, batch, state.step_key(),
        config.label_smoothing)
    scale = config.bn_momentum / layers.BN_MOMENTUM
    stats = jax.tree.map(lambda o, n: o + scale * (n - o), state.batch_stats,
                         new_stats)
    updates, opt_state = _optimizer(config).update(grads, state.opt_state,
                                                   state.params)
    params = optax.apply_updates(state.params, updates)
    new = state.replace(step=state.step + 1, params=params, batch_stats=stats,
                        opt_state=opt_state)
    if state.ema_params is not None:
        new = new.replace(
            ema_params=training.update_ema(state.ema_params, params,
                                           config.ema_decay, state.step),
            ema_batch_stats=training.update_ema(state.ema_batch_stats, stats,
                                                config.ema_decay, state.step))
    return new, training.step_metrics(
        loss, training.top1(logits, batch["label"]), _schedule(config)(state.step),
        grads)


def train(state: training.TrainState, model: subnet_lib.Subnet,
          loader: AugmentedLoader, cfg: FinetuneConfig,
          checkpointer: checkpoint.TrainCheckpointer | None = None,
          mesh: jax.sharding.Mesh | None = None, metrics_path: str | None = None,
          until: int | None = None) -> training.TrainState:
    """Runs from `state.step` to `until` (default `cfg.steps`).

    Every step's loss and gradient norm are checked (`training.FiniteGuard`,
    one step late and before each save); every `cfg.log_every` steps and at
    the end a line is logged and appended to `metrics_path`; the state is
    saved to `checkpointer` every `cfg.checkpoint_every` steps and at the end.

    Raises:
      training.NonFiniteError: names the step and the checkpoint kept.
    """
    end = cfg.steps if until is None else min(int(until), cfg.steps)
    mesh = mesh or sharding.data_mesh()
    step_fn = training.jit_train_step(finetune_step, mesh, num_inputs=0,
                                      model=model, config=cfg)
    state = sharding.replicate(state, mesh)
    start, t0 = int(sharding.to_host(state.step)), time.time()
    logging.info("Fine-tuning steps %d..%d of %d (compiling the train step "
                 "first).", start, end, cfg.steps)

    def log(step, m, _):
        done = step + 1
        if done % cfg.log_every and done != cfg.steps:
            return
        row = dict(m, step=done, elapsed_s=time.time() - t0)
        logging.info("step %d: loss %.4f top-1 %.3f lr %.5f", done, m["loss"],
                     m["top1"], m["lr"])
        if metrics_path:
            workdir_lib.append_jsonl(metrics_path, row)

    guard = training.FiniteGuard(lambda step, _: " of fine-tuning", checkpointer,
                                 log)
    for s, batch in loader.iterate(start, end):
        state, m = step_fn(state, sharding.shard_batch(batch, mesh))
        guard.push(s, m)
        done = s + 1
        if checkpointer and (done % cfg.checkpoint_every == 0 or done == end):
            guard.flush()
            # numpy copies: fast, sharding-free files
            checkpointer.save(done, jax.device_get(state), {"step": done})
    guard.flush()
    return state


# ----------------------------------------------------------------------- run
RUN_FILE = "finetune.json"


def default_workdir(supernet_dir: str, arch: ss.Arch, space: ss.SearchSpace,
                    pick: int | None = None) -> str:
    """SUPERNET_DIR/finetune_pickN for `--pick=N`, else a folder named from
    the subnet's printed form (`Arch.to_encoding`), so two subnets never share
    a workdir."""
    name = (f"finetune_pick{pick}" if pick is not None
            else f"finetune_{arch.to_encoding(space)}")
    return os.path.join(supernet_dir, name)


def finetune(cfg: FinetuneConfig, workdir: str, supernet_dir: str, arch: ss.Arch,
             dataset: str, data_dir: str | None = None, eval_batch_size: int = 256,
             calib_images: int = 2000) -> dict:
    """Extract, re-calibrate, evaluate, fine-tune, evaluate, export (resumable).

    Writes WORKDIR/{finetune.json (config, subnet, supernet, dataset), ckpt/,
    metrics.jsonl, result.json, model/ (export.save_subnet of the EMA
    weights, or the raw ones when ema_decay is 0)}. Rerunning continues
    from the newest intact checkpoint; a finished workdir returns its
    result.json, but only to the same run: another subnet or config is
    refused before anything is written or trained. Everything is validated
    before finetune.json is first written.

    Returns:
      {"before": eval dict, "after": eval dict, "after_raw": ..., ...}.

    Raises:
      ValueError: the workdir holds another run, or bad data/subnet/config.
      training.NonFiniteError: a non-finite loss or gradient.
    """
    wd = pathlib.Path(workdir)
    run_info = {"config": dataclasses.asdict(cfg), "arch": dataclasses.asdict(arch),
                "supernet_dir": os.path.abspath(supernet_dir), "dataset": dataset,
                "calib_images": int(calib_images)}
    if (wd / RUN_FILE).exists():  # refuse another run before any work
        workdir_lib.check_config(wd, run_info, RUN_FILE, "fine-tuning run")
        if (wd / "result.json").is_file() and export.is_subnet_dir(str(wd / "model")):
            return json.loads((wd / "result.json").read_text())
    ds = data.load(dataset, data_dir=data_dir)
    sub, variables, net_cfg, space = inherit(supernet_dir, arch)
    if sub.num_classes != ds.num_classes:
        raise ValueError(f"The supernet has {sub.num_classes} classes but {dataset} "
                         f"has {ds.num_classes}; fine-tune the task supernet of a "
                         f"transfer run on the same dataset.")
    if ds.test is None:
        raise ValueError(f"{dataset} has no test split to report accuracy on.")
    mesh = sharding.data_mesh()
    n_dev = mesh.devices.size
    if cfg.batch_size % n_dev:
        raise ValueError(f"batch_size {cfg.batch_size} must be a multiple of the "
                         f"{n_dev} devices.")
    workdir_lib.check_config(wd, run_info, RUN_FILE, "fine-tuning run")
    sub = sub.clone(dropout_rate=cfg.dropout_rate,
                    drop_connect_rate=cfg.drop_connect_rate)
    train_split = data.full_train_split(ds)
    r = arch.resolution
    calib_bs = calibration.batch_size(calib_images, n_dev)
    calib = pipeline.calibration_batches(train_split, r, calib_images, calib_bs,
                                         seed=cfg.seed, num_devices=n_dev)
    variables = evaluation.recalibrate_static_bn(sub, variables, calib)
    before = evaluation.evaluate_static(sub, variables, ds.test, r, eval_batch_size,
                                        mesh)
    logging.info("Inherited weights (BN re-calibrated): test top-1 %.2f%%",
                 before["top1"])
    loader = AugmentedLoader(train_split, cfg.batch_size, r, cfg.seed,
                             RandAugment(cfg.randaug_ops, cfg.randaug_magnitude),
                             num_devices=n_dev)
    state = create_state(variables, cfg)
    t0 = time.time()
    with checkpoint.TrainCheckpointer(wd / "ckpt", max_to_keep=2) as ckpt:
        if ckpt.latest_step() is not None:
            state, _ = ckpt.restore(jax.device_get(state))
            logging.info("Resuming fine-tuning from step %d.", int(state.step))
        state = train(state, sub, loader, cfg, ckpt, mesh, str(wd / "metrics.jsonl"))
    train_s = time.time() - t0
    state = jax.device_get(state)
    use_ema = state.ema_params is not None
    after_raw = evaluation.evaluate_static(sub, state.variables(ema=False), ds.test,
                                           r, eval_batch_size, mesh)
    after = (evaluation.evaluate_static(sub, state.variables(ema=True), ds.test, r,
                                        eval_batch_size, mesh)
             if use_ema else after_raw)
    result = {"dataset": dataset, "before": before, "after": after,
              "after_raw": after_raw, "ema": use_ema, "steps": cfg.steps,
              "train_seconds_this_run": train_s, "num_devices": n_dev,
              "arch": dataclasses.asdict(arch), "encoding": arch.to_encoding(space),
              "net_subnet": arch.to_nat_subnet(space)}
    export.save_subnet(str(wd / "model"), sub.clone(drop_connect_rate=0.0),
                       state.variables(ema=use_ema), net_cfg, arch, space,
                       extra={"dataset": dataset, "test_top1": after["top1"],
                              "test_top5": after["top5"],
                              "test_top1_before_finetune": before["top1"],
                              "finetune_steps": cfg.steps})
    result = json.loads(json.dumps(result))  # what a rerun reads back
    workdir_lib.write_json(wd / "result.json", result)
    return result


def make_config(c: Mapping[str, Any], num_train: int) -> FinetuneConfig:
    """A FinetuneConfig from an experiments/configs/finetune.py dict.

    Every field comes from `c` (none from the dataclass defaults). `steps` > 0
    wins; otherwise steps = epochs * (num_train // batch_size), and
    warmup_steps = warmup_epochs * (num_train // batch_size).
    """
    derived = {"steps", "warmup_steps"}
    names = [f.name for f in dataclasses.fields(FinetuneConfig)]
    missing = [n for n in names if n not in derived and n not in c]
    missing += [n for n in ("epochs", "warmup_epochs") if n not in c]
    if missing:
        raise ValueError(f"The fine-tuning config lacks {', '.join(missing)}; start "
                         f"from experiments/configs/finetune.py.")
    if int(c["batch_size"]) < 1:
        raise ValueError(f"batch_size must be >= 1, got {c['batch_size']}.")
    per_epoch = max(1, num_train // int(c["batch_size"]))
    steps = int(c["steps"]) or int(round(float(c["epochs"]) * per_epoch))
    if steps < 1:
        raise ValueError(f"Fine-tuning needs steps > 0 or epochs > 0, got "
                         f"steps={c['steps']}, epochs={c['epochs']}.")
    kw = {n: c[n] for n in names if n not in derived}
    return FinetuneConfig(
        steps=steps,
        warmup_steps=int(round(float(c["warmup_epochs"]) * per_epoch)), **kw)
