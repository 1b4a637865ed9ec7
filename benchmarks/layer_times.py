r"""Where a supernet training step's time goes: layer by layer vs PyTorch.

At the shapes of OFA MobileNetV3 w1.0 blocks (batch 8, 192 px input), side by
side in one run, milliseconds per call (jitted; PyTorch with its own threads):

  - 1x1 convolution, forward + both gradients: `layers.pointwise` vs
    `torch.nn.Conv2d(.., 1)`;
  - depthwise convolution: nat-jax's "shift" forward, input gradient and
    kernel gradient separately (`layers.depthwise_conv` and its custom VJP),
    vs PyTorch's whole depthwise layer (forward + both gradients);
  - the kernel gradient's forms: the shipped one
    (`layers._depthwise_kernel_grad`: per kernel row one batched matmul, in
    3 column blocks where the input is wide), "one block" (the single
    matmul per row it replaced) and "reduce" (k*k fused multiply-reductions).

Usage:
  python -m benchmarks.layer_times [--batch_size=8] [--reps=10]
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from jax import lax

from nat_jax import layers

_BATCH = flags.DEFINE_integer("batch_size", 8, "Images per call.")
_REPS = flags.DEFINE_integer("reps", 10, "Timed calls per measurement.")

# (input side H, block input channels, expanded channels, kernel, stride) of
# OFA MobileNetV3 w1.0 blocks at 192 px (largest expand where it matters).
SHAPES = ((96, 16, 16, 3, 1), (96, 16, 64, 5, 2), (48, 24, 96, 5, 1),
          (48, 24, 144, 7, 1), (48, 24, 96, 7, 2), (24, 40, 160, 5, 1),
          (12, 112, 448, 5, 1), (6, 160, 640, 5, 1))


def time_ms(fn, *args, reps: int) -> float:
    """Milliseconds per call of `fn` (jitted; first call excluded)."""
    f = jax.jit(fn)
    jax.block_until_ready(f(*args))
    t = time.perf_counter()
    for _ in range(reps):
        out = f(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - t) / reps * 1e3


def dk_reduce(xp, dy, k, s):
    """Kernel gradient as k*k fused multiply-reductions (alternative)."""
    n, _, _, c = xp.shape
    ho, wo = dy.shape[1:3]
    rows = []
    for i in range(k):
        for j in range(k):
            t = lax.slice(xp, (0, i, j, 0),
                          (n, i + s * (ho - 1) + 1, j + s * (wo - 1) + 1, c),
                          (1, s, s, 1))
            rows.append(jnp.sum(t * dy, axis=(0, 1, 2)))
    return jnp.stack(rows).reshape(k, k, c)


def dk_one_block(xp, dy, k, s):
    """The kernel gradient as one matmul per kernel row (the previous form)."""
    return layers._depthwise_kernel_grad(xp, dy, k, s, blocks=1).reshape(k, k, -1)


def jax_row(h, cin, mid, k, s, n, reps):
    """nat-jax milliseconds: pointwise fwd+bwd, depthwise fwd, dx, dk, and
    the two other dk forms; plus their max relative error."""
    rng = np.random.RandomState(0)
    x = jnp.asarray(rng.randn(n, h, h, cin).astype(np.float32))
    w = jnp.asarray(rng.randn(1, 1, cin, mid).astype(np.float32) * 0.1)
    hid = jnp.asarray(rng.randn(n, h, h, mid).astype(np.float32))
    kd = jnp.asarray(rng.randn(k, k, 1, mid).astype(np.float32) * 0.1)
    ho = (h - 1) // s + 1
    dy = jnp.asarray(rng.randn(n, ho, ho, mid).astype(np.float32))

    def pw(x, w):
        return jax.grad(lambda x, w: jnp.sum(layers.pointwise(x, w) ** 2),
                        (0, 1))(x, w)

    def grad(which):
        def f(hid, kd, dy):
            _, pull = jax.vjp(lambda a, b: layers.depthwise_conv(a, b, s, "shift"),
                              hid, kd)
            return pull(dy)[which]
        return f

    p = k // 2
    xp = jnp.pad(hid, ((0, 0), (p, p), (p, p), (0, 0)))
    ref = np.asarray(jax.jit(grad(1))(hid, kd, dy)).reshape(k, k, mid)
    errs = [float(np.abs(np.asarray(jax.jit(f, static_argnums=(2, 3))(xp, dy, k, s))
                         - ref).max() / np.abs(ref).max())
            for f in (dk_reduce, dk_one_block)]
    return {
        "pointwise": time_ms(pw, x, w, reps=reps),
        "dw_fwd": time_ms(lambda a, b: layers.depthwise_conv(a, b, s, "shift"),
                          hid, kd, reps=reps),
        "dw_dx": time_ms(grad(0), hid, kd, dy, reps=reps),
        "dw_dk": time_ms(grad(1), hid, kd, dy, reps=reps),
        "dk_reduce": time_ms(lambda a, b: dk_reduce(a, b, k, s), xp, dy, reps=reps),
        "dk_one_block": time_ms(lambda a, b: dk_one_block(a, b, k, s), xp, dy,
                                reps=reps),
        "alt_err": max(errs)}


def torch_row(h, cin, mid, k, s, n, reps):
    """PyTorch milliseconds: 1x1 conv and depthwise conv, fwd + both grads."""
    import torch

    x = torch.randn(n, cin, h, h, requires_grad=True)
    hid = torch.randn(n, mid, h, h, requires_grad=True)
    pw = torch.nn.Conv2d(cin, mid, 1, bias=False)
    dw = torch.nn.Conv2d(mid, mid, k, s, k // 2, groups=mid, bias=False)

    def ms(layer, inp):
        (layer(inp) ** 2).sum().backward()
        t = time.perf_counter()
        for _ in range(reps):
            (layer(inp) ** 2).sum().backward()
        return (time.perf_counter() - t) / reps * 1e3
    return {"pointwise": ms(pw, x), "depthwise": ms(dw, hid)}


def main(argv):
    del argv
    import torch

    n, reps = _BATCH.value, _REPS.value
    print(f"load average {os.getloadavg()}; backend={jax.default_backend()} "
          f"torch_threads={torch.get_num_threads()} batch={n}")
    print(f"{'H':>3} {'cin':>4} {'mid':>4} {'k':>2} {'s':>2} | {'1x1 jax':>8} "
          f"{'torch':>7} | {'dw fwd':>7} {'dx':>6} {'dk':>7} {'torch':>7} | "
          f"{'dk reduce':>9} {'1 block':>9}  (ms)")
    tot = dict.fromkeys(("pj", "pt", "dj", "dk", "dt"), 0.0)
    for h, cin, mid, k, s in SHAPES:
        j = jax_row(h, cin, mid, k, s, n, reps)
        t = torch_row(h, cin, mid, k, s, n, reps)
        assert j["alt_err"] < 1e-4, j["alt_err"]  # the alternatives compute dk
        print(f"{h:>3} {cin:>4} {mid:>4} {k:>2} {s:>2} | {j['pointwise']:8.2f} "
              f"{t['pointwise']:7.2f} | {j['dw_fwd']:7.2f} {j['dw_dx']:6.2f} "
              f"{j['dw_dk']:7.2f} {t['depthwise']:7.2f} | {j['dk_reduce']:9.2f} "
              f"{j['dk_one_block']:9.2f}", flush=True)
        tot["pj"] += j["pointwise"]
        tot["pt"] += t["pointwise"]
        tot["dj"] += j["dw_fwd"] + j["dw_dx"]
        tot["dk"] += j["dw_dk"]
        tot["dt"] += t["depthwise"]
    print(f"sums: 1x1 nat-jax/torch {tot['pj'] / tot['pt']:.2f}x the time; "
          f"depthwise fwd+dx {tot['dj']:.1f} ms + dk {tot['dk']:.1f} ms vs torch "
          f"{tot['dt']:.1f} ms (dk is {tot['dk'] / (tot['dj'] + tot['dk']):.0%} "
          f"of nat-jax's depthwise)")
    print(f"load average {os.getloadavg()}")


if __name__ == "__main__":
    app.run(main)
