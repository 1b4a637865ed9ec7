"""OFA checkpoint import, equivalence with the PyTorch `ofa` supernet, and
supernet save/load."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from nat_jax import pretrained, supernet
from nat_jax import search_space as ss

import ofa_oracle

pytestmark = pytest.mark.oracle

SP = ofa_oracle.small_space()


def _archs(width, res):
    rng = np.random.RandomState(int(width * 10) + res)
    out = [SP.max_arch(res, width), SP.min_arch(res, width),
           ss.Arch.from_ofa([3, 5, 7, 3] * 5, [6, 4, 3, 6] * 5, [4, 3, 2, 4, 3],
                            res, width, SP)]
    for _ in range(2):
        out.append(ss.Arch.from_ofa(rng.choice([3, 5, 7], 20),
                                    rng.choice([3, 4, 6], 20),
                                    rng.choice([2, 3, 4], 5), res, width, SP))
    return out


@pytest.mark.parametrize("width,res", [(1.0, 64), (1.2, 32)])
def test_logits_match_ofa(width, res):
    net, _, model, variables = ofa_oracle.pair(width)
    x = np.random.RandomState(0).randn(2, res, res, 3).astype(np.float32)
    outs = []
    for arch in _archs(width, res):
        ours = np.asarray(supernet.predict(model, variables, x, arch))
        ref = ofa_oracle.logits(net, arch, x)
        assert np.abs(ours - ref).max() <= 1e-4 * np.abs(ref).max(), arch
        outs.append(ref)
    # the subnets really differ, so the comparison is not vacuous
    assert np.abs(outs[0] - outs[1]).max() > 100 * 1e-4 * np.abs(outs[0]).max()


def test_logits_match_ofa_at_224():
    net, _, model, variables = ofa_oracle.pair(1.0)
    x = np.random.RandomState(1).randn(1, 224, 224, 3).astype(np.float32)
    arch = ss.Arch.from_ofa([7, 3, 5, 5] * 5, [3, 6, 4, 6] * 5, [3, 4, 2, 3, 4],
                            224, 1.0, SP)
    shift = model.clone(depthwise_impl="shift")
    ours = np.asarray(supernet.predict(shift, variables, x, arch))
    ref = ofa_oracle.logits(net, arch, x)
    np.testing.assert_allclose(ours, ref, atol=1e-4 * np.abs(ref).max(), rtol=0)


def test_file_load_legacy_and_current_names(tmp_path):
    import torch

    net, sd, model, variables = ofa_oracle.pair(1.2)
    path = tmp_path / "legacy.pth"
    torch.save({"state_dict": sd, "epoch": 3}, path)
    m2, v2 = pretrained.load_ofa_checkpoint(str(path), 1.2, space=SP)
    assert m2.num_classes == model.num_classes
    for a, b in zip(jax.tree.leaves(v2), jax.tree.leaves(variables)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    cur = tmp_path / "current.pth"
    torch.save(net.state_dict(), cur)  # bare dict, current names
    _, v3 = pretrained.load_ofa_checkpoint(str(cur), 1.2, space=SP)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool((a == b).all()), v3, variables))


def test_missing_extra_shape_width_errors():
    _, sd, _, _ = ofa_oracle.pair(1.0)
    bad = dict(sd)
    del bad["blocks.5.mobile_inverted_conv.depth_conv.conv.7to5_matrix"]
    bad["blocks.5.mobile_inverted_conv.extra.weight"] = sd["classifier.linear.bias"]
    with pytest.raises(ValueError, match=r"1 missing key.*7to5_matrix.*1 unexpected"):
        pretrained.convert_state_dict(bad, 1.0, space=SP)
    bad = dict(sd)
    key = "blocks.7.mobile_inverted_conv.point_linear.conv.conv.weight"
    bad[key] = sd[key][:, :-8]
    with pytest.raises(ValueError, match="point_linear.conv.weight.*shape"):
        pretrained.convert_state_dict(bad, 1.0, space=SP)
    with pytest.raises(ValueError, match="width-1.0 checkpoint"):
        pretrained.convert_state_dict(sd, 1.2, space=SP)
    with pytest.raises(ValueError, match="pass key="):
        pretrained.convert_state_dict(sd, 1.0, num_classes=5, space=SP)
    with pytest.raises(ValueError, match="does not exist"):
        pretrained.load_ofa_checkpoint("/nonexistent/x.pth", 1.0, space=SP)


def test_new_classes_and_save_load_roundtrip(tmp_path):
    _, sd, model, variables = ofa_oracle.pair(1.0)
    m5, v5 = pretrained.convert_state_dict(sd, 1.0, num_classes=5,
                                           key=jax.random.key(3), space=SP)
    assert v5["params"]["classifier_kernel"].shape == (1280, 5)
    np.testing.assert_array_equal(v5["params"]["block_3"]["expand_kernel"],
                                  variables["params"]["block_3"]["expand_kernel"])
    supernet.save_supernet(tmp_path / "ck", m5, v5)
    m6, v6 = supernet.load_supernet(tmp_path / "ck")
    assert (m6.space, m6.width, m6.num_classes) == (SP, 1.0, 5)
    for a, b in zip(jax.tree.leaves(v6), jax.tree.leaves(v5)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ValueError, match="does not exist"):
        supernet.load_supernet(tmp_path / "nope")
    os.makedirs(tmp_path / "empty")
    with pytest.raises(ValueError, match="not a nat-jax checkpoint"):
        supernet.load_supernet(tmp_path / "empty")
    (tmp_path / "ck" / "metadata.json").write_text("{broken")
    with pytest.raises(ValueError, match="Corrupt"):
        supernet.load_supernet(tmp_path / "ck")


def test_convert_cli(tmp_path):
    import torch

    from experiments import convert_ofa

    net = ofa_oracle.build(1.0, n_classes=7, seed=5)
    path = tmp_path / "w.pth"
    torch.save({"state_dict": ofa_oracle.legacy_state_dict(net)}, path)
    out = convert_ofa.convert(str(path), 1.0, str(tmp_path / "out"))
    assert out["num_classes"] == 7
    model, _ = supernet.load_supernet(tmp_path / "out")
    assert model.space == ss.OFA_MBV3 and model.num_classes == 7
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.convert_ofa", f"--checkpoint={path}",
         "--width=1.2", f"--output={tmp_path / 'out2'}"],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "width-1.0 checkpoint" in lines[0], proc.stderr
