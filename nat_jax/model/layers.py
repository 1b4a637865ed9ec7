"""Masked elastic layers of the OFA MobileNetV3 supernet (Flax Linen).

Everything that selects a subnet is traced data: a kernel size, an active
channel count or a block gate never changes a shape, so one compiled program
serves every subnet of a resolution.

* `MaskedBatchNorm` (on the pure `batch_norm`; `BatchNormState` holds the
  same variables for pure branches): PyTorch BatchNorm semantics (eps 1e-5,
  momentum 0.1: `new = 0.9 old + 0.1 batch`, unbiased batch variance in the
  running estimate, biased variance to normalise) where only the channels in
  `mask` update their running statistics; mode "collect" records batch
  statistics for OFA-style re-calibration. Flax's `BatchNorm(mask=...)` masks
  positions, not channels.
* `ElasticDepthwise`: OFA's kernel transform (7x7 raw, 5x5 = M_7to5 @ centre
  of the 7x7, 3x3 = M_5to3 @ centre of the transformed 5x5), zero-padded into
  the largest kernel and run with symmetric `k // 2` padding; the C++
  kernels compute only the active size's taps.
* `depthwise_conv`: "conv" (XLA grouped convolution) or "shift" (on CPU the
  C++ kernels of `cpu_kernels`; where they cannot build, shift and add over
  kernel taps in lax ops, much faster than "conv" on XLA:CPU:
  `python -m benchmarks.layer_times`).
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from nat_jax.model import cpu_kernels

BN_EPS = 1e-5
BN_MOMENTUM = 0.1
DEPTHWISE_IMPLS = ("conv", "shift")
BN_MODES = ("eval", "train", "collect")

# OFA's init: conv kaiming normal with fan_out (k*k*out), linear U(+-1/sqrt(in)).


def conv_std(shape: Sequence[int]) -> float:
    """Std of OFA's conv init for an HWIO kernel: sqrt(2 / (k * k * out))."""
    return float((2.0 / (shape[0] * shape[1] * shape[3])) ** 0.5)


def conv_init(key: jax.Array, shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
    return conv_std(shape) * jax.random.normal(key, shape, dtype)


def linear_init(key: jax.Array, shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
    bound = 1.0 / jnp.sqrt(shape[0])
    return jax.random.uniform(key, shape, dtype, -bound, bound)


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    if name == "relu":
        return jax.nn.relu
    if name == "h_swish":
        return jax.nn.hard_swish
    raise ValueError(f"Unknown activation {name!r}; allowed: relu, h_swish.")


def default_depthwise_impl() -> str:
    """"shift" on CPU (the C++ kernels of `cpu_kernels`, or shift-and-add
    where they cannot build: both much faster there than XLA's grouped
    convolution), grouped conv elsewhere."""
    return "shift" if jax.default_backend() == "cpu" else "conv"


def pointwise(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """1x1 convolution. x: [N, H, W, C_in], kernel: [1, 1, C_in, C_out].

    One 2-D matmul over the flattened positions: on XLA:CPU the forward +
    backward of the 4-D form (its kernel gradient a contraction over n, h,
    w) is slower (`python -m benchmarks.layer_times` times both).
    """
    k = kernel[0, 0]
    y = jnp.matmul(x.reshape(-1, x.shape[-1]), k)
    return y.reshape(x.shape[:-1] + (k.shape[-1],))


def conv2d(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """Dense conv with symmetric k//2 padding (PyTorch's, not "SAME"). HWIO kernel."""
    p = kernel.shape[0] // 2
    return jax.lax.conv_general_dilated(
        x, kernel, (stride, stride), ((p, p), (p, p)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def depthwise_conv(x: jax.Array, kernel: jax.Array, stride: int, impl: str,
                   active: jax.Array | int | None = None) -> jax.Array:
    """Depthwise conv, symmetric k//2 padding.

    Args:
      x: [N, H, W, C].
      kernel: [k, k, 1, C] (HWIO with one input channel per group).
      stride: 1 or 2.
      impl: "conv" (grouped XLA convolution) or "shift": on CPU the C++
        kernels of `cpu_kernels` (float32, where they build), else a sum of
        k*k shifted, strided slices times per-channel taps.
      active: None, or an odd int (may be traced) promising that only the
        centre active x active taps of `kernel` are non-zero (a smaller
        elastic kernel padded to k): the C++ kernels then skip the other
        taps, and report a zero gradient for them (the padding's gradient).

    Returns:
      [N, (H - 1) // stride + 1, (W - 1) // stride + 1, C].
    """
    k = kernel.shape[0]
    p = k // 2
    if impl == "conv":
        return jax.lax.conv_general_dilated(
            x, kernel, (stride, stride), ((p, p), (p, p)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=x.shape[-1])
    if impl != "shift":
        raise ValueError(
            f"Unknown depthwise_impl {impl!r}; allowed: {DEPTHWISE_IMPLS}.")
    if (x.dtype == kernel.dtype == jnp.float32 and k % 2
            and cpu_kernels.available()):
        act = jnp.asarray(k if active is None else active, jnp.int32)
        return _ffi_depthwise(x, kernel, act, stride)
    return _shift_depthwise(x, kernel, stride)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _ffi_depthwise(x, kernel, active, stride):
    k, c = kernel.shape[0], kernel.shape[-1]
    return cpu_kernels.depthwise_forward(x, kernel.reshape(k, k, c), stride,
                                         active)


def _ffi_fwd(x, kernel, active, stride):
    return _ffi_depthwise(x, kernel, active, stride), (x, kernel, active)


def _ffi_bwd(stride, res, dy):
    x, kernel, active = res
    k, c = kernel.shape[0], kernel.shape[-1]
    w = kernel.reshape(k, k, c)
    dx = cpu_kernels.depthwise_input_grad(dy, w, stride, x.shape, active)
    dk = cpu_kernels.depthwise_kernel_grad(x, dy, k, stride, active)
    return dx, dk.reshape(kernel.shape), None


_ffi_depthwise.defvjp(_ffi_fwd, _ffi_bwd)


def _shift_add(xp: jax.Array, kernel: jax.Array, stride: int, ho: int, wo: int
               ) -> jax.Array:
    """sum_ij xp[:, i + s*a, j + s*b, :] * kernel[i, j, 0] for a < ho, b < wo."""
    k, n, c = kernel.shape[0], xp.shape[0], xp.shape[-1]
    kb = kernel.reshape(k, k, c)
    out = None
    for i in range(k):
        for j in range(k):
            tap = jax.lax.slice(
                xp, (0, i, j, 0),
                (n, i + stride * (ho - 1) + 1, j + stride * (wo - 1) + 1, c),
                (1, stride, stride, 1))
            # lax ops: 5 per tap (jnp indexing and broadcasting emitted 7;
            # trace and compile time scale with the count)
            w = jax.lax.broadcast_in_dim(
                jax.lax.slice(kb, (i, j, 0), (i + 1, j + 1, c)), tap.shape,
                (1, 2, 3))
            term = jax.lax.mul(tap, w)
            out = term if out is None else jax.lax.add(out, term)
    return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _shift_depthwise(x, kernel, stride):
    p = kernel.shape[0] // 2
    ho, wo = (x.shape[1] - 1) // stride + 1, (x.shape[2] - 1) // stride + 1
    xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    return _shift_add(xp, kernel, stride, ho, wo)


def _shift_fwd(x, kernel, stride):
    return _shift_depthwise(x, kernel, stride), (x, kernel)


def _shift_bwd(stride, res, dy):
    # Autodiff of the strided slices materialises one padded array per tap
    # (a backward many times the forward on XLA:CPU); written as
    # shift-and-adds the backward costs about two forwards.
    x, kernel = res
    k = kernel.shape[0]
    p = k // 2
    n, h, w, c = x.shape
    ho, wo = dy.shape[1], dy.shape[2]
    xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    hp, wp = h + 2 * p, w + 2 * p
    # dxp[u] = sum_i dy_dilated_padded[u + (k - 1) - i] * w[i]: a full
    # correlation of the stride-dilated dy with the flipped kernel.
    hi = hp - (stride * (ho - 1) + 1)
    wi = wp - (stride * (wo - 1) + 1)
    dyp = jax.lax.pad(dy, jnp.zeros((), dy.dtype),
                      ((0, 0, 0), (k - 1, k - 1 + hi, stride - 1),
                       (k - 1, k - 1 + wi, stride - 1), (0, 0, 0)))
    dxp = _shift_add(dyp, kernel[::-1, ::-1], 1, hp, wp)
    dx = dxp[:, p:p + h, p:p + w, :]
    return dx, _depthwise_kernel_grad(xp, dy, k, stride).reshape(kernel.shape)


def _depthwise_kernel_grad(xp: jax.Array, dy: jax.Array, k: int, stride: int
                           ) -> jax.Array:
    """dk[i, j, c] = sum_{n,a,b} xp[n, i + s a, j + s b, c] dy[n, a, b, c].

    The lax form, for when the C++ kernels of `cpu_kernels` are unavailable.

    Per kernel row i one batched matmul over (n, a) gives m[c, b, v] for the
    output columns b and input columns v; tap j is the strided diagonal
    v = j + s b (faster on XLA:CPU than k*k separate reductions).
    Flattened, m[c, b, j + s b] sits at b (W + s) + j (W = input columns of
    the matmul): padded to B (W + s) entries and viewed as [c, B, W + s], the
    k taps of row i are columns :k summed over b (one slice instead of k
    gathers; every index read is < B W). The matmul computes all B x W
    column pairs but needs only B x k: for stride 1 and a wide input
    (W >= 6k) the output columns are cut into 3 blocks, each multiplied only
    with the input columns it reads (faster at stride 1, slower at stride
    2, so one block there; timed by `benchmarks/layer_times.py` before the
    C++ kernels, see its git history).
    """
    n, _, wp, c = xp.shape
    ho, wo = dy.shape[1], dy.shape[2]
    xt = jnp.transpose(xp, (3, 0, 1, 2))
    dt = jnp.transpose(dy, (3, 0, 1, 2))
    blocks = 3 if stride == 1 and wp >= 6 * k and wo >= 3 else 1
    size = -(-wo // blocks)
    dk = [None] * k
    for b0 in range(0, wo, size):
        b1 = min(wo, b0 + size)
        v0, v1 = stride * b0, stride * (b1 - 1) + k  # <= wp
        bw, width = b1 - b0, v1 - v0
        d = dt if blocks == 1 else jax.lax.slice_in_dim(dt, b0, b1, axis=3)
        for i in range(k):
            rows = jax.lax.slice(xt, (0, 0, i, v0),
                                 (c, n, i + stride * (ho - 1) + 1, v1),
                                 (1, 1, stride, 1))
            m = jax.lax.dot_general(d, rows, (((1, 2), (1, 2)), ((0,), (0,))),
                                    precision=jax.lax.Precision.HIGHEST)
            m = jnp.pad(m.reshape(c, bw * width), ((0, 0), (0, bw * stride)))
            m = m.reshape(c, bw, width + stride)[:, :, :k].sum(1)  # [c, k]
            dk[i] = m if dk[i] is None else dk[i] + m
    return jnp.transpose(jnp.stack(dk), (0, 2, 1))  # [k (i), k (j), c]


_shift_depthwise.defvjp(_shift_fwd, _shift_bwd)


def channel_mask(active: jax.Array, size: int) -> jax.Array:
    """bool[size]: the first `active` channels."""
    return jnp.arange(size) < active


def _bn_variables(module: nn.Module, features: int):
    """(scale, bias, running-mean Variable, running-var Variable) of a BN."""
    scale = module.param("scale", nn.initializers.ones, (features,))
    bias = module.param("bias", nn.initializers.zeros, (features,))
    ra_mean = module.variable("batch_stats", "mean", jnp.zeros, (features,))
    ra_var = module.variable("batch_stats", "var", jnp.ones, (features,))
    return scale, bias, ra_mean, ra_var


def _check_bn_mode(mode: str) -> None:
    if mode not in BN_MODES:
        raise ValueError(f"Unknown BN mode {mode!r}; allowed: {BN_MODES}.")


def batch_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, mean: jax.Array,
               var: jax.Array, mode: str
               ) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
    """Pure BatchNorm over the channels of an NHWC `x` (PyTorch semantics).

    Args:
      x: [N, H, W, C]; scale, bias, mean, var: [C] (running mean/var).
      mode: "eval" (normalise with the running stats), "train" or "collect"
        (normalise with the batch mean and biased variance).

    Returns:
      (y [N, H, W, C], stats): stats is None in "eval"; else (batch mean,
      variance) with the UNBIASED variance in "train" (what the running
      estimate takes) and the biased one in "collect" (OFA's re-calibration).
    """
    _check_bn_mode(mode)
    stats = None
    def channels(v):  # [C] -> [1, ..., 1, C] (no implicit rank promotion)
        return jnp.reshape(v, (1,) * (x.ndim - 1) + (-1,))

    if mode != "eval":
        mean = jnp.mean(x, axis=(0, 1, 2))
        var = jnp.mean(jnp.square(x - channels(mean)), axis=(0, 1, 2))
        n = x.shape[0] * x.shape[1] * x.shape[2]
        stats = (mean, var * (n / max(n - 1, 1)) if mode == "train" else var)
    inv = jax.lax.rsqrt(var + BN_EPS) * scale
    return (x - channels(mean)) * channels(inv) + channels(bias), stats


class MaskedBatchNorm(nn.Module):
    """BatchNorm over NHWC channels whose running stats update only where `mask`.

    Modes: "eval" (running stats), "train" (batch stats; running stats of
    masked-in channels get `0.9 old + 0.1 batch`, unbiased variance),
    "collect" (batch stats, running stats untouched; the batch mean, biased
    variance and mask are stored in the "bn_stats" collection for OFA-style
    re-calibration).
    """

    features: int

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array, mode: str = "eval"
                 ) -> jax.Array:
        _check_bn_mode(mode)
        scale, bias, ra_mean, ra_var = _bn_variables(self, self.features)
        y, stats = batch_norm(x, scale, bias, ra_mean.value, ra_var.value, mode)
        _record(self, ra_mean, ra_var, stats, mask, mode)
        return y


def _record(module, ra_mean, ra_var, stats, mask, mode) -> None:
    """Running-stat update ("train") or bn_stats record ("collect") of a BN."""
    if mode == "train" and not module.is_initializing():
        m = BN_MOMENTUM
        ra_mean.value = jnp.where(
            mask, (1 - m) * ra_mean.value + m * stats[0], ra_mean.value)
        ra_var.value = jnp.where(
            mask, (1 - m) * ra_var.value + m * stats[1], ra_var.value)
    elif mode == "collect":
        module.put_variable("bn_stats", "mean", stats[0])
        module.put_variable("bn_stats", "var", stats[1])
        module.put_variable("bn_stats", "mask", mask)


class BatchNormState(nn.Module):
    """The variables of a `MaskedBatchNorm` (same names), for pure branches.

    `bn = BatchNormState(c, name=...)`; `scale, bias, mean, var = bn(mode)`
    reads them; after computing `y, stats = batch_norm(...)` elsewhere (e.g.
    inside `lax.switch`), `bn(mode, stats, mask)` applies the same running
    stat update / bn_stats record as `MaskedBatchNorm` would.
    """

    features: int

    @nn.compact
    def __call__(self, mode: str, stats=None, mask: jax.Array | None = None):
        _check_bn_mode(mode)
        scale, bias, ra_mean, ra_var = _bn_variables(self, self.features)
        if stats is not None:
            _record(self, ra_mean, ra_var, stats, mask, mode)
        return scale, bias, ra_mean.value, ra_var.value


def transformed_kernels(kernel: jax.Array, matrices: dict[str, jax.Array],
                        kernels: Sequence[int], smallest: int | None = None
                        ) -> dict[int, jax.Array]:
    """OFA's kernel transform of a [kmax, kmax, 1, C] depthwise kernel.

    The largest kernel is used raw; each smaller size is the centre of the
    next larger (already transformed) kernel, flattened row-major to k*k,
    multiplied by that pair's matrix `m{big}to{small}` (PyTorch's
    `F.linear(filter, M)`, i.e. `M @ flat` here).

    Args:
      smallest: stop the chain at this size (default: the smallest kernel).

    Returns:
      {k: [k, k, 1, C]} for every k in `kernels` that is >= `smallest`.
    """
    ks = sorted(kernels)
    out = {ks[-1]: kernel}
    cur = kernel
    for big, small in zip(ks[::-1][:-1], ks[::-1][1:]):
        if smallest is not None and small < smallest:
            break
        s = (big - small) // 2
        centre = cur[s:s + small, s:s + small, 0, :]
        c = centre.shape[-1]
        flat = centre.reshape(small * small, c)
        cur = (matrices[f"m{big}to{small}"] @ flat).reshape(small, small, 1, c)
        out[small] = cur
    return out


def depthwise_params(module: nn.Module, features: int, kernels: Sequence[int]
                     ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(kernel [kmax, kmax, 1, features], {"m{big}to{small}": matrix}) params."""
    ks = sorted(kernels)
    kmax = ks[-1]
    kernel = module.param("kernel", conv_init, (kmax, kmax, 1, features))
    mats = {}
    for big, small in zip(ks[::-1][:-1], ks[::-1][1:]):
        name = f"m{big}to{small}"
        mats[name] = module.param(name, lambda _, n: jnp.eye(n), small * small)
    return kernel, mats


class DepthwiseParams(nn.Module):
    """The parameters of an `ElasticDepthwise` (same names), without compute."""

    features: int
    kernels: Sequence[int]

    @nn.compact
    def __call__(self) -> tuple[jax.Array, dict[str, jax.Array]]:
        return depthwise_params(self, self.features, self.kernels)


class ElasticDepthwise(nn.Module):
    """Depthwise conv whose kernel size (traced scalar `k`) is elastic."""

    features: int
    kernels: Sequence[int]
    stride: int
    impl: str

    @nn.compact
    def __call__(self, x: jax.Array, k: jax.Array) -> jax.Array:
        ks = sorted(self.kernels)
        kmax = ks[-1]
        kernel, mats = depthwise_params(self, self.features, ks)
        eff = jnp.zeros_like(kernel)
        for size, kern in transformed_kernels(kernel, mats, ks).items():
            p = (kmax - size) // 2
            padded = jnp.pad(kern, ((p, p), (p, p), (0, 0), (0, 0)))
            eff = jnp.where(k == size, padded, eff)
        # the taps outside the active size are zero (for a size outside the
        # space eff is all zero; any active size is then exact)
        active = jnp.where(jnp.isin(k, jnp.asarray(ks)), k, kmax)
        return depthwise_conv(x, eff, self.stride, self.impl, active=active)
