"""Extract a compact, static subnet from the masked supernet.

    sub_model, sub_vars, net_config = extract_subnet(model, variables, arch)
    logits = sub_model.apply(sub_vars, images_nhwc)

The subnet holds only the active weights: transformed depthwise kernels of
the chosen size, the first `mid` channels of every expand / depthwise / SE /
project tensor and their BatchNorm statistics, and no skipped blocks.
`net_config` is OFA's `net.config` dict for a static MobileNetV3 plus
top-level "resolution" and "width_mult"; `Arch.from_net_config` parses it
back and `subnet_from_config` rebuilds the module from it alone.

`Subnet` is `Stem`, the active `Block`s (one per active slot of
`SearchSpace.blocks`) and `Head`; these three public modules are also what
`nat_jax.deploy.latency` times layer by layer.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from nat_jax.model import layers
from nat_jax.model import supernet as sn
from nat_jax.space import search_space as ss


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


def _bn(module: nn.Module, h: jax.Array, c: int, name: str, mode: str) -> jax.Array:
    del module  # called inside `module`'s compact method: the BN is its child
    return layers.MaskedBatchNorm(c, name=name)(h, jnp.ones((c,), bool), mode)


def _stem(module: nn.Module, x: jax.Array, c0: int, c1: int, impl: str, mode: str
          ) -> jax.Array:
    """First conv + BN + h_swish and the static first block, with their
    parameters declared on `module` (so `Subnet` and `Stem` share names)."""
    w = module.param("first_conv", layers.conv_init, (3, 3, 3, c0))
    x = layers.conv2d(x, w, 2)
    x = jax.nn.hard_swish(_bn(module, x, c0, "first_bn", mode))
    h = layers.depthwise_conv(
        x, module.param("first_block_dw", layers.conv_init, (3, 3, 1, c0)), 1, impl)
    h = jax.nn.relu(_bn(module, h, c0, "first_block_dw_bn", mode))
    h = layers.pointwise(h, module.param("first_block_pw", layers.conv_init,
                                         (1, 1, c0, c1)))
    h = _bn(module, h, c1, "first_block_pw_bn", mode)
    return x + h if c0 == c1 else h


def _head(module: nn.Module, x: jax.Array, c_in: int, final_expand: int,
          feature_mix: int, num_classes: int, dropout_rate: float, mode: str
          ) -> jax.Array:
    """Final expand + BN + h_swish, pool, feature mix, dropout, classifier,
    with their parameters declared on `module`."""
    x = layers.pointwise(x, module.param("final_expand", layers.conv_init,
                                         (1, 1, c_in, final_expand)))
    x = jax.nn.hard_swish(_bn(module, x, final_expand, "final_expand_bn", mode))
    x = jnp.mean(x, axis=(1, 2))
    w = module.param("feature_mix", layers.conv_init,
                     (1, 1, final_expand, feature_mix))
    x = jax.nn.hard_swish(x @ w[0, 0])
    x = nn.Dropout(dropout_rate, deterministic=mode != "train")(x)
    w = module.param("classifier_kernel", layers.linear_init,
                     (feature_mix, num_classes))
    b = module.param("classifier_bias", nn.initializers.zeros, (num_classes,))
    return x @ w + b[None, :]


class Stem(nn.Module):
    """First conv (3x3, stride 2) + BN + h_swish and the static first block
    (depthwise 3x3, pointwise to `c1`, residual when `c0 == c1`).

    float32[N, R, R, 3] -> float32[N, (R - 1) // 2 + 1, same, c1]; the same
    code and parameter names as `Subnet`'s stem.
    """

    c0: int
    c1: int
    impl: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, mode: str = "eval") -> jax.Array:
        impl = self.impl or layers.default_depthwise_impl()
        return _stem(self, x, self.c0, self.c1, impl, mode)


class Head(nn.Module):
    """Final expand 1x1 + BN + h_swish, global average pool, feature mix +
    h_swish, dropout, classifier.

    float32[N, H, W, c_in] -> logits float32[N, num_classes]; the same code and
    parameter names as `Subnet`'s head.
    """

    c_in: int
    final_expand: int
    feature_mix: int
    num_classes: int
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, mode: str = "eval") -> jax.Array:
        return _head(self, x, self.c_in, self.final_expand, self.feature_mix,
                     self.num_classes, self.dropout_rate, mode)


class Block(nn.Module):
    """One static inverted-bottleneck block with its shortcut.

    expand 1x1 + BN + act, depthwise k x k (stride) + BN + act, optional SE,
    project 1x1 + BN; plus the input when `spec.residual`. float32[N, H, W,
    c_in] -> float32[N, (H - 1) // stride + 1, same, c_out].
    """

    spec: BlockSpec
    impl: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, mode: str = "eval", drop_rate: float = 0.0,
                 drop_key: jax.Array | None = None) -> jax.Array:
        """`mode` as `layers.MaskedBatchNorm`. With `drop_key` and a residual
        block, the branch is dropped per example with probability `drop_rate`
        (stochastic depth, kept branches scaled by 1 / (1 - drop_rate))."""
        s = self.spec
        impl = self.impl or layers.default_depthwise_impl()
        act = layers.activation(s.act)
        h = layers.pointwise(x, self.param("expand_kernel", layers.conv_init,
                                           (1, 1, s.c_in, s.mid)))
        h = act(_bn(self, h, s.mid, "expand_bn", mode))
        k = self.param("depthwise_kernel", layers.conv_init,
                       (s.kernel, s.kernel, 1, s.mid))
        h = act(_bn(self, layers.depthwise_conv(h, k, s.stride, impl), s.mid,
                    "depthwise_bn", mode))
        if s.use_se:
            se = ss.make_divisible(s.mid // 4, 8)
            wr = self.param("se_reduce_kernel", layers.conv_init, (1, 1, s.mid, se))
            br = self.param("se_reduce_bias", nn.initializers.zeros, (se,))
            we = self.param("se_expand_kernel", layers.conv_init, (1, 1, se, s.mid))
            be = self.param("se_expand_bias", nn.initializers.zeros, (s.mid,))
            g = jax.nn.relu(jnp.mean(h, axis=(1, 2)) @ wr[0, 0] + br[None, :])
            h = h * jax.nn.hard_sigmoid(g @ we[0, 0] + be[None, :])[:, None, None, :]
        h = layers.pointwise(h, self.param("project_kernel", layers.conv_init,
                                           (1, 1, s.mid, s.c_out)))
        y = _bn(self, h, s.c_out, "project_bn", mode)
        if not s.residual:
            return y
        if drop_key is not None and drop_rate > 0:
            keep = jax.random.bernoulli(drop_key, 1.0 - drop_rate,
                                        (x.shape[0], 1, 1, 1))
            y = jnp.where(keep, y / (1.0 - drop_rate), 0.0)
        return x + y


class Subnet(nn.Module):
    """A static OFA MobileNetV3 (what `extract_subnet` returns): `Stem`, the
    `Block`s, `Head` (parameters flat on this module, blocks as block_i)."""

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
        x = _stem(self, x, self.first_channels, self.first_block_channels, impl,
                  mode)
        for i, spec in enumerate(self.blocks):
            rate = self.drop_connect_rate * (i + 1) / len(self.blocks)
            key = (self.make_rng("dropout")
                   if spec.residual and train and rate > 0 else None)
            x = Block(spec, impl, name=f"block_{i + 1}")(x, mode, rate, key)
        c = self.blocks[-1].c_out if self.blocks else self.first_block_channels
        return _head(self, x, c, self.final_expand, self.feature_mix,
                     self.num_classes, self.dropout_rate, mode)


def _block_specs(space: ss.SearchSpace, width: float, arch: ss.Arch
                 ) -> list[tuple[int, BlockSpec]]:
    """(supernet block index, spec) of the active blocks of `arch`."""
    out = []
    for slot in space.blocks(width):
        if slot.position >= arch.d[slot.stage]:
            continue
        e = arch.e[slot.index]
        out.append((slot.index + 1, BlockSpec(
            slot.c_in, slot.c_out, arch.ks[slot.index], slot.stride, e,
            space.mid_channels(slot.c_in, e), slot.act, slot.use_se,
            slot.stride == 1 and slot.c_in == slot.c_out)))
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
