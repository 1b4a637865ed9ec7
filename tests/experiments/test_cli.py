"""Entry-point errors: one `error:` line, exit 2, nothing written (issue 18)."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from experiments import cli
from experiments.configs import transfer as transfer_cfg

# Slow: whole runs or expensive shared fixtures (over ~30 s on 2 cores).
pytestmark = pytest.mark.slow

ROOT = pathlib.Path(__file__).resolve().parents[2]
CONFIG = f"--config={ROOT / 'experiments' / 'configs' / 'transfer.py'}:test"


def _env(tmp_path):
    e = {k: v for k, v in os.environ.items() if not k.startswith("XLA_")}
    e.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2",
             TFDS_DATA_DIR=str(tmp_path / "no_data"))
    return e


def _run(tmp_path, module, *flags):
    return subprocess.run([sys.executable, "-m", module, *flags],
                          capture_output=True, text=True, timeout=300,
                          env=_env(tmp_path), cwd=ROOT)


def _one_error_line(out, msg):
    assert out.returncode == 2, out.stderr[-2000:]
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and msg in errors[0], out.stderr[-2000:]
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("flag,msg", [
    ("--config.adapt.batch_size=0", "--config.adapt.batch_size=0 is invalid"),
    ("--config.search.iterations=0", "--config.search.iterations=0 is invalid"),
    ("--config.eval.batch_size=0", "--config.eval.batch_size=0 is invalid"),
    ("--config.search.pop_size=7", "must be even"),
    ("--config.search.mutation_variant=typo", "one of ['paper', 'pymoo']"),
    ("--config.no_such_field=1", "Unknown config field --config.no_such_field"),
    ("--config.adapt.no_such_field=1",
     "Unknown config field --config.adapt.no_such_field"),
    ("--config.adapt.batch_size=abc", "config.adapt.batch_size"),
    ("--no_such_flag=1", "Unknown command line flag 'no_such_flag'"),
    ("--objectives=top1_error,latency", "needs a table"),
])
def test_bad_transfer_flags_print_one_line_and_write_nothing(tmp_path, flag, msg):
    workdir = tmp_path / "w"
    out = _run(tmp_path, "experiments.transfer", CONFIG, f"--workdir={workdir}",
               flag)
    _one_error_line(out, msg)
    assert not workdir.exists()


def test_failed_start_does_not_block_the_workdir(tmp_path):
    """A typo, then missing data, on a workdir of another run: the data error
    is reported (not the clash), and the workdir is left as it was."""
    workdir = tmp_path / "w"
    workdir.mkdir()
    other = transfer_cfg.get_config("test")
    other.seed = 5
    (workdir / "config.json").write_text(json.dumps(other.to_dict(), indent=1))
    before = sorted((p.name, p.read_bytes()) for p in workdir.iterdir())
    out = _run(tmp_path, "experiments.transfer", CONFIG, f"--workdir={workdir}",
               "--dataset=dtd")
    _one_error_line(out, "prepare_data --dataset=dtd")
    assert "different run" not in out.stderr
    assert sorted((p.name, p.read_bytes()) for p in workdir.iterdir()) == before


def test_bad_search_flags_print_one_line(tmp_path):
    out = _run(tmp_path, "experiments.search", f"--supernet_dir={tmp_path}",
               "--evaluate=0")
    _one_error_line(out, "--evaluate=0 is invalid")
    out = _run(tmp_path, "experiments.search", f"--supernet_dir={tmp_path}",
               "--constraints=madds>=3")
    _one_error_line(out, "Bad constraint 'madds>=3'")
    out = _run(tmp_path, "experiments.search", f"--supernet_dir={tmp_path}")
    _one_error_line(out, "has no config.json")


def test_aliases_are_the_config_fields():
    argv = ["prog", "--dataset=dtd", "--workdir=w", "--seed", "3",
            "--config=c.py:paper", "--config.adapt.lr=0.1", "--", "--seed=9"]
    assert cli.rewrite_aliases(argv, ("dataset", "seed")) == [
        "prog", "--workdir=w", "--config=c.py:paper", "--config.adapt.lr=0.1",
        "--config.dataset=dtd", "--config.seed=3", "--", "--seed=9"]
    with pytest.raises(ValueError, match="not both"):
        cli.rewrite_aliases(["p", "--config.seed=1", "--seed=2"], ("seed",))
    with pytest.raises(ValueError, match="needs a value"):
        cli.rewrite_aliases(["p", "--seed"], ("seed",))
