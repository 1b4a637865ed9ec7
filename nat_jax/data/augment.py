"""Image transforms of the NAT/OFA input pipeline, in NumPy + PIL (no TensorFlow).

Training (OFA `build_train_transform`): random resized crop (area scale
U(min_scale, 1), log-uniform aspect ratio in [3/4, 4/3], 10 tries then a centre
crop), horizontal flip, colour jitter (brightness factor 1 +- 32/255, saturation
factor 1 +- 0.5, applied in that fixed order), ImageNet mean/std normalisation.
Evaluation (OFA `build_valid_transform`): resize the shorter side to
ceil(r / 0.875), centre crop r x r. Each crop + resize is one bilinear PIL
`resize(box=...)` call, so any source size maps to any resolution directly.

All random draws that do not depend on the output resolution (crop box in source
pixels, flip, jitter factors) are sampled up front, so the same draws can be
rendered at any resolution (calibration reuses them across subnets).
"""

import dataclasses
import math
from typing import Sequence

import numpy as np
from PIL import Image

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
_GRAY_WEIGHTS = np.array([0.299, 0.587, 0.114], np.float32)


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation; defaults are OFA's ImageNet training transform."""

    min_scale: float = 0.08
    max_scale: float = 1.0
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    flip: bool = True
    brightness: float = 32.0 / 255.0
    saturation: float = 0.5

    def __post_init__(self):
        if not 0.0 < self.min_scale <= self.max_scale <= 1.0:
            raise ValueError(
                f"Need 0 < min_scale <= max_scale <= 1, got {self.min_scale=}, "
                f"{self.max_scale=}."
            )
        if not 0.0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"Need 0 < ratio[0] <= ratio[1], got {self.ratio=}.")


@dataclasses.dataclass(frozen=True)
class TrainParams:
    """Per-image random draws of one training batch (resolution independent).

    Attributes:
      boxes: float32[B, 4] crop boxes (x0, y0, x1, y1) in source pixels.
      flip: bool[B] horizontal flips.
      brightness: float32[B] multiplicative brightness factors.
      saturation: float32[B] saturation factors (0 = grey, 1 = unchanged).
    """

    boxes: np.ndarray
    flip: np.ndarray
    brightness: np.ndarray
    saturation: np.ndarray


def sample_train_params(
    rng: np.random.Generator, sizes: np.ndarray, cfg: AugmentConfig
) -> TrainParams:
    """Draws random-resized-crop boxes, flips and jitter for a batch.

    Args:
      rng: NumPy generator (seeded by the caller for reproducibility).
      sizes: int[B, 2] source (height, width) of each image.
      cfg: augmentation settings.
    """
    sizes = np.asarray(sizes, np.float64).reshape(-1, 2)
    b, tries = sizes.shape[0], 10
    h, w = sizes[:, 0], sizes[:, 1]
    area = h * w * rng.uniform(cfg.min_scale, cfg.max_scale, (tries, b))
    log_r = rng.uniform(math.log(cfg.ratio[0]), math.log(cfg.ratio[1]), (tries, b))
    ratio = np.exp(log_r)
    cw = np.round(np.sqrt(area * ratio))
    ch = np.round(np.sqrt(area / ratio))
    ok = (cw > 0) & (ch > 0) & (cw <= w) & (ch <= h)
    first = np.argmax(ok, axis=0)
    any_ok = ok.any(axis=0)
    cols = np.arange(b)
    cw, ch = cw[first, cols], ch[first, cols]
    ux, uy = rng.uniform(size=(2, b))
    x0 = np.floor(ux * (w - cw + 1))
    y0 = np.floor(uy * (h - ch + 1))
    # Fallback (torchvision): centre crop with the aspect ratio clamped.
    in_ratio = w / h
    fw = np.where(in_ratio < cfg.ratio[0], w, np.where(
        in_ratio > cfg.ratio[1], np.round(h * cfg.ratio[1]), w))
    fh = np.where(in_ratio < cfg.ratio[0], np.round(w / cfg.ratio[0]), h)
    cw, ch = np.where(any_ok, cw, fw), np.where(any_ok, ch, fh)
    x0 = np.where(any_ok, x0, np.floor((w - cw) / 2))
    y0 = np.where(any_ok, y0, np.floor((h - ch) / 2))
    boxes = np.stack([x0, y0, x0 + cw, y0 + ch], axis=1).astype(np.float32)
    flip = rng.uniform(size=b) < 0.5 if cfg.flip else np.zeros(b, bool)
    bri = rng.uniform(1 - cfg.brightness, 1 + cfg.brightness, b).astype(np.float32)
    sat = rng.uniform(1 - cfg.saturation, 1 + cfg.saturation, b).astype(np.float32)
    return TrainParams(boxes, flip, bri, sat)


def eval_boxes(sizes: np.ndarray, resolution: int, crop_fraction=0.875) -> np.ndarray:
    """Source boxes of "resize shorter side to ceil(r / 0.875), centre crop r".

    Returns:
      float32[B, 4] boxes (x0, y0, x1, y1) in source pixels.
    """
    sizes = np.asarray(sizes, np.float64).reshape(-1, 2)
    h, w = sizes[:, 0], sizes[:, 1]
    resized_short = math.ceil(resolution / crop_fraction)
    side = resolution * np.minimum(h, w) / resized_short  # crop side in source px
    x0, y0 = (w - side) / 2, (h - side) / 2
    return np.stack([x0, y0, x0 + side, y0 + side], axis=1).astype(np.float32)


def crop_resize(
    images: Sequence[np.ndarray], boxes: np.ndarray, resolution: int
) -> np.ndarray:
    """Bilinear crop + resize of each image to resolution x resolution.

    Args:
      images: B uint8 arrays [H_i, W_i, C_i] (C_i = 1, 3 or 4; sizes and
        channel counts may differ).
      boxes: float32[B, 4] (x0, y0, x1, y1) in source pixels.
      resolution: output side r.

    Returns:
      uint8[B, r, r, C]: C = 1 when every image is grey, else 3 (grey images
      replicated to RGB, alpha dropped), whatever the order of the images.
    """
    channels = 1 if all(img.shape[-1] == 1 for img in images) else 3
    out = np.empty((len(images), resolution, resolution, channels), np.uint8)
    size = (resolution, resolution)
    for i, (img, box) in enumerate(zip(images, boxes)):
        if img.shape[-1] != channels:
            img = to_rgb(img)
        pil = Image.fromarray(img[..., 0] if channels == 1 else img)
        res = pil.resize(size, Image.BILINEAR, box=tuple(float(v) for v in box))
        out[i] = np.asarray(res).reshape(resolution, resolution, channels)
    return out


def to_rgb(img: np.ndarray) -> np.ndarray:
    """uint8[H, W, 1|3|4] -> uint8[H, W, 3]."""
    if img.ndim == 2:
        img = img[..., None]
    if img.shape[-1] == 1:
        return np.repeat(img, 3, axis=-1)
    return img[..., :3]


def to_network_input(images: np.ndarray, params: TrainParams | None = None
                     ) -> np.ndarray:
    """Flip, colour jitter (if `params`), 3 channels and normalisation.

    Args:
      images: uint8[B, r, r, C], C = 1 or 3 (1: grey, where saturation is a
        no-op, so jitter runs on one channel before broadcasting to 3).
      params: training draws, or None for evaluation.

    Returns:
      float32[B, r, r, 3] normalised with ImageNet mean/std.
    """
    if params is not None and params.flip.any():
        images = images.copy()
        images[params.flip] = images[params.flip, :, ::-1]
    scale = np.full((len(images), 1, 1, 1), 1.0 / 255.0, np.float32)
    if params is not None:
        scale *= params.brightness[:, None, None, None]
    x = images * scale  # float32
    if params is not None:
        if x.shape[-1] == 3:
            gray = x[..., :1] * _GRAY_WEIGHTS[0]
            gray += x[..., 1:2] * _GRAY_WEIGHTS[1]
            gray += x[..., 2:3] * _GRAY_WEIGHTS[2]
            x -= gray
            x *= params.saturation[:, None, None, None]
            x += gray
        np.clip(x, 0.0, 1.0, out=x)
    if x.shape[-1] == 1:
        return (x - IMAGENET_MEAN) * (1.0 / IMAGENET_STD)
    x -= IMAGENET_MEAN
    x *= 1.0 / IMAGENET_STD
    return x
