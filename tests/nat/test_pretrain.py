"""The pre-training run (nat_jax/nat/pretrain.py, experiments/pretrain.py):
the config's phases, space and widths, the entry point's supernet feeding a
transfer run, a finished width skipped on rerun."""

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from experiments.configs import pretrain as pretrain_configs
from nat_jax.model import supernet, supernet_set
from nat_jax.nat import pretrain
from nat_jax.space import search_space as ss

# the test config's space: one resolution, one compile of the step
SPACE = dataclasses.replace(ss.SearchSpace.tiny(), resolutions=(32,))


def _config(**kw):
    c = pretrain_configs.get_config("test")
    c.update(kw)
    return c


def test_phases_from_config_scale_lr_per_64_images():
    c = _config(batch_size=32, phase_order=("full", "depth_1"))
    c.phases.depth_1.update(base_lr=0.01, warmup_epochs=2, subnets=3)
    full, d1 = pretrain.phases_from_config(c, SPACE)
    assert (full.name, d1.name) == ("full", "depth_1")
    assert d1.lr == pytest.approx(0.01 * 32 / 64) and d1.warmup_lr == 0.01
    assert d1.subnets == 3 and d1.warmup_epochs == 2
    assert d1.depths == SPACE.depths[-2:]
    c = _config(phase_order=("full", "width"))
    with pytest.raises(ValueError, match="no config.phases.width; add it"):
        pretrain.phases_from_config(c, SPACE)


def test_space_and_widths_from_config():
    space, widths = pretrain.space_and_widths(_config(space="small", resolutions=(28,)))
    assert space.resolutions == (28,) and widths == space.widths
    _, widths = pretrain.space_and_widths(_config(space="small", widths=(1.2,)))
    assert widths == (1.2,)
    for bad in (dict(resolutions=(999,)), dict(widths=(3.0,))):
        with pytest.raises(ValueError):
            pretrain.space_and_widths(_config(**bad))


def test_a_bad_config_writes_nothing(tmp_path):
    with pytest.raises(ValueError, match="no config.phases.width"):
        pretrain.pretrain(_config(phase_order=("width",)), str(tmp_path / "wd"))
    assert not (tmp_path / "wd").exists()


@pytest.mark.slow
def test_rerun_skips_a_finished_width(tmp_path):
    wd = tmp_path / "wd"
    one = dict(phase_order=("full",), widths=(1.0,))
    first = pretrain.pretrain(_config(**one), str(wd))
    [w] = first["widths"]
    assert w["width"] == 1.0 and w["supernet"] == str(wd / "w1.0")
    model, _ = supernet.load_supernet(w["supernet"])
    assert model.space == SPACE
    rows = (wd / "train" / "w1.0" / "metrics.jsonl").read_text()
    again = pretrain.pretrain(_config(**one), str(wd))
    assert again["widths"] == json.loads(json.dumps(first["widths"]))
    assert (wd / "train" / "w1.0" / "metrics.jsonl").read_text() == rows
    with pytest.raises(ValueError, match="phase_order"):  # another run: refused
        pretrain.pretrain(_config(phase_order=("full", "kernel"), widths=(1.0,)),
                          str(wd))


@pytest.mark.slow
def test_entry_point_writes_loadable_supernet(tmp_path):
    wd = tmp_path / "wd"
    cmd = [sys.executable, "-m", "experiments.pretrain",
           "--config=experiments/configs/pretrain.py:test", f"--workdir={wd}",
           "--config.phase_order=('full','kernel')"]
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    r = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    model, v = supernet.load_supernet(str(wd / "w1.0"))
    assert model.space == SPACE and model.num_classes == 10
    rows = [json.loads(x) for x in (wd / "train" / "w1.0" / "metrics.jsonl")
            .read_text().splitlines()]
    assert [r["phase_end"] for r in rows if "phase_end" in r] == ["full", "kernel"]
    # ... and feeds a transfer run directly (--config.supernet=DIR).
    from experiments.configs import transfer as transfer_configs
    from nat_jax.nat import transfer

    cfg = transfer_configs.get_config("test")
    cfg.supernet = str(wd / "w1.0")
    cfg.widths = (1.0,)                     # one pretrained width: pin it
    cfg.search.iterations = 1
    summary = transfer.run(cfg, tmp_path / "transfer")
    meta = json.loads((tmp_path / "transfer" / "config.json").read_text())
    assert meta["supernet"] == str(wd / "w1.0") and summary["picks"]
    _, adapted = supernet_set.load_width(summary["supernet_dir"], 1.0)
    # the pre-trained weights were the starting point: the first conv moved
    # from them by adaptation but keeps their shape and scale
    w0, w1 = v["params"]["first_conv"], adapted["params"]["first_conv"]
    assert w0.shape == w1.shape and not np.array_equal(w0, w1)
    assert np.corrcoef(np.ravel(w0), np.ravel(w1))[0, 1] > 0.9
