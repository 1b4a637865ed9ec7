"""Report rows for saved subnets: exact test accuracy, MAdds, params, latency.

    dataset, rows = evaluate_model_dir(dir, ...)  # an exported / fine-tuned
                                                  # subnet, or a transfer
                                                  # workdir's front (or picks)
    print(markdown_table(rows))
    write_model_report(rows, dataset, "eval.json", "eval.md")

Accuracy is exact (every test image once: `evaluation.evaluate_static`). For
a transfer workdir each front member is extracted from the task supernet of
its width (the genotype's width gene, NAT section 3.2; a workdir's
`supernet/` holds one supernet per width, `nat_jax.model.supernet_set`) and
its BatchNorm statistics are re-calibrated on training images (train + val)
first (`evaluation.recalibrate_static_bn`), as OFA/NAT do before reporting a
subnet; a fine-tuned subnet is used as saved. MAdds / params follow
`objectives.count` (OFA's rule); latency is measured with
`latency.subnet_latency` on the current backend. `resolution=` evaluates at
another input side than the subnet's own (e.g. OFA's 160 px): accuracy,
MAdds and latency are then those of that input size.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any, Sequence

import jax
import numpy as np

from nat_jax.data import datasets as data
from nat_jax.data import pipeline
from nat_jax.deploy import export, latency
from nat_jax.model import subnet as subnet_lib
from nat_jax.model import supernet as supernet_lib
from nat_jax.model import supernet_set
from nat_jax.runtime import sharding
from nat_jax.runtime import workdir as workdir_lib
from nat_jax.space import objectives
from nat_jax.space import search_space as ss
from nat_jax.train import calibration, evaluation


def _at_resolution(arch: ss.Arch, space: ss.SearchSpace, resolution: int | None
                   ) -> tuple[ss.Arch, ss.SearchSpace]:
    """(arch, space) for counting at `resolution` (the space widened if needed)."""
    if resolution is None or resolution == arch.resolution:
        return arch, space
    r = supernet_lib.check_resolution(resolution)
    wide = dataclasses.replace(
        space, resolutions=tuple(sorted(set(space.resolutions) | {r})))
    return dataclasses.replace(arch, resolution=r), wide


def _row(name: str, model, variables, arch: ss.Arch, space: ss.SearchSpace,
         ds: data.Dataset, batch_size: int, latency_batch_size: int,
         latency_repeats: int, resolution: int | None = None) -> dict[str, Any]:
    """One report row; `resolution` (default arch.resolution) is the input side."""
    at, at_space = _at_resolution(arch, space, resolution)
    acc = evaluation.evaluate_static(model, variables, ds.test, at.resolution,
                                     batch_size)
    cost = objectives.count(at_space, at, model.num_classes)
    row = {"name": name, "resolution": at.resolution,
           "arch_resolution": arch.resolution, "width": arch.width,
           "genes": space.encode(arch).tolist(),
           "net_subnet": arch.to_nat_subnet(space),
           "top1": acc["top1"], "top5": acc["top5"], "correct1": acc["correct1"],
           "correct5": acc["correct5"], "test_count": acc["count"],
           "madds": cost["madds"], "params": cost["params"],
           "params_counted": export.count_params(variables)}
    if latency_repeats > 0:
        lat = latency.subnet_latency(model, variables, at.resolution,
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
                        latency_batch_size: int = 1, latency_repeats: int = 20,
                        resolution: int | None = None) -> tuple[str, list[dict]]:
    """(dataset, [row]) of a `export.save_subnet` directory.

    Args:
      resolution: input side to evaluate at (default: the subnet's own).
    """
    arch, space, meta = export.load_info(directory)
    model, variables, _ = export.load_subnet(directory)
    name, ds = _load_dataset(dataset, data_dir, meta.get("extra", {}).get("dataset"))
    _check_classes(model.num_classes, ds, name)
    return name, [_row(os.path.basename(os.path.abspath(directory)), model, variables,
                       arch, space, ds, batch_size, latency_batch_size,
                       latency_repeats, resolution)]


def evaluate_front(workdir: str, dataset: str | None = None,
                   data_dir: str | None = None, batch_size: int = 256,
                   latency_batch_size: int = 1, latency_repeats: int = 20,
                   which: str = "front", calib_images: int = 2000,
                   seed: int = 0, resolution: int | None = None
                   ) -> tuple[str, list[dict]]:
    """(dataset, rows) of a finished transfer workdir's front (or its picks).

    Args:
      which: "front" (every nondominated archive member) or "picks".
      calib_images, seed: BN re-calibration images (drawn from train + val)
        and the seed of their draw.
      resolution: input side to re-calibrate and evaluate at (default: each
        subnet's own).
    """
    if resolution is not None:
        resolution = supernet_lib.check_resolution(resolution)
    wd = pathlib.Path(workdir)
    for f in ("result.json", "archive.json", "config.json"):
        if not (wd / f).is_file():
            raise ValueError(f"{wd} is not a finished transfer workdir ({f} is "
                             f"missing).")
    if which not in ("front", "picks"):
        raise ValueError(f"which must be 'front' or 'picks', got {which!r}.")
    result = json.loads((wd / "result.json").read_text())
    entries = json.loads((wd / "archive.json").read_text())["entries"]
    cfg = workdir_lib.read_config(wd)
    name, ds = _load_dataset(dataset, data_dir or cfg.get("data_dir") or None,
                             cfg.get("dataset"))
    space = supernet_set.set_space(str(wd))
    supernets: dict[float, tuple] = {}  # width -> (model, variables), on first use

    def width_supernet(width: float):
        if width not in supernets:
            supernets[width] = supernet_set.load_set_width(str(wd), width, space)
            _check_classes(supernets[width][0].num_classes, ds, name)
        return supernets[width]

    train = data.full_train_split(ds)
    n_dev = sharding.data_mesh().size
    calib_bs = calibration.batch_size(calib_images, n_dev)
    cal = pipeline.CalibrationSet(train, calib_images, calib_bs, seed,
                                  num_devices=n_dev)
    rows = []
    picks = set(result.get("picks", []))
    for i in result[which]:
        arch = space.decode(entries[i]["genes"])
        model, variables = width_supernet(arch.width)
        sub, sv, _ = subnet_lib.extract_subnet(model, variables, arch)
        r = arch.resolution if resolution is None else resolution
        sv = evaluation.recalibrate_static_bn(sub, sv, cal.batches(r))
        row = _row(f"archive[{i}]", sub, sv, arch, space, ds, batch_size,
                   latency_batch_size, latency_repeats, r)
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


def write_model_report(rows: Sequence[dict], dataset: str, json_path: str,
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
