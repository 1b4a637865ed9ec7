r"""Where a supernet training step's time goes: layer by layer vs PyTorch.

At the shapes of OFA MobileNetV3 w1.0 blocks (batch 8, 192 px input), side by
side in one run, milliseconds per call (jitted; PyTorch with its own threads):

  - 1x1 convolution, forward + both gradients: `layers.pointwise` (one 2-D
    matmul) vs the 4-D `jnp.matmul(x, w)` it replaced vs
    `torch.nn.Conv2d(.., 1)`;
  - depthwise convolution, forward, input gradient and kernel gradient
    separately (`layers.depthwise_conv` "shift" and its custom VJP), in the
    two forms a CPU run can take: the C++ kernels of `nat_jax.model.cpu_kernels`
    (what runs where they build) and the lax form (k*k shifted slices; the
    kernel gradient as per-kernel-row matmuls), vs PyTorch's whole depthwise
    layer (forward + both gradients).

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

from nat_jax.model import cpu_kernels, layers

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


def jax_row(h, cin, mid, k, s, n, reps, kernels: bool):
    """nat-jax milliseconds: pointwise fwd+bwd, depthwise fwd, dx, dk, with
    the C++ kernels (`kernels`) or the lax form; plus dk itself."""
    rng = np.random.RandomState(0)
    x = jnp.asarray(rng.randn(n, h, h, cin).astype(np.float32))
    w = jnp.asarray(rng.randn(1, 1, cin, mid).astype(np.float32) * 0.1)
    hid = jnp.asarray(rng.randn(n, h, h, mid).astype(np.float32))
    kd = jnp.asarray(rng.randn(k, k, 1, mid).astype(np.float32) * 0.1)
    ho = (h - 1) // s + 1
    dy = jnp.asarray(rng.randn(n, ho, ho, mid).astype(np.float32))
    real = cpu_kernels.available
    assert real(), "the C++ kernels did not build; see the warning above"
    cpu_kernels.available = real if kernels else (lambda: False)
    try:
        def pw(x, w):
            return jax.grad(lambda x, w: jnp.sum(layers.pointwise(x, w) ** 2),
                            (0, 1))(x, w)

        def pw_4d(x, w):
            return jax.grad(lambda x, w: jnp.sum(jnp.matmul(x, w[0, 0]) ** 2),
                            (0, 1))(x, w)

        def grad(which):
            def f(hid, kd, dy):
                _, pull = jax.vjp(
                    lambda a, b: layers.depthwise_conv(a, b, s, "shift"), hid, kd)
                return pull(dy)[which]
            return f
        return {
            "pointwise": time_ms(pw, x, w, reps=reps),
            "pointwise_4d": time_ms(pw_4d, x, w, reps=reps),
            "dw_fwd": time_ms(lambda a, b: layers.depthwise_conv(a, b, s, "shift"),
                              hid, kd, reps=reps),
            "dw_dx": time_ms(grad(0), hid, kd, dy, reps=reps),
            "dw_dk": time_ms(grad(1), hid, kd, dy, reps=reps),
            "dk": np.asarray(jax.jit(grad(1))(hid, kd, dy))}
    finally:
        cpu_kernels.available = real


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
          f"{'4-D':>6} {'torch':>7} | {'C++ fwd':>7} {'dx':>6} {'dk':>6} | "
          f"{'lax fwd':>7} "
          f"{'dx':>6} {'dk':>7} | {'dw torch':>8}  (ms)")
    tot = dict.fromkeys(("pj", "p4", "pt", "cpp", "cpp_dk", "lax", "lax_dk", "dt"), 0.0)
    for h, cin, mid, k, s in SHAPES:
        c = jax_row(h, cin, mid, k, s, n, reps, kernels=True)
        x = jax_row(h, cin, mid, k, s, n, reps, kernels=False)
        t = torch_row(h, cin, mid, k, s, n, reps)
        err = np.abs(c["dk"] - x["dk"]).max() / np.abs(x["dk"]).max()
        assert err < 1e-4, err  # both forms compute the same kernel gradient
        print(f"{h:>3} {cin:>4} {mid:>4} {k:>2} {s:>2} | {c['pointwise']:8.2f} "
              f"{c['pointwise_4d']:6.2f} {t['pointwise']:7.2f} | "
              f"{c['dw_fwd']:7.2f} {c['dw_dx']:6.2f} "
              f"{c['dw_dk']:6.2f} | {x['dw_fwd']:7.2f} {x['dw_dx']:6.2f} "
              f"{x['dw_dk']:7.2f} | {t['depthwise']:8.2f}", flush=True)
        tot["pj"] += c["pointwise"]
        tot["p4"] += c["pointwise_4d"]
        tot["pt"] += t["pointwise"]
        tot["cpp"] += c["dw_fwd"] + c["dw_dx"] + c["dw_dk"]
        tot["cpp_dk"] += c["dw_dk"]
        tot["lax"] += x["dw_fwd"] + x["dw_dx"] + x["dw_dk"]
        tot["lax_dk"] += x["dw_dk"]
        tot["dt"] += t["depthwise"]
    print(f"sums: 1x1 nat-jax/torch {tot['pj'] / tot['pt']:.2f}x the time "
          f"(the 4-D matmul {tot['p4'] / tot['pt']:.2f}x); "
          f"depthwise fwd+dx+dk: C++ kernels {tot['cpp']:.1f} ms (dk "
          f"{tot['cpp_dk']:.1f}), lax form {tot['lax']:.1f} ms (dk "
          f"{tot['lax_dk']:.1f}), torch {tot['dt']:.1f} ms")
    print(f"load average {os.getloadavg()}")


if __name__ == "__main__":
    app.run(main)
