"""The config resolved once: `run_config.plan`, its dataclasses' defaults,
the one reader of config.json and the one calibration batch helper.

Oracles: experiments/configs/transfer.py (the one source of defaults) for
every dataclass default, hand-set config values for the plan, and OFA's
200-image calibration batches written out by hand.
"""

import dataclasses
import json

import jax
import ml_collections
import numpy as np
import pytest

from experiments.configs import transfer as transfer_cfg
from nat_jax.nat import run_config, task_supernet, transfer
from nat_jax.runtime import workdir as workdir_lib
from nat_jax.search import evolution
from nat_jax.space import objectives
from nat_jax.train import adaptation, calibration, evaluation

# The dataclasses a run is built from, each with the config block it reads;
# a field named differently in the config is mapped here.
BLOCKS = [(evolution.SearchConfig, "search", {}),
          (adaptation.AdaptConfig, "adapt", {}),
          (evaluation.EvalConfig, "eval", {"calib_seed": "seed"}),
          (run_config.FinalConfig, "final", {})]


def _value(config, dotted):
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node


@pytest.mark.parametrize("cls,block,renamed", BLOCKS,
                         ids=[c.__name__ for c, _, _ in BLOCKS])
def test_dataclass_defaults_equal_the_config_file(cls, block, renamed):
    """Every default of the library dataclasses is the config file's value for
    the same field, so a library caller gets what a run gets."""
    config = transfer_cfg.get_config("paper")   # the file's base values
    for f in dataclasses.fields(cls):
        path = renamed.get(f.name, f"{block}.{f.name}")
        assert f.default is not dataclasses.MISSING, (cls.__name__, f.name)
        assert f.default == _value(config, path), (cls.__name__, f.name, path)


def _hand_set_config():
    c = transfer_cfg.get_config("test")
    with c.unlocked():
        c.seed = 7
        c.supernet = "pretrained:small_fashion_mnist"
        c.reset_classifier = False
        c.compile_cache = True
        c.objectives = "top1_error,params,madds"
        c.baselines = ml_collections.ConfigDict({"mine": [30, 1.5, 2.5]})
        c.search.update(iterations=3, archive_update="authors", archive_size=9,
                        predictor_train_size=4, archive_init=5)
        c.adapt.update(epochs_per_iter=2, warmup_epochs=3, batch_size=16,
                       dropout_rate=0.25, max_steps_per_epoch=6)
        c.final.update(num_tradeoff=3, tradeoff_variant="authors",
                       tradeoff_neighbors=2, tradeoff_epsilon=0.5)
    return c


def test_plan_carries_every_field():
    plan = run_config.plan(_hand_set_config(), num_devices=1)
    assert plan.seed == 7 and plan.eval.calib_seed == 7
    assert plan.supernet == task_supernet.SupernetSource(
        "pretrained:small_fashion_mnist", reset_classifier=False, dropout_rate=0.25)
    assert plan.loop == run_config.LoopConfig(
        iterations=3, archive_update="authors", archive_size=9,
        predictor_train_size=4, archive_init=5)
    assert plan.epochs == run_config.AdaptEpochs(
        epochs_per_iter=2, warmup_epochs=3, batch_size=16, max_steps_per_epoch=6)
    assert plan.final == run_config.FinalConfig(
        num_tradeoff=3, tradeoff_variant="authors", tradeoff_neighbors=2,
        tradeoff_epsilon=0.5)
    assert run_config.high_tradeoff_kwargs(plan.final) == {
        "n_neighbors": 2, "variant": "authors", "epsilon": 0.5}
    assert plan.baselines == {"mine": (30.0, 1.5, 2.5)}
    assert plan.compile_cache is True and plan.latency_table == ""
    task = plan.task
    assert task.names == ("top1_error", "params", "madds")
    assert task.space.resolutions == (32,) and task.space.widths == (1.0, 1.2)
    assert task.num_classes == 10 == task.dataset.num_classes
    genes = np.asarray(task.space.sample(jax.random.key(0), 3))
    got = np.asarray(task.complexity(genes))       # params, then madds (M)
    for g, row in zip(genes, got):
        cost = objectives.count(task.space, task.space.decode(g), 10)
        np.testing.assert_allclose(row, [cost["params"] / 1e6, cost["madds"] / 1e6],
                                   rtol=1e-6)
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.seed = 8


def test_plan_steps_per_epoch_caps_and_floors():
    e = run_config.AdaptEpochs(epochs_per_iter=1, warmup_epochs=1, batch_size=32,
                               max_steps_per_epoch=12)
    assert e.steps_per_epoch(1000) == 12          # 31 full batches, capped
    assert e.steps_per_epoch(100) == 3            # 100 // 32
    assert e.steps_per_epoch(10) == 1             # never 0
    full = dataclasses.replace(e, max_steps_per_epoch=0)
    assert full.steps_per_epoch(1000) == 31


def test_plan_of_a_config_json_equals_the_plan_of_its_config(tmp_path):
    c = _hand_set_config()
    workdir_lib.write_json(tmp_path / "config.json", c.to_dict())
    from_file = run_config.plan(workdir_lib.read_config(tmp_path), num_devices=1)
    direct = run_config.plan(c, num_devices=1)
    assert json.loads(json.dumps(from_file.config.to_dict())) == json.loads(
        json.dumps(c.to_dict()))
    for f in ("seed", "supernet", "loop", "search", "adapt", "epochs", "eval",
              "final", "baselines", "latency_table", "compile_cache"):
        assert getattr(from_file, f) == getattr(direct, f), f
    assert from_file.task.space == direct.task.space
    assert from_file.task.names == direct.task.names


def test_transfer_validates_once_per_run(tmp_path, monkeypatch):
    """`transfer.run` on a ConfigDict resolves it once (one `validate`) and
    the phases below get the plan."""
    calls, seen = [], {}
    validate = run_config.validate

    def counting(config, num_devices=None):
        calls.append(1)
        return validate(config, num_devices)

    class Stop(Exception):
        pass

    def stop(source, space, num_classes, key):
        seen["source"] = source
        raise Stop

    monkeypatch.setattr(run_config, "validate", counting)
    monkeypatch.setattr(transfer.task_supernet, "starting_supernets", stop)
    c = _hand_set_config()
    with pytest.raises(Stop):
        transfer.run(c, tmp_path / "w")
    assert len(calls) == 1
    assert seen["source"].dropout_rate == 0.25
    assert not (tmp_path / "w").exists()       # nothing written before it


def test_read_config_refuses_a_workdir_without_one_in_one_line(tmp_path):
    with pytest.raises(ValueError) as err:
        workdir_lib.read_config(tmp_path)
    msg = str(err.value)
    assert str(tmp_path) in msg and "has no config.json" in msg and "\n" not in msg
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="is corrupt") as err:
        workdir_lib.read_config(tmp_path)
    assert "\n" not in str(err.value)
    (tmp_path / "config.json").write_text(json.dumps({"seed": 3}))
    assert workdir_lib.read_config(tmp_path) == {"seed": 3}


@pytest.mark.parametrize("images,devices,want", [
    (2000, 1, 200),     # OFA: 2000 images in batches of 200
    (64, 1, 64),        # fewer images than a batch: one batch of all
    (2000, 3, 198),     # 200 rounded down to a multiple of 3 devices
    (256, 8, 200),
    (2, 4, 4),          # at least one image per device
])
def test_calibration_batch_is_ofas_200_split_over_devices(images, devices, want):
    assert calibration.batch_size(images, devices) == want
    assert want % devices == 0


def test_calibration_batch_refuses_nonsense():
    with pytest.raises(ValueError, match="num_images=0"):
        calibration.batch_size(0, 1)
    with pytest.raises(ValueError, match="num_devices=0"):
        calibration.batch_size(200, 0)
