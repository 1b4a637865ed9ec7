"""Integer variation operators: bounds, Eq. 2 distribution, duplicates."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from nat_jax.search import operators as op
from nat_jax.space import search_space as ss


@pytest.mark.slow
def test_mutation_and_repair_keep_genes_in_bounds_and_canonical():
    space = ss.OFA_MBV3
    lo, hi = space.lower_bounds, space.upper_bounds
    genes = space.sample(jax.random.key(0), 500)
    mutate = jax.jit(op.polynomial_mutation, static_argnames=("prob", "eta"))
    for i in range(3):
        genes = mutate(jax.random.key(i), genes, lo, hi, prob=0.5, eta=1.0)
        assert np.all(np.asarray(genes) >= lo) and np.all(np.asarray(genes) <= hi)
    rep = np.asarray(jax.jit(op.repair, static_argnums=0)(space, genes))
    np.testing.assert_array_equal(rep, np.asarray(space.canonicalize(rep)))
    for g in rep[:50]:
        space.validate_genes(g)  # raises on a bad depth / bound


def _eq2_pmf(x, lo, hi, eta):
    """P(round(x') = k), k = lo..hi, for Eq. 2 (Sec. 3.4), written for the test.

    Eq. 2 maps u <= 1/2 monotonically onto [lo, x] and u > 1/2 onto [x, hi].
    Solving it for u: the continuous mutant lies below t < x with
    probability ((t - lo)/(x - lo))^(eta+1) / 2 and above t >= x with
    probability ((hi - t)/(hi - x))^(eta+1) / 2.
    """
    def below(t):  # P(x' < t)
        if t <= lo:
            return 0.0
        if t > hi:
            return 1.0
        if t <= x:
            return 0.5 * ((t - lo) / (x - lo)) ** (eta + 1)
        return 1.0 - 0.5 * ((hi - t) / (hi - x)) ** (eta + 1)
    return np.array([below(k + 0.5) - below(k - 0.5) for k in range(lo, hi + 1)])


def _eq2_quadrature_pmf(x, lo, hi, eta, n=1_000_000):
    """Same pmf by the midpoint rule over u, applying Eq. 2 literally."""
    u = (np.arange(n) + 0.5) / n
    p = 1.0 / (1.0 + eta)
    y = np.where(u <= 0.5, x + ((2 * u) ** p - 1) * (x - lo),
                 x + (1 - (2 * (1 - u)) ** p) * (hi - x))
    return np.bincount(np.rint(y).astype(int) - lo, minlength=hi - lo + 1) / n


def _chisquare_p(samples, pmf, lo):
    n = len(samples)
    counts = np.bincount(samples - lo, minlength=len(pmf))
    assert len(counts) == len(pmf), "sample outside [lo, hi]"
    keep = pmf * n >= 5
    assert counts[~keep].sum() <= 10 + 3 * pmf[~keep].sum() * n
    exp = pmf[keep] * n
    obs = counts[keep]
    return stats.chisquare(obs, exp * obs.sum() / exp.sum()).pvalue


CASES = [(4, 1, 9), (5, 0, 9), (8, 0, 16), (1, 1, 9), (9, 1, 9), (0, 0, 16),
         (16, 0, 16), (1, 0, 1), (0, 0, 1), (2, 0, 3)]


@pytest.mark.parametrize("eta", [1.0, 5.0])
@pytest.mark.parametrize("x,lo,hi", CASES)
def test_eq2_pmf_matches_closed_form_and_quadrature(x, lo, hi, eta):
    pmf = op.mutation_pmf(x, lo, hi, eta=eta)  # default: the paper's Eq. 2
    assert pmf.shape == (hi - lo + 1,)
    np.testing.assert_allclose(pmf.sum(), 1.0, atol=1e-12)
    assert np.all(pmf >= 0)
    np.testing.assert_allclose(pmf, _eq2_pmf(x, lo, hi, eta), atol=1e-12)
    np.testing.assert_allclose(pmf, _eq2_quadrature_pmf(x, lo, hi, eta), atol=1e-5)


def test_eq2_pmf_hand_values():
    # x = 5 on [1, 9], eta = 1, by hand: P(x' < 5.5) = 1 - ((9 - 5.5)/4)^2 / 2
    # = 0.6171875 and P(x' < 4.5) = ((4.5 - 1)/4)^2 / 2 = 0.3828125, so
    # P(x' = 5) = 0.234375.
    pmf = op.mutation_pmf(5, 1, 9, eta=1.0)
    assert pmf[5 - 1] == pytest.approx(0.234375)
    # P(1) = ((1.5 - 1)/4)^2 / 2 = 1/128 = P(9) by symmetry.
    assert pmf[0] == pytest.approx(1 / 128) and pmf[-1] == pytest.approx(1 / 128)
    # On a bound the gene keeps its value whenever u <= 1/2 (x - lo = 0):
    # P(x' = lo) = 1/2 + P(u > 1/2, x' < lo + 1/2) = 1/2 + (1 - (7.5/8)^2)/2.
    pmf = op.mutation_pmf(1, 1, 9, eta=1.0)
    assert pmf[0] == pytest.approx(0.5 + 0.5 * (1 - (7.5 / 8) ** 2))


@pytest.mark.parametrize("x,lo,hi", CASES)
def test_paper_mutation_matches_eq2_distribution(x, lo, hi):
    n = 40_000
    genes = jnp.full((n, 1), x, jnp.int32)
    out = np.asarray(op.polynomial_mutation(jax.random.key(x + 17 * hi), genes,
                                            [lo], [hi], prob=1.0, eta=1.0))[:, 0]
    assert out.min() >= lo and out.max() <= hi
    p = _chisquare_p(out, _eq2_pmf(x, lo, hi, 1.0), lo)
    assert p > 1e-3, (np.bincount(out - lo), _eq2_pmf(x, lo, hi, 1.0) * n)


def test_paper_mutation_is_the_default_and_differs_from_pymoo():
    # Interior gene: Eq. 2 and the bounded PM differ (fidelity audit D6);
    # on a bound they coincide.
    interior = op.mutation_pmf(5, 1, 9, variant="pymoo")
    assert np.abs(interior - _eq2_pmf(5, 1, 9, 1.0)).sum() / 2 > 0.1
    np.testing.assert_allclose(op.mutation_pmf(1, 1, 9, variant="pymoo"),
                               _eq2_pmf(1, 1, 9, 1.0), atol=1e-12)
    n = 40_000
    genes = jnp.full((n, 1), 5, jnp.int32)
    out = np.asarray(op.polynomial_mutation(jax.random.key(3), genes, [1], [9],
                                            1.0, 1.0))[:, 0]
    assert _chisquare_p(out, _eq2_pmf(5, 1, 9, 1.0), 1) > 1e-3
    with pytest.raises(ValueError, match="variant"):
        op.polynomial_mutation(jax.random.key(0), genes, [1], [9], variant="x")


@pytest.mark.oracle
@pytest.mark.parametrize("x,lo,hi", [(4, 1, 9), (0, 0, 16), (9, 1, 9), (1, 0, 1)])
def test_pymoo_variant_matches_pymoo_pm(x, lo, hi):
    from pymoo.operators.mutation.pm import mut_pm

    n = 40_000
    genes = jnp.full((n, 1), x, jnp.int32)
    out = np.asarray(op.polynomial_mutation(jax.random.key(x + hi), genes,
                                            [lo], [hi], prob=1.0, eta=1.0,
                                            variant="pymoo"))[:, 0]
    pmf = op.mutation_pmf(x, lo, hi, eta=1.0, variant="pymoo")
    np.testing.assert_allclose(pmf.sum(), 1.0, atol=1e-9)
    assert _chisquare_p(out, pmf, lo) > 1e-3
    # pymoo's own operator (what nsganetv2's int_pm rounds) has the same pmf.
    ref = mut_pm(np.full((n, 1), float(x)), np.array([float(lo)]),
                 np.array([float(hi)]), np.ones(n), np.ones(n),
                 at_least_once=False, random_state=np.random.default_rng(x + hi))
    ref = np.rint(ref[:, 0]).astype(int)
    assert _chisquare_p(ref, pmf, lo) > 1e-3


def test_mutation_rate_per_gene():
    genes = jnp.full((20_000, 5), 8, jnp.int32)
    out = op.real_polynomial_mutation(jax.random.key(0), genes.astype(jnp.float32),
                                      jnp.zeros(5), jnp.full(5, 16.0), 0.1, 1.0)
    rate = float(jnp.mean(out != 8.0))
    assert abs(rate - 0.1) < 0.01


def test_uniform_crossover_two_complementary_offspring():
    a = jnp.zeros((2000, 22), jnp.int32)
    b = jnp.ones((2000, 22), jnp.int32)
    c1, c2 = op.uniform_crossover(jax.random.key(0), a, b, prob=0.9)
    np.testing.assert_array_equal(np.asarray(c1 + c2), 1)
    crossed = np.asarray(jnp.any(c1 != a, axis=1))
    assert abs(crossed.mean() - 0.9) < 0.03
    assert abs(float(c1[crossed].mean()) - 0.5) < 0.02


def test_tournament_prefers_lower_rank():
    rank = jnp.array([0, 1, 2, 3])
    win = np.asarray(op.binary_tournament(jax.random.key(0), rank, 40_000))
    freq = np.bincount(win, minlength=4) / len(win)
    # P(win) of rank r among 4 with replacement: (2 * (4 - r) - 1) / 16.
    np.testing.assert_allclose(freq, [7 / 16, 5 / 16, 3 / 16, 1 / 16], atol=0.01)


def test_duplicate_mask_marks_later_copies_and_reference_rows():
    g = jnp.array([[1, 2], [3, 4], [1, 2], [5, 6], [3, 4]])
    np.testing.assert_array_equal(op.duplicate_mask(g), [0, 0, 1, 0, 1])
    ref = jnp.array([[5, 6]])
    np.testing.assert_array_equal(op.duplicate_mask(g, ref), [0, 0, 1, 1, 1])


@pytest.mark.slow
def test_sbx_stays_in_bounds():
    k1, k2 = jax.random.split(jax.random.key(0))
    a = jax.random.uniform(k1, (500, 7))
    b = jax.random.uniform(k2, (500, 7))
    sbx = jax.jit(op.sbx_crossover)
    c1, c2 = sbx(jax.random.key(1), a, b, jnp.zeros(7), jnp.ones(7))
    for c in (c1, c2):
        assert float(c.min()) >= 0.0 and float(c.max()) <= 1.0
    # Equal parents give equal children; eta 30 keeps children near parents.
    d1, d2 = sbx(jax.random.key(2), a, a, jnp.zeros(7), jnp.ones(7))
    np.testing.assert_array_equal(np.asarray(d1), np.asarray(a))
    near = np.minimum(np.abs(c1 - a), np.abs(c1 - b))
    assert float(np.median(near)) < 0.05
