"""Search space and encodings: round trips, canonical form, bounds, bad input."""

import dataclasses
import json
import pathlib

import jax
import numpy as np
import pytest

from nat_jax.space import search_space as ss

S = ss.OFA_MBV3
REFERENCE = (pathlib.Path(ss.__file__).parents[1] / "assets"
             / "nat_imagenet_subnets.json")


def _random_genes(n, seed=0, space=S):
    """Arbitrary (often non-canonical) in-bounds genotypes from numpy."""
    rng = np.random.default_rng(seed)
    g = rng.integers(space.lower_bounds, space.upper_bounds + 1,
                     size=(n, space.num_genes))
    return g.astype(np.int32)


def test_make_divisible_matches_ofa_rule():
    assert ss.make_divisible(16 * 1.2) == 24  # 16 < 0.9 * 19.2, so +8
    assert ss.make_divisible(24 * 1.2) == 32
    assert ss.make_divisible(112 * 1.2) == 136
    assert ss.make_divisible(3.0) == 8
    assert [ss.make_divisible(24 * e) for e in (3, 4, 6)] == [72, 96, 144]


@pytest.mark.parametrize("width,first,stages,final,mix", [
    (1.0, 16, (24, 40, 80, 112, 160), 960, 1280),
    (1.2, 24, (32, 48, 96, 136, 192), 1152, 1536),
])
def test_channels(width, first, stages, final, mix):
    ch = S.channels(width)
    assert (ch.first, ch.stages, ch.final_expand, ch.feature_mix) == (
        first, stages, final, mix)


def test_bounds_and_sizes():
    assert S.num_genes == 22 and S.num_blocks == 20 and S.num_ops == 9
    np.testing.assert_array_equal(S.lower_bounds, [0, 0] + [1, 1, 0, 0] * 5)
    np.testing.assert_array_equal(S.upper_bounds, [16, 1] + [9] * 20)


def test_layer_gene_numbering_matches_paper():
    # c = 1 + kernel_index + 3 * expand_index: 1 = k3e3, 3 = k7e3, 4 = k3e4, 9 = k7e6.
    assert S.op_gene(3, 3) == 1 and S.op_gene(7, 3) == 3
    assert S.op_gene(3, 4) == 4 and S.op_gene(7, 6) == 9


def test_decode_encode_round_trip_thousands():
    genes = _random_genes(3000)
    canon = np.asarray(S.canonicalize(genes))
    for g, c in zip(genes, canon):
        arch = S.decode(g)
        np.testing.assert_array_equal(S.encode(arch), c)
        assert S.decode(c) == arch
        assert ss.Arch.from_encoding(arch.to_encoding(S), S) == arch
        assert ss.Arch.from_nat_subnet(arch.to_nat_subnet(S), S) == arch
        o = arch.to_ofa(S)
        assert ss.Arch.from_ofa(o["ks"], o["e"], o["d"], arch.resolution,
                                arch.width, S) == arch


def test_canonicalize_is_idempotent_and_equal_networks_compare_equal():
    genes = _random_genes(2000, seed=1)
    c1 = S.canonicalize(genes)
    np.testing.assert_array_equal(S.canonicalize(c1), c1)
    # Two genotypes of one network: swap where the zeros sit inside a stage.
    a = np.array([8, 0] + [5, 6, 0, 2] + [1, 1, 0, 0] * 4, np.int32)
    b = np.array([8, 0] + [5, 6, 2, 0] + [1, 1, 0, 0] * 4, np.int32)
    assert S.decode(a) == S.decode(b)
    np.testing.assert_array_equal(S.canonicalize(a), S.canonicalize(b))
    assert S.decode(a).d[0] == 3


def test_canonicalize_empty_population():
    empty = np.zeros((0, S.num_genes), np.int32)
    assert S.canonicalize(empty).shape == (0, 22)
    assert S.genes_to_arrays(empty)["d"].shape == (0, 5)


def test_canonicalize_under_jit_matches_numpy_path():
    genes = _random_genes(64, seed=2)
    np.testing.assert_array_equal(jax.jit(S.canonicalize)(genes), S.canonicalize(genes))


@pytest.mark.slow
def test_sample_is_valid_canonical_and_keyed():
    g = np.asarray(S.sample(jax.random.key(0), 4000))
    assert g.shape == (4000, 22)
    assert np.all(g >= S.lower_bounds) and np.all(g <= S.upper_bounds)
    np.testing.assert_array_equal(S.canonicalize(g), g)
    np.testing.assert_array_equal(S.sample(jax.random.key(0), 4000), g)
    assert not np.array_equal(S.sample(jax.random.key(1), 4000), g)
    # Optional slots are skipped with probability 1/3 (authors' sampling).
    optional = S.lower_bounds[2:] == 0
    raw_zero = (g[:, 2:][:, optional] == 0).mean()
    assert abs(raw_zero - 1 / 3) < 0.02
    # Depths 2, 3, 4 all occur; resolutions and widths cover their range.
    d = np.asarray(S.genes_to_arrays(g)["d"])
    assert set(np.unique(d)) == {2, 3, 4}
    assert set(np.unique(g[:, 0])) == set(range(17))
    assert set(np.unique(g[:, 1])) == {0, 1}


def test_genes_to_arrays_batch_matches_decode():
    genes = _random_genes(50, seed=3)
    arrays = S.genes_to_arrays(genes)
    for i in range(0, 50, 7):
        arch = S.decode(genes[i])
        np.testing.assert_array_equal(arrays["ks"][i], arch.ks)
        np.testing.assert_array_equal(arrays["e"][i], arch.e)
        np.testing.assert_array_equal(arrays["d"][i], arch.d)
        for k, v in arch.as_arrays().items():
            np.testing.assert_array_equal(arrays[k][i], v)


def test_tiny_space_by_hand():
    t = ss.SearchSpace.tiny()
    assert t.num_stages == 2 and t.max_depth == 2 and t.num_genes == 6
    np.testing.assert_array_equal(t.lower_bounds, [0, 0, 1, 0, 1, 0])
    np.testing.assert_array_equal(t.upper_bounds, [2, 1, 9, 9, 9, 9])
    assert t.widths == (1.0, 1.2)     # two supernets, as the paper's space
    arch = t.decode([1, 0, 9, 0, 4, 2])  # gene 9 = k7e6, 4 = k3e4, 2 = k5e3
    assert arch == ss.Arch(40, 1.0, ks=(7, 0, 3, 5), e=(6, 0, 4, 3), d=(1, 2))
    np.testing.assert_array_equal(t.encode(arch), [1, 0, 9, 0, 4, 2])


def test_block_layout_of_tiny_space_by_hand():
    # Stages (16, s2, relu, no SE) and (24, s2, h_swish, SE), 2 slots each,
    # after a first block of 8 channels; depths {1, 2}: slot 1 of each skippable.
    t = ss.SearchSpace.tiny()
    got = [(b.index, b.stage, b.position, b.c_in, b.c_out, b.stride, b.act,
            b.use_se, b.skippable) for b in t.blocks(1.0)]
    assert got == [(0, 0, 0, 8, 16, 2, "relu", False, False),
                   (1, 0, 1, 16, 16, 1, "relu", False, True),
                   (2, 1, 0, 16, 24, 2, "h_swish", True, False),
                   (3, 1, 1, 24, 24, 1, "h_swish", True, True)]
    # Width 1.2 (OFA's make_divisible by 8): first block 16 (9.6 -> 8 < 0.9 *
    # 9.6, so 16), stages 24 (19.2 -> 16 < 17.28 -> 24) and 32 (28.8 -> 32).
    got = [(b.c_in, b.c_out) for b in t.blocks(1.2)]
    assert got == [(16, 24), (24, 24), (24, 32), (32, 32)]
    ch = t.channels(1.2)
    assert (ch.first, ch.final_expand, ch.feature_mix) == (16, 80, 112)
    # OFA at width 1.2: stage channels (32, 48, 96, 136, 192) after 24.
    ofa = S.blocks(1.2)
    assert len(ofa) == 20 and [b.c_in for b in ofa[::4]] == [24, 32, 48, 96, 136]
    assert [b.stride for b in ofa[::4]] == [2, 2, 2, 1, 2]
    assert sum(b.skippable for b in ofa) == 10


def test_nat_released_subnets_pad_correctly():
    with open(REFERENCE) as f:
        ref = json.load(f)["subnets"]
    m1 = ss.Arch.from_nat_subnet(ref["NAT-M1"], S)
    assert m1.d == (2, 3, 3, 3, 4) and m1.resolution == 224 and m1.width == 1.0
    # Stage 1 (depth 2) keeps its first two kernels; stage 2 starts at block 4.
    assert m1.ks[:4] == (3, 3, 0, 0) and m1.ks[4:8] == (3, 3, 3, 0)
    assert m1.to_nat_subnet(S)["ks"] == ref["NAT-M1"]["ks"]
    assert m1.to_encoding(S) == "08011001440551052208877"  # NAT-M1's net.encoding


def test_parse_arch_accepts_every_form():
    arch = S.decode(_random_genes(1, seed=4)[0])
    for text in (arch.to_encoding(S), json.dumps(S.encode(arch).tolist()),
                 json.dumps(arch.to_nat_subnet(S)), arch.to_json()):
        assert ss.parse_arch(text, S) == arch


def test_tiny_space_printed_form_by_hand(tmp_path):
    t = ss.get_space("tiny")
    arch = ss.Arch(40, 1.0, ks=(7, 0, 3, 5), e=(6, 0, 4, 3), d=(1, 2))
    # "01" resolution index 1 (40 px), "0" width index, genes 9, 0, 4, 2.
    assert arch.to_encoding(t) == "0109042"
    assert ss.parse_arch("0109042", t) == arch
    f = tmp_path / "arch.txt"
    f.write_text("0109042\n")
    assert ss.load_arch(str(f), t) == ss.load_arch("0109042", t) == arch
    with pytest.raises(ValueError, match="7 digits"):
        ss.parse_arch("1854", t)  # the layer genes alone are not the printed form
    with pytest.raises(ValueError, match="neither an encoding nor a file"):
        ss.load_arch(str(tmp_path / "missing.json"), t)


def test_printed_form_ignores_a_pinned_width_or_resolution_subset():
    # A run pins its width: the 1.2 subnet keeps the full space's width digit 1.
    pinned = dataclasses.replace(S, widths=(1.2,), resolutions=(192, 224))
    assert ss.base_space(pinned) is S and ss.space_name(pinned) == "ofa_mbv3"
    arch = ss.Arch.from_ofa([5] * 20, [4] * 20, [3] * 5, 224, 1.2, pinned)
    enc = arch.to_encoding(pinned)
    assert enc == arch.to_encoding(S) and enc[:3] == "081"
    assert ss.parse_arch(enc, pinned) == ss.parse_arch(enc, S) == arch
    np.testing.assert_array_equal(pinned.encode(arch)[:2], [1, 0])  # own genotype
    other = ss.Arch.from_ofa([5] * 20, [4] * 20, [3] * 5, 224, 1.0, S).to_encoding(S)
    with pytest.raises(ValueError, match=r"Unknown width.*\[1.2\]"):
        ss.parse_arch(other, pinned)


def test_printed_form_of_a_space_beyond_one_digit_joins_genes_by_dash():
    big = dataclasses.replace(ss.SearchSpace.tiny(), kernels=(3, 5, 7),
                              expands=(1, 2, 3, 4))  # 12 options > 9
    assert ss.base_space(big) is big and ss.space_name(big) is None
    arch = big.decode([2, 0, 12, 0, 10, 1])
    assert arch.to_encoding(big) == "2-0-12-0-10-1"
    assert ss.parse_arch("2-0-12-0-10-1", big) == arch
    with pytest.raises(ValueError, match="6 integers joined by '-'"):
        ss.parse_arch("2-0-12", big)


def test_space_registry():
    assert ss.get_space("ofa_mbv3") is S
    assert ss.get_space("tiny") == ss.SearchSpace.tiny()
    assert ss.get_space("small") == ss.SearchSpace.small()
    assert set(ss.SPACE_NAMES) == {"ofa_mbv3", "tiny", "small"}
    small = ss.SearchSpace.small()  # the paper's 22-gene genotype, two widths
    assert (small.num_genes, small.widths) == (22, (1.0, 1.2))
    with pytest.raises(ValueError, match=r"Unknown search space 'big'.*ofa_mbv3"):
        ss.get_space("big")


@pytest.mark.parametrize("call,match", [
    (lambda: S.decode([0] * 21), "22 integers"),
    (lambda: S.decode([17, 0] + [1] * 20), "resolution index.*0..16"),
    (lambda: S.decode([0, 2] + [1] * 20), "width index.*0..1"),
    (lambda: S.decode([0, 0] + [10] + [1] * 19), "layer gene of stage 0 slot 0.*1..9"),
    (lambda: S.decode([0, 0] + [0] + [1] * 19), "position 2"),
    (lambda: ss.Arch.from_ofa([3] * 20, [3] * 20, [2] * 5, 224, 1.1, S),
     r"Unknown width.*\[1.0, 1.2\]"),
    (lambda: ss.Arch.from_ofa([3] * 20, [3] * 20, [2] * 5, 225, 1.0, S),
     "Resolution 225.*allowed"),
    (lambda: ss.Arch.from_ofa([4] * 20, [3] * 20, [2] * 5, 224, 1.0, S),
     r"ks\[0\].*allowed: \[3, 5, 7\]"),
    (lambda: ss.Arch.from_ofa([3] * 20, [5] * 20, [2] * 5, 224, 1.0, S),
     r"e\[0\].*allowed: \[3, 4, 6\]"),
    (lambda: ss.Arch.from_ofa([3] * 20, [3] * 20, [5] * 5, 224, 1.0, S),
     r"d\[0\] = 5; allowed depths: \[2, 3, 4\]"),
    (lambda: ss.Arch.from_ofa([3] * 19, [3] * 20, [2] * 5, 224, 1.0, S),
     "ks must have 20"),
    (lambda: ss.Arch.from_nat_subnet({"ks": [3] * 11, "e": [3] * 12,
                                      "d": [2, 2, 2, 3, 3], "r": 224, "w": 1.0}, S),
     r"Compact ks has 11 entries but sum\(d\) = 12"),
    (lambda: ss.Arch.from_nat_subnet({"ks": [3] * 10, "e": [3] * 10}, S),
     "missing key 'd'"),
    (lambda: ss.Arch.from_encoding("12345", S), "23 digits"),
    (lambda: ss.parse_arch("not an arch", S), "Cannot parse"),
])
def test_bad_input_raises_value_error_naming_field(call, match):
    with pytest.raises(ValueError, match=match):
        call()
