"""checkpoint.TrainCheckpointer: round trip, fallback past a damaged newest
checkpoint (issue 18 item 6), orbax's INFO logs kept out of the output."""

import logging
import pathlib

import numpy as np
import orbax.checkpoint as ocp
import pytest

from nat_jax.runtime import checkpoint as ck


def _tree(v):
    return {"w": np.full((3, 2), v, np.float32), "step": np.int32(v)}


def _two_checkpoints(directory):
    with ck.TrainCheckpointer(directory) as c:
        c.save(4, _tree(4.0), {"loader": {"step": 4}})
        c.save(8, _tree(8.0), {"loader": {"step": 8}})


def _garble(path: pathlib.Path):
    path.write_bytes(b"\x00damaged" * max(1, path.stat().st_size // 8))


def _damage_data(step_dir: pathlib.Path):
    files = [p for p in (step_dir / "state").rglob("*")
             if p.is_file() and p.parent.name == "d"]
    assert files
    for p in files:
        _garble(p)


def _damage_extra(step_dir: pathlib.Path):
    _garble(step_dir / "extra" / "metadata")


def _delete_state(step_dir: pathlib.Path):
    for p in sorted((step_dir / "state").rglob("*"), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()
    (step_dir / "state").rmdir()


def test_round_trip_keeps_the_newest(tmp_path):
    with ck.TrainCheckpointer(tmp_path, max_to_keep=2) as c:
        assert c.latest_step() is None and c.all_steps() == []
        with pytest.raises(ValueError, match="No checkpoint under"):
            c.restore(_tree(0.0))
        for s in (1, 2, 3):
            c.save(s, _tree(float(s)), {"loader": {"step": s}})
        assert c.all_steps() == [2, 3] and c.latest_step() == 3
        tree, extra = c.restore(_tree(0.0))
        older, _ = c.restore(_tree(0.0), step=2)
    np.testing.assert_array_equal(tree["w"], np.full((3, 2), 3.0))
    assert extra == {"loader": {"step": 3}} and int(older["step"]) == 2


# a failed orbax read used to print "Event loop is closed" tracebacks
NO_UNRAISABLE = pytest.mark.filterwarnings(
    "error::pytest.PytestUnraisableExceptionWarning")


@NO_UNRAISABLE
@pytest.mark.parametrize("damage", [_damage_data, _damage_extra, _delete_state])
def test_damaged_newest_falls_back_to_the_older_one(tmp_path, caplog, damage):
    _two_checkpoints(tmp_path)
    damage(tmp_path / "8")
    caplog.set_level(logging.INFO)
    with ck.TrainCheckpointer(tmp_path) as c:
        assert c.latest_step() == 8
        tree, extra = c.restore(_tree(0.0))
        np.testing.assert_array_equal(tree["w"], np.full((3, 2), 4.0))
        assert extra == {"loader": {"step": 4}}
        # the resumed run trains past step 8 again: the damaged one is replaced
        c.save(8, _tree(9.0), {"loader": {"step": 8}})
        again, _ = c.restore(_tree(0.0))
    np.testing.assert_array_equal(again["w"], np.full((3, 2), 9.0))
    warnings = [r.getMessage() for r in caplog.records
                if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    msg = warnings[0]
    assert "\n" not in msg and len(msg) < 400, msg
    assert msg.startswith(f"Checkpoint step 8 in {tmp_path} is damaged (")
    assert msg.endswith("resuming from step 4.")


@NO_UNRAISABLE
def test_no_intact_checkpoint_is_one_line(tmp_path):
    _two_checkpoints(tmp_path)
    for s in ("4", "8"):
        _damage_data(tmp_path / s)
    with ck.TrainCheckpointer(tmp_path) as c:
        with pytest.raises(ValueError, match=r"No intact checkpoint in .*: steps "
                                             r"8, 4 are damaged \(ValueError: ") as e:
            c.restore(_tree(0.0))
        with pytest.raises(Exception):
            c.restore(_tree(0.0), step=8)  # an explicit step: no fallback
    assert "\n" not in str(e.value) and len(str(e.value)) < 400


def _orbax_info(records):
    return [r for r in records
            if "orbax" in r.pathname and r.levelno < logging.WARNING]


def test_orbax_info_logs_are_dropped(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    # control: orbax used directly logs dozens of INFO lines per checkpoint
    opts = ocp.CheckpointManagerOptions(enable_async_checkpointing=False)
    with ocp.CheckpointManager(tmp_path / "raw", options=opts) as m:
        m.save(1, args=ocp.args.StandardSave(_tree(1.0)))
    assert len(_orbax_info(caplog.records)) > 10
    caplog.clear()
    _two_checkpoints(tmp_path / "ours")
    with ck.TrainCheckpointer(tmp_path / "ours") as c:
        c.restore(_tree(0.0))
    ck.save_pytree(tmp_path / "tree", _tree(2.0), {"kind": "test"})
    ck.load_pytree(tmp_path / "tree", _tree(0.0))
    assert _orbax_info(caplog.records) == []
    # the filter is removed again afterwards
    assert not logging.getLogger("absl").filters


def test_drop_orbax_info_keeps_warnings_and_other_modules():
    drop = ck.DropOrbaxInfo()

    def rec(path, level):
        return logging.LogRecord("absl", level, path, 1, "m", None, None)
    orbax_py = "/site-packages/orbax/checkpoint/checkpointer.py"
    assert not drop.filter(rec(orbax_py, logging.INFO))
    assert not drop.filter(rec(orbax_py, logging.DEBUG))
    assert drop.filter(rec(orbax_py, logging.WARNING))
    assert drop.filter(rec("/src/nat_jax/nat/transfer.py", logging.INFO))
