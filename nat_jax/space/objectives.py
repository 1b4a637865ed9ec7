"""Exact #MAdds and #params of OFA MobileNetV3 subnets, from the architecture.

Counting rule (OFA's): only convolution and linear multiply-adds count (SE
1x1 convs included; BN, activations, the SE multiply, residual adds and
pooling do not), batch size 1. Params are the weights of the extracted
subnet: conv kernels, BN gamma/beta, SE convs with biases, the classifier with
its bias (no BN running statistics, no kernel-transform matrices).

`count(space, arch)` walks the layers of one `Arch` in plain Python integers
(the reference). `CostTables` turns the same per-layer rule into per-block
lookup tables so a whole population of genotypes is costed with one gather
and a sum: exactly in NumPy int64, or inside `jit` with `jax.numpy`. Both walk
the block layout `SearchSpace.blocks`.

`complexity_fn(space, names, num_classes, custom=...)` builds the search's
jittable objective function from names: the built-ins, callables passed in
`custom` (e.g. `{"latency": latency.table_fn(table, space)}`), or user
functions named "package.module:function". Nothing is registered globally.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from nat_jax.space import search_space as ss


def _out_size(size: int, stride: int) -> int:
    # Symmetric k//2 padding with odd k: floor((f - 1) / s) + 1.
    return (size - 1) // stride + 1


def _block_cost(
    c_in: int, c_out: int, mid: int, k: int, f_in: int, stride: int, se: bool
) -> tuple[int, int]:
    """(madds, params) of one elastic inverted-bottleneck block."""
    f_out = _out_size(f_in, stride)
    madds = f_in * f_in * c_in * mid  # inverted bottleneck 1x1
    madds += f_out * f_out * k * k * mid  # depthwise
    madds += f_out * f_out * mid * c_out  # point linear 1x1
    params = c_in * mid + 2 * mid + k * k * mid + 2 * mid + mid * c_out + 2 * c_out
    if se:
        se_mid = ss.make_divisible(mid // 4, 8)
        madds += 2 * mid * se_mid
        params += mid * se_mid + se_mid + se_mid * mid + mid
    return madds, params


def _stem_cost(ch: ss.Channels, resolution: int) -> tuple[int, int, int]:
    """(madds, params, feature size) of first conv + static first block."""
    f = _out_size(resolution, 2)
    madds = (
        f * f * 9 * 3 * ch.first
        + f * f * 9 * ch.first
        + f * f * ch.first * ch.first_block
    )
    params = 27 * ch.first + 2 * ch.first + 9 * ch.first + 2 * ch.first
    params += ch.first * ch.first_block + 2 * ch.first_block
    return madds, params, f


def _head_cost(ch: ss.Channels, f: int, num_classes: int) -> tuple[int, int]:
    """(madds, params) of final expand + feature mix + classifier."""
    c_last = ch.stages[-1]
    madds = f * f * c_last * ch.final_expand + ch.final_expand * ch.feature_mix
    madds += ch.feature_mix * num_classes
    params = c_last * ch.final_expand + 2 * ch.final_expand
    params += (
        ch.final_expand * ch.feature_mix + ch.feature_mix * num_classes + num_classes
    )
    return madds, params


def _slot_input_sizes(
    slots: Sequence[ss.BlockSlot], resolution: int
) -> tuple[list[int], int]:
    """(input feature size of every slot when all run, final feature size).

    Only a stage's first slot strides, so skipping later slots changes no size.
    """
    f = _out_size(resolution, 2)
    sizes = []
    for slot in slots:
        sizes.append(f)
        f = _out_size(f, slot.stride)
    return sizes, f


def count(
    space: ss.SearchSpace,
    arch: ss.Arch,
    num_classes: int = 1000,
    resolution: int | None = None,
) -> dict[str, int]:
    """Exact {"madds", "params"} of one subnet (the layer-by-layer reference).

    `resolution` overrides the input side (any positive size the network can
    run, e.g. OFA's published 160 px subnets); default `arch.resolution`.
    """
    arch.validate(space)
    r = arch.resolution if resolution is None else resolution
    if isinstance(r, bool) or int(r) != r or r < 1:
        raise ValueError(f"resolution must be a positive integer, got {r!r}.")
    ch = space.channels(arch.width)
    madds, params, f = _stem_cost(ch, int(r))
    for slot in space.blocks(arch.width):
        if slot.position >= arch.d[slot.stage]:
            continue
        b = slot.index
        mid = space.mid_channels(slot.c_in, arch.e[b])
        m, p = _block_cost(
            slot.c_in, slot.c_out, mid, arch.ks[b], f, slot.stride, slot.use_se
        )
        madds, params = madds + m, params + p
        f = _out_size(f, slot.stride)
    m, p = _head_cost(ch, f, num_classes)
    return {"madds": madds + m, "params": params + p}


@dataclasses.dataclass(frozen=True)
class CostTables:
    """Per-block cost lookup tables of one space and number of classes.

    fixed_madds: int64[n_res, n_width]; fixed_params: int64[n_width];
    block_madds: int64[n_res, n_width, num_blocks, num_ops + 1] (op 0 = skipped);
    block_params: int64[n_width, num_blocks, num_ops + 1].
    """

    fixed_madds: np.ndarray
    fixed_params: np.ndarray
    block_madds: np.ndarray
    block_params: np.ndarray

    def madds(self, genes, xp=np):
        """MAdds of genotypes `[..., num_genes]`; exact int64 with numpy."""
        return self._total(genes, self.fixed_madds, self.block_madds, xp, by_res=True)

    def params(self, genes, xp=np):
        """Params of genotypes `[..., num_genes]`; exact int64 with numpy."""
        return self._total(
            genes, self.fixed_params, self.block_params, xp, by_res=False
        )

    def _total(self, genes, fixed, block, xp, by_res):
        if xp is np:
            genes = np.asarray(genes)
        else:  # jax.numpy: int32 tables would overflow for big nets; use float32.
            fixed, block = (
                jnp.asarray(fixed, jnp.float32),
                jnp.asarray(block, jnp.float32),
            )
        res, wid, layers = genes[..., 0], genes[..., 1], genes[..., 2:]
        blocks = xp.arange(layers.shape[-1])
        if by_res:
            per_block = block[res[..., None], wid[..., None], blocks, layers]
            return fixed[res, wid] + per_block.sum(-1)
        return fixed[wid] + block[wid[..., None], blocks, layers].sum(-1)


@functools.lru_cache(maxsize=32)
def cost_tables(space: ss.SearchSpace, num_classes: int = 1000) -> CostTables:
    """Builds (and caches) the lookup tables from the per-layer rule."""
    n_res, n_w, nb, nops = (
        len(space.resolutions),
        len(space.widths),
        space.num_blocks,
        space.num_ops,
    )
    fixed_m = np.zeros((n_res, n_w), np.int64)
    fixed_p = np.zeros((n_w,), np.int64)
    block_m = np.zeros((n_res, n_w, nb, nops + 1), np.int64)
    block_p = np.zeros((n_w, nb, nops + 1), np.int64)
    for wi, width in enumerate(space.widths):
        ch = space.channels(width)
        slots = space.blocks(width)
        for ri, res in enumerate(space.resolutions):
            m0, p0, _ = _stem_cost(ch, res)
            sizes, f_final = _slot_input_sizes(slots, res)
            m1, p1 = _head_cost(ch, f_final, num_classes)
            fixed_m[ri, wi], fixed_p[wi] = m0 + m1, p0 + p1
            for slot, f_in in zip(slots, sizes):
                for op in range(1, nops + 1):
                    k = space.kernels[(op - 1) % len(space.kernels)]
                    e = space.expands[(op - 1) // len(space.kernels)]
                    mid = space.mid_channels(slot.c_in, e)
                    m, p = _block_cost(
                        slot.c_in, slot.c_out, mid, k, f_in, slot.stride, slot.use_se
                    )
                    block_m[ri, wi, slot.index, op] = m
                    block_p[wi, slot.index, op] = p
    return CostTables(fixed_m, fixed_p, block_m, block_p)


def madds(space: ss.SearchSpace, genes, num_classes: int = 1000, xp=np):
    """MAdds of genotypes `[..., num_genes]` (exact int64 numpy, or float32 jnp)."""
    return cost_tables(space, num_classes).madds(_canon(space, genes, xp), xp)


def params(space: ss.SearchSpace, genes, num_classes: int = 1000, xp=np):
    """Params of genotypes `[..., num_genes]` (exact int64 numpy, or float32 jnp)."""
    return cost_tables(space, num_classes).params(_canon(space, genes, xp), xp)


def _canon(space, genes, xp):
    # Tables are indexed per slot, so skipped slots must sit at each stage's end.
    g = space.canonicalize(genes)
    return np.asarray(g) if xp is np else g


# ---------------------------------------------------------------- objectives
# A built-in takes (space, num_classes) and returns a jittable
# `genes int32[n, num_genes] -> float32[n]` (minimised).
_BUILTIN: dict[str, Callable] = {
    "madds": lambda space, nc: (
        lambda g: cost_tables(space, nc).madds(space.canonicalize(g), jnp) / 1e6),
    "params": lambda space, nc: (
        lambda g: cost_tables(space, nc).params(space.canonicalize(g), jnp) / 1e6),
}
BUILTIN_OBJECTIVES = tuple(_BUILTIN)


def _resolve_one(
    name: str, space: ss.SearchSpace, num_classes: int, custom: Mapping[str, Callable]
) -> Callable:
    if name in custom:
        return custom[name]
    if name in _BUILTIN:
        return _BUILTIN[name](space, num_classes)
    if ":" in name:  # a user function "package.module:function"
        module, _, attr = name.partition(":")
        try:
            fn = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as err:
            raise ValueError(f"Cannot import objective {name!r}: {err}.") from None
        return fn
    known = sorted(set(_BUILTIN) | set(custom))
    hint = (" ('latency' needs a latency table: build one with python -m "
            "experiments.build_latency_table and pass it as config.latency_table)"
            if name == "latency" else "")
    raise ValueError(
        f"Unknown objective {name!r}; known: {known} (plus top1_error, and user "
        f"functions given as 'package.module:function'){hint}."
    )


def complexity_fn(
    space: ss.SearchSpace,
    names: Sequence[str],
    num_classes: int = 1000,
    *,
    custom: Mapping[str, Callable] | None = None,
):
    """A jittable `genes int32[n, num_genes] -> float32[n, len(names)]`.

    Args:
      space: the search space the genotypes belong to.
      names: objective names, each one of: "madds" or "params" (in millions,
        exact under OFA's rule), a key of `custom`, or "package.module:function"
        (a user function of the same signature, imported).
      num_classes: classifier outputs the built-ins count.
      custom: name -> jittable `genes int32[n, num_genes] -> float[n]`, e.g.
        `{"latency": latency.table_fn(table, space)}`; overrides a built-in of
        the same name.

    Raises:
      ValueError: an unknown name (the message lists the known ones).
    """
    custom = dict(custom or {})
    fns = [_resolve_one(n, space, num_classes, custom) for n in names]

    def fn(genes: jax.Array) -> jax.Array:
        genes = jnp.asarray(genes, jnp.int32)
        cols = [jnp.asarray(f(genes), jnp.float32).reshape(genes.shape[:-1])
                for f in fns]
        return jnp.stack(cols, axis=-1)

    return fn
