"""Downstream of a two-width transfer run (issue 13): retargeting, fine-tuning,
extraction and the report take the width from the genotype (NAT section 3.2,
its second gene) and use the supernet of THAT width; NAT-M1..M4 decode, cost
and extract from a two-width OFA set.

The workdir is built synthetically (no transfer run): one random supernet per
width of the tiny space, saved as a set (`supernet_set.save_all`), plus the
config/archive/result files a finished run leaves. Oracles: the in-memory
supernet of the right width (masked forward, `calibration.predict`), per-width
calls of `evaluation.evaluate_subnets`, the exact cost counter, and for NAT-M
the PyTorch `ofa` package (its FLOPs/params counter and its supernet).
"""

import dataclasses
import json
import pathlib
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import transfer as transfer_cfg
from nat_jax.data import datasets as data
from nat_jax.deploy import finetune, latency, model_report
from nat_jax.model import subnet, supernet, supernet_set
from nat_jax.nat import retarget, run_config
from nat_jax.runtime import workdir
from nat_jax.search.archive import Archive
from nat_jax.space import objectives
from nat_jax.space import search_space as ss
from nat_jax.train import calibration, evaluation

# Slow: whole runs or expensive shared fixtures (over ~30 s on 2 cores).
pytestmark = pytest.mark.slow

ROOT = pathlib.Path(__file__).resolve().parents[2]
CFG = transfer_cfg.get_config("test")
SPACE = dataclasses.replace(run_config.run_space(CFG), widths=(1.0, 1.2))
R = SPACE.resolutions[0]
G10 = [0, 0, 4, 7, 5, 9]      # width gene 0: w1.0
G12 = [0, 1, 4, 7, 5, 9]      # the same layers at w1.2
MIN12 = SPACE.encode(SPACE.min_arch(R, 1.2)).tolist()
MAX10 = SPACE.encode(SPACE.max_arch(R, 1.0)).tolist()
GENES = [G10, G12, MIN12, MAX10]


def _nets(space=SPACE, seed=0):
    """{width: (Supernet, random variables)}; BN means random too."""
    out = {}
    x = jax.ShapeDtypeStruct((1, R, R, 3), jnp.float32)
    for i, w in enumerate(space.widths):
        model = supernet.Supernet(space, w, 10)
        out[w] = (model, latency.random_variables(
            model, x, space.max_arch(R, w).as_arrays(), seed=seed + i))
    return out


@pytest.fixture(scope="module")
def nets():
    return _nets()


@pytest.fixture(scope="module")
def wd(nets, tmp_path_factory):
    """A finished-transfer-like workdir holding a two-width supernet set."""
    d = tmp_path_factory.mktemp("two_widths")
    supernet_set.save_all(d / "supernet", nets)
    arc = Archive(SPACE)
    arc.add(GENES, iteration=0,
            objectives=[{"madds": 1.0}] * len(GENES))
    for i in range(len(GENES)):
        arc.record(i, 40.0 + 5 * i, 90.0, 1)
    arc.set_working(1, range(len(GENES)))
    arc.save(d / "archive.json")
    (d / "result.json").write_text(json.dumps(
        {"front": list(range(len(GENES))), "picks": [1, 2],
         "supernet_dir": str(d / "supernet")}))
    (d / "config.json").write_text(json.dumps(CFG.to_dict()))
    return d


@pytest.fixture
def one_width(wd, tmp_path):
    """The same run with only its w1.0 supernet left."""
    (tmp_path / "supernet").mkdir()
    shutil.copytree(wd / "supernet" / "w1.0", tmp_path / "supernet" / "w1.0")
    for f in ("archive.json", "result.json", "config.json"):
        shutil.copy(wd / f, tmp_path / f)
    return tmp_path


def _images(n=3, seed=0):
    return np.random.default_rng(seed).standard_normal((n, R, R, 3)).astype(
        np.float32)


# ------------------------------------------------------------------ the space
def test_set_space_is_the_genotypes_space(wd, nets, tmp_path):
    assert supernet_set.set_space(wd) == SPACE
    assert supernet_set.set_space(wd / "supernet") == SPACE
    assert supernet_set.set_space(wd / "supernet" / "w1.2").widths == (1.2,)
    # Each width saved with its own width pinned (as a one-width run saves it):
    # the set's space still has both widths, in the genotype's order.
    for w, (model, v) in nets.items():
        pinned = dataclasses.replace(SPACE, widths=(w,))
        supernet.save_supernet(str(tmp_path / "s" / f"w{w}"),
                               model.clone(space=pinned), v)
    assert supernet_set.set_space(tmp_path / "s") == SPACE
    # Two widths from runs with different resolutions are not one set.
    model, v = nets[1.2]
    other = dataclasses.replace(SPACE, resolutions=(40,), widths=(1.2,))
    supernet.save_supernet(str(tmp_path / "bad" / "w1.2"), model.clone(space=other),
                           v)
    shutil.copytree(tmp_path / "s" / "w1.0", tmp_path / "bad" / "w1.0")
    with pytest.raises(ValueError, match="different search spaces"):
        supernet_set.set_space(tmp_path / "bad")


def test_pick_takes_the_width_from_the_genotype(wd):
    space = supernet_set.set_space(wd)
    a = workdir.pick_arch(str(wd), 0, space)       # picks[0] = archive[1] = G12
    b = workdir.pick_arch(str(wd), 1, space)       # MIN12
    assert a == SPACE.decode(G12) and a.width == 1.2
    assert b.width == 1.2 and b.d == tuple([SPACE.depths[0]] * SPACE.num_stages)


# -------------------------------------------------------------- extraction
@pytest.mark.parametrize("genes", GENES, ids=["w1.0", "w1.2", "min_w1.2",
                                              "max_w1.0"])
def test_inherit_reads_only_the_arch_width(genes, wd, nets, monkeypatch):
    """The extracted subnet's logits are the masked supernet's of the arch's
    width (held in memory: independent of which folder was read), and only
    that width's folder is read."""
    arch = SPACE.decode(genes)
    read = []
    real = supernet.load_supernet
    monkeypatch.setattr(supernet, "load_supernet",
                        lambda d: read.append(pathlib.Path(d).name) or real(d))
    sub, v, _, space = finetune.inherit(str(wd), arch)
    assert read == [f"w{arch.width}"] and space == SPACE
    x = _images()
    model, variables = nets[arch.width]
    want = np.asarray(calibration.predict(model, variables, x, arch))
    got = np.asarray(sub.apply(v, x, train=False))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    assert sub.first_channels == SPACE.channels(arch.width).first
    assert v["params"]["first_conv"].shape[-1] == sub.first_channels


def test_the_two_widths_are_two_weight_sets(wd, nets):
    """Same layer genes, other width gene: other channels and other logits."""
    x = _images()
    s10, v10, _, _ = finetune.inherit(str(wd), SPACE.decode(G10))
    s12, v12, _, _ = finetune.inherit(str(wd), SPACE.decode(G12))
    assert v10["params"]["first_conv"].shape != v12["params"]["first_conv"].shape
    a = np.asarray(s10.apply(v10, x, train=False))
    b = np.asarray(s12.apply(v12, x, train=False))
    assert np.abs(a - b).max() > 1e-3 * np.abs(a).max()


def test_a_missing_width_is_a_one_line_error(one_width):
    arch = SPACE.decode(G12)
    with pytest.raises(ValueError, match=r"no width-1.2 supernet.*holds widths "
                                         r"\[1.0\]") as err:
        finetune.inherit(str(one_width), arch)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=r"no width-1.2 supernet"):
        supernet_set.load_set_width(one_width, 1.2)
    # The w1.0 subnet still comes out of the one-width set.
    sub, _, _, space = finetune.inherit(str(one_width), SPACE.decode(G10))
    assert space.widths == (1.0,) and sub.first_channels == SPACE.channels(
        1.0).first
    # The archive names a width the set lacks: retargeting says so.
    with pytest.raises(ValueError, match=r"width\(s\) \[1.2\].*only widths \[1.0\]"):
        retarget.load_workdir(one_width)


def test_finetune_cli_refuses_a_missing_width_in_one_line(one_width):
    enc = SPACE.decode(G12).to_encoding(SPACE)
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.finetune",
         f"--supernet_dir={one_width}", f"--arch={enc}"],
        capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr[-2000:]
    assert "width 1.2" in lines[0] and "[1.0]" in lines[0], lines[0]


# -------------------------------------------------------------- measuring
def test_evaluate_set_measures_each_genotype_on_its_width(wd, nets):
    """Mixed widths in, results in the given order, each equal to measuring
    that genotype alone on the supernet of its width."""
    ds = data.load(data.EMBEDDED)
    cfg = run_config.eval_config(CFG)
    order = [G12, G10, MIN12]
    seen = []
    res = retarget.evaluate_set(nets, order, SPACE, ds.val, ds.train, cfg,
                                progress=lambda i, n, r: seen.append((i, n)))
    assert sorted(seen) == [(0, 3), (1, 3), (2, 3)]
    for g, r in zip(order, res):
        w = SPACE.decode(g).width
        model, variables = nets[w]
        alone = evaluation.evaluate_subnets({w: model}, {w: variables}, [g],
                                            SPACE, ds.val, ds.train, cfg)[0]
        assert (r["top1"], r["top5"]) == (alone["top1"], alone["top5"])
    with pytest.raises(ValueError, match="width 1.2"):
        retarget.evaluate_set({1.0: nets[1.0]}, [G12], SPACE, ds.val, ds.train,
                              cfg)


def test_retarget_searches_both_widths_with_exact_costs(wd, nets, tmp_path):
    _, archive, sets = retarget.load_workdir(wd)
    assert sorted(sets) == [1.0, 1.2] and archive.space == SPACE
    assert all(m.space == SPACE and m.width == w for w, (m, _) in sets.items())
    summary = retarget.search_workdir(wd, "top1_error,madds,params", seed=0,
                                      n_evaluate=8, output=tmp_path / "s",
                                      generations=2)
    measured = json.loads((tmp_path / "s" / "front.json").read_text())["entries"]
    # Both widths were searched and measured (seed fixed: deterministic).
    assert {e["width"] for e in measured} == {1.0, 1.2}
    for e in summary["front"]:
        arch = SPACE.decode(e["genes"])
        assert e["width"] == arch.width
        cost = objectives.count(SPACE, arch, 10)
        assert e["madds"] == pytest.approx(cost["madds"] / 1e6, rel=1e-6)
        assert e["params"] == pytest.approx(cost["params"] / 1e6, rel=1e-6)


def test_report_extracts_each_front_member_from_its_width(wd, nets):
    name, rows = model_report.evaluate_front(str(wd), batch_size=200,
                                             latency_repeats=0, calib_images=64)
    assert [r["width"] for r in rows] == [SPACE.decode(g).width for g in GENES]
    for r in rows:
        assert r["params_counted"] == r["params"]      # the arrays of that width
    # archive[1] (w1.2) independently: extract from the in-memory w1.2 supernet,
    # re-calibrate on the same images, count on the test split.
    ds = data.load(data.EMBEDDED)
    arch = SPACE.decode(G12)
    sub, sv, _ = subnet.extract_subnet(*nets[1.2], arch)
    n_dev = len(jax.devices())
    cal = data_calibration(ds, n_dev)
    sv = evaluation.recalibrate_static_bn(sub, sv, cal.batches(R))
    want = evaluation.evaluate_static(sub, sv, ds.test, R, 200)
    assert rows[1]["correct1"] == want["correct1"]


def data_calibration(ds, n_dev):
    from nat_jax.data import pipeline

    bs = max(n_dev, min(200, 64) // n_dev * n_dev)
    return pipeline.CalibrationSet(data.full_train_split(ds), 64, bs, 0,
                                   num_devices=n_dev)


# -------------------------------------------------------------- NAT-M1..M4
# the NAT-M1..M4 net.subnet of each, from the reference file the package ships
NAT_M = json.loads((pathlib.Path(ss.__file__).parents[1] / "assets"
                    / "nat_imagenet_subnets.json").read_text())["subnets"]
README_TABLE = {  # README "Search space": encoding, MAdds (M), params (M)
    "NAT-M1": ("08011001440551052208877", 222.6, 6.07),
    "NAT-M2": ("08111003100632076009771", 302.9, 7.69),
    "NAT-M3": ("08121105451581189759771", 482.4, 9.07),
    "NAT-M4": ("12115105572981578947781", 599.7, 9.14),
}


def _torch_madds(net, r: int) -> int:
    """OFA's FLOPs rule (`ofa.utils.flops_counter`: conv `cin / groups * k * k`
    per output element, linear `in * out`; nothing else) over a forward pass
    of the PyTorch network, summed in Python ints (OFA's own counter sums in
    float32 and rounds off the last digits at these sizes)."""
    import torch

    total = []

    def conv(m, _, y):
        kh, kw = m.weight.shape[2:]
        total.append(m.in_channels // m.groups * kh * kw * y.numel())

    def linear(m, _, __):
        total.append(m.in_features * m.out_features)

    hooks = [m.register_forward_hook(conv if isinstance(m, torch.nn.Conv2d)
                                     else linear)
             for m in net.modules()
             if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    with torch.no_grad():
        net.eval()(torch.zeros(1, 3, r, r))
    for h in hooks:
        h.remove()
    return sum(total)


@pytest.mark.oracle
@pytest.mark.parametrize("name", sorted(NAT_M))
def test_nat_m_decode_and_exact_cost_match_ofa(name):
    """Decode in OFA's two-width space (M1 is w1.0, M2-M4 w1.2) and count at
    1000 classes: equal to counts on the active subnet the `ofa` package
    builds (its count_parameters; its FLOPs rule, `_torch_madds`), and the
    README's."""
    from tests import ofa_oracle

    ofa_oracle.stub_torchvision()
    from ofa.utils.pytorch_utils import count_parameters

    sp = ss.OFA_MBV3
    arch = ss.Arch.from_nat_subnet(NAT_M[name], sp)
    enc, madds_m, params_m = README_TABLE[name]
    assert arch.width == NAT_M[name]["w"] and arch.resolution == NAT_M[name]["r"]
    assert arch.to_encoding(sp) == enc and ss.parse_arch(enc, sp) == arch
    g = sp.encode(arch)
    assert sp.widths[int(g[1])] == arch.width and sp.decode(g) == arch
    cost = objectives.count(sp, arch, 1000)
    assert int(objectives.madds(sp, g[None])[0]) == cost["madds"]
    net = ofa_oracle.build(arch.width, n_classes=1000)
    net.set_active_subnet(**arch.to_ofa(sp))
    active = net.get_active_subnet(preserve_weight=False)
    r = arch.resolution
    assert cost["params"] == count_parameters(active)
    assert cost["madds"] == _torch_madds(active, r)
    assert round(cost["madds"] / 1e6, 1) == madds_m
    assert round(cost["params"] / 1e6, 2) == params_m


@pytest.mark.oracle
def test_nat_m_extract_from_a_two_width_ofa_set(tmp_path):
    """Both OFA widths (random PyTorch weights, converted) saved as one set;
    each NAT-M subnet (at 64 px, to stay cheap) extracted from the set equals
    the masked nat-jax supernet of its width and the PyTorch OFA supernet of
    its width."""
    from tests import ofa_oracle

    pairs = {w: ofa_oracle.pair(w) for w in (1.0, 1.2)}
    supernet_set.save_all(tmp_path / "ofa", {w: p[2:] for w, p in pairs.items()})
    space = supernet_set.set_space(tmp_path / "ofa")
    assert space.widths == (1.0, 1.2)
    x = np.random.default_rng(0).standard_normal((2, 64, 64, 3)).astype(np.float32)
    for name in sorted(NAT_M):
        arch = dataclasses.replace(ss.Arch.from_nat_subnet(NAT_M[name], ss.OFA_MBV3),
                                   resolution=64)
        sub, v, _, _ = supernet_set.extract_from_set(tmp_path / "ofa", arch,
                                               depthwise_impl="conv")
        got = np.asarray(jax.jit(lambda v, x, s=sub: s.apply(v, x, train=False))(
            v, x))
        net, _, model, variables = pairs[arch.width]
        masked = np.asarray(calibration.predict(model, variables, x, arch))
        torch_ref = ofa_oracle.logits(net, arch, x)
        scale = np.abs(torch_ref).max()
        np.testing.assert_allclose(got, masked, atol=1e-4 * scale, rtol=0)
        np.testing.assert_allclose(got, torch_ref, atol=1e-4 * scale, rtol=0)
