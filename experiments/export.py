r"""Export a fine-tuned subnet for serving: StableHLO (jax.export) and ONNX.

Usage:
  python -m experiments.export --model_dir=runs/default/finetune_pick0
  python -m experiments.export --model_dir=runs/default/finetune_pick0/model \
      --onnx --batch_size=1

--model_dir is a subnet directory (nat_jax.deploy.export.save_subnet) or a
fine-tuning workdir (its model/): a subnet already extracted from the
supernet of its width (experiments.finetune), so no supernet is read here.
Writes model.stablehlo (and model.onnx) into --output (default: the subnet
directory), reloads each artifact and checks that it reproduces the Flax
logits on random inputs. --resolution sets the
artifacts' input side (default: the subnet's own; any size the network runs).
"""

from __future__ import annotations

import json
import os

from absl import app, flags

from experiments import cli

_MODEL_DIR = flags.DEFINE_string("model_dir", None, "Subnet dir or fine-tune workdir.")
_OUTPUT = flags.DEFINE_string("output", None, "Output directory (default: the "
                              "subnet directory).")
_BATCH = flags.DEFINE_integer("batch_size", None, "Fixed batch size (default: "
                              "symbolic).")
_ONNX = flags.DEFINE_bool("onnx", False, "Also write model.onnx (needs jax2onnx).")
_RESOLUTION = flags.DEFINE_integer("resolution", None, "Input side of the "
                                   "artifacts (default: the subnet's resolution).")
_PLATFORMS = flags.DEFINE_list("platforms", None, "StableHLO lowering platforms, "
                               "e.g. cpu,cuda (default: the current backend).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not _MODEL_DIR.value:
        raise ValueError("--model_dir is required.")
    if _RESOLUTION.value is not None and _RESOLUTION.value < 1:
        raise ValueError(f"--resolution must be >= 1, got {_RESOLUTION.value}.")
    import jax
    import numpy as np

    from nat_jax.deploy import export

    d = _MODEL_DIR.value
    if not export.is_subnet_dir(d) and export.is_subnet_dir(os.path.join(d, "model")):
        d = os.path.join(d, "model")
    model, variables, _ = export.load_subnet(d)
    arch, _, _ = export.load_info(d)
    r = arch.resolution if _RESOLUTION.value is None else _RESOLUTION.value
    out = _OUTPUT.value or d
    x = np.random.default_rng(0).standard_normal((2 if _BATCH.value is None
                                                 else _BATCH.value, r, r, 3))
    x = x.astype(np.float32)
    ref = np.asarray(jax.jit(lambda v, x: model.apply(v, x))(variables, x))
    path = os.path.join(out, export.STABLEHLO_FILE)
    export.export_stablehlo(model, variables, r, path, _BATCH.value,
                            _PLATFORMS.value)
    if _PLATFORMS.value is None:
        got = np.asarray(export.load_stablehlo(path)(x))
        report = {"stablehlo": path, "stablehlo_max_abs_diff":
                  float(np.abs(got - ref).max())}
    else:
        report = {"stablehlo": path}
    if _ONNX.value:
        opath = os.path.join(out, export.ONNX_FILE)
        export.export_onnx(model, variables, r, opath, _BATCH.value)
        report.update(onnx=opath, onnx_max_abs_diff=float(
            np.abs(export.run_onnx(opath, x) - ref).max()))
    print(json.dumps(report))


if __name__ == "__main__":
    cli.run(main)
