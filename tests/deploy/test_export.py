"""Export: self-contained subnet checkpoints, StableHLO and ONNX artifacts."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nat_jax.deploy import export, latency
from nat_jax.model import subnet as subnet_lib
from nat_jax.space import search_space as ss

SPACE = ss.SearchSpace.tiny()
ARCH = SPACE.decode([0, 0, 4, 7, 5, 9])  # r32, SE in stage 2, one residual block


@pytest.fixture(scope="module")
def net():
    model = subnet_lib.subnet_module(SPACE, ARCH, 10, dropout_rate=0.2)
    x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    variables = latency.random_variables(model, x, seed=1)
    images = np.random.default_rng(0).standard_normal((5, 32, 32, 3))
    images = images.astype(np.float32)
    logits = np.asarray(jax.jit(lambda v, x: model.apply(v, x))(variables, images))
    return model, variables, images, logits


@pytest.mark.slow
def test_subnet_dir_roundtrip(net, tmp_path):
    model, variables, images, logits = net
    cfg = subnet_lib.net_config(model, ARCH)
    d = str(tmp_path / "sub")
    export.save_subnet(d, model, variables, cfg, ARCH, SPACE, extra={"note": "x"})
    assert export.is_subnet_dir(d) and not export.is_subnet_dir(str(tmp_path))
    m2, v2, cfg2 = export.load_subnet(d)
    assert cfg2 == json.loads(json.dumps(cfg))
    got = np.asarray(jax.jit(lambda v, x: m2.apply(v, x))(v2, images))
    np.testing.assert_allclose(got, logits, rtol=1e-6, atol=1e-6)
    arch, space, meta = export.load_info(d)
    assert arch == ARCH and space == SPACE and meta["extra"] == {"note": "x"}
    with open(os.path.join(d, export.NET_CONFIG_FILE)) as f:
        assert ss.Arch.from_net_config(json.load(f), SPACE) == ARCH
    with open(os.path.join(d, export.NET_SUBNET_FILE)) as f:
        assert ss.Arch.from_nat_subnet(json.load(f), SPACE) == ARCH
    assert export.count_params(v2) == export.count_params(variables)
    with pytest.raises(ValueError, match="already holds"):
        export.save_subnet(d, model, variables, cfg, ARCH, SPACE)


def test_load_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        export.load_subnet(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="not a nat-jax checkpoint"):
        export.load_subnet(str(tmp_path))
    bad = tmp_path / "bad.stablehlo"
    bad.write_bytes(b"not flatbuffers")
    with pytest.raises(ValueError):
        export.load_stablehlo(str(bad))
    with pytest.raises(ValueError, match="No StableHLO"):
        export.load_stablehlo(str(tmp_path / "none.stablehlo"))


@pytest.mark.slow
def test_stablehlo_roundtrip_symbolic_batch(net, tmp_path):
    model, variables, images, logits = net
    path = str(tmp_path / export.STABLEHLO_FILE)
    export.export_stablehlo(model, variables, 32, path)
    fn = export.load_stablehlo(path)
    np.testing.assert_allclose(np.asarray(fn(images)), logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(fn(images[:2])), logits[:2], rtol=1e-5,
                               atol=1e-5)


@pytest.mark.slow
def test_onnx_roundtrip(net, tmp_path):
    pytest.importorskip("jax2onnx", reason="optional: " + export.ONNX_INSTALL)
    pytest.importorskip("onnxruntime", reason="optional: " + export.ONNX_INSTALL)
    model, variables, images, logits = net
    path = str(tmp_path / export.ONNX_FILE)
    export.export_onnx(model, variables, 32, path)
    np.testing.assert_allclose(export.run_onnx(path, images), logits, rtol=1e-4,
                               atol=1e-4)


def test_onnx_recipe_pins_what_the_error_names():
    """requirements-onnx.txt and the install hint of the errors list the same
    pins, sympy and mpmath included (issue 18 item 8: onnx-ir imports sympy)."""
    root = pathlib.Path(__file__).resolve().parents[2]
    pins = [line.split("#")[0].strip() for line in
            (root / "requirements-onnx.txt").read_text().splitlines()]
    pins = [p for p in pins if p]
    assert {p.split("==")[0] for p in pins} >= {"jax2onnx", "onnx", "onnx-ir",
                                                 "onnxruntime", "sympy", "mpmath"}
    for p in pins:
        assert "==" in p and p in export.ONNX_INSTALL, p


@pytest.mark.slow
def test_onnx_error_names_the_missing_module(tmp_path):
    """With sympy absent, the error names sympy, not jax2onnx (issue 18 item 8).

    A subprocess, so that the blocked import cannot touch this process's modules.
    """
    pytest.importorskip("jax2onnx", reason="optional: " + export.ONNX_INSTALL)
    code = ("import sys\n"
            "for m in [m for m in sys.modules if m.split('.')[0] == 'sympy']:\n"
            "    del sys.modules[m]\n"
            "sys.modules['sympy'] = None\n"
            "from nat_jax.deploy import export\n"
            "try:\n"
            "    export.export_onnx(None, None, 32, 'unused.onnx')\n"
            "except ValueError as err:\n"
            "    print('ERROR', err)\n")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    root = pathlib.Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                         text=True, cwd=tmp_path, env={
                             **env, "PYTHONPATH": str(root)}, timeout=600)
    (line,) = [x for x in out.stdout.splitlines() if x.startswith("ERROR")]
    assert "module 'sympy'" in line and "requirements-onnx.txt" in line, line
    assert "sympy==" in line
