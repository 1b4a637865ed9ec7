"""nat_jax.runtime.compile_cache: a second process reads the first one's programs."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from nat_jax.runtime import compile_cache

# Slow: whole runs or expensive shared fixtures (over ~30 s on 2 cores).
pytestmark = pytest.mark.slow

_CHILD = textwrap.dedent("""
    import json, sys
    import jax
    import jax.numpy as jnp
    from nat_jax.runtime import compile_cache
    compile_cache.enable(sys.argv[1])
    with compile_cache.CompileTimer() as timer:
        f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum(0) * 3.0 + 1.0)
        jax.block_until_ready(f(jnp.ones((8, 8))))
    print("RESULT " + json.dumps(timer.summary()))
""")


def _run(cache_dir):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", _CHILD, cache_dir], env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    return json.loads(line[-1][7:])


def test_second_process_reads_the_cache(tmp_path):
    cache = str(tmp_path / "jax_cache")
    first = _run(cache)
    assert first["cache_misses"] >= 1 and first["cache_hits"] == 0
    n = compile_cache.cache_entries(cache)
    assert n >= 1  # small CPU programs are written (thresholds of zero)
    second = _run(cache)
    assert second["cache_hits"] >= 1 and second["cache_misses"] == 0
    assert compile_cache.cache_entries(cache) == n  # nothing compiled anew
    for s in (first, second):
        assert s["compile_s"] == pytest.approx(
            s["trace_s"] + s["lower_s"] + s["backend_compile_s"])


def test_timer_counts_only_its_span(tmp_path):
    import jax
    import numpy as np

    compile_cache.enable(str(tmp_path / "c"))
    x = np.ones(3, np.float32)
    with compile_cache.CompileTimer() as outer:
        with compile_cache.CompileTimer() as inner:
            jax.block_until_ready(jax.jit(lambda v: v * 7.0 - 2.0)(x))
        seen = dict(inner.totals)
        jax.block_until_ready(jax.jit(lambda v: v * 5.0 + 4.0)(x))
    assert inner.totals == seen  # closed timers stop counting
    assert seen["cache_misses"] >= 1
    assert outer.totals["cache_misses"] == seen["cache_misses"] + 1
    assert seen["backend_compile_s"] > 0
    assert outer.totals["backend_compile_s"] >= seen["backend_compile_s"]


def test_phase_records_wall_and_compile_seconds():
    import jax
    import numpy as np

    times = {"search": 1.5}
    with compile_cache.phase(times, "adapt") as timer:
        jax.block_until_ready(jax.jit(lambda v: v * 3.0 - 11.0)(np.ones(2)))
    assert set(times) == {"search", "adapt", "adapt_compile"}
    assert times["adapt_compile"] == timer.summary()["compile_s"] > 0
    assert times["adapt"] >= times["adapt_compile"]


def test_enable_rejects_empty_directory():
    with pytest.raises(ValueError, match="directory"):
        compile_cache.enable("")
