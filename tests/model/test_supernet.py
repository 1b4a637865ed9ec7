"""Masked supernet: one compile for many subnets, BN semantics (vs PyTorch
`ofa` in train mode and `set_running_statistics`), depthwise implementations."""

import copy
import dataclasses

import chex
import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nat_jax.model import layers, supernet
from nat_jax.space import search_space as ss
from nat_jax.train import calibration
from tests import ofa_oracle

TINY = ss.SearchSpace.tiny()


@pytest.fixture(scope="module")
def tiny():
    model, variables = supernet.init_supernet(TINY, 1.0, 10, jax.random.key(0),
                                              depthwise_impl="conv")
    # non-trivial BN statistics
    variables["batch_stats"] = jax.tree.map(
        lambda v: v + 0.3 * jax.random.uniform(jax.random.key(v.size), v.shape),
        variables["batch_stats"])
    return model, variables


@pytest.mark.slow
def test_one_compile_serves_many_subnets(tiny):
    model, variables = tiny
    tx = optax.sgd(0.01, momentum=0.9)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(params, stats, opt, x, y, arch, key):
        def loss_fn(p):
            logits, upd = model.apply({"params": p, "batch_stats": stats}, x, arch,
                                      train=True, rngs={"dropout": key},
                                      mutable=["batch_stats"])
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            return loss, upd["batch_stats"]
        (loss, stats), g = jax.value_and_grad(loss_fn, has_aux=True)(params)
        upd, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, upd), stats, opt, loss

    params, stats = variables["params"], variables["batch_stats"]
    opt = tx.init(params)
    x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
    y = jnp.arange(4) % 10
    arrays = supernet.sample_arch_arrays(TINY, jax.random.key(2), 24)
    before = calibration._predict._cache_size()
    seen = set()
    for i in range(24):
        arch = jax.tree.map(lambda a: a[i], arrays)
        seen.add(tuple(np.concatenate([arch["ks"], arch["e"], arch["d"]])))
        params, stats, opt, loss = step(params, stats, opt, x, y, arch,
                                        jax.random.key(i))
        assert np.isfinite(float(loss))
        a = ss.Arch.from_ofa(arch["ks"], arch["e"], arch["d"], 32, 1.0, TINY)
        calibration.predict(model, {"params": params, "batch_stats": stats}, x, a)
    assert len(seen) >= 20
    assert calibration._predict._cache_size() - before == 1


@pytest.mark.slow
@pytest.mark.oracle
def test_train_step_matches_ofa_and_keeps_inactive_stats():
    import torch

    net, _, model, variables = ofa_oracle.pair(1.0)
    sp = model.space
    # 64 px, batch 4: at 32 px / batch 3 the last stages normalise 3 values per
    # channel and float32 torch itself is 3e-4 away from float64 torch.
    arch = ss.Arch.from_ofa([3, 7, 5, 3] * 5, [3, 6, 4, 3] * 5, [2, 3, 4, 2, 3], 64,
                            1.0, sp)
    x = np.random.RandomState(3).randn(4, 64, 64, 3).astype(np.float32)
    tnet = copy.deepcopy(net)
    tnet.set_active_subnet(**arch.to_ofa(sp))
    tnet.train()
    with torch.no_grad():
        ref = tnet(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    m0 = model.clone(dropout_rate=0.0)
    logits, upd = m0.apply(variables, x, arch.as_arrays(), train=True,
                           mutable=["batch_stats"])
    np.testing.assert_allclose(logits, ref, atol=1e-4 * np.abs(ref).max(), rtol=0)
    ours = ofa_oracle.bn_stats_as_ofa(upd, sp)
    want = ofa_oracle.torch_bn_stats(tnet)
    old = ofa_oracle.bn_stats_as_ofa(variables, sp)
    for k in ours:
        np.testing.assert_allclose(ours[k], want[k], rtol=1e-4, atol=1e-5, err_msg=k)
    # explicit: block 4 (stage 0, slot 3) is skipped, block 1 runs e3 (48 of 96)
    for k in ours:
        if k.startswith("blocks.4."):
            np.testing.assert_array_equal(ours[k], old[k])
    k = "blocks.1.conv.inverted_bottleneck.bn.running_var"
    np.testing.assert_array_equal(ours[k][48:], old[k][48:])
    assert np.all(ours[k][:48] != old[k][:48])


@pytest.mark.slow
@pytest.mark.oracle
def test_recalibrate_matches_ofa_set_running_statistics():
    import torch

    ofa_oracle.stub_torchvision()
    from ofa.imagenet_classification.elastic_nn.utils import set_running_statistics

    net, _, model, variables = ofa_oracle.pair(1.2)
    sp = model.space
    arch = ss.Arch.from_ofa([5, 3, 7, 5] * 5, [4, 3, 6, 6] * 5, [3, 2, 4, 3, 2], 64,
                            1.2, sp)
    rng = np.random.RandomState(4)
    batches = [rng.randn(n, 64, 64, 3).astype(np.float32) for n in (4, 2)]
    tnet = copy.deepcopy(net)
    tnet.set_active_subnet(**arch.to_ofa(sp))
    loader = [(torch.from_numpy(b.transpose(0, 3, 1, 2).copy()), None)
              for b in batches]
    set_running_statistics(tnet, loader)
    new = calibration.recalibrate_bn(model, variables, arch,
                                  [(b, None) for b in batches])
    ours = ofa_oracle.bn_stats_as_ofa(new, sp)
    want = ofa_oracle.torch_bn_stats(tnet)
    old = ofa_oracle.bn_stats_as_ofa(variables, sp)
    changed = 0
    for k in ours:
        np.testing.assert_allclose(ours[k], want[k], rtol=1e-4,
                                   atol=1e-4 * np.abs(want[k]).max(), err_msg=k)
        changed += int(np.any(ours[k] != old[k]))
    assert changed > 50
    x = batches[0]
    a = np.asarray(calibration.predict(model, new, x, arch))
    np.testing.assert_allclose(a, ofa_oracle.logits(tnet, arch, x), rtol=0,
                               atol=1e-4 * np.abs(a).max())


@pytest.mark.slow
@pytest.mark.oracle
def test_recalibrate_and_predict_outside_the_space_resolutions_match_ofa():
    """OFA runs any input size (its published subnets use e.g. 160 px); so do
    `recalibrate_bn` and `predict` with `resolution=`, against OFA's
    `set_running_statistics` and eval forward at 40 px (not in the space)."""
    import torch

    ofa_oracle.stub_torchvision()
    from ofa.imagenet_classification.elastic_nn.utils import set_running_statistics

    net, _, model, variables = ofa_oracle.pair(1.0)
    model = model.clone(exec_mode="masked")  # compiles ~3x faster than "switch"
    sp = model.space
    assert 40 not in sp.resolutions
    arch = ss.Arch.from_ofa([7, 5, 3, 5] * 5, [6, 4, 3, 4] * 5, [4, 2, 3, 2, 4], 64,
                            1.0, sp)
    rng = np.random.RandomState(6)
    batches = [rng.randn(n, 40, 40, 3).astype(np.float32) for n in (4, 3)]
    with pytest.raises(ValueError, match="pass resolution=40"):
        calibration.recalibrate_bn(model, variables, arch, batches)
    new = calibration.recalibrate_bn(model, variables, arch, batches, resolution=40)
    tnet = copy.deepcopy(net)
    tnet.set_active_subnet(**arch.to_ofa(sp))
    set_running_statistics(tnet, [(torch.from_numpy(b.transpose(0, 3, 1, 2).copy()),
                                   None) for b in batches])
    ours = ofa_oracle.bn_stats_as_ofa(new, sp)
    want = ofa_oracle.torch_bn_stats(tnet)
    for k in ours:
        np.testing.assert_allclose(ours[k], want[k], rtol=1e-4,
                                   atol=1e-4 * np.abs(want[k]).max(), err_msg=k)
    x = batches[0]
    tnet.eval()
    with torch.no_grad():
        ref = tnet(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    got = np.asarray(calibration.predict(model, new, x, arch, resolution=40))
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-4 * np.abs(ref).max())


# (1, 3, 17) and (1, 5, 27): inputs wide enough for the lax kernel
# gradient's three column blocks (the last one shorter in the second).
# "shift" runs the C++ kernels on CPU where they build (`kernels`), else its
# lax form: both are checked against XLA's convolution.
@pytest.mark.parametrize("kernels", [True, False], ids=["cpp", "lax"])
@pytest.mark.parametrize("stride,k,hw", [(1, 7, 9), (2, 7, 10), (2, 3, 9),
                                         (1, 3, 17), (1, 5, 27)])
@pytest.mark.slow
def test_depthwise_impls_agree_with_gradients(stride, k, hw, kernels, monkeypatch):
    from nat_jax.model import cpu_kernels
    if not kernels:
        monkeypatch.setattr(cpu_kernels, "available", lambda: False)
    x = jax.random.normal(jax.random.key(0), (2, hw, hw + 1, 5))
    w = jax.random.normal(jax.random.key(1), (k, k, 1, 5))
    ct = jax.random.normal(jax.random.key(2), (2, (hw - 1) // stride + 1,
                                               hw // stride + 1, 5))
    outs = {}
    for impl in ("conv", "shift"):
        @jax.jit
        def f(x, w, ct):
            y, vjp = jax.vjp(lambda x, w: layers.depthwise_conv(x, w, stride, impl),
                             x, w)
            return (y,) + vjp(ct)  # custom VJP of "shift" vs XLA's conv VJP
        outs[impl] = f(x, w, ct)
    for a, b in zip(outs["conv"], outs["shift"]):
        np.testing.assert_allclose(a, b, atol=1e-4 * float(jnp.abs(a).max()), rtol=0)


@pytest.mark.slow
def test_supernet_impls_agree_and_masked_grads(tiny):
    model, variables = tiny
    x = jax.random.normal(jax.random.key(5), (2, 40, 40, 3))
    arch = ss.Arch.from_ofa([3, 5, 7, 5], [3, 4, 6, 3], [2, 1], 40, 1.0, TINY)
    outs = [calibration.predict(model.clone(depthwise_impl=impl), variables, x, arch)
            for impl in ("conv", "shift")]
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-5, atol=1e-6)

    def loss(p):
        return model.apply({"params": p, "batch_stats": variables["batch_stats"]},
                           x, arch.as_arrays()).sum()
    g = jax.jit(jax.grad(loss))(variables["params"])
    mid = TINY.mid_channels(8, 3)  # block 1: C_in 8, e3
    assert not np.any(g["block_1"]["expand_kernel"][..., mid:])
    assert np.any(g["block_1"]["expand_kernel"][..., :mid])
    assert not any(np.any(v) for v in jax.tree.leaves(g["block_4"]))  # skipped


def test_init_laws(tiny):
    model, variables = tiny
    shapes = supernet.variable_shapes(model)
    assert jax.tree.structure(shapes) == jax.tree.structure(variables)
    k = variables["params"]["block_2"]["expand_kernel"]
    assert abs(float(k.std()) / layers.conv_std(k.shape) - 1) < 0.05
    m = variables["params"]["block_2"]["depthwise"]["m7to5"]
    np.testing.assert_array_equal(m, np.eye(25))
    c = variables["params"]["classifier_kernel"]
    assert float(jnp.abs(c).max()) <= 1 / np.sqrt(c.shape[0])


def test_predict_errors(tiny):
    model, variables = tiny
    x = jnp.zeros((1, 32, 32, 3))
    with pytest.raises(ValueError, match="resolution is 40"):
        calibration.predict(model, variables, x, TINY.max_arch(40))
    with pytest.raises(ValueError, match="resolution=24"):
        calibration.predict(model, variables, x, TINY.max_arch(40), resolution=24)
    with pytest.raises(ValueError, match="positive integer"):
        calibration.predict(model, variables, x, TINY.max_arch(40), resolution=0)
    with pytest.raises(ValueError, match="arch=None"):
        calibration.recalibrate_bn(model, variables, None, [x])
    other = ss.Arch(32, 1.2, TINY.max_arch().ks, TINY.max_arch().e, (2, 2))
    with pytest.raises(ValueError, match="width"):
        calibration.predict(model, variables, x, other)
    with pytest.raises(ValueError, match="depthwise_impl"):
        supernet.init_supernet(TINY, 1.0, 3, jax.random.key(0), depthwise_impl="fft")


# (ks, e, d) subnets of the tiny space (blocks 2 and 4 are skippable): every
# kernel and expand, skipped and active optional blocks.
SWITCH_ARCHS = [([3, 5, 7, 5], [3, 4, 6, 3], [2, 1]),
                ([7, 3, 5, 7], [6, 3, 4, 6], [1, 2]),
                ([5, 7, 3, 3], [4, 6, 3, 4], [2, 2]),
                ([3, 3, 3, 3], [3, 3, 3, 3], [1, 1])]


def _switch_probe(model):
    """Jitted (variables, x, y, arch) -> eval logits, train logits, BN updates,
    grads and collect-mode bn_stats. chex counts traces of this code for all
    probes together: at most 2 (one per exec mode) after a counter reset."""
    @jax.jit
    @chex.assert_max_traces(n=2)
    def probe(variables, x, y, arch):
        ev = model.apply(variables, x, arch)

        def loss(p):
            logits, upd = model.apply({"params": p,
                                       "batch_stats": variables["batch_stats"]},
                                      x, arch, train=True, mutable=["batch_stats"])
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
            return ce.mean(), (logits, upd["batch_stats"])
        (_, (tl, st)), g = jax.value_and_grad(loss, has_aux=True)(
            variables["params"])
        _, col = model.apply(variables, x, arch, bn_mode="collect",
                             mutable=["bn_stats"])
        return ev, tl, st, g, col["bn_stats"]
    return probe


def _assert_collected_equal(want, got):
    """Collect-mode bn_stats: equal masks, equal statistics where set."""
    flat_w = flax.traverse_util.flatten_dict(want)
    flat_g = flax.traverse_util.flatten_dict(got)
    for path in flat_w:
        if path[-1] == "mask":
            np.testing.assert_array_equal(flat_g[path], flat_w[path])
        else:
            m = flat_w[path[:-1] + ("mask",)]
            np.testing.assert_allclose(
                np.where(m, flat_g[path], 0), np.where(m, flat_w[path], 0),
                rtol=1e-5, atol=1e-6, err_msg=str(path))


@pytest.mark.slow
def test_switch_equals_masked(tiny):
    from nat_jax.model import active_weights

    model, variables = tiny
    model = model.clone(dropout_rate=0.0)  # "conv": compiles faster than "shift"
    chex.clear_trace_counter()
    probes = {m: _switch_probe(model.clone(exec_mode=m))
              for m in supernet.EXEC_MODES}
    x = jax.random.normal(jax.random.key(7), (4, 32, 32, 3))
    y = jnp.arange(4) % 10
    for ks, e, d in SWITCH_ARCHS:
        arrays = ss.Arch.from_ofa(ks, e, d, 32, 1.0, TINY).as_arrays()
        want = probes["masked"](variables, x, y, arrays)
        got = probes["switch"](variables, x, y, arrays)
        names = ("eval logits", "train logits", "batch_stats", "grads")
        for name, a, b in zip(names, want[:4], got[:4]):
            # float32 summation order differs; BN-scale grads cancel a lot, so
            # the tolerance also scales with the largest entry of the tree
            top = max(float(jnp.abs(u).max()) for u in jax.tree.leaves(a))
            for (path, u), v in zip(jax.tree_util.tree_leaves_with_path(a),
                                    jax.tree.leaves(b)):
                scale = float(jnp.abs(u).max())
                np.testing.assert_allclose(
                    v, u, rtol=0, atol=2e-5 * scale + 1e-6 * top,
                    err_msg=f"{name} {jax.tree_util.keystr(path)} {ks} {e} {d}")
        active = active_weights.active_param_mask(TINY, 1.0, variables["params"],
                                                  arrays)
        for (path, g), m in zip(jax.tree_util.tree_leaves_with_path(got[3]),
                                jax.tree.leaves(active)):
            assert not np.any(np.where(m, 0.0, g)), jax.tree_util.keystr(path)
        # collect mode: same masks, same statistics where the mask is set
        assert (flax.traverse_util.flatten_dict(want[4]).keys()
                == flax.traverse_util.flatten_dict(got[4]).keys())
        _assert_collected_equal(want[4], got[4])
    # one compile served every subnet (assert_max_traces would have raised)
    sampled = supernet.sample_arch_arrays(TINY, jax.random.key(3), 3)
    for i in range(3):
        probes["switch"](variables, x, y, jax.tree.map(lambda a: a[i], sampled))


def test_switch_scan_over_stage_blocks_equals_masked():
    """With 3 slots per stage, "switch" runs slots 1-2 of each stage as one
    `lax.scan` over their stacked variables: same logits, BN updates,
    collect-mode statistics and gradients as "masked", for subnets that skip,
    keep or mix the scanned slots."""
    space = dataclasses.replace(TINY, depths=(1, 2, 3))
    assert [len(g) for g in supernet._block_groups(space.blocks(1.0), True)] == [
        1, 2, 1, 2]
    model, variables = supernet.init_supernet(space, 1.0, 10, jax.random.key(1),
                                              depthwise_impl="conv",
                                              dropout_rate=0.0)
    variables["batch_stats"] = jax.tree.map(
        lambda v: v + 0.3 * jax.random.uniform(jax.random.key(v.size), v.shape),
        variables["batch_stats"])
    chex.clear_trace_counter()
    probes = {"masked": _switch_probe(model.clone(exec_mode="masked")),
              "scan": _switch_probe(model.clone(exec_mode="switch"))}
    x = jax.random.normal(jax.random.key(9), (4, 32, 32, 3))
    y = jnp.arange(4) % 10
    for ks, e, d in [([3, 5, 7, 5, 3, 7], [3, 4, 6, 3, 6, 4], [2, 3]),
                     ([7, 3, 5, 7, 5, 3], [6, 3, 4, 6, 3, 4], [3, 1]),
                     ([5, 7, 3, 3, 7, 5], [4, 6, 3, 4, 4, 6], [1, 2])]:
        arrays = ss.Arch.from_ofa(ks, e, d, 32, 1.0, space).as_arrays()
        want = probes["masked"](variables, x, y, arrays)
        got = probes["scan"](variables, x, y, arrays)
        assert jax.tree.structure(want) == jax.tree.structure(got)
        for name, a, b in zip(("eval logits", "train logits", "batch_stats",
                               "grads"), want[:4], got[:4]):
            top = max(float(jnp.abs(u).max()) for u in jax.tree.leaves(a))
            for (path, u), v in zip(jax.tree_util.tree_leaves_with_path(a),
                                    jax.tree.leaves(b)):
                np.testing.assert_allclose(
                    v, u, rtol=0, atol=2e-5 * float(jnp.abs(u).max()) + 1e-6 * top,
                    err_msg=f"{name} {jax.tree_util.keystr(path)} {d}")
        _assert_collected_equal(want[4], got[4])


@pytest.mark.slow
def test_switch_recalibrate_and_predict_match_masked(tiny):
    model, variables = tiny
    arch = ss.Arch.from_ofa(*SWITCH_ARCHS[0], 32, 1.0, TINY)
    rng = np.random.RandomState(8)
    batches = [rng.randn(n, 32, 32, 3).astype(np.float32) for n in (4, 4, 2)]
    out = {}
    for mode in supernet.EXEC_MODES:
        m = model.clone(exec_mode=mode)
        new = calibration.recalibrate_bn(m, variables, arch, batches)
        out[mode] = (new["batch_stats"], calibration.predict(m, new, batches[0], arch))
    for a, b in zip(jax.tree.leaves(out["masked"]), jax.tree.leaves(out["switch"])):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


def test_exec_modes_share_variables_and_errors():
    inits = [supernet.init_supernet(TINY, 1.0, 3, jax.random.key(4), exec_mode=m)[1]
             for m in supernet.EXEC_MODES]
    assert jax.tree.structure(inits[0]) == jax.tree.structure(inits[1])
    for a, b in zip(*(jax.tree.leaves(v) for v in inits)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="exec_mode"):
        supernet.init_supernet(TINY, 1.0, 3, jax.random.key(0), exec_mode="fast")
    model = supernet.Supernet(TINY, 1.0, 3, exec_mode="dense")
    with pytest.raises(ValueError, match="allowed"):
        supernet.variable_shapes(model)
