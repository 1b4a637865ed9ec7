"""`python -m experiments.describe`: output and one-line errors."""

import json
import re
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


def test_describe_tiny_space_subnet_by_its_printed_form():
    # 40 px (resolution index 1), width index 0, layer genes 9, 0, 4, 2.
    out = _run("--space=tiny", "--arch=0109042", "--num_classes=10")
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    assert d["encoding"] == "0109042" and d["genotype"] == [1, 0, 9, 0, 4, 2]
    assert d["resolution"] == 40 and d["depth_per_stage"] == [1, 2]
    assert d["ks"] == [7, 3, 3, 5] and d["e"] == [6, 3, 4, 3]  # skipped: smallest



def test_describe_at_another_input_resolution():
    # OFA publishes subnets run at 160 px, outside the search's 192..256.
    d = json.loads(_run(f"--arch={NAT_M1}", "--resolution=160").stdout)
    full = json.loads(_run(f"--arch={NAT_M1}").stdout)
    assert d["resolution"] == 160 and d["encoding"] == NAT_M1
    assert d["params"] == full["params"] and d["madds"] < full["madds"]


@pytest.mark.parametrize("args,msg", [
    (["--arch=123"], "23 digits"),
    (["--arch=missing.json"], "neither an encoding nor a file"),
    (["--arch=[0, 0, 1]"], "22 integers"),
    (["--arch=0109042"],
     r"23 digits.*got '0109042' \(it is a subnet of --space=tiny\)"),
    (["--space=tiny", "--arch=1854"], "7 digits"),
    (["--space=big", "--arch=0109042"], "space"),
    ([f"--arch={NAT_M1}", "--resolution=0"], "--resolution must be positive"),
])
def test_describe_errors_are_one_line_exit_2(args, msg):
    out = _run(*args)
    assert out.returncode == 2
    assert re.search(msg, out.stderr) and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
