"""Test-wide JAX settings: CPU only, 4 virtual CPU devices for sharding tests,
and strict rank promotion (an accidental broadcast between arrays of different
ranks is an error, as in equinox's and big_vision's test configs)."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_platforms", "cpu")
jax.config.update("jax_num_cpu_devices", 4)
jax.config.update("jax_numpy_rank_promotion", "raise")


# The fast inner loop is `python -m pytest -q -n auto -m "not slow"` (under 2
# minutes on 2 cores). `slow` (over ~2.5 s on a loaded 2-core machine, or a
# module sharing an expensive fixture) is marked on the tests themselves:
# `@pytest.mark.slow` or a module's `pytestmark`. Find candidates with
#   python -m pytest -q --durations=0 | awk '$1+0 >= 2.5'


@pytest.fixture(scope="module")
def fast_compiles():
    """Tiny-model tests are compile bound: XLA's cheap optimisation level for
    a module (`pytestmark = pytest.mark.usefixtures("fast_compiles")`)."""
    old = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", old)


@pytest.fixture(scope="module", autouse=True)
def release_compiled_programs():
    """Drop JAX's compiled programs after each test module. XLA:CPU maps each
    compiled program's code into memory; a whole-suite process that keeps
    every program of 400+ tests alive crashed (SIGSEGV inside compile or
    serialize, about 320 tests in) near the kernel's 65,530 memory-map limit
    (vm.max_map_count); each file alone always passed."""
    yield
    import gc

    jax.clear_caches()
    gc.collect()
