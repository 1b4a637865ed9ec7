"""Data layer under bad input (issue 18): mixed grey/colour folders, truncated
images, removed files and the split fingerprint, empty class folders.

Every test builds its damaged folder itself with PIL under tmp_path.
"""

import contextlib
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from nat_jax.data import augment, pipeline
from nat_jax.data import datasets as data

GREEN, GREY = (0, 255, 0), 128
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _pixels(batch: dict) -> np.ndarray:
    """float32[B, 3] mean RGB in [0, 1] of the unmasked images of a batch."""
    x = batch["image"] * augment.IMAGENET_STD + augment.IMAGENET_MEAN
    mask = batch.get("mask", np.ones(len(x), bool))
    return x[mask].mean(axis=(1, 2))


def _check_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "experiments.prepare_data", *args],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )


# ---------------------------------------------- item 2: grey + colour in one folder


def _green_images():
    """Pure green in the colour modes a folder may hold: RGB, RGBA, palette."""
    rgb = Image.new("RGB", (24, 18), GREEN)
    rgba = Image.new("RGBA", (18, 24), GREEN + (255,))
    return {"rgb.png": rgb, "rgba.png": rgba, "pal.png": rgb.convert("P"),
            "rgb.jpg": rgb}


@pytest.mark.parametrize("order", ["grey_first", "colour_first"])
def test_mixed_grey_and_colour_folder_keeps_colour(tmp_path, order):
    # Classes are sorted by name, so the name decides which images come first
    # in every batch read in order.
    grey_dir, green_dir = (("a_grey", "b_green") if order == "grey_first"
                           else ("b_grey", "a_green"))
    for name in (grey_dir, green_dir):
        os.makedirs(tmp_path / "train" / name)
    for i in range(4):
        Image.new("L", (20, 30), GREY).save(tmp_path / "train" / grey_dir / f"{i}.png")
    for fname, img in _green_images().items():
        img.save(tmp_path / "train" / green_dir / fname)
    spec = data.DatasetSpec("mixed", "folder", None, folder=str(tmp_path),
                            val_fraction=0.0)
    ds = data.load(spec)
    assert ds.train.source.channels == 3  # one colour image makes the set RGB
    green = ds.class_names.index(green_dir)
    for b in pipeline.eval_batches(ds.train, 8, 16):  # whole set in one batch
        means = _pixels(b)
        labels = b["label"][b["mask"]]
        first = labels[0]
        assert first == ds.class_names.index(sorted([grey_dir, green_dir])[0])
        for rgb, label in zip(means, labels):
            want = np.array(GREEN) / 255 if label == green else np.full(3, GREY / 255)
            np.testing.assert_allclose(rgb, want, atol=3 / 255)
    loader = pipeline.TrainLoader(ds.train, 8, seed=0, prefetch=0)
    for _ in range(3):  # jittered: brightness/saturation move values, not hue
        b = loader.next(16)
        means = _pixels(b)
        is_green = b["label"] == green
        assert (np.argmax(means[is_green], axis=1) == 1).all()
        assert (means[is_green][:, 1] > 0.5).all()
        np.testing.assert_allclose(means[~is_green][:, 0], means[~is_green][:, 2],
                                   atol=1e-5)  # grey stays grey


@pytest.mark.parametrize("grey_first", [True, False])
def test_crop_resize_mixed_channel_batch_in_either_order(grey_first):
    grey = np.full((10, 12, 1), GREY, np.uint8)
    rgba = np.zeros((14, 9, 4), np.uint8)
    rgba[...] = GREEN + (255,)
    images = [grey, rgba] if grey_first else [rgba, grey]
    boxes = np.array([[0, 0, im.shape[1], im.shape[0]] for im in images], np.float32)
    out = augment.crop_resize(images, boxes, 8)
    assert out.shape == (2, 8, 8, 3)
    want = {True: [(GREY,) * 3, GREEN], False: [GREEN, (GREY,) * 3]}[grey_first]
    for got, rgb in zip(out, want):
        assert (got == np.array(rgb, np.uint8)).all()
    grey_box = np.array([[0, 0, 12, 10]] * 2, np.float32)
    all_grey = augment.crop_resize([grey, grey], grey_box, 8)
    assert all_grey.shape == (2, 8, 8, 1) and (all_grey == GREY).all()


def test_all_grey_folder_stays_single_channel(tmp_path):
    for c in ("a", "b"):
        os.makedirs(tmp_path / c)
        Image.new("L", (20, 20), 60 if c == "a" else 200).save(tmp_path / c / "x.png")
    spec = data.DatasetSpec("grey", "folder", None, folder=str(tmp_path),
                            val_fraction=0.0)
    ds = data.load(spec)
    assert ds.train.source.channels == 1
    images, _ = ds.train.read(np.arange(2))
    assert [im.shape for im in images] == [(20, 20, 1)] * 2
    b = next(pipeline.eval_batches(ds.train, 2, 8))
    np.testing.assert_allclose(_pixels(b), [[60 / 255] * 3, [200 / 255] * 3],
                               atol=1e-5)


# ------------------------------------- item 3: truncated image, removed files, split


def _write_jpegs(root, classes=("cat", "dog"), per_class=50, size=12):
    rng = np.random.default_rng(0)
    for c in classes:
        os.makedirs(os.path.join(root, c), exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size, size, 3), np.uint8)
            Image.fromarray(pixels).save(os.path.join(root, c, f"{i:03d}.jpg"),
                                         quality=90)


def _truncate(path) -> int:
    """Cuts a JPEG inside its entropy-coded data (after the SOS marker)."""
    with open(path, "rb") as f:
        raw = f.read()
    keep = (raw.index(b"\xff\xda") + len(raw)) // 2
    with open(path, "wb") as f:
        f.write(raw[:keep])  # valid header, half the pixels missing
    return keep


def test_check_decodes_every_image_and_names_a_truncated_one(tmp_path):
    root = str(tmp_path / "ds")
    _write_jpegs(root, per_class=6, size=64)
    ok = _check_cli(f"--dataset={root}", "--check")
    assert ok.returncode == 0, ok.stderr
    assert "decoded 12 image files" in ok.stdout
    assert "split " in ok.stdout
    bad = os.path.join(root, "dog", "004.jpg")
    size = _truncate(bad)
    ds = data.load(root)  # the header scan cannot see it: nothing skipped
    assert ds.skipped_files == () and len(ds.train) + len(ds.val) == 12
    with pytest.raises(ValueError, match="Cannot decode image file .*004.jpg") as e:
        data.verify_images(ds)
    assert "\n" not in str(e.value) and bad in str(e.value)
    proc = _check_cli(f"--dataset={root}", "--check")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert bad in proc.stderr and "remove or replace it" in proc.stderr
    assert os.path.getsize(bad) == size  # --check changes nothing on disk
    _truncate(os.path.join(root, "cat", "001.jpg"))  # reported first (scan order)
    with pytest.raises(ValueError, match=r"cat.001.jpg: .* \(1 more undecodable"):
        data.verify_images(data.load(root))


def test_verify_images_skips_array_sources():
    assert data.verify_images(data.load("fashion_mnist_mini")) == 0


def _members(ds):
    keys = ds.train.source.keys
    return ({keys[i] for i in ds.train.indices}, {keys[i] for i in ds.val.indices})


def test_removing_one_image_moves_at_most_one_other(tmp_path):
    root = str(tmp_path / "ds")
    _write_jpegs(root)  # 100 images, val = 20
    train, val = _members(data.load(root))
    assert (len(train), len(val)) == (80, 20) and not train & val
    assert _members(data.load(root)) == (train, val)  # deterministic

    gone = sorted(train)[7]  # a training image: round(99 * 0.2) is still 20
    os.remove(os.path.join(root, gone))
    train2, val2 = _members(data.load(root))
    assert val2 == val and train2 == train - {gone}

    gone = sorted(val)[3]  # a validation image: one training image replaces it
    os.remove(os.path.join(root, gone))
    train3, val3 = _members(data.load(root))
    assert len(val3) == round(98 * 0.2) == 20
    assert val - {gone} <= val3 and len(val3 - val) == 1
    assert train3 == train2 - val3


def test_split_by_path_keeps_fraction_and_seed_semantics(tmp_path):
    keys = [f"c{i % 3}/{i:04d}.png" for i in range(200)]
    for n in (1, 2, 5, 21, 99, 200):
        for fraction in (0.0, 0.2, 0.34, 0.5):
            tr, va = data.holdout_by_key(keys[:n], fraction, seed=0)
            assert len(va) == round(n * fraction) and len(tr) + len(va) == n
            assert sorted(np.concatenate([tr, va]).tolist()) == list(range(n))
    _, va0 = data.holdout_by_key(keys, 0.2, seed=0)
    _, va1 = data.holdout_by_key(keys, 0.2, seed=1)
    assert set(va0) != set(va1)
    # A key's side does not depend on the list order (identity, not position).
    shuffled = list(np.random.default_rng(0).permutation(keys))
    _, va_s = data.holdout_by_key(shuffled, 0.2, seed=0)
    assert {shuffled[i] for i in va_s} == {keys[i] for i in va0}
    with pytest.raises(ValueError, match="val_fraction must be in"):
        data.holdout_by_key(keys, 1.0, seed=0)


def test_split_fingerprint_tracks_the_split_not_the_location(tmp_path):
    root = str(tmp_path / "ds")
    _write_jpegs(root, per_class=10)
    fp = data.split_fingerprint(data.load(root))
    assert len(fp) == 64 and int(fp, 16) >= 0
    assert data.split_fingerprint(data.load(root)) == fp
    moved = str(tmp_path / "elsewhere")
    shutil.copytree(root, moved)
    assert data.split_fingerprint(data.load(moved)) == fp  # location-free
    spec = data.get_spec(root)
    other_seed = data.load(root, split_seed=1)
    assert data.split_fingerprint(other_seed) != fp
    other_fraction = data.load(data.DatasetSpec(
        spec.name, "folder", None, folder=root, val_fraction=0.3))
    assert data.split_fingerprint(other_fraction) != fp
    os.remove(os.path.join(root, "cat", "003.jpg"))
    assert data.split_fingerprint(data.load(root)) != fp
    os.rename(os.path.join(moved, "dog", "005.jpg"),
              os.path.join(moved, "dog", "105.jpg"))
    assert data.split_fingerprint(data.load(moved)) != fp


def test_split_fingerprint_is_stable_across_processes():
    ours = data.split_fingerprint(data.load("fashion_mnist_mini"))
    assert ours != data.split_fingerprint(data.load("fashion_mnist_mini",
                                                    split_seed=1))
    code = ("from nat_jax.data import datasets as data; "
            "print(data.split_fingerprint(data.load('fashion_mnist_mini')))")
    env = dict(os.environ, PYTHONHASHSEED="12345")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True,
                          text=True, timeout=120, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ours


# ---------------------------------------------------- item 7: empty class folder


def _two_classes(root):
    for c, colour in (("bird", (200, 10, 10)), ("frog", (10, 200, 10))):
        os.makedirs(root / "train" / c)
        os.makedirs(root / "test" / c)
        for i in range(3):
            Image.new("RGB", (16, 16), colour).save(root / "train" / c / f"{i}.png")
        Image.new("RGB", (16, 16), colour).save(root / "test" / c / "t.png")


@pytest.mark.parametrize("content", ["empty", "no_images", "only_unreadable"])
def test_empty_class_folder_is_refused(tmp_path, content):
    _two_classes(tmp_path)
    empty = tmp_path / "train" / "zebra"
    os.makedirs(empty)
    if content == "no_images":
        (empty / "notes.txt").write_text("not an image")
    if content == "only_unreadable":
        (empty / "broken.jpg").write_bytes(b"not an image at all")
    warns = content == "only_unreadable"
    with pytest.warns(UserWarning) if warns else contextlib.nullcontext():
        with pytest.raises(ValueError, match="Class folder .*zebra has no") as e:
            data.load(str(tmp_path))
    msg = str(e.value)
    assert "\n" not in msg and "add images or delete the folder" in msg
    if content == "only_unreadable":
        assert "1 unreadable" in msg
    proc = _check_cli(f"--dataset={tmp_path}", "--check")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: Class folder ")
    assert str(empty) in proc.stderr
    shutil.rmtree(empty)  # doing what the message says fixes it
    assert data.load(str(tmp_path)).class_names == ("bird", "frog")


def test_hidden_folders_and_empty_test_class_are_not_classes(tmp_path):
    _two_classes(tmp_path)
    os.makedirs(tmp_path / "train" / ".ipynb_checkpoints")
    os.remove(tmp_path / "test" / "frog" / "t.png")  # test may lack a class
    ds = data.load(str(tmp_path))
    assert ds.class_names == ("bird", "frog") and ds.num_classes == 2
    assert len(ds.test) == 1 and ds.test.labels.tolist() == [0]
