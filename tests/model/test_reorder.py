"""OFA's middle-channel re-ordering (nat_jax/model/reorder.py).

Oracles: the largest subnet's logits before the permutation (tolerance
1e-5), hand-computed importance orders, and the `ofa` package's own
`re_organize_middle_weights` on a converted model.
"""

import dataclasses

import jax
import numpy as np
import pytest

from nat_jax.model import reorder, supernet
from nat_jax.space import search_space as ss
from nat_jax.train import calibration

# Slow: whole runs or expensive shared fixtures (over ~30 s on 2 cores).
pytestmark = pytest.mark.slow


def _randomised(space, width, seed=0):
    """Supernet variables with non-trivial BN statistics, biases and matrices."""
    model, v = supernet.init_supernet(space, width, 10, jax.random.key(seed),
                                      exec_mode="masked")
    rng = np.random.default_rng(seed)

    def noisy(path, x):
        name = path[-1].key
        x = np.asarray(x)
        if name in ("var", "scale"):
            return 0.5 + rng.random(x.shape, np.float32)
        if x.ndim == 1:
            return 0.1 * rng.standard_normal(x.shape).astype(np.float32)
        if name.startswith("m") and "to" in name:
            return x + 0.1 * rng.standard_normal(x.shape).astype(np.float32)
        return x
    v = jax.tree_util.tree_map_with_path(noisy, v)
    return model, v


def test_middle_order_hand_computed():
    # 4 middle channels, 1 output: importance |w| = [1, 4, 2, 3]
    pk = np.array([1.0, -4.0, 2.0, -3.0]).reshape(1, 1, 4, 1)
    np.testing.assert_array_equal(reorder.middle_order(pk, (4, 2)), [1, 3, 2, 0])
    # stage 1 with widths (4, 2): channels 0, 1 stay in front, sorted by |w|.
    np.testing.assert_array_equal(reorder.middle_order(pk, (4, 2), 1), [1, 0, 3, 2])
    with pytest.raises(ValueError, match="expand_stage"):
        reorder.middle_order(pk, (4, 2), 2)


@pytest.mark.parametrize("stage", [0, 1])
def test_full_network_unchanged_and_weights_permuted(stage):
    space = dataclasses.replace(ss.SearchSpace.tiny(), expands=(2, 3, 4))
    model, v = _randomised(space, 1.0)
    x = np.random.default_rng(1).standard_normal((4, 32, 32, 3)).astype(np.float32)
    arch = space.max_arch(resolution=32)
    before = np.asarray(calibration.predict(model, v, x, arch))
    new = reorder.reorder_middle(v, space, 1.0, expand_stage=stage)
    after = np.asarray(calibration.predict(model, new, x, arch))
    np.testing.assert_allclose(after, before, atol=1e-5, rtol=1e-5)
    for b in ("block_1", "block_4"):
        old_pk = np.asarray(v["params"][b]["project_kernel"])
        new_pk = np.asarray(new["params"][b]["project_kernel"])
        assert not np.array_equal(old_pk, new_pk)
        imp = np.abs(new_pk).sum(axis=(0, 1, 3))
        if stage == 0:   # most important first
            assert np.all(np.diff(imp) <= 0)
    # SE hidden channels sorted by the L1 norm of the SE expand weights.
    se = np.abs(np.asarray(new["params"]["block_4"]["se_expand_kernel"])).sum((0, 1, 3))
    assert np.all(np.diff(se) <= 0)
    # the transform matrices are channel independent: untouched
    np.testing.assert_array_equal(new["params"]["block_1"]["depthwise"]["m7to5"],
                                  v["params"]["block_1"]["depthwise"]["m7to5"])


def test_stage_keeps_groups():
    space = dataclasses.replace(ss.SearchSpace.tiny(), expands=(2, 3, 4))
    _, v = _randomised(space, 1.0, seed=3)
    new = reorder.reorder_middle(v, space, 1.0, expand_stage=1)
    slot = space.blocks(1.0)[2]
    m3 = space.mid_channels(slot.c_in, 3)
    old = np.abs(np.asarray(v["params"]["block_3"]["project_kernel"])).sum((0, 1, 3))
    new_imp = np.abs(np.asarray(new["params"]["block_3"]["project_kernel"])).sum(
        (0, 1, 3))
    # the first m3 channels (the ratio-3 group) keep their members, sorted
    np.testing.assert_allclose(np.sort(new_imp[:m3]), np.sort(old[:m3]))
    np.testing.assert_allclose(new_imp[:m3], -np.sort(-old[:m3]))
    np.testing.assert_allclose(new_imp[m3:], -np.sort(-old[m3:]))


@pytest.mark.parametrize("stage", [0, 1])
def test_matches_ofa_package(stage):
    torch = pytest.importorskip("torch")
    pytest.importorskip("ofa")
    from nat_jax.model import pretrained
    from tests import ofa_oracle

    net, sd, model, v = ofa_oracle.pair(1.0)
    space = model.space
    ours = reorder.reorder_middle(v, space, 1.0, expand_stage=stage)
    net2 = ofa_oracle.build(1.0, seed=10)
    net2.load_state_dict(net.state_dict())
    with torch.no_grad():
        net2.re_organize_middle_weights(expand_ratio_stage=stage)
    _, theirs = pretrained.convert_state_dict(
        ofa_oracle.legacy_state_dict(net2), 1.0, space=space, depthwise_impl="conv")
    if stage == 1:
        # OFA's -1e5 ring offsets quantise float32 importance, so the order
        # inside a group may differ; each group's members must not.
        for slot in space.blocks(1.0):
            b = f"block_{slot.index + 1}"
            m4 = space.mid_channels(slot.c_in, 4)
            a = np.asarray(ours["params"][b]["project_kernel"])[0, 0]
            t = np.asarray(theirs["params"][b]["project_kernel"])[0, 0]
            for lo, hi in ((0, m4), (m4, a.shape[0])):
                assert sorted(map(tuple, a[lo:hi])) == sorted(map(tuple, t[lo:hi]))
        return
    # A swap of two channels whose importance ties up to summation rounding
    # (float64 here, float32 in torch) is allowed; every other block must be
    # permuted exactly as OFA does, in every leaf.
    tied = set()
    for slot in space.blocks(1.0):
        b = f"block_{slot.index + 1}"
        a = np.asarray(ours["params"][b]["project_kernel"])
        t = np.asarray(theirs["params"][b]["project_kernel"])
        if np.array_equal(a, t):
            continue
        ia, it = np.abs(a).sum((0, 1, 3)), np.abs(t).sum((0, 1, 3))
        diff = np.flatnonzero(np.any(a != t, axis=(0, 1, 3)))
        assert len(diff) <= 4, b
        np.testing.assert_allclose(ia[diff], it[diff], rtol=1e-5)
        tied.add(b)
    assert len(tied) <= 3
    flat_t = dict(jax.tree_util.tree_flatten_with_path(theirs)[0])
    for path, a in jax.tree_util.tree_flatten_with_path(ours)[0]:
        if any(getattr(k, "key", None) in tied for k in path):
            continue
        np.testing.assert_array_equal(np.asarray(a), np.asarray(flat_t[path]),
                                      err_msg=jax.tree_util.keystr(path))
