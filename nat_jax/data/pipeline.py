"""Batches for adaptation, evaluation and BN re-calibration (NumPy, host side).

Batches are dicts {"image": float32[B, r, r, 3] (NHWC, ImageNet-normalised),
"label": int32[B]} plus "mask": bool[B] for evaluation. The resolution r is a
per-call argument, so the adaptation loop can ask for each batch at its sampled
subnet's resolution. `batch_size` is the global batch: pass
`num_devices=jax.device_count()` to check it splits evenly over a ("data",)
mesh, then `jax.device_put(batch, NamedSharding(mesh, P("data")))`.

Reproducibility: the training batch at global step s depends only on
(seed, s, resolution): epoch e = s // steps_per_epoch uses the permutation
seeded by (seed, e), the augmentation draws are seeded by (seed, s). Resume by
saving `loader.state()` and passing it to `TrainLoader.restore`.
"""

import concurrent.futures as cf
import math
from typing import Iterator

import numpy as np

from nat_jax.data import augment as aug
from nat_jax.data.augment import AugmentConfig
from nat_jax.data.datasets import Split

Batch = dict[str, np.ndarray]


def _check_batch(batch_size: int, num_devices: int):
    if batch_size <= 0 or num_devices <= 0 or batch_size % num_devices:
        raise ValueError(
            f"batch_size ({batch_size}) must be a positive multiple of num_devices "
            f"({num_devices}) so the global batch splits evenly over devices."
        )


def _sizes(images) -> np.ndarray:
    return np.array([im.shape[:2] for im in images], np.int64)


def render_train(images, labels, params, resolution: int) -> Batch:
    """Training batch from decoded images and resolution-free random draws."""
    x = aug.crop_resize(images, params.boxes, resolution)
    return {"image": aug.to_network_input(x, params),
            "label": labels.astype(np.int32)}


def render_eval(images, labels, resolution: int) -> Batch:
    """Evaluation batch: resize to ceil(r / 0.875), centre crop r."""
    x = aug.crop_resize(images, aug.eval_boxes(_sizes(images), resolution),
                            resolution)
    return {"image": aug.to_network_input(x),
            "label": labels.astype(np.int32)}


class TrainLoader:
    """Shuffled, augmented training batches whose resolution is chosen per call.

    A background thread reads/decodes the next `prefetch` batches (resolution
    independent); `next(resolution)` crops, resizes and normalises.

    Args:
      split: training Split.
      batch_size: global batch size (incomplete last batches are dropped).
      seed: shuffling/augmentation seed.
      augment: training augmentation settings.
      num_devices: batch_size must be divisible by this.
      prefetch: batches read ahead in a background thread (0: synchronous).
      num_workers: threads that read ahead (PIL decoding releases the GIL, so
        more than 1 helps large JPEG datasets on many-core hosts).
      step: global step to start from (resume).
    """

    def __init__(
        self,
        split: Split,
        batch_size: int,
        seed: int = 0,
        *,
        augment: AugmentConfig = AugmentConfig(),
        num_devices: int = 1,
        prefetch: int = 2,
        num_workers: int = 1,
        step: int = 0,
    ):
        _check_batch(batch_size, num_devices)
        if len(split) < batch_size:
            raise ValueError(
                f"Split {split.name!r} has {len(split)} examples, fewer than "
                f"batch_size={batch_size}."
            )
        self.split, self.batch_size, self.seed = split, batch_size, int(seed)
        self.augment, self.prefetch, self.step = augment, prefetch, int(step)
        self.steps_per_epoch = len(split) // batch_size
        self._perm_cache: tuple[int, np.ndarray] | None = None
        self._pending: dict[int, cf.Future] = {}
        self._rendered: tuple[int, int, cf.Future] | None = None
        self._pool = cf.ThreadPoolExecutor(num_workers) if prefetch > 0 else None

    @property
    def epoch(self) -> int:
        return self.step // self.steps_per_epoch

    def state(self) -> dict:
        """JSON-able state: {"step", "seed", "batch_size"}."""
        return {"step": self.step, "seed": self.seed, "batch_size": self.batch_size}

    @classmethod
    def restore(cls, split: Split, state: dict, **kwargs) -> "TrainLoader":
        """A loader that continues exactly where `state` was taken."""
        return cls(split, state["batch_size"], state["seed"], step=state["step"],
                   **kwargs)

    def positions(self, step: int) -> np.ndarray:
        """Split positions of the batch at global `step`."""
        epoch, k = divmod(step, self.steps_per_epoch)
        if self._perm_cache is None or self._perm_cache[0] != epoch:
            rng = np.random.default_rng([self.seed, 0, epoch])
            self._perm_cache = (epoch, rng.permutation(len(self.split)))
        return self._perm_cache[1][k * self.batch_size:(k + 1) * self.batch_size]

    def _read(self, step: int):
        images, labels = self.split.read(self.positions(step))
        rng = np.random.default_rng([self.seed, 1, step])
        params = aug.sample_train_params(rng, _sizes(images), self.augment)
        return images, labels, params

    def _raw_future(self, step: int) -> cf.Future:
        if step not in self._pending:
            self._pending[step] = self._pool.submit(self._read, step)
        return self._pending[step]

    def next(self, resolution: int, next_resolution: int | None = None) -> Batch:
        """The batch of the current step at `resolution`; advances the step.

        Args:
          resolution: image side of this batch.
          next_resolution: if the caller already knows the resolution of the
            next call, the background thread renders that batch completely
            (otherwise only reading/decoding is done ahead).
        """
        step = self.step
        self.step = step + 1
        if self._pool is None:
            return render_train(*self._read(step), resolution)
        rendered, self._rendered = self._rendered, None
        for s in [s for s in self._pending if s < step or s > step + self.prefetch]:
            self._pending.pop(s).cancel()
        raw_fut = self._raw_future(step)
        for s in range(step + 1, step + 1 + self.prefetch):
            self._raw_future(s)
        if next_resolution is not None:
            nxt = self._pending[step + 1]
            self._rendered = (step + 1, next_resolution, self._pool.submit(
                lambda: render_train(*nxt.result(), next_resolution)))
        if rendered is not None and rendered[:2] == (step, resolution):
            del self._pending[step]
            return rendered[2].result()
        raw = raw_fut.result()
        del self._pending[step]
        return render_train(*raw, resolution)

    def close(self):
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def eval_batches(
    split: Split,
    batch_size: int,
    resolution: int,
    *,
    num_devices: int = 1,
    prefetch: int = 2,
    num_workers: int = 1,
) -> Iterator[Batch]:
    """Every example of `split` exactly once, in order, at `resolution`.

    All batches have `batch_size` rows; the last one is padded with zero images
    (label 0) whose "mask" is False. Count with `batch["mask"].sum()`.
    `prefetch` batches are rendered ahead by `num_workers` threads.
    """
    _check_batch(batch_size, num_devices)
    n = len(split)
    num_batches = math.ceil(n / batch_size)

    def make(b: int) -> Batch:
        pos = np.arange(b * batch_size, min(n, (b + 1) * batch_size))
        batch = render_eval(*split.read(pos), resolution)
        pad = batch_size - len(pos)
        batch["mask"] = np.arange(batch_size) < len(pos)
        if pad:
            for k in ("image", "label"):
                v = batch[k]
                batch[k] = np.concatenate([v, np.zeros((pad,) + v.shape[1:], v.dtype)])
        return batch

    if prefetch <= 0:
        yield from (make(b) for b in range(num_batches))
        return
    with cf.ThreadPoolExecutor(num_workers) as pool:
        futures = [pool.submit(make, b) for b in range(min(prefetch + 1, num_batches))]
        for b in range(num_batches):
            batch = futures[b].result()
            futures[b] = None
            if b + prefetch + 1 < num_batches:
                futures.append(pool.submit(make, b + prefetch + 1))
            yield batch


class CalibrationSet:
    """Fixed training images + augmentation draws for BN re-calibration.

    OFA re-estimates BN statistics of each subnet on ~2000 training images with
    the training transform. Here the images, crop boxes, flips and jitter are
    drawn once from `seed`, so every subnet sees the same batches rendered at its
    own resolution. Decoded images are kept in memory when they fit `max_bytes`.
    """

    def __init__(
        self,
        split: Split,
        num_images: int = 2000,
        batch_size: int = 200,
        seed: int = 0,
        *,
        augment: AugmentConfig = AugmentConfig(),
        num_devices: int = 1,
        max_bytes: int = 1 << 29,
    ):
        _check_batch(batch_size, num_devices)
        rng = np.random.default_rng([seed, 2])
        n = min(num_images, len(split))
        self.split, self.batch_size = split, batch_size
        self.positions = np.sort(rng.choice(len(split), n, replace=False))
        self._chunks = [
            self.positions[i:i + batch_size] for i in range(0, n, batch_size)
        ]
        self._cache: list | None = None
        raws, total = [], 0
        for chunk in self._chunks:
            images, labels = split.read(chunk)
            params = aug.sample_train_params(rng, _sizes(images), augment)
            total += sum(im.nbytes for im in images)
            raws.append((images, labels, params) if total <= max_bytes else params)
        self._raws = raws

    def __len__(self):
        return len(self._chunks)

    def batches(self, resolution: int) -> Iterator[Batch]:
        """The calibration batches at `resolution` (last one may be smaller)."""
        for chunk, raw in zip(self._chunks, self._raws):
            if isinstance(raw, aug.TrainParams):
                raw = (*self.split.read(chunk), raw)
            yield render_train(*raw, resolution)


def calibration_batches(
    split: Split, resolution: int, num_images: int = 2000, batch_size: int = 200,
    seed: int = 0, **kwargs
) -> list[Batch]:
    """`CalibrationSet(...).batches(resolution)` as a list (see CalibrationSet)."""
    cal = CalibrationSet(split, num_images, batch_size, seed, **kwargs)
    return list(cal.batches(resolution))
