"""Which supernet weights a subnet uses (and so can receive a gradient).

`active_param_mask` is the exact rule for `nat_jax.model.supernet.Supernet`'s
parameters; adaptation freezes everything outside it (weights and momentum),
and the tests check that every entry outside it gets an exactly zero gradient.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from nat_jax.space import search_space as ss


def active_param_mask(space: ss.SearchSpace, width: float, params: Any,
                      arch: dict[str, jax.Array]) -> Any:
    """bool pytree like `params`: the entries subnet `arch` uses.

    Exactly these entries can receive a nonzero gradient; all others get an
    exactly zero gradient and are frozen by the optimiser (their momentum too).
    Every parameter outside the elastic blocks is active. For elastic block b
    (stage s, slot j; `mid` = active expanded channels, `se` = active SE
    channels, `k` = active kernel, kernels sorted k_0 < ... < k_n):

    * the whole block is inactive when it is skipped (j >= d[s]);
    * expand_kernel[..., :mid], expand_bn/depthwise_bn[:mid],
      project_kernel[:, :, :mid, :], project_bn all;
    * depthwise kernel channels [:mid], spatially: everything for k = k_n,
      else the centre k_{n-1} x k_{n-1} (OFA's transform reads only it; the
      outer ring gets zero gradient from a smaller kernel);
    * transform matrix m{k_{i+1}}to{k_i}: unused when k > k_i; all entries
      when k == k_i; when k < k_i only the rows that produce the centre
      k_{i-1} x k_{i-1} of the k_i kernel (all columns);
    * SE: reduce kernel [:mid, :se], reduce bias [:se], expand kernel
      [:se, :mid], expand bias [:mid].

    Args:
      space, width: the supernet's space and width multiplier.
      params: the supernet's params (names of `nat_jax.model.supernet.Supernet`).
      arch: traced {"ks", "e", "d"} int32 arrays.

    Raises:
      ValueError: a block parameter this function does not know.
    """
    ks = sorted(space.kernels)
    out = jax.tree.map(lambda p: jnp.ones(p.shape, bool), params)
    for slot in space.blocks(width):
        b = slot.index
        name = f"block_{b + 1}"
        if name not in params:
            raise ValueError(f"Supernet params have no {name!r}; got "
                             f"{sorted(params)}.")
        gate = (slot.position < arch["d"][slot.stage] if slot.skippable
                else jnp.asarray(True))
        k, e = arch["ks"][b], arch["e"][b]
        mids = [space.mid_channels(slot.c_in, x) for x in space.expands]
        mid = _pick(e, space.expands, mids)
        se = _pick(e, space.expands, [ss.make_divisible(m // 4, 8) for m in mids])
        out[name] = _block_mask(params[name], ks, k, mid, se, gate)
    return out


def _pick(value, choices, table):
    res = jnp.int32(0)
    for c, t in zip(choices, table):
        res = jnp.where(value == c, jnp.int32(t), res)
    return res


def _first(n, size):
    return jnp.arange(size) < n


def _block_mask(bp: dict, ks: list[int], k, mid, se, gate) -> dict:
    def vec(p, n):
        return jnp.broadcast_to(_first(n, p.shape[-1]), p.shape) & gate

    out = {}
    for pname, p in bp.items():
        if pname in ("expand_bn", "depthwise_bn"):
            out[pname] = {q: vec(v, mid) for q, v in p.items()}
        elif pname == "project_bn":
            out[pname] = {q: jnp.broadcast_to(gate, v.shape) for q, v in p.items()}
        elif pname in ("expand_kernel", "se_expand_bias"):
            out[pname] = vec(p, mid)
        elif pname == "se_reduce_bias":
            out[pname] = vec(p, se)
        elif pname == "project_kernel":
            out[pname] = _first(mid, p.shape[2])[None, None, :, None] & gate
            out[pname] = jnp.broadcast_to(out[pname], p.shape)
        elif pname == "se_reduce_kernel":
            m = _first(mid, p.shape[2])[:, None] & _first(se, p.shape[3])[None]
            out[pname] = jnp.broadcast_to(m & gate, p.shape)
        elif pname == "se_expand_kernel":
            m = _first(se, p.shape[2])[:, None] & _first(mid, p.shape[3])[None]
            out[pname] = jnp.broadcast_to(m & gate, p.shape)
        elif pname == "depthwise":
            out[pname] = _depthwise_mask(p, ks, k, mid, gate)
        else:
            raise ValueError(f"Unknown elastic-block parameter {pname!r}; "
                             "active_param_mask needs updating.")
    return out


def _centre(size: int, inner: int) -> jax.Array:
    lo = (size - inner) // 2
    r = (jnp.arange(size) >= lo) & (jnp.arange(size) < lo + inner)
    return r[:, None] & r[None, :]


def _depthwise_mask(p: dict, ks: list[int], k, mid, gate) -> dict:
    kmax = ks[-1]
    out = {}
    for qname, v in p.items():
        if qname == "kernel":
            spatial = jnp.where(k == kmax, True, _centre(kmax, ks[-2])) if len(
                ks) > 1 else jnp.ones((kmax, kmax), bool)
            chans = _first(mid, v.shape[-1])[None, None, None, :]
            m = spatial[:, :, None, None] & chans
            out[qname] = jnp.broadcast_to(m & gate, v.shape)
            continue
        i = next((i for i in range(len(ks) - 1)
                  if qname == f"m{ks[i + 1]}to{ks[i]}"), None)
        if i is None:
            raise ValueError(f"Unknown depthwise parameter {qname!r}.")
        small = ks[i]
        rows_all = jnp.ones((small * small,), bool)
        rows_centre = (_centre(small, ks[i - 1]).reshape(-1) if i > 0
                       else rows_all)
        rows = jnp.where(k == small, rows_all,
                         jnp.where(k < small, rows_centre, False))
        out[qname] = jnp.broadcast_to(rows[:, None] & gate, v.shape)
    return out
