"""Hypervolume, IGD and high trade-off selection."""

import jax
import numpy as np
import pytest
from pymoo.indicators.hv import HV

from nat_jax import tradeoff


@pytest.mark.oracle
@pytest.mark.parametrize("m", [2, 3])
def test_exact_hypervolume_matches_pymoo(m):
    rng = np.random.default_rng(m)
    for _ in range(3):
        F = rng.random((60, m))
        ref = np.full(m, 1.1)
        np.testing.assert_allclose(tradeoff.hypervolume(F, ref), HV(ref_point=ref)(F),
                                   rtol=1e-9)


@pytest.mark.oracle
def test_monte_carlo_hypervolume_close_to_pymoo():
    rng = np.random.default_rng(5)
    F = rng.random((30, 5))
    F = F / F.sum(1, keepdims=True)
    ref = np.full(5, 1.0)
    est = tradeoff.hypervolume(F, ref, key=jax.random.key(0), n_samples=200_000)
    exact = HV(ref_point=ref)(F)
    assert abs(est - exact) < 0.01 + 0.02 * exact
    with pytest.raises(ValueError, match="PRNG key"):
        tradeoff.hypervolume(F, ref)


def test_igd_zero_on_reference_and_positive_off():
    R = np.array([[0.0, 1.0], [0.5, 0.5], [1.0, 0.0]])
    assert tradeoff.igd(R, R) == 0.0
    assert tradeoff.igd(R[:1], R) == pytest.approx((0 + np.sqrt(0.5) + np.sqrt(2)) / 3)


def test_nondominated_filter():
    F = np.array([[1, 2], [2, 1], [2, 2], [1, 2]])
    np.testing.assert_array_equal(tradeoff.nondominated(F), [1, 1, 0, 1])


def test_high_tradeoff_finds_the_knee():
    # Front y = 1 - x for x < 0.5 steep, then flat: a sharp knee at x = 0.5.
    x = np.linspace(0, 1, 21)
    y = np.where(x < 0.5, 1 - 1.8 * x, 0.1 - 0.2 * (x - 0.5))
    F = np.stack([x, y], 1)
    F = np.concatenate([F, F[:5] + 0.3])      # dominated rows are never picked
    pick = tradeoff.high_tradeoff(F, 1)
    np.testing.assert_allclose(F[pick[0]], [0.5, 0.1])
    t = tradeoff.tradeoff_values(F[:21])
    assert np.argmax(t) == 10
    assert len(tradeoff.high_tradeoff(F, 30)) == 21
