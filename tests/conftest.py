"""Test-wide JAX settings: CPU only, 4 virtual CPU devices for sharding tests,
and strict rank promotion (an accidental broadcast between arrays of different
ranks is an error, as in equinox's and big_vision's test configs)."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402

jax.config.update("jax_platforms", "cpu")
jax.config.update("jax_num_cpu_devices", 4)
jax.config.update("jax_numpy_rank_promotion", "raise")
