"""Data layer: registry, split protocol, pipeline, folders, tfds mock, errors."""

import dataclasses
import gzip
import importlib.util
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from nat_jax.data import augment, pipeline, prepare
from nat_jax.data import datasets as data

RESOLUTIONS = (32, 40, 48)
LO = (0.0 - augment.IMAGENET_MEAN) / augment.IMAGENET_STD
HI = (1.0 - augment.IMAGENET_MEAN) / augment.IMAGENET_STD
COLOURS = {"blue": (0, 0, 255), "green": (0, 255, 0), "red": (255, 0, 0)}


@pytest.fixture(scope="module")
def mini():
    return data.load("fashion_mnist_mini")


def test_registry_and_unknown_name():
    for name in ("dtd", "oxford_flowers102", "oxford_iiit_pet", "stl10", "cifar10",
                 "cifar100", "food101", "cars196", "imagenet2012", "fgvc_aircraft",
                 "cinic10", "fashion_mnist_mini"):
        assert data.get_spec(name).name == name
    assert data.get_spec("dtd").train_splits == ("train", "validation")
    assert data.get_spec("fgvc_aircraft").num_classes == 100
    with pytest.raises(ValueError, match="known: .*cifar10.*fgvc_aircraft"):
        data.get_spec("cifar11")


def test_embedded_splits(mini):
    assert mini.num_classes == 10 and mini.class_names[0] == "t-shirt_top"
    assert (len(mini.train), len(mini.val), len(mini.test)) == (3200, 800, 1000)
    tr, va = mini.train.indices, mini.val.indices
    assert not set(tr) & set(va) and len(set(tr) | set(va)) == 4000
    assert np.bincount(mini.test.labels, minlength=10).tolist() == [100] * 10
    again = data.load("fashion_mnist_mini")
    assert (again.val.indices == va).all()  # fixed split seed
    other = data.load("fashion_mnist_mini", split_seed=1)
    assert not (other.val.indices == va).all()


@pytest.mark.parametrize("resolution", RESOLUTIONS)
def test_train_batch_shapes_and_ranges(mini, resolution):
    loader = pipeline.TrainLoader(mini.train, 16, seed=0, prefetch=0)
    batch = loader.next(resolution)
    assert batch["image"].shape == (16, resolution, resolution, 3)
    assert batch["image"].dtype == np.float32 and batch["label"].dtype == np.int32
    x = batch["image"]
    assert (x >= LO - 1e-5).all() and (x <= HI + 1e-5).all()
    assert x.std() > 0.3  # real images, not blank
    ev = next(pipeline.eval_batches(mini.val, 8, resolution))
    assert ev["image"].shape == (8, resolution, resolution, 3) and ev["mask"].all()


def test_train_loader_determinism_resume_and_epochs(mini):
    rs = [32, 48, 40, 40, 32, 48] * 5  # 30 steps > one epoch of 25

    def run(seed, **kw):
        loader = pipeline.TrainLoader(mini.train, 128, seed, **kw)
        return [loader.next(r, nxt) for r, nxt in zip(rs, rs[1:] + [None])]

    a, b, c = run(0, prefetch=0), run(0, num_workers=2), run(1, prefetch=0)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["label"], y["label"])
    assert not np.array_equal(a[0]["label"], c[0]["label"])
    loader = pipeline.TrainLoader(mini.train, 128, 0)
    for r in rs[:7]:
        loader.next(r)
    resumed = pipeline.TrainLoader.restore(mini.train, loader.state())
    np.testing.assert_array_equal(resumed.next(rs[7])["image"], a[7]["image"])
    epoch = np.concatenate([loader.positions(s) for s in range(25)])
    assert sorted(epoch) == list(range(3200))  # each example once per epoch
    assert not np.array_equal(loader.positions(0), loader.positions(25))


def test_eval_counts_every_example_once_with_ragged_last_batch(mini):
    batches = list(pipeline.eval_batches(mini.val, 96, 40))
    assert len(batches) == 9  # 800 = 8 * 96 + 32
    assert all(b["image"].shape[0] == 96 for b in batches)
    assert sum(int(b["mask"].sum()) for b in batches) == 800
    labels = np.concatenate([b["label"][b["mask"]] for b in batches])
    np.testing.assert_array_equal(labels, mini.val.labels)
    assert (batches[-1]["image"][32:] == 0).all() and not batches[-1]["mask"][32:].any()
    again = list(pipeline.eval_batches(mini.val, 96, 40, prefetch=0))
    np.testing.assert_array_equal(again[3]["image"], batches[3]["image"])


def test_eval_crop_matches_resize_then_centre_crop():
    yy, xx = np.mgrid[0:60, 0:120]  # smooth, non-symmetric test pattern
    img = np.stack([xx * 2.1, yy * 4.2, 127 + 120 * np.sin(xx / 9.0 + yy / 13.0)],
                   axis=-1).astype(np.uint8)
    r = 40  # crop offsets (46 - 40) / 2 and (92 - 40) / 2 are whole pixels
    ours = augment.crop_resize([img], augment.eval_boxes([img.shape[:2]], r), r)[0]
    s = int(np.ceil(r / 0.875))  # 46: resize shorter side, centre crop (OFA)
    big = np.asarray(Image.fromarray(img).resize((2 * s, s),
                                                 Image.BILINEAR), np.int32)
    top, left = (s - r) // 2, (big.shape[1] - r) // 2
    ref = big[top:top + r, left:left + r]
    assert np.abs(ours.astype(np.int32) - ref).mean() < 2
    assert np.abs(ours.astype(np.int32) - ref[:, ::-1]).mean() > 20  # not trivial


def test_calibration_same_images_every_resolution(mini):
    cal = pipeline.CalibrationSet(mini.train, num_images=500, batch_size=200, seed=0)
    assert len(cal) == 3
    b32, b48 = list(cal.batches(32)), list(cal.batches(48))
    assert [len(b["label"]) for b in b48] == [200, 200, 100]
    for x, y in zip(b32, b48):
        np.testing.assert_array_equal(x["label"], y["label"])
        assert x["image"].shape[1:3] == (32, 32) and y["image"].shape[1:3] == (48, 48)
    again = pipeline.calibration_batches(mini.train, 32, 500, 200, seed=0)
    np.testing.assert_array_equal(again[1]["image"], b32[1]["image"])


def test_global_batch_shards_over_a_data_mesh(mini):
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    loader = pipeline.TrainLoader(mini.train, 8 * jax.device_count(), seed=0,
                                  num_devices=jax.device_count())
    batch = jax.device_put(loader.next(32), NamedSharding(mesh, PartitionSpec("data")))
    assert batch["image"].sharding.shard_shape(batch["image"].shape) == (8, 32, 32, 3)


def test_batch_size_must_split_over_devices(mini):
    with pytest.raises(ValueError, match="multiple of num_devices"):
        pipeline.TrainLoader(mini.train, 30, num_devices=4)
    with pytest.raises(ValueError, match="multiple of num_devices"):
        next(pipeline.eval_batches(mini.val, 30, 32, num_devices=4))


def _write_folder(root, per_class=(7, 3), corrupt=False):
    rng = np.random.default_rng(0)
    for split, n in zip(("train", "test"), per_class):
        for name, colour in COLOURS.items():
            os.makedirs(os.path.join(root, split, name), exist_ok=True)
            for i in range(n):
                h, w = rng.integers(20, 70, 2)
                img = Image.new("RGB", (int(w), int(h)), colour)
                ext = "png" if i % 2 else "jpg"
                img.save(os.path.join(root, split, name, f"{i}.{ext}"))
    if corrupt:
        with open(os.path.join(root, "train", "red", "bad.jpg"), "wb") as f:
            f.write(b"not an image at all")


def test_image_folder_dataset(tmp_path):
    _write_folder(tmp_path, corrupt=True)
    with pytest.warns(UserWarning, match="bad.jpg"):
        ds = data.load(str(tmp_path))
    assert ds.class_names == ("blue", "green", "red")
    assert len(ds.skipped_files) == 1 and ds.skipped_files[0].endswith("bad.jpg")
    assert (len(ds.train), len(ds.val), len(ds.test)) == (17, 4, 9)
    loader = pipeline.TrainLoader(ds.train, 8, seed=0)
    for r in RESOLUTIONS:
        assert loader.next(r)["image"].shape == (8, r, r, 3)
    for split in (ds.val, ds.test):  # each image's colour matches its label
        for b in pipeline.eval_batches(split, 4, 32):
            img = b["image"][b["mask"]] * augment.IMAGENET_STD + augment.IMAGENET_MEAN
            colour = np.argmax(img.mean(axis=(1, 2)), axis=1)  # 0 R, 1 G, 2 B
            names = np.array(ds.class_names)[b["label"][b["mask"]]]
            want = [{"red": 0, "green": 1, "blue": 2}[n] for n in names]
            np.testing.assert_array_equal(colour, want)


def test_image_that_breaks_after_scanning_raises_naming_the_file(tmp_path):
    _write_folder(tmp_path, per_class=(2, 0))
    path = os.path.join(tmp_path, "train", "green", "0.jpg")
    ds = data.load(str(tmp_path))
    with open(path, "rb") as f:
        head = f.read(300)  # valid header, missing pixels
    with open(path, "wb") as f:
        f.write(head)
    with pytest.warns(UserWarning, match="Skipping unreadable image .*0.jpg"):
        assert len(data.load(str(tmp_path)).skipped_files) == 1  # caught by a rescan
    with pytest.raises(ValueError, match="Cannot decode image file .*0.jpg"):
        list(pipeline.eval_batches(ds.train, 8, 32))
    with pytest.raises(ValueError, match="Cannot decode image file .*0.jpg"):
        loader = pipeline.TrainLoader(ds.train, 2, seed=0)
        for _ in range(3):
            loader.next(32)


def test_missing_data_fails_fast_with_the_command(tmp_path):
    start = time.perf_counter()
    with pytest.raises(data.DataNotFoundError,
                       match="experiments.prepare_data --dataset=cifar10"):
        data.load("cifar10", data_dir=str(tmp_path))
    with pytest.raises(data.DataNotFoundError, match="--dataset=fgvc_aircraft"):
        data.load("fgvc_aircraft", data_dir=str(tmp_path))
    assert time.perf_counter() - start < 5
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.prepare_data", "--dataset=dtd",
         f"--data_dir={tmp_path}", "--check"],
        capture_output=True, text=True, timeout=60,
    )
    assert time.perf_counter() - start < 15  # includes starting Python
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0
    assert "prepare_data --dataset=dtd" in proc.stderr


def test_tfds_reading_path_with_mock_data(monkeypatch, tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    # mock_data replaces the array_record source, not the files on disk.
    monkeypatch.setattr(data, "_tfds_on_disk", lambda name, data_dir: True)
    monkeypatch.setattr(data, "_tfds_problem", lambda builder: None)
    with tfds.testing.mock_data(num_examples=20):
        ds = data.load("dtd", data_dir=str(tmp_path))  # train + validation
        assert ds.num_classes == 47 and ds.class_names[0] == "banded"
        assert (len(ds.train), len(ds.val), len(ds.test)) == (32, 8, 20)
        batch = pipeline.TrainLoader(ds.train, 8, seed=0).next(40)
        assert batch["image"].shape == (8, 40, 40, 3)
        assert ((batch["label"] >= 0) & (batch["label"] < 47)).all()
        batches = list(pipeline.eval_batches(ds.test, 8, 32))
        assert sum(int(b["mask"].sum()) for b in batches) == 20


def test_prepare_converts_fgvc_aircraft_archive_layout(tmp_path):
    src = tmp_path / "fgvc-aircraft-2013b" / "data"
    os.makedirs(src / "images")
    variants = {"trainval": ["707-320", "F/A-18", "707-320"], "test": ["F/A-18"]}
    k = 1000000
    for split, rows in variants.items():
        lines = []
        for v in rows:
            k += 1
            Image.new("RGB", (40, 30), (9, 9, 9)).save(src / "images" / f"{k}.jpg")
            lines.append(f"{k} {v}\n")
        (src / f"images_variant_{split}.txt").write_text("".join(lines))
    out = prepare.convert_fgvc_aircraft(str(tmp_path), str(tmp_path / "out"))
    spec = data.DatasetSpec("air", "folder", None, folder=out, val_fraction=0.34)
    ds = data.load(spec)
    assert ds.class_names == ("707-320", "F_A-18")
    assert (len(ds.train) + len(ds.val), len(ds.test)) == (3, 1)
    assert ds.test.labels.tolist() == [1]


def test_tfds_array_record_end_to_end_without_tensorflow(tmp_path):
    """A real prepared array_record dataset (Tensor images: no TF to write)."""
    tfds = pytest.importorskip("tensorflow_datasets")

    class NatTinyImages(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            features = tfds.features.FeaturesDict({
                "image": tfds.features.Tensor(shape=(None, None, 3), dtype=np.uint8,
                                              encoding="bytes"),
                "label": tfds.features.ClassLabel(names=["a", "b", "c"])})
            return tfds.core.DatasetInfo(builder=self, features=features)

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(0, 20),
                    "validation": self._generate_examples(20, 5),
                    "test": self._generate_examples(25, 7)}

        def _generate_examples(self, start, n):
            for i in range(start, start + n):  # pixel value encodes the label
                img = np.full((20 + i % 5, 30, 3), 40 + 80 * (i % 3), np.uint8)
                yield i, {"image": img, "label": i % 3}

    spec = data.DatasetSpec("nat_tiny_images", "tfds", 3, "nat_tiny_images",
                            train_splits=("train", "validation"))
    with pytest.raises(data.DataNotFoundError, match="--dataset=nat_tiny_images"):
        data.load(spec, data_dir=str(tmp_path))
    NatTinyImages(data_dir=str(tmp_path), file_format="array_record") \
        .download_and_prepare()
    ds = data.load(spec, data_dir=str(tmp_path))
    assert ds.class_names == ("a", "b", "c")
    assert (len(ds.train), len(ds.val), len(ds.test)) == (20, 5, 7)
    for split in (ds.train, ds.val, ds.test):
        for b in pipeline.eval_batches(split, 4, 32):
            grey = (b["image"][..., 0] * augment.IMAGENET_STD[0]
                    + augment.IMAGENET_MEAN[0]) * 255
            level = np.round((grey.mean(axis=(1, 2)) - 40) / 80).astype(int)
            np.testing.assert_array_equal(level[b["mask"]], b["label"][b["mask"]])
    assert pipeline.TrainLoader(ds.train, 8).next(48)["image"].shape == (8, 48, 48, 3)


def test_prepare_converts_cinic10_layout(tmp_path):
    for split in ("train", "valid", "test"):
        for name in ("airplane", "cat"):
            os.makedirs(tmp_path / "src" / split / name)
            Image.new("RGB", (32, 32)).save(tmp_path / "src" / split / name / "x.png")
    out = prepare.convert_cinic10(str(tmp_path / "src"), str(tmp_path / "cinic10"))
    assert sorted(os.listdir(out)) == ["test", "train"]
    spec = dataclasses.replace(data.get_spec("cinic10"), num_classes=2, folder=out)
    ds = data.load(spec)
    assert ds.class_names == ("airplane", "cat") and len(ds.test) == 2


def _asset_builder():
    path = os.path.join(data.ASSETS, "build_mini.py")
    module_spec = importlib.util.spec_from_file_location("_build", path)
    build = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(build)
    return build


def _balanced(d):
    assert d["train_images"].shape == (4000, 28, 28, 1)
    assert d["train_images"].dtype == np.uint8 == d["test_labels"].dtype
    assert np.bincount(d["train_labels"]).tolist() == [400] * 10
    assert np.bincount(d["test_labels"]).tolist() == [100] * 10


def test_embedded_asset_builder_on_synthetic_idx_files(tmp_path):
    build = _asset_builder()
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 4500), ("t10k", 1200)):
        labels = rng.permutation(np.arange(n) % 10).astype(np.uint8)
        images = rng.integers(0, 256, (n, 28, 28), np.uint8)
        for kind, arr in (("images", images), ("labels", labels)):
            header = bytes([0, 0, 8, arr.ndim]) + b"".join(
                d.to_bytes(4, "big") for d in arr.shape)
            with gzip.open(tmp_path / f"{prefix}-{kind}-idx{arr.ndim}-ubyte.gz",
                           "wb") as f:
                f.write(header + arr.tobytes())
    out = build.build("fashion_mnist_mini", str(tmp_path), str(tmp_path / "mini.npz"))
    with np.load(out) as d:
        _balanced(d)
        assert d["class_names"][0] == "t-shirt_top"


def test_embedded_asset_builder_on_a_synthetic_csv(tmp_path, monkeypatch):
    """mnist_mini: per digit the first 400 rows train, the next 100 test."""
    build = _asset_builder()
    rng = np.random.default_rng(1)
    labels = rng.permutation(np.arange(5200) % 10).astype(np.uint8)
    pixels = rng.integers(0, 256, (5200, 784), np.uint8)
    pixels[:, 0] = np.arange(5200) % 256            # row id, to check the split
    pixels[:, 1] = np.arange(5200) // 256
    np.savetxt(tmp_path / "m.csv.gz", np.concatenate([pixels, labels[:, None]], 1),
               fmt="%d", delimiter=",")
    out = build.build("mnist_mini", str(tmp_path / "m.csv.gz"),
                      str(tmp_path / "m.npz"))
    with np.load(out) as d:
        _balanced(d)
        rows = {s: d[f"{s}_images"][:, 0, 0, 0].astype(int)
                + 256 * d[f"{s}_images"][:, 0, 1, 0].astype(int)
                for s in ("train", "test")}
    for c in range(10):
        of_c = np.flatnonzero(labels == c)
        assert set(of_c[:400]) <= set(rows["train"])
        assert set(of_c[400:500]) <= set(rows["test"])
    assert np.all(np.diff(rows["train"]) > 0)        # file order
    with pytest.raises(ValueError, match="build one of"):
        build.build("cifar_mini")
    # prepare rebuilds the embedded dataset it is asked for (the builder is
    # copied: it writes next to itself, here not into the package)
    assets = tmp_path / "assets"
    assets.mkdir()
    shutil.copy(os.path.join(data.ASSETS, "build_mini.py"), assets)
    monkeypatch.setattr(data, "ASSETS", str(assets))
    msg = prepare.prepare("mnist_mini", source=str(tmp_path / "m.csv.gz"))
    assert msg == f"rebuilt {assets / 'mnist_mini.npz'}"
    with np.load(assets / "mnist_mini.npz") as d:
        assert tuple(d["class_names"]) == build.DATASETS["mnist_mini"]["class_names"]


@pytest.mark.parametrize("name", ["fashion_mnist_mini", "mnist_mini"])
def test_shipped_assets_are_what_the_builder_describes(name):
    spec = _asset_builder().DATASETS[name]
    with np.load(os.path.join(data.ASSETS, f"{name}.npz")) as d:
        _balanced(d)
        assert tuple(d["class_names"]) == spec["class_names"]


def test_imagenet_validation_is_50000_training_images():
    """Paper Sec. 4.3: ImageNet's search validation split is 50,000 images."""
    spec = data.REGISTRY["imagenet2012"]
    assert round(spec.val_fraction * spec.paper_sizes[0]) == 50000
    assert data.REGISTRY["dtd"].val_fraction == 0.2   # Sec. 4.4: 20% elsewhere
