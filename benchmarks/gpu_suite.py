"""The GPU suite (issue 17 goal 5): one call, one JSON, one Markdown table.

    timeout 480 python -m benchmarks.gpu_suite --out gpu_suite_out
    python -m benchmarks.gpu_suite --tiny --out suite_out   # CPU, seconds

Measured side by side in one run, on the default JAX backend (the GPU when
JAX sees one) and PyTorch on CUDA when available:
  - supernet training step and eval forward, img/s, nat-jax "masked" and
    "switch" vs OFA's PyTorch supernet (`set_active_subnet`), same sampled
    subnets, batch `--batch` (default 128) at `--resolution` (default 224);
    `benchmarks.supernet_step.bench_jax` / `bench_torch`;
  - compile seconds of the training step per resolution (`--compile_res`,
    default mode "masked"; the throughput resolution's compiles come from the
    first section);
  - subnets/minute of `evaluation.evaluate_subnets` (BN re-calibration on
    2000 images + validation pass over the embedded dataset's val split);
  - one search iteration at paper Table 2 settings (`evolution.search`,
    archive of 100, synthetic error of `benchmarks.search_iteration`);
  - peak device memory over the whole suite (JAX `memory_stats`; PyTorch
    `max_memory_allocated` after its runs) and the host's peak RSS.
Each section is timed against `--budget_s`: sections that would start after
the budget (default 360 s, leaving the last section two minutes of an
8-minute call) is spent are recorded as skipped, and the JSON is rewritten after
every section, so a run cut short still leaves its figures. JAX's persistent
compilation cache goes to `<out>/jax_cache` (a second run compiles nothing).

`--tiny`: the tiny search space with one kernel size and one expand ratio
(random weights) at 48 px, batch 4, two
subnets, a small search; OFA's PyTorch net at the same size. Only checks that
every field is produced (CI); its ratios mean nothing.

Needs no network. Beyond the JAX (CUDA) and PyTorch a GPU machine has, the
pure-Python packages of requirements.txt that may be missing there install
from wheels brought along (`pip download -d wheels -r requirements.txt ofa
--no-deps` beforehand; `pip install --no-index --find-links wheels ...`):
flax, optax, orbax-checkpoint, chex, ml_collections, absl-py, pymoo (and its
deps autograd, cma, alive-progress, about-time, grapheme, dill, deprecated,
wrapt), pillow if missing, and `ofa` for the PyTorch side (without it the
PyTorch fields are null with the reason). `JAX_PLATFORMS` is respected.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import time
import traceback

import numpy as np

FIELDS = (
    "host", "backend", "device_kind", "device_count", "jax_version", "torch_version",
    "torch_device", "load_average_start", "load_average_end", "batch",
    "resolution", "steps",
    "train_img_s_masked", "train_img_s_switch", "train_img_s_torch",
    "eval_img_s_masked", "eval_img_s_switch", "eval_img_s_torch",
    "train_ratio_masked", "train_ratio_switch", "eval_ratio_masked",
    "eval_ratio_switch", "compile_s_per_resolution", "eval_subnets_per_min",
    "eval_subnets", "search_iteration_s", "search_first_call_s",
    "peak_device_memory_bytes", "peak_torch_memory_bytes",
    "peak_host_rss_bytes", "section_seconds", "skipped", "errors",
    "wall_s",
)
MODES = ("masked", "switch")


def _load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


class Suite:
    """Collects results, enforces the time budget, writes JSON + Markdown."""

    def __init__(self, args):
        self.args, self.t0 = args, time.perf_counter()
        self.r = {k: None for k in FIELDS}
        self.r.update(section_seconds={}, skipped=[], errors={},
                      compile_s_per_resolution={})

    def section(self, name, fn):
        spent = time.perf_counter() - self.t0
        if spent > self.args.budget_s:
            self.r["skipped"].append(name)
            return
        t = time.perf_counter()
        try:
            fn()
        except Exception as e:  # a section's failure must not lose the rest
            self.r["errors"][name] = f"{type(e).__name__}: {e}"
            traceback.print_exc()
        self.r["section_seconds"][name] = round(time.perf_counter() - t, 2)
        self.write()

    def write(self):
        self.r["wall_s"] = round(time.perf_counter() - self.t0, 2)
        self.r["load_average_end"] = _load()
        self.r["peak_host_rss_bytes"] = resource.getrusage(
            resource.RUSAGE_SELF).ru_maxrss * 1024
        out = self.args.out
        with open(os.path.join(out, "gpu_suite.json.tmp"), "w") as f:
            json.dump(self.r, f, indent=1, sort_keys=True)
        os.replace(os.path.join(out, "gpu_suite.json.tmp"),
                   os.path.join(out, "gpu_suite.json"))
        with open(os.path.join(out, "gpu_suite.md"), "w") as f:
            f.write(markdown(self.r))


def _fmt(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    if isinstance(v, dict):
        return ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items()) or "-"
    if isinstance(v, list):
        return ", ".join(_fmt(x) for x in v) or "-"
    return str(v)


def markdown(r: dict) -> str:
    """The suite's results as a Markdown table (one row per field)."""
    head = (f"nat-jax GPU suite: {r['device_kind']} x{r['device_count']} "
            f"({r['backend']}), PyTorch on {r['torch_device']}, batch "
            f"{r['batch']} at {r['resolution']} px, load average "
            f"{_fmt(r['load_average_start'])} -> {_fmt(r['load_average_end'])}\n\n")
    rows = ["| field | value |", "|---|---|"]
    rows += [f"| {k} | {_fmt(r[k]).replace('|', '/')} |" for k in FIELDS]
    return head + "\n".join(rows) + "\n"


def _torch_device():
    try:
        import torch
    except ImportError:
        return None, None
    return torch, ("cuda" if torch.cuda.is_available() else "cpu")


def run_supernet(s: Suite, space, archs, x, y):
    """Train/eval img/s per exec mode vs OFA's PyTorch, compile seconds."""
    import jax
    import jax.numpy as jnp

    from benchmarks import supernet_step as sst
    from nat_jax.model import supernet

    a = s.args
    torch, dev = _torch_device()
    sd = None
    if torch is not None:
        try:
            from tests import ofa_oracle
            net = ofa_oracle.build(1.0, n_classes=a.classes)
            if not a.tiny:
                sd = ofa_oracle.legacy_state_dict(net)
            tt, te = sst.bench_torch(net, archs, x, y, device=dev)
            s.r.update(train_img_s_torch=tt, eval_img_s_torch=te)
            if dev == "cuda":
                s.r["peak_torch_memory_bytes"] = int(torch.cuda.max_memory_allocated())
                net.cpu()
                torch.cuda.empty_cache()
        except Exception as e:
            s.r["errors"]["torch"] = f"{type(e).__name__}: {e}"
    xj, yj = jnp.asarray(x), jnp.asarray(y.astype(np.int32))
    for mode in MODES:
        if time.perf_counter() - s.t0 > a.budget_s:
            s.r["skipped"].append(f"supernet_{mode}")
            continue
        if sd is not None:  # the OFA weights, as the README's benchmark
            from nat_jax.model import pretrained
            model, variables = pretrained.convert_state_dict(
                sd, 1.0, space=space, exec_mode=mode)
        else:
            model, variables = supernet.init_supernet(
                space, 1.0, a.classes, jax.random.key(0), exec_mode=mode)
        jt, je, ct, ce = sst.bench_jax(model, variables, archs, xj, yj)
        s.r[f"train_img_s_{mode}"], s.r[f"eval_img_s_{mode}"] = jt, je
        s.r["compile_s_per_resolution"][f"{mode}_train_{a.resolution}"] = ct
        s.r["compile_s_per_resolution"][f"{mode}_eval_{a.resolution}"] = ce
        for kind, tv in (("train", s.r["train_img_s_torch"]),
                         ("eval", s.r["eval_img_s_torch"])):
            if tv:
                s.r[f"{kind}_ratio_{mode}"] = s.r[f"{kind}_img_s_{mode}"] / tv
        s.write()


def run_compiles(s: Suite, space):
    """Compile seconds of the default-mode training step at other resolutions."""
    import jax

    from benchmarks import supernet_step as sst
    from nat_jax.model import supernet

    a = s.args
    model, variables = supernet.init_supernet(space, 1.0, a.classes,
                                              jax.random.key(0))
    for res in a.compile_res:
        if time.perf_counter() - s.t0 > a.budget_s:
            s.r["skipped"].append(f"compile_{res}")
            continue
        arch = sst.sample_archs(space, 1, res, 1.0)[0]
        s.r["compile_s_per_resolution"][f"default_train_{res}"] = (
            sst.compile_seconds(model, variables, arch, a.batch))


def run_evaluation(s: Suite, space):
    """Subnets/minute of evaluate_subnets (BN re-calibration + validation)."""
    import jax

    from nat_jax.data import datasets as data
    from nat_jax.data import pipeline
    from nat_jax.model import supernet
    from nat_jax.train import calibration
    from nat_jax.train import evaluation as ev

    a = s.args
    ds = data.load(data.EMBEDDED)
    model, variables = supernet.init_supernet(space, 1.0, 10, jax.random.key(0))
    cfg = ev.EvalConfig(batch_size=a.eval_batch, calib_images=a.calib_images,
                        calib_batch_size=calibration.batch_size(a.calib_images))
    genes = np.array(space.sample(jax.random.key(3), a.eval_subnets + 1))
    genes[:, 0] = space.resolution_index(a.eval_resolution)
    genes[:, 1] = space.width_index(1.0)
    val = ds.val
    if a.tiny:
        import dataclasses
        val = dataclasses.replace(val, indices=val.indices[:64])
    cal = pipeline.CalibrationSet(ds.train, cfg.calib_images, cfg.calib_batch_size)
    ev.evaluate_subnets(model, variables, list(genes[:1]), space, val, ds.train,
                        cfg, calibration=cal)  # compiles
    t = time.perf_counter()
    ev.evaluate_subnets(model, variables, list(genes[1:]), space, val, ds.train,
                        cfg, calibration=cal)
    s.r["eval_subnets_per_min"] = 60.0 * a.eval_subnets / (time.perf_counter() - t)
    s.r["eval_subnets"] = {"subnets": a.eval_subnets, "val_images": len(val),
                           "calib_images": cfg.calib_images,
                           "resolution": a.eval_resolution,
                           "exec_mode": supernet.default_exec_mode(True)}


def run_search(s: Suite):
    """Seconds of one search iteration (Table 2 settings unless --tiny)."""
    import jax

    from benchmarks.search_iteration import SPACE, synthetic_error
    from nat_jax.search import evolution
    from nat_jax.space import objectives as ob

    a = s.args
    archive = np.unique(np.asarray(SPACE.sample(jax.random.key(0), a.archive + 20)),
                        axis=0)[:a.archive]
    errors = synthetic_error(archive)
    fn = ob.complexity_fn(SPACE, ("madds",))
    cfg = (evolution.SearchConfig(pop_size=8, generations=2, n_members=4)
           if a.tiny else evolution.SearchConfig())
    t = time.perf_counter()
    jax.block_until_ready(evolution.search(jax.random.key(1), SPACE, archive,
                                           errors, fn, cfg).candidates)
    s.r["search_first_call_s"] = time.perf_counter() - t
    best = math.inf
    for r in range(a.search_repeats):
        t = time.perf_counter()
        jax.block_until_ready(evolution.search(jax.random.key(2 + r), SPACE, archive,
                                               errors, fn, cfg).candidates)
        best = min(best, time.perf_counter() - t)
    s.r["search_iteration_s"] = best


def run_memory(s: Suite):
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    s.r["peak_device_memory_bytes"] = int(peak) if peak is not None else None


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="gpu_suite_out")
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--budget_s", type=float, default=None,
                   help="no section starts after this many seconds (360; tiny 120)")
    p.add_argument("--batch", type=int, default=None, help="128 (tiny: 4)")
    p.add_argument("--resolution", type=int, default=None, help="224 (tiny: 48)")
    p.add_argument("--steps", type=int, default=None, help="subnets timed (8; 2)")
    p.add_argument("--compile_res", type=int, nargs="*", default=None,
                   help="further resolutions to compile (192; tiny 40)")
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--eval_subnets", type=int, default=None, help="8 (tiny 2)")
    p.add_argument("--archive", type=int, default=100)
    p.add_argument("--search_repeats", type=int, default=2)
    a = p.parse_args(argv)
    full = dict(budget_s=360.0, batch=128, resolution=224, steps=8,
                compile_res=[192], eval_subnets=8)
    tiny = dict(budget_s=120.0, batch=4, resolution=48, steps=2, compile_res=[40],
                eval_subnets=2)
    for k, v in (tiny if a.tiny else full).items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    if a.tiny:
        a.classes, a.archive, a.search_repeats = 10, 30, 1
    a.eval_resolution = a.resolution
    a.eval_batch = 64 if a.tiny else 250
    a.calib_images = 16 if a.tiny else 2000
    return a


def main(argv=None):
    a = parse(argv)
    os.makedirs(a.out, exist_ok=True)
    # JAX and PyTorch share the GPU: JAX takes memory as it needs it instead
    # of 75% up front, and memory_stats' peak is then JAX's own peak.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    import jax

    from nat_jax.runtime import compile_cache
    from nat_jax.space import search_space as ss

    compile_cache.enable(os.path.join(a.out, "jax_cache"))
    s = Suite(a)
    torch, dev = _torch_device()
    d = jax.devices()[0]
    s.r.update(backend=jax.default_backend(), device_kind=d.device_kind,
               device_count=jax.device_count(), jax_version=jax.__version__,
               torch_version=getattr(torch, "__version__", None), torch_device=dev,
               load_average_start=_load(), batch=a.batch, resolution=a.resolution,
               steps=a.steps, host=platform.node())
    if a.tiny:  # one kernel size and expand ratio: seconds-sized compiles
        import dataclasses
        space = dataclasses.replace(ss.SearchSpace.tiny(), kernels=(3,),
                                    expands=(3,))
    else:
        import dataclasses
        space = dataclasses.replace(ss.OFA_MBV3, resolutions=tuple(sorted(
            {a.resolution, *a.compile_res})))
    from benchmarks import supernet_step as sst
    archs = sst.sample_archs(space, a.steps, a.resolution, 1.0)
    rng = np.random.RandomState(0)
    x = rng.randn(a.batch, a.resolution, a.resolution, 3).astype(np.float32)
    y = rng.randint(0, a.classes, a.batch)
    print(f"gpu_suite: backend={s.r['backend']} device={s.r['device_kind']} "
          f"torch={dev} batch={a.batch} res={a.resolution} load={_load()}",
          flush=True)
    s.section("supernet", lambda: run_supernet(s, space, archs, x, y))
    s.section("search", lambda: run_search(s))
    s.section("evaluation", lambda: run_evaluation(s, space))
    s.section("compile", lambda: run_compiles(s, space))
    s.section("memory", lambda: run_memory(s))
    s.write()
    print(markdown(s.r), flush=True)
    return s.r


if __name__ == "__main__":
    main()
