"""nat-jax tests, one folder per nat_jax subpackage (plus experiments/,
benchmarks/ and docs/). Shared helpers: `tests.helpers`, `tests.ofa_oracle`."""
