"""Preparing datasets on disk (the only code that may download).

tfds datasets are prepared in array_record format, which `nat_jax.data.datasets.load`
reads without TensorFlow; preparing image datasets needs TensorFlow (tfds
encodes images with tf.io) and the network (or tfds's manual_dir). Image-folder
datasets (FGVC Aircraft, CINIC-10) are converted from their official archives
into DATA_DIR/NAME/{train,test}/CLASS/IMAGE.
"""

import importlib.util
import os
import shutil
import socket
import tarfile
import urllib.parse

from nat_jax.data import datasets as data

IMAGENET_MANUAL = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")
_TARBALL = (".tar", ".tar.gz", ".tgz")


def prepare(name: str, data_dir: str | None = None, source: str | None = None) -> str:
    """Prepares dataset `name` under `data_dir`; returns a one-line summary.

    Raises:
      ValueError / DataNotFoundError: one-line messages saying what to do.
    """
    spec = data.get_spec(name)
    data_dir = data_dir or data.default_data_dir()
    if spec.kind == "embedded":
        if source:
            return f"rebuilt {_rebuild_embedded(spec.name, source)}"
        return f"{name} is embedded in the package; nothing to prepare."
    if spec.kind == "folder":
        if spec.name not in CONVERTERS:
            raise ValueError(f"{name} is a custom folder; it needs no preparation.")
        if not source:
            raise ValueError(
                f"{name} has no tfds builder: download it by hand "
                f"({DOWNLOAD_HINTS[name]}) and pass --source=ARCHIVE_OR_FOLDER."
            )
        root = CONVERTERS[name](_extracted(source, data_dir, name),
                                os.path.join(data_dir, name))
    else:
        root = _prepare_tfds(spec, data_dir)
    ds = data.load(spec, data_dir)
    return (f"{name} ready at {root}: train {len(ds.train)}, val {len(ds.val)}, "
            f"test {len(ds.test) if ds.test is not None else 0}.")


def _rebuild_embedded(name: str, source: str) -> str:
    path = os.path.join(data.ASSETS, "build_mini.py")
    spec = importlib.util.spec_from_file_location("_build_mini", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build(name, source)


def _prepare_tfds(spec: data.DatasetSpec, data_dir: str) -> str:
    import tensorflow_datasets as tfds

    builder = tfds.builder(spec.tfds_name, data_dir=data_dir,
                           file_format="array_record")
    if builder.is_prepared():
        return builder.data_dir
    manual_dir = os.path.join(data_dir, "downloads", "manual")
    if spec.tfds_name == "imagenet2012":
        missing = [f for f in IMAGENET_MANUAL
                   if not os.path.exists(os.path.join(manual_dir, f))]
        if missing:
            raise data.DataNotFoundError(
                f"imagenet2012 needs a manual download: put {', '.join(missing)} "
                f"(from image-net.org) in {manual_dir}, then rerun this command."
            )
    if importlib.util.find_spec("tensorflow") is None:
        raise data.DataNotFoundError(
            f"preparing {spec.name} with tfds needs TensorFlow: "
            "`pip install tensorflow-cpu`, then rerun this command (reading the "
            "prepared data does not need it)."
        )
    host = urllib.parse.urlparse(builder.info.homepage or "").hostname
    if spec.tfds_name != "imagenet2012" and not _reachable(host):
        raise data.DataNotFoundError(
            f"cannot reach {host or 'the download host'} to download "
            f"{spec.name}; run this command on a machine with internet access "
            f"and copy {os.path.join(data_dir, spec.tfds_name)} here."
        )
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir)
    )
    return builder.data_dir


def _reachable(host: str | None, timeout: float = 5.0) -> bool:
    if not host:
        return True
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _extracted(source: str, data_dir: str, name: str) -> str:
    """`source` itself if a folder, else the folder a tarball extracts into."""
    if os.path.isdir(source):
        return source
    if not (os.path.isfile(source) and source.endswith(_TARBALL)):
        raise data.DataNotFoundError(
            f"--source={source} is neither a folder nor a .tar/.tar.gz/.tgz file."
        )
    out = os.path.join(data_dir, "downloads", "extracted", name)
    with tarfile.open(source) as tar:
        tar.extractall(out, filter="data")
    return out


def _find(root: str, filename: str) -> str:
    for dirpath, _, files in os.walk(root):
        if filename in files:
            return dirpath
    raise data.DataNotFoundError(
        f"no {filename} under {root}; is this the right archive?"
    )


def _class_dir(name: str) -> str:
    return name.strip().replace("/", "_")


def convert_fgvc_aircraft(source: str, out: str) -> str:
    """fgvc-aircraft-2013b -> OUT/{train,test}/VARIANT/ID.jpg (100 variants).

    train = the official `trainval` list (6,667 images), test = `test` (3,333),
    as in NAT's Table 1. '/' in variant names becomes '_'. The 20-pixel
    copyright banner at the bottom of each image is kept.
    """
    meta = _find(source, "images_variant_trainval.txt")
    images = os.path.join(meta, "images")
    tmp = out + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    for split, listing in (("train", "trainval"), ("test", "test")):
        with open(os.path.join(meta, f"images_variant_{listing}.txt")) as f:
            rows = [line.strip().split(" ", 1) for line in f if line.strip()]
        for image_id, variant in rows:
            dst = os.path.join(tmp, split, _class_dir(variant))
            os.makedirs(dst, exist_ok=True)
            shutil.copyfile(os.path.join(images, f"{image_id}.jpg"),
                            os.path.join(dst, f"{image_id}.jpg"))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def convert_cinic10(source: str, out: str) -> str:
    """CINIC-10 -> OUT/{train,test}/CLASS/*.png (90,000 each; `valid` unused)."""
    root = _find(source, "README.md") if not os.path.isdir(
        os.path.join(source, "train")) else source
    tmp = out + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    for split in ("train", "test"):
        if not os.path.isdir(os.path.join(root, split)):
            raise data.DataNotFoundError(f"no {split}/ folder in {root}.")
        shutil.copytree(os.path.join(root, split), os.path.join(tmp, split))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


CONVERTERS = {"fgvc_aircraft": convert_fgvc_aircraft, "cinic10": convert_cinic10}
DOWNLOAD_HINTS = {
    "fgvc_aircraft": "fgvc-aircraft-2013b.tar.gz from "
    "https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/",
    "cinic10": "CINIC-10.tar.gz from https://datashare.ed.ac.uk/handle/10283/3192",
}
