"""Import official OFA MobileNetV3 PyTorch checkpoints as Flax variables.

    model, variables = load_ofa_checkpoint("ofa_mbv3_d234_e346_k357_w1.0", 1.0,
                                           space=search_space.OFA_MBV3)

OFA publishes one supernet per width multiplier (w1.0 and w1.2; NAT section
3.2 searches the width as the genotype's second gene): convert each and save
them as one set (`supernet_set.save_all`, or `experiments.convert_ofa` with
both files). `checkpoint_width` reads a file's width from its channel counts
(`width=None` does that).

Accepts `{"state_dict": ...}` or a bare state dict, with legacy
(`blocks.N.mobile_inverted_conv.*`) or current (`blocks.N.conv.*`) names and
either nesting of dynamic layers (`.bn.bn.` / `.bn.`, `.conv.conv.weight` /
`.conv.weight`, `.linear.linear.` / `.linear.`). Every expected tensor must be
present and every tensor must be used (OFA's own loader silently keeps init
values for missing keys). Layouts: conv OIHW -> HWIO, depthwise (C,1,k,k) ->
(k,k,1,C), linear (out,in) -> (in,out); `num_batches_tracked` is dropped.
torch is needed only to read the `.pth` file and is imported lazily.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import jax
import numpy as np

from nat_jax.model import supernet
from nat_jax.space import search_space as ss

_BN = {"weight": "scale", "bias": "bias", "running_mean": "mean",
       "running_var": "var"}


def _bn(prefix: str, path: tuple[str, ...]) -> dict:
    return {f"{prefix}.{k}": (("params" if k in ("weight", "bias")
                               else "batch_stats"), path + (v,), "vec")
            for k, v in _BN.items()}


def ofa_key_map(space: ss.SearchSpace) -> dict[str, tuple[str, tuple, str]]:
    """Canonical OFA key -> (collection, variable path, layout kind)."""
    m = {"first_conv.conv.weight": ("params", ("first_conv",), "conv")}
    m.update(_bn("first_conv.bn", ("first_bn",)))
    b0 = "blocks.0.conv."
    m[b0 + "depth_conv.conv.weight"] = ("params", ("first_block_dw",), "conv")
    m.update(_bn(b0 + "depth_conv.bn", ("first_block_dw_bn",)))
    m[b0 + "point_linear.conv.weight"] = ("params", ("first_block_pw",), "conv")
    m.update(_bn(b0 + "point_linear.bn", ("first_block_pw_bn",)))
    ks = sorted(space.kernels)
    # Names do not depend on the width; any of the space's gives the layout.
    for slot in space.blocks(space.widths[0]):
        b = slot.index + 1
        blk, pre = f"block_{b}", f"blocks.{b}.conv."
        m[pre + "inverted_bottleneck.conv.weight"] = (
            "params", (blk, "expand_kernel"), "conv")
        m.update(_bn(pre + "inverted_bottleneck.bn", (blk, "expand_bn")))
        m[pre + "depth_conv.conv.weight"] = (
            "params", (blk, "depthwise", "kernel"), "conv")
        for big, small in zip(ks[::-1][:-1], ks[::-1][1:]):
            m[pre + f"depth_conv.conv.{big}to{small}_matrix"] = (
                "params", (blk, "depthwise", f"m{big}to{small}"), "matrix")
        m.update(_bn(pre + "depth_conv.bn", (blk, "depthwise_bn")))
        if slot.use_se:
            for part, name in (("reduce", "se_reduce"), ("expand", "se_expand")):
                m[pre + f"depth_conv.se.fc.{part}.weight"] = (
                    "params", (blk, name + "_kernel"), "conv")
                m[pre + f"depth_conv.se.fc.{part}.bias"] = (
                    "params", (blk, name + "_bias"), "vec")
        m[pre + "point_linear.conv.weight"] = (
            "params", (blk, "project_kernel"), "conv")
        m.update(_bn(pre + "point_linear.bn", (blk, "project_bn")))
    m["final_expand_layer.conv.weight"] = ("params", ("final_expand",), "conv")
    m.update(_bn("final_expand_layer.bn", ("final_expand_bn",)))
    m["feature_mix_layer.conv.weight"] = ("params", ("feature_mix",), "conv")
    m["classifier.linear.weight"] = ("params", ("classifier_kernel",), "linear")
    m["classifier.linear.bias"] = ("params", ("classifier_bias",), "vec")
    return m


def canonical_key(key: str) -> str:
    """Map legacy/nested OFA names onto one canonical form."""
    key = key.replace(".mobile_inverted_conv.", ".conv.")
    key = key.replace(".bn.bn.", ".bn.")
    key = key.replace(".conv.conv.weight", ".conv.weight")
    return key.replace(".linear.linear.", ".linear.")


def _to_flax(value: np.ndarray, kind: str) -> np.ndarray:
    if kind == "conv":  # OIHW -> HWIO (depthwise (C,1,k,k) -> (k,k,1,C))
        return np.transpose(value, (2, 3, 1, 0))
    if kind == "linear":
        return value.T
    return value


def _set(tree: dict, path: tuple, value) -> None:
    for p in path[:-1]:
        tree = tree.setdefault(p, {})
    tree[path[-1]] = value


def _get(tree: Mapping, path: tuple):
    for p in path:
        tree = tree[p]
    return tree


def checkpoint_width(state_dict: Mapping[str, Any], space: ss.SearchSpace
                     ) -> float:
    """The width multiplier of an OFA state dict, from the output channels of
    its first conv and final expand layer (the two that OFA's make_divisible
    rounding sets per width; e.g. 16 and 960 at w1.0, 24 and 1152 at w1.2).

    Raises:
      ValueError: the tensors are missing, or no width of `space` has those
        channel counts.
    """
    shapes = {canonical_key(k): tuple(np.shape(v)) for k, v in state_dict.items()
              if k.endswith(".weight")}
    names = ("first_conv.conv.weight", "final_expand_layer.conv.weight")
    if not all(n in shapes for n in names):
        raise ValueError(f"Not an OFA MobileNetV3 checkpoint: it lacks "
                         f"{[n for n in names if n not in shapes]}.")
    got = tuple(shapes[n][0] for n in names)
    for w in space.widths:
        ch = space.channels(w)
        if (ch.first, ch.final_expand) == got:
            return float(w)
    raise ValueError(f"The checkpoint's first conv / final expand layer have "
                     f"{got[0]} / {got[1]} channels: no width of the space "
                     f"{list(space.widths)} has those; pass the search space it was "
                     f"trained for.")


def convert_state_dict(state_dict: Mapping[str, Any], width: float | None,
                       num_classes: int | None = None, key: jax.Array | None = None,
                       *, space: ss.SearchSpace, **model_kwargs
                       ) -> tuple[supernet.Supernet, dict]:
    """(model, variables) from an OFA state dict of numpy arrays (or tensors).

    `space` is the search space the checkpoint was trained for (required;
    `search_space.OFA_MBV3` for OFA's published supernets). `width` None
    reads it from the checkpoint (`checkpoint_width`).
    """
    if width is None:
        width = checkpoint_width(state_dict, space)
    space.width_index(width)
    sd = {}
    for k, v in state_dict.items():
        if k.endswith("num_batches_tracked"):
            continue
        ck = canonical_key(k)
        if ck in sd:
            raise ValueError(f"State dict has two tensors for {ck!r} (legacy and "
                             f"current names?).")
        sd[ck] = np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v,
                            np.float32)
    kmap = ofa_key_map(space)
    missing = sorted(set(kmap) - set(sd))
    unexpected = sorted(set(sd) - set(kmap))
    if missing or unexpected:
        raise ValueError(
            f"Not an OFA MobileNetV3 checkpoint of this search space: "
            f"{len(missing)} missing key(s) {missing[:20]}, {len(unexpected)} "
            f"unexpected key(s) {unexpected[:20]}.")
    ckpt_classes = int(sd["classifier.linear.weight"].shape[0])
    num_classes = ckpt_classes if num_classes is None else int(num_classes)
    _check_width(sd, space, width)
    model = supernet.Supernet(space, float(width), num_classes, **model_kwargs)
    shapes = supernet.variable_shapes(model)
    variables: dict = {}
    replace_head = num_classes != ckpt_classes
    for ofa_key, (col, path, kind) in kmap.items():
        value = _to_flax(sd[ofa_key], kind)
        want = _get(shapes[col], path).shape
        is_head = path[0] in ("classifier_kernel", "classifier_bias")
        if is_head and replace_head:
            continue
        if tuple(value.shape) != tuple(want):
            raise ValueError(f"Checkpoint tensor {ofa_key!r} has shape "
                             f"{sd[ofa_key].shape}; width {width} needs "
                             f"{_from_flax_shape(want, kind)}.")
        _set(variables.setdefault(col, {}), path, jax.numpy.asarray(value))
    if replace_head:
        if key is None:
            raise ValueError(f"The checkpoint has {ckpt_classes} classes; for "
                             f"num_classes={num_classes} pass key= to initialise a "
                             f"fresh classifier.")
        fresh = supernet.init_classifier(model, key)
        variables["params"].update(fresh)
    return model, variables


def _from_flax_shape(shape, kind):
    if kind == "conv":
        return (shape[3], shape[2], shape[0], shape[1])
    if kind == "linear":
        return (shape[1], shape[0])
    return tuple(shape)


def _check_width(sd: Mapping[str, np.ndarray], space: ss.SearchSpace, width: float
                 ) -> None:
    got = sd["first_conv.conv.weight"].shape[0]
    fe = sd["final_expand_layer.conv.weight"].shape[0]
    want = space.channels(width)
    if (got, fe) != (want.first, want.final_expand):
        other = [w for w in space.widths
                 if (space.channels(w).first, space.channels(w).final_expand)
                 == (got, fe)]
        hint = (f"; it looks like a width-{other[0]} checkpoint" if other else "")
        raise ValueError(f"Checkpoint does not match width {width} (first conv has "
                         f"{got} channels, final expand {fe}; expected "
                         f"{want.first}, {want.final_expand}){hint}.")


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """The state dict of an OFA `.pth` file as numpy arrays (needs torch)."""
    try:
        import torch
    except ImportError:
        raise ImportError("Reading OFA .pth checkpoints needs PyTorch: "
                          "pip install torch==2.13.0") from None
    if not os.path.isfile(path):
        raise ValueError(f"Checkpoint file {path} does not exist.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"Cannot read {path} as a PyTorch checkpoint: "
                         f"{type(err).__name__}: {str(err)[:200]}") from None
    if isinstance(obj, Mapping) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a state dict.")
    return {k: v.detach().cpu().numpy() for k, v in obj.items()
            if hasattr(v, "detach")}


def load_ofa_checkpoint(path: str, width: float | None,
                        num_classes: int | None = None,
                        key: jax.Array | None = None, *, space: ss.SearchSpace,
                        **model_kwargs) -> tuple[supernet.Supernet, dict]:
    """(model, variables) from an official OFA MobileNetV3 `.pth` supernet.

    Args:
      path: `.pth` file ({"state_dict": ...} or a bare state dict).
      width: 1.0 or 1.2 (must match the file); None reads it from the file.
      num_classes: None keeps the checkpoint's classifier; another value
        replaces it with a fresh init from `key` (required then).
      space: the search space the checkpoint was trained for (required;
        `search_space.OFA_MBV3` for OFA's published supernets).
    """
    return convert_state_dict(read_state_dict(path), width, num_classes, key,
                              space=space, **model_kwargs)
