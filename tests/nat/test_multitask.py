"""Many-task search over several adapted supernets (paper Appendix F)."""

import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from experiments.configs import transfer as transfer_cfg
from nat_jax.model import supernet, supernet_set
from nat_jax.nat import multitask, run_config
from nat_jax.space import search_space as ss
from nat_jax.train import evaluation

# Slow: whole runs or expensive shared fixtures (over ~30 s on 2 cores).
pytestmark = pytest.mark.slow

ROOT = pathlib.Path(__file__).resolve().parents[2]
# Two widths: every task is a set of one supernet per width (NAT Sec. 3.2).
SPACE = dataclasses.replace(ss.SearchSpace.tiny(), resolutions=(32,),
                            widths=(1.0, 1.2))
CLASSES = (2, 3, 3)          # different class counts: each task keeps its own
CFG = transfer_cfg.get_config("test")


def _dataset(root: pathlib.Path, n_classes: int, seed: int) -> pathlib.Path:
    """A small grey image folder whose classes differ in brightness."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", 10), ("test", 3)):
        for c in range(n_classes):
            d = root / split / f"c{c}"
            d.mkdir(parents=True)
            for i in range(n):
                im = rng.random((8, 8)) * 80 + 60 * c
                Image.fromarray(im.astype(np.uint8), "L").save(d / f"{i}.png")
    return root


def _supernet(path: pathlib.Path, space, n_classes: int, seed: int) -> str:
    """A supernet set: PATH/w<width>/ for every width of `space`."""
    supernet_set.save_all(path, {
        w: supernet.init_supernet(space, w, n_classes, jax.random.key(seed + 10 * i))
        for i, w in enumerate(space.widths)})
    return str(path)


def _config(**kw) -> multitask.MultiTaskConfig:
    search = dataclasses.replace(run_config.search_config(CFG.search),
                                 generations=1, n_candidates=2)
    args = dict(objectives="top1_error,madds,params", search=search, iterations=1,
                archive_init=5, seed=0, constraints="", latency_table="",
                tradeoff=run_config.high_tradeoff_kwargs(CFG.final))
    return multitask.MultiTaskConfig(**{**args, **kw})


@pytest.fixture(scope="module")
def specs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tasks")
    return ",".join(
        f"{_supernet(root / f'sn{t}', SPACE, n, t)}="
        f"{_dataset(root / f'task{t}', n, t)}" for t, n in enumerate(CLASSES))


@pytest.fixture(scope="module")
def run(specs, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    tasks = multitask.load_tasks(specs, CFG)
    summary = multitask.run_joint_search(tasks, _config(), out)
    return tasks, out, summary


def test_every_member_has_one_measured_error_per_task(run):
    tasks, out, summary = run
    assert [t.dataset.num_classes for t in tasks] == list(CLASSES)
    arc = json.loads((out / "joint_archive.json").read_text())
    assert arc["tasks"] == ["task0", "task1", "task2"] == summary["tasks"]
    assert len(arc["entries"]) == 5 + 2           # archive_init + K new ones
    for e in arc["entries"]:
        assert sorted(e["top1"]) == sorted(arc["tasks"])
        assert all(0.0 <= v <= 100.0 for v in e["top1"].values())
    new = [e for e in arc["entries"] if e["iteration"] == 1]
    assert len(new) == 2 and all(sorted(e["predicted_top1"]) == sorted(arc["tasks"])
                                 for e in new)
    # Both widths are in the joint archive (uniform samples; seed fixed).
    widths = [SPACE.decode(e["genes"]).width for e in arc["entries"]]
    assert set(widths) == {1.0, 1.2} and all(t.space == SPACE for t in tasks)
    assert all(sorted(t.supernets) == [1.0, 1.2] for t in tasks)
    # One task's value is that subnet's top-1 on that task, measured alone on
    # the supernet of its width (and the other width's supernet is refused).
    t = tasks[1]
    for i in (widths.index(1.0), widths.index(1.2)):
        e = arc["entries"][i]
        w = widths[i]
        model, variables = t.supernets[w]
        alone = evaluation.evaluate_subnets(
            {w: model}, {w: variables}, [e["genes"]], t.space, t.dataset.val,
            t.dataset.train, run_config.eval_config(CFG))[0]
        assert e["top1"]["task1"] == pytest.approx(alone["top1"])
        (o, (m_o, v_o)), = [(k, s) for k, s in t.supernets.items() if k != w]
        with pytest.raises(ValueError, match=f"width {w}"):
            evaluation.evaluate_subnets(
                {o: m_o}, {o: v_o}, [e["genes"]], t.space, t.dataset.val,
                t.dataset.train, run_config.eval_config(CFG))
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["iteration"] for m in metrics] == [0, 1]
    assert all(m["n_objectives"] == 5 and m["hypervolume"] > 0 for m in metrics)
    assert metrics[1]["hypervolume"] >= metrics[0]["hypervolume"] - 0.02


def _dominated(F: np.ndarray, i: int) -> bool:
    return any(np.all(F[j] <= F[i]) and np.any(F[j] < F[i])
               for j in range(len(F)) if j != i)


def test_pick_is_nondominated_and_the_highest_tradeoff(run):
    _, out, summary = run
    arc = json.loads((out / "joint_archive.json").read_text())
    tasks = arc["tasks"]
    F = np.array([[100.0 - e["top1"][t] for t in tasks]
                  + [e["objectives"]["madds"], e["objectives"]["params"]]
                  for e in arc["entries"]])
    p = summary["pick"]
    assert not _dominated(F, p)
    assert all(not _dominated(F, i) for i in summary["front"])
    assert sorted(summary["front"]) == [i for i in range(len(F))
                                        if not _dominated(F, i)]
    t = np.array(summary["tradeoff"])
    assert summary["front"][int(np.argmax(t))] == p
    res = summary["outlier_test"]
    rest = np.delete(t, np.argmax(t))
    assert res["passes"] == bool(t.max() > rest.mean() + 3 * rest.std())


def test_plots_and_report_are_written(run):
    _, out, summary = run
    for name in ["pcp.png"] + [f"scatter_{t}.png" for t in summary["tasks"]]:
        with Image.open(out / name) as im:
            assert im.size[0] > 200 and im.size[1] > 200
    report = (out / "report.md").read_text()
    assert "mu + 3 sigma" in report and "| task0 | 2 |" in report
    for row in summary["comparison"]:   # the single-task subnet costs <= 1.1 x
        assert row["single_task"]["madds"] <= 1.1 * row["pick_madds"] + 1e-9


def test_rerun_resumes_without_measuring_and_other_settings_are_refused(
        run, monkeypatch):
    tasks, out, summary = run

    def fail(*a, **k):
        raise AssertionError("a finished run measured again")

    monkeypatch.setattr(evaluation, "evaluate_subnets", fail)
    assert multitask.run_joint_search(tasks, _config(), out)["pick"] == summary["pick"]
    with pytest.raises(ValueError, match="holds a different many-task search.*seed"):
        multitask.run_joint_search(tasks, _config(seed=1), out)


def test_mismatched_space_is_a_one_line_error(specs, tmp_path):
    other = dataclasses.replace(ss.SearchSpace.tiny(), resolutions=(40,))
    bad = _supernet(tmp_path / "sn", other, 2, 0)
    ds = specs.split(",")[0].split("=")[1]
    with pytest.raises(ValueError) as err:
        multitask.load_tasks(f"{specs},{bad}={ds}", CFG)
    msg = str(err.value)
    assert "\n" not in msg and "another search space" in msg and "resolutions" in msg


@pytest.mark.parametrize("text,msg", [
    ("madds,top1_error", "must start with top1_error"),
    ("top1_error", "complexity objectives"),
    ("top1_error,madds,madds", "complexity objectives"),
])
def test_bad_objectives_are_one_line_errors(text, msg):
    with pytest.raises(ValueError, match=msg):
        multitask.joint_objective_names(text, ("a", "b"))


def test_objective_names_expand_top1_error_per_task():
    names, rest = multitask.joint_objective_names("top1_error,madds", ("a", "b"))
    assert names == ("top1_error:a", "top1_error:b", "madds") and rest == ("madds",)


def test_task_list_errors():
    with pytest.raises(ValueError, match="listed twice"):
        multitask.parse_tasks("a=x,a=y")
    with pytest.raises(ValueError, match="at least 2 tasks"):
        multitask.load_tasks("a=x", CFG)


def test_cli_refuses_a_missing_task_in_one_line(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run(
        [sys.executable, "-m", "experiments.search",
         f"--supernet_dir={tmp_path}/a,{tmp_path}/b", f"--output={tmp_path}/o"],
        capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "does not exist" in out.stderr and len(out.stderr.strip().split("\n")) == 1


def test_joint_config_takes_the_transfer_config_and_the_overrides():
    c = multitask.joint_config(CFG, "top1_error,madds", evaluate=3, pop_size=10,
                               iterations=2)
    assert (c.search.n_candidates, c.search.pop_size, c.iterations) == (3, 10, 2)
    assert c.search.generations == CFG.search.generations
    assert c.archive_init == CFG.search.archive_init
    assert c.tradeoff == run_config.high_tradeoff_kwargs(CFG.final)
    assert multitask.joint_config(CFG, "top1_error,madds",
                                  evaluate=10 ** 6).search.n_candidates == (
        CFG.search.pop_size)
    with pytest.raises(ValueError, match="--archive_init=-1 is invalid"):
        multitask.joint_config(CFG, "top1_error,madds", archive_init=-1)


def test_a_first_task_without_config_json_is_refused_in_one_line(specs):
    """The settings come from the first task's config.json: a bare supernet
    set first is refused (never searched with some built-in config)."""
    with pytest.raises(ValueError, match="has no config.json") as err:
        multitask.search_supernets(specs, "top1_error,madds")
    assert "\n" not in str(err.value)
