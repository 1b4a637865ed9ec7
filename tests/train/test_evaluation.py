"""Subnet evaluation: exact masked top-1/top-5 counts, vmapped subnets, the
static-subnet path (re-calibration and counts) against OFA's rule and the
masked path at a resolution outside the space, and adaptation on the
embedded dataset raising accuracy well above chance."""

import functools
import time

import jax
import numpy as np
import pytest

from nat_jax.data import pipeline
from nat_jax.data.augment import AugmentConfig
from nat_jax.model import layers, subnet, supernet
from nat_jax.runtime import sharding
from nat_jax.space import search_space as ss
from nat_jax.train import adaptation as ad
from nat_jax.train import calibration
from nat_jax.train import evaluation as ev
from tests import helpers

SPACE, RES = helpers.TINY, helpers.TINY_RES
_dataset, _probs = helpers.embedded_dataset, helpers.tiny_probs

EVAL = ev.EvalConfig(batch_size=192, calib_images=200, calib_batch_size=100)


@functools.lru_cache(maxsize=None)
def _model():
    """Shift-and-add depthwise: slower to compile, ~6x faster steps on CPU."""
    return supernet.init_supernet(SPACE, 1.0, 10, jax.random.key(0),
                                  depthwise_impl="shift")


def _mesh():
    return sharding.data_mesh(jax.devices()[:1])


def _genes(n, seed):
    g = np.array(SPACE.sample(jax.random.key(seed), n))
    g[:, 0] = SPACE.resolution_index(RES)
    g[:, 1] = SPACE.width_index(1.0)     # the width of _model()'s supernet
    return g


@pytest.mark.slow
def test_counts_are_exact_and_vmapped_subnets_agree():
    model, variables = _model()
    ds = _dataset()
    genes = _genes(2, 11)
    res = ev.evaluate_subnets(model, variables, list(genes), SPACE, ds.val,
                              ds.train, EVAL, mesh=_mesh())
    cal = pipeline.CalibrationSet(ds.train, EVAL.calib_images,
                                  EVAL.calib_batch_size, EVAL.calib_seed)
    (batch,) = pipeline.eval_batches(ds.val, len(ds.val), RES)
    images, labels = batch["image"], batch["label"]
    assert len(labels) == 800  # = 4 x 192 + 32: the last eval batch is padded
    for g, r in zip(genes, res):
        arch = SPACE.decode(g)
        v = calibration.recalibrate_bn(model, variables, arch,
                                    [b["image"] for b in cal.batches(RES)])
        logits = np.asarray(calibration.predict(model, v, images, arch))
        top5 = np.argsort(-logits, -1)[:, :5]
        assert r["n"] == 800
        assert r["top1"] == pytest.approx(100 * np.mean(top5[:, 0] == labels))
        assert r["top5"] == pytest.approx(
            100 * np.mean((top5 == labels[:, None]).any(-1)))
    vm = ev.evaluate_subnets(model, variables, list(genes), SPACE, ds.val,
                             ds.train, ev.EvalConfig(**{
                                 **EVAL.__dict__, "subnets_per_call": 2}),
                             mesh=_mesh())
    assert [(r["top1"], r["top5"]) for r in vm] == [
        (r["top1"], r["top5"]) for r in res]


def test_evaluate_rejects_foreign_genotypes():
    model, variables = _model()
    ds = _dataset()
    with pytest.raises(ValueError, match="allowed"):
        ev.evaluate_subnets(model, variables, [[9, 0, 1, 1, 1, 1]], SPACE,
                            ds.val, ds.train, EVAL)
    with pytest.raises(ValueError, match="search space"):
        ev.evaluate_subnets(model, variables, [], ss.OFA_MBV3, ds.val,
                            ds.train, EVAL)


def test_wrong_image_and_label_shapes_raise_value_errors():
    """chex checks at the boundaries: NHWC images into `predict` and the
    re-calibrations, images/labels/mask into the count kernel (at trace
    time, inside jit), each a one-line ValueError."""
    model, variables = _model()
    arch = SPACE.decode(_genes(1, 3)[0])
    grey = np.zeros((2, RES, RES, 1), np.float32)
    with pytest.raises(ValueError, match=r"NHWC") as e:
        calibration.predict(model, variables, grey, arch)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match=r"NHWC"):
        calibration.recalibrate_bn(model, variables, arch, [grey])
    sub, sv, _ = subnet.extract_subnet(model, variables, arch)
    with pytest.raises(ValueError, match=r"NHWC"):
        ev.recalibrate_static_bn(sub, sv, [np.zeros((RES, RES, 3), np.float32)])
    fn = ev.jitted_counts(model, _mesh(), False)
    images = np.zeros((2, RES, RES, 3), np.float32)
    labels, mask = np.zeros(2, np.int32), np.ones(2, bool)
    args = (variables["params"], variables["batch_stats"])
    with pytest.raises(ValueError, match=r"labels\[B\] and mask\[B\]"):
        fn(*args, images, labels[:, None], mask, arch.as_arrays())
    with pytest.raises(ValueError, match="shape prefixes"):
        fn(*args, images, labels[:1], mask, arch.as_arrays())
    with pytest.raises(ValueError, match="labels integer class indices"):
        fn(*args, images, labels.astype(np.float32), mask, arch.as_arrays())


OFF = 24  # not in SPACE.resolutions (32, 40, 48), as OFA's 160 px is not in its


def _np_counts(logits, labels):
    top5 = np.argsort(-np.asarray(logits), -1)[:, :5]
    return (int(np.sum(top5[:, 0] == labels)),
            int(np.sum((top5 == labels[:, None]).any(-1))))


@pytest.mark.slow
def test_static_path_matches_ofa_rule_and_masked_path_outside_the_space():
    model, variables = _model()
    model = model.clone(exec_mode="masked")  # faster compile; = "switch" (tested)
    ds = _dataset()
    assert OFF not in SPACE.resolutions
    (genes,) = _genes(1, 13)
    arch = SPACE.decode(genes)
    cal = pipeline.CalibrationSet(ds.train, EVAL.calib_images,
                                  EVAL.calib_batch_size, EVAL.calib_seed)
    batches = [b["image"] for b in cal.batches(OFF)]
    masked = calibration.recalibrate_bn(model, variables, arch, batches,
                                     resolution=OFF)
    sub, sv, _ = subnet.extract_subnet(model, variables, arch)
    static = ev.recalibrate_static_bn(sub, sv, cal.batches(OFF))
    # OFA's rule written out for the first BN: batch-size-weighted averages of
    # per-batch means and BIASED variances
    h = [np.asarray(layers.conv2d(b, variables["params"]["first_conv"], 2),
                    np.float64) for b in batches]
    n = np.array([len(b) for b in batches], np.float64)
    mean = sum(k * x.mean((0, 1, 2)) for k, x in zip(n, h)) / n.sum()
    var = sum(k * x.var((0, 1, 2)) for k, x in zip(n, h)) / n.sum()
    for v in (masked, static):
        np.testing.assert_allclose(v["batch_stats"]["first_bn"]["mean"], mean,
                                   rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(v["batch_stats"]["first_bn"]["var"], var,
                                   rtol=1e-4, atol=1e-5)
    # extraction commutes with re-calibration: every static BN = the masked
    # supernet's active channels of the active blocks
    _, from_masked, _ = subnet.extract_subnet(model, masked, arch)
    assert (jax.tree.structure(from_masked["batch_stats"])
            == jax.tree.structure(static["batch_stats"]))
    for a, b in zip(jax.tree.leaves(from_masked["batch_stats"]),
                    jax.tree.leaves(static["batch_stats"])):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)
    # the count kernel on a static subnet vs numpy counts, every image once
    res = ev.evaluate_static(sub, static, ds.val, OFF, 192, mesh=_mesh())
    (batch,) = pipeline.eval_batches(ds.val, len(ds.val), OFF)
    logits = np.asarray(jax.jit(sub.apply)(static, batch["image"]))
    c1, c5 = _np_counts(logits, batch["label"])
    assert (res["count"], res["correct1"], res["correct5"]) == (800, c1, c5)
    assert res["top1"] == pytest.approx(100 * c1 / 800)
    assert res["top5"] == pytest.approx(100 * c5 / 800)
    # evaluate_subnets at the same off-space resolution: the same subnet
    (m,) = ev.evaluate_subnets(model, variables, [genes], SPACE, ds.val,
                               ds.train, EVAL, mesh=_mesh(), calibration=cal,
                               resolution=OFF)
    assert m["n"] == 800
    assert abs(m["top1"] * 8 - c1) <= 1 and abs(m["top5"] * 8 - c5) <= 1  # ties
    with pytest.raises(ValueError, match="positive integer"):
        ev.evaluate_static(sub, static, ds.val, 0, 192)


@pytest.mark.slow
def test_adaptation_raises_validation_accuracy_well_above_chance():
    model, variables = _model()
    ds = _dataset()
    steps = 150
    cfg = ad.AdaptConfig(lr=0.1)
    loader = pipeline.TrainLoader(ds.train, 32, seed=3,
                                  augment=AugmentConfig(min_scale=0.5))
    state = ad.create_train_state(model, variables, cfg, steps, key=0)
    t = time.perf_counter()
    state, metrics = ad.adapt(state, model, loader, _probs(), steps, cfg,
                              mesh=_mesh())
    train_s = time.perf_counter() - t
    trained = {"params": state.params, "batch_stats": state.batch_stats}
    genes = list(_genes(3, 12))
    before = ev.evaluate_subnets(model, variables, genes, SPACE, ds.val,
                                 ds.train, EVAL, mesh=_mesh())
    after = ev.evaluate_subnets(model, trained, genes, SPACE, ds.val, ds.train,
                                EVAL, mesh=_mesh())
    print(f"{steps} steps in {train_s:.1f} s; top1 before "
          f"{[r['top1'] for r in before]} after {[r['top1'] for r in after]}")
    assert metrics["steps"] == steps and np.isfinite(metrics["loss"])
    assert all(r["top1"] > 50.0 for r in after)  # chance: 10%
    assert min(r["top1"] for r in after) > max(r["top1"] for r in before) + 25
