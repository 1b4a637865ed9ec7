"""The elastic inverted-bottleneck block of the masked supernet (Flax Linen).

`ElasticBlock` runs one MobileNetV3 block slot of the OFA supernet for a traced
(kernel, expand, gate): exec_mode "masked" computes the largest block with
inactive channels zeroed and smaller kernels zero-padded (OFA's transform
matrices, see `layers.ElasticDepthwise`); "switch" runs only the active branch
(`lax.switch` over expand and kernel choices, `lax.cond` on the gate), with a
custom VJP that recomputes the taken branch. Both give the same logits,
running-statistic updates and gradients (tests/model/test_supernet.py).
"""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from nat_jax.model import layers
from nat_jax.space import search_space as ss


def _select(value: jax.Array, choices: tuple[int, ...], table: tuple[int, ...]
            ) -> jax.Array:
    """table[i] where choices[i] == value (table[0] when none matches)."""
    out = jnp.asarray(table[0], jnp.int32)
    for c, t in zip(choices, table):
        out = jnp.where(value == c, jnp.int32(t), out)
    return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _switch_recompute(branches, index, k_idx, x, p):
    """`lax.switch(index, branches, x, p, k_idx)` whose VJP recomputes the branch.

    JAX's own linearisation of a switch returns the union of every branch's
    residuals (the untaken ones zero-filled each step); recomputing the taken
    branch's forward in the backward switch gives faster training steps on
    CPU despite the extra forward (`python -m benchmarks.supernet_step`).
    """
    return jax.lax.switch(index, branches, x, p, k_idx)


def _switch_recompute_fwd(branches, index, k_idx, x, p):
    return jax.lax.switch(index, branches, x, p, k_idx), (index, k_idx, x, p)


def _switch_recompute_bwd(branches, res, ct):
    index, k_idx, x, p = res

    def back(b):
        def g(k_idx, x, p, ct):
            _, pull = jax.vjp(lambda x, p: b(x, p, k_idx), x, p)
            return pull(ct)
        return g
    dx, dp = jax.lax.switch(index, [back(b) for b in branches], k_idx, x, p, ct)
    return None, None, dx, dp


_switch_recompute.defvjp(_switch_recompute_fwd, _switch_recompute_bwd)


class ElasticBlock(nn.Module):
    """Inverted bottleneck with elastic kernel and expand (no residual here).

    exec_mode "masked": one program for the largest block, inactive channels
    zeroed and smaller kernels zero-padded to the largest. "switch":
    `lax.switch` over the expand choices, inside it over the kernel sizes,
    each branch statically shaped (the first `mid` channels sliced from the
    max tensors, the kernel of its size), and for a `skippable` block a
    `lax.cond` on `gate` (a skipped block returns zeros). Same outputs,
    running-stat updates and gradients; only the active branch runs.
    """

    c_in: int
    c_out: int
    stride: int
    act: str
    use_se: bool
    kernels: tuple[int, ...]
    expands: tuple[int, ...]
    impl: str
    exec_mode: str = "masked"
    skippable: bool = False

    @nn.nowrap
    def _mids(self):
        return self.spec().mids()

    @nn.compact
    def __call__(self, x, k, e, gate, mode, phase=None, stats=None):
        """The block's output float32[N, H', W', c_out] (no residual).

        `phase` (exec_mode "switch" only; what `Supernet` uses to scan over
        equally shaped blocks): "params" declares/reads the variables and
        returns the arrays `switch_apply` takes (x, k unused); "record"
        applies the running-stat update / bn_stats record of `stats` (as
        returned by `switch_apply`) for subnet (e, gate) and returns None.
        """
        if self.exec_mode == "switch":
            return self._switch(x, k, e, gate, mode, phase, stats)
        if phase is not None:
            raise ValueError(f"phase={phase!r} needs exec_mode='switch'.")
        act = layers.activation(self.act)
        mids, se_mids = self._mids()
        mid_max = max(mids)
        mid = _select(e, self.expands, mids)
        mmask = layers.channel_mask(mid, mid_max)
        bn_mask = mmask & gate
        w = self.param("expand_kernel", layers.conv_init, (1, 1, self.c_in, mid_max))
        h = layers.pointwise(x, w)
        h = act(layers.MaskedBatchNorm(mid_max, name="expand_bn")(h, bn_mask, mode))
        h = jnp.where(mmask, h, 0.0)
        h = layers.ElasticDepthwise(mid_max, self.kernels, self.stride, self.impl,
                                    name="depthwise")(h, k)
        h = act(layers.MaskedBatchNorm(mid_max, name="depthwise_bn")(h, bn_mask, mode))
        h = jnp.where(mmask, h, 0.0)
        if self.use_se:
            se_max = ss.make_divisible(mid_max // 4, 8)
            se_mask = layers.channel_mask(_select(e, self.expands, se_mids), se_max)
            wr, br, we, be = self._se_params(mid_max, se_max)
            s = jnp.mean(h, axis=(1, 2))
            s = jnp.where(se_mask[None, :],
                          jax.nn.relu(s @ wr[0, 0] + br[None, :]), 0.0)
            s = jax.nn.hard_sigmoid(s @ we[0, 0] + be[None, :])
            h = h * s[:, None, None, :]
        wp = self.param("project_kernel", layers.conv_init, (1, 1, mid_max, self.c_out))
        h = layers.pointwise(h, wp)
        full = jnp.ones((self.c_out,), bool) & gate
        return layers.MaskedBatchNorm(self.c_out, name="project_bn")(h, full, mode)

    def _se_params(self, mid_max, se_max):
        wr = self.param("se_reduce_kernel", layers.conv_init, (1, 1, mid_max, se_max))
        br = self.param("se_reduce_bias", nn.initializers.zeros, (se_max,))
        we = self.param("se_expand_kernel", layers.conv_init, (1, 1, se_max, mid_max))
        be = self.param("se_expand_bias", nn.initializers.zeros, (mid_max,))
        return wr, br, we, be

    def _switch_params(self, mode):
        """Declares (or reads) the block's variables; returns (p, bns).

        p: {"w", "dw", "se" (with SE), "wp", "bn": {name: (scale, bias, mean,
        var)}}, the arrays the pure `switch_apply` takes; bns: {name:
        `layers.BatchNormState`} for recording the statistics afterwards.
        """
        mid_max = max(self._mids()[0])
        kernels = tuple(sorted(self.kernels))
        # declared in the masked mode's order (init_variables draws in order)
        bns, p = {}, {"bn": {}}

        def bn_state(name, c):
            bns[name] = layers.BatchNormState(c, name=name)
            p["bn"][name] = bns[name](mode)

        p["w"] = self.param("expand_kernel", layers.conv_init,
                            (1, 1, self.c_in, mid_max))
        bn_state("expand_bn", mid_max)
        p["dw"] = layers.DepthwiseParams(mid_max, kernels, name="depthwise")()
        bn_state("depthwise_bn", mid_max)
        if self.use_se:
            p["se"] = self._se_params(mid_max, ss.make_divisible(mid_max // 4, 8))
        p["wp"] = self.param("project_kernel", layers.conv_init,
                             (1, 1, mid_max, self.c_out))
        bn_state("project_bn", self.c_out)
        return p, bns

    @nn.nowrap
    def spec(self) -> "SwitchSpec":
        """The static description `switch_apply` runs this block with."""
        return SwitchSpec(self.c_in, self.c_out, self.stride, self.act, self.use_se,
                          tuple(sorted(self.kernels)), tuple(self.expands),
                          self.impl)

    def _switch(self, x, k, e, gate, mode, phase, stats):
        p, bns = self._switch_params(mode)
        if phase == "params":
            return p
        if phase == "record":
            _record_stats(bns, self.spec(), mode, stats, e, gate)
            return None
        if self.is_initializing():  # params exist now; skip tracing the branches
            return jnp.zeros(x.shape[:1] + self.spec().out_hw(x) + (self.c_out,),
                             x.dtype)
        y, stats = switch_apply(self.spec(), mode, self.skippable, x, p, k, e, gate)
        _record_stats(bns, self.spec(), mode, stats, e, gate)
        return y


@dataclasses.dataclass(frozen=True)
class SwitchSpec:
    """Static shape of one elastic block for the pure `switch_apply`.

    kernels: sorted ascending; expands: the space's expand ratios (order of
    the `e` choices).
    """

    c_in: int
    c_out: int
    stride: int
    act: str
    use_se: bool
    kernels: tuple[int, ...]
    expands: tuple[int, ...]
    impl: str

    def mids(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(mid channels per expand choice, SE channels per expand choice)."""
        mids = tuple(ss.make_divisible(round(self.c_in * v), 8) for v in self.expands)
        return mids, tuple(ss.make_divisible(m // 4, 8) for m in mids)

    def out_hw(self, x) -> tuple[int, int]:
        return tuple((v - 1) // self.stride + 1 for v in x.shape[1:3])


def switch_stat_masks(spec: SwitchSpec, e: jax.Array, gate: jax.Array
                      ) -> dict[str, jax.Array]:
    """{BN name: bool[C]}: the channels whose statistics subnet (e, gate) sets."""
    mids = spec.mids()[0]
    mmask = layers.channel_mask(_select(e, spec.expands, mids), max(mids))
    return {"expand_bn": mmask & gate, "depthwise_bn": mmask & gate,
            "project_bn": jnp.ones((spec.c_out,), bool) & gate}


def _record_stats(bns, spec, mode, stats, e, gate) -> None:
    if stats is None:
        return
    masks = switch_stat_masks(spec, e, gate)
    for n, bn in bns.items():
        bn(mode, stats[n], masks[n])


def switch_apply(spec: SwitchSpec, mode: str, skippable: bool, x: jax.Array, p,
                 k: jax.Array, e: jax.Array, gate: jax.Array):
    """Pure "switch" forward of one elastic block (no residual).

    `lax.switch` over the expand choices (custom VJP recomputing the taken
    branch), inside it over the kernel sizes; for a `skippable` block a
    `lax.cond` on `gate` (a skipped block returns zeros and zero statistics).

    Args:
      x: float32[N, H, W, c_in]; p: the arrays of `ElasticBlock._switch_params`.
      k, e: traced int32 kernel size and expand ratio; gate: traced bool.

    Returns:
      (y float32[N, H', W', c_out], {BN name: (mean, var) padded to the max
      channels} or None in "eval" mode).
    """
    mids, se_mids = spec.mids()
    mid_max = max(mids)
    k_idx = _select(k, spec.kernels, tuple(range(len(spec.kernels))))
    e_idx = _select(e, spec.expands, tuple(range(len(spec.expands))))
    branches = tuple(functools.partial(_branch, spec, m, se, mode)
                     for m, se in zip(mids, se_mids))

    def run(x, p, k_idx):
        return _switch_recompute(branches, e_idx, k_idx, x, p)

    if not skippable:
        return run(x, p, k_idx)

    def skip(x, p, k_idx):
        y = jnp.zeros(x.shape[:1] + spec.out_hw(x) + (spec.c_out,), x.dtype)
        if mode == "eval":
            return y, None
        z = {"expand_bn": mid_max, "depthwise_bn": mid_max, "project_bn": spec.c_out}
        return y, {n: (jnp.zeros((c,)), jnp.zeros((c,))) for n, c in z.items()}
    return jax.lax.cond(gate, run, skip, x, p, k_idx)


def _branch(spec, m, se, mode, x, p, k_idx):
    """One expand choice (m mid channels, se SE channels), static shapes.

    Returns (y [N, H', W', c_out], {bn name: (mean, var) padded to the
    max channels} or None in eval mode).
    """
    act = layers.activation(spec.act)
    kernels = spec.kernels
    stats = {}

    def bn(h, name, c):
        scale, bias, mean, var = (v[:c] for v in p["bn"][name])
        h, st = layers.batch_norm(h, scale, bias, mean, var, mode)
        if st is not None:
            pad = p["bn"][name][0].shape[0] - c
            stats[name] = tuple(jnp.pad(v, (0, pad)) for v in st)
        return h

    h = act(bn(layers.pointwise(x, p["w"][..., :m]), "expand_bn", m))
    kernel, mats = p["dw"]
    kernel = kernel[..., :m]

    def conv(size, h, kernel, mats):
        kern = layers.transformed_kernels(kernel, mats, kernels, size)[size]
        return layers.depthwise_conv(h, kern, spec.stride, spec.impl)

    convs = [functools.partial(conv, size) for size in kernels]
    h = jax.lax.switch(k_idx, convs, h, kernel, mats)
    h = act(bn(h, "depthwise_bn", m))
    if spec.use_se:
        wr, br, we, be = p["se"]
        s = jax.nn.relu(jnp.mean(h, axis=(1, 2)) @ wr[0, 0, :m, :se]
                        + br[None, :se])
        s = jax.nn.hard_sigmoid(s @ we[0, 0, :se, :m] + be[None, :m])
        h = h * s[:, None, None, :]
    h = layers.pointwise(h, p["wp"][:, :, :m, :])
    h = bn(h, "project_bn", spec.c_out)
    return h, (stats if mode != "eval" else None)
