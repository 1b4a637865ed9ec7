r"""Pre-train a supernet by OFA's progressive shrinking (NAT Sec. 4.4).

Usage:
  python -m experiments.pretrain --workdir=runs/pretrain_small   # small config
  python -m experiments.pretrain --config=experiments/configs/pretrain.py:ofa \
      --config.dataset=imagenet2012 --workdir=runs/ofa
  python -m experiments.transfer --supernet=runs/pretrain_small/w1.0 ...

One run per width of the space (`--config.widths`, default all): the phases
of `config.phase_order` (nat_jax/train/progressive_shrinking.py), then the
supernet is written with `supernet.save_supernet` to `<output>/w<width>`
(output defaults to the workdir), which `experiments.transfer --supernet=`
reads directly. Rerunning the same command resumes (per width: the newest
checkpoint under
`<workdir>/train/w<width>/ckpt`); a finished width is skipped. Logs:
`<workdir>/train/w<width>/metrics.jsonl` and TensorBoard scalars under
`<workdir>/train/w<width>/tb`; `<workdir>/summary.json` at the end.
"""

from __future__ import annotations

import dataclasses
import os
import time

from absl import app, flags, logging

from experiments import cli

_CONFIG_FILE = os.path.join(os.path.dirname(__file__), "configs", "pretrain.py")
ALIASES = ("dataset", "seed")

_CONFIG = cli.define_config(
    f"{_CONFIG_FILE}:small", "Config file[:variant] (small, ofa or test); "
    "--dataset and --seed are short for --config.<the same name>.",
    aliases=ALIASES)
_WORKDIR = flags.DEFINE_string(
    "workdir", "runs/pretrain", "Output directory; rerunning the same command "
    "resumes.")


def resolve_space(name: str):
    """A registered search space (`search_space.SPACE_NAMES`)."""
    from nat_jax.space import search_space as ss

    return ss.get_space(name)


def phases_from_config(config, space):
    from nat_jax.train import progressive_shrinking as pretrain

    scale = config.batch_size / config.lr_scale_batch
    out = []
    for name in config.phase_order:
        if name not in config.phases:
            raise ValueError(f"config.phase_order names {name!r}, which has no "
                             f"config.phases.{name}.")
        p = config.phases[name]
        out.append(pretrain.make_phase(
            space, name, subnets=p.subnets, epochs=p.epochs,
            warmup_epochs=p.warmup_epochs, lr=p.base_lr * scale,
            warmup_lr=p.base_lr, kd_ratio=p.kd_ratio))
    return out


def _subset(split, n):
    from nat_jax.data import datasets as data

    return data.Split(split.name, split.source, split.indices[:n])


def evaluate_corners(model, variables, space, split, calib_split, config,
                     resolutions):
    """{"<corner>@<res>": top-1 %} of the corner subnets on `split`."""
    from nat_jax.train import calibration, evaluation
    from nat_jax.train import progressive_shrinking as pretrain

    ecfg = evaluation.EvalConfig(batch_size=config.eval_batch_size,
                                 calib_images=config.calib_images,
                                 calib_batch_size=calibration.batch_size(
                                     config.calib_images))
    names, genes = [], []
    for r in resolutions:
        for name, g in pretrain.corner_genes(space, model.width, r).items():
            names.append(f"{name}@{r}")
            genes.append(g)
    res = evaluation.evaluate_subnets(model, variables, genes, space, split,
                                      calib_split, ecfg)
    return {n: r["top1"] for n, r in zip(names, res)}


def run_width(config, space, dataset, workdir: str, width: float) -> dict:
    """Pre-train the supernet of one width; returns its summary."""
    import jax

    from nat_jax.data import augment, pipeline
    from nat_jax.model import supernet as supernet_lib
    from nat_jax.runtime import progress as progress_lib
    from nat_jax.runtime import sharding, tb_events
    from nat_jax.runtime import workdir as wd_lib
    from nat_jax.train import progressive_shrinking as pretrain

    out_dir = os.path.join(config.output or workdir, f"w{width}")
    train_dir = os.path.join(workdir, "train", f"w{width}")
    os.makedirs(train_dir, exist_ok=True)
    summary_path = os.path.join(train_dir, "summary.json")
    if os.path.isfile(summary_path) and os.path.isdir(out_dir):
        logging.info("Width %s is finished (%s); skipping.", width, out_dir)
        import json
        with open(summary_path) as f:
            return json.load(f)
    mesh = sharding.data_mesh()
    num_classes = config.num_classes or dataset.num_classes
    model, variables = supernet_lib.init_supernet(
        space, width, num_classes, jax.random.key(config.seed),
        dropout_rate=config.dropout_rate, exec_mode="masked")
    phases = phases_from_config(config, space)
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

    val = _subset(dataset.val, config.eval_images)

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
    final = pretrain.run_phases(
        model, variables, phases, loader, spe, train_dir, seed=config.seed,
        config=pretrain.SGDConfig(config.momentum, config.nesterov,
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


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    cli.quiet_library_logs()
    from nat_jax.data import datasets as data
    from nat_jax.runtime import workdir as wd_lib

    config = _CONFIG.value
    space = resolve_space(config.space)
    if config.resolutions:
        for r in config.resolutions:
            space.resolution_index(r)
        space = dataclasses.replace(space, resolutions=tuple(config.resolutions))
    widths = tuple(config.widths) or space.widths
    for w in widths:
        space.width_index(w)
    dataset = data.load(config.dataset, config.data_dir or None)
    os.makedirs(_WORKDIR.value, exist_ok=True)
    wd_lib.check_config(_WORKDIR.value, config.to_dict())
    logging.info("Workdir %s; config:\n%s", _WORKDIR.value, config)
    t0 = time.perf_counter()
    summaries = [run_width(config, space, dataset, _WORKDIR.value, float(w))
                 for w in widths]
    total = {"wall_s": time.perf_counter() - t0, "widths": summaries}
    wd_lib.write_json(os.path.join(_WORKDIR.value, "summary.json"), total)
    for s in summaries:
        test = f", test top-1 {s['test_top1']}" if "test_top1" in s else ""
        print(f"w{s['width']}: {s['supernet']} ({s['steps']} steps, "
              f"{s['train_s']:.0f}s{test})")


if __name__ == "__main__":
    cli.run(main)
