"""The pre-training run: OFA's progressive shrinking per width (NAT Sec. 4.2).

    summary = pretrain(config, workdir)      # resumable; experiments.pretrain

NAT starts from a supernet "warm-up ... following the progressive shrinking
algorithm" (Sec. 4.2); this is that run, on the phase and step machinery of
`nat_jax.train.progressive_shrinking`. `config` is an
experiments/configs/pretrain.py ConfigDict. One supernet per width of the
space (`config.widths`, default all; NAT Sec. 3.2: the width multiplier is
a gene and OFA trains one supernet per width), each trained through the
phases of `config.phase_order` and written with `supernet.save_supernet` to
`<output>/w<width>` (output defaults to the workdir), which
`experiments.transfer --supernet=` reads directly.

Workdir: `config.json` (a rerun with another config is refused),
`train/w<width>/{ckpt/, teacher/, metrics.jsonl, tb/, summary.json}` and
`summary.json`. Rerunning the same config resumes each width from its newest
checkpoint; a finished width (its summary and supernet written) is skipped.
After each phase the corner subnets (`progressive_shrinking.corner_genes`)
are evaluated on `config.eval_images` validation images at the largest
resolution; with `config.test_corners` every resolution's corners on the
test split at the end.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import jax
from absl import logging

from nat_jax.data import augment, pipeline
from nat_jax.data import datasets as data
from nat_jax.model import supernet as supernet_lib
from nat_jax.runtime import progress as progress_lib
from nat_jax.runtime import sharding, tb_events
from nat_jax.runtime import workdir as wd_lib
from nat_jax.space import search_space as ss
from nat_jax.train import calibration, evaluation
from nat_jax.train import progressive_shrinking as ps


def space_and_widths(config) -> tuple[ss.SearchSpace, tuple[float, ...]]:
    """The run's space (restricted to `config.resolutions` when given) and
    the widths to pre-train (`config.widths`, default the space's).

    Raises:
      ValueError: an unknown space, or a resolution or width not in it.
    """
    space = ss.get_space(config.space)
    if config.resolutions:
        for r in config.resolutions:
            space.resolution_index(r)
        space = dataclasses.replace(space, resolutions=tuple(config.resolutions))
    widths = tuple(float(w) for w in config.widths) or space.widths
    for w in widths:
        space.width_index(w)
    return space, widths


def phases_from_config(config, space: ss.SearchSpace) -> list[ps.Phase]:
    """The `ps.Phase`s of `config.phase_order`, learning rates scaled by
    batch_size / lr_scale_batch (OFA scales per 64-image worker).

    Raises:
      ValueError: a phase name without its `config.phases` entry, or a bad
        phase (`ps.make_phase`).
    """
    scale = config.batch_size / config.lr_scale_batch
    out = []
    for name in config.phase_order:
        if name not in config.phases:
            raise ValueError(f"config.phase_order names {name!r}, which has no "
                             f"config.phases.{name}; add it or drop the name.")
        p = config.phases[name]
        out.append(ps.make_phase(
            space, name, subnets=p.subnets, epochs=p.epochs,
            warmup_epochs=p.warmup_epochs, lr=p.base_lr * scale,
            warmup_lr=p.base_lr, kd_ratio=p.kd_ratio))
    return out


def evaluate_corners(model, variables, space: ss.SearchSpace, split: data.Split,
                     calib_split: data.Split, config, resolutions) -> dict:
    """{"<corner>@<res>": top-1 %} of the corner subnets on `split` (BN
    re-calibrated on `calib_split`)."""
    ecfg = evaluation.EvalConfig(batch_size=config.eval_batch_size,
                                 calib_images=config.calib_images,
                                 calib_batch_size=calibration.batch_size(
                                     config.calib_images))
    names, genes = [], []
    for r in resolutions:
        for name, g in ps.corner_genes(space, model.width, r).items():
            names.append(f"{name}@{r}")
            genes.append(g)
    res = evaluation.evaluate_subnets(model, variables, genes, space, split,
                                      calib_split, ecfg)
    return {n: r["top1"] for n, r in zip(names, res)}


def pretrain_width(config, space: ss.SearchSpace, dataset: data.Dataset,
                   workdir: str, width: float, phases: list[ps.Phase]) -> dict:
    """Pre-trains (or resumes, or skips when finished) the supernet of one
    width; returns its summary {"width", "supernet", "train_s", "steps"[,
    "test_top1"]}."""
    out_dir = os.path.join(config.output or workdir, f"w{width}")
    train_dir = os.path.join(workdir, "train", f"w{width}")
    os.makedirs(train_dir, exist_ok=True)
    summary_path = os.path.join(train_dir, "summary.json")
    if os.path.isfile(summary_path) and os.path.isdir(out_dir):
        logging.info("Width %s is finished (%s); skipping.", width, out_dir)
        with open(summary_path) as f:
            return json.load(f)
    mesh = sharding.data_mesh()
    num_classes = config.num_classes or dataset.num_classes
    model, variables = supernet_lib.init_supernet(
        space, width, num_classes, jax.random.key(config.seed),
        dropout_rate=config.dropout_rate, exec_mode="masked")
    batch = sharding.round_batch(config.batch_size, mesh)
    loader = pipeline.TrainLoader(
        dataset.train, batch, config.seed,
        augment=augment.AugmentConfig(min_scale=config.min_crop_scale),
        num_devices=mesh.size)
    spe = loader.steps_per_epoch
    if config.max_steps_per_epoch:
        spe = min(spe, config.max_steps_per_epoch)
    metrics_path = os.path.join(train_dir, "metrics.jsonl")
    tb = os.path.join(train_dir, "tb")
    progress = {}

    def on_phase_start(phase, first, steps):
        progress[phase.name] = progress_lib.Progress(f"w{width} {phase.name}", steps)
        if first:
            logging.info("w%s %s: resuming at step %d/%d", width, phase.name,
                         first, steps)

    def on_step(step, phase, k, m):
        progress[phase.name].update(k + 1, f"loss {m['loss']:.3f} top1 "
                                    f"{100 * m['top1']:.1f}% lr {m['lr']:.4f}")
        if (step + 1) % 10 == 0:
            row = {"step": step + 1, "phase": phase.name, **m}
            wd_lib.append_jsonl(metrics_path, row)
            tb_events.write_scalars(tb, step + 1, {"train": m})

    val = data.Split(dataset.val.name, dataset.val.source,
                     dataset.val.indices[:config.eval_images])

    def on_phase_end(phase, variables, info):
        t = time.perf_counter()
        top1 = evaluate_corners(model, variables, space, val, dataset.train,
                                config, space.resolutions[-1:])
        row = {"phase_end": phase.name, **info, "val_top1": top1,
               "eval_s": time.perf_counter() - t}
        logging.info("w%s phase %s done: %s", width, phase.name, row)
        wd_lib.append_jsonl(metrics_path, row)
        tb_events.write_scalars(tb, info["global_step"], {"val_top1": top1})

    t0 = time.perf_counter()
    final = ps.run_phases(
        model, variables, phases, loader, spe, train_dir, seed=config.seed,
        config=ps.SGDConfig(config.momentum, config.nesterov,
                            config.weight_decay, config.label_smoothing),
        mesh=mesh, checkpoint_every=config.checkpoint_every,
        on_phase_start=on_phase_start, on_step=on_step,
        on_phase_end=on_phase_end)
    loader.close()
    train_s = time.perf_counter() - t0
    model = model.clone(exec_mode=None)
    if not os.path.isdir(out_dir):
        supernet_lib.save_supernet(out_dir, model, final)
    summary = {"width": width, "supernet": out_dir, "train_s": train_s,
               "steps": sum(p.num_steps(spe) for p in phases)}
    if config.test_corners and dataset.test is not None:
        summary["test_top1"] = evaluate_corners(
            model.clone(exec_mode="masked"), final, space, dataset.test,
            dataset.train, config, space.resolutions)
    wd_lib.write_json(summary_path, summary)
    return summary


def pretrain(config, workdir: str) -> dict:
    """The whole run: every width of `config` (see the module docstring).

    The space, widths, phases and dataset are checked before anything is
    written; a workdir holding another config is refused.

    Returns:
      {"wall_s", "widths": [`pretrain_width` summaries]}, also written to
      `<workdir>/summary.json`.

    Raises:
      ValueError: a bad config field or a workdir of another run (one line).
    """
    space, widths = space_and_widths(config)
    phases = phases_from_config(config, space)
    dataset = data.load(config.dataset, config.data_dir or None)
    os.makedirs(workdir, exist_ok=True)
    wd_lib.check_config(workdir, config.to_dict())
    logging.info("Workdir %s; config:\n%s", workdir, config)
    t0 = time.perf_counter()
    summaries = [pretrain_width(config, space, dataset, workdir, w, phases)
                 for w in widths]
    total = {"wall_s": time.perf_counter() - t0, "widths": summaries}
    wd_lib.write_json(os.path.join(workdir, "summary.json"), total)
    return total
