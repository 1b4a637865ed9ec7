r"""Builds extra real target tasks as image folders from data that installs offline.

Usage:
  pip install --no-deps scikit-learn scikit-image   # the data files only
  python -m docs.figures.make_offline_tasks --output=data/offline
  # -> data/offline/digits/{train,test}/CLASS/*.png     (sklearn digits)
  #    data/offline/textures/{train,test}/CLASS/*.png   (skimage textures)

Each folder is a dataset for `python -m experiments.transfer
--dataset=data/offline/digits` (nat_jax.data.datasets reads
ROOT/{train,test}/CLASS/IMAGE).
The packages are located, never imported, so `--no-deps` installs suffice
(see ../shared/reference/offline_data.md for the sources and licences):

* digits: scikit-learn's `datasets/data/digits.csv.gz` (UCI optdigits, CC BY
  4.0): 1,797 real 8x8 handwritten digits, 10 classes, values 0..16 scaled
  to 0..255. No official split: within each class every fifth image (in file
  order) is a test image, the rest train (1,442 train / 355 test).
* textures: scikit-image's CC0 photos brick, grass and gravel (512x512 grey),
  cut into 32x32 patches at random positions (fixed seed): 300 training
  patches per class from the left half (columns 0..255) and 100 test patches
  from the right half (columns 256..511), so no test pixel is seen in
  training (900 train / 300 test, 3 classes).
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import pathlib

import numpy as np
from PIL import Image

TASKS = ("digits", "textures")
TEXTURES = ("brick", "grass", "gravel")


def package_dir(name: str) -> pathlib.Path:
    """Install folder of `name` without importing it (ValueError if absent)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        pip = {"sklearn": "scikit-learn", "skimage": "scikit-image"}.get(name, name)
        raise ValueError(f"Package {name} is not installed; run: pip install "
                         f"--no-deps {pip}")
    return pathlib.Path(spec.submodule_search_locations[0])


def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train uint8[n, 8, 8], y_train, x_test, y_test) of sklearn digits."""
    with gzip.open(package_dir("sklearn") / "datasets/data/digits.csv.gz") as f:
        a = np.loadtxt(f, delimiter=",")
    x = np.round(a[:, :64].reshape(-1, 8, 8) * 255.0 / 16.0).astype(np.uint8)
    y = a[:, 64].astype(np.int64)
    test = np.zeros(len(y), bool)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        test[idx[4::5]] = True
    return x[~test], y[~test], x[test], y[test]


def textures(seed: int = 0, n_train: int = 300, n_test: int = 100, size: int = 32
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train uint8[n, s, s], y_train, x_test, y_test): texture patches."""
    rng = np.random.default_rng(seed)
    base = package_dir("skimage") / "data"
    xs, ys, xt, yt = [], [], [], []
    for c, name in enumerate(TEXTURES):
        im = np.asarray(Image.open(base / f"{name}.png").convert("L"))
        h, w = im.shape
        half = w // 2
        for n, (lo, hi), xo, yo in ((n_train, (0, half - size), xs, ys),
                                    (n_test, (half, w - size), xt, yt)):
            for _ in range(n):
                r = rng.integers(0, h - size + 1)
                s = rng.integers(lo, hi + 1)
                xo.append(im[r:r + size, s:s + size])
                yo.append(c)
    return np.stack(xs), np.array(ys), np.stack(xt), np.array(yt)


def write_folder(root: pathlib.Path, names, x_train, y_train, x_test, y_test) -> None:
    """ROOT/{train,test}/CLASS/NNNNN.png grey PNGs."""
    for split, xs, ys in (("train", x_train, y_train), ("test", x_test, y_test)):
        for i, (im, y) in enumerate(zip(xs, ys)):
            d = root / split / names[int(y)]
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(im, mode="L").save(d / f"{i:05d}.png")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output", default="data/offline", help="Parent folder.")
    p.add_argument("--tasks", default=",".join(TASKS), help="Comma-separated.")
    args = p.parse_args(argv)
    out = pathlib.Path(args.output)
    for task in filter(None, args.tasks.split(",")):
        if task not in TASKS:
            raise SystemExit(f"error: unknown task {task!r}; use one of {TASKS}.")
        if (out / task).exists():
            raise SystemExit(f"error: {out / task} exists; delete it to rebuild.")
        if task == "digits":
            arrays, names = digits(), [str(c) for c in range(10)]
        else:
            arrays, names = textures(), list(TEXTURES)
        write_folder(out / task, names, *arrays)
        print(f"{out / task}: {len(arrays[0])} train / {len(arrays[2])} test "
              f"images, {len(names)} classes")


if __name__ == "__main__":
    main()
