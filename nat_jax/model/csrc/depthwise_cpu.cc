// Depthwise convolution for XLA:CPU as XLA FFI handlers: forward, input
// gradient and kernel gradient, symmetric k / 2 zero padding, NHWC, f32.
//
//   y[n, a, b, c]  = sum_{i, j} x[n, s a + i - p, s b + j - p, c] w[i, j, c]
//   dx[n, h, v, c] = sum of dy[n, a, b, c] w[i, j, c] over s a + i - p = h,
//                    s b + j - p = v
//   dk[i, j, c]    = sum_{n, a, b} x[n, s a + i - p, s b + j - p, c] dy[n, a, b, c]
//
// x: [N, H, W, C], dy, y: [N, Ho, Wo, C], w, dk: [k, k, C]. Each handler also
// takes `ka` (int32 scalar, odd, <= k): only the centre ka x ka taps are
// non-zero (a masked supernet's smaller kernel padded to k), so only those are
// computed; dk is zero outside them.
//
// XLA:CPU can express this only as matmuls that compute every pair of input
// and output columns and keep k diagonals (10-20x the multiply-adds); this
// loop does exactly N Ho Wo k k C multiply-adds. Work items are (channel
// block, kernel row i); each keeps the k accumulators of its row in vector
// registers, reads one dy vector per output column and k x vectors from a row
// that stays in L1. Items are shared out over XLA's intra-op thread pool.
//
// Built at first use by nat_jax/cpu_kernels.py (g++ -O3 -march=native).

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <type_traits>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int kMaxK = 15;
constexpr int kCols = 4;  // columns per register block (forward, dx)

template <int L>
struct Vec {
  typedef float type __attribute__((vector_size(L * sizeof(float))));
};

template <int L>
inline typename Vec<L>::type Load(const float* p) {
  typename Vec<L>::type v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

template <int L>
inline void Store(float* p, typename Vec<L>::type v) {
  std::memcpy(p, &v, sizeof(v));
}

struct Dims {
  int64_t n, h, w, c, ho, wo, k, s, p;
  int64_t lo, hi;  // active taps: lo <= i, j < hi (the centre ka x ka)
};

// ------------------------------------------------------------ kernel grad
// Adds image n's contribution to dk[lo:hi, lo:hi, c0:c0+L] into part
// ([k, k, L], this (n, channel block)'s own buffer). For each output row a
// the KA input rows it reads stay in cache; per kernel row the KA
// accumulators of the interior columns stay in registers (fixed indices),
// border columns accumulate separately.
template <int L, int KA>
void KernelGradImage(const Dims& d, const float* x, const float* dy,
                     float* part, int64_t c0, int64_t n) {
  using V = typename Vec<L>::type;
  const int64_t lo = d.lo;
  // Output columns b whose active taps all lie inside the row:
  // s b - p + lo >= 0 and s b - p + lo + KA - 1 < W.
  const int64_t b_lo = std::min<int64_t>(d.wo, (d.p - lo + d.s - 1) / d.s);
  int64_t b_hi = d.w - KA - lo + d.p;  // s b <= b_hi
  b_hi = b_hi < 0 ? 0 : std::min<int64_t>(d.wo, b_hi / d.s + 1);
  if (b_hi < b_lo) b_hi = b_lo;
  for (int64_t a = 0; a < d.ho; ++a) {
    const float* dyrow = dy + ((n * d.ho + a) * d.wo) * d.c + c0;
    for (int64_t i = lo; i < lo + KA; ++i) {
      const int64_t h = d.s * a + i - d.p;
      if (h < 0 || h >= d.h) continue;
      const float* xrow = x + ((n * d.h + h) * d.w) * d.c + c0;
      V acc[KA];
#pragma GCC unroll 16
      for (int j = 0; j < KA; ++j) acc[j] = V{};
      auto edge = [&](int64_t b) {
        const V g = Load<L>(dyrow + b * d.c);
        const int64_t w0 = d.s * b - d.p + lo;
        float* prow = part + (i * d.k + lo) * L;
        for (int j = 0; j < KA; ++j) {
          const int64_t w = w0 + j;
          if (w >= 0 && w < d.w)
            Store<L>(prow + j * L, Load<L>(prow + j * L) +
                                       Load<L>(xrow + w * d.c) * g);
        }
      };
      for (int64_t b = 0; b < b_lo; ++b) edge(b);
      for (int64_t b = b_lo; b < b_hi; ++b) {
        const V g = Load<L>(dyrow + b * d.c);
        const float* xw = xrow + (d.s * b - d.p + lo) * d.c;
#pragma GCC unroll 16
        for (int j = 0; j < KA; ++j) acc[j] += Load<L>(xw + j * d.c) * g;
      }
      for (int64_t b = std::max(b_lo, b_hi); b < d.wo; ++b) edge(b);
      float* prow = part + (i * d.k + lo) * L;
#pragma GCC unroll 16
      for (int j = 0; j < KA; ++j)
        Store<L>(prow + j * L, Load<L>(prow + j * L) + acc[j]);
    }
  }
}

template <int L>
void KernelGradImageAnyK(const Dims& d, const float* x, const float* dy,
                         float* part, int64_t c0, int64_t n) {
  switch (d.hi - d.lo) {
    case 1: return KernelGradImage<L, 1>(d, x, dy, part, c0, n);
    case 3: return KernelGradImage<L, 3>(d, x, dy, part, c0, n);
    case 5: return KernelGradImage<L, 5>(d, x, dy, part, c0, n);
    case 7: return KernelGradImage<L, 7>(d, x, dy, part, c0, n);
    case 9: return KernelGradImage<L, 9>(d, x, dy, part, c0, n);
    case 11: return KernelGradImage<L, 11>(d, x, dy, part, c0, n);
    case 13: return KernelGradImage<L, 13>(d, x, dy, part, c0, n);
    default: return KernelGradImage<L, 15>(d, x, dy, part, c0, n);
  }
}

// ---------------------------------------------------------------- forward
// One output column b of y[n, a, :, c0:c0+L], with bounds checks.
template <int L>
inline typename Vec<L>::type ForwardCol(const Dims& d, const float* x,
                                        const float* w, int64_t c0, int64_t n,
                                        int64_t a, int64_t b) {
  typename Vec<L>::type acc{};
  for (int64_t i = d.lo; i < d.hi; ++i) {
    const int64_t h = d.s * a + i - d.p;
    if (h < 0 || h >= d.h) continue;
    const float* xrow = x + ((n * d.h + h) * d.w) * d.c + c0;
    for (int64_t j = d.lo; j < d.hi; ++j) {
      const int64_t v = d.s * b + j - d.p;
      if (v >= 0 && v < d.w)
        acc += Load<L>(xrow + v * d.c) * Load<L>(w + (i * d.k + j) * d.c + c0);
    }
  }
  return acc;
}

// y[n, a, :, c0:c0+L] (one output row): kCols interior columns at a time
// with register accumulators, border columns one by one.
template <int L>
void ForwardRow(const Dims& d, const float* x, const float* w, float* y,
                int64_t c0, int64_t n, int64_t a) {
  using V = typename Vec<L>::type;
  float* yrow = y + ((n * d.ho + a) * d.wo) * d.c + c0;
  // interior columns: s b - p + lo >= 0 and s b - p + hi - 1 < W
  const int64_t b_lo = std::min<int64_t>(d.wo, (d.p - d.lo + d.s - 1) / d.s);
  int64_t b_hi = d.w - d.hi + d.p;
  b_hi = b_hi < 0 ? 0 : std::min<int64_t>(d.wo, b_hi / d.s + 1);
  if (b_hi < b_lo) b_hi = b_lo;
  for (int64_t b = 0; b < b_lo; ++b)
    Store<L>(yrow + b * d.c, ForwardCol<L>(d, x, w, c0, n, a, b));
  int64_t b0 = b_lo;
  for (; b0 + kCols <= b_hi; b0 += kCols) {
    V acc[kCols];
#pragma GCC unroll 8
    for (int t = 0; t < kCols; ++t) acc[t] = V{};
    for (int64_t i = d.lo; i < d.hi; ++i) {
      const int64_t h = d.s * a + i - d.p;
      if (h < 0 || h >= d.h) continue;
      const float* xrow = x + ((n * d.h + h) * d.w) * d.c + c0;
      const float* wrow = w + (i * d.k) * d.c + c0;
      for (int64_t j = d.lo; j < d.hi; ++j) {
        const V wv = Load<L>(wrow + j * d.c);
        const float* xv = xrow + (d.s * b0 + j - d.p) * d.c;
#pragma GCC unroll 8
        for (int t = 0; t < kCols; ++t)
          acc[t] += Load<L>(xv + d.s * t * d.c) * wv;
      }
    }
#pragma GCC unroll 8
    for (int t = 0; t < kCols; ++t) Store<L>(yrow + (b0 + t) * d.c, acc[t]);
  }
  for (int64_t b = b0; b < d.wo; ++b)
    Store<L>(yrow + b * d.c, ForwardCol<L>(d, x, w, c0, n, a, b));
}

// ---------------------------------------------------------- input gradient
// One input column v of dx[n, h, :, c0:c0+L], gathered from the dy entries
// whose taps read it: a = (h + p - i) / s, b = (v + p - j) / s if divisible.
template <int L>
inline typename Vec<L>::type InputGradCol(const Dims& d, const float* dy,
                                          const float* w, int64_t c0,
                                          int64_t n, int64_t h, int64_t v) {
  typename Vec<L>::type acc{};
  // taps with s | (h + p - i) and s | (v + p - j), stepping by s
  for (int64_t i = d.lo + (h + d.p - d.lo) % d.s; i < d.hi; i += d.s) {
    const int64_t a = (h + d.p - i) / d.s;
    if (h + d.p - i < 0) break;
    if (a >= d.ho) continue;
    const float* dyrow = dy + ((n * d.ho + a) * d.wo) * d.c + c0;
    for (int64_t j = d.lo + (v + d.p - d.lo) % d.s; j < d.hi; j += d.s) {
      if (v + d.p - j < 0) break;
      const int64_t b = (v + d.p - j) / d.s;
      if (b >= d.wo) continue;
      acc += Load<L>(dyrow + b * d.c) * Load<L>(w + (i * d.k + j) * d.c + c0);
    }
  }
  return acc;
}

// dx[n, h, :, c0:c0+L] (one input row) for stride > 1, column by column
// (stride 1 runs as the forward of dy with the flipped kernel).
template <int L>
void InputGradRow(const Dims& d, const float* dy, const float* w, float* dx,
                  int64_t c0, int64_t n, int64_t h) {
  float* dxrow = dx + ((n * d.h + h) * d.w) * d.c + c0;
  for (int64_t v = 0; v < d.w; ++v)
    Store<L>(dxrow + v * d.c, InputGradCol<L>(d, dy, w, c0, n, h, v));
}

// Runs fn(0..total-1) on the caller and the pool's threads. Items are handed
// out by an atomic counter, so the caller never waits for a task that has not
// started (no deadlock when the pool is busy or the caller is a pool thread).
void ParallelFor(ffi::ThreadPool& pool, int64_t total,
                 std::function<void(int64_t)> fn) {
  struct State {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
    int64_t total = 0;
    std::function<void(int64_t)> fn;
    std::mutex mu;
    std::condition_variable cv;
  };
  auto st = std::make_shared<State>();
  st->total = total;
  st->fn = std::move(fn);
  auto work = [](const std::shared_ptr<State>& st) {
    for (int64_t t; (t = st->next.fetch_add(1)) < st->total;) {
      st->fn(t);
      if (st->done.fetch_add(1) + 1 == st->total) {
        std::lock_guard<std::mutex> lock(st->mu);
        st->cv.notify_all();
      }
    }
  };
  const int64_t helpers =
      std::min<int64_t>(std::max<int64_t>(pool.num_threads(), 1), total) - 1;
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule([st, work] { work(st); });
  work(st);
  std::unique_lock<std::mutex> lock(st->mu);
  st->cv.wait(lock, [&] { return st->done.load() == st->total; });
}

// Channel blocks of 16 lanes, then 8, then single channels: fn<L>(c0).
struct Blocks {
  int64_t c16, c8, c1;
  explicit Blocks(int64_t c) : c16(c / 16), c8((c % 16) / 8), c1(c % 8) {}
  int64_t count() const { return c16 + c8 + c1; }
  template <typename F16, typename F8, typename F1>
  void Run(int64_t blk, F16 f16, F8 f8, F1 f1) const {
    if (blk < c16) {
      f16(blk * 16);
    } else if (blk < c16 + c8) {
      f8(c16 * 16 + (blk - c16) * 8);
    } else {
      f1(c16 * 16 + c8 * 8 + (blk - c16 - c8));
    }
  }
};

// Runs row(lanes, c0, n, r) for every channel block (lanes = 16, 8 or 1
// channels from c0), image n < images and row r < rows, in parallel.
template <typename Row>
void ForEachRow(ffi::ThreadPool& pool, const Blocks& bl, int64_t images,
                int64_t rows, Row row) {
  const int64_t all = images * rows;
  ParallelFor(pool, all * bl.count(), [=](int64_t t) {
    const int64_t blk = t / all, n = (t % all) / rows, r = t % rows;
    bl.Run(blk,
           [&](int64_t c0) { row(std::integral_constant<int, 16>(), c0, n, r); },
           [&](int64_t c0) { row(std::integral_constant<int, 8>(), c0, n, r); },
           [&](int64_t c0) { row(std::integral_constant<int, 1>(), c0, n, r); });
  });
}

ffi::Error MakeDims(const ffi::Span<const int64_t> xd,
                    const ffi::Span<const int64_t> yd, int64_t k,
                    int64_t stride, int32_t ka, Dims* d) {
  if (xd.size() != 4 || yd.size() != 4 || xd[0] != yd[0] || xd[3] != yd[3] ||
      yd[1] != (xd[1] - 1) / std::max<int64_t>(stride, 1) + 1 ||
      yd[2] != (xd[2] - 1) / std::max<int64_t>(stride, 1) + 1) {
    return ffi::Error::InvalidArgument(
        "depthwise: x [N,H,W,C] and y [N,(H-1)/s+1,(W-1)/s+1,C] expected");
  }
  if (k < 1 || k > kMaxK || k % 2 == 0 || stride < 1 || ka < 1 || ka > k ||
      ka % 2 == 0) {
    return ffi::Error::InvalidArgument(
        "depthwise: odd 1 <= ka <= k <= 15 and stride >= 1 expected");
  }
  *d = Dims{xd[0], xd[1], xd[2], xd[3], yd[1], yd[2], k, stride, k / 2,
            (k - ka) / 2, (k + ka) / 2};
  return ffi::Error::Success();
}

ffi::Error ForwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                       ffi::Buffer<ffi::F32> w, ffi::Buffer<ffi::S32> ka,
                       ffi::ResultBuffer<ffi::F32> y, int64_t stride) {
  Dims d;
  const int64_t k = w.dimensions()[0];
  if (auto e = MakeDims(x.dimensions(), y->dimensions(), k, stride,
                        ka.typed_data()[0], &d);
      e.failure()) {
    return e;
  }
  const float *xp = x.typed_data(), *wp = w.typed_data();
  float* yp = y->typed_data();
  ForEachRow(pool, Blocks(d.c), d.n, d.ho,
             [=](auto lanes, int64_t c0, int64_t n, int64_t a) {
               ForwardRow<decltype(lanes)::value>(d, xp, wp, yp, c0, n, a);
             });
  return ffi::Error::Success();
}

ffi::Error InputGradImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> dy,
                         ffi::Buffer<ffi::F32> w, ffi::Buffer<ffi::S32> ka,
                         ffi::ResultBuffer<ffi::F32> dx, int64_t stride) {
  Dims d;
  const int64_t k = w.dimensions()[0];
  if (auto e = MakeDims(dx->dimensions(), dy.dimensions(), k, stride,
                        ka.typed_data()[0], &d);
      e.failure()) {
    return e;
  }
  const float *yp = dy.typed_data(), *wp = w.typed_data();
  float* xp = dx->typed_data();
  if (d.s == 1) {
    // dx[h, v] = sum_ij dy[h + p - i, v + p - j] w[i, j]: the forward of dy
    // with the flipped kernel (odd k; the active centre stays the centre).
    std::vector<float> flipped(k * k * d.c);
    for (int64_t t = 0; t < k * k; ++t)
      std::memcpy(&flipped[(k * k - 1 - t) * d.c], wp + t * d.c,
                  d.c * sizeof(float));
    const float* fp = flipped.data();
    ForEachRow(pool, Blocks(d.c), d.n, d.h,
               [=](auto lanes, int64_t c0, int64_t n, int64_t h) {
                 ForwardRow<decltype(lanes)::value>(d, yp, fp, xp, c0, n, h);
               });
    return ffi::Error::Success();
  }
  ForEachRow(pool, Blocks(d.c), d.n, d.h,
             [=](auto lanes, int64_t c0, int64_t n, int64_t h) {
               InputGradRow<decltype(lanes)::value>(d, yp, wp, xp, c0, n, h);
             });
  return ffi::Error::Success();
}

ffi::Error KernelGradImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                          ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::S32> ka,
                          ffi::ResultBuffer<ffi::F32> dk, int64_t stride) {
  Dims d;
  const int64_t k = dk->dimensions()[0];
  if (auto e = MakeDims(x.dimensions(), dy.dimensions(), k, stride,
                        ka.typed_data()[0], &d);
      e.failure()) {
    return e;
  }
  const float *xp = x.typed_data(), *yp = dy.typed_data();
  float* out = dk->typed_data();
  const Blocks bl(d.c);
  // One partial [k, k, 16] per (channel block, image), summed over the images
  // in order afterwards: every x row is read once per channel block, and the
  // result does not depend on how the items were shared out.
  const int64_t kk = k * k, stride_part = kk * 16;
  std::vector<float> parts(bl.count() * d.n * stride_part, 0.0f);
  float* pp = parts.data();
  ParallelFor(pool, bl.count() * d.n, [=](int64_t t) {
    const int64_t blk = t / d.n, n = t % d.n;
    float* part = pp + t * stride_part;
    bl.Run(blk,
           [&](int64_t c0) { KernelGradImageAnyK<16>(d, xp, yp, part, c0, n); },
           [&](int64_t c0) { KernelGradImageAnyK<8>(d, xp, yp, part, c0, n); },
           [&](int64_t c0) { KernelGradImageAnyK<1>(d, xp, yp, part, c0, n); });
  });
  for (int64_t blk = 0; blk < bl.count(); ++blk) {
    int64_t c0 = 0, lanes = 0;
    bl.Run(blk, [&](int64_t c) { c0 = c, lanes = 16; },
           [&](int64_t c) { c0 = c, lanes = 8; },
           [&](int64_t c) { c0 = c, lanes = 1; });
    for (int64_t tap = 0; tap < kk; ++tap) {
      for (int64_t l = 0; l < lanes; ++l) {
        float sum = 0.0f;
        for (int64_t n = 0; n < d.n; ++n)
          sum += pp[(blk * d.n + n) * stride_part + tap * lanes + l];
        out[tap * d.c + c0 + l] = sum;
      }
    }
  }
  return ffi::Error::Success();
}

}  // namespace

// All three handlers: (two f32 arrays, the int32 active size) -> f32 array,
// with the stride as an attribute and XLA's intra-op thread pool.
static auto Binding() {
  return ffi::Ffi::Bind()
      .Ctx<ffi::ThreadPool>()
      .Arg<ffi::Buffer<ffi::F32>>()
      .Arg<ffi::Buffer<ffi::F32>>()
      .Arg<ffi::Buffer<ffi::S32>>()
      .Ret<ffi::Buffer<ffi::F32>>()
      .Attr<int64_t>("stride");
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(NatDepthwiseForward, ForwardImpl, Binding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(NatDepthwiseInputGrad, InputGradImpl, Binding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(NatDepthwiseKernelGrad, KernelGradImpl,
                              Binding());
