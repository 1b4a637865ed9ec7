"""The masked OFA MobileNetV3 supernet (Flax Linen).

One module holds the largest network of a `SearchSpace`; the subnet is traced
data (`arch_arrays = {"ks", "e", "d"}`, int32, see `Arch.as_arrays`), so one
compiled program per input resolution serves every subnet:

    model, variables = init_supernet(OFA_MBV3, 1.0, 1000, key)
    logits, upd = model.apply(variables, images_nhwc, arch.as_arrays(),
                              train=True, rngs={"dropout": key},
                              mutable=["batch_stats"])

Elastic kernel: OFA's transform matrices, zero-padded into the largest kernel.
Elastic expand: the first `make_divisible(round(C_in * e), 8)` mid channels
are kept, the rest are zeroed; the SE mid follows the active expand. Elastic
depth: block j of a stage runs iff j < d, as `where(g, x + f(x), x)`; a skipped
block's BatchNorms see `mask = False` and keep their running statistics, as do
inactive channels.

BN re-calibration (OFA's `set_running_statistics`) and eval-mode `predict`
live in `nat_jax.train.calibration`.
"""

from __future__ import annotations

import chex
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from nat_jax.model import layers
from nat_jax.model.elastic_block import ElasticBlock, switch_apply
from nat_jax.runtime import checkpoint
from nat_jax.space import search_space as ss

EXEC_MODES = ("masked", "switch")


def default_exec_mode(single_subnet_eval: bool = False) -> str:
    """What `exec_mode=None` resolves to.

    "switch" for forward-only single-subnet calls (`predict`,
    `recalibrate_bn`, `evaluation.evaluate_subnets` with one subnet per
    call) on CPU, where its eval rate is higher than masked's
    (`python -m benchmarks.supernet_step`);
    "masked" otherwise: direct `apply` calls (adaptation's training step
    takes `AdaptConfig.exec_mode`, "switch" by default), vmapped evaluation
    (switch would compute every branch), and other backends (not measured).
    """
    if single_subnet_eval and jax.default_backend() == "cpu":
        return "switch"
    return "masked"


def for_single_subnet(model: "Supernet") -> "Supernet":
    """`model` with exec_mode=None resolved for forward-only single-subnet use.

    What `predict`, `recalibrate_bn` and single-subnet evaluation apply; an
    explicit exec_mode is kept.
    """
    if model.exec_mode is None:
        return model.clone(exec_mode=default_exec_mode(single_subnet_eval=True))
    return model


class Supernet(nn.Module):
    """Masked OFA MobileNetV3 supernet of `space` at width multiplier `width`.

    Attributes:
      space: the search space (stages, kernels, expands, depths, channels).
      width: width multiplier, one of `space.widths`.
      num_classes: classifier outputs.
      dropout_rate: dropout before the classifier (OFA's default 0.1).
      depthwise_impl: "conv" | "shift" | None (None: per backend, see
        `layers.default_depthwise_impl`).
      exec_mode: "masked" | "switch" | None (None: "masked" in `apply`,
        "switch" in `predict` / `recalibrate_bn` on CPU; see
        `default_exec_mode`). "switch" runs only the active subnet
        (lax.cond / lax.switch per block); under `vmap` over architectures
        those become selects that compute every branch, so vmapped uses
        want "masked".
      scan_blocks: in "switch" mode, run the residual slots of each stage
        (positions 1.., which share all shapes) as one `lax.scan` over their
        variables stacked at apply time (the parameter tree is unchanged):
        one copy of the block in the program instead of one per slot, about
        half the trace and compile time. False unrolls them (same results).
    """

    space: ss.SearchSpace
    width: float
    num_classes: int
    dropout_rate: float = 0.1
    depthwise_impl: str | None = None
    exec_mode: str | None = None
    scan_blocks: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, arch: dict[str, jax.Array], train: bool = False,
                 bn_mode: str | None = None) -> jax.Array:
        """Logits of the subnet `arch`.

        Args:
          x: float32[N, R, R, 3] images (NHWC).
          arch: {"ks": int32[num_blocks], "e": int32[num_blocks],
            "d": int32[num_stages]}.
          train: batch-stat BN with running-stat updates (active channels of
            active blocks only) and dropout (needs rngs={"dropout": key}).
          bn_mode: override the BN mode ("eval" | "train" | "collect").

        Returns:
          float32[N, num_classes].
        """
        sp = self.space
        ch = sp.channels(self.width)
        impl = self.depthwise_impl or layers.default_depthwise_impl()
        mode = bn_mode or ("train" if train else "eval")
        exec_mode = self.exec_mode or default_exec_mode()
        _check_exec_mode(exec_mode)
        yes = jnp.ones((), bool)

        def full(c):
            return jnp.ones((c,), bool)

        w = self.param("first_conv", layers.conv_init, (3, 3, 3, ch.first))
        x = layers.conv2d(x, w, 2)
        x = layers.MaskedBatchNorm(ch.first, name="first_bn")(x, full(ch.first), mode)
        x = jax.nn.hard_swish(x)
        # blocks.0: static dw3x3 -> BN -> relu -> pw -> BN (+ identity if same width)
        w = self.param("first_block_dw", layers.conv_init, (3, 3, 1, ch.first))
        h = layers.depthwise_conv(x, w, 1, impl)
        h = layers.MaskedBatchNorm(ch.first, name="first_block_dw_bn")(
            h, full(ch.first), mode)
        h = jax.nn.relu(h)
        w = self.param("first_block_pw", layers.conv_init,
                       (1, 1, ch.first, ch.first_block))
        h = layers.pointwise(h, w)
        h = layers.MaskedBatchNorm(ch.first_block, name="first_block_pw_bn")(
            h, full(ch.first_block), mode)
        x = x + h if ch.first == ch.first_block else h

        c_in = ch.first_block
        scan = (exec_mode == "switch" and self.scan_blocks
                and not self.is_initializing())
        for group in _block_groups(sp.blocks(self.width), scan):
            blocks, gates = [], []
            for slot in group:
                gates.append(arch["d"][slot.stage] > slot.position
                              if slot.skippable else yes)
                blocks.append(ElasticBlock(
                    c_in=slot.c_in, c_out=slot.c_out, stride=slot.stride,
                    act=slot.act, use_se=slot.use_se, kernels=sp.kernels,
                    expands=sp.expands, impl=impl, exec_mode=exec_mode,
                    skippable=slot.skippable, name=f"block_{slot.index + 1}"))
            if len(group) > 1:
                x = _scan_blocks(blocks, group, gates, x, arch, mode)
            else:
                slot, b = group[0], group[0].index
                y = blocks[0](x, arch["ks"][b], arch["e"][b], gates[0], mode)
                x = y if slot.position == 0 else jnp.where(gates[0], x + y, x)
            c_in = group[-1].c_out

        w = self.param("final_expand", layers.conv_init, (1, 1, c_in, ch.final_expand))
        x = layers.pointwise(x, w)
        x = layers.MaskedBatchNorm(ch.final_expand, name="final_expand_bn")(
            x, full(ch.final_expand), mode)
        x = jax.nn.hard_swish(x)
        x = jnp.mean(x, axis=(1, 2))
        w = self.param("feature_mix", layers.conv_init,
                       (1, 1, ch.final_expand, ch.feature_mix))
        x = jax.nn.hard_swish(x @ w[0, 0])
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        w = self.param("classifier_kernel", layers.linear_init,
                       (ch.feature_mix, self.num_classes))
        b = self.param("classifier_bias", nn.initializers.zeros, (self.num_classes,))
        return x @ w + b[None, :]


def _block_groups(slots, scan: bool) -> list[list[ss.BlockSlot]]:
    """`slots` in order, cut into runs to execute together.

    With `scan`, the residual slots (position > 0) of a stage, which share
    every shape, form one run; every other slot is a run of its own.
    """
    groups = []
    for slot in slots:
        prev = groups[-1][-1] if groups else None
        if (scan and prev is not None and slot.position > 1
                and prev.stage == slot.stage
                and _shape_key(prev) == _shape_key(slot)):
            groups[-1].append(slot)
        else:
            groups.append([slot])
    return groups


def _shape_key(slot):
    return (slot.c_in, slot.c_out, slot.stride, slot.act, slot.use_se)


def _scan_blocks(blocks, group, gates, x, arch, mode):
    """x after the residual blocks `group` of a stage, as one `lax.scan`.

    Every block of the run has the same shapes: their variables (the arrays
    of `ElasticBlock._switch_params`, read under each block's own name, so
    the parameter tree is unchanged) are stacked on a leading axis at apply
    time, and the scan body is one `switch_apply` plus the gated residual
    `where(gate, x + f(x), x)`: the program holds one copy of the block
    instead of one per slot (compile time), and runs the same ops. The BN
    statistics come out stacked and are recorded block by block.
    """
    idx = jnp.asarray([s.index for s in group])
    ks, es = arch["ks"][idx], arch["e"][idx]
    gate = jnp.stack(gates)
    ps = [b(None, None, es[j], gate[j], mode, phase="params")
          for j, b in enumerate(blocks)]
    stacked = jax.tree.map(lambda *v: jnp.stack(v), *ps)
    spec = blocks[0].spec()

    def body(h, xs):
        p, k, e, g = xs
        y, stats = switch_apply(spec, mode, True, h, p, k, e, g)
        return jnp.where(g, h + y, h), stats

    x, stats = jax.lax.scan(body, x, (stacked, ks, es, gate))
    if stats is not None:
        for j, b in enumerate(blocks):
            b(None, None, es[j], gate[j], mode, phase="record",
              stats=jax.tree.map(lambda v, j=j: v[j], stats))
    return x


def _check_exec_mode(mode) -> None:
    if mode not in EXEC_MODES:
        raise ValueError(f"Unknown exec_mode {mode!r}; allowed: {EXEC_MODES} or "
                         f"None.")


def init_supernet(space: ss.SearchSpace, width: float, num_classes: int,
                  key: jax.Array, resolution: int | None = None,
                  **kwargs) -> tuple[Supernet, dict]:
    """A fresh supernet and its variables {"params", "batch_stats"}.

    Args:
      space: search space; width: one of `space.widths`.
      num_classes: classifier size (> 0).
      key: PRNG key for the weights.
      resolution: input size used to trace init (default: smallest of space).
      **kwargs: further `Supernet` fields (dropout_rate, depthwise_impl,
        exec_mode).
    """
    space.width_index(width)
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
    impl = kwargs.get("depthwise_impl")
    if impl is not None and impl not in layers.DEPTHWISE_IMPLS:
        raise ValueError(f"Unknown depthwise_impl {impl!r}; allowed: "
                         f"{layers.DEPTHWISE_IMPLS} or None.")
    if kwargs.get("exec_mode") is not None:
        _check_exec_mode(kwargs["exec_mode"])
    model = Supernet(space, float(width), int(num_classes), **kwargs)
    return model, init_variables(model, key, resolution)


def init_variables(model: Supernet, key: jax.Array, resolution: int | None = None
                   ) -> dict:
    """Fresh {"params", "batch_stats"} with the module's initialisers' laws.

    Same distributions as `model.init` (conv: normal, std sqrt(2/(k*k*out));
    linear: U(+-1/sqrt(in)); BN scale 1, biases 0, transform matrices I;
    running mean 0, var 1), but drawn from two flat random vectors: compiling
    `model.init` for a supernet is slow on CPU, this is a few array ops.
    """
    shapes = variable_shapes(model, resolution)
    flat = flax.traverse_util.flatten_dict(shapes["params"])
    k_norm, k_unif = jax.random.split(key)
    n_norm = sum(s.size for p, s in flat.items() if _law(p, s) == "conv")
    n_unif = sum(s.size for p, s in flat.items() if _law(p, s) == "linear")
    normals = np.asarray(jax.random.normal(k_norm, (max(n_norm, 1),)))
    uniforms = np.asarray(jax.random.uniform(k_unif, (max(n_unif, 1),), minval=-1.0,
                                             maxval=1.0))
    params, i_n, i_u = {}, 0, 0
    for path, s in flat.items():
        law = _law(path, s)
        if law == "conv":
            v = normals[i_n:i_n + s.size].reshape(s.shape) * layers.conv_std(s.shape)
            i_n += s.size
        elif law == "linear":
            v = uniforms[i_u:i_u + s.size].reshape(s.shape) / np.sqrt(s.shape[0])
            i_u += s.size
        elif law == "eye":
            v = np.eye(s.shape[0])
        else:
            v = np.full(s.shape, 1.0 if law == "ones" else 0.0)
        params[path] = jnp.asarray(v, jnp.float32)
    stats = jax.tree_util.tree_map_with_path(
        lambda p, s: jnp.full(s.shape, 1.0 if p[-1].key == "var" else 0.0, s.dtype),
        shapes["batch_stats"])
    return {"params": flax.traverse_util.unflatten_dict(params), "batch_stats": stats}


def _law(path: tuple[str, ...], s: jax.ShapeDtypeStruct) -> str:
    name = path[-1]
    if name == "classifier_kernel":
        return "linear"
    if len(s.shape) == 4:
        return "conv"
    if name == "scale":
        return "ones"
    if name.startswith("m") and "to" in name and len(s.shape) == 2:
        return "eye"
    if name == "bias" or name.endswith("_bias"):
        return "zeros"
    raise ValueError(f"No initialiser for parameter {'/'.join(path)}.")


def init_classifier(model: Supernet, key: jax.Array) -> dict:
    """Fresh {"classifier_kernel", "classifier_bias"} params (OFA's linear init)."""
    fm = model.space.channels(model.width).feature_mix
    return {
        "classifier_kernel": layers.linear_init(key, (fm, model.num_classes)),
        "classifier_bias": jnp.zeros((model.num_classes,), jnp.float32),
    }


def variable_shapes(model: Supernet, resolution: int | None = None) -> dict:
    """ShapeDtypeStructs of `model`'s {"params", "batch_stats"} (no compute)."""
    sp = model.space
    r = resolution or sp.resolutions[0]
    x = jax.ShapeDtypeStruct((1, r, r, 3), jnp.float32)
    arch = sp.max_arch(width=model.width).as_arrays()
    return dict(jax.eval_shape(lambda k: model.init(k, x, arch), jax.random.key(0)))


def check_resolution(resolution) -> int:
    """`resolution` as an int input side (ValueError unless a positive int).

    Any side runs (k // 2 padding, global pooling): the search space's
    resolutions bound the search, not what a subnet can be evaluated at.
    """
    if isinstance(resolution, bool) or int(resolution) != resolution or resolution < 1:
        raise ValueError(f"resolution must be a positive integer, got {resolution!r}.")
    return int(resolution)


def check_arch(model: Supernet, arch: ss.Arch, images: jax.Array,
                resolution: int | None = None) -> None:
    if abs(arch.width - model.width) > 1e-9:
        raise ValueError(f"Arch width {arch.width} does not match the supernet's "
                         f"width {model.width}.")
    sp = model.space
    want = (sp.num_blocks, sp.num_blocks, sp.num_stages)
    if (len(arch.ks), len(arch.e), len(arch.d)) != want:
        raise ValueError(f"Arch does not fit this supernet's space: needs "
                         f"{sp.num_blocks} ks/e entries and {sp.num_stages} depths.")
    chex.assert_shape(images, (None, None, None, 3), exception_type=ValueError,
                      custom_message="pass images float32[N, H, W, 3] (NHWC).")
    h, w = images.shape[1:3]
    if resolution is None:
        if (h, w) != (arch.resolution, arch.resolution):
            raise ValueError(
                f"images are {h}x{w} but the arch's resolution is "
                f"{arch.resolution}; resize first, or pass resolution={h} to run "
                f"the subnet at another input size.")
    elif (h, w) != (check_resolution(resolution),) * 2:
        raise ValueError(f"images are {h}x{w} but resolution={resolution}; pass "
                         f"{resolution}x{resolution} images.")


def sample_arch_arrays(space: ss.SearchSpace, key: jax.Array, n: int
                       ) -> dict[str, np.ndarray]:
    """n uniformly sampled subnets as stacked numpy arch arrays (for streams)."""
    genes = space.sample(key, n)
    return jax.tree.map(np.asarray, space.genes_to_arrays(genes))


# ------------------------------------------------------------- save / load
SUPERNET_KIND = "nat_jax.Supernet"


def save_supernet(directory: str, model: Supernet, variables: dict) -> None:
    """Save a `Supernet` and its variables (params + batch_stats) to a new dir."""
    meta = {
        "kind": SUPERNET_KIND,
        "width": model.width,
        "num_classes": model.num_classes,
        "dropout_rate": model.dropout_rate,
        "space": model.space.to_json(),
    }
    tree = {"params": variables["params"], "batch_stats": variables["batch_stats"]}
    checkpoint.save_pytree(directory, tree, meta)


def load_supernet(directory: str) -> tuple[Supernet, dict]:
    """(model, variables) saved by `save_supernet`."""
    meta = checkpoint.load_metadata(directory)
    if meta.get("kind") != SUPERNET_KIND:
        raise ValueError(f"{directory} does not hold a supernet (kind="
                         f"{meta.get('kind')!r}).")
    space = ss.SearchSpace.from_json(meta["space"])
    model = Supernet(space, float(meta["width"]), int(meta["num_classes"]),
                     dropout_rate=float(meta.get("dropout_rate", 0.1)))
    tree, _ = checkpoint.load_pytree(directory, variable_shapes(model))
    return model, dict(tree)
