"""Export a subnet for deployment: a self-contained checkpoint and StableHLO.

A subnet directory (written by `save_subnet`) needs no supernet:

    DIR/metadata.json   {"kind": "nat_jax.Subnet", "net_config", "arch", "space",
                         "num_classes", "resolution", ...extra}
    DIR/state/          orbax pytree {"params", "batch_stats"}
    DIR/net.config      OFA-style net.config JSON (also inside metadata.json)
    DIR/net.subnet      NAT's compact net.subnet JSON of the architecture

    model, variables, net_config = export.load_subnet(DIR)
    logits = model.apply(variables, images_nhwc)        # float32[N, classes]

`export_stablehlo` serialises the jitted eval-mode forward with `jax.export`
(weights embedded as constants, batch dimension symbolic by default);
`load_stablehlo` deserialises it into a callable that needs only jax.

Extraction from a supernet set (one supernet per width multiplier, NAT
section 3.2: the genotype's second gene is the width; `nat_jax.model.supernet_set`)
takes the width from the subnet: `extract_from_set(DIR, arch)` reads only the
supernet of `arch.width` (a transfer workdir, its `supernet/` folder or one
width's supernet dir), and `set_space(DIR)` is the search space that DIR's
genotypes (archive, picks) are written in: the supernets' space with the
set's widths.
`export_onnx` writes ONNX through the optional `jax2onnx` package
(requirements-onnx.txt; README, "Deployment"); `run_onnx` runs it with
onnxruntime. A missing module of that extra is named in the error.
TFLite is not produced (it needs TensorFlow, which is not installed here).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import export as jax_export

from nat_jax.model import cpu_kernels
from nat_jax.model import subnet as subnet_lib
from nat_jax.runtime import checkpoint
from nat_jax.space import search_space as ss

KIND = "nat_jax.Subnet"
NET_CONFIG_FILE = "net.config"
NET_SUBNET_FILE = "net.subnet"
STABLEHLO_FILE = "model.stablehlo"


def save_subnet(directory: str, model: subnet_lib.Subnet, variables: Mapping,
                net_config: Mapping, arch: ss.Arch, space: ss.SearchSpace,
                extra: Mapping[str, Any] | None = None) -> None:
    """Writes a self-contained subnet directory (see module docstring).

    Args:
      directory: a new directory (ValueError if it already holds a checkpoint).
      model: the static `subnet.Subnet`.
      variables: {"params", "batch_stats"} of `model`.
      net_config: its OFA-style net.config (from `subnet.extract_subnet`).
      arch: the architecture (for MAdds/params and encodings).
      space: the search space `arch` belongs to.
      extra: JSON-able facts to keep (dataset, accuracy, training config...).
    """
    meta = {
        "kind": KIND,
        "net_config": dict(net_config),
        "arch": dataclasses.asdict(arch),
        "space": space.to_json(),
        "num_classes": int(model.num_classes),
        "resolution": int(arch.resolution),
        "extra": dict(extra or {}),
    }
    tree = {"params": variables["params"], "batch_stats": variables["batch_stats"]}
    checkpoint.save_pytree(directory, tree, meta)
    with open(os.path.join(directory, NET_CONFIG_FILE), "w") as f:
        json.dump(net_config, f, indent=1)
    with open(os.path.join(directory, NET_SUBNET_FILE), "w") as f:
        json.dump(arch.to_nat_subnet(space), f)


def is_subnet_dir(directory: str) -> bool:
    """Whether `directory` holds a `save_subnet` checkpoint."""
    try:
        return checkpoint.load_metadata(directory).get("kind") == KIND
    except ValueError:
        return False


def load_info(directory: str) -> tuple[ss.Arch, ss.SearchSpace, dict]:
    """(arch, space, metadata) of a subnet directory, without loading weights."""
    meta = checkpoint.load_metadata(directory)
    if meta.get("kind") != KIND:
        raise ValueError(f"{directory} does not hold an exported subnet (kind="
                         f"{meta.get('kind')!r}; expected {KIND!r}).")
    space = ss.SearchSpace.from_json(meta["space"])
    a = meta["arch"]
    arch = ss.Arch.from_ofa(a["ks"], a["e"], a["d"], a["resolution"], a["width"],
                            space)
    return arch, space, meta


def load_subnet(directory: str, depthwise_impl: str | None = None
                ) -> tuple[subnet_lib.Subnet, dict, dict]:
    """(model, variables, net_config) of a subnet directory; no supernet needed.

    Args:
      directory: written by `save_subnet` (e.g. `experiments.finetune`'s
        WORKDIR/model).
      depthwise_impl: "conv" | "shift" | None (per backend).

    Raises:
      ValueError: not a subnet directory, or damaged files.
    """
    _, _, meta = load_info(directory)
    net_config = meta["net_config"]
    model = subnet_lib.subnet_from_config(net_config, depthwise_impl=depthwise_impl)
    r = int(meta["resolution"])
    x = jax.ShapeDtypeStruct((1, r, r, 3), jnp.float32)
    shapes = jax.eval_shape(lambda k: model.init(k, x), jax.random.key(0))
    target = {"params": shapes["params"], "batch_stats": shapes["batch_stats"]}
    tree, _ = checkpoint.load_pytree(directory, target)
    return model, dict(tree), net_config


def count_params(variables: Mapping) -> int:
    """Number of trainable parameters (BN statistics excluded)."""
    return int(sum(np.size(v) for v in jax.tree.leaves(variables["params"])))


# ------------------------------------------------------------------ StableHLO
def export_stablehlo(model: subnet_lib.Subnet, variables: Mapping, resolution: int,
                     path: str | None = None, batch_size: int | None = None,
                     platforms: Sequence[str] | None = None) -> jax_export.Exported:
    """Serialises the eval-mode forward `images -> logits` with `jax.export`.

    The weights are embedded as constants, so the artifact is self-contained.

    Args:
      model, variables: the subnet.
      resolution: input side R; the input is float32[B, R, R, 3] (NHWC,
        ImageNet-normalised as `nat_jax.data.augment.to_network_input` does).
      path: where to write the serialised bytes (None: do not write).
      batch_size: a fixed batch size, or None for a symbolic batch dimension.
      platforms: lowering platforms, e.g. ("cpu", "cuda"); None = current.

    Returns:
      The `jax.export.Exported` object.
    """
    variables = {"params": variables["params"],
                 "batch_stats": variables["batch_stats"]}
    fn = jax.jit(lambda x: model.apply(variables, x, train=False))
    if batch_size is None:
        (batch,) = jax_export.symbolic_shape("batch")
    else:
        batch = int(batch_size)
    spec = jax.ShapeDtypeStruct((batch, resolution, resolution, 3), jnp.float32)
    try:
        with cpu_kernels.disabled():  # portable ops only (no local library)
            exp = jax_export.export(fn, platforms=platforms)(spec)
    except ImportError as err:  # pragma: no cover - missing optional dependency
        raise ValueError(f"jax.export needs an extra package: {err}") from None
    if path is not None:
        data = _serialize(exp)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
    return exp


def _serialize(exp: jax_export.Exported) -> bytearray:
    try:
        return exp.serialize()
    except ImportError as err:
        raise ValueError(f"Serialising a jax.export artifact needs the "
                         f"'flatbuffers' package (pip install flatbuffers): "
                         f"{err}") from None


def load_stablehlo(path: str) -> Callable[[jax.Array], jax.Array]:
    """A callable `images float32[B, R, R, 3] -> logits` from `export_stablehlo`."""
    if not os.path.isfile(path):
        raise ValueError(f"No StableHLO artifact at {path}.")
    with open(path, "rb") as f:
        data = bytearray(f.read())
    try:
        exp = jax_export.deserialize(data)
    except ImportError as err:
        raise ValueError(f"Reading a jax.export artifact needs the 'flatbuffers' "
                         f"package: {err}") from None
    except Exception as err:  # noqa: BLE001 - flatbuffers raises many types
        raise ValueError(f"{path} is not a serialised jax.export artifact: "
                         f"{type(err).__name__}: {str(err)[:200]}") from None
    return exp.call


# ----------------------------------------------------------------------- ONNX
ONNX_FILE = "model.onnx"
ONNX_INSTALL = ("pip install --no-deps -r requirements-onnx.txt, i.e. pip install "
                "--no-deps jax2onnx==0.17.1 onnx==1.23.2 onnx-ir==1.1.0 "
                "onnxruntime==1.32.0 sympy==1.14.0 mpmath==1.3.0 (--no-deps: "
                "jax2onnx pins an older orbax-checkpoint than nat-jax uses; the "
                "converter does not need it)")


def _onnx_import_error(what: str, err: ImportError) -> ValueError:
    """A one-line error naming the module that failed to import."""
    name = getattr(err, "name", None) or "?"
    return ValueError(f"{what} needs the Python module {name!r}, which did not "
                      f"import ({type(err).__name__}: {err}); install the ONNX "
                      f"extra: {ONNX_INSTALL}.")


def export_onnx(model: subnet_lib.Subnet, variables: Mapping, resolution: int,
                path: str, batch_size: int | None = None) -> None:
    """Writes the eval-mode forward as an ONNX model (weights embedded).

    Depthwise convolutions are exported as grouped `Conv` (the module is
    cloned with depthwise_impl="conv"). Needs the optional `jax2onnx`.

    Args:
      batch_size: fixed batch size, or None for a symbolic "B".
    """
    try:
        from jax2onnx import to_onnx
    except ImportError as err:
        raise _onnx_import_error("ONNX export", err) from None
    model = model.clone(depthwise_impl="conv")
    variables = {"params": variables["params"],
                 "batch_stats": variables["batch_stats"]}

    def forward(x):
        return model.apply(variables, x, train=False)

    b = "B" if batch_size is None else int(batch_size)
    proto = to_onnx(forward, [(b, resolution, resolution, 3)], return_mode="proto")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        f.write(proto.SerializeToString())


def run_onnx(path: str, images: np.ndarray) -> np.ndarray:
    """Logits of an exported ONNX model with onnxruntime (CPU)."""
    try:
        import onnxruntime as ort
    except ImportError as err:
        raise _onnx_import_error("Running ONNX", err) from None
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return sess.run(None, {name: np.asarray(images, np.float32)})[0]
