"""Rebuild `fashion_mnist_mini.npz`, the embedded default dataset of nat-jax.

Source: Fashion-MNIST (Xiao, Rasul, Vollgraf 2017, Zalando SE, MIT licence), as
installed by Debian's package `dataset-fashion-mnist`
(`apt-get install dataset-fashion-mnist` puts the four idx files under
/usr/share/datasets/fashion-mnist). The subset is class balanced and
deterministic: the first 400 training and the first 100 test images of each of
the 10 classes, in file order.

Usage: python nat_jax/assets/build_fashion_mnist_mini.py [SOURCE_DIR] [OUT.npz]
"""

import gzip
import os
import sys

import numpy as np

CLASS_NAMES = (
    "t-shirt_top", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle_boot",
)
DEFAULT_SOURCE = "/usr/share/datasets/fashion-mnist"
TRAIN_PER_CLASS = 400
TEST_PER_CLASS = 100


def _read_idx(path: str) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _subset(images, labels, per_class):
    keep = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(10)])
    keep.sort()  # file order, classes interleaved as in the original
    return images[keep], labels[keep]


def build(source: str = DEFAULT_SOURCE, out: str | None = None) -> str:
    """Writes the .npz next to this script (or to `out`) and returns its path."""
    out = out or os.path.join(os.path.dirname(__file__), "fashion_mnist_mini.npz")
    arrays = {}
    for split, prefix, per_class in (
        ("train", "train", TRAIN_PER_CLASS), ("test", "t10k", TEST_PER_CLASS)
    ):
        images = _read_idx(os.path.join(source, f"{prefix}-images-idx3-ubyte.gz"))
        labels = _read_idx(os.path.join(source, f"{prefix}-labels-idx1-ubyte.gz"))
        images, labels = _subset(images, labels, per_class)
        arrays[f"{split}_images"] = images[..., None]  # uint8[N, 28, 28, 1]
        arrays[f"{split}_labels"] = labels.astype(np.uint8)
    np.savez_compressed(out, class_names=np.array(CLASS_NAMES), **arrays)
    return out


if __name__ == "__main__":
    print(build(*sys.argv[1:3]))
