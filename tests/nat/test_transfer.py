"""NAT end to end on the embedded data: files, archive update, resume, errors.

Both archive-update modes run end to end: "paper" (Algorithm 1 line 11, a
working archive of size N) and "authors" (K candidates per iteration).

Runs `python -m experiments.transfer` in subprocesses (one CPU device each)
sharing a persistent compilation cache, so only the first run compiles.
"""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from experiments.configs import transfer as transfer_cfg
from nat_jax.model import supernet_set
from nat_jax.nat import run_config
from nat_jax.search import tradeoff

# Slow: whole runs or expensive shared fixtures (over ~30 s on 2 cores).
pytestmark = pytest.mark.slow

ROOT = pathlib.Path(__file__).resolve().parents[2]
CONFIG = f"--config={ROOT / 'experiments' / 'configs' / 'transfer.py'}:test"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    cache = os.environ.get("JAX_COMPILATION_CACHE_DIR") or str(
        tmp_path_factory.mktemp("jax_cache"))
    e = {k: v for k, v in os.environ.items() if not k.startswith("XLA_")}
    e.update(JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=cache,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    e.pop("JAX_NUM_CPU_DEVICES", None)
    return e


def _transfer(env, workdir, *flags, kill_at=None, timeout=900):
    e = dict(env)
    if kill_at:
        e["NAT_JAX_KILL_AT"] = kill_at
    return subprocess.run(
        [sys.executable, "-m", "experiments.transfer", CONFIG,
         f"--workdir={workdir}", *flags],
        capture_output=True, text=True, timeout=timeout, env=e, cwd=ROOT)


MODES = {"paper": [],
         "authors": ["--config.search.archive_update=authors",
                     "--config.search.predictor_train_size=0"]}


@pytest.fixture(scope="module")
def run_of(env, tmp_path_factory):
    """mode -> the workdir of one uninterrupted run (each run once)."""
    done = {}

    def get(mode):
        if mode not in done:
            workdir = tmp_path_factory.mktemp(f"nat_{mode}") / "run"
            out = _transfer(env, workdir, *MODES[mode])
            assert out.returncode == 0, out.stderr[-3000:]
            done[mode] = workdir
        return done[mode]
    return get


@pytest.fixture
def full_run(run_of):
    return run_of("paper")


def _archive(workdir):
    return json.loads((workdir / "archive.json").read_text())["entries"]


def _working(workdir):
    obj = json.loads((workdir / "archive.json").read_text())
    return {int(t): v for t, v in obj["working"].items()}


@pytest.mark.parametrize("mode", list(MODES))
def test_complete_run_writes_everything(run_of, mode):
    full_run = run_of(mode)
    c = transfer_cfg.get_config("test")
    for name in ("config.json", "archive.json", "metrics.jsonl", "report.md",
                 "result.json", "progress.json", "plots/front_final.png",
                 "plots/front_iter_00.png", "plots/front_iter_01.png"):
        assert (full_run / name).is_file(), name
    assert list((full_run / "tensorboard").glob("events.out.tfevents.*"))
    entries = _archive(full_run)
    working = _working(full_run)
    metrics = [json.loads(line) for line in
               (full_run / "metrics.jsonl").read_text().splitlines()]
    assert sorted(working) == list(range(c.search.iterations + 1))
    for m in metrics:  # phase seconds, their compiles, evaluation rate
        t = m["times_s"]
        assert {"adapt", "adapt_compile", "evaluate", "evaluate_new"} <= set(t)
        assert 0 < t["evaluate_s_per_subnet"] <= t["evaluate"] + t["evaluate_new"]
    final = working[c.search.iterations]
    space = run_config.run_space(c)
    smallest = list(np.asarray(space.encode(space.min_arch(
        resolution=space.resolutions[0]))))
    if mode == "authors":
        # Initial archive: uniform samples + min (smallest resolution) + max;
        # then K per iteration, and the working archive is the whole history.
        n0 = c.search.archive_init + 2
        assert [e["iteration"] for e in entries] == (
            [0] * n0 + [1] * c.search.n_candidates
            + [2] * c.search.n_candidates)
        assert entries[n0 - 2]["genes"] == smallest
        for t, idx in working.items():
            assert idx == list(range(n0 + c.search.n_candidates * t))
        assert [m["archive_size"] for m in metrics] == [
            n0 + c.search.n_candidates * (i + 1) for i in range(len(metrics))]
    else:
        # Initial archive: N - 1 uniform samples + the smallest subnet; A stays
        # at N after every iteration and newcomers come from the search.
        N = c.search.archive_size
        assert working[0] == list(range(N)) and entries[N - 1]["genes"] == smallest
        assert all(e["iteration"] == 0 for e in entries[:N])
        for t in range(1, c.search.iterations + 1):
            assert len(working[t]) == N and len(set(working[t])) == N
            new = [i for i in working[t] if entries[i]["iteration"] == t]
            assert new and set(working[t]) - set(new) <= set(working[t - 1])
            assert all(entries[i]["predicted_top1"] is not None for i in new)
        assert [m["archive_size"] for m in metrics] == [N] * len(metrics)
        assert [m["history_size"] for m in metrics][-1] == len(entries)
    # Eq. 3 counted the working archive of each round (entropy by hand).
    for m in metrics:
        genes = np.array([entries[i]["genes"] for i in working[m["iteration"]]])
        assert m["eq3_count"] == len(genes)
        h = 0.0
        for col in genes.T:
            _, counts = np.unique(col, return_counts=True)
            p = counts / len(col)
            h -= float(np.sum(p * np.log(p)))
        assert m["eq3_entropy"] == pytest.approx(h, rel=1e-5, abs=1e-6)
    # Every member of the final A is measured with the final weights.
    assert {entries[i]["version"] for i in final} == {c.search.iterations}
    entries = [entries[i] for i in final]
    top1 = np.array([e["top1"] for e in entries])
    assert np.all((top1 > 0) & (top1 <= 100)) and len(set(top1.tolist())) > 2
    # Accuracies are measured on 800 validation images: multiples of 1/8 %.
    np.testing.assert_allclose(top1 * 8, np.round(top1 * 8), atol=1e-6)
    assert [m["iteration"] for m in metrics] == list(range(c.search.iterations))
    result = json.loads((full_run / "result.json").read_text())
    assert result["working_archive"] == final
    F = np.array([[100 - e["top1"], e["objectives"]["madds"]] for e in entries])
    front = np.searchsorted(final, result["front"])
    assert np.all(np.asarray(final)[front] == result["front"])
    assert np.all(tradeoff.nondominated(F[front]))
    assert set(np.flatnonzero(tradeoff.nondominated(F))) <= set(front)
    assert set(result["picks"]) <= set(result["front"])
    # One supernet per width (Sec. 3.2: the width gene is searched), both
    # in supernet/, and members of both widths were measured.
    supernets = supernet_set.load_all(full_run / "supernet")
    assert sorted(supernets) == [1.0, 1.2] == list(space.widths)
    for w, (model, variables) in supernets.items():
        assert model.num_classes == 10 and model.width == w
        assert "params" in variables
    everyone = _archive(full_run)
    assert {e["width"] for e in everyone} == {1.0, 1.2}
    for m in metrics:   # members of A per width (gene 2) by hand
        ws = [everyone[i]["genes"][1] for i in working[m["iteration"] + 1]]
        assert m["width_counts"] == {"1.0": ws.count(0), "1.2": ws.count(1)}
    report = (full_run / "report.md").read_text()
    assert "## Selected subnets" in report
    assert "Appendix F outlier test: " in report
    assert (result["outlier_test"] is None) == (len(result["front"]) < 2)


@pytest.mark.parametrize("mode", list(MODES))
def test_killed_runs_resume_to_the_same_result(env, run_of, tmp_path, mode):
    full_run = run_of(mode)
    flags = MODES[mode]
    workdir = tmp_path / "run"
    # SIGKILL during the warm-up adaptation (after step 6; checkpoint at 4) ...
    out = _transfer(env, workdir, *flags, kill_at="adapt:6")
    assert out.returncode == -9, out.stderr[-2000:]
    assert not (workdir / "metrics.jsonl").exists()
    # ... then during the re-evaluation of iteration 1's archive ...
    out = _transfer(env, workdir, *flags, kill_at="evaluate:3")
    assert out.returncode == -9, out.stderr[-2000:]
    versions = [e["version"] for e in _archive(workdir)]
    assert versions.count(2) == 3 and 1 in versions
    # ... and finish.
    out = _transfer(env, workdir, *flags)
    assert out.returncode == 0, out.stderr[-3000:]
    assert _archive(workdir) == _archive(full_run)
    assert _working(workdir) == _working(full_run)
    resumed = supernet_set.load_all(workdir / "supernet")
    uninterrupted = supernet_set.load_all(full_run / "supernet")
    assert sorted(resumed) == sorted(uninterrupted) == [1.0, 1.2]
    for w in resumed:   # both widths' weights, bit for bit
        a, b = _leaves(resumed[w][1]), _leaves(uninterrupted[w][1])
        assert len(a) == len(b)
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
    # A finished run is not repeated.
    out = _transfer(env, workdir, *flags)
    assert out.returncode == 0 and "Adaptation round" not in out.stderr


def _leaves(tree):
    import jax
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_search_adapted_supernet_for_new_objective(env, full_run, tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "experiments.search", f"--supernet_dir={full_run}",
         "--objectives=top1_error,params", "--constraints=madds<=0.6",
         "--evaluate=3", "--generations=2", f"--output={tmp_path}"],
        capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["objectives"] == ["top1_error", "params"] and summary["front"]
    front = json.loads((tmp_path / "front.json").read_text())["entries"]
    assert all(e["top1"] is not None for e in front)
    assert (tmp_path / "front.png").is_file()
    from nat_jax.nat import run_config
    from nat_jax.space import objectives
    space = run_config.run_space(transfer_cfg.get_config("test"))
    madds = objectives.madds(space, np.array([e["genes"] for e in front]), 10)
    assert np.all(madds <= 0.6e6)


@pytest.mark.parametrize("flags,msg", [
    (["--dataset=no_such_dataset"], "Unknown dataset"),
    (["--objectives=top1_error,flops"], "Unknown objective 'flops'"),
    (["--objectives=madds,top1_error"], "must start with top1_error"),
    (["--supernet=/nonexistent/ofa"], "convert_ofa"),
])
def test_bad_flags_fail_fast_with_one_line(env, tmp_path, flags, msg):
    out = _transfer(env, tmp_path / "w", *flags, timeout=120)
    assert out.returncode == 2, out.stderr[-2000:]
    assert msg in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "w").exists()   # checked before anything is written


def test_workdir_of_another_run_is_refused(env, full_run):
    out = _transfer(env, full_run, "--seed=1", timeout=120)
    assert out.returncode == 2
    assert "holds a different run" in out.stderr and "seed" in out.stderr


def test_supernet_flag_accepts_official_pth_and_checks_width(tmp_path):
    import dataclasses

    import jax
    import torch

    from nat_jax.nat import task_supernet
    from nat_jax.space import search_space as ss
    from tests import ofa_oracle

    sd = ofa_oracle.legacy_state_dict(ofa_oracle.build(1.0, n_classes=1000))
    path = tmp_path / "ofa_mbv3_d234_e346_k357_w1.0"
    torch.save({"state_dict": sd}, path)
    space = dataclasses.replace(ss.OFA_MBV3, widths=(1.0,), resolutions=(192, 224))
    model, variables = task_supernet.load_for_task(str(path), space, 47,
                                              jax.random.key(0), 0.1)
    assert model.num_classes == 47 and model.space == space
    assert variables["params"]["classifier_kernel"].shape == (1280, 47)
    wide = dataclasses.replace(space, widths=(1.2,))
    with pytest.raises(ValueError, match="width"):
        task_supernet.load_for_task(str(path), wide, 47, jax.random.key(0), 0.1)


# ------------------------------------------------------ config and workdir
def _flat_fields(config):
    from nat_jax.runtime import workdir as workdir_lib
    return set(workdir_lib.flatten(config.to_dict())) - {"baselines"}


@pytest.mark.parametrize("variant", ["tiny", "paper", "test"])
def test_every_config_field_is_validated(variant):
    from nat_jax.nat import run_config
    c = transfer_cfg.get_config(variant)
    assert _flat_fields(c) == set(run_config.FIELDS)
    run_config.validate(c, num_devices=1)


@pytest.mark.parametrize("field,value,msg", [
    ("adapt.batch_size", 0, "integer >= 1"),
    ("search.iterations", 0, "integer >= 1"),
    ("eval.batch_size", 0, "integer >= 1"),
    ("search.sample_fraction", 0.0, "(0.0, 1.0]"),
    ("adapt.momentum", 1.0, "[0.0, 1.0)"),
    ("adapt.nesterov", 1, "true or false"),
    ("adapt.exec_mode", "scan", "one of ['masked', 'switch']"),
    ("final.tradeoff_variant", "max", "one of ['paper', 'authors', 'all']"),
    ("space", "mbv2", "one of ['ofa_mbv3', 'tiny', 'small']"),
    ("search.archive_update", "grow", "one of ['paper', 'authors']"),
    ("search.predictor_train_size", 2, "needs >= 3 subnets"),
    ("reset_classifier", 1, "true or false"),
    ("search.n_candidates", 9, "<= search.pop_size=8"),
    ("adapt.lr_end", 0.5, "<= adapt.lr=0.05"),
    ("widths", (1.5,), "not widths of the tiny space"),
    ("widths", "one", "a tuple of numbers"),
    ("widths", (-1.0,), "give positive width multipliers"),
    ("resolutions", (30,), "[30], not resolutions"),
    ("objectives", "top1_error,madds,madds", "Repeated objective"),
    ("latency_table", "/no/table.json", "Latency table /no/table.json not found"),
])
def test_validate_names_the_bad_field(field, value, msg):
    import ml_collections

    from nat_jax.nat import run_config
    d = transfer_cfg.get_config("test").to_dict()   # as read from config.json
    node = d
    *path, last = field.split(".")
    for p in path:
        node = node[p]
    node[last] = value
    c = ml_collections.ConfigDict(d)
    with pytest.raises(ValueError) as err:
        run_config.validate(c, num_devices=1)
    assert msg in str(err.value) and "\n" not in str(err.value)


def test_batch_must_split_over_devices():
    from nat_jax.nat import run_config
    with pytest.raises(ValueError, match="multiple of the 3 devices"):
        run_config.validate(transfer_cfg.get_config("test"), num_devices=3)


def test_config_names_run_through_to_the_library():
    """Each config field becomes the library argument of the same name."""
    import dataclasses

    from nat_jax.nat import run_config
    c = transfer_cfg.get_config("paper")
    with c.unlocked():
        c.search.update(pop_size=42, generations=7, crossover_prob=0.3,
                        mutation_prob=0.2, mutation_eta=3.5, n_members=11,
                        sample_fraction=0.6, feature_fraction=0.4, n_candidates=5,
                        pad_multiple=16)
        c.adapt.update(lr=0.2, lr_end=0.01, momentum=0.5, nesterov=False,
                       weight_decay=1e-3, label_smoothing=0.2, floor=0.3,
                       checkpoint_every=17)
        c.eval.update(batch_size=12, calib_images=34, calib_batch_size=6,
                      subnets_per_call=2, cache_bytes=99)
        c.seed = 4
    outer = {"search": {"iterations", "archive_init", "archive_update",
                        "archive_size", "predictor_train_size"},
             "adapt": {"epochs_per_iter", "warmup_epochs", "batch_size",
                       "dropout_rate", "max_steps_per_epoch"},
             "eval": set()}
    built = {"search": run_config.search_config(c.search),
             "adapt": run_config.adapt_config(c.adapt),
             "eval": run_config.eval_config(c)}
    for block, obj in built.items():
        names = set(c[block]) - outer[block]
        assert names <= {f.name for f in dataclasses.fields(obj)}, block
        for name in names:
            assert getattr(obj, name) == c[block][name], (block, name)
    assert built["eval"].calib_seed == 4
    kw = run_config.high_tradeoff_kwargs(c.final)
    assert kw == {"n_neighbors": None, "variant": "paper", "epsilon": 0.125}


def _image_folder(root, n=6):
    from PIL import Image
    for c, colour in (("cat", (200, 10, 10)), ("dog", (10, 10, 200))):
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (8, 8), colour).save(root / c / f"{i}.png")
    return root


def test_split_change_is_refused_in_one_line(tmp_path):
    from nat_jax.data import datasets as data
    from nat_jax.nat import transfer
    folder = _image_folder(tmp_path / "images")
    workdir = tmp_path / "w"
    workdir.mkdir()
    transfer.check_split(workdir, data.load(str(folder)))
    recorded = (workdir / "data.json").read_bytes()
    transfer.check_split(workdir, data.load(str(folder)))   # same data: fine
    (folder / "dog" / "3.png").unlink()
    with pytest.raises(ValueError, match="was started on other data") as err:
        transfer.check_split(workdir, data.load(str(folder)))
    assert "\n" not in str(err.value) and "restore the data" in str(err.value)
    assert (workdir / "data.json").read_bytes() == recorded


def test_transfer_on_changed_data_stops_before_any_work(env, tmp_path):
    """A workdir whose data.json records another split: one line, exit 2, the
    workdir untouched (no archive, no checkpoint)."""
    from nat_jax.runtime import workdir as workdir_lib
    workdir = tmp_path / "w"
    workdir_lib.write_json(workdir / "config.json",
                           transfer_cfg.get_config("test").to_dict())
    workdir_lib.write_json(workdir / "data.json", {
        "split_fingerprint": "0" * 64, "sizes": {"train": 1}, "num_classes": 10})
    before = sorted((p.name, p.read_bytes()) for p in workdir.iterdir())
    out = _transfer(env, workdir, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "was started on other data" in errors[0]
    assert "Traceback" not in out.stderr
    assert sorted((p.name, p.read_bytes()) for p in workdir.iterdir()) == before


def test_search_output_folder_is_named_by_objectives_and_constraints():
    from nat_jax.nat import retarget
    names = ("top1_error", "params", "pkg.mod:fn")
    assert retarget.output_name(names, []) == "search_params_pkg.mod-fn"
    assert retarget.output_name(names[:2], retarget.parse_constraints(
        "madds<=0.5")) == "search_params_madds-le-0.5"


def test_shipped_supernet_is_named_from_any_cwd_and_reset(tmp_path, monkeypatch):
    import jax

    from nat_jax.nat import task_supernet
    monkeypatch.chdir(tmp_path)
    path = task_supernet.resolve("pretrained:small_fashion_mnist/w1.0")
    assert pathlib.Path(path) == (ROOT / "nat_jax" / "assets" / "pretrained" /
                                  "small_fashion_mnist" / "w1.0")
    assert task_supernet.resolve("/some/dir") == "/some/dir"
    with pytest.raises(FileNotFoundError, match="no such shipped supernet"):
        task_supernet.resolve("pretrained:imagenet/w1.0")
    c = transfer_cfg.get_config("tiny")
    space = run_config.run_space(c)
    _, kept = task_supernet.load_for_task(path, space, 10, jax.random.key(0), 0.0)
    _, reset = task_supernet.load_for_task(path, space, 10, jax.random.key(0), 0.0,
                                           reset_classifier=True)
    k = "classifier_kernel"
    assert kept["params"][k].shape == reset["params"][k].shape
    assert not np.allclose(kept["params"][k], reset["params"][k])
    body = [n for n in kept["params"] if not n.startswith("classifier")]
    assert body
    for n in body:   # everything but the classifier is the pretrained supernet
        for x, y in zip(jax.tree.leaves(kept["params"][n]),
                        jax.tree.leaves(reset["params"][n])):
            np.testing.assert_array_equal(x, y)
