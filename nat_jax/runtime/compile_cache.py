"""Persistent compilation cache and compile-time accounting.

A run compiles one training program per resolution and one evaluation
program per resolution (and exec mode); resumed runs and re-evaluations would
compile the same programs again. `enable(directory)` turns on JAX's
persistent compilation cache in `directory` (e.g. `<workdir>/jax_cache`) with
thresholds of zero, so that every program, also the small ones of a CPU run,
is written once and read back by later processes.

`CompileTimer` sums JAX's own compile events (`jax.monitoring`) while it is
active: seconds of tracing, lowering to MLIR and backend compilation (which
includes reading a program back from the persistent cache), plus the
persistent cache's hits and misses, for a `metrics.jsonl` record per phase:

    compile_cache.enable(os.path.join(workdir, "jax_cache"))
    with compile_cache.CompileTimer() as timer:
        state, m = adaptation.adapt(...)
    workdir.append_jsonl(path, {"phase": "adapt", **timer.summary()})

or, for a dict of phase seconds (`transfer.run`'s `times`), `phase(times,
"adapt")`, which adds "adapt" (wall seconds) and "adapt_compile" (compile
seconds, cache reads included).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time

import jax
from jax import monitoring

TRACE_EVENT = "/jax/core/compile/jaxpr_trace_duration"
LOWER_EVENT = "/jax/core/compile/jaxpr_to_mlir_module_duration"
BACKEND_EVENT = "/jax/core/compile/backend_compile_duration"
HIT_EVENT = "/jax/compilation_cache/cache_hits"
MISS_EVENT = "/jax/compilation_cache/cache_misses"
SAVED_EVENT = "/jax/compilation_cache/compile_time_saved_sec"

_DURATIONS = {TRACE_EVENT: "trace_s", LOWER_EVENT: "lower_s",
              BACKEND_EVENT: "backend_compile_s", SAVED_EVENT: "saved_s"}
_COUNTS = {HIT_EVENT: "cache_hits", MISS_EVENT: "cache_misses"}

_lock = threading.Lock()
_active: list["CompileTimer"] = []
_registered = False


def enable(directory: str, *, min_compile_time_s: float = 0.0,
           min_entry_bytes: int = 0) -> str:
    """Turn on JAX's persistent compilation cache in `directory`.

    Every program whose compile takes at least `min_compile_time_s` (JAX's
    default is 1 s, which leaves a CPU run's small programs uncached) and
    whose executable has at least `min_entry_bytes` is written there;
    later compiles of the same program (same HLO, backend, devices and
    flags), also in other processes, read it back.

    Args:
      directory: cache folder (created if missing); a local path or any
        path JAX's cache accepts (e.g. gs://...).
      min_compile_time_s: jax_persistent_cache_min_compile_time_secs.
      min_entry_bytes: jax_persistent_cache_min_entry_size_bytes.

    Returns:
      The cache directory (absolute for local paths).
    """
    if not directory:
        raise ValueError("compile_cache.enable needs a directory, e.g. "
                         "<workdir>/jax_cache.")
    if "://" not in directory:
        directory = os.path.abspath(directory)
        os.makedirs(directory, exist_ok=True)
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs",
                      float(min_compile_time_s))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes",
                      int(min_entry_bytes))
    # The cache object is created on the first compile; if this process has
    # compiled before, drop it so that the new directory is used.
    from jax.experimental.compilation_cache import compilation_cache as cc
    cc.reset_cache()
    _register()
    return directory


def cache_entries(directory: str) -> int:
    """Number of compiled programs stored in a local cache `directory`."""
    if not os.path.isdir(directory):
        return 0
    return sum(1 for f in os.listdir(directory)
               if not f.startswith(".") and not f.endswith("-atime"))


def _on_duration(event: str, duration: float, **kwargs) -> None:
    key = _DURATIONS.get(event)
    if key is None:
        return
    with _lock:
        for t in _active:
            t.totals[key] += float(duration)


def _on_event(event: str, **kwargs) -> None:
    key = _COUNTS.get(event)
    if key is None:
        return
    with _lock:
        for t in _active:
            t.totals[key] += 1


def _register() -> None:
    """Register the two listeners once per process (they cannot be removed)."""
    global _registered
    with _lock:
        if _registered:
            return
        monitoring.register_event_duration_secs_listener(_on_duration)
        monitoring.register_event_listener(_on_event)
        _registered = True


class CompileTimer:
    """Context manager summing JAX compile events while it is active.

    Nested and concurrent timers each see every event of their span.
    `summary()` gives floats "compile_s" (trace + lower + backend compile,
    the latter including persistent-cache reads), "trace_s", "lower_s",
    "backend_compile_s", "saved_s" (compile time the cache saved) and ints
    "cache_hits", "cache_misses" (persistent cache, 0 when it is off).
    """

    def __init__(self):
        self.totals = {k: 0.0 for k in _DURATIONS.values()}
        self.totals.update({k: 0 for k in _COUNTS.values()})

    def __enter__(self) -> "CompileTimer":
        _register()
        with _lock:
            _active.append(self)
        return self

    def __exit__(self, *exc) -> None:
        with _lock:
            _active.remove(self)

    def summary(self) -> dict:
        """The totals so far (see the class docstring), compile_s first."""
        t = self.totals
        return {"compile_s": t["trace_s"] + t["lower_s"] + t["backend_compile_s"],
                **t}


@contextlib.contextmanager
def phase(times: dict, name: str):
    """Record wall seconds as times[name], compile seconds as times[name_compile].

    Args:
      times: dict of floats, updated in place (e.g. a metrics.jsonl record's
        phase times).
      name: the phase, e.g. "adapt", "evaluate", "search".

    Yields:
      The phase's `CompileTimer` (its `summary()` has the cache hits/misses).
    """
    t = time.time()
    with CompileTimer() as timer:
        yield timer
    times[name] = time.time() - t
    times[f"{name}_compile"] = timer.summary()["compile_s"]
