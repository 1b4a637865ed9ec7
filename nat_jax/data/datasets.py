"""Datasets of NAT: registry, split protocol and loading (no TensorFlow needed).

`get_spec(name)` returns a `DatasetSpec`; `load(spec_or_name_or_folder)` returns
a `Dataset` whose `train`/`val`/`test` are `Split`s (index views over a source).
NAT's protocol: validation = 20% of the training split held out with a fixed
seed (`split_seed`, default 0, independent of the training seed); the test split
is only for final reports. Batching lives in `nat_jax.data.pipeline`.

Sources: the embedded `fashion_mnist_mini` (in the package), tfds datasets
prepared in array_record format (read with `tfds.data_source`, no TensorFlow),
and image folders `ROOT/{train,test}/CLASS/IMAGE`. `load` never downloads: when
data is missing it raises `DataNotFoundError` (one line, naming the command
that prepares it) within a fraction of a second.

Image folders: every image of a dataset is decoded to the same channel count
(3 if any image is colour, else 1), an empty class folder is refused, and the
validation images are picked by a hash of each file's relative path
(`holdout_by_key`), so removing one file moves at most one other file between
train and validation. `split_fingerprint(ds)` identifies the exact split a run
uses; `verify_images(ds)` decodes every image file (what `--check` runs).
"""

import concurrent.futures as cf
import dataclasses
import functools
import hashlib
import os
import warnings
from typing import Sequence

import numpy as np
from PIL import Image

ASSETS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "assets")
EMBEDDED = "fashion_mnist_mini"
# The embedded transfer target (handwritten digits: another task and domain
# than the Fashion-MNIST source the shipped supernet was pre-trained on).
EMBEDDED_TARGET = "mnist_mini"
# The full Fashion-MNIST (60,000 + 10,000 images, MIT) as Debian's package
# `dataset-fashion-mnist` installs it: four IDX files.
FASHION_MNIST = "fashion_mnist"
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = (
    "t-shirt_top", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle_boot",
)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".ppm", ".webp", ".tif")
# PIL modes without colour; every other mode (RGB, RGBA, P, CMYK, ...) is colour.
GREY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F")


class DataNotFoundError(FileNotFoundError):
    """Prepared data is missing; the message says how to prepare it."""


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """A dataset and NAT's split protocol.

    Attributes:
      name: registry name (or the folder path of a custom dataset).
      kind: "tfds", "folder" or "embedded".
      num_classes: number of classes (None: counted from a custom folder).
      tfds_name: tfds builder name (kind "tfds").
      train_splits: source splits concatenated into NAT's training split.
      test_splits: source splits concatenated into the test split.
      folder: root of an image-folder dataset; None means DATA_DIR/name.
      val_fraction: fraction of the training split held out for validation.
      split_seed: seed of the train/validation partition.
      paper_sizes: (train, test) sizes in NAT's Table 1, for reference.
    """

    name: str
    kind: str
    num_classes: int | None
    tfds_name: str | None = None
    train_splits: tuple[str, ...] = ("train",)
    test_splits: tuple[str, ...] = ("test",)
    folder: str | None = None
    val_fraction: float = 0.2
    split_seed: int = 0
    paper_sizes: tuple[int, int] | None = None

    def prepare_command(self, data_dir: str | None = None) -> str:
        """The shell command that prepares this dataset."""
        flag = f" --data_dir={data_dir}" if data_dir else ""
        cmd = f"python -m experiments.prepare_data --dataset={self.name}{flag}"
        if self.kind == "folder":
            cmd += " --source=PATH_TO_DOWNLOADED_ARCHIVE_OR_FOLDER"
        return cmd


def _tfds(name, classes, train=("train",), test=("test",), sizes=None, **kw):
    return DatasetSpec(name, "tfds", classes, name, train, test, paper_sizes=sizes,
                       **kw)


REGISTRY: dict[str, DatasetSpec] = {
    s.name: s
    for s in (
        DatasetSpec(EMBEDDED, "embedded", 10, paper_sizes=None),
        DatasetSpec(EMBEDDED_TARGET, "embedded", 10, paper_sizes=None),
        DatasetSpec(FASHION_MNIST, "idx", 10, folder=FASHION_MNIST_DIR),
        # Paper Sec. 4.3: ImageNet's validation split is 50,000 training images.
        _tfds("imagenet2012", 1000, test=("validation",), sizes=(1281167, 50000),
              val_fraction=50000 / 1281167),
        _tfds("cifar10", 10, sizes=(50000, 10000)),
        _tfds("cifar100", 100, sizes=(50000, 10000)),
        _tfds("stl10", 10, sizes=(5000, 8000)),
        _tfds("food101", 101, test=("validation",), sizes=(75750, 25250)),
        _tfds("cars196", 196, sizes=(8144, 8041)),
        _tfds("dtd", 47, train=("train", "validation"), sizes=(3760, 1880)),
        _tfds("oxford_flowers102", 102, ("train", "validation"), sizes=(2040, 6149)),
        _tfds("oxford_iiit_pet", 37, sizes=(3680, 3669)),
        DatasetSpec("fgvc_aircraft", "folder", 100, paper_sizes=(6667, 3333)),
        DatasetSpec("cinic10", "folder", 10, paper_sizes=(90000, 90000)),
    )
}
DATASET_NAMES = tuple(REGISTRY)


def get_spec(name: str) -> DatasetSpec:
    """Registered dataset by name, or a custom image folder given by its path.

    Raises:
      ValueError: unknown name that is not an existing folder.
    """
    if name in REGISTRY:
        return REGISTRY[name]
    if os.path.isdir(name):
        return DatasetSpec(os.path.abspath(name), "folder", None, folder=name)
    raise ValueError(
        f"Unknown dataset {name!r}; known: {', '.join(DATASET_NAMES)} "
        "(or the path of a folder with train/CLASS/IMAGE files)."
    )


def default_data_dir() -> str:
    """$TFDS_DATA_DIR, else ~/tensorflow_datasets (tfds's default)."""
    default = os.path.expanduser("~/tensorflow_datasets")
    return os.environ.get("TFDS_DATA_DIR") or default


# ----------------------------------------------------------------------------- sources


class ArraySource:
    """In-memory uint8 images [N, H, W, C] and int labels [N]."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images, labels.astype(np.int32)

    def __len__(self):
        return len(self.labels)

    def read(self, idx: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        return list(self.images[idx]), self.labels[idx]


class TfdsSource:
    """A tfds array_record data source (one or more concatenated splits)."""

    def __init__(self, sources: Sequence, image_key="image", label_key="label"):
        self.sources = list(sources)
        self.offsets = np.cumsum([0] + [len(s) for s in self.sources])
        self.image_key, self.label_key = image_key, label_key

    def __len__(self):
        return int(self.offsets[-1])

    def read(self, idx: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        idx = np.asarray(idx)
        which = np.searchsorted(self.offsets, idx, side="right") - 1
        examples = [None] * len(idx)
        for s in np.unique(which):
            rows = np.flatnonzero(which == s)
            local = [int(i) for i in idx[rows] - self.offsets[s]]
            src = self.sources[s]  # per key: tfds's mock breaks __getitems__
            for r, ex in zip(rows, [src[i] for i in local]):
                examples[r] = ex
        images = []
        for ex in examples:
            img = np.asarray(ex[self.image_key], np.uint8)
            images.append(img[..., None] if img.ndim == 2 else img)
        labels = np.array([int(ex[self.label_key]) for ex in examples], np.int32)
        return images, labels


class FolderSource:
    """Image files with integer labels, decoded with PIL on every read.

    Args:
      paths: N image files.
      labels: N int labels.
      root: folder the `keys` (relative paths, '/'-separated) are taken from;
        None: the keys are the paths themselves.
      channels: 1 or 3, the channel count every image is decoded to; None:
        each image keeps its own (grey 1, anything else 3).
    """

    def __init__(self, paths: Sequence[str], labels: Sequence[int],
                 root: str | None = None, channels: int | None = None):
        self.paths, self.labels = list(paths), np.asarray(labels, np.int32)
        self.root, self.channels = root, channels

    @functools.cached_property
    def keys(self) -> tuple[str, ...]:
        """Each file's path relative to `root` with '/' separators."""
        if self.root is None:
            return tuple(self.paths)
        return tuple(os.path.relpath(p, self.root).replace(os.sep, "/")
                     for p in self.paths)

    def __len__(self):
        return len(self.paths)

    def read(self, idx: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        images = [decode_image(self.paths[i], self.channels) for i in idx]
        return images, self.labels[idx]


def decode_image(path: str, channels: int | None = None) -> np.ndarray:
    """uint8[H, W, C] pixels of an image file; ValueError naming a bad file.

    Args:
      path: image file.
      channels: 3 (grey is replicated, alpha/palette/CMYK become RGB), 1 (grey
        luma), or None (grey modes give C = 1, every other mode C = 3).
    """
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be None, 1 or 3, got {channels}.")
    try:
        with Image.open(path) as im:
            grey = im.mode in GREY_MODES
            im = im.convert("L" if grey or channels == 1 else "RGB")
            arr = np.asarray(im)
    except (OSError, ValueError, SyntaxError) as e:
        reason = " ".join(str(e).split())
        raise ValueError(
            f"Cannot decode image file {path}: {reason}; remove or replace it."
        ) from None
    arr = arr[..., None] if arr.ndim == 2 else arr
    return np.repeat(arr, 3, axis=-1) if channels == 3 and arr.shape[-1] == 1 else arr


@dataclasses.dataclass(frozen=True, eq=False)
class Split:
    """A view `source[indices]`; `read(positions)` returns images and labels."""

    name: str
    source: object
    indices: np.ndarray

    def __len__(self):
        return len(self.indices)

    def read(self, positions: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        """B uint8 images [H, W, C] (C = 1 or 3) and int32[B] labels."""
        return self.source.read(self.indices[np.asarray(positions)])

    @property
    def labels(self) -> np.ndarray | None:
        """int32[len] labels when the source knows them without decoding."""
        labels = getattr(self.source, "labels", None)
        return None if labels is None else labels[self.indices]


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """NAT splits of one dataset. `test` is None for a folder without test/."""

    spec: DatasetSpec
    class_names: tuple[str, ...]
    train: Split
    val: Split
    test: Split | None
    skipped_files: tuple[str, ...] = ()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def _check_fraction(fraction: float):
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {fraction}.")


def holdout(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) positions: a seeded random `fraction` of range(n) is val.

    Used where examples have no identity but their position (tfds records, the
    embedded arrays). Returns sorted int arrays [n - n_val] and [n_val],
    n_val = round(n * fraction).
    """
    _check_fraction(fraction)
    perm = np.random.default_rng(seed).permutation(n)
    n_val = int(round(n * fraction))
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def _key_rank(key: str, seed: int) -> bytes:
    return hashlib.sha256(f"{seed}\0{key}".encode()).digest()


def holdout_by_key(
    keys: Sequence[str], fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) positions: the round(n * fraction) keys of lowest hash are val.

    Each key (a file's relative path) is ranked by sha256(seed, key), so a
    key's side depends only on the keys ranked near it, not on its position:
    removing or adding one file moves at most one other file between train and
    validation (none when the count round(n * fraction) absorbs the change).

    Returns:
      Sorted int arrays [n - n_val] and [n_val], n_val = round(n * fraction).
    """
    _check_fraction(fraction)
    n = len(keys)
    n_val = int(round(n * fraction))
    order = sorted(range(n), key=lambda i: (_key_rank(keys[i], seed), keys[i]))
    val = np.sort(np.asarray(order[:n_val], np.int64))
    train = np.sort(np.asarray(order[n_val:], np.int64))
    return train, val


def load(
    spec: DatasetSpec | str, data_dir: str | None = None, split_seed: int | None = None
) -> Dataset:
    """Loads prepared data (never downloads) and applies NAT's split protocol.

    Args:
      spec: a DatasetSpec, a registered name, or the path of an image folder.
      data_dir: where prepared data lives (default `default_data_dir()`).
      split_seed: overrides `spec.split_seed` (train/validation partition).

    Raises:
      DataNotFoundError: the data is not prepared; the message names the command.
      ValueError: unknown name, or inconsistent folder contents.
    """
    spec = get_spec(spec) if isinstance(spec, str) else spec
    if spec.kind == "embedded":
        source, test, names, skipped = _load_embedded(spec.name)
    elif spec.kind == "idx":
        source, test, names, skipped = _load_idx(spec)
    elif spec.kind == "tfds":
        source, test, names, skipped = _load_tfds(spec, data_dir or default_data_dir())
    elif spec.kind == "folder":
        root = spec.folder or os.path.join(data_dir or default_data_dir(), spec.name)
        source, test, names, skipped = _load_folder(spec, root, data_dir)
    else:
        raise ValueError(f"Unknown kind {spec.kind!r}; use embedded, tfds or folder.")
    if spec.num_classes is not None and len(names) != spec.num_classes:
        raise ValueError(
            f"{spec.name}: found {len(names)} classes, expected {spec.num_classes}."
        )
    seed = spec.split_seed if split_seed is None else split_seed
    if isinstance(source, FolderSource):
        tr, va = holdout_by_key(source.keys, spec.val_fraction, seed)
    else:
        tr, va = holdout(len(source), spec.val_fraction, seed)
    return Dataset(
        spec, tuple(names), Split("train", source, tr), Split("val", source, va),
        None if test is None else Split("test", test, np.arange(len(test))),
        tuple(skipped),
    )


@functools.lru_cache(maxsize=2)
def _load_embedded(name: str = EMBEDDED):
    with np.load(os.path.join(ASSETS, f"{name}.npz")) as d:
        train = ArraySource(d["train_images"], d["train_labels"])
        test = ArraySource(d["test_images"], d["test_labels"])
        names = [str(n) for n in d["class_names"]]
    return train, test, names, []


def read_idx(path: str) -> np.ndarray:
    """The uint8 array of a gzipped IDX file (MNIST's format), e.g. [N, 28, 28]."""
    import gzip

    with gzip.open(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file; reinstall it.")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big")
                  for i in range(ndim))
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


@functools.lru_cache(maxsize=1)
def _load_idx(spec: DatasetSpec):
    """Fashion-MNIST's four IDX files (train 60,000, test 10,000, 28x28 grey)."""
    root = spec.folder or FASHION_MNIST_DIR
    files = {f"{split}_{part}": os.path.join(root, f"{prefix}-{part}-idx{n}-ubyte.gz")
             for split, prefix in (("train", "train"), ("test", "t10k"))
             for part, n in (("images", 3), ("labels", 1))}
    missing = [p for p in files.values() if not os.path.isfile(p)]
    if missing:
        raise DataNotFoundError(
            f"{spec.name}: {missing[0]} is missing; install it with: "
            "apt-get install dataset-fashion-mnist")
    a = {k: read_idx(p) for k, p in files.items()}
    train = ArraySource(a["train_images"][..., None], a["train_labels"])
    test = ArraySource(a["test_images"][..., None], a["test_labels"])
    return train, test, list(FASHION_MNIST_CLASSES), []


def _tfds_on_disk(name: str, data_dir: str) -> bool:
    """Cheap check before tfds is asked (tfds logs warnings for missing data)."""
    return os.path.isdir(os.path.join(data_dir, name))


def _tfds_problem(builder) -> str | None:
    """Why the prepared data cannot be read with data_source, or None."""
    if not builder.is_prepared():
        return "no prepared tfds data under " + os.path.dirname(builder.data_dir)
    files = os.listdir(builder.data_dir)
    if not any(".array_record" in f for f in files):
        return f"{builder.data_dir} holds no array_record files (tfrecord?)"
    return None


def _load_tfds(spec: DatasetSpec, data_dir: str):
    import tensorflow_datasets as tfds  # deferred: a slow import

    hint = f"prepare it with: {spec.prepare_command(data_dir)}"
    if not _tfds_on_disk(spec.tfds_name, data_dir):
        raise DataNotFoundError(
            f"{spec.name}: no prepared tfds data under {data_dir}; {hint}"
        )
    try:
        builder = tfds.builder(spec.tfds_name, data_dir=data_dir)
    except Exception as e:  # noqa: BLE001 - tfds raises many kinds here
        raise DataNotFoundError(f"{spec.name}: cannot open tfds builder ({e}); {hint}")
    problem = _tfds_problem(builder)
    if problem:
        raise DataNotFoundError(f"{spec.name}: {problem}; {hint}")
    load_split = functools.partial(
        tfds.data_source, spec.tfds_name, data_dir=data_dir, download=False
    )
    train = TfdsSource([load_split(split=s) for s in spec.train_splits])
    test = TfdsSource([load_split(split=s) for s in spec.test_splits])
    names = list(builder.info.features["label"].names)
    return train, test, names, []


def _scan_folder(root: str, class_names: Sequence[str] | None):
    """(paths, labels, class_names, skipped, colour) of ROOT/CLASS/IMAGE files.

    With `class_names` None (training scan) the classes are the non-hidden
    sub-folders, and each must hold at least one readable image. `colour` is
    True when any kept image has a colour mode (header only, not decoded).
    """
    found = sorted(
        d for d in os.listdir(root)
        if not d.startswith(".") and os.path.isdir(os.path.join(root, d))
    )
    names = list(class_names) if class_names is not None else found
    unknown = sorted(set(found) - set(names))
    if unknown:
        raise ValueError(f"{root}: classes {unknown} are not in the training classes.")
    paths, labels, skipped, colour = [], [], [], False
    for label, name in enumerate(names):
        cdir = os.path.join(root, name)
        if not os.path.isdir(cdir):
            continue
        kept, bad = 0, 0
        for f in sorted(os.listdir(cdir)):
            path = os.path.join(cdir, f)
            if f.startswith(".") or not f.lower().endswith(IMAGE_EXTENSIONS):
                continue
            try:  # header only: cheap; truncated pixels fail later, naming the file
                with Image.open(path) as im:
                    mode = im.mode
                    im.verify()
            except Exception as e:  # noqa: BLE001 - PIL raises many types
                warnings.warn(f"Skipping unreadable image {path}: {e}")
                skipped.append(path)
                bad += 1
                continue
            colour = colour or mode not in GREY_MODES
            paths.append(path)
            labels.append(label)
            kept += 1
        if class_names is None and kept == 0:
            what = f"no readable image files ({bad} unreadable)" if bad else (
                "no image files (" + "/".join(IMAGE_EXTENSIONS) + ")")
            raise ValueError(
                f"Class folder {cdir} has {what}; add images or delete the folder "
                "(it would be trained as an extra, empty class)."
            )
    return paths, labels, names, skipped, colour


def _load_folder(spec: DatasetSpec, root: str, data_dir: str | None):
    if not os.path.isdir(root):
        raise DataNotFoundError(
            f"{spec.name}: no folder {root}; prepare it with: "
            f"{spec.prepare_command(data_dir)}"
        )
    train_root = os.path.join(root, "train")
    if not os.path.isdir(train_root):
        train_root = root  # ROOT/CLASS/IMAGE: training data only
    paths, labels, names, skipped, colour = _scan_folder(train_root, None)
    if not paths:
        raise DataNotFoundError(f"{spec.name}: no image files under {train_root}.")
    test_root = os.path.join(root, "test")
    scan_test = train_root != root and os.path.isdir(test_root)
    if scan_test:
        t_paths, t_labels, _, t_skipped, t_colour = _scan_folder(test_root, names)
        skipped, colour = skipped + t_skipped, colour or t_colour
    channels = 3 if colour else 1  # one channel count for the whole dataset
    test = FolderSource(t_paths, t_labels, test_root, channels) if scan_test else None
    return FolderSource(paths, labels, train_root, channels), test, names, skipped


# ------------------------------------------------------------------- checks


def _split_items(split: Split) -> bytes:
    keys = getattr(split.source, "keys", None)
    if keys is not None:
        items = "\n".join(keys[i] for i in split.indices).encode()
    else:
        items = np.asarray(split.indices, "<i8").tobytes()
    labels = split.labels
    if labels is not None:
        items += b"\0" + np.asarray(labels, "<i4").tobytes()
    return items


def split_fingerprint(dataset: Dataset) -> str:
    """A stable hex digest of the exact train/val/test split a run uses.

    It covers the source identity (kind; tfds name and splits, or the embedded
    name; not the folder's location, so a moved folder keeps its fingerprint),
    the class names and, per split, the members in order: relative file paths
    for image folders, positions for tfds/embedded sources, plus the labels
    where known without decoding. Any added, removed or renamed file, changed
    class, seed or val_fraction changes it; pixel contents are not hashed.
    Record it in a run's workdir and refuse to resume when it differs.

    Returns:
      64 hex characters (sha256).
    """
    spec = dataset.spec
    identity = [spec.kind]
    if spec.kind == "tfds":
        identity += [spec.tfds_name, "+".join(spec.train_splits),
                     "+".join(spec.test_splits)]
    elif spec.kind == "embedded":
        identity.append(spec.name)
    h = hashlib.sha256()
    h.update(("\0".join(identity) + "\n" + "\0".join(dataset.class_names)).encode())
    for split in (dataset.train, dataset.val, dataset.test):
        if split is None:
            h.update(b"\nnone")
            continue
        h.update(f"\n{split.name}:{len(split)}:".encode())
        h.update(hashlib.sha256(_split_items(split)).digest())
    return h.hexdigest()


def _decode_error(job: tuple[str, int | None]) -> str | None:
    try:
        decode_image(*job)
    except ValueError as e:
        return str(e)
    return None


def verify_images(
    dataset: Dataset, num_threads: int | None = None, chunk: int = 512
) -> int:
    """Decodes every image file of an image-folder dataset; returns how many.

    The folder scan of `load` reads headers only, so a truncated file would
    otherwise stop a run when it is first drawn. tfds and embedded sources are
    not decoded (tfds encoded and checksummed them when preparing).

    Raises:
      ValueError: one line naming the first bad file (scan order) and how many
        other files failed.
    """
    sources = [dataset.train.source]
    if dataset.test is not None and dataset.test.source is not sources[0]:
        sources.append(dataset.test.source)
    jobs = [(p, s.channels) for s in sources if isinstance(s, FolderSource)
            for p in s.paths]
    workers = num_threads or min(8, os.cpu_count() or 1)
    errors = []
    with cf.ThreadPoolExecutor(workers) as pool:  # PIL decoding releases the GIL
        for start in range(0, len(jobs), chunk):
            found = pool.map(_decode_error, jobs[start:start + chunk])
            errors += [e for e in found if e is not None]
    if errors:
        more = f" ({len(errors) - 1} more undecodable files)" if errors[1:] else ""
        raise ValueError(errors[0].rstrip(".") + more + ".")
    return len(jobs)


def full_train_split(ds: Dataset) -> Split:
    """NAT's train + validation partitions as one split (same source)."""
    idx = np.sort(np.concatenate([ds.train.indices, ds.val.indices]))
    return Split("train+val", ds.train.source, idx)
