"""Subnet evaluation: exact masked top-1/top-5 counts, vmapped subnets, and
adaptation on the embedded dataset raising accuracy well above chance."""

import functools
import time

import jax
import numpy as np
import pytest

from nat_jax import sharding
from nat_jax import adaptation as ad
from nat_jax import evaluation as ev
from nat_jax import pipeline, supernet
from nat_jax import search_space as ss
from nat_jax.augment import AugmentConfig
from tests.test_adaptation import RES, SPACE, _dataset, _probs

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
    return g


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
        v = supernet.recalibrate_bn(model, variables, arch,
                                    [b["image"] for b in cal.batches(RES)])
        logits = np.asarray(supernet.predict(model, v, images, arch))
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
