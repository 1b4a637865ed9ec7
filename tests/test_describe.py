"""`python -m experiments.describe`: output and one-line errors."""

import json
import subprocess
import sys

import pytest

NAT_M1 = "08011001440551052208877"  # NAT-M1's net.encoding


def _run(*args):
    return subprocess.run([sys.executable, "-m", "experiments.describe", *args],
                          capture_output=True, text=True, timeout=120)


def test_describe_nat_m1_from_encoding_and_file(tmp_path):
    out = _run(f"--arch={NAT_M1}")
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    assert d["madds"] == 222_557_600 and d["params"] == 6_067_408
    assert d["depth_per_stage"] == [2, 3, 3, 3, 4] and d["resolution"] == 224
    assert len(d["ks"]) == 20 and d["encoding"] == NAT_M1
    f = tmp_path / "net.subnet"
    f.write_text(json.dumps(d["net_subnet"]))
    d2 = json.loads(_run(f"--arch={f}", "--num_classes=10").stdout)
    assert d2["genotype"] == d["genotype"] and d2["params"] < d["params"]


@pytest.mark.parametrize("arch,msg", [
    ("123", "23 digits"),
    ("missing.json", "neither an encoding nor a file"),
    ("[0, 0, 1]", "22 integers"),
])
def test_describe_errors_are_one_line_exit_2(arch, msg):
    out = _run(f"--arch={arch}")
    assert out.returncode == 2
    assert msg in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
