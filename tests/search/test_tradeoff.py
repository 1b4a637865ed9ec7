"""Hypervolume, IGD and high trade-off selection."""

import jax
import numpy as np
import pytest
from pymoo.indicators.hv import HV

from nat_jax.search import tradeoff


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
    for variant in ("authors", "all"):
        pick = tradeoff.high_tradeoff(F, 1, variant=variant)
        np.testing.assert_allclose(F[pick[0]], [0.5, 0.1])


# Appendix C, Eq. 5 by hand. A two-slope front: slope -3 down to the knee
# (3, 3), then slope -1/3. Both objectives span [0, 12], so normalising
# divides by 12 and leaves every ratio unchanged; consecutive points are
# sqrt(10) apart, so with m = 2 the neighbours B(i) are the adjacent points
# (one side for the end points: the next two).
KNEE = np.array([[0, 12], [1, 9], [2, 6], [3, 3], [6, 2], [9, 1], [12, 0]], float)
# Loss/gain per move (one worse and one better objective, so the averages are
# the single differences). Moving down the steep part costs 1 in f1 for 3 in
# f2 (1/3), moving up it costs 3 for 1 (3); the flat part the other way round.
#   P0: ->P1 1/3, ->P2 2/6          min 1/3
#   P1: ->P0 3,   ->P2 1/3          min 1/3
#   P2: ->P1 3,   ->P3 1/3          min 1/3
#   P3: ->P2 3/1, ->P4 3/1          min 3     (the knee)
#   P4: ->P3 1/3, ->P5 3            min 1/3
#   P5: ->P4 1/3, ->P6 3            min 1/3
#   P6: ->P5 1/3, ->P4 2/6          min 1/3
# The printed "max" would give 3 at P1..P5 alike: no knee.
KNEE_T = np.array([1, 1, 1, 9, 1, 1, 1]) / 3


def test_eq5_two_objective_knee_by_hand():
    np.testing.assert_allclose(tradeoff.tradeoff_values(KNEE), KNEE_T, rtol=1e-12)
    # Normalisation: any positive scale and shift per objective changes nothing.
    scaled = KNEE * [1.0, 100.0] + [5.0, -7.0]
    np.testing.assert_allclose(tradeoff.tradeoff_values(scaled), KNEE_T, rtol=1e-12)
    # Dominated and duplicated rows are never picked; the knee comes first.
    F = np.concatenate([scaled, scaled[:2], scaled[4:6] + 1.0])
    np.testing.assert_array_equal(tradeoff.high_tradeoff(F, 1), [3])
    idx, t = tradeoff.front_tradeoffs(F)
    np.testing.assert_array_equal(idx, np.arange(7))
    np.testing.assert_allclose(t, KNEE_T, rtol=1e-12)


# Three objectives, already spanning [0, 1] each (normalisation = identity).
TRI = np.array([[0.0, 1.0, 0.5],    # A
                [1.0, 0.0, 0.5],    # B
                [0.5, 0.5, 0.0],    # C
                [0.4, 0.4, 1.0],    # D
                [0.9, 0.1, 0.6]])   # E
# Squared distances: AB 2, AC .75, AD .77, AE 1.63, BC .75, BD .77, BE .03,
# CD 1.02, CE .68, DE .50. The m = 3 nearest: A {C, D, E}, B {E, C, D},
# C {E, A, B}, D {E, A, B}, E {B, D, C}.
# Avg.Loss / Avg.Gain per move (diff = f(j) - f(i)):
#   A->C (.5,-.5,-.5): .5/1 / (1/2)  = 1      A->D (.4,-.6,.5): (.9/2)/.6 = .75
#   A->E (.9,-.9,.1): (1/2)/.9 = 5/9                              T(A) = 5/9
#   B->E (-.1,.1,.1): (.2/2)/.1 = 1      B->C (-.5,.5,-.5): .5/(1/2) = 1
#   B->D (-.6,.4,.5): (.9/2)/.6 = .75                             T(B) = 3/4
#   C->E (.4,-.4,.6): (1/2)/.4 = 1.25    C->A (-.5,.5,.5): (1/2)/.5 = 1
#   C->B (.5,-.5,.5): (1/2)/.5 = 1                                T(C) = 1
#   D->E (.5,-.3,-.4): .5/(.7/2) = 10/7  D->A (-.4,.6,-.5): .6/(.9/2) = 4/3
#   D->B (.6,-.4,-.5): 4/3                                        T(D) = 4/3
#   E->B (.1,-.1,-.1): .1/(.2/2) = 1     E->D (-.5,.3,.4): (.7/2)/.5 = .7
#   E->C (-.4,.4,-.6): .4/(1/2) = .8                              T(E) = 7/10
TRI_T = np.array([5 / 9, 3 / 4, 1.0, 4 / 3, 7 / 10])
# With sums instead of averages (the earlier "all" measure, same B(i)):
#   A: .5/1, .9/.6, 1/.9 -> .5;  B: .2/.1, .5/1, .9/.6 -> .5;
#   C: 1/.4, 1/.5, 1/.5 -> 2;    D: .5/.7, .6/.9, .6/.9 -> 2/3;
#   E: .1/.2, .7/.5, .4/1 -> .4.
# Averaging moves the top pick from C to D.
TRI_T_SUMS = np.array([0.5, 0.5, 2.0, 2 / 3, 0.4])


def test_eq5_three_objectives_by_hand():
    np.testing.assert_allclose(tradeoff.tradeoff_values(TRI), TRI_T, rtol=1e-12)
    np.testing.assert_allclose(tradeoff.tradeoff_values(TRI, 3, variant="all"),
                               TRI_T_SUMS, rtol=1e-12)
    np.testing.assert_array_equal(tradeoff.high_tradeoff(TRI, 2), [3, 2])
    np.testing.assert_array_equal(tradeoff.high_tradeoff(TRI, 2, 3, variant="all"),
                                  [2, 3])
    with pytest.raises(ValueError, match="variant"):
        tradeoff.tradeoff_values(TRI, variant="max")


@pytest.mark.oracle
@pytest.mark.parametrize("m", [2, 3])
def test_authors_variant_matches_pymoo_high_tradeoff_points(m):
    from unittest import mock

    import pymoo.mcdm.high_tradeoff as pymoo_ht

    rng = np.random.default_rng(m)
    X = rng.random((80, m))
    F = X / np.linalg.norm(X, axis=1, keepdims=True) + 0.02 * rng.random((80, m))
    F = F[tradeoff.nondominated(F)] * np.arange(1, m + 1) * 10.0
    Fn = (F - F.min(0)) / (F.max(0) - F.min(0))
    seen = {}

    def capture(mu):  # pymoo's per-point measure, before its outlier step
        seen["mu"] = mu.copy()

    with mock.patch.object(pymoo_ht, "find_outliers_upper_tail", capture):
        pymoo_ht.HighTradeoffPoints().do(Fn)
    ours = tradeoff.tradeoff_values(F, variant="authors")
    np.testing.assert_allclose(ours, seen["mu"], rtol=1e-12)
    assert not np.allclose(ours, tradeoff.tradeoff_values(F))


def test_outlier_test_passes_on_a_clear_outlier():
    # Rest [1, 1.1, .9, 1.05, .95]: mean 1, population variance
    # (0 + .01 + .01 + .0025 + .0025) / 5 = .005, sigma = .0707, threshold
    # 1 + 3 * .0707 = 1.2121 < 5.
    r = tradeoff.outlier_test([1.0, 1.1, 5.0, 0.9, 1.05, 0.95])
    assert r["passes"] and r["top_index"] == 2 and r["top_value"] == 5.0
    assert r["n"] == 6
    assert r["rest_mean"] == pytest.approx(1.0)
    assert r["rest_std"] == pytest.approx(np.sqrt(0.005))
    assert r["threshold"] == pytest.approx(1 + 3 * np.sqrt(0.005))
    assert r["z"] == pytest.approx(4 / np.sqrt(0.005))


def test_outlier_test_fails_on_an_even_spread():
    # Rest [1, 2, 3, 4]: mean 2.5, sigma sqrt(1.25) = 1.118, threshold 5.854.
    r = tradeoff.outlier_test([3.0, 1.0, 5.0, 2.0, 4.0])
    assert not r["passes"] and r["top_index"] == 2
    assert r["threshold"] == pytest.approx(2.5 + 3 * np.sqrt(1.25))
    # With the sample deviation (ddof=1): sigma sqrt(5/3), threshold 6.373.
    r1 = tradeoff.outlier_test([3.0, 1.0, 5.0, 2.0, 4.0], ddof=1)
    assert r1["rest_std"] == pytest.approx(np.sqrt(5 / 3)) and not r1["passes"]
    # A moderate top value: 2 sigma above the rest, not 3.
    r2 = tradeoff.outlier_test([1.0, 2.0, 3.0, 4.0, 2.5 + 2 * np.sqrt(1.25)])
    assert r2["z"] == pytest.approx(2.0) and not r2["passes"]


def test_outlier_test_on_the_knee_front_and_edge_cases():
    _, t = tradeoff.front_tradeoffs(KNEE)
    r = tradeoff.outlier_test(t)
    assert r["passes"] and r["top_index"] == 3 and r["top_value"] == pytest.approx(3)
    single = tradeoff.outlier_test([2.0])
    assert not single["passes"] and np.isnan(single["threshold"])
    with pytest.raises(ValueError, match="finite"):
        tradeoff.outlier_test([1.0, np.inf, 2.0])
