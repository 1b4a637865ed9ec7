"""Latency: measurement, the per-layer lookup table and its objective.

The table's arithmetic is tested with a deterministic stand-in for the clock
(a layer "takes" as many ms as it has parameters), so the predictions have an
exact oracle: `objectives.count`, itself checked against hand counts. How well
the table ranks subnets by *measured* latency depends on the machine and its
load; `python -m benchmarks.latency_table` reports it (never asserted here).
"""

import dataclasses
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nat_jax.deploy import latency
from nat_jax.space import objectives
from nat_jax.space import search_space as ss

# Two kernels x two expands: 4 slots x 4 options + stem + head = 18 layers per
# resolution and width (no two slots of the tiny space share a configuration;
# the two widths, one supernet each, have other channels).
SPACE = dataclasses.replace(ss.SearchSpace.tiny(), kernels=(3, 7), expands=(3, 6),
                            widths=(1.0, 1.2))
OVERHEAD = 7.0
CLASSES = 10


def _num_params(module, shape):
    shapes = jax.eval_shape(module.init, jax.random.key(0),
                            jax.ShapeDtypeStruct(shape, jnp.float32))
    return sum(int(np.prod(v.shape)) for v in jax.tree.leaves(shapes["params"]))


class ParamsTimer:
    """Fake clock: one call of a layer takes #params ms plus the overhead."""

    def __init__(self):
        self.calls = []

    def __call__(self, module, shape):
        self.calls.append((type(module).__name__, shape))
        return float(_num_params(module, shape)) + OVERHEAD


@pytest.fixture(scope="module")
def fake():
    timer = ParamsTimer()
    table = latency.build_table(SPACE, batch_size=2, num_classes=CLASSES,
                                timer=timer, overhead_ms=OVERHEAD)
    return table, timer


def _population(n, seed=0):
    return np.asarray(SPACE.sample(jax.random.key(seed), n))


def test_measure_statistics():
    fn = jax.jit(lambda x: jnp.tanh(x @ x))
    m = latency.measure(fn, jnp.ones((64, 64)), warmup=2, repeats=9)
    # Order statistics of the same sample, whatever the machine's load.
    assert m["repeats"] >= 9 and m["min_ms"] <= m["p10_ms"] <= m["median_ms"]
    assert m["median_ms"] <= m["p90_ms"]
    with pytest.raises(ValueError, match="repeats"):
        latency.measure(fn, jnp.ones((2, 2)), repeats=0)


@pytest.mark.slow
def test_table_predicts_sum_of_layer_costs_exactly(fake):
    table, timer = fake
    # Every distinct layer configuration is timed once: 18 per resolution
    # and width.
    n = len(SPACE.resolutions) * len(SPACE.widths)
    assert len(timer.calls) == 18 * n
    assert [c[0] for c in timer.calls].count("Stem") == n
    assert table.overhead_ms == OVERHEAD and np.all(table.block[..., 0] == 0)
    genes = np.concatenate([_population(40), np.stack([
        SPACE.encode(SPACE.min_arch(32)), SPACE.encode(SPACE.max_arch(48, 1.2))])])
    assert set(genes[:, 1]) == {0, 1}                      # both widths
    pred = table.predict(genes)
    # Overhead subtracted from every layer, added once per network: the
    # prediction is the subnet's parameter count (OFA's rule) + one overhead.
    want = [objectives.count(SPACE, SPACE.decode(g), CLASSES)["params"] + OVERHEAD
            for g in genes]
    np.testing.assert_allclose(pred, want, rtol=1e-12)


def test_unmeasured_resolutions_are_fitted_in_r_squared():
    def timer(module, shape):  # a cost that grows with the input's size
        return _num_params(module, shape) * shape[1] ** 2 / 1e3 + OVERHEAD

    two = latency.build_table(SPACE, 2, CLASSES, resolutions=(48, 32), timer=timer,
                              overhead_ms=OVERHEAD)
    assert two.measured_resolutions == (32, 48)
    # a + b r^2 through the two measured rows, at r = 40 (index 1).
    t = (40**2 - 32**2) / (48**2 - 32**2)
    for arr in (two.fixed, two.block):
        np.testing.assert_allclose(arr[1], arr[0] + t * (arr[2] - arr[0]), rtol=1e-9)
    one = latency.build_table(SPACE, 2, CLASSES, resolutions=(32,), timer=timer,
                              overhead_ms=OVERHEAD)
    # One measured row: b r^2 through it (and 0 at r = 0).
    np.testing.assert_allclose(one.fixed[2], one.fixed[0] * (48 / 32) ** 2,
                               rtol=1e-9)
    np.testing.assert_allclose(one.block[1], one.block[0] * (40 / 32) ** 2,
                               rtol=1e-9)
    np.testing.assert_array_equal(one.block[0], two.block[0])


@pytest.mark.slow
def test_latency_objective_is_the_jitted_lookup(fake, tmp_path):
    table, _ = fake
    path = str(tmp_path / "table.json")
    table.save(path)
    loaded = latency.LatencyTable.load(path)
    np.testing.assert_array_equal(loaded.block, table.block)
    genes = _population(16, seed=1)
    for source in (table, path):  # a table or its file
        fn = jax.jit(objectives.complexity_fn(
            SPACE, ["madds", "latency"], CLASSES,
            custom={"latency": latency.table_fn(source, SPACE)}))
        got = np.asarray(fn(genes))
        np.testing.assert_allclose(got[:, 1], table.predict(genes), rtol=1e-6)
    pinned = dataclasses.replace(SPACE, widths=(1.2,))  # as a run pins one
    pinned_fn = jax.jit(latency.table_fn(table, pinned))
    w12 = genes[:, 1] == 1
    as_pinned = genes[w12].copy()
    as_pinned[:, 1] = 0                          # width index 0 of `pinned`
    np.testing.assert_allclose(pinned_fn(as_pinned), got[w12, 1])
    with pytest.raises(ValueError, match="another search space"):
        latency.table_fn(table, ss.SearchSpace.tiny())
    one = latency.build_table(dataclasses.replace(SPACE, widths=(1.0,)), 2, CLASSES,
                              resolutions=(32,), timer=ParamsTimer(),
                              overhead_ms=OVERHEAD)
    with pytest.raises(ValueError, match="no width"):
        latency.table_fn(one, pinned)


@pytest.mark.slow
def test_real_build_and_check_run_end_to_end():
    # Timings themselves are machine-dependent: only their form is checked.
    table = latency.build_table(SPACE, batch_size=2, num_classes=CLASSES,
                                resolutions=(32,), warmup=1, repeats=2, stat="min")
    assert np.all(np.isfinite(table.block)) and np.all(np.isfinite(table.fixed))
    assert table.block.shape == (3, len(SPACE.widths), SPACE.num_blocks,
                                 SPACE.num_ops + 1)
    genes = np.stack([SPACE.encode(SPACE.min_arch(32)),
                      SPACE.encode(SPACE.max_arch(32))])
    chk = latency.check_table(table, genes, warmup=1, repeats=2)
    assert set(chk) == {"spearman", "kendall", "mean_rel_error", "rows"}
    assert [r["genes"] for r in chk["rows"]] == genes.tolist()
    np.testing.assert_allclose([r["predicted_ms"] for r in chk["rows"]],
                               table.predict(genes))


def test_table_file_errors(tmp_path):
    with pytest.raises(ValueError, match="No latency table"):
        latency.LatencyTable.load(str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text('{"kind": "something else"}')
    with pytest.raises(ValueError, match="Not a latency table"):
        latency.LatencyTable.load(str(bad))
    with pytest.raises(ValueError, match="No latency table"):
        latency.table_fn(str(tmp_path / "missing.json"), SPACE)


def test_build_latency_table_cli_errors():
    cmd = [sys.executable, "-m", "experiments.build_latency_table", "--space=tiny"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "error: --output is required (a .json path)."]
