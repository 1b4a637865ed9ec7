"""Exact MAdds / params against DESIGN.md's reference table and hand counts."""

import jax
import numpy as np
import pytest

from nat_jax.space import objectives as ob
from nat_jax.space import search_space as ss

S = ss.OFA_MBV3


def _uniform(k, e, d, r, w):
    return ss.Arch.from_ofa([k] * 20, [e] * 20, [d] * 5, r, w, S)


# (arch, madds, params) at 1000 classes, from DESIGN.md section 4.
REFERENCE = [
    (_uniform(7, 6, 4, 224, 1.0), 566_170_656, 7_664_760),
    (_uniform(3, 3, 2, 224, 1.0), 121_278_672, 3_410_792),
    (_uniform(7, 6, 4, 224, 1.2), 843_101_040, 10_701_632),
    (_uniform(3, 3, 2, 224, 1.2), 193_078_200, 4_602_456),
    (_uniform(5, 4, 3, 224, 1.0), 250_746_944, 4_551_792),
    (_uniform(5, 4, 3, 224, 1.2), 385_659_168, 6_245_312),
    (_uniform(7, 6, 4, 192, 1.0), 417_292_160, None),
    (_uniform(7, 6, 4, 256, 1.0), 737_953_536, None),
    (_uniform(3, 3, 2, 192, 1.2), 142_834_656, None),
    (_uniform(3, 3, 2, 256, 1.2), 251_051_520, None),
]


@pytest.mark.parametrize("arch,madds,params", REFERENCE)
def test_reference_table_exact(arch, madds, params):
    c = ob.count(S, arch)
    g = S.encode(arch)
    assert c["madds"] == madds == int(ob.madds(S, g))
    if params is not None:
        assert c["params"] == params == int(ob.params(S, g))


def test_tiny_space_hand_count():
    t = ss.SearchSpace.tiny()
    arch = ss.Arch.from_ofa([3] * 4, [3] * 4, [1, 1], 32, 1.0, space=t)
    madds = [
        16 * 16 * 27 * 8,                     # first conv 3x3 s2, 32 -> 16 px, 8 ch
        16 * 16 * 9 * 8, 16 * 16 * 8 * 8,     # static block: dw3x3, pw 8 -> 8
        16 * 16 * 8 * 24, 8 * 8 * 9 * 24, 8 * 8 * 24 * 16,   # stage 0: mid 24, s2
        8 * 8 * 16 * 48, 4 * 4 * 9 * 48, 4 * 4 * 48 * 24,    # stage 1: mid 48, s2
        2 * 48 * 16,                          # stage 1 SE: 48 -> 16 -> 48
        4 * 4 * 24 * 64, 64 * 96, 96 * 10,    # final expand, feature mix, classifier
    ]
    params = [
        27 * 8 + 2 * 8, 9 * 8 + 2 * 8 + 8 * 8 + 2 * 8,
        8 * 24 + 2 * 24 + 9 * 24 + 2 * 24 + 24 * 16 + 2 * 16,
        16 * 48 + 2 * 48 + 9 * 48 + 2 * 48 + 48 * 24 + 2 * 24,
        48 * 16 + 16 + 16 * 48 + 48,
        24 * 64 + 2 * 64, 64 * 96, 96 * 10 + 10,
    ]
    assert ob.count(t, arch, num_classes=10) == {"madds": sum(madds),
                                                  "params": sum(params)}
    # The same network run at 32 px counted from its 48 px form (input override).
    at48 = ss.Arch.from_ofa([3] * 4, [3] * 4, [1, 1], 48, 1.0, space=t)
    assert ob.count(t, at48, 10, resolution=32) == ob.count(t, arch, 10)
    with pytest.raises(ValueError, match="positive integer"):
        ob.count(t, at48, 10, resolution=0)
    g = t.encode(arch)
    assert int(ob.madds(t, g, num_classes=10)) == sum(madds)
    assert int(ob.params(t, g, num_classes=10)) == sum(params)


def test_tiny_space_hand_count_at_width_1_2():
    """The second supernet of the tiny space (width 1.2): channels 16 / (24,
    32) / 80 / 112; expand-3 mids 48 and 72; SE of 72 channels squeezes to
    make_divisible(72 // 4 = 18) = 24 (OFA's rule: 16 < 0.9 * 18, so 24)."""
    t = ss.SearchSpace.tiny()
    arch = ss.Arch.from_ofa([3] * 4, [3] * 4, [1, 1], 32, 1.2, space=t)
    madds = [
        16 * 16 * 27 * 16,                    # first conv 3x3 s2, 16 ch
        16 * 16 * 9 * 16, 16 * 16 * 16 * 16,  # static block: dw3x3, pw 16 -> 16
        16 * 16 * 16 * 48, 8 * 8 * 9 * 48, 8 * 8 * 48 * 24,  # stage 0: mid 48
        8 * 8 * 24 * 72, 4 * 4 * 9 * 72, 4 * 4 * 72 * 32,    # stage 1: mid 72
        2 * 72 * 24,                          # stage 1 SE: 72 -> 24 -> 72
        4 * 4 * 32 * 80, 80 * 112, 112 * 10,  # final expand, feature mix, fc
    ]
    params = [
        27 * 16 + 2 * 16, 9 * 16 + 2 * 16 + 16 * 16 + 2 * 16,
        16 * 48 + 2 * 48 + 9 * 48 + 2 * 48 + 48 * 24 + 2 * 24,
        24 * 72 + 2 * 72 + 9 * 72 + 2 * 72 + 72 * 32 + 2 * 32,
        72 * 24 + 24 + 24 * 72 + 72,
        32 * 80 + 2 * 80, 80 * 112, 112 * 10 + 10,
    ]
    want = {"madds": sum(madds), "params": sum(params)}
    assert ob.count(t, arch, num_classes=10) == want
    g = t.encode(arch)
    assert g[1] == 1
    fn = ob.complexity_fn(t, ("madds", "params"), 10)
    got = np.asarray(fn(np.stack([g, t.encode(ss.Arch.from_ofa(
        [3] * 4, [3] * 4, [1, 1], 32, 1.0, space=t))])))
    assert got[0, 0] == pytest.approx(want["madds"] / 1e6, rel=1e-6)
    assert got[0, 1] == pytest.approx(want["params"] / 1e6, rel=1e-6)
    assert got[1, 0] < got[0, 0]          # the narrower supernet's twin


@pytest.mark.slow
@pytest.mark.parametrize("num_classes", [10, 1000])
def test_vectorised_equals_layer_by_layer_on_random_population(num_classes):
    genes = np.asarray(S.sample(jax.random.key(0), 300))
    m = ob.madds(S, genes, num_classes)
    p = ob.params(S, genes, num_classes)
    assert m.dtype == np.int64 and m.shape == (300,)
    for i in range(0, 300, 10):
        c = ob.count(S, S.decode(genes[i]), num_classes)
        assert (int(m[i]), int(p[i])) == (c["madds"], c["params"])


def test_non_canonical_genotypes_cost_like_their_canonical_form():
    a = np.array([8, 1] + [5, 6, 0, 2] + [1, 1, 0, 0] * 4, np.int32)
    b = np.array([8, 1] + [5, 6, 2, 0] + [1, 1, 0, 0] * 4, np.int32)
    assert ob.madds(S, a) == ob.madds(S, b) and ob.params(S, a) == ob.params(S, b)


@pytest.mark.slow
def test_jittable_complexity_fn_matches_exact_counts():
    genes = S.sample(jax.random.key(1), 512)
    fn = jax.jit(ob.complexity_fn(S, ("madds", "params"), num_classes=100))
    out = np.asarray(fn(genes))
    assert out.shape == (512, 2) and out.dtype == np.float32
    exact = np.stack([ob.madds(S, np.asarray(genes), 100),
                      ob.params(S, np.asarray(genes), 100)], -1) / 1e6
    np.testing.assert_allclose(out, exact, rtol=1e-6)
    with pytest.raises(ValueError, match="Unknown objective .flops.*madds"):
        ob.complexity_fn(S, ("flops",))


@pytest.mark.slow
def test_custom_objectives_are_passed_not_registered():
    genes = S.sample(jax.random.key(2), 32)
    depth = {"depth": lambda g: (g[:, 2:] > 0).sum(-1)}
    fn = jax.jit(ob.complexity_fn(S, ("madds", "depth"), custom=depth))
    out = np.asarray(fn(genes))
    np.testing.assert_array_equal(out[:, 1], (np.asarray(genes)[:, 2:] > 0).sum(-1))
    np.testing.assert_allclose(out[:, 0], ob.madds(S, np.asarray(genes)) / 1e6,
                               rtol=1e-6)
    # Nothing global changed: without `custom` the name is unknown again.
    with pytest.raises(ValueError, match=r"Unknown objective 'depth'; known: "
                                         r"\['madds', 'params'\]"):
        ob.complexity_fn(S, ("depth",))
    with pytest.raises(ValueError, match="'latency' needs a latency table.*"
                                         "build_latency_table") as err:
        ob.complexity_fn(S, ("madds", "latency"))
    assert "\n" not in str(err.value)


def test_madds_grow_with_resolution_and_classes():
    a = _uniform(5, 4, 3, 192, 1.0)
    b = _uniform(5, 4, 3, 256, 1.0)
    assert ob.count(S, a)["madds"] < ob.count(S, b)["madds"]
    assert ob.count(S, a)["params"] == ob.count(S, b)["params"]
    delta = ob.count(S, a, 1000)["params"] - ob.count(S, a, 10)["params"]
    assert delta == 990 * (1280 + 1)


def user_objective(genes):
    """A user objective for the registry test: number of active blocks."""
    return (genes[:, 2:] > 0).sum(-1)


def test_user_function_objective_by_import_path():
    genes = S.sample(jax.random.key(3), 16)
    fn = ob.complexity_fn(S, ("params", "tests.space.test_objectives:user_objective"))
    out = np.asarray(jax.jit(fn)(genes))
    np.testing.assert_array_equal(out[:, 1], (np.asarray(genes)[:, 2:] > 0).sum(-1))
    with pytest.raises(ValueError, match="Cannot import objective"):
        ob.complexity_fn(S, ("tests.space.test_objectives:nope",))
