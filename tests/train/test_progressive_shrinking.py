"""Progressive shrinking (nat_jax/train/progressive_shrinking.py); the run
built on it is tested in tests/nat/test_pretrain.py.

Oracles: OFA's loss written out independently (and the `ofa` package's
`cross_entropy_loss_with_soft_target` / label smoothing when installed),
OFA's phase options from its paper/script, an uninterrupted run for resume.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nat_jax.data import datasets as data
from nat_jax.data import pipeline
from nat_jax.model import supernet
from nat_jax.runtime import checkpoint
from nat_jax.space import search_space as ss
from nat_jax.train import progressive_shrinking as pretrain

# Slow: whole runs or expensive shared fixtures (over ~30 s on 2 cores).
pytestmark = pytest.mark.slow

# one resolution: one compile of the step
SPACE = dataclasses.replace(ss.SearchSpace.tiny(), resolutions=(32,))


def test_distillation_loss_matches_formula():
    rng = np.random.default_rng(0)
    s = rng.standard_normal((5, 4)).astype(np.float32)
    t = rng.standard_normal((5, 4)).astype(np.float32)
    y = np.array([0, 3, 1, 2, 3])
    eps, kd = 0.1, 0.7
    # independent: soft = softmax(t); kd = mean_b sum_c -soft log_softmax(s)
    soft = np.exp(t) / np.exp(t).sum(1, keepdims=True)
    logp = s - np.log(np.exp(s).sum(1, keepdims=True))
    target = np.full((5, 4), eps / 4) + (1 - eps) * np.eye(4)[y]
    want = kd * np.mean(np.sum(-soft * logp, 1)) + np.mean(np.sum(-target * logp, 1))
    got = pretrain.distillation_loss(jnp.asarray(s), jnp.asarray(y), jnp.asarray(t),
                                     kd, eps)
    np.testing.assert_allclose(float(got), want, rtol=1e-6)


def test_distillation_loss_matches_ofa_package():
    torch = pytest.importorskip("torch")
    from tests import ofa_oracle

    ofa_oracle.stub_torchvision()
    from ofa.utils import (
        cross_entropy_loss_with_soft_target,
        cross_entropy_with_label_smoothing,
    )

    rng = np.random.default_rng(1)
    s = rng.standard_normal((6, 10)).astype(np.float32)
    t = rng.standard_normal((6, 10)).astype(np.float32)
    y = rng.integers(0, 10, 6)
    ts, tt, ty = torch.from_numpy(s), torch.from_numpy(t), torch.from_numpy(y)
    want = (1.0 * cross_entropy_loss_with_soft_target(
        ts, torch.softmax(tt, 1)) + cross_entropy_with_label_smoothing(ts, ty, 0.1))
    got = pretrain.distillation_loss(jnp.asarray(s), jnp.asarray(y), jnp.asarray(t),
                                     1.0, 0.1)
    np.testing.assert_allclose(float(got), float(want), rtol=1e-5)


def test_phase_options_follow_ofa():
    sp = ss.OFA_MBV3
    kw = dict(subnets=1, epochs=1, warmup_epochs=0, lr=0.1, warmup_lr=0.1,
              kd_ratio=1.0)
    full = pretrain.make_phase(sp, "full", **kw)
    assert (full.kernels, full.expands, full.depths) == ((7,), (6,), (4,))
    k = pretrain.make_phase(sp, "kernel", **kw)
    assert (k.kernels, k.expands, k.depths) == ((3, 5, 7), (6,), (4,))
    d1 = pretrain.make_phase(sp, "depth_1", **kw)
    d2 = pretrain.make_phase(sp, "depth_2", **kw)
    assert d1.depths == (3, 4) and d2.depths == (2, 3, 4) and d2.expands == (6,)
    e1 = pretrain.make_phase(sp, "expand_1", **kw)
    e2 = pretrain.make_phase(sp, "expand_2", **kw)
    assert (e1.expands, e1.reorder_stage) == ((4, 6), 0)
    assert (e2.expands, e2.reorder_stage, e2.depths) == ((3, 4, 6), 1, (2, 3, 4))
    with pytest.raises(ValueError, match="depth_I"):
        pretrain.make_phase(sp, "width", **kw)
    with pytest.raises(ValueError, match="1..2"):
        pretrain.make_phase(sp, "expand_3", **kw)
    res, a = pretrain.sample_subnets(sp, d1, 4, seed=0, step=3)
    assert res in sp.resolutions and a["d"].shape == (4, 5)
    assert set(np.unique(a["d"])) <= {3, 4}
    assert set(np.unique(a["ks"])) <= {0, 3, 5, 7}
    assert set(np.unique(a["e"])) <= {0, 6}


def test_learning_rate_schedule():
    p = pretrain.Phase("kernel", (3,), (6,), (4,), 1, epochs=2, warmup_epochs=1,
                       lr=0.4, warmup_lr=0.1, kd_ratio=1.0)
    # OFA: warm-up T_cur / T_total * (lr - warmup_lr) + warmup_lr, T_cur = i + 1
    assert p.learning_rate(0, 10) == pytest.approx(0.1 + 0.1 * 0.3)
    assert p.learning_rate(9, 10) == pytest.approx(0.4)
    assert p.learning_rate(10, 10) == pytest.approx(0.4)
    assert p.learning_rate(20, 10) == pytest.approx(0.2)


def _run(tmp, phases, steps=3, stop_after=None, seed=0):
    ds = data.load("fashion_mnist_mini")
    model, v = supernet.init_supernet(SPACE, 1.0, 10, jax.random.key(0),
                                      exec_mode="masked", dropout_rate=0.0)
    loader = pipeline.TrainLoader(ds.train, 8, 0, prefetch=0)
    out = pretrain.run_phases(model, v, phases, loader, steps, str(tmp),
                              seed=seed, checkpoint_every=2, stop_after=stop_after)
    return v, out


def _phase(name, **kw):
    args = dict(subnets=2, epochs=1, warmup_epochs=0, lr=0.05, warmup_lr=0.05,
                kd_ratio=0.0 if name == "full" else 1.0)
    args.update(kw)
    return pretrain.make_phase(SPACE, name, **args)


def _flat(tree):
    return {jax.tree_util.keystr(p): np.asarray(x)
            for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_phases_change_only_what_they_should(tmp_path):
    before, after_kernel = _run(tmp_path, [_phase("full"), _phase("kernel")])
    # the teacher is the network at the end of "full" (saved by the run)
    teacher, _ = checkpoint.load_pytree(str(tmp_path / "teacher"))
    b, f, k = (_flat(v["params"]) for v in (before, teacher, after_kernel))
    mats = [n for n in b if "'m7to5'" in n or "'m5to3'" in n]
    assert mats
    # "full" trains the largest subnet only: the transform matrices stay I
    for n in mats:
        np.testing.assert_array_equal(f[n], b[n], err_msg=n)
        np.testing.assert_array_equal(b[n], np.eye(b[n].shape[0]))
    assert not np.array_equal(f["['first_conv']"], b["['first_conv']"])
    # the kernel phase trains them
    assert all(not np.array_equal(k[n], f[n]) for n in mats)
    # and, as OFA's kernel phase, every other weight of the largest expand
    assert not np.array_equal(k["['block_3']['se_expand_kernel']"],
                              f["['block_3']['se_expand_kernel']"])


def test_killed_run_resumes_to_identical_weights(tmp_path):
    phases = [_phase("full"), _phase("expand_1")]
    _, ref = _run(tmp_path / "ref", phases)
    _run(tmp_path / "cut", phases, stop_after=4)   # killed inside expand_1
    _, resumed = _run(tmp_path / "cut", phases)
    r, s = _flat(ref), _flat(resumed)
    assert r.keys() == s.keys()
    for k in r:
        np.testing.assert_array_equal(s[k], r[k], err_msg=k)
