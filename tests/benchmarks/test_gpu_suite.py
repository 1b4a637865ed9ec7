"""benchmarks/gpu_suite.py at --tiny size on CPU: every field is written.

No assertion on a measured time: only that each figure exists, is a positive
finite number where it is a rate or a duration, and that the JSON and the
Markdown table agree on the fields.
"""

import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest

from benchmarks import gpu_suite

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Slow: whole runs or expensive shared fixtures (over ~30 s on 2 cores).
pytestmark = pytest.mark.slow

_RATES = ("train_img_s_masked", "train_img_s_switch", "eval_img_s_masked",
          "eval_img_s_switch", "eval_subnets_per_min", "search_iteration_s",
          "search_first_call_s", "peak_host_rss_bytes", "wall_s")
_TORCH = ("train_img_s_torch", "eval_img_s_torch", "train_ratio_masked",
          "train_ratio_switch", "eval_ratio_masked", "eval_ratio_switch")


@pytest.mark.slow
def test_tiny_suite_writes_every_field(tmp_path):
    out = str(tmp_path / "suite")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_suite", "--tiny", "--out", out,
         "--budget_s", "400"], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=480)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(os.path.join(out, "gpu_suite.json")) as f:
        r = json.load(f)
    assert set(r) == set(gpu_suite.FIELDS)
    assert r["errors"] == {} and r["skipped"] == []
    assert r["backend"] == "cpu" and r["batch"] == 4 and r["resolution"] == 48
    torch_ok = (importlib.util.find_spec("torch") is not None
                and importlib.util.find_spec("ofa") is not None)
    for k in _RATES + (_TORCH if torch_ok else ()):
        assert isinstance(r[k], (int, float)) and math.isfinite(r[k]) and r[k] > 0, k
    for name in ("masked_train_48", "switch_train_48", "masked_eval_48",
                 "switch_eval_48", "default_train_40"):
        assert r["compile_s_per_resolution"][name] > 0, name
    assert r["eval_subnets"]["subnets"] == 2
    assert set(r["section_seconds"]) == {"supernet", "search", "evaluation",
                                         "compile", "memory"}
    assert os.listdir(os.path.join(out, "jax_cache"))  # persistent cache used
    with open(os.path.join(out, "gpu_suite.md")) as f:
        md = f.read()
    rows = [line.split("|")[1].strip() for line in md.splitlines()
            if line.startswith("| ") and not line.startswith("| field")]
    assert rows == list(gpu_suite.FIELDS)


def test_markdown_lists_missing_figures_as_na():
    r = {k: None for k in gpu_suite.FIELDS}
    r.update(compile_s_per_resolution={"masked_train_224": 12.345},
             load_average_start=[1.0, 2.0, 3.0])
    md = gpu_suite.markdown(r)
    assert "| train_img_s_torch | n/a |" in md
    assert "| compile_s_per_resolution | masked_train_224: 12.3 |" in md
    assert "load average 1, 2, 3 -> n/a" in md
