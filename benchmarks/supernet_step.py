r"""Images/second of the masked nat-jax supernet vs OFA's PyTorch supernet.

For a stream of uniformly sampled subnets (same stream for both), at equal
batch size and resolution, on this machine in one run:
  (a) a training step: forward, cross-entropy, backward, SGD(momentum) update;
  (b) an eval forward (running-stat BN, no gradients).
PyTorch uses `set_active_subnet` (it runs only the active subnet); nat-jax
runs one jitted program per resolution, either "masked" (pays for the
largest subnet) or "switch" (lax.cond / lax.switch per block: only the
active branch runs). Compile time is reported separately and excluded from
the rates. PyTorch is timed before and after the nat-jax runs (load drift).

With --recal instead: seconds per subnet of `calibration.recalibrate_bn` (one
jitted forward + accumulation per batch) against the previous eager form
(jitted forward, statistics summed op by op on the host side), tiny space,
48 px, 10 batches of 200 random images, per exec mode.

Usage:
  python -m benchmarks.supernet_step --batch_size=16 --resolution=128 --steps=5
  python -m benchmarks.supernet_step --recal
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

from nat_jax.model import (
    pretrained,
    supernet,
)
from nat_jax.space import search_space as ss
from nat_jax.train import calibration
from tests import ofa_oracle

_BATCH = flags.DEFINE_integer("batch_size", 16, "Images per step.")
_RES = flags.DEFINE_integer("resolution", 160, "Input resolution.")
_STEPS = flags.DEFINE_integer("steps", 6, "Timed steps (subnets) per measurement.")
_WIDTH = flags.DEFINE_float("width", 1.0, "Width multiplier (1.0 or 1.2).")
_IMPLS = flags.DEFINE_list("impls", ["shift"], "nat-jax depthwise impls.")
_MODES = flags.DEFINE_list(
    "exec_modes", ["masked", "switch"],
    "nat-jax exec modes; 'switch_unrolled' is switch without the stage scan.")
_CLASSES = flags.DEFINE_integer("num_classes", 1000, "Classifier outputs.")
_RECAL = flags.DEFINE_bool("recal", False, "Time BN re-calibration instead.")


def sample_archs(space, n, res, width, seed=0):
    """`n` uniformly sampled subnets of `space` at resolution `res`, `width`."""
    genes = np.array(space.sample(jax.random.key(seed), n))
    genes[:, 0], genes[:, 1] = 0, space.widths.index(width)
    out = []
    for g in genes:
        a = space.decode(g)
        out.append(ss.Arch(res, width, a.ks, a.e, a.d))
    return out


def make_train_step(model, tx):
    """Jitted (params, stats, opt, images, labels, arrays, key) -> same + loss.

    One supernet training step: forward of subnet `arrays` with batch-stat
    BN, cross-entropy, backward, `tx` update. Images float32[B, R, R, 3] and
    labels int32[B] are arguments (not baked into the program).
    """
    @jax.jit
    def step(params, stats, opt, x, y, arrays, key):
        def loss_fn(p):
            logits, upd = model.apply({"params": p, "batch_stats": stats}, x, arrays,
                                      train=True, rngs={"dropout": key},
                                      mutable=["batch_stats"])
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            return loss, upd["batch_stats"]
        (loss, stats), g = jax.value_and_grad(loss_fn, has_aux=True)(params)
        upd, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, upd), stats, opt, loss
    return step


def compile_seconds(model, variables, arch, batch_size):
    """Seconds to trace, lower and compile the training step at arch.resolution."""
    tx = optax.sgd(0.01, momentum=0.9)
    params, stats = variables["params"], variables["batch_stats"]
    r = arch.resolution
    x = jax.ShapeDtypeStruct((batch_size, r, r, 3), jnp.float32)
    y = jax.ShapeDtypeStruct((batch_size,), jnp.int32)
    t = time.perf_counter()
    make_train_step(model, tx).lower(params, stats, tx.init(params), x, y,
                                     arch.as_arrays(), jax.random.key(0)).compile()
    return time.perf_counter() - t


def bench_jax(model, variables, archs, x, y):
    """(train img/s, eval img/s, train compile s, eval compile s) of `model`."""
    tx = optax.sgd(0.01, momentum=0.9)
    step = make_train_step(model, tx)
    params, stats = variables["params"], variables["batch_stats"]
    opt = tx.init(params)
    t = time.perf_counter()
    out = step(params, stats, opt, x, y, archs[0].as_arrays(), jax.random.key(0))
    jax.block_until_ready(out)
    compile_train = time.perf_counter() - t
    params, stats, opt, _ = out
    t = time.perf_counter()
    for i, a in enumerate(archs):
        params, stats, opt, loss = step(params, stats, opt, x, y, a.as_arrays(),
                                        jax.random.key(i))
    jax.block_until_ready(loss)
    train = len(archs) * x.shape[0] / (time.perf_counter() - t)
    v = {"params": params, "batch_stats": stats}
    t = time.perf_counter()
    calibration.predict(model, v, x, archs[0]).block_until_ready()
    compile_eval = time.perf_counter() - t
    t = time.perf_counter()
    for a in archs:
        out = calibration.predict(model, v, x, a)
    out.block_until_ready()
    ev = len(archs) * x.shape[0] / (time.perf_counter() - t)
    return train, ev, compile_train, compile_eval


def bench_torch(net, archs, x, y, device="cpu"):
    """(train img/s, eval img/s) of OFA's PyTorch supernet on `device`."""
    import torch

    def sync():
        if str(device).startswith("cuda"):
            torch.cuda.synchronize()

    net = net.to(device)
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).to(device)
    yt = torch.from_numpy(y.astype(np.int64)).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    net.train()

    def train_step(a):
        net.set_active_subnet(**a.to_ofa(ss.OFA_MBV3))
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(xt), yt)
        loss.backward()
        opt.step()

    train_step(archs[0])  # warm-up
    sync()
    t = time.perf_counter()
    for a in archs:
        train_step(a)
    sync()
    train = len(archs) * x.shape[0] / (time.perf_counter() - t)
    net.eval()
    with torch.no_grad():
        net.set_active_subnet(**archs[0].to_ofa(ss.OFA_MBV3))
        net(xt)
        sync()
        t = time.perf_counter()
        for a in archs:
            net.set_active_subnet(**a.to_ofa(ss.OFA_MBV3))
            net(xt)
        sync()
    ev = len(archs) * x.shape[0] / (time.perf_counter() - t)
    return train, ev


@functools.partial(jax.jit, static_argnums=0)
def _collect(model, variables, images, arrays):
    _, out = model.apply(variables, images, arrays, bn_mode="collect",
                         mutable=["bn_stats"])
    return out["bn_stats"]


def _recal_eager(model, variables, arch, batches):
    """The previous recalibrate_bn: jitted forward, eager accumulation/merge."""
    arrays, total, acc = arch.as_arrays(), 0, None
    for images in batches:
        stats = _collect(model, variables, images, arrays)
        n = images.shape[0]
        w = jax.tree.map(lambda v: v * n if v.dtype != bool else v, stats)
        acc = w if acc is None else jax.tree.map(
            lambda a, v: a + v if v.dtype != bool else v, acc, w)
        total += n

    def merge(old, acc):
        if "mean" in old and not isinstance(old["mean"], dict):
            return {k: jnp.where(acc["mask"], acc[k] / total, old[k])
                    for k in ("mean", "var")}
        return {k: merge(v, acc[k]) for k, v in old.items()}
    return {"params": variables["params"],
            "batch_stats": merge(variables["batch_stats"], acc)}


def bench_recal():
    space = ss.SearchSpace.tiny()
    res = space.resolutions[-1]
    rng = np.random.RandomState(0)
    batches = [jnp.asarray(rng.randn(200, res, res, 3).astype(np.float32))
               for _ in range(10)]
    archs = [ss.Arch(res, 1.0, a.ks, a.e, a.d)
             for a in sample_archs(space, 9, res, 1.0, seed=1)]
    print(f"BN re-calibration, tiny space, {res} px, 10 x 200 images, "
          f"{len(archs) - 1} subnets, cpus={os.cpu_count()}")
    for mode in supernet.EXEC_MODES:
        model, variables = supernet.init_supernet(space, 1.0, 10, jax.random.key(0),
                                                  exec_mode=mode)
        out = {}
        jitted = calibration.recalibrate_bn
        for name, fn in (("eager", _recal_eager), ("jitted", jitted)):
            t = time.perf_counter()
            jax.block_until_ready(fn(model, variables, archs[0], batches))
            first = time.perf_counter() - t
            t = time.perf_counter()
            for a in archs[1:]:
                jax.block_until_ready(fn(model, variables, a, batches))
            out[name] = (time.perf_counter() - t) / (len(archs) - 1)
            print(f"  {mode:6s} {name:6s} {out[name]:.3f} s/subnet "
                  f"(first call incl. compile {first:.1f} s)")
        print(f"  {mode:6s} speedup jitted vs eager: "
              f"{out['eager'] / out['jitted']:.2f}x")


def main(argv):
    del argv
    if _RECAL.value:
        return bench_recal()
    import torch

    res, bs, width = _RES.value, _BATCH.value, _WIDTH.value
    space = dataclasses.replace(ss.OFA_MBV3, resolutions=(res,))
    net = ofa_oracle.build(width, n_classes=_CLASSES.value)
    archs = sample_archs(space, _STEPS.value, res, width)
    rng = np.random.RandomState(0)
    x = rng.randn(bs, res, res, 3).astype(np.float32)
    y = rng.randint(0, _CLASSES.value, bs)
    print(f"backend={jax.default_backend()} devices={jax.device_count()} "
          f"torch_threads={torch.get_num_threads()} cpus={os.cpu_count()} "
          f"batch={bs} res={res} width={width} steps={len(archs)}")
    tt, te = bench_torch(net, archs, x, y)
    print(f"torch ofa      train {tt:8.1f} img/s   eval {te:8.1f} img/s")
    sd = ofa_oracle.legacy_state_dict(ofa_oracle.build(width, n_classes=_CLASSES.value))
    rows = []
    for impl in _IMPLS.value:
        for mode in _MODES.value:
            model, variables = pretrained.convert_state_dict(
                sd, width, space=space, depthwise_impl=impl,
                exec_mode=mode.split("_")[0])
            if mode == "switch_unrolled":
                model = model.clone(scan_blocks=False)
            rows.append((impl, mode) + bench_jax(
                model, variables, archs, jnp.asarray(x), jnp.asarray(y)))
    tt2, te2 = bench_torch(net, archs, x, y)
    print(f"torch ofa      train {tt2:8.1f} img/s   eval {te2:8.1f} img/s (again)")
    tt, te = max(tt, tt2), max(te, te2)
    print(f"ratios against the faster torch run (train {tt:.1f}, eval {te:.1f}):")
    for impl, mode, jt, je, ct, ce in rows:
        print(f"nat-jax {impl:5s} {mode:15s} train {jt:8.1f} img/s   eval {je:8.1f} "
              f"img/s   (compile train {ct:.0f} s, eval {ce:.0f} s)   ratio vs "
              f"torch: train {jt / tt:.2f}x  eval {je / te:.2f}x")


if __name__ == "__main__":
    app.run(main)
