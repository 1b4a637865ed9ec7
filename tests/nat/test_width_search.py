"""Width search (issue #13): one supernet per width multiplier in one run.

The paper's genotype searches the width multiplier as its second gene (NAT
Sec. 3.2, Fig. 2b) over OFA's separately trained supernets. Oracles: the
other width's arrays before the step (bit-identical), a one-width supernet
holding the same weights (its own space, its own genotype), Eq. 3 counted by
hand (Sec. 3.6: p(X_i = j) = #archs with option j at i / #archs) with a
binomial bound on the empirical frequencies, the cosine learning rate of the
global step written out, and an uninterrupted run for resume. Tests that
compile a train step per width are marked slow (tests/conftest.py lists
modules and tests; these carry the mark themselves).
"""

import dataclasses
import functools
import math

import jax
import ml_collections
import numpy as np
import pytest

from experiments.configs import transfer as transfer_cfg
from nat_jax.data import pipeline
from nat_jax.data.augment import AugmentConfig
from nat_jax.model import supernet, supernet_set
from nat_jax.nat import run_config, task_supernet
from nat_jax.runtime import checkpoint as ck
from nat_jax.runtime import sharding
from nat_jax.space import search_space as ss
from nat_jax.train import adaptation as ad
from nat_jax.train import calibration
from nat_jax.train import evaluation as ev
from tests import helpers

SPACE = dataclasses.replace(helpers.TINY, resolutions=(32,))
RES = 32
BATCH = 16
CFG = ad.AdaptConfig(checkpoint_every=3, lr=0.1)


pytestmark = pytest.mark.usefixtures("fast_compiles")


def test_tiny_space_has_two_widths():
    assert len(helpers.TINY.widths) == 2 and SPACE.widths == (1.0, 1.2)


@functools.lru_cache(maxsize=None)
def _set():
    """{width: (model, variables)}: two independently initialised supernets."""
    return {w: supernet.init_supernet(SPACE, w, 10, jax.random.key(i),
                                      depthwise_impl="conv")
            for i, w in enumerate(SPACE.widths)}


def _models():
    return {w: m for w, (m, _) in _set().items()}


def _states(total=100):
    return ad.create_train_states(_models(), {w: v for w, (_, v) in _set().items()},
                                  CFG, total, key=5)


def _loader(step=0):
    return pipeline.TrainLoader(helpers.embedded_dataset().train, BATCH, seed=1,
                                step=step, augment=AugmentConfig(min_scale=0.5))


def _probs(width_p):
    """Eq. 3 of a random archive with p(width index 1) = width_p."""
    genes = np.asarray(SPACE.sample(jax.random.key(0), 50))
    p = ad.gene_distribution(SPACE, genes)
    p[1] = [1.0 - width_p, width_p] + [0.0] * (p.shape[1] - 2)
    return p


def _host(tree):
    return jax.tree.map(np.asarray, tree)


def _equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(
        x.shape == y.shape and np.array_equal(x, y) for x, y in zip(la, lb))


# ------------------------------------------------ 1. one width per step
@pytest.mark.slow   # compiles a train step per width
def test_step_on_one_width_leaves_the_other_bit_identical():
    before = _host(_states())
    for a, b in ((1.0, 1.2), (1.2, 1.0)):
        probs = _probs(1.0 if a == 1.2 else 0.0)       # every step on width a
        states, m = ad.adapt(_states(), _models(), _loader(), probs, 2, CFG)
        after = _host(states)
        assert m["steps_per_width"] == {a: 2, b: 0}
        for part in ("params", "batch_stats", "opt_state", "step", "key"):
            assert _equal(getattr(after[b], part), getattr(before[b], part)), part
        assert not _equal(after[a].params, before[a].params)
        assert not _equal(after[a].batch_stats, before[a].batch_stats)
        assert int(after[a].step) == 2


@pytest.mark.slow   # compiles a train step per width
def test_widths_follow_eq3_and_lr_follows_the_global_step():
    """The set is not pinned: step s trains the width of its Eq. 3 draw, with
    the cosine learning rate of global step s, whichever width it is."""
    total, seen = 40, []
    states, m = ad.adapt(_states(total), _models(), _loader(), _probs(0.5), 6, CFG,
                         progress=lambda s, d: seen.append((s, d)))
    key = jax.random.wrap_key_data(np.asarray(_states().__getitem__(1.0).key))
    want = np.asarray(ad.sample_for_steps(key, _probs(0.5), SPACE,
                                          np.arange(6, dtype=np.int32)))
    np.testing.assert_array_equal(np.stack([d["genes"] for _, d in seen]), want)
    widths = [SPACE.widths[g[1]] for g in want]
    assert set(widths) == {1.0, 1.2}      # this key draws both widths
    assert m["steps_per_width"] == {w: widths.count(w) for w in SPACE.widths}
    for s, d in seen:                      # OFA's cosine, written out
        lr = 0.5 * CFG.lr * (1 + math.cos(math.pi * s / total))
        assert d["lr"] == pytest.approx(lr, rel=1e-6)
    for w in SPACE.widths:                 # a width's step: after its last step
        last = max(i for i, x in enumerate(widths) if x == w)
        assert int(states[w].step) == last + 1
    assert ad.global_step(states) == 6


@pytest.mark.slow   # compiles a train step per width
def test_a_single_supernet_keeps_its_width_pinned():
    (m12, v12) = _set()[1.2]
    state = ad.create_train_state(m12, v12, CFG, 10, key=5)
    seen = []
    ad.adapt(state, m12, _loader(), _probs(0.0), 2, CFG,
             progress=lambda s, d: seen.append(int(d["genes"][1])))
    assert seen == [1, 1]


def test_adapt_refuses_a_set_missing_a_width():
    models = _models()
    states = _states()
    del models[1.2], states[1.2]
    with pytest.raises(ValueError, match="one model and state per width"):
        ad.adapt(states, models, _loader(), _probs(0.5), 1, CFG)


# ------------------------------------------ 2. same logits as one width
@pytest.mark.slow   # compiles a train step per width
def test_set_logits_equal_a_one_width_supernet_with_the_same_weights(tmp_path):
    states, _ = ad.adapt(_states(), _models(), _loader(), _probs(0.5), 4, CFG)
    models = _models()
    varis = {w: s.variables() for w, s in states.items()}
    supernet_set.save_all(tmp_path / "supernet", {w: (models[w], varis[w])
                                                  for w in models})
    assert supernet_set.widths(tmp_path / "supernet") == (1.0, 1.2)
    images = pipeline.eval_batches(helpers.embedded_dataset().val, 64, RES)
    images = next(iter(images))["image"][:64]
    ds = helpers.embedded_dataset()
    cfg = ev.EvalConfig(batch_size=200, calib_images=64, calib_batch_size=32)
    mesh = sharding.data_mesh(jax.devices()[:1])
    genes = np.array(SPACE.sample(jax.random.key(3), 4))
    genes[:, 1] = [0, 1, 1, 0]
    both = ev.evaluate_subnets(models, varis, list(genes), SPACE, ds.val, ds.train,
                               cfg, mesh=mesh)
    for w in SPACE.widths:
        # The oracle: that width's folder alone, as a one-width supernet.
        alone, v = supernet_set.load_width(tmp_path / "supernet", w)
        one = dataclasses.replace(SPACE, widths=(w,))
        alone = alone.clone(space=one)
        rows = [i for i, g in enumerate(genes) if SPACE.widths[g[1]] == w]
        for i in rows:
            g1 = genes[i].copy()
            g1[1] = 0
            arch = SPACE.decode(genes[i])
            a = np.asarray(calibration.predict(models[w], varis[w], images, arch))
            b = np.asarray(calibration.predict(alone, v, images, one.decode(g1)))
            # the same weights; two compiled programs (float reassociation)
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
        single = ev.evaluate_subnets(
            alone, v, [np.concatenate([genes[i][:1], [0], genes[i][2:]])
                       for i in rows], one, ds.val, ds.train, cfg, mesh=mesh)
        for i, r in zip(rows, single):
            assert (both[i]["top1"], both[i]["top5"]) == (r["top1"], r["top5"])


def test_evaluate_refuses_a_width_without_supernet():
    m, v = _set()[1.0]
    g = np.array(SPACE.sample(jax.random.key(3), 1))[0]
    g[1] = 1
    ds = helpers.embedded_dataset()
    with pytest.raises(ValueError, match="width 1.2 but the supernet's widths"):
        ev.evaluate_subnets(m, v, [g], SPACE, ds.val, ds.train)
    with pytest.raises(ValueError, match=r"\{width: variables\}"):
        ev.evaluate_subnets({1.0: m}, v, [g], SPACE, ds.val, ds.train)


# --------------------------------------------------- 3. Eq. 3 of the width
def test_width_gene_frequencies_match_eq3_of_the_archive():
    """Eq. 3 by hand: p(width = j) = #archive members of width j / |A|; the
    per-step draws (`sample_for_steps`, what `adapt` trains) match it
    within 4 binomial standard deviations."""
    rng = np.random.default_rng(0)
    genes = np.array(SPACE.sample(jax.random.key(1), 40))
    genes[:, 1] = (rng.random(40) < 0.3).astype(genes.dtype)   # ~30% at w1.2
    n12 = int(np.sum(genes[:, 1] == 1))
    probs = ad.gene_distribution(SPACE, genes)
    assert probs[1, 1] == pytest.approx(n12 / 40) and probs[1, 0] == pytest.approx(
        (40 - n12) / 40)
    n = 4000
    draws = np.asarray(ad.sample_for_steps(jax.random.key(9), probs, SPACE,
                                           np.arange(n, dtype=np.int32)))
    p = n12 / 40
    freq = np.mean(draws[:, 1] == 1)
    assert abs(freq - p) <= 4 * math.sqrt(p * (1 - p) / n)
    # An archive of one width samples only that width (no floor).
    genes[:, 1] = 1
    draws = np.asarray(ad.sample_for_steps(
        jax.random.key(9), ad.gene_distribution(SPACE, genes), SPACE,
        np.arange(200, dtype=np.int32)))
    assert np.all(draws[:, 1] == 1)


# ------------------------------------------------------------ 4. resume
@pytest.mark.slow   # compiles a train step per width
def test_two_width_resume_is_bit_identical(tmp_path):
    probs = _probs(0.5)
    full, _ = ad.adapt(_states(), _models(), _loader(), probs, 6, CFG)
    with ck.TrainCheckpointer(tmp_path / "run", max_to_keep=2) as c:
        ad.adapt(_states(), _models(), _loader(), probs, 3, CFG, checkpointer=c)
    with ck.TrainCheckpointer(tmp_path / "run", max_to_keep=2) as c:
        assert c.latest_step() == 3
        template = ad.checkpoint_tree(_states())
        tree, extra = c.restore(template)
        assert set(tree) == {"w1.0", "w1.2"} and extra["global_step"] == 3
        states = ad.from_checkpoint_tree(tree, SPACE.widths)
        loader = pipeline.TrainLoader.restore(helpers.embedded_dataset().train,
                                              extra["loader"],
                                              augment=AugmentConfig(min_scale=0.5))
        resumed, _ = ad.adapt(states, _models(), loader, probs, 3, CFG,
                              checkpointer=c)
    for w in SPACE.widths:
        assert _equal(_host(full[w]), _host(resumed[w])), w


# ---------------------------------------------------- 5. config errors
def _config(**kw):
    d = transfer_cfg.get_config("test").to_dict()
    d.update(kw)
    return ml_collections.ConfigDict(d)


def _source(c):
    return task_supernet.SupernetSource(c.supernet, c.reset_classifier,
                                        c.adapt.dropout_rate)


@pytest.mark.parametrize("widths,msg", [
    ((1.5,), "not widths of the tiny space"),
    ("1.0", "it must be a tuple of numbers"),
    ((0.0,), "--config.widths=(0.0,) is invalid: give positive"),
])
def test_bad_widths_fail_in_one_line(widths, msg):
    with pytest.raises(ValueError) as err:
        run_config.validate(_config(widths=widths), num_devices=1)
    assert msg in str(err.value) and "\n" not in str(err.value)


def test_widths_default_to_the_space_and_a_subset_pins():
    assert run_config.run_space(_config()).widths == (1.0, 1.2)
    assert run_config.run_space(_config(widths=(1.2,))).widths == (1.2,)
    assert run_config.run_space(_config(widths=[1.2, 1.0])).widths == (1.0, 1.2)
    assert run_config.parse_widths("1.2, 1.0") == (1.0, 1.2)     # API form
    old = _config()            # a config.json written before widths existed
    with old.unlocked():
        del old["widths"]
        old.width = 1.2
    assert run_config.run_space(old).widths == (1.2,)


def test_supernets_must_cover_the_widths(tmp_path):
    m, v = _set()[1.0]
    supernet_set.save_all(tmp_path / "set", {1.0: (m, v)})
    c = _config(supernet=str(tmp_path / "set"))
    space = run_config.run_space(c)
    with pytest.raises(ValueError) as err:
        task_supernet.starting_supernets(_source(c), space, 10, jax.random.key(0))
    msg = str(err.value)
    assert "\n" not in msg and "--config.widths=1.0" in msg and "width 1.2" in msg
    # widths=1.0 pins the run to the one supernet given
    c = _config(supernet=str(tmp_path / "set"), widths=(1.0,))
    got = task_supernet.starting_supernets(_source(c), run_config.run_space(c), 10,
                                           jax.random.key(0))
    assert list(got) == [1.0] and got[1.0][0].space.widths == (1.0,)


def test_supernet_list_one_path_per_width(tmp_path):
    for w, (m, v) in _set().items():
        supernet.save_supernet(str(tmp_path / f"mine_{w}"), m, v)
    a, b = str(tmp_path / "mine_1.0"), str(tmp_path / "mine_1.2")
    assert task_supernet.sources(f"{b},{a}") == {1.0: a, 1.2: b}
    c = _config(supernet=f"{a},{b}")
    got = task_supernet.starting_supernets(_source(c), run_config.run_space(c), 10,
                                           jax.random.key(0))
    assert sorted(got) == [1.0, 1.2]
    assert all(got[w][0].width == w and got[w][0].space == run_config.run_space(c)
               for w in got)
    with pytest.raises(ValueError, match="two width-1.0 supernets"):
        task_supernet.sources(f"{a},{a}")
    pth = tmp_path / "my_ofa.pth"
    pth.write_bytes(b"")
    with pytest.raises(ValueError, match="cannot tell the width") as err:
        task_supernet.sources(str(pth))
    assert "\n" not in str(err.value)
    (tmp_path / "ofa_mbv3_d234_e346_k357_w1.2").write_bytes(b"")
    assert task_supernet.sources(str(tmp_path / "ofa_mbv3_d234_e346_k357_w1.2")) == {
        1.2: str(tmp_path / "ofa_mbv3_d234_e346_k357_w1.2")}


def test_shipped_set_holds_both_widths():
    path = task_supernet.resolve("pretrained:small_fashion_mnist")
    assert sorted(task_supernet.sources("pretrained:small_fashion_mnist")) == [
        1.0, 1.2]
    assert supernet_set.widths(path) == (1.0, 1.2)
    c = transfer_cfg.get_config("tiny")
    assert c.supernet == "pretrained:small_fashion_mnist" and c.widths == ()
    assert run_config.run_space(c).widths == (1.0, 1.2)
    assert ss.get_space("small").widths == (1.0, 1.2)
