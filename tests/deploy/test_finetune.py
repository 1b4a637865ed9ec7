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
from nat_jax.data import datasets as data
from nat_jax.data.randaugment import RandAugment
from nat_jax.deploy import export, finetune, latency, model_report
from nat_jax.model import layers, supernet
from nat_jax.runtime import checkpoint, workdir
from nat_jax.search.archive import Archive
from nat_jax.space import search_space as ss
from nat_jax.train import evaluation, training

# Slow: whole runs or expensive shared fixtures (over ~30 s on 2 cores).
pytestmark = pytest.mark.slow

SPACE = ss.SearchSpace.tiny()
GENES = [0, 0, 4, 7, 5, 9]  # r32; k3e4 k3e6 | k5e4 k7e6 (SE, one residual block)
ARCH = SPACE.decode(GENES)


@pytest.fixture(scope="module")
def transfer_dir(tmp_path_factory):
    """A finished-transfer-like workdir: random supernet, archive, result.

    On purpose in the older layout (supernet/ is one width's supernet, not a
    set of w<width>/ folders): it still loads, as a set of one width. The
    two-width layout is tests/nat/test_width_downstream.py's."""
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
    res = finetune.finetune(tiny_cfg, str(wd), str(transfer_dir), ARCH, data.EMBEDDED,
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
    new = evaluation.recalibrate_static_bn(sub, v, [images[:4], images[4:]])
    h = np.asarray(layers.conv2d(images, v["params"]["first_conv"], 2))
    got = new["batch_stats"]["first_bn"]
    np.testing.assert_allclose(got["mean"], h.mean((0, 1, 2)), rtol=1e-4, atol=1e-5)
    # Batch-size-weighted mean of per-batch BIASED variances (OFA's rule).
    want = (h[:4].var((0, 1, 2)) + h[4:].var((0, 1, 2))) / 2
    np.testing.assert_allclose(got["var"], want, rtol=1e-4, atol=1e-5)


def test_finetune_improves_test_accuracy_and_exports(finetuned, tiny_cfg,
                                                      transfer_dir):
    wd, res = finetuned
    before, after = res["before"], res["after"]
    assert before["count"] == after["count"] == 1000  # every test image, once
    assert after["top1"] >= before["top1"] + 15.0, (before, after)
    assert res["steps"] == tiny_cfg.steps
    lines = (wd / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["step"] == tiny_cfg.steps
    model, variables, _ = export.load_subnet(str(wd / "model"))
    ds = data.load(data.EMBEDDED)
    again = evaluation.evaluate_static(model, variables, ds.test, 32, 200)
    assert again["correct1"] == after["correct1"]
    # A finished workdir returns its result without training again.
    assert finetune.finetune(tiny_cfg, str(wd), str(transfer_dir), ARCH, data.EMBEDDED,
                        eval_batch_size=200, calib_images=256) == res


def test_resume_continues_to_the_same_weights(finetuned, transfer_dir, tiny_cfg,
                                              tmp_path):
    wd, res = finetuned
    mid = tiny_cfg.checkpoint_every
    assert mid < tiny_cfg.steps
    (tmp_path / "ckpt").mkdir()
    shutil.copytree(wd / "ckpt" / str(mid), tmp_path / "ckpt" / str(mid))
    shutil.copy(wd / "finetune.json", tmp_path / "finetune.json")
    res2 = finetune.finetune(tiny_cfg, str(tmp_path), str(transfer_dir), ARCH,
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
        finetune.finetune(tiny_cfg, str(other), str(transfer_dir), SPACE.min_arch(32),
                     data.EMBEDDED)


def test_finished_workdir_answers_only_the_same_run(finetuned, transfer_dir,
                                                    tiny_cfg):
    """Issue 18 item 1: another subnet or config is refused in one line, not
    answered with the finished run's result; nothing in the workdir changes."""
    wd, res = finetuned
    before = {p.name: p.read_bytes() for p in wd.iterdir() if p.is_file()}
    other = SPACE.min_arch(32)
    with pytest.raises(ValueError, match=r"different fine-tuning run \(arch\."):
        finetune.finetune(tiny_cfg, str(wd), str(transfer_dir), other, data.EMBEDDED,
                     eval_batch_size=200, calib_images=256)
    changed = dataclasses.replace(tiny_cfg, steps=7, lr=0.5)
    with pytest.raises(ValueError, match="config.lr: 0.01 -> 0.5, config.steps: "
                                         "80 -> 7") as err:
        finetune.finetune(changed, str(wd), str(transfer_dir), ARCH, data.EMBEDDED,
                     eval_batch_size=200, calib_images=256)
    assert "\n" not in str(err.value)
    assert {p.name: p.read_bytes() for p in wd.iterdir() if p.is_file()} == before
    assert res["encoding"] == ARCH.to_encoding(SPACE)


def test_default_workdir_is_one_folder_per_subnet(transfer_dir):
    other = SPACE.min_arch(32)
    a = finetune.default_workdir(str(transfer_dir), ARCH, SPACE)
    b = finetune.default_workdir(str(transfer_dir), other, SPACE)
    assert a != b
    for path, arch in ((a, ARCH), (b, other)):
        name = path.rsplit("/", 1)[1]
        assert name.startswith("finetune_")
        # the folder name is the subnet's printed form, which parses back
        assert ss.parse_arch(name[len("finetune_"):], SPACE) == arch
    assert finetune.default_workdir("x", ARCH, SPACE, pick=1) == "x/finetune_pick1"


def test_nan_guard_checks_every_step_and_never_saves_nan(transfer_dir, tiny_cfg,
                                                       tmp_path):
    """A NaN at a step that is neither logged nor saved stops the run before the
    next save; the message names the step and the checkpoint that is kept."""
    cfg = tiny_cfg  # the `finetuned` run's: its compiled step is reused
    assert cfg.checkpoint_every > 3 and cfg.log_every > 3
    sub, v, _, _ = finetune.inherit(str(transfer_dir), ARCH)
    sub = sub.clone(dropout_rate=cfg.dropout_rate,
                    drop_connect_rate=cfg.drop_connect_rate)
    loader = finetune.AugmentedLoader(data.full_train_split(data.load(
        data.EMBEDDED)), cfg.batch_size, 32, cfg.seed, RandAugment(2, 5.0),
        num_devices=len(jax.devices()))
    with checkpoint.TrainCheckpointer(tmp_path / "ckpt") as ckpt:
        state = finetune.train(finetune.create_state(v, cfg), sub, loader, cfg,
                               ckpt, until=2)
        assert ckpt.all_steps() == [2]
        state = jax.device_get(state)
        params = jax.tree.map(np.array, state.params)
        params["classifier_bias"][0] = np.nan
        with pytest.raises(training.NonFiniteError,
                           match=r"Non-finite loss nan .* at global step 2 of "
                                 r"fine-tuning; training stopped, checkpoint step "
                                 r"2 in .* is kept"):
            finetune.train(state.replace(params=params), sub, loader, cfg, ckpt,
                           metrics_path=str(tmp_path / "m.jsonl"))
        assert ckpt.all_steps() == [2]
        restored, _ = ckpt.restore(state)
        assert all(np.isfinite(x).all() for x in jax.tree.leaves(restored.params))
    with checkpoint.TrainCheckpointer(tmp_path / "empty") as ckpt:
        bad = finetune.create_state(v, cfg).replace(params=params)
        with pytest.raises(training.NonFiniteError,
                           match="at global step 0 .* no checkpoint exists yet"):
            finetune.train(bad, sub, loader, cfg, ckpt)
        assert ckpt.all_steps() == []
    assert not (tmp_path / "m.jsonl").exists()


def test_every_finetune_config_field_comes_from_the_config():
    """Each FinetuneConfig field is a config field (steps and warmup_steps via
    epochs): new values for all of them all arrive."""
    new = dict(batch_size=50, lr=0.003, rmsprop_decay=0.8, rmsprop_eps=2e-3,
               momentum=0.7, weight_decay=2e-5, bn_momentum=0.05, dropout_rate=0.3,
               drop_connect_rate=0.1, label_smoothing=0.2, ema_decay=0.5,
               randaug_ops=3, randaug_magnitude=4.0, checkpoint_every=7,
               log_every=3, seed=5)
    fields = {f.name for f in dataclasses.fields(finetune.FinetuneConfig)}
    assert fields == set(new) | {"steps", "warmup_steps"}
    c = finetune_configs.get_config("paper")
    for k, v in new.items():
        assert c[k] != v, k
        c[k] = v
    c.epochs, c.warmup_epochs = 2.0, 0.5
    cfg = finetune.make_config(c, 1000)  # 20 steps per epoch
    assert dataclasses.asdict(cfg) == dict(new, steps=40, warmup_steps=10)
    del c["rmsprop_eps"]
    with pytest.raises(ValueError, match="lacks rmsprop_eps"):
        finetune.make_config(c, 1000)
    c = finetune_configs.get_config("tiny")
    c.batch_size = 0
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        finetune.make_config(c, 1000)


def test_evaluate_front_picks(transfer_dir):
    name, rows = model_report.evaluate_front(str(transfer_dir), which="picks",
                                           batch_size=200, latency_repeats=3,
                                           calib_images=256)
    assert name == data.EMBEDDED and len(rows) == 1
    row = rows[0]
    assert row["archive_index"] == 1 and row["pick"] and row["test_count"] == 1000
    assert row["params"] == row["params_counted"] and row["madds"] > 0
    assert row["latency_ms"] > 0 and 0 <= row["top1"] <= 100
    md = model_report.markdown_table(rows)
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


def test_cli_subnet_folder_and_nan_error_line(transfer_dir):
    """--arch writes to a folder named from the subnet; a NaN stops the run with
    one `error:` line (no traceback; the status is experiments.cli's choice)
    that says no checkpoint exists."""
    other = SPACE.min_arch(32)
    enc = other.to_encoding(SPACE)
    proc = _cli("experiments.finetune", f"--supernet_dir={transfer_dir}",
                f"--arch={enc}", "--config.steps=4", "--config.lr=1e38",
                "--config.checkpoint_every=2")
    _, err = proc.communicate(timeout=600)
    assert proc.returncode in (1, 2), err[-2000:]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err, err[-2000:]
    assert err.strip().splitlines()[-1] == errors[0]
    assert errors[0].startswith("error: Non-finite loss")
    assert "no checkpoint exists yet" in errors[0], errors[0]
    assert "orbax" not in err  # library log noise stays out
    wd = transfer_dir / f"finetune_{enc}"
    info = json.loads((wd / "finetune.json").read_text())
    assert SPACE.decode(SPACE.encode(ss.Arch(**info["arch"]))) == other
    assert not (wd / "result.json").exists() and not list((wd / "ckpt").iterdir())
