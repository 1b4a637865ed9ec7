"""Fine-tuning, BN re-calibration, test-split evaluation and the entry points."""

import dataclasses
import json
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import finetune as finetune_configs
from nat_jax import data, deployment, export, finetune, latency, layers, workdir
from nat_jax import search_space as ss
from nat_jax import supernet
from nat_jax.archive import Archive

SPACE = ss.SearchSpace.tiny()
GENES = [0, 0, 4, 7, 5, 9]  # r32; k3e4 k3e6 | k5e4 k7e6 (SE, one residual block)
ARCH = SPACE.decode(GENES)


@pytest.fixture(scope="module")
def transfer_dir(tmp_path_factory):
    """A finished-transfer-like workdir: random supernet, archive, result."""
    wd = tmp_path_factory.mktemp("transfer")
    model = supernet.Supernet(SPACE, 1.0, 10)
    x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    variables = latency.random_variables(model, x, SPACE.max_arch().as_arrays())
    supernet.save_supernet(str(wd / "supernet"), model, variables)
    arc = Archive(SPACE)
    arc.add([SPACE.encode(SPACE.min_arch(40)), GENES], iteration=0)
    for i in range(2):
        arc.record(i, 50.0 + i, 90.0, 1)
    arc.save(wd / "archive.json")
    (wd / "result.json").write_text(json.dumps(
        {"front": [0, 1], "picks": [1], "supernet_dir": str(wd / "supernet")}))
    (wd / "config.json").write_text(json.dumps(
        {"dataset": data.EMBEDDED, "data_dir": ""}))
    return wd


@pytest.fixture(scope="module")
def tiny_cfg():
    c = finetune_configs.get_config("tiny")
    cfg = finetune.make_config(c, 4000)
    assert cfg.steps == c.steps and cfg.bn_momentum == c.bn_momentum
    return dataclasses.replace(cfg, steps=80, checkpoint_every=40)  # test budget


@pytest.fixture(scope="module")
def finetuned(transfer_dir, tiny_cfg, tmp_path_factory):
    wd = tmp_path_factory.mktemp("finetune")
    res = finetune.run(tiny_cfg, str(wd), str(transfer_dir), ARCH, data.EMBEDDED,
                       eval_batch_size=200, calib_images=256)
    return wd, res


def test_pick_resolves_archive_entry(transfer_dir):
    assert workdir.pick_arch(str(transfer_dir), 0, SPACE) == ARCH
    with pytest.raises(ValueError, match="out of range"):
        workdir.pick_arch(str(transfer_dir), 5, SPACE)
    assert workdir.resolve_supernet_dir(str(transfer_dir)).endswith("supernet")


def test_recalibrate_bn_matches_batch_moments(transfer_dir):
    sub, v, _, _ = finetune.inherit(str(transfer_dir), ARCH)
    images = np.random.default_rng(0).standard_normal((8, 32, 32, 3)) + 0.5
    images = images.astype(np.float32)
    new = deployment.recalibrate_bn(sub, v, [images[:4], images[4:]])
    h = np.asarray(layers.conv2d(images, v["params"]["first_conv"], 2))
    got = new["batch_stats"]["first_bn"]
    np.testing.assert_allclose(got["mean"], h.mean((0, 1, 2)), rtol=1e-4, atol=1e-5)
    # Batch-size-weighted mean of per-batch BIASED variances (OFA's rule).
    want = (h[:4].var((0, 1, 2)) + h[4:].var((0, 1, 2))) / 2
    np.testing.assert_allclose(got["var"], want, rtol=1e-4, atol=1e-5)


def test_finetune_improves_test_accuracy_and_exports(finetuned, tiny_cfg):
    wd, res = finetuned
    before, after = res["before"], res["after"]
    assert before["count"] == after["count"] == 1000  # every test image, once
    assert after["top1"] >= before["top1"] + 15.0, (before, after)
    assert res["steps"] == tiny_cfg.steps
    lines = (wd / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["step"] == tiny_cfg.steps
    model, variables, _ = export.load_subnet(str(wd / "model"))
    ds = data.load(data.EMBEDDED)
    again = deployment.evaluate(model, variables, ds.test, 32, 200)
    assert again["correct1"] == after["correct1"]
    # A finished workdir returns its result without training again.
    assert finetune.run(tiny_cfg, str(wd), "unused", ARCH, data.EMBEDDED) == res


def test_resume_continues_to_the_same_weights(finetuned, transfer_dir, tiny_cfg,
                                              tmp_path):
    wd, res = finetuned
    mid = tiny_cfg.checkpoint_every
    assert mid < tiny_cfg.steps
    (tmp_path / "ckpt").mkdir()
    shutil.copytree(wd / "ckpt" / str(mid), tmp_path / "ckpt" / str(mid))
    shutil.copy(wd / "finetune.json", tmp_path / "finetune.json")
    res2 = finetune.run(tiny_cfg, str(tmp_path), str(transfer_dir), ARCH,
                        data.EMBEDDED, eval_batch_size=200, calib_images=256)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["step"] > mid  # it did not start from 0
    _, v1, _ = export.load_subnet(str(wd / "model"))
    _, v2, _ = export.load_subnet(str(tmp_path / "model"))
    for a, b in zip(jax.tree.leaves(v1), jax.tree.leaves(v2)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert abs(res2["after"]["correct1"] - res["after"]["correct1"]) <= 2
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(wd / "finetune.json", other / "finetune.json")
    with pytest.raises(ValueError, match="different fine-tuning run"):
        finetune.run(tiny_cfg, str(other), str(transfer_dir), SPACE.min_arch(32),
                     data.EMBEDDED)


def test_evaluate_front_picks(transfer_dir):
    name, rows = deployment.evaluate_front(str(transfer_dir), which="picks",
                                           batch_size=200, latency_repeats=3,
                                           calib_images=256)
    assert name == data.EMBEDDED and len(rows) == 1
    row = rows[0]
    assert row["archive_index"] == 1 and row["pick"] and row["test_count"] == 1000
    assert row["params"] == row["params_counted"] and row["madds"] > 0
    assert row["latency_ms"] > 0 and 0 <= row["top1"] <= 100
    md = deployment.markdown_table(rows)
    assert "archive[1] (pick)" in md and "latency" in md


def _cli(module, *args):
    return subprocess.Popen([sys.executable, "-m", module, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def test_entry_points_give_one_line_errors(transfer_dir, tmp_path):
    cases = {
        "no supernet": (_cli("experiments.finetune", "--supernet_dir=/nonexistent",
                             "--pick=0"), "does not exist"),
        "arch and pick": (_cli("experiments.finetune",
                               f"--supernet_dir={transfer_dir}", "--pick=0",
                               "--arch=[0,0,1,1,1,1]"), "exactly one of"),
        "pick range": (_cli("experiments.finetune", f"--supernet_dir={transfer_dir}",
                            "--pick=7"), "out of range"),
        "bad arch": (_cli("experiments.finetune", f"--supernet_dir={transfer_dir}",
                          "--arch=[0,0,1]"), "6 integers"),
        "evaluate": (_cli("experiments.evaluate", f"--model_dir={tmp_path}"),
                     "holds neither"),
        "export": (_cli("experiments.export", f"--model_dir={tmp_path}"),
                   "not a nat-jax checkpoint"),
    }
    for name, (proc, text) in cases.items():
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 2, (name, err[-2000:])
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:"), (name, err[-2000:])
        assert text in lines[0], (name, lines[0])
