"""The C++ depthwise kernel gradient (XLA FFI) against XLA's own convolution
VJP, its use inside `layers.depthwise_conv`, and the lax fallback."""

import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nat_jax.model import cpu_kernels, layers

needs_compiler = pytest.mark.skipif(
    shutil.which("g++") is None and shutil.which("c++") is None,
    reason="no C++ compiler: the FFI kernel cannot be built here")


def conv_vjp(x, w, dy, stride):
    """Oracle: XLA's grouped convolution, its output and VJP (dx, dk [k, k, C])."""
    k = w.shape[0]
    p = k // 2

    def f(x, w):
        return jax.lax.conv_general_dilated(
            x, w[:, :, None, :], (stride, stride), ((p, p), (p, p)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=x.shape[-1],
            precision=jax.lax.Precision.HIGHEST)
    y, vjp = jax.vjp(f, x, w)
    return (y,) + vjp(dy)


def close(got, want):
    np.testing.assert_allclose(got, want, rtol=0,
                               atol=1e-5 * float(jnp.abs(want).max()))


@needs_compiler
def test_builds_and_registers_on_cpu():
    assert cpu_kernels.available()


# channels 5 (single-lane tail), 24 (16 + 8 lanes), 40 (2 x 16 + 8); inputs
# narrower than the kernel; odd and even sides; both strides; active centres
# smaller than the kernel (a masked supernet's padded kernel)
@needs_compiler
@pytest.mark.parametrize("n,h,w,c,k,s,ka", [
    (2, 9, 10, 5, 7, 1, 7), (2, 10, 11, 5, 7, 2, 7), (2, 9, 10, 5, 3, 2, 3),
    (2, 17, 18, 24, 3, 1, 3), (1, 27, 28, 40, 5, 1, 5), (1, 27, 26, 40, 5, 2, 5),
    (1, 2, 3, 16, 7, 1, 7), (2, 6, 7, 3, 7, 2, 7), (1, 1, 1, 8, 5, 1, 5),
    (2, 12, 13, 24, 7, 1, 3), (2, 12, 13, 24, 7, 2, 5), (1, 3, 2, 16, 7, 1, 5)])
def test_kernels_match_conv_and_its_vjp(n, h, w, c, k, s, ka):
    keys = jax.random.split(jax.random.key(h * w + c + k + s + ka), 3)
    q = (k - ka) // 2
    centre = jnp.zeros((k, k, c)).at[q:k - q, q:k - q].set(1.0)
    x = jax.random.normal(keys[0], (n, h, w, c))
    wt = jax.random.normal(keys[1], (k, k, c)) * centre
    dy = jax.random.normal(keys[2], (n, (h - 1) // s + 1, (w - 1) // s + 1, c))
    y, dx, dk = conv_vjp(x, wt, dy, s)

    @jax.jit
    def kernels(x, wt, dy, active):
        return (cpu_kernels.depthwise_forward(x, wt, s, active),
                cpu_kernels.depthwise_input_grad(dy, wt, s, x.shape, active),
                cpu_kernels.depthwise_kernel_grad(x, dy, k, s, active))
    got = kernels(x, wt, dy, ka)  # ka traced
    for g, want in zip(got, (y, dx, dk * centre)):
        assert g.shape == want.shape and g.dtype == jnp.float32
        close(g, want)
    assert not np.any(np.asarray(got[2])[centre == 0])  # zero outside ka


@needs_compiler
def test_layer_uses_the_kernels_and_agrees_with_the_lax_form(monkeypatch):
    x = jax.random.normal(jax.random.key(0), (2, 12, 13, 24))
    w = jax.random.normal(jax.random.key(1), (5, 5, 1, 24))
    dy = jax.random.normal(jax.random.key(2), (2, 12, 13, 24))

    def run():
        def f(x, w):
            y, vjp = jax.vjp(
                lambda a, b: layers.depthwise_conv(a, b, 1, "shift"), x, w)
            return (y,) + vjp(dy)
        return jax.jit(f).lower(x, w).as_text(), jax.jit(f)(x, w)

    text_ffi, out_ffi = run()
    monkeypatch.setattr(cpu_kernels, "available", lambda: False)
    text_lax, out_lax = run()
    for target in ("forward", "input_grad", "kernel_grad"):
        assert f"nat_depthwise_{target}" in text_ffi
    assert "nat_depthwise" not in text_lax
    for a, b in zip(out_ffi, out_lax):
        close(a, b)


@needs_compiler
def test_elastic_depthwise_skips_inactive_taps_with_the_same_result(monkeypatch):
    """ElasticDepthwise passes its traced kernel size as `active`: outputs and
    parameter gradients equal the lax form's, which computes every tap."""
    mod = layers.ElasticDepthwise(16, (3, 5, 7), 1, "shift")
    x = jax.random.normal(jax.random.key(0), (2, 11, 11, 16))
    params = mod.init(jax.random.key(1), x, jnp.int32(7))

    def run():
        @jax.jit
        def f(params, k):
            def loss(p):
                return (mod.apply(p, x, k) ** 2).sum()
            return jax.value_and_grad(loss)(params)
        return [f(params, jnp.int32(k)) for k in (3, 5, 7, 4)]

    with_ffi = run()
    monkeypatch.setattr(cpu_kernels, "available", lambda: False)
    with_lax = run()
    for (la, ga), (lb, gb) in zip(with_ffi, with_lax):
        np.testing.assert_allclose(la, lb, rtol=1e-5)
        for a, b in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
            close(a, b)


def test_switch_off_and_failed_build_fall_back(tmp_path, monkeypatch):
    """NAT_JAX_CPU_KERNELS=0 or a compiler that fails: available() is False
    and no partial library is left behind."""
    monkeypatch.setenv(cpu_kernels.ENV_SWITCH, "0")
    cpu_kernels._register.cache_clear()
    try:
        assert not cpu_kernels.available()
    finally:
        cpu_kernels._register.cache_clear()
    target = str(tmp_path / "k" / "lib.so")
    with pytest.raises(subprocess.CalledProcessError):
        cpu_kernels._build(target, shutil.which("false") or "/bin/false")
    assert os.listdir(tmp_path / "k") == []


def test_failed_build_in_a_fresh_process_still_trains(tmp_path):
    """A process whose compiler fails warns once and takes the lax form."""
    code = (
        "import jax, jax.numpy as jnp\n"
        "from nat_jax.model import cpu_kernels, layers\n"
        "assert not cpu_kernels.available()\n"
        "x = jnp.ones((1, 8, 8, 4)); w = jnp.ones((3, 3, 1, 4))\n"
        "g = jax.grad(lambda w: layers.depthwise_conv(x, w, 1, 'shift').sum())(w)\n"
        "assert float(g[1, 1, 0, 0]) == 64.0, g\n")
    env = dict(os.environ, CXX=shutil.which("false") or "/bin/false",
               NAT_JAX_KERNEL_DIR=str(tmp_path), JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "slower lax form" in r.stderr


@needs_compiler
def test_disabled_traces_the_portable_form():
    """Inside `disabled()` (what `export.export_stablehlo` uses) the program
    has no custom call, so `jax.export` can serialise it."""
    x = jnp.ones((1, 6, 6, 8))
    w = jnp.ones((3, 3, 1, 8))

    def f(x):
        return layers.depthwise_conv(x, w, 1, "shift")
    assert cpu_kernels.available()
    with cpu_kernels.disabled():
        assert not cpu_kernels.available()
        exp = jax.export.export(jax.jit(f))(x)
    assert cpu_kernels.available()
    assert "custom_call" not in exp.mlir_module()
    np.testing.assert_allclose(exp.call(x), f(x), rtol=1e-6)
