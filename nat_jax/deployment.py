"""Evaluation of deployed subnets: BN re-calibration, exact test accuracy,
MAdds, params and latency, for one subnet or a transfer run's whole front.

    rows = evaluate_model_dir(dir, ...)   # an exported / fine-tuned subnet,
                                          # or a transfer workdir's whole front
    print(markdown_table(rows))

Accuracy is exact (every test image once: padded, masked batches). For a
transfer workdir each front member is extracted from the task supernet and
its BatchNorm statistics are re-calibrated on training images (train + val)
first, as OFA/NAT do before reporting a subnet; a fine-tuned subnet is used
as saved. MAdds / params follow `objectives.count` (OFA's rule); latency is
measured with `latency.subnet_latency` on the current backend.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
from typing import Any, Iterable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from nat_jax import data, export, latency, layers, objectives, pipeline
from nat_jax import search_space as ss
from nat_jax import subnet as subnet_lib
from nat_jax import supernet as supernet_lib
from nat_jax import workdir as workdir_lib


# ---------------------------------------------------------------- mesh utils
def data_mesh() -> jax.sharding.Mesh:
    """1-D ("data",) mesh of all devices (Auto axes, unlike `jax.make_mesh`)."""
    return jax.sharding.Mesh(np.asarray(jax.devices()), ("data",))


def _put(tree, mesh, spec):
    return jax.device_put(tree, NamedSharding(mesh, spec))


# ---------------------------------------------------------------- BN / eval
def _collect_bn(next_fun, args, kwargs, context):
    """Method interceptor: every MaskedBatchNorm runs in "collect" mode."""
    if (isinstance(context.module, layers.MaskedBatchNorm)
            and context.method_name == "__call__"):
        return next_fun(args[0], args[1], "collect")
    return next_fun(*args, **kwargs)


@functools.partial(jax.jit, static_argnums=0)
def _batch_moments(model, variables, images):
    """Per-BN batch mean and BIASED variance of `images` (OFA's rule)."""
    with nn.intercept_methods(_collect_bn):
        _, out = model.apply(variables, images, train=False, mutable=["bn_stats"])
    return jax.tree.map(lambda d: {"mean": d["mean"], "var": d["var"]},
                        out["bn_stats"],
                        is_leaf=lambda d: isinstance(d, dict) and "mask" in d)


def recalibrate_bn(model: subnet_lib.Subnet, variables: Mapping,
                   batches: Iterable) -> dict:
    """OFA's BN re-calibration of a static subnet; returns new variables.

    Running mean / variance become the batch-size-weighted averages of the
    per-batch mean and BIASED variance over `batches` (dicts with "image",
    or image arrays). Every BatchNorm runs in "collect" mode (eval otherwise:
    no dropout), as `supernet.recalibrate_bn` does for the masked supernet.
    """
    model = _eval_clone(model)
    acc, total = None, 0
    for b in batches:
        images = jnp.asarray(b["image"] if isinstance(b, dict) else b, jnp.float32)
        mom = _batch_moments(model, {"params": variables["params"],
                                     "batch_stats": variables["batch_stats"]}, images)
        n = images.shape[0]
        mom = jax.tree.map(lambda v: v * n, mom)
        acc = mom if acc is None else jax.tree.map(jnp.add, acc, mom)
        total += n
    if acc is None:
        raise ValueError("recalibrate_bn got no batches.")
    return {"params": variables["params"],
            "batch_stats": jax.tree.map(lambda v: v / total, acc)}


def _eval_clone(model: subnet_lib.Subnet) -> subnet_lib.Subnet:
    """The module without train-only settings: equal subnets share compiles."""
    return model.clone(dropout_rate=0.0, drop_connect_rate=0.0)


@functools.partial(jax.jit, static_argnums=0)
def _eval_counts(model, variables, batch):
    logits = model.apply(variables, batch["image"], train=False)
    top5 = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
    hit5 = (top5 == batch["label"][:, None]).any(-1)
    hit1 = top5[:, 0] == batch["label"]
    m = batch["mask"]
    return jnp.stack([(hit1 & m).sum(), (hit5 & m).sum(), m.sum()])


def evaluate(model: subnet_lib.Subnet, variables: Mapping, split: data.Split,
             resolution: int, batch_size: int = 256,
             mesh: jax.sharding.Mesh | None = None) -> dict:
    """Exact top-1/top-5 (%) of `split`: padded last batch, masked counts."""
    mesh = mesh or data_mesh()
    model = _eval_clone(model)
    n_dev = mesh.devices.size
    batch_size = max(n_dev, batch_size // n_dev * n_dev)
    variables = _put({"params": variables["params"],
                      "batch_stats": variables["batch_stats"]}, mesh, P())
    counts = np.zeros(3, np.int64)
    for b in pipeline.eval_batches(split, batch_size, resolution, num_devices=n_dev):
        counts += np.asarray(_eval_counts(model, variables, _put(b, mesh, P("data"))))
    c1, c5, n = (int(v) for v in counts)
    return {"top1": 100.0 * c1 / n, "top5": 100.0 * c5 / n, "correct1": c1,
            "correct5": c5, "count": n}


def _row(name: str, model, variables, arch: ss.Arch, space: ss.SearchSpace,
         ds: data.Dataset, batch_size: int, latency_batch_size: int,
         latency_repeats: int) -> dict[str, Any]:
    acc = evaluate(model, variables, ds.test, arch.resolution, batch_size)
    cost = objectives.count(space, arch, model.num_classes)
    row = {"name": name, "resolution": arch.resolution, "width": arch.width,
           "genes": space.encode(arch).tolist(),
           "net_subnet": arch.to_nat_subnet(space),
           "top1": acc["top1"], "top5": acc["top5"], "correct1": acc["correct1"],
           "correct5": acc["correct5"], "test_count": acc["count"],
           "madds": cost["madds"], "params": cost["params"],
           "params_counted": export.count_params(variables)}
    if latency_repeats > 0:
        lat = latency.subnet_latency(model, variables, arch.resolution,
                                     latency_batch_size, repeats=latency_repeats)
        row.update(latency_ms=lat["median_ms"], latency_min_ms=lat["min_ms"],
                   latency_batch_size=latency_batch_size)
    return row


def _load_dataset(dataset: str | None, data_dir: str | None, fallback: str | None):
    name = dataset or fallback
    if not name:
        raise ValueError("Cannot tell which dataset to evaluate on; pass --dataset.")
    ds = data.load(name, data_dir=data_dir)
    if ds.test is None:
        raise ValueError(f"{name} has no test split.")
    return name, ds


def evaluate_subnet_dir(directory: str, dataset: str | None = None,
                        data_dir: str | None = None, batch_size: int = 256,
                        latency_batch_size: int = 1, latency_repeats: int = 20
                        ) -> tuple[str, list[dict]]:
    """(dataset, [row]) of a `export.save_subnet` directory."""
    arch, space, meta = export.load_info(directory)
    model, variables, _ = export.load_subnet(directory)
    name, ds = _load_dataset(dataset, data_dir, meta.get("extra", {}).get("dataset"))
    _check_classes(model.num_classes, ds, name)
    return name, [_row(os.path.basename(os.path.abspath(directory)), model, variables,
                       arch, space, ds, batch_size, latency_batch_size,
                       latency_repeats)]


def evaluate_front(workdir: str, dataset: str | None = None,
                   data_dir: str | None = None, batch_size: int = 256,
                   latency_batch_size: int = 1, latency_repeats: int = 20,
                   which: str = "front", calib_images: int = 2000,
                   seed: int = 0) -> tuple[str, list[dict]]:
    """(dataset, rows) of a finished transfer workdir's front (or its picks).

    Args:
      which: "front" (every nondominated archive member) or "picks".
    """
    wd = pathlib.Path(workdir)
    for f in ("result.json", "archive.json", "config.json"):
        if not (wd / f).is_file():
            raise ValueError(f"{wd} is not a finished transfer workdir ({f} is "
                             f"missing).")
    if which not in ("front", "picks"):
        raise ValueError(f"which must be 'front' or 'picks', got {which!r}.")
    result = json.loads((wd / "result.json").read_text())
    entries = json.loads((wd / "archive.json").read_text())["entries"]
    cfg = json.loads((wd / "config.json").read_text())
    name, ds = _load_dataset(dataset, data_dir or cfg.get("data_dir") or None,
                             cfg.get("dataset"))
    sdir = workdir_lib.resolve_supernet_dir(str(wd))
    model, variables = supernet_lib.load_supernet(sdir)
    _check_classes(model.num_classes, ds, name)
    train = data.full_train_split(ds)
    mesh = data_mesh()
    n_dev = mesh.devices.size
    calib_bs = max(n_dev, min(200, calib_images) // n_dev * n_dev)
    cal = pipeline.CalibrationSet(train, calib_images, calib_bs, seed,
                                  num_devices=n_dev)
    rows = []
    picks = set(result.get("picks", []))
    for i in result[which]:
        arch = model.space.decode(entries[i]["genes"])
        sub, sv, _ = subnet_lib.extract_subnet(model, variables, arch)
        sv = recalibrate_bn(sub, sv, cal.batches(arch.resolution))
        row = _row(f"archive[{i}]", sub, sv, arch, model.space, ds, batch_size,
                   latency_batch_size, latency_repeats)
        row.update(archive_index=int(i), pick=i in picks,
                   val_top1=entries[i].get("top1"))
        rows.append(row)
    return name, rows


def evaluate_model_dir(directory: str, which: str = "front", **kwargs
                       ) -> tuple[str, list[dict]]:
    """Dispatches on what `directory` holds (subnet dir, fine-tune workdir,
    transfer workdir); see `evaluate_subnet_dir` / `evaluate_front`."""
    p = pathlib.Path(directory)
    if not p.is_dir():
        raise ValueError(f"--model_dir {directory} does not exist.")
    if export.is_subnet_dir(str(p)):
        return evaluate_subnet_dir(str(p), **kwargs)
    if export.is_subnet_dir(str(p / "model")):
        return evaluate_subnet_dir(str(p / "model"), **kwargs)
    if (p / "result.json").is_file():
        return evaluate_front(str(p), which=which, **kwargs)
    raise ValueError(f"{directory} holds neither an exported subnet (metadata.json "
                     f"+ state/), a fine-tuning workdir (model/) nor a finished "
                     f"transfer workdir (result.json).")


def _check_classes(n: int, ds: data.Dataset, name: str) -> None:
    if n != ds.num_classes:
        raise ValueError(f"The model has {n} classes but {name} has "
                         f"{ds.num_classes}; pass the dataset it was trained on.")


def markdown_table(rows: Sequence[dict], device: str | None = None) -> str:
    """A Markdown table of evaluation rows (accuracy %, MAdds M, params M, ms)."""
    device = device or latency.device_name()
    has_lat = any("latency_ms" in r for r in rows)
    head = ["subnet", "r", "top-1 (%)", "top-5 (%)", "MAdds (M)", "params (M)"]
    if has_lat:
        bs = rows[0].get("latency_batch_size", 1)
        head.append(f"latency (ms, batch {bs})")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        name = r["name"] + (" (pick)" if r.get("pick") else "")
        cells = [name, str(r["resolution"]), f"{r['top1']:.2f}", f"{r['top5']:.2f}",
                 f"{r['madds'] / 1e6:.2f}", f"{r['params'] / 1e6:.3f}"]
        if has_lat:
            cells.append(f"{r['latency_ms']:.3f}" if "latency_ms" in r else "-")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"Test split, exact counts ({rows[0]['test_count'] if rows else 0} "
                 f"images); latency measured on {device}.")
    return "\n".join(lines) + "\n"


def write_report(rows: Sequence[dict], dataset: str, json_path: str,
                 md_path: str) -> None:
    """Writes the rows as JSON and as a Markdown table."""
    device = latency.device_name()
    for path in (json_path, md_path):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(json_path, "w") as f:
        json.dump({"dataset": dataset, "device": device,
                   "num_devices": jax.device_count(), "rows": list(rows)}, f,
                  indent=1, default=_json_default)
    with open(md_path, "w") as f:
        f.write(f"# Evaluation on {dataset}\n\n" + markdown_table(rows, device))


def _json_default(x):
    if isinstance(x, (np.integer, np.floating)):
        return x.item()
    raise TypeError(f"Not JSON serialisable: {type(x).__name__}")
