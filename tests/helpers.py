"""Shared test fixtures-as-functions (imported by several test modules).

Test modules never import each other; what two of them share lives here.
"""

import functools

import jax
import numpy as np

from nat_jax.data import datasets as data
from nat_jax.space import search_space as ss
from nat_jax.train import adaptation as ad

TINY = ss.SearchSpace.tiny()
TINY_RES = TINY.resolutions[0]


@functools.lru_cache(maxsize=None)
def embedded_dataset():
    """The embedded default dataset (loaded once per test process)."""
    return data.load(data.EMBEDDED)


def tiny_probs(seed: int = 0, space: ss.SearchSpace = TINY,
               resolution: int = TINY_RES) -> np.ndarray:
    """Eq. 3 distribution of a random archive, resolution pinned to `resolution`."""
    genes = np.asarray(space.sample(jax.random.key(seed), 50))
    probs = ad.gene_distribution(space, genes)
    probs[0] = 0.0
    probs[0, space.resolution_index(resolution)] = 1.0
    return probs
