"""BN re-calibration and eval-mode logits of one subnet.

`recalibrate_bn` re-estimates one subnet's BatchNorm statistics as OFA's
`set_running_statistics` does (for the masked supernet and, with `arch=None`,
for an extracted static subnet: the one re-calibration of nat-jax). OFA and
NAT re-calibrate before reporting any subnet's accuracy measured with the
weights inherited from the supernet (NAT Sec. 3; OFA's recipe: 2,000
training images, biased variance, batch-size weighted, momentum unused;
../shared DESIGN.md Sec. 3). `batch_size` is the re-calibration batch every
caller uses (OFA's 200 images, split evenly over the devices). `predict`
gives eval-mode logits. Both accept an input size outside the search
space's resolutions through `resolution=` (the network is fully
convolutional; OFA's published subnets use e.g. 160 px).
"""

from __future__ import annotations

import functools
from typing import Iterable

import chex
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from nat_jax.model import layers, supernet
from nat_jax.space import search_space as ss

# OFA's set_running_statistics re-calibrates on batches of 200 images.
OFA_BATCH_SIZE = 200


def batch_size(num_images: int, num_devices: int = 1) -> int:
    """The re-calibration batch for `num_images` images over `num_devices`.

    OFA's 200 images per batch (all of them when there are fewer), rounded
    down to a multiple of `num_devices` so the batch splits evenly, and at
    least one image per device.

    Raises:
      ValueError: `num_images` or `num_devices` below 1.
    """
    if num_images < 1 or num_devices < 1:
        raise ValueError(f"Calibration needs >= 1 image and >= 1 device, got "
                         f"num_images={num_images}, num_devices={num_devices}.")
    per = min(OFA_BATCH_SIZE, num_images) // num_devices * num_devices
    return max(num_devices, per)


@functools.partial(jax.jit, static_argnums=0)
def _predict(model, variables, images, arrays):
    single = supernet.for_single_subnet(model)
    return single.apply(variables, images, arrays, train=False)


def predict(model: supernet.Supernet, variables: dict, images_nhwc: jax.Array,
            arch: ss.Arch, *, resolution: int | None = None) -> jax.Array:
    """Eval-mode logits float32[N, num_classes] of subnet `arch`.

    Jitted inside; one compile per (model, resolution, batch size).

    Args:
      images_nhwc: float32[N, R, R, 3] with R = arch.resolution, or R =
        `resolution` when given.
      resolution: run the subnet at this input side instead of
        arch.resolution (any positive size, inside the search space or not,
        e.g. OFA's 160 px); None: the images must be at arch.resolution.
    """
    images_nhwc = jnp.asarray(images_nhwc, jnp.float32)
    supernet.check_arch(model, arch, images_nhwc, resolution)
    variables = {"params": variables["params"],
                 "batch_stats": variables["batch_stats"]}
    return _predict(model, variables, images_nhwc, arch.as_arrays())


# --------------------------------------------------------- BN re-calibration
def _collect_bn(next_fun, args, kwargs, context):
    """Method interceptor: every `layers.MaskedBatchNorm` runs in "collect" mode."""
    if (isinstance(context.module, layers.MaskedBatchNorm)
            and context.method_name == "__call__"):
        mask = args[1] if len(args) > 1 else kwargs["mask"]
        return next_fun(args[0], mask, "collect")
    return next_fun(*args, **kwargs)


def _batch_moments(model, variables, images, arrays) -> dict:
    """{BN path: {"mean", "var", "mask"}} of one batch (biased variance).

    The masked supernet (`arrays` given) runs with bn_mode="collect"; a
    static module (`arrays` None, e.g. `subnet.Subnet`) runs in eval mode
    (no dropout) with every MaskedBatchNorm switched to "collect".
    """
    if arrays is None:
        with nn.intercept_methods(_collect_bn):
            _, out = model.apply(variables, images, train=False,
                                 mutable=["bn_stats"])
    else:
        _, out = supernet.for_single_subnet(model).apply(
            variables, images, arrays, bn_mode="collect", mutable=["bn_stats"])
    flat = flax.traverse_util.flatten_dict(dict(out).get("bn_stats", {}))
    paths = {p[:-1] for p in flat}
    return {path: {s: flat[path + (s,)] for s in ("mean", "var", "mask")}
            for path in paths}


@functools.partial(jax.jit, static_argnums=0)
def _collect_step(model, variables, images, arrays, acc):
    """acc + N * (batch mean, biased var) of every BN, and the BNs' masks.

    acc, result: {BN path: {"mean", "var"}} float32 sums; masks: {BN path:
    bool[C]}. One compile per (model, resolution, batch shape).
    """
    moments = _batch_moments(model, variables, images, arrays)
    missing = sorted(set(acc) - set(moments))
    if missing:
        raise ValueError(
            f"BatchNorm {'/'.join(missing[0])} recorded no statistics: "
            f"recalibrate_bn needs every BatchNorm to be a layers.MaskedBatchNorm.")
    n = images.shape[0]
    new = {path: {s: acc[path][s] + n * moments[path][s] for s in ("mean", "var")}
           for path in acc}
    return new, {path: moments[path]["mask"] for path in acc}


@jax.jit
def _zero_acc(batch_stats):
    flat = flax.traverse_util.flatten_dict(batch_stats)
    return {path[:-1]: {"mean": jnp.zeros_like(v), "var": jnp.zeros_like(v)}
            for path, v in flat.items() if path[-1] == "mean"}


@jax.jit
def _merge_stats(batch_stats, acc, masks, total):
    """Running stats acc / total where the BN's mask is set, old stats elsewhere."""
    flat = flax.traverse_util.flatten_dict(batch_stats)
    out = {path: jnp.where(masks[path[:-1]], acc[path[:-1]][path[-1]] / total, v)
           for path, v in flat.items()}
    return flax.traverse_util.unflatten_dict(out)


def _batch_images(batch) -> jax.Array:
    """float32 images of a batch: an array, (images, labels) or {"image": ...}."""
    if isinstance(batch, dict):
        images = batch["image"]
    elif isinstance(batch, (tuple, list)):
        images = batch[0]
    else:
        images = batch
    if not isinstance(images, jax.Array):
        return jnp.asarray(images, jnp.float32)
    return images if images.dtype == jnp.float32 else images.astype(jnp.float32)


def recalibrate_bn(model: nn.Module, variables: dict, arch: ss.Arch | None,
                   batches: Iterable, *, resolution: int | None = None) -> dict:
    """OFA's `set_running_statistics` for one subnet; returns new variables.

    Each batch is forwarded with batch-statistic BN; every BatchNorm of the
    subnet records the batch mean and BIASED variance of its input; the new
    running mean/var are the batch-size-weighted averages over `batches`.
    For the masked supernet only the subnet's active channels of its active
    blocks are overwritten: inactive channels and skipped blocks keep their
    previous statistics (OFA copies `[:active]` and never touches skipped
    blocks). Momentum is not used. Forward and accumulation are one jitted
    call per batch (one compile per resolution and batch shape), the final
    merge another. This is nat-jax's only re-calibration: the static
    subnet's (`evaluation.recalibrate_static_bn`) is this with `arch=None`.

    Args:
      model: the `Supernet`, or with `arch=None` a static module whose
        BatchNorms are all `layers.MaskedBatchNorm` and whose `apply` takes
        (images, train=False), e.g. `subnet.Subnet` (every BN re-estimated).
      variables: {"params", "batch_stats"} of `model`.
      arch: the supernet's subnet; None for a static module.
      batches: iterable of images float32[N, R, R, 3], (images, labels)
        tuples (a DataLoader-like stream) or {"image": images} dicts; all at
        `arch.resolution` (or `resolution`).
      resolution: the input side when it differs from arch.resolution (any
        positive size, see `predict`).

    Returns:
      `variables` with the new "batch_stats".
    """
    if (arch is None) == isinstance(model, supernet.Supernet):
        raise ValueError("Pass an arch for the masked Supernet and arch=None for a "
                         "static subnet module.")
    arrays = None if arch is None else arch.as_arrays()
    params_only = {"params": variables["params"],
                   "batch_stats": variables["batch_stats"]}
    total, acc, masks = 0, _zero_acc(variables["batch_stats"]), None
    for batch in batches:
        images = _batch_images(batch)
        if arch is not None:
            supernet.check_arch(model, arch, images, resolution)
        else:
            chex.assert_rank(images, 4, exception_type=ValueError,
                             custom_message="pass images float32[N, H, W, C] (NHWC).")
        acc, masks = _collect_step(model, params_only, images, arrays, acc)
        total += images.shape[0]
    if masks is None:
        raise ValueError("recalibrate_bn got no batches.")
    out = dict(variables)
    out["batch_stats"] = _merge_stats(variables["batch_stats"], acc, masks,
                                      jnp.float32(total))
    return out
