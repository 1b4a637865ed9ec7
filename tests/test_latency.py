"""Latency: measurement, the per-layer lookup table and its objective."""

import dataclasses
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nat_jax import latency, objectives
from nat_jax import search_space as ss

# Two kernels x two expands keep the table at 18 compiled layers per resolution.
SPACE = dataclasses.replace(ss.SearchSpace.tiny(), kernels=(3, 7), expands=(3, 6))


@pytest.fixture(scope="module")
def table():
    # "min" of the repeats: on a shared 2-core machine, contention only adds time.
    return latency.build_table(SPACE, batch_size=16, num_classes=10,
                               resolutions=(32,), repeats=15, stat="min")


def test_measure_statistics():
    fn = jax.jit(lambda x: jnp.tanh(x @ x))
    m = latency.measure(fn, jnp.ones((64, 64)), warmup=2, repeats=9)
    assert m["repeats"] >= 9 and 0 < m["min_ms"] <= m["median_ms"] <= m["p90_ms"]
    with pytest.raises(ValueError, match="repeats"):
        latency.measure(fn, jnp.ones((2, 2)), repeats=0)


def test_table_shapes_and_fill(table):
    n_res = len(SPACE.resolutions)
    assert table.block.shape == (n_res, 1, SPACE.num_blocks, SPACE.num_ops + 1)
    assert np.all(table.block[..., 0] == 0) and np.all(np.isfinite(table.block))
    assert np.all(table.block[..., 1:] >= 0) and np.all(table.fixed > 0)
    # Unmeasured resolutions are fitted as b * r^2 from the one measured.
    np.testing.assert_allclose(table.fixed[2], table.fixed[0] * (48 / 32) ** 2,
                               rtol=1e-9)


def test_table_ranks_subnets_like_measurement(table):
    # Subnets far apart in cost, so the check is robust to timing noise.
    archs = [SPACE.min_arch(32), SPACE.min_arch(48), SPACE.max_arch(32),
             SPACE.max_arch(48)]
    genes = np.stack([SPACE.encode(a) for a in archs])
    chk = latency.check_table(table, genes, repeats=15)
    pred = [r["predicted_ms"] for r in chk["rows"]]
    meas = [r["measured_ms"] for r in chk["rows"]]
    assert pred[3] > pred[0] and meas[3] > meas[0]
    assert chk["spearman"] >= 0.8, chk
    assert chk["mean_rel_error"] < 1.0, chk


def test_registered_objective_is_the_jitted_lookup(table, tmp_path):
    path = str(tmp_path / "table.json")
    table.save(path)
    loaded = latency.LatencyTable.load(path)
    np.testing.assert_allclose(loaded.block, table.block)
    name = "latency_test_table"
    latency.register_table(path, name=name)
    try:
        rng = np.random.default_rng(0)
        genes = np.stack([SPACE.encode(SPACE.decode(
            [rng.integers(3), 0] + list(rng.integers(1, SPACE.num_ops + 1, 4))))
            for _ in range(16)])
        fn = jax.jit(objectives.complexity_fn(SPACE, [name], 10))
        got = np.asarray(fn(genes))
        np.testing.assert_allclose(got[:, 0], table.predict(genes), rtol=1e-5)
        pinned = dataclasses.replace(SPACE, widths=(1.0,))  # as transfer pins it
        pinned_fn = jax.jit(objectives.complexity_fn(pinned, [name], 10))
        np.testing.assert_allclose(pinned_fn(genes)[:, 0], got[:, 0])
        with pytest.raises(ValueError, match="another search space"):
            objectives.complexity_fn(ss.SearchSpace.tiny(), [name], 10)
    finally:
        objectives._FACTORIES.pop(name, None)


def test_table_file_errors(tmp_path):
    with pytest.raises(ValueError, match="No latency table"):
        latency.LatencyTable.load(str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text('{"kind": "something else"}')
    with pytest.raises(ValueError, match="Not a latency table"):
        latency.LatencyTable.load(str(bad))


def test_build_latency_table_cli_errors():
    cmd = [sys.executable, "-m", "experiments.build_latency_table", "--space=tiny"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "error: --output is required (a .json path)."]
