"""OFA checkpoint import, equivalence with the PyTorch `ofa` supernet, and
supernet save/load."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from nat_jax.model import pretrained, supernet
from nat_jax.space import search_space as ss
from nat_jax.train import calibration
from tests import ofa_oracle

pytestmark = [pytest.mark.slow, pytest.mark.oracle]

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
        ours = np.asarray(calibration.predict(model, variables, x, arch))
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
    ours = np.asarray(calibration.predict(shift, variables, x, arch))
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


def test_checkpoint_width_reads_both_ofa_widths():
    for w in (1.0, 1.2):
        _, sd, _, _ = ofa_oracle.pair(w)
        assert pretrained.checkpoint_width(sd, SP) == w
        # width=None reads it too and gives the same variables
        _, v = pretrained.convert_state_dict(sd, None, space=SP,
                                             depthwise_impl="conv")
        _, _, _, want = ofa_oracle.pair(w)
        assert all(np.array_equal(a, b) for a, b in
                   zip(jax.tree.leaves(v), jax.tree.leaves(want)))
    _, sd, _, _ = ofa_oracle.pair(1.0)
    with pytest.raises(ValueError, match="no width of the space"):
        pretrained.checkpoint_width(sd, ss.SearchSpace.tiny())


def test_convert_cli_builds_a_two_width_set(tmp_path):
    """Both OFA widths into one set folder (OUTPUT/w1.0, OUTPUT/w1.2), in one
    command with the widths read from the files, or one width at a time."""
    import torch

    from experiments import convert_ofa
    from nat_jax.model import supernet_set

    paths = {}
    for w in (1.0, 1.2):
        net = ofa_oracle.build(w, n_classes=7, seed=5)
        paths[w] = tmp_path / f"w{w}.pth"
        torch.save({"state_dict": ofa_oracle.legacy_state_dict(net)}, paths[w])
    out = convert_ofa.convert(str(paths[1.0]), 1.0, str(tmp_path / "one"))
    assert out["num_classes"] == 7 and out["output"] == str(tmp_path / "one" / "w1.0")
    model, _ = supernet_set.load_width(tmp_path / "one", 1.0)
    assert model.space == ss.OFA_MBV3 and model.num_classes == 7
    with pytest.raises(ValueError, match="exists already"):
        convert_ofa.convert(str(paths[1.0]), None, str(tmp_path / "one"))
    convert_ofa.convert(str(paths[1.2]), None, str(tmp_path / "one"))  # 2nd width
    assert supernet_set.widths(tmp_path / "one") == (1.0, 1.2)

    def cli(*flags):
        return subprocess.run([sys.executable, "-m", "experiments.convert_ofa",
                               *flags], capture_output=True, text=True, timeout=300)

    proc = cli(f"--checkpoint={paths[1.2]},{paths[1.0]}",
               f"--output={tmp_path / 'set'}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "set").iterdir()) == ["w1.0", "w1.2"]
    for w in (1.0, 1.2):
        m, v = supernet_set.load_width(tmp_path / "set", w)
        _, want = pretrained.load_ofa_checkpoint(str(paths[w]), w,
                                                 space=ss.OFA_MBV3)
        assert m.width == w
        assert all(np.array_equal(a, b) for a, b in
                   zip(jax.tree.leaves(v), jax.tree.leaves(want)))
    # one-line errors: a width that is not the file's; a single supernet as
    # --output; a width count that does not match
    for flags, msg in (
            ([f"--checkpoint={paths[1.0]}", "--width=1.2",
              f"--output={tmp_path / 'out2'}"], "width-1.0 checkpoint"),
            ([f"--checkpoint={paths[1.0]}",
              f"--output={tmp_path / 'set' / 'w1.0'}"], "is itself a supernet"),
            ([f"--checkpoint={paths[1.0]}", "--width=1.0,1.2",
              f"--output={tmp_path / 'out3'}"], "one per checkpoint")):
        proc = cli(*flags)
        assert proc.returncode == 2
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and msg in lines[0], proc.stderr
    assert not (tmp_path / "out2" / "w1.2").exists()
