"""Test helper: the PyTorch `ofa` package as a reference supernet.

`ofa.utils` imports torchvision at import time and the available torchvision
wheel does not import beside CPU torch, so a minimal stub goes into
`sys.modules` (network, FLOPs and BN code never call it).
"""

from __future__ import annotations

import sys
import types

import numpy as np


def stub_torchvision() -> None:
    if "torchvision" in sys.modules:
        return
    tv = types.ModuleType("torchvision")
    tv.__path__ = []
    tr = types.ModuleType("torchvision.transforms")
    tr.__path__ = []

    class RandomResizedCrop:  # base class of ofa's MyRandomResizedCrop
        pass

    tr.RandomResizedCrop = RandomResizedCrop
    fn = types.ModuleType("torchvision.transforms.functional")
    tr.functional = fn
    tv.transforms = tr
    sys.modules.update({"torchvision": tv, "torchvision.transforms": tr,
                        "torchvision.transforms.functional": fn})


def build(width: float, n_classes: int = 10, seed: int = 0):
    """A randomised OFAMobileNetV3 (k357, e346, d234) in eval mode."""
    stub_torchvision()
    import torch
    from ofa.imagenet_classification.elastic_nn.networks import OFAMobileNetV3

    torch.manual_seed(seed)
    net = OFAMobileNetV3(n_classes=n_classes, dropout_rate=0, width_mult=width,
                         ks_list=[3, 5, 7], expand_ratio_list=[3, 4, 6],
                         depth_list=[2, 3, 4])
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("_matrix"):
                t.add_(0.1 * torch.randn(t.shape, generator=g))
            elif name.endswith("running_var") or (
                    name.endswith(".weight") and t.ndim == 1):
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            elif t.ndim == 1:  # BN bias / running mean, SE and classifier biases
                t.copy_(0.1 * torch.randn(t.shape, generator=g))
    net.eval()
    return net


def legacy_state_dict(net) -> dict:
    """state_dict with the official files' `mobile_inverted_conv` names."""
    return {k.replace(".conv.", ".mobile_inverted_conv.", 1)
            if k.startswith("blocks.") else k: v.clone()
            for k, v in net.state_dict().items()}


def logits(net, arch, images_nhwc: np.ndarray) -> np.ndarray:
    """Eval logits of `arch` (a nat_jax Arch) from the torch supernet."""
    import dataclasses

    import torch

    sp = small_space()  # the supernet does not depend on resolutions
    sp = dataclasses.replace(sp, resolutions=tuple(sorted(
        {*sp.resolutions, arch.resolution})))
    net.set_active_subnet(**arch.to_ofa(sp))
    x = torch.from_numpy(np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2)))
    with torch.no_grad():
        return net(x).numpy()


# A search space whose resolutions include the small test sizes (the supernet
# itself does not depend on resolutions).
def small_space():
    import dataclasses

    from nat_jax.space import search_space as ss

    return dataclasses.replace(ss.OFA_MBV3, resolutions=(32, 48, 64, 224))


_PAIRS: dict = {}


def pair(width: float):
    """(torch net, legacy state dict, nat-jax model, variables), cached per width."""
    if width not in _PAIRS:
        from nat_jax.model import pretrained

        net = build(width, seed=int(width * 10))
        sd = legacy_state_dict(net)
        # grouped-conv depthwise compiles 2-3x faster; test_supernet checks that
        # "shift" gives the same outputs, and the 224 check uses "shift".
        model, variables = pretrained.convert_state_dict(
            sd, width, space=small_space(), depthwise_impl="conv")
        _PAIRS[width] = (net, sd, model, variables)
    return _PAIRS[width]


def bn_stats_as_ofa(variables, space) -> dict[str, np.ndarray]:
    """nat-jax batch_stats keyed by canonical OFA names."""
    from nat_jax.model import pretrained

    out = {}
    for key, (col, path, _) in pretrained.ofa_key_map(space).items():
        if col == "batch_stats":
            v = variables[col]
            for p in path:
                v = v[p]
            out[key] = np.asarray(v)
    return out


def torch_bn_stats(net) -> dict[str, np.ndarray]:
    from nat_jax.model import pretrained

    return {pretrained.canonical_key(k): v.numpy().copy()
            for k, v in net.state_dict().items()
            if k.endswith("running_mean") or k.endswith("running_var")}
