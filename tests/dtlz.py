"""DTLZ1/DTLZ2 (Deb et al. 2005) and an NSGA-III runner on them, shared by
tests/search/test_nsga3.py and benchmarks/nsga3_dtlz.py."""

import functools

import jax
import jax.numpy as jnp

from nat_jax.search import nsga3
from nat_jax.search import operators as op


def dtlz(x, m, which):
    """DTLZ1 (which=0) or DTLZ2 (which=1), x in [0, 1]^n."""
    xm = x[..., m - 1:]
    k = xm.shape[-1]
    g1 = 100 * (k + jnp.sum((xm - .5) ** 2 - jnp.cos(20 * jnp.pi * (xm - .5)), -1))
    g2 = jnp.sum((xm - .5) ** 2, -1)
    f1, f2 = [], []
    for i in range(m):
        a = 0.5 * (1 + g1) * jnp.prod(x[..., :m - 1 - i], -1)
        b = (1 + g2) * jnp.prod(jnp.cos(x[..., :m - 1 - i] * jnp.pi / 2), -1)
        if i > 0:
            a = a * (1 - x[..., m - 1 - i])
            b = b * jnp.sin(x[..., m - 1 - i] * jnp.pi / 2)
        f1.append(a)
        f2.append(b)
    return jnp.where(which == 0, jnp.stack(f1, -1), jnp.stack(f2, -1))


@functools.partial(jax.jit, static_argnames=("m", "n_var", "pop", "gens"))
def run_nsga3(keys, which, m, n_var, pop, gens, ref_dirs):
    """NSGA-III with SBX(eta 30) + PM(eta 20, 1/n), as pymoo's defaults."""
    lo, hi = jnp.zeros(n_var), jnp.ones(n_var)

    def one(key):
        k0, ks = jax.random.split(key)
        x0 = jax.random.uniform(k0, (pop, n_var))
        st = nsga3.init(x0, dtlz(x0, m, which))

        def gen(st, k):
            k1, k2, k3, k4 = jax.random.split(k, 4)
            pa = jax.random.permutation(k1, pop)[: pop // 2]
            pb = jax.random.permutation(k4, pop)[: pop // 2]
            a, b = op.sbx_crossover(k2, st.population[pa], st.population[pb], lo, hi)
            off = jnp.concatenate([a, b])
            off = op.real_polynomial_mutation(k3, off, lo, hi, 1.0 / n_var, 20.0)
            return nsga3.tell(st, off, dtlz(off, m, which), ref_dirs, k), None

        st, _ = jax.lax.scan(gen, st, jax.random.split(ks, gens))
        return st.objectives

    return jax.vmap(one)(keys)
