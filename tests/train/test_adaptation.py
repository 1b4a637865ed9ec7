"""Supernet adaptation: Eq. 3 sampler, active-weight gradients, data parallelism,
bit-exact resume, NaN guard."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nat_jax.data import pipeline
from nat_jax.data.augment import AugmentConfig
from nat_jax.model import supernet
from nat_jax.runtime import checkpoint as ck
from nat_jax.runtime import sharding
from nat_jax.space import search_space as ss
from nat_jax.train import adaptation as ad
from nat_jax.train import training
from tests import helpers

SPACE = helpers.TINY
RES = helpers.TINY_RES
BATCH = 16
CFG = ad.AdaptConfig(checkpoint_every=3)


pytestmark = pytest.mark.usefixtures("fast_compiles")


@functools.lru_cache(maxsize=None)
def _model():
    return supernet.init_supernet(SPACE, 1.0, 10, jax.random.key(0),
                                  depthwise_impl="conv")


_dataset = helpers.embedded_dataset
_probs = helpers.tiny_probs


def _loader(step=0):
    return pipeline.TrainLoader(_dataset().train, BATCH, seed=1, step=step,
                                augment=AugmentConfig(min_scale=0.5))


def _fresh_state(total=100):
    model, variables = _model()
    return ad.create_train_state(model, variables, CFG, total, key=7)


# --------------------------------------------------------------- Eq. 3


def test_gene_distribution_is_archive_frequency_with_floor():
    genes = np.array([[0, 0, 1, 0, 4, 9], [0, 0, 1, 2, 4, 0],
                      [2, 0, 5, 0, 4, 9], [0, 0, 1, 0, 7, 3]])
    p = ad.gene_distribution(SPACE, genes, floor=0.0)
    assert p.shape == (SPACE.num_genes, int(SPACE.upper_bounds.max()) + 1)
    np.testing.assert_allclose(p[0, :3], [0.75, 0.0, 0.25])
    np.testing.assert_allclose(p[2, [1, 5]], [0.75, 0.25])
    np.testing.assert_allclose(p[3, [0, 2]], [0.75, 0.25])
    # Eq. 3 as printed is the default (no uniform mixture; the paper config).
    np.testing.assert_array_equal(ad.gene_distribution(SPACE, genes), p)
    assert ad.AdaptConfig().floor == 0.0
    q = ad.gene_distribution(SPACE, genes, floor=0.1)
    np.testing.assert_allclose(q.sum(1), 1.0, rtol=1e-6)
    # unseen allowed values keep floor / num_allowed; out-of-bounds stay 0
    np.testing.assert_allclose(q[0, 1], 0.1 / 3, rtol=1e-6)
    np.testing.assert_allclose(q[2, 2], 0.1 / 9, rtol=1e-6)
    assert q[2, 0] == 0.0 and q[0, 3:].sum() == 0.0 and q[1, 2:].sum() == 0.0
    # the width gene (two widths, 1.2 unseen) is a gene like any other
    np.testing.assert_allclose(q[1, :2], [0.9 + 0.1 / 2, 0.1 / 2], rtol=1e-6)
    uniform = ad.gene_distribution(SPACE, np.zeros((0, SPACE.num_genes)), 0.1)
    np.testing.assert_allclose(uniform[3], np.full(10, 0.1), rtol=1e-6)
    with pytest.raises(ValueError, match="position 2"):
        ad.gene_distribution(SPACE, [[0, 0, 0, 0, 1, 1]])


@pytest.mark.slow
def test_sampler_matches_archive_frequencies():
    probs = ad.gene_distribution(SPACE, np.asarray(
        SPACE.sample(jax.random.key(3), 40)), floor=0.05)
    n = 20000
    genes = np.asarray(ad.sample_from_distribution(
        jax.random.key(4), probs, SPACE, n))
    assert genes.dtype == np.int32 and genes.shape == (n, SPACE.num_genes)
    # tiny space: one optional slot per stage, so canonicalisation is identity
    for i in range(SPACE.num_genes):
        freq = np.bincount(genes[:, i], minlength=probs.shape[1]) / n
        sigma = np.sqrt(probs[i] * (1 - probs[i]) / n)
        assert np.all(np.abs(freq - probs[i]) <= 5 * sigma + 1e-9), i
    # full OFA space: every draw is valid and canonical
    full = ad.gene_distribution(ss.OFA_MBV3, np.asarray(
        ss.OFA_MBV3.sample(jax.random.key(5), 30)))
    draws = np.asarray(ad.sample_from_distribution(
        jax.random.key(6), full, ss.OFA_MBV3, 300))
    for g in draws:
        ss.OFA_MBV3.validate_genes(g)
    np.testing.assert_array_equal(ss.OFA_MBV3.canonicalize(draws), draws)


def test_step_genotypes_depend_only_on_key_and_step():
    probs = _probs()
    key = jax.random.wrap_key_data(jax.random.PRNGKey(1))
    a = np.asarray(ad.sample_for_steps(key, probs, SPACE, np.arange(0, 6)))
    b = np.asarray(ad.sample_for_steps(key, probs, SPACE, np.arange(3, 6)))
    np.testing.assert_array_equal(a[3:], b)
    assert len({tuple(g) for g in a}) > 1


def test_cosine_schedule_is_a_function_of_the_global_step():
    lr = [float(training.learning_rate(s, CFG.lr, 100, end=CFG.lr_end))
          for s in (0, 50, 100, 150)]
    np.testing.assert_allclose(lr, [0.01, 0.005, 0.0, 0.0], atol=1e-7)


# ------------------------------------------------------ active weights


# (ks, e, d) of the tiny space (2 stages x 2 slots): k3/k5/k7 choices, a
# skipped block, each expand ratio.
ARCHS = [
    ((3, 5, 7, 0), (3, 6, 4, 0), (2, 1)),
    ((7, 0, 5, 3), (6, 0, 3, 6), (1, 2)),
]


@functools.lru_cache(maxsize=None)
def _grad_fn():
    model, _ = _model()

    def loss(params, batch_stats, batch, arch):
        return training.loss_fn(model, params, batch_stats, batch,
                                jax.random.key(0), 0.1, (arch,))[0]
    return jax.jit(jax.grad(loss))


def _perturbed_transforms(params):
    """Transform matrices I + noise: at init (identity) a k3 kernel reads only
    the raw 3x3 centre, a generic one reads the whole 5x5 centre."""
    def f(path, x):
        name = jax.tree_util.keystr(path)
        if "'m7to5'" in name or "'m5to3'" in name:
            noise = jax.random.normal(jax.random.key(len(name)), x.shape)
            return x + 0.1 * noise
        return x
    return jax.tree_util.tree_map_with_path(f, params)


@pytest.mark.slow
def test_inactive_weights_get_exactly_zero_gradient():
    """Zero gradient exactly where `active_param_mask` is False; the rules it
    states (skipped blocks, channels past mid, kernel ring, transform rows)."""
    model, variables = _model()
    params = _perturbed_transforms(variables["params"])
    batch = _loader().next(RES)
    for ks, e, d in ARCHS:
        arch = ss.Arch.from_ofa(ks, e, d, RES, 1.0, SPACE).as_arrays()
        grads = _grad_fn()(params, variables["batch_stats"], batch, arch)
        mask = ad.active_param_mask(SPACE, 1.0, variables["params"], arch)
        flat_g = jax.tree_util.tree_leaves_with_path(grads)
        flat_m = jax.tree.leaves(mask)
        n_active = n_nonzero = 0
        for (path, g), m in zip(flat_g, flat_m):
            g, m = np.asarray(g), np.asarray(m)
            assert np.all(g[~m] == 0.0), jax.tree_util.keystr(path)
            n_active += m.sum()
            n_nonzero += (g[m] != 0).sum()
        # the mask is not trivially all-True and the active part is used (a
        # few active entries are exactly 0: dead SE ReLUs, BN biases before
        # a 1x1 conv + train-mode BN, which cancels a constant shift)
        assert n_active < 0.7 * sum(x.size for x in flat_m)
        assert n_nonzero > 0.95 * n_active
    # spot checks of the stated rules; block_1: k3, e3 (mid 24 of 48)
    k3 = ad.active_param_mask(SPACE, 1.0, variables["params"], ss.Arch.from_ofa(
        *ARCHS[0], RES, 1.0, SPACE).as_arrays())
    dw = jax.tree.map(np.asarray, k3["block_1"]["depthwise"])
    assert not dw["kernel"][0].any() and not dw["kernel"][:, :, 0, 24:].any()
    assert dw["kernel"][1:6, 1:6, 0, :24].all()
    centre = np.zeros((5, 5), bool)
    centre[1:4, 1:4] = True
    np.testing.assert_array_equal(dw["m7to5"].all(1), centre.reshape(-1))
    np.testing.assert_array_equal(dw["m7to5"].any(1), centre.reshape(-1))
    assert dw["m5to3"].all()
    k7 = jax.tree.map(np.asarray, k3["block_3"]["depthwise"])
    assert k7["kernel"][..., :64].all() and not k7["m7to5"].any()
    assert not any(x.any() for x in jax.tree.leaves(k3["block_4"]))


@pytest.mark.slow
def test_train_step_changes_only_active_weights():
    model, variables = _model()
    mesh = sharding.data_mesh(jax.devices()[:1])
    state = sharding.replicate(_fresh_state(), mesh)
    arch = ss.Arch.from_ofa(*ARCHS[1], RES, 1.0, SPACE).as_arrays()
    batch = sharding.shard_batch(_loader().next(RES), mesh)
    before = jax.tree.map(np.asarray, state.params)
    fn = ad.jitted_adapt_step(model, CFG, mesh)
    new, metrics = fn(state, batch, arch)
    mask = ad.active_param_mask(SPACE, 1.0, variables["params"], arch)
    for b, a, m, mom in zip(jax.tree.leaves(before), jax.tree.leaves(new.params),
                            jax.tree.leaves(mask),
                            jax.tree.leaves(new.opt_state["momentum"])):
        a, m, mom = np.asarray(a), np.asarray(m), np.asarray(mom)
        np.testing.assert_array_equal(a[~m], b[~m])
        assert np.all(mom[~m] == 0.0)
    assert int(new.step) == 1 and np.isfinite(float(metrics["loss"]))


def test_switch_exec_mode_steps_like_masked():
    """AdaptConfig.exec_mode="switch": two steps on different subnets give the
    masked mode's parameters, momentum and BN statistics (fp tolerance: two
    programs)."""
    model, _ = _model()
    mesh = sharding.data_mesh(jax.devices()[:1])
    out = []
    for mode in ("masked", "switch"):
        cfg = dataclasses.replace(CFG, exec_mode=mode)
        fn = ad.jitted_adapt_step(model, cfg, mesh)
        state, loader = sharding.replicate(_fresh_state(), mesh), _loader()
        for a in ARCHS[:2]:
            arch = ss.Arch.from_ofa(*a, RES, 1.0, SPACE).as_arrays()
            state, _ = fn(state, sharding.shard_batch(loader.next(RES), mesh), arch)
        out.append(jax.tree.map(np.asarray, (state.params, state.batch_stats,
                                             state.opt_state["momentum"])))
    for a, b in zip(jax.tree.leaves(out[0]), jax.tree.leaves(out[1])):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6)
    with pytest.raises(ValueError, match="exec_mode"):
        ad.AdaptConfig(exec_mode="scan")


# ------------------------------------------------- data parallelism


@pytest.mark.slow
def test_one_and_four_devices_give_the_same_parameters():
    model, _ = _model()
    probs = _probs()
    out = []
    for devices in (jax.devices()[:1], jax.devices()[:4]):
        mesh = sharding.data_mesh(devices)
        fn = ad.jitted_adapt_step(model, CFG, mesh)
        before, seen = fn._cache_size(), []
        state, m = ad.adapt(_fresh_state(), model, _loader(), probs, 3, CFG,
                            mesh=mesh, progress=lambda s, m: seen.append(
                                tuple(m["genes"])))
        out.append(jax.tree.map(np.asarray, state))
        # three different subnets, at most one compile (one resolution)
        assert len(set(seen)) == 3 and fn._cache_size() - before <= 1
    assert out[0].step == out[1].step == 3
    for a, b in zip(jax.tree.leaves(out[0].params), jax.tree.leaves(out[1].params)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    for a, b in zip(jax.tree.leaves(out[0].batch_stats),
                    jax.tree.leaves(out[1].batch_stats)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


# ------------------------------------------------ resume and NaN guard


def _restore(ckpt, model):
    template = sharding.replicate(_fresh_state(), sharding.data_mesh())
    state, extra = ckpt.restore(template)
    loader = pipeline.TrainLoader.restore(_dataset().train, extra["loader"],
                                          augment=AugmentConfig(min_scale=0.5))
    return state, loader


@pytest.mark.slow
def test_resume_is_bit_identical(tmp_path):
    model, _ = _model()
    probs = _probs()
    full, _ = ad.adapt(_fresh_state(), model, _loader(), probs, 6, CFG)
    with ck.TrainCheckpointer(tmp_path / "run", max_to_keep=2) as c:
        ad.adapt(_fresh_state(), model, _loader(), probs, 3, CFG, checkpointer=c)
    # "killed" after step 3: a fresh process state restores and continues
    with ck.TrainCheckpointer(tmp_path / "run", max_to_keep=2) as c:
        assert c.latest_step() == 3
        state, loader = _restore(c, model)
        assert loader.step == 3
        resumed, _ = ad.adapt(state, model, loader, probs, 3, CFG, checkpointer=c)
        assert c.all_steps() == [3, 6]
    for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(resumed)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.slow
def test_nan_loss_raises_and_keeps_last_good_checkpoint(tmp_path):
    model, _ = _model()
    probs = _probs()
    with ck.TrainCheckpointer(tmp_path / "run") as c:
        good, _ = ad.adapt(_fresh_state(), model, _loader(), probs, 3, CFG,
                           checkpointer=c)
        good = jax.tree.map(np.asarray, good)
        params = jax.tree.map(np.array, good.params)
        params["classifier_bias"][0] = np.nan
        bad = _fresh_state().replace(params=params, step=jnp.int32(3),
                                     batch_stats=good.batch_stats,
                                     opt_state=good.opt_state)
        with pytest.raises(RuntimeError, match=r"step 3 on subnet genes=\["):
            ad.adapt(bad, model, _loader(3), probs, 3, CFG, checkpointer=c)
        assert c.all_steps() == [3]
        restored, loader = _restore(c, model)
    assert loader.step == 3
    for a, b in zip(jax.tree.leaves(good), jax.tree.leaves(restored)):
        np.testing.assert_array_equal(a, np.asarray(b))


@pytest.mark.slow
def test_resume_past_a_damaged_checkpoint_is_bit_identical(tmp_path):
    """Issue 18 item 6: the newest checkpoint's files are damaged; the run
    resumes from the one before and still repeats an uninterrupted run."""
    model, _ = _model()
    probs = _probs()
    full, _ = ad.adapt(_fresh_state(), model, _loader(), probs, 6, CFG)
    with ck.TrainCheckpointer(tmp_path / "run") as c:
        ad.adapt(_fresh_state(), model, _loader(), probs, 6, CFG, checkpointer=c)
        assert c.all_steps() == [3, 6]
    data_files = [p for p in (tmp_path / "run" / "6" / "state").rglob("*")
                  if p.is_file() and p.parent.name == "d"]
    assert data_files
    for p in data_files:
        p.write_bytes(b"\x00" * p.stat().st_size)
    with ck.TrainCheckpointer(tmp_path / "run") as c:
        state, loader = _restore(c, model)
        assert int(state.step) == 3 and loader.step == 3
        resumed, _ = ad.adapt(state, model, loader, probs, 3, CFG, checkpointer=c)
        assert c.all_steps() == [3, 6]
        again, _ = _restore(c, model)  # the rewritten step 6
    for a, b, r in zip(jax.tree.leaves(full), jax.tree.leaves(resumed),
                       jax.tree.leaves(again)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        np.testing.assert_array_equal(np.asarray(a), np.asarray(r))
