r"""Images/second of the masked nat-jax supernet vs OFA's PyTorch supernet.

For a stream of uniformly sampled subnets (same stream for both), at equal
batch size and resolution, on this machine in one run:
  (a) a training step: forward, cross-entropy, backward, SGD(momentum) update;
  (b) an eval forward (running-stat BN, no gradients).
PyTorch uses `set_active_subnet` (it runs only the active subnet); nat-jax
runs one jitted masked program (it pays for the largest subnet). Compile time
is reported separately and excluded from the rates.

Usage:
  python -m benchmarks.supernet_step --batch_size=16 --resolution=160 --steps=6
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
import ofa_oracle  # noqa: E402

from nat_jax import pretrained, supernet  # noqa: E402
from nat_jax import search_space as ss  # noqa: E402

_BATCH = flags.DEFINE_integer("batch_size", 16, "Images per step.")
_RES = flags.DEFINE_integer("resolution", 160, "Input resolution.")
_STEPS = flags.DEFINE_integer("steps", 6, "Timed steps (subnets) per measurement.")
_WIDTH = flags.DEFINE_float("width", 1.0, "Width multiplier (1.0 or 1.2).")
_IMPLS = flags.DEFINE_list("impls", ["shift", "conv"], "nat-jax depthwise impls.")
_CLASSES = flags.DEFINE_integer("num_classes", 1000, "Classifier outputs.")


def _archs(space, n, res, width, seed=0):
    genes = np.array(space.sample(jax.random.key(seed), n))
    genes[:, 0], genes[:, 1] = 0, space.widths.index(width)
    out = []
    for g in genes:
        a = space.decode(g)
        out.append(ss.Arch(res, width, a.ks, a.e, a.d))
    return out


def bench_jax(model, variables, archs, x, y):
    tx = optax.sgd(0.01, momentum=0.9)

    @jax.jit
    def step(params, stats, opt, arrays, key):
        def loss_fn(p):
            logits, upd = model.apply({"params": p, "batch_stats": stats}, x, arrays,
                                      train=True, rngs={"dropout": key},
                                      mutable=["batch_stats"])
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            return loss, upd["batch_stats"]
        (loss, stats), g = jax.value_and_grad(loss_fn, has_aux=True)(params)
        upd, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, upd), stats, opt, loss

    params, stats = variables["params"], variables["batch_stats"]
    opt = tx.init(params)
    t = time.perf_counter()
    out = step(params, stats, opt, archs[0].as_arrays(), jax.random.key(0))
    jax.block_until_ready(out)
    compile_train = time.perf_counter() - t
    params, stats, opt, _ = out
    t = time.perf_counter()
    for i, a in enumerate(archs):
        params, stats, opt, loss = step(params, stats, opt, a.as_arrays(),
                                        jax.random.key(i))
    jax.block_until_ready(loss)
    train = len(archs) * x.shape[0] / (time.perf_counter() - t)
    v = {"params": params, "batch_stats": stats}
    t = time.perf_counter()
    supernet.predict(model, v, x, archs[0]).block_until_ready()
    compile_eval = time.perf_counter() - t
    t = time.perf_counter()
    for a in archs:
        out = supernet.predict(model, v, x, a)
    out.block_until_ready()
    ev = len(archs) * x.shape[0] / (time.perf_counter() - t)
    return train, ev, compile_train, compile_eval


def bench_torch(net, archs, x, y):
    import torch

    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    yt = torch.from_numpy(y.astype(np.int64))
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    net.train()

    def train_step(a):
        net.set_active_subnet(**a.to_ofa())
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(xt), yt)
        loss.backward()
        opt.step()

    train_step(archs[0])  # warm-up
    t = time.perf_counter()
    for a in archs:
        train_step(a)
    train = len(archs) * x.shape[0] / (time.perf_counter() - t)
    net.eval()
    with torch.no_grad():
        net.set_active_subnet(**archs[0].to_ofa())
        net(xt)
        t = time.perf_counter()
        for a in archs:
            net.set_active_subnet(**a.to_ofa())
            net(xt)
    ev = len(archs) * x.shape[0] / (time.perf_counter() - t)
    return train, ev


def main(argv):
    del argv
    import torch

    res, bs, width = _RES.value, _BATCH.value, _WIDTH.value
    space = dataclasses.replace(ss.OFA_MBV3, resolutions=(res,))
    net = ofa_oracle.build(width, n_classes=_CLASSES.value)
    archs = _archs(space, _STEPS.value, res, width)
    rng = np.random.RandomState(0)
    x = rng.randn(bs, res, res, 3).astype(np.float32)
    y = rng.randint(0, _CLASSES.value, bs)
    print(f"backend={jax.default_backend()} devices={jax.device_count()} "
          f"torch_threads={torch.get_num_threads()} cpus={os.cpu_count()} "
          f"batch={bs} res={res} width={width} steps={len(archs)}")
    tt, te = bench_torch(net, archs, x, y)
    print(f"torch ofa      train {tt:8.1f} img/s   eval {te:8.1f} img/s")
    sd = ofa_oracle.legacy_state_dict(ofa_oracle.build(width, n_classes=_CLASSES.value))
    for impl in _IMPLS.value:
        model, variables = pretrained.convert_state_dict(
            sd, width, space=space, depthwise_impl=impl)
        jt, je, ct, ce = bench_jax(model, variables, archs, jnp.asarray(x),
                                   jnp.asarray(y))
        print(f"nat-jax {impl:6s} train {jt:8.1f} img/s   eval {je:8.1f} img/s   "
              f"(compile train {ct:.0f} s, eval {ce:.0f} s)   ratio vs torch: "
              f"train {jt / tt:.2f}x  eval {je / te:.2f}x")


if __name__ == "__main__":
    app.run(main)
