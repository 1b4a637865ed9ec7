"""Subnet evaluation: BN re-calibration, then exact top-1/top-5 on a split.

The one evaluation path of nat-jax, for subnets of the masked supernet
(`evaluate_subnets`, used by the search) and for extracted static subnets
(`evaluate_static`, `recalibrate_static_bn`, used by fine-tuning and the
model report): one BN re-calibration (`calibration.recalibrate_bn`) and one
top-1/top-5 count kernel.

OFA and NAT re-estimate a subnet's BatchNorm statistics before measuring it
(`calibration.recalibrate_bn` on ~2000 augmented training images). Here the
calibration images and their augmentation draws are fixed once
(`pipeline.CalibrationSet`) and rendered once per resolution; subnets are
grouped by resolution so only one resolution's batches are held at a time,
and within a resolution by width: a run holds one supernet per width
multiplier (the genotype's second gene, Sec. 3.2), and each subnet is
measured on its width's supernet.
Evaluation batches are padded to a fixed size with a mask, so every example is
counted exactly once; the counting step is jitted once per resolution over the
("data",) mesh of `sharding.data_mesh` (batch sharded, variables
replicated). One subnet per call runs the supernet in the exec mode of
`supernet.for_single_subnet` ("switch" on CPU); `subnets_per_call > 1`
evaluates several subnets per compiled call (vmap over their BN statistics
and arch arrays, "masked").
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Callable, Iterable, Mapping, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np

from nat_jax.data import pipeline
from nat_jax.model import supernet
from nat_jax.runtime import sharding
from nat_jax.space import search_space as ss
from nat_jax.train import calibration


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Evaluation settings.

    Attributes:
      batch_size: global evaluation batch (the last batch is padded).
      calib_images: BN re-calibration images (OFA: 2000).
      calib_batch_size: re-calibration batch size (OFA's 200,
        `calibration.OFA_BATCH_SIZE`; statistics are batch-size weighted
        averages, see `calibration.recalibrate_bn`).
      calib_seed: seed of the calibration images and augmentation draws.
      subnets_per_call: subnets evaluated per compiled call (vmap); which is
        fastest on a machine is measured by benchmarks/adaptation.py.
      cache_bytes: evaluation batches of one resolution are kept in memory
        when they fit this budget, else re-rendered for each subnet.
    """

    batch_size: int = 256
    calib_images: int = 2000
    calib_batch_size: int = calibration.OFA_BATCH_SIZE
    calib_seed: int = 0
    subnets_per_call: int = 1
    cache_bytes: int = 1 << 30

    def __post_init__(self):
        for name in ("batch_size", "calib_images", "calib_batch_size",
                     "subnets_per_call"):
            if getattr(self, name) < 1:
                raise ValueError(f"EvalConfig.{name} must be >= 1, got "
                                 f"{getattr(self, name)}.")


def _counts(model, params, batch_stats, images, labels, mask, arch):
    """int32[3] = [top-1 hits, top-5 hits, examples] of one masked batch.

    The one count kernel: `arch` holds the masked supernet's arch arrays, or
    is None for a static module applied as (images, train=False).
    """
    chex.assert_rank((images, labels, mask), (4, 1, 1), exception_type=ValueError,
                     custom_message="evaluation batches are images[B, R, R, 3], "
                     "labels[B] and mask[B]; check the split's source.")
    chex.assert_equal_shape_prefix((images, labels, mask), 1,
                                   exception_type=ValueError)
    chex.assert_type((images, labels), (float, int), exception_type=ValueError,
                     custom_message="images must be float, labels integer "
                     "class indices.")
    variables = {"params": params, "batch_stats": batch_stats}
    if arch is None:
        logits = model.apply(variables, images, train=False)
    else:
        logits = model.apply(variables, images, arch, train=False)
    k = min(5, logits.shape[-1])
    _, top = jax.lax.top_k(logits, k)
    hit = top == labels[:, None]
    c1 = jnp.sum(hit[:, 0] & mask, dtype=jnp.int32)
    c5 = jnp.sum(jnp.any(hit, -1) & mask, dtype=jnp.int32)
    return jnp.stack([c1, c5, jnp.sum(mask, dtype=jnp.int32)])


@functools.lru_cache(maxsize=None)
def jitted_counts(model, mesh: jax.sharding.Mesh, vmapped: bool):
    """Jitted (params, batch_stats, images, labels, mask, arch) -> int32[3].

    Counts [top-1 hits, top-5 hits, examples] of one batch; `arch` is the
    supernet's arch arrays, or None for a static subnet module. With
    `vmapped` the batch_stats and arch carry a leading subnet axis and the
    result is int32[G, 3]. One compile per resolution (and G).
    """
    repl, data = sharding.replicated(mesh), sharding.batch_sharded(mesh)
    fn = functools.partial(_counts, model)
    if vmapped:
        fn = jax.vmap(fn, in_axes=(None, 0, None, None, None, 0))
    return jax.jit(fn, in_shardings=(repl, repl, data, data, data, repl),
                   out_shardings=repl)


def _sum_counts(fn, params, batch_stats, arch, batches) -> np.ndarray:
    """Counts of `fn` summed over `batches` (dicts image/label/mask), on host."""
    total = None
    for b in batches:
        c = fn(params, batch_stats, b["image"], b["label"], b["mask"], arch)
        total = c if total is None else total + c
    if total is None:
        raise ValueError("The evaluation split is empty.")
    return sharding.to_host(total)


def _as_sets(model, variables) -> tuple[dict, dict]:
    """({width: model}, {width: variables}) of one supernet or a set."""
    if not isinstance(model, Mapping):
        return {float(model.width): model}, {float(model.width): variables}
    if not isinstance(variables, Mapping) or "params" in variables:
        raise ValueError("Give one supernet and its variables, or {width: model} "
                         "and {width: variables}.")
    models = {float(w): m for w, m in model.items()}
    varis = {float(w): v for w, v in variables.items()}
    if set(models) != set(varis):
        raise ValueError(f"models have widths {sorted(models)} but variables "
                         f"{sorted(varis)}; give both for the same widths.")
    for w, m in models.items():
        if abs(m.width - w) > 1e-9:
            raise ValueError(f"supernet of width {m.width} given as width {w}.")
    return models, varis


def _check_genes(space, models: Mapping, genes_list) -> list[np.ndarray]:
    if any(space != m.space for m in models.values()):
        raise ValueError("`space` is not the supernet's search space.")
    out = []
    for g in genes_list:
        g = space.canonicalize(space.validate_genes(g))
        width = space.widths[int(g[1])]
        if width not in models:
            raise ValueError(
                f"Genotype {g.tolist()} has width {width} but the supernet's "
                f"widths are {sorted(models)}; give the width-{width} supernet.")
        out.append(g)
    return out


def evaluate_subnets(model, variables, genes_list: Sequence, space:
                     ss.SearchSpace, dataset_split, calib_split,
                     config: EvalConfig = EvalConfig(), *,
                     mesh: jax.sharding.Mesh | None = None,
                     progress: Callable[[int, int, dict], None] | None = None,
                     calibration: pipeline.CalibrationSet | None = None,
                     resolution: int | None = None) -> list[dict]:
    """Top-1/top-5 (percent) of each subnet after BN re-calibration.

    Each subnet is measured on the supernet of its genotype's width (gene
    2): with a set of supernets, subnets are grouped by (resolution, width),
    one compile each.

    Args:
      model, variables: the Supernet and its {"params", "batch_stats"}, or
        a set: {width: Supernet} and {width: variables}.
      genes_list: genotypes (int[num_genes] each) of the supernets' widths.
      space: the search space (must be every supernet's).
      dataset_split: `data.Split` to measure on (NAT: the held-out val).
      calib_split: `data.Split` for re-calibration (NAT: the train split).
      config: EvalConfig.
      mesh: ("data",) mesh (default `sharding.data_mesh()`).
      progress: called as progress(i, n, result) after subnet i (of n) is
        measured; subnets run grouped by resolution and width, not in list
        order.
      calibration: a prebuilt CalibrationSet to reuse across calls.
      resolution: evaluate every subnet at this input side instead of its
        genotype's resolution (any positive size, e.g. OFA's 160 px; the
        search itself stays within `space.resolutions`).

    Returns:
      One dict per genotype, in order: {"top1", "top5" (percent), "n"
      (examples counted), "seconds" (re-calibration + evaluation)}.

    Raises:
      ValueError: a genotype outside the space, of a width without a
        supernet, or a space other than the supernets'.
    """
    models, varis = _as_sets(model, variables)
    genes = _check_genes(space, models, genes_list)
    if resolution is not None:
        resolution = supernet.check_resolution(resolution)
    mesh = sharding.data_mesh() if mesh is None else mesh
    ndev = mesh.size
    if config.batch_size % ndev:
        raise ValueError(f"EvalConfig.batch_size ({config.batch_size}) must be a "
                         f"multiple of the device count ({ndev}).")
    if calibration is None:
        calibration = pipeline.CalibrationSet(
            calib_split, config.calib_images, config.calib_batch_size,
            config.calib_seed)
    bases: dict[float, dict] = {}
    by_res: dict[int, dict[float, list[int]]] = {}
    for i, g in enumerate(genes):
        width = space.widths[int(g[1])]
        by_res.setdefault(int(g[0]), {}).setdefault(width, []).append(i)
    results: list[dict | None] = [None] * len(genes)
    for r_idx, by_width in by_res.items():
        r = space.resolutions[r_idx] if resolution is None else resolution
        calib = [sharding.shard_or_replicate(b["image"], mesh)
                 for b in calibration.batches(r)]
        eval_iter = _eval_cache(dataset_split, config, r, ndev, mesh)
        for width, idx in by_width.items():
            if width not in bases:
                v = varis[width]
                bases[width] = sharding.replicate(
                    {"params": v["params"], "batch_stats": v["batch_stats"]}, mesh)
            _measure(models[width], bases[width], [(i, genes[i]) for i in idx],
                     space, r, calib, eval_iter, mesh, config, results,
                     progress)
    return results


def _measure(model, base, chunk_genes, space, r, calib, eval_iter, mesh,
             config: EvalConfig, results: list, progress) -> None:
    """Re-calibrates and counts [(index, genes)] of one (width, resolution)
    on `model`, writing `results[index]` and calling `progress`."""
    g_per = config.subnets_per_call
    n_all = len(results)
    for start in range(0, len(chunk_genes), g_per):
        chunk = chunk_genes[start:start + g_per]
        t = time.perf_counter()
        stats, archs = [], []
        for _, g in chunk:
            new = calibration.recalibrate_bn(model, base, space.decode(g), calib,
                                          resolution=r)
            stats.append(new["batch_stats"])
            archs.append(space.genes_to_arrays(g))
        counts = _count_subnets(model, mesh, base["params"], stats, archs,
                                eval_iter(), g_per)
        secs = (time.perf_counter() - t) / len(chunk)
        for (i, _), c in zip(chunk, counts):
            c1, c5, n = (int(v) for v in c)
            results[i] = {"top1": 100.0 * c1 / max(n, 1),
                          "top5": 100.0 * c5 / max(n, 1), "n": n,
                          "seconds": secs}
            if progress is not None:
                progress(i, n_all, results[i])


def _eval_cache(split, config: EvalConfig, resolution: int, ndev: int, mesh):
    """A callable giving the sharded eval batches (cached if they fit)."""
    r = resolution
    per_batch = config.batch_size * (r * r * 3 * 4 + 8)
    n_batches = -(-len(split) // config.batch_size)

    def stream():
        for b in pipeline.eval_batches(split, config.batch_size, r,
                                       num_devices=ndev):
            yield sharding.shard_batch(b, mesh)

    if per_batch * n_batches <= config.cache_bytes:
        cached = list(stream())
        return lambda: cached
    return stream


def _count_subnets(model, mesh, params, stats, archs, batches, g_per):
    """Summed int counts [G, 3] over all batches, for G supernet subnets."""
    if g_per == 1:
        fn = jitted_counts(supernet.for_single_subnet(model), mesh, False)
        return [_sum_counts(fn, params, stats[0], archs[0], batches)]
    n = len(stats)
    pad = g_per - n  # pad to a fixed G: one compile per resolution
    stats = stats + [stats[-1]] * pad
    archs = archs + [archs[-1]] * pad
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *stats)
    arch = {k: np.stack([a[k] for a in archs]) for k in archs[0]}
    fn = jitted_counts(model, mesh, True)  # exec_mode None: "masked"
    return list(_sum_counts(fn, params, stacked, arch, batches))[:n]


# ------------------------------------------------------------ static subnets
def _eval_clone(model):
    """A static subnet without train-only settings (equal subnets share compiles)."""
    fields = {f: 0.0 for f in ("dropout_rate", "drop_connect_rate")
              if hasattr(model, f)}
    return model.clone(**fields) if fields else model


def recalibrate_static_bn(model, variables: Mapping, batches: Iterable) -> dict:
    """OFA's BN re-calibration of a static subnet; returns new variables.

    Running mean / variance of every BatchNorm become the batch-size-weighted
    averages of the per-batch mean and BIASED variance over `batches` (image
    arrays, (images, labels) tuples or {"image": ...} dicts), in eval mode
    (no dropout): `calibration.recalibrate_bn` with arch=None, the same
    accumulation and merge as for the masked supernet.

    Args:
      model: a static module whose BatchNorms are `layers.MaskedBatchNorm`
        (e.g. `subnet.Subnet` from `subnet.extract_subnet`).
      variables: its {"params", "batch_stats"}.
    """
    return calibration.recalibrate_bn(_eval_clone(model), dict(variables), None,
                                   batches)


def evaluate_static(model, variables: Mapping, split, resolution: int,
                    batch_size: int = 256, mesh: jax.sharding.Mesh | None = None
                    ) -> dict:
    """Exact top-1/top-5 of a static subnet on `split` (every example once).

    Args:
      model, variables: a static module (e.g. `subnet.Subnet`) applied as
        (images, train=False), and its {"params", "batch_stats"}.
      split: `data.Split` to measure on.
      resolution: input side (any positive size; a subnet's own is
        `arch.resolution`).
      batch_size: global batch; rounded down to a multiple of the device
        count (at least one per device); the last batch is padded and masked.
      mesh: ("data",) mesh (default `sharding.data_mesh()`).

    Returns:
      {"top1", "top5" (percent), "correct1", "correct5", "count" (examples)}.
    """
    resolution = supernet.check_resolution(resolution)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    mesh = sharding.data_mesh() if mesh is None else mesh
    n_dev = mesh.size
    batch_size = max(n_dev, batch_size // n_dev * n_dev)
    v = sharding.replicate({"params": variables["params"],
                            "batch_stats": variables["batch_stats"]}, mesh)
    fn = jitted_counts(_eval_clone(model), mesh, False)
    batches = (sharding.shard_batch(b, mesh) for b in pipeline.eval_batches(
        split, batch_size, resolution, num_devices=n_dev))
    c1, c5, n = (int(c) for c in _sum_counts(fn, v["params"], v["batch_stats"],
                                              None, batches))
    return {"top1": 100.0 * c1 / n, "top5": 100.0 * c5 / n, "correct1": c1,
            "correct5": c5, "count": n}
