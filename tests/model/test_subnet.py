"""Extracted static subnets equal the masked supernet; net.config round trip."""

import json

import jax
import numpy as np
import pytest

from nat_jax.model import subnet, supernet
from nat_jax.space import objectives
from nat_jax.space import search_space as ss
from nat_jax.train import calibration
from tests import ofa_oracle

TINY = ss.SearchSpace.tiny()


def _check(model, variables, arch, x):
    sub, sub_vars, cfg = subnet.extract_subnet(model, variables, arch)
    masked = np.asarray(calibration.predict(model, variables, x, arch))
    compact = np.asarray(jax.jit(sub.apply)(sub_vars, x))
    np.testing.assert_allclose(compact, masked, rtol=0,
                               atol=1e-5 * np.abs(masked).max())
    return sub, sub_vars, cfg, masked


@pytest.mark.slow
@pytest.mark.oracle
def test_extracted_equals_masked_ofa_space():
    _, _, model, variables = ofa_oracle.pair(1.0)
    sp = model.space
    x = np.random.RandomState(7).randn(2, 64, 64, 3).astype(np.float32)
    archs = [sp.min_arch(64, 1.0),
             ss.Arch.from_ofa([7, 3, 5, 7] * 5, [6, 3, 4, 4] * 5, [4, 2, 3, 3, 2], 64,
                              1.0, sp)]
    for arch in archs:
        sub, sub_vars, cfg, _ = _check(model, variables, arch, x)
        n_params = sum(v.size for v in jax.tree.leaves(sub_vars["params"]))
        assert n_params == objectives.count(sp, arch, model.num_classes)["params"]
        cfg = json.loads(json.dumps(cfg))
        assert ss.Arch.from_net_config(cfg, sp) == arch
        assert subnet.subnet_from_config(cfg, depthwise_impl="conv") == sub


@pytest.mark.slow
def test_extracted_tiny_roundtrip_and_train_mode():
    model, variables = supernet.init_supernet(TINY, 1.0, 6, jax.random.key(1),
                                              depthwise_impl="conv")
    variables["batch_stats"] = jax.tree.map(
        lambda v: v + 0.5 * jax.random.uniform(jax.random.key(v.size), v.shape),
        variables["batch_stats"])
    x = np.random.RandomState(8).randn(3, 40, 40, 3).astype(np.float32)
    arch = ss.Arch.from_ofa([5, 7, 3, 3], [3, 6, 4, 4], [2, 1], 40, 1.0, TINY)
    sub, sub_vars, cfg, masked = _check(model, variables, arch, x)
    rebuilt = subnet.subnet_from_config(json.loads(json.dumps(cfg)),
                                        depthwise_impl="conv")
    assert rebuilt == sub
    out = jax.jit(rebuilt.apply)(sub_vars, x)
    np.testing.assert_allclose(out, masked, rtol=0, atol=1e-5 * np.abs(masked).max())
    assert ss.Arch.from_net_config(cfg, TINY) == arch
    assert cfg["name"] == "MobileNetV3" and cfg["resolution"] == 40
    assert [b["conv"]["name"] for b in cfg["blocks"]] == ["MBConvLayer"] * 4
    # train mode (batch statistics) agrees too
    m0 = model.clone(dropout_rate=0.0)
    a, _ = jax.jit(lambda v: m0.apply(v, x, arch.as_arrays(), train=True,
                                      mutable=["batch_stats"]))(variables)
    s0 = sub.clone(dropout_rate=0.0)
    b, _ = jax.jit(lambda v: s0.apply(v, x, train=True, mutable=["batch_stats"]))(
        sub_vars)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * np.abs(a).max())


def test_config_errors():
    with pytest.raises(ValueError, match="net.config"):
        subnet.subnet_from_config({"name": "MobileNetV3", "blocks": []})
    model, variables = supernet.init_supernet(TINY, 1.0, 6, jax.random.key(1))
    bad = ss.Arch(40, 1.2, TINY.max_arch().ks, TINY.max_arch().e, (2, 2))
    with pytest.raises(ValueError, match="width"):
        subnet.extract_subnet(model, variables, bad)


@pytest.mark.slow
def test_public_stem_blocks_head_compose_to_the_subnet():
    # The latency table times Stem, Block and Head one by one: applied in turn
    # with the extracted subnet's own variables, they give its logits.
    model, variables = supernet.init_supernet(TINY, 1.0, 6, jax.random.key(2),
                                              depthwise_impl="conv")
    arch = ss.Arch.from_ofa([3, 5, 7, 5], [6, 4, 3, 3], [2, 2], 32, 1.0, TINY)
    sub, sub_vars, _ = subnet.extract_subnet(model, variables, arch)
    x = np.random.RandomState(9).randn(2, 32, 32, 3).astype(np.float32)
    p, st = sub_vars["params"], sub_vars["batch_stats"]

    def part(keys):
        return {"params": {k: p[k] for k in keys if k in p},
                "batch_stats": {k: st[k] for k in keys if k in st}}

    stem_keys = ["first_conv", "first_bn", "first_block_dw", "first_block_dw_bn",
                 "first_block_pw", "first_block_pw_bn"]
    h = subnet.Stem(sub.first_channels, sub.first_block_channels, "conv").apply(
        part(stem_keys), x)
    assert len(sub.blocks) == 4 and sub.blocks[1].residual
    for i, spec in enumerate(sub.blocks):
        h = subnet.Block(spec, "conv").apply(
            {"params": p[f"block_{i + 1}"], "batch_stats": st[f"block_{i + 1}"]}, h)
    head_keys = ["final_expand", "final_expand_bn", "feature_mix",
                 "classifier_kernel", "classifier_bias"]
    logits = subnet.Head(sub.blocks[-1].c_out, sub.final_expand, sub.feature_mix,
                         sub.num_classes).apply(part(head_keys), h)
    want = sub.apply(sub_vars, x)
    np.testing.assert_allclose(logits, want, rtol=0, atol=1e-5 * np.abs(want).max())
    assert set(stem_keys + head_keys) | {f"block_{i}" for i in range(1, 5)} == set(p)
