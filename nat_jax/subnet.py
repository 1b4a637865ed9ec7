"""Extract a compact, static subnet from the masked supernet.

    sub_model, sub_vars, net_config = extract_subnet(model, variables, arch)
    logits = sub_model.apply(sub_vars, images_nhwc)

The subnet holds only the active weights: transformed depthwise kernels of
the chosen size, the first `mid` channels of every expand / depthwise / SE /
project tensor and their BatchNorm statistics, and no skipped blocks.
`net_config` is OFA's `net.config` dict for a static MobileNetV3 plus
top-level "resolution" and "width_mult"; `Arch.from_net_config` parses it
back and `subnet_from_config` rebuilds the module from it alone.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from nat_jax import layers
from nat_jax import search_space as ss
from nat_jax import supernet as sn


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    """One static inverted-bottleneck block."""

    c_in: int
    c_out: int
    kernel: int
    stride: int
    expand: int
    mid: int
    act: str
    use_se: bool
    residual: bool


class Subnet(nn.Module):
    """A static OFA MobileNetV3 (what `extract_subnet` returns)."""

    first_channels: int
    first_block_channels: int
    blocks: tuple[BlockSpec, ...]
    final_expand: int
    feature_mix: int
    num_classes: int
    dropout_rate: float = 0.1
    depthwise_impl: str | None = None
    drop_connect_rate: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """float32[N, R, R, 3] -> logits float32[N, num_classes].

        With `train` and `drop_connect_rate > 0`, residual block i of n drops
        its branch per example with probability `drop_connect_rate * i / n`
        (stochastic depth as EfficientNet; needs rngs={"dropout": key}).
        """
        impl = self.depthwise_impl or layers.default_depthwise_impl()
        mode = "train" if train else "eval"

        def bn(h, c, name):
            return layers.MaskedBatchNorm(c, name=name)(h, jnp.ones((c,), bool), mode)

        c0, c1 = self.first_channels, self.first_block_channels
        w = self.param("first_conv", layers.conv_init, (3, 3, 3, c0))
        x = layers.conv2d(x, w, 2)
        x = jax.nn.hard_swish(bn(x, c0, "first_bn"))
        h = layers.depthwise_conv(
            x, self.param("first_block_dw", layers.conv_init, (3, 3, 1, c0)), 1, impl)
        h = jax.nn.relu(bn(h, c0, "first_block_dw_bn"))
        h = layers.pointwise(h, self.param("first_block_pw", layers.conv_init,
                                           (1, 1, c0, c1)))
        h = bn(h, c1, "first_block_pw_bn")
        x = x + h if c0 == c1 else h
        for i, spec in enumerate(self.blocks):
            y = _StaticBlock(spec, impl, name=f"block_{i + 1}")(x, mode)
            rate = self.drop_connect_rate * (i + 1) / len(self.blocks)
            if spec.residual and train and rate > 0:
                keep = jax.random.bernoulli(self.make_rng("dropout"), 1.0 - rate,
                                            (x.shape[0], 1, 1, 1))
                y = jnp.where(keep, y / (1.0 - rate), 0.0)
            x = x + y if spec.residual else y
        c = self.blocks[-1].c_out if self.blocks else c1
        x = layers.pointwise(x, self.param("final_expand", layers.conv_init,
                                           (1, 1, c, self.final_expand)))
        x = jax.nn.hard_swish(bn(x, self.final_expand, "final_expand_bn"))
        x = jnp.mean(x, axis=(1, 2))
        w = self.param("feature_mix", layers.conv_init,
                       (1, 1, self.final_expand, self.feature_mix))
        x = jax.nn.hard_swish(x @ w[0, 0])
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        w = self.param("classifier_kernel", layers.linear_init,
                       (self.feature_mix, self.num_classes))
        return x @ w + self.param("classifier_bias", nn.initializers.zeros,
                                  (self.num_classes,))


class _StaticBlock(nn.Module):
    spec: BlockSpec
    impl: str

    @nn.compact
    def __call__(self, x, mode):
        s = self.spec
        act = layers.activation(s.act)

        def bn(h, c, name):
            return layers.MaskedBatchNorm(c, name=name)(h, jnp.ones((c,), bool), mode)

        h = layers.pointwise(x, self.param("expand_kernel", layers.conv_init,
                                           (1, 1, s.c_in, s.mid)))
        h = act(bn(h, s.mid, "expand_bn"))
        k = self.param("depthwise_kernel", layers.conv_init,
                       (s.kernel, s.kernel, 1, s.mid))
        h = act(bn(layers.depthwise_conv(h, k, s.stride, self.impl), s.mid,
                   "depthwise_bn"))
        if s.use_se:
            se = ss.make_divisible(s.mid // 4, 8)
            wr = self.param("se_reduce_kernel", layers.conv_init, (1, 1, s.mid, se))
            br = self.param("se_reduce_bias", nn.initializers.zeros, (se,))
            we = self.param("se_expand_kernel", layers.conv_init, (1, 1, se, s.mid))
            be = self.param("se_expand_bias", nn.initializers.zeros, (s.mid,))
            g = jax.nn.relu(jnp.mean(h, axis=(1, 2)) @ wr[0, 0] + br)
            h = h * jax.nn.hard_sigmoid(g @ we[0, 0] + be)[:, None, None, :]
        h = layers.pointwise(h, self.param("project_kernel", layers.conv_init,
                                           (1, 1, s.mid, s.c_out)))
        return bn(h, s.c_out, "project_bn")


def _block_specs(space: ss.SearchSpace, width: float, arch: ss.Arch
                 ) -> list[tuple[int, BlockSpec]]:
    """(supernet block index, spec) of the active blocks of `arch`."""
    ch = space.channels(width)
    out, c_in = [], ch.first_block
    for s, c_out in enumerate(ch.stages):
        for j in range(arch.d[s]):
            b = s * space.max_depth + j
            stride = space.net.stage_strides[s] if j == 0 else 1
            mid = space.mid_channels(c_in, arch.e[b])
            out.append((b + 1, BlockSpec(
                c_in, c_out, arch.ks[b], stride, arch.e[b], mid,
                space.net.stage_acts[s], space.net.stage_se[s],
                stride == 1 and c_in == c_out)))
            c_in = c_out
    return out


def subnet_module(space: ss.SearchSpace, arch: ss.Arch, num_classes: int,
                  **kwargs) -> Subnet:
    """The static module of `arch` without a supernet (fresh weights on init).

    **kwargs: further `Subnet` fields (dropout_rate, depthwise_impl, ...).
    """
    arch.validate(space)
    ch = space.channels(arch.width)
    specs = tuple(s for _, s in _block_specs(space, arch.width, arch))
    return Subnet(ch.first, ch.first_block, specs, ch.final_expand, ch.feature_mix,
                  int(num_classes), **kwargs)


def extract_subnet(model: sn.Supernet, variables: Mapping, arch: ss.Arch
                   ) -> tuple[Subnet, dict, dict]:
    """(subnet module, its variables, OFA-style net.config) of `arch`."""
    sp = model.space
    if abs(arch.width - model.width) > 1e-9:
        raise ValueError(f"Arch width {arch.width} != supernet width {model.width}.")
    arch.validate(sp)
    ch = sp.channels(model.width)
    specs = _block_specs(sp, model.width, arch)
    p, st = variables["params"], variables["batch_stats"]
    params = {k: p[k] for k in p if not k.startswith("block_")}
    stats = {k: st[k] for k in st if not k.startswith("block_")}
    for i, (b, spec) in enumerate(specs):
        bp, bs, m = p[f"block_{b}"], st[f"block_{b}"], spec.mid
        dw = bp["depthwise"]
        mats = {k: v for k, v in dw.items() if k != "kernel"}
        kern = layers.transformed_kernels(dw["kernel"], mats, sp.kernels)[spec.kernel]
        q = {
            "expand_kernel": bp["expand_kernel"][..., :m],
            "expand_bn": jax.tree.map(lambda v: v[:m], bp["expand_bn"]),
            "depthwise_kernel": kern[..., :m],
            "depthwise_bn": jax.tree.map(lambda v: v[:m], bp["depthwise_bn"]),
            "project_kernel": bp["project_kernel"][:, :, :m, :],
            "project_bn": bp["project_bn"],
        }
        if spec.use_se:
            se = ss.make_divisible(m // 4, 8)
            q["se_reduce_kernel"] = bp["se_reduce_kernel"][:, :, :m, :se]
            q["se_reduce_bias"] = bp["se_reduce_bias"][:se]
            q["se_expand_kernel"] = bp["se_expand_kernel"][:, :, :se, :m]
            q["se_expand_bias"] = bp["se_expand_bias"][:m]
        params[f"block_{i + 1}"] = q
        stats[f"block_{i + 1}"] = {
            "expand_bn": jax.tree.map(lambda v: v[:m], bs["expand_bn"]),
            "depthwise_bn": jax.tree.map(lambda v: v[:m], bs["depthwise_bn"]),
            "project_bn": bs["project_bn"],
        }
    sub = Subnet(ch.first, ch.first_block, tuple(s for _, s in specs),
                 ch.final_expand, ch.feature_mix, model.num_classes,
                 model.dropout_rate, model.depthwise_impl)
    return sub, {"params": params, "batch_stats": stats}, net_config(sub, arch)


def _conv_cfg(c_in, c_out, k, stride, act, use_bn=True):
    return {"name": "ConvLayer", "kernel_size": k, "stride": stride, "dilation": 1,
            "groups": 1, "bias": False, "has_shuffle": False, "use_se": False,
            "in_channels": c_in, "out_channels": c_out, "use_bn": use_bn,
            "act_func": act, "dropout_rate": 0, "ops_order": "weight_bn_act"}


def _mb_cfg(c_in, c_out, k, stride, expand, mid, act, use_se):
    return {"name": "MBConvLayer", "in_channels": c_in, "out_channels": c_out,
            "kernel_size": k, "stride": stride, "expand_ratio": expand,
            "mid_channels": mid, "act_func": act, "use_se": use_se, "groups": None}


def _identity(c):
    return {"name": "IdentityLayer", "in_channels": c, "out_channels": c,
            "use_bn": False, "act_func": None, "dropout_rate": 0,
            "ops_order": "weight_bn_act"}


def net_config(sub: Subnet, arch: ss.Arch) -> dict[str, Any]:
    """OFA `net.config` of a static subnet plus "resolution" and "width_mult"."""
    c0, c1 = sub.first_channels, sub.first_block_channels
    blocks = [{"name": "ResidualBlock",
               "conv": _mb_cfg(c0, c1, 3, 1, 1, c0, "relu", False),
               "shortcut": _identity(c0) if c0 == c1 else None}]
    for s in sub.blocks:
        blocks.append({"name": "ResidualBlock",
                       "conv": _mb_cfg(s.c_in, s.c_out, s.kernel, s.stride, s.expand,
                                       s.mid, s.act, s.use_se),
                       "shortcut": _identity(s.c_in) if s.residual else None})
    last = sub.blocks[-1].c_out if sub.blocks else c1
    return {
        "name": "MobileNetV3",
        "bn": {"momentum": layers.BN_MOMENTUM, "eps": layers.BN_EPS},
        "first_conv": _conv_cfg(3, c0, 3, 2, "h_swish"),
        "blocks": blocks,
        "final_expand_layer": _conv_cfg(last, sub.final_expand, 1, 1, "h_swish"),
        "feature_mix_layer": _conv_cfg(sub.final_expand, sub.feature_mix, 1, 1,
                                       "h_swish", use_bn=False),
        "classifier": {"name": "LinearLayer", "in_features": sub.feature_mix,
                       "out_features": sub.num_classes, "bias": True,
                       "use_bn": False, "act_func": None,
                       "dropout_rate": sub.dropout_rate,
                       "ops_order": "weight_bn_act"},
        "resolution": arch.resolution,
        "width_mult": arch.width,
    }


def subnet_from_config(net_config: Mapping[str, Any], num_classes: int | None = None,
                       depthwise_impl: str | None = None) -> Subnet:
    """Rebuild the static module from an OFA-style net.config (no supernet)."""
    try:
        if net_config.get("name", "MobileNetV3") != "MobileNetV3":
            raise ValueError(f"net.config name is {net_config['name']!r}, "
                             f"expected 'MobileNetV3'.")
        first = net_config["blocks"][0]["conv"]
        specs = []
        for blk in net_config["blocks"][1:]:
            c = blk["conv"]
            specs.append(BlockSpec(
                int(c["in_channels"]), int(c["out_channels"]), int(c["kernel_size"]),
                int(c["stride"]), int(c["expand_ratio"]),
                int(c.get("mid_channels") or ss.make_divisible(
                    round(c["in_channels"] * c["expand_ratio"]), 8)),
                c["act_func"], bool(c["use_se"]), blk.get("shortcut") is not None))
        cls = net_config["classifier"]
        return Subnet(
            int(net_config["first_conv"]["out_channels"]), int(first["out_channels"]),
            tuple(specs), int(net_config["final_expand_layer"]["out_channels"]),
            int(net_config["feature_mix_layer"]["out_channels"]),
            int(num_classes or cls["out_features"]),
            float(cls.get("dropout_rate", 0.0)), depthwise_impl)
    except (KeyError, TypeError, IndexError) as err:
        raise ValueError(f"Not an OFA MobileNetV3 net.config: {err!r}.") from None
