r"""Seconds per subnet evaluation: nat-jax vs OFA's PyTorch, side by side.

One subnet evaluation is what NAT's Algorithm 1 does for every archive
member: BN re-calibration on training images, then a validation pass. Both
sides get the same uniformly sampled subnets (OFA MobileNetV3 w1.0, 1000
classes, random weights) and the same random images, in one process:

  - PyTorch, as NAT's original evaluator does with OFA: `set_active_subnet`,
    `get_active_subnet(preserve_weight=True)` (a static copy),
    `set_running_statistics` (OFA's re-calibration), then eval forwards under
    `no_grad`;
  - nat-jax: `calibration.recalibrate_bn` (one jitted forward + accumulation per
    batch) and `calibration.predict` over the validation batches, per exec mode
    ("switch" is what `exec_mode=None` runs for one subnet per call on CPU,
    see `supernet.default_exec_mode`).

The first subnet of each side is a warm-up (nat-jax: compiles, reported
separately); rates are over the rest. PyTorch is timed before and after
nat-jax (load drift); the ratio uses the faster PyTorch run.

Usage:
  python -m benchmarks.evaluation_vs_pytorch --resolution=128 --subnets=4
"""

from __future__ import annotations

import copy
import dataclasses
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from nat_jax.model import (
    pretrained,
)
from nat_jax.space import search_space as ss
from nat_jax.train import calibration
from tests import ofa_oracle

_RES = flags.DEFINE_integer("resolution", 128, "Input resolution.")
_BATCH = flags.DEFINE_integer("batch_size", 64, "Images per batch (both passes).")
_CALIB = flags.DEFINE_integer("calib_batches", 4, "Re-calibration batches.")
_VAL = flags.DEFINE_integer("val_batches", 4, "Validation batches.")
_SUBNETS = flags.DEFINE_integer("subnets", 4, "Subnets (the first is a warm-up).")
_MODES = flags.DEFINE_list("exec_modes", ["masked", "switch"], "nat-jax modes.")
_CLASSES = flags.DEFINE_integer("num_classes", 1000, "Classifier outputs.")


def sample_archs(space, n, res, width, seed=0):
    """`n` uniformly sampled subnets of `space` at resolution `res`, `width`."""
    genes = np.array(space.sample(jax.random.key(seed), n))
    genes[:, 0], genes[:, 1] = 0, space.widths.index(width)
    return [ss.Arch(res, width, a.ks, a.e, a.d)
            for a in (space.decode(g) for g in genes)]


def torch_evaluate(net, arch, calib, val):
    """NAT's OFA evaluation of one subnet: static copy, OFA re-calibration,
    eval forwards. calib, val: lists of float32[N, 3, R, R] tensors.
    Returns the validation logits' argmax (so the work is not skipped)."""
    import torch
    from ofa.imagenet_classification.elastic_nn.utils import set_running_statistics

    net.set_active_subnet(**arch.to_ofa(ss.OFA_MBV3))
    sub = net.get_active_subnet(preserve_weight=True)
    set_running_statistics(sub, [(x, None) for x in calib])
    sub.eval()
    with torch.no_grad():
        return [sub(x).argmax(1) for x in val]


def jax_evaluate(model, variables, arch, calib, val):
    """nat-jax's evaluation of one subnet; calib, val: float32[N, R, R, 3]."""
    new = calibration.recalibrate_bn(model, variables, arch, calib)
    out = [jnp.argmax(calibration.predict(model, new, x, arch), -1) for x in val]
    return jax.block_until_ready(out)


def time_torch(net, archs, calib, val):
    """Seconds per subnet (the first arch is a warm-up)."""
    torch_evaluate(net, archs[0], calib, val)
    t = time.perf_counter()
    for a in archs[1:]:
        torch_evaluate(net, a, calib, val)
    return (time.perf_counter() - t) / (len(archs) - 1)


def time_jax(model, variables, archs, calib, val):
    """(seconds per subnet, first call incl. compile seconds)."""
    t = time.perf_counter()
    jax_evaluate(model, variables, archs[0], calib, val)
    first = time.perf_counter() - t
    t = time.perf_counter()
    for a in archs[1:]:
        jax_evaluate(model, variables, a, calib, val)
    return (time.perf_counter() - t) / (len(archs) - 1), first


def main(argv):
    del argv
    import torch

    ofa_oracle.stub_torchvision()
    res, bs, width = _RES.value, _BATCH.value, 1.0
    space = dataclasses.replace(ss.OFA_MBV3, resolutions=(res,))
    net = ofa_oracle.build(width, n_classes=_CLASSES.value)
    archs = sample_archs(space, _SUBNETS.value, res, width, seed=3)
    rng = np.random.RandomState(0)
    calib = [rng.randn(bs, res, res, 3).astype(np.float32)
             for _ in range(_CALIB.value)]
    val = [rng.randn(bs, res, res, 3).astype(np.float32) for _ in range(_VAL.value)]
    t_calib = [torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
               for x in calib]
    t_val = [torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
             for x in val]
    print(f"load average {os.getloadavg()[0]:.2f}; backend={jax.default_backend()} "
          f"torch_threads={torch.get_num_threads()} cpus={os.cpu_count()} "
          f"res={res} batch={bs} calib={len(calib)}x{bs} val={len(val)}x{bs} "
          f"subnets={len(archs) - 1} (+1 warm-up)")
    t1 = time_torch(copy.deepcopy(net), archs, t_calib, t_val)
    print(f"torch ofa      {t1:.3f} s/subnet")
    sd = ofa_oracle.legacy_state_dict(net)
    j_calib = [jnp.asarray(x) for x in calib]
    j_val = [jnp.asarray(x) for x in val]
    rows = []
    for mode in _MODES.value:
        model, variables = pretrained.convert_state_dict(sd, width, space=space,
                                                         exec_mode=mode)
        rows.append((mode,) + time_jax(model, variables, archs, j_calib, j_val))
    t2 = time_torch(copy.deepcopy(net), archs, t_calib, t_val)
    print(f"torch ofa      {t2:.3f} s/subnet (again)")
    tt = min(t1, t2)
    for mode, s, first in rows:
        print(f"nat-jax {mode:6s} {s:.3f} s/subnet ({60 / s:.1f} subnets/min; first "
              f"incl. compile {first:.0f} s)   speed vs torch: {tt / s:.2f}x")
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    app.run(main)
