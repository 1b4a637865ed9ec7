"""Integer variation operators: bounds, Eq. 2 distribution, duplicates."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from nat_jax import operators as op
from nat_jax import search_space as ss


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


@pytest.mark.parametrize("x,lo,hi", [(4, 1, 9), (0, 0, 16), (9, 1, 9), (1, 0, 1)])
def test_mutation_matches_analytic_distribution(x, lo, hi):
    n = 40_000
    genes = jnp.full((n, 1), x, jnp.int32)
    out = np.asarray(op.polynomial_mutation(jax.random.key(x + hi), genes,
                                            [lo], [hi], prob=1.0, eta=1.0))[:, 0]
    pmf = op.mutation_pmf(x, lo, hi, eta=1.0)
    np.testing.assert_allclose(pmf.sum(), 1.0, atol=1e-9)
    counts = np.bincount(out - lo, minlength=hi - lo + 1)
    keep = pmf * n >= 5
    exp = pmf[keep] * n
    obs = counts[keep]
    exp = exp * obs.sum() / exp.sum()
    assert counts[~keep].sum() <= 10
    p = stats.chisquare(obs, exp).pvalue
    assert p > 1e-3, (counts, pmf * n)


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
