"""Custom XLA:CPU kernels (XLA FFI), built from `nat_jax/model/csrc` at first use.

The depthwise convolution of the supernet's blocks, its input gradient and
its kernel gradient as C++ loops (`csrc/depthwise_cpu.cc`), used by
`layers.depthwise_conv` ("shift", float32) on CPU. XLA:CPU has no direct
depthwise weight gradient: in lax ops it becomes matmuls that do many times
the necessary multiply-adds, most of a depthwise layer's training time; and
the lax forward (k*k shifted slices) is many ops to compile. The kernels
also take the active kernel size, so that a masked supernet's smaller kernel
padded to 7x7 costs only its own taps (`python -m benchmarks.layer_times`
measures both forms).

The shared library is compiled once per (source, jaxlib, compiler, CPU) with
`g++ -O3 -march=native` into `$NAT_JAX_KERNEL_DIR` (default
`~/.cache/nat_jax/kernels`), written under a temporary name and renamed, so
that concurrent processes (pytest-xdist, multi-host) never load a partial
file. Where no C++ compiler exists, the build fails, the backend is not CPU,
or `NAT_JAX_CPU_KERNELS=0` is set, `available()` is False (with one warning)
and `layers` keeps its lax formulation: the same numbers up to float
summation order (tests/model/test_cpu_kernels.py).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading

import jax
import jax.numpy as jnp
import numpy as np

_SOURCE = os.path.join(os.path.dirname(__file__), "csrc", "depthwise_cpu.cc")
# FFI target name -> exported handler symbol in csrc/depthwise_cpu.cc
_TARGETS = {"nat_depthwise_forward": "NatDepthwiseForward",
            "nat_depthwise_input_grad": "NatDepthwiseInputGrad",
            "nat_depthwise_kernel_grad": "NatDepthwiseKernelGrad"}
_FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC")
ENV_SWITCH = "NAT_JAX_CPU_KERNELS"
ENV_DIR = "NAT_JAX_KERNEL_DIR"


def _cpu_id() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        flags = ""
    return platform.machine() + flags


def _library_path(compiler: str) -> str:
    import jaxlib  # noqa: PLC0415 (version only)
    with open(_SOURCE, "rb") as f:
        key = hashlib.sha256(f.read())
    for part in (jaxlib.__version__, compiler, " ".join(_FLAGS), _cpu_id()):
        key.update(part.encode())
    directory = os.environ.get(ENV_DIR) or os.path.join(
        os.path.expanduser("~"), ".cache", "nat_jax", "kernels")
    return os.path.join(directory, f"depthwise_cpu_{key.hexdigest()[:16]}.so")


def _build(path: str, compiler: str) -> None:
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=directory)
    os.close(fd)
    try:
        subprocess.run([compiler, *_FLAGS, "-I", jax.ffi.include_dir(),
                        _SOURCE, "-o", tmp],
                       check=True, capture_output=True, text=True, timeout=300)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@functools.lru_cache(maxsize=None)
def _register() -> bool:
    if os.environ.get(ENV_SWITCH, "1") == "0":
        return False
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which(
        "c++")
    if compiler is None:
        logging.warning("nat_jax.model.cpu_kernels: no C++ compiler found; the "
                        "depthwise convolution uses its slower lax form.")
        return False
    path = _library_path(compiler)
    try:
        if not os.path.exists(path):
            _build(path, compiler)
        lib = ctypes.cdll.LoadLibrary(path)
        for target, symbol in _TARGETS.items():
            jax.ffi.register_ffi_target(
                target, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
    except (OSError, subprocess.SubprocessError, AttributeError) as e:
        detail = getattr(e, "stderr", "") or str(e)
        logging.warning("nat_jax.model.cpu_kernels: building %s failed (%s); the "
                        "depthwise convolution uses its slower lax form.",
                        _SOURCE, detail.strip()[-2000:])
        return False
    return True


_LOCAL = threading.local()


def available() -> bool:
    """True when the CPU kernels can be used (CPU backend, library built,
    not inside `disabled()`)."""
    if getattr(_LOCAL, "disabled", 0):
        return False
    return jax.default_backend() == "cpu" and _register()


@contextlib.contextmanager
def disabled():
    """Trace without the kernels (this thread): for programs that leave the
    process, e.g. `jax.export` artifacts, which cannot carry a custom call of
    a library that only this machine has."""
    _LOCAL.disabled = getattr(_LOCAL, "disabled", 0) + 1
    try:
        yield
    finally:
        _LOCAL.disabled -= 1


def _check() -> None:
    if not available():
        raise RuntimeError(
            "nat_jax.model.cpu_kernels: the C++ depthwise kernels are not available "
            f"(backend {jax.default_backend()!r}; see the warning above, or "
            f"unset {ENV_SWITCH}=0); use layers.depthwise_conv.")


def _active(active, k: int) -> jax.Array:
    return jnp.asarray(k if active is None else active, jnp.int32)


def _call(target: str, shape, *args, stride: int) -> jax.Array:
    _check()
    return jax.ffi.ffi_call(
        target, jax.ShapeDtypeStruct(shape, jnp.float32),
        vmap_method="sequential")(*args, stride=np.int64(stride))


def depthwise_forward(x: jax.Array, w: jax.Array, stride: int,
                      active=None) -> jax.Array:
    """y[n, a, b, c] = sum_ij x[n, s a + i - p, s b + j - p, c] w[i, j, c].

    x: float32 [N, H, W, C]; w: float32 [k, k, C] (odd k, p = k // 2 zero
    padding); active: None (all taps) or an int scalar, possibly traced: only
    the centre active x active taps of w are non-zero, and only those are
    computed. Returns [N, (H - 1) // s + 1, (W - 1) // s + 1, C].
    """
    n, h, wd, c = x.shape
    shape = (n, (h - 1) // stride + 1, (wd - 1) // stride + 1, c)
    return _call("nat_depthwise_forward", shape, x, w,
                 _active(active, w.shape[0]), stride=stride)


def depthwise_input_grad(dy: jax.Array, w: jax.Array, stride: int,
                         x_shape, active=None) -> jax.Array:
    """dx of `depthwise_forward` for cotangent dy; x_shape = x.shape."""
    return _call("nat_depthwise_input_grad", tuple(x_shape), dy, w,
                 _active(active, w.shape[0]), stride=stride)


def depthwise_kernel_grad(x: jax.Array, dy: jax.Array, k: int, stride: int,
                          active=None) -> jax.Array:
    """dk[i, j, c] = sum_{n,a,b} x[n, s a + i - p, s b + j - p, c] dy[n, a, b, c].

    x: [N, H, W, C] unpadded (p = k // 2 zero padding), dy: [N, Ho, Wo, C];
    returns float32 [k, k, C], zero outside the centre `active` x `active`
    taps when `active` is given.

    Raises:
      RuntimeError: when the kernels are not `available()`.
    """
    return _call("nat_depthwise_kernel_grad", (k, k, x.shape[-1]),
                 x, dy, _active(active, k), stride=stride)
