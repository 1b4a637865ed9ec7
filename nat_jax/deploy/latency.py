"""Latency of subnets on the current backend: measured, and a lookup table.

* `measure(fn, *args)`: median wall time (ms) of a jitted function after
  warm-up; `subnet_latency(model, variables, resolution, batch_size)` times an
  extracted subnet's eval-mode forward; `arch_latency(space, arch, ...)` does
  the same with random weights (latency does not depend on weight values).
* `build_table(space, ...)`: a per-layer lookup table, built once per device:
  the stem (first conv + first block), every block slot x (kernel, expand)
  option x resolution, and the head (final expand, pool, feature mix,
  classifier) are each timed as their own small jitted function. Distinct
  layer configurations are timed once (later slots of a stage share one).
  The per-call dispatch overhead (timed on a trivial jitted function) is
  subtracted from every layer and added once per network. A subnet's
  predicted latency is `fixed[res, width] + sum_b block[res, width, b, gene_b]`
  (gene 0 = skipped = 0 ms): the same gather + sum as
  `objectives.CostTables`, so it is exact to jit over a population.
  The layers are `subnet.Stem`, `subnet.Block` and `subnet.Head`, the
  modules the extracted subnet itself runs, walked along `SearchSpace.blocks`.
  `build_table(..., timer=, overhead_ms=)` takes a stand-in for the clock
  (tests use a deterministic cost).
* `table_fn(table, space)`: the jittable latency objective; pass it to
  `objectives.complexity_fn(space, names, custom={"latency": fn})`.
* `check_table(table, genes, ...)`: Spearman / Kendall rank correlation and
  mean relative error of the table against measured subnets `genes`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import time
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from nat_jax.model import layers
from nat_jax.model import subnet as subnet_lib
from nat_jax.search.rank_stats import kendall, spearman
from nat_jax.space import search_space as ss


# ------------------------------------------------------------------ measure
def measure(fn: Callable, *args, warmup: int = 3, repeats: int = 20,
            min_seconds: float = 0.0) -> dict[str, float]:
    """Wall time of `fn(*args)` (jitted: the first warm-up call compiles).

    Args:
      warmup: untimed calls first (>= 1 compiles and warms caches).
      repeats: timed calls; more are made until `min_seconds` have passed.

    Returns:
      {"median_ms", "min_ms", "p10_ms", "p90_ms", "repeats"}.
    """
    if warmup < 0 or repeats < 1:
        raise ValueError(f"Need warmup >= 0 and repeats >= 1, got {warmup=}, "
                         f"{repeats=}.")
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times, start = [], time.perf_counter()
    while len(times) < repeats or time.perf_counter() - start < min_seconds:
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    ms = np.asarray(times) * 1e3
    return {"median_ms": float(np.median(ms)), "min_ms": float(ms.min()),
            "p10_ms": float(np.percentile(ms, 10)),
            "p90_ms": float(np.percentile(ms, 90)), "repeats": len(ms)}


def random_variables(module: nn.Module, *inputs: jax.ShapeDtypeStruct,
                     seed: int = 0) -> dict:
    """Variables of `module` with random values, without compiling its init.

    Shapes come from `jax.eval_shape`; values are NumPy normal(0, 0.1) (BN
    scale / variance 1), enough for timing and tests.
    """
    shapes = jax.eval_shape(lambda k, *xs: module.init(k, *xs), jax.random.key(0),
                            *inputs)
    rng = np.random.default_rng(seed)

    def fill(path, s):
        name = str(getattr(path[-1], "key", path[-1]))
        if name in ("scale", "var"):
            return np.ones(s.shape, s.dtype)
        return (0.1 * rng.standard_normal(s.shape)).astype(s.dtype)

    return jax.tree_util.tree_map_with_path(fill, dict(shapes))


def subnet_latency(model: subnet_lib.Subnet, variables: dict, resolution: int,
                   batch_size: int = 1, warmup: int = 3, repeats: int = 20
                   ) -> dict[str, float]:
    """Measured eval-mode latency of a static subnet (see `measure`)."""
    variables = {"params": variables["params"],
                 "batch_stats": variables["batch_stats"]}
    fn = jax.jit(lambda v, x: model.apply(v, x, train=False))
    x = jnp.zeros((batch_size, resolution, resolution, 3), jnp.float32)
    return measure(fn, variables, x, warmup=warmup, repeats=repeats)


def arch_latency(space: ss.SearchSpace, arch: ss.Arch, num_classes: int = 1000,
                 batch_size: int = 1, warmup: int = 3, repeats: int = 20,
                 depthwise_impl: str | None = None) -> dict[str, float]:
    """Measured latency of `arch` built with random weights."""
    model = subnet_lib.subnet_module(space, arch, num_classes, dropout_rate=0.0,
                                     depthwise_impl=depthwise_impl)
    r = arch.resolution
    v = random_variables(model, jax.ShapeDtypeStruct((1, r, r, 3), jnp.float32))
    return subnet_latency(model, v, r, batch_size, warmup, repeats)


STATS = ("median", "min")


def _check_stat(stat: str) -> str:
    if stat not in STATS:
        raise ValueError(f"Unknown latency statistic {stat!r}; allowed: {STATS}.")
    return f"{stat}_ms"


def time_module(module: nn.Module, shape: tuple[int, ...], warmup: int = 3,
                repeats: int = 20, stat: str = "median") -> float:
    """Measured ms of `module.apply(random variables, zeros float32[shape])`."""
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    v = random_variables(module, x)
    fn = jax.jit(lambda v, x: module.apply(v, x))
    return measure(fn, v, jnp.zeros(shape, jnp.float32), warmup=warmup,
                   repeats=repeats)[_check_stat(stat)]


def measure_overhead(batch_size: int, warmup: int = 3, repeats: int = 50,
                     stat: str = "median") -> float:
    """Measured ms of a trivial jitted call (the per-call dispatch overhead)."""
    ident = jax.jit(lambda x: x[:1, :1, :1, :1] * 1.0)
    return measure(ident, jnp.zeros((batch_size, 8, 8, 3)), warmup=warmup,
                   repeats=repeats)[_check_stat(stat)]


# -------------------------------------------------------------------- table
@dataclasses.dataclass
class LatencyTable:
    """Per-layer latency lookup table (milliseconds) of one device.

    fixed: float64[n_res, n_width] stem + head + one call overhead;
    block: float64[n_res, n_width, num_blocks, num_ops + 1] (op 0 = skipped);
    measured_resolutions: the resolutions actually timed (others are fitted
    per entry as a + b * r^2 from the timed ones).
    """

    space: ss.SearchSpace
    batch_size: int
    num_classes: int
    fixed: np.ndarray
    block: np.ndarray
    overhead_ms: float
    device: str
    measured_resolutions: tuple[int, ...]
    stat: str = "median"
    check: dict[str, Any] | None = None

    def predict(self, genes, xp=np):
        """Predicted latency (ms) of genotypes `[..., num_genes]`."""
        fixed, block = self.fixed, self.block
        if xp is not np:
            fixed, block = (jnp.asarray(fixed, jnp.float32),
                            jnp.asarray(block, jnp.float32))
        genes = self.space.canonicalize(genes)
        res, wid, lay = genes[..., 0], genes[..., 1], genes[..., 2:]
        slots = xp.arange(lay.shape[-1])
        return fixed[res, wid] + block[res[..., None], wid[..., None], slots,
                                       lay].sum(-1)

    def to_json(self) -> dict:
        return {"kind": "nat_jax.LatencyTable", "units": "ms",
                "space": self.space.to_json(),
                "batch_size": self.batch_size, "num_classes": self.num_classes,
                "fixed": self.fixed.tolist(), "block": self.block.tolist(),
                "overhead_ms": self.overhead_ms, "device": self.device,
                "measured_resolutions": list(self.measured_resolutions),
                "stat": self.stat, "check": self.check}

    @classmethod
    def from_json(cls, d: dict) -> "LatencyTable":
        if d.get("kind") != "nat_jax.LatencyTable":
            raise ValueError("Not a latency table (expected kind "
                             "'nat_jax.LatencyTable'); build one with "
                             "python -m experiments.build_latency_table.")
        space = ss.SearchSpace.from_json(d["space"])
        t = cls(space, int(d["batch_size"]), int(d["num_classes"]),
                np.asarray(d["fixed"], np.float64), np.asarray(d["block"], np.float64),
                float(d["overhead_ms"]), str(d["device"]),
                tuple(d["measured_resolutions"]), str(d.get("stat", "median")),
                d.get("check"))
        want = (len(space.resolutions), len(space.widths), space.num_blocks,
                space.num_ops + 1)
        if t.block.shape != want or t.fixed.shape != want[:2]:
            raise ValueError(f"Corrupt latency table: block {t.block.shape}, "
                             f"fixed {t.fixed.shape}; expected {want}.")
        return t

    def save(self, path: str) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.to_json(), f)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str) -> "LatencyTable":
        if not os.path.isfile(path):
            raise ValueError(f"No latency table at {path}; build one with python -m "
                             f"experiments.build_latency_table --output={path}.")
        try:
            with open(path) as f:
                d = json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"Latency table {path} is corrupt ({err.msg}).") from None
        return cls.from_json(d)


def device_name() -> str:
    d = jax.devices()[0]
    return f"{d.platform}:{getattr(d, 'device_kind', '?')} ({platform.machine()}, " \
           f"{os.cpu_count()} host cores)"


def build_table(space: ss.SearchSpace, batch_size: int = 1, num_classes: int = 1000,
                resolutions: Sequence[int] | None = None, warmup: int = 3,
                repeats: int = 20, depthwise_impl: str | None = None,
                progress: Callable[[int, int], None] | None = None,
                stat: str = "median",
                timer: Callable[[nn.Module, tuple[int, ...]], float] | None = None,
                overhead_ms: float | None = None) -> LatencyTable:
    """Times every distinct layer configuration of `space` on this backend.

    Args:
      space: search space (all of its widths are tabulated).
      batch_size: batch size the latency refers to.
      num_classes: classifier size of the head.
      resolutions: resolutions to time (default: all of the space's); the
        others are fitted per entry as a + b * r^2 (exact for one point up to
        the proportional rule b * r^2).
      warmup, repeats: see `measure`.
      depthwise_impl: as `subnet.Subnet` (None: per backend).
      progress: called as progress(done, total) after each timed layer.
      stat: "median" of the repeats (default) or "min" (robust on a shared,
        noisy machine: contention only ever adds time).
      timer: ms of one call of a layer module on float32[shape], including one
        dispatch overhead (default: `time_module` with warmup, repeats, stat).
      overhead_ms: the per-call overhead (default: `measure_overhead`).
    """
    _check_stat(stat)
    impl = depthwise_impl or layers.default_depthwise_impl()
    if timer is None:
        def timer(module, shape):
            return time_module(module, shape, warmup, repeats, stat)
    timed = tuple(sorted(resolutions or space.resolutions))
    for r in timed:
        space.resolution_index(r)
    n_res, n_w = len(space.resolutions), len(space.widths)
    fixed = np.full((n_res, n_w), np.nan)
    block = np.zeros((n_res, n_w, space.num_blocks, space.num_ops + 1))
    block[..., 1:] = np.nan
    overhead = (measure_overhead(batch_size, warmup, max(repeats, 50), stat)
                if overhead_ms is None else float(overhead_ms))
    jobs = _layer_jobs(space, timed, batch_size, num_classes, impl)
    cache: dict[Any, float] = {}
    uniq = {key for key, _, _, _ in jobs}
    for key, module, shape, _ in jobs:
        if key not in cache:
            t = timer(module, shape)
            cache[key] = max(t - overhead, 0.0)
            if progress:
                progress(len(cache), len(uniq))
    for key, _, _, where in jobs:
        for kind, ri, wi, b, op in where:
            if kind == "block":
                block[ri, wi, b, op] = cache[key]
            else:
                fixed[ri, wi] = np.nan_to_num(fixed[ri, wi]) + cache[key]
    fixed += overhead
    measured = [space.resolution_index(r) for r in timed]
    fixed, block = _fill(space, measured, fixed), _fill(space, measured, block)
    return LatencyTable(space, batch_size, num_classes, fixed, block, overhead,
                        device_name(), timed, stat)


def _layer_jobs(space, timed, batch_size, num_classes, impl):
    """(dedupe key, module, input shape, [(kind, res idx, width idx, b, op)])."""
    out = []
    for wi, width in enumerate(space.widths):
        ch = space.channels(width)
        slots = space.blocks(width)
        for r in timed:
            ri = space.resolution_index(r)
            f = (r - 1) // 2 + 1
            stem = subnet_lib.Stem(ch.first, ch.first_block, impl)
            out.append((("stem", r, ch.first, ch.first_block), stem,
                        (batch_size, r, r, 3), [("fixed", ri, wi, 0, 0)]))
            for slot in slots:
                for op in range(1, space.num_ops + 1):
                    k = space.kernels[(op - 1) % len(space.kernels)]
                    e = space.expands[(op - 1) // len(space.kernels)]
                    spec = subnet_lib.BlockSpec(
                        slot.c_in, slot.c_out, k, slot.stride, e,
                        space.mid_channels(slot.c_in, e), slot.act, slot.use_se,
                        slot.stride == 1 and slot.c_in == slot.c_out)
                    out.append((("block", spec, f),
                                subnet_lib.Block(spec, impl),
                                (batch_size, f, f, slot.c_in),
                                [("block", ri, wi, slot.index, op)]))
                f = (f - 1) // slot.stride + 1
            c_last = ch.stages[-1]
            head = subnet_lib.Head(c_last, ch.final_expand, ch.feature_mix,
                                   num_classes)
            out.append((("head", f, c_last, width), head,
                        (batch_size, f, f, c_last), [("fixed", ri, wi, 0, 0)]))
    return out


def _fill(space: ss.SearchSpace, measured: list[int], arr: np.ndarray) -> np.ndarray:
    """Fits a + b r^2 per entry over measured resolution rows; fills the rest."""
    if len(measured) == len(space.resolutions):
        return arr
    r2 = np.asarray(space.resolutions, np.float64) ** 2
    y = arr[measured].reshape(len(measured), -1)
    if len(measured) == 1:
        coef = np.stack([np.zeros(y.shape[1]), y[0] / r2[measured[0]]])
    else:
        A = np.stack([np.ones(len(measured)), r2[measured]], axis=1)
        coef = np.linalg.lstsq(A, y, rcond=None)[0]
    full = (np.stack([np.ones_like(r2), r2], axis=1) @ coef).reshape(
        (len(r2),) + arr.shape[1:])
    out = np.maximum(full, 0.0)
    out[measured] = arr[measured]
    return out


# -------------------------------------------------------------------- check
def check_table(table: LatencyTable, genes: np.ndarray, warmup: int = 3,
                repeats: int = 20, depthwise_impl: str | None = None) -> dict:
    """Table predictions against measured latency of subnets `genes`.

    Whole subnets are timed with the table's statistic (median or min).

    Returns:
      {"spearman", "kendall", "mean_rel_error", "rows": [{"genes",
      "predicted_ms", "measured_ms"}]}.
    """
    genes = np.asarray(genes, np.int32).reshape(-1, table.space.num_genes)
    pred = np.asarray(table.predict(genes))
    meas = []
    for g in genes:
        arch = table.space.decode(g)
        meas.append(arch_latency(table.space, arch, table.num_classes,
                                 table.batch_size, warmup, repeats,
                                 depthwise_impl)[_check_stat(table.stat)])
    meas = np.asarray(meas)
    return {"spearman": spearman(pred, meas), "kendall": kendall(pred, meas),
            "mean_rel_error": float(np.mean(np.abs(pred - meas) / meas)),
            "rows": [{"genes": g.tolist(), "predicted_ms": float(p),
                      "measured_ms": float(m)} for g, p, m in zip(genes, pred, meas)]}


# ---------------------------------------------------------------- objective
def table_fn(table: LatencyTable | str | os.PathLike, space: ss.SearchSpace
             ) -> Callable:
    """The latency objective: a jittable `genes int32[n, num_genes] -> float32[n]`
    (ms, minimised) of `space`, which may pin a subset of the table's widths
    (as a run does). `table` is a `LatencyTable` or the path of its file. Use
    it as `objectives.complexity_fn(space, names, custom={"latency": fn})`.
    """
    if isinstance(table, (str, os.PathLike)):
        table = LatencyTable.load(os.fspath(table))
    ref = dataclasses.replace(space, widths=table.space.widths)
    if ref != table.space:
        raise ValueError("The latency table was built for another search space; "
                         "rebuild it with python -m experiments.build_latency_table "
                         "for this space.")
    missing = [w for w in space.widths if w not in table.space.widths]
    if missing:
        raise ValueError(f"The latency table has no width {missing}; it has "
                         f"{list(table.space.widths)}.")
    cols = [table.space.widths.index(w) for w in space.widths]
    sub = dataclasses.replace(table, space=space, fixed=table.fixed[:, cols],
                              block=table.block[:, cols])
    return lambda genes: sub.predict(jnp.asarray(genes, jnp.int32), jnp)
