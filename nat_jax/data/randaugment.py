"""RandAugment (Cubuk et al. 2020) on the host, with PIL, for fine-tuning.

Each image gets `num_ops` operations drawn uniformly (with replacement) from
the 14 of the paper (Cutout excluded): Identity, AutoContrast, Equalize,
Rotate, Solarize, Color, Posterize, Contrast, Brightness, Sharpness, ShearX,
ShearY, TranslateX, TranslateY, each applied with probability `prob` at the
global magnitude `magnitude` in [0, 10] (signed ops get a random sign). The
magnitude ranges follow the common (timm / EfficientNet) convention:
rotate 30 degrees, shear 0.3, translate 45% of the side, enhance factor
1 +- 0.9, posterize down to 4 bits, solarize threshold down to 0. Geometric
ops fill with grey (128). Works on uint8 images with 1 or 3 channels.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

OPS = ("identity", "auto_contrast", "equalize", "rotate", "solarize", "color",
       "posterize", "contrast", "brightness", "sharpness", "shear_x", "shear_y",
       "translate_x", "translate_y")
_FILL = 128


@dataclasses.dataclass(frozen=True)
class RandAugment:
    """RandAugment settings: `num_ops` ops per image at `magnitude` (0..10)."""

    num_ops: int = 2
    magnitude: float = 9.0
    prob: float = 0.5

    def __post_init__(self):
        if self.num_ops < 0:
            raise ValueError(f"num_ops must be >= 0, got {self.num_ops}.")
        if not 0.0 <= self.magnitude <= 10.0:
            raise ValueError(f"magnitude must be in [0, 10], got {self.magnitude}.")
        if not 0.0 <= self.prob <= 1.0:
            raise ValueError(f"prob must be in [0, 1], got {self.prob}.")

    def __call__(self, images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Augments a batch uint8[B, H, W, C] (C = 1 or 3); returns a new array."""
        out = np.empty_like(images)
        for i, img in enumerate(images):
            out[i] = self.one(img, rng)
        return out

    def one(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One uint8[H, W, C] image."""
        c = image.shape[-1]
        pil = Image.fromarray(image[..., 0] if c == 1 else image)
        for _ in range(self.num_ops):
            op = OPS[int(rng.integers(len(OPS)))]
            apply = rng.uniform() < self.prob
            sign = 1.0 if rng.uniform() < 0.5 else -1.0
            if apply:
                pil = apply_op(pil, op, self.magnitude, sign)
        return np.asarray(pil).reshape(image.shape)


def apply_op(img: Image.Image, op: str, magnitude: float, sign: float = 1.0
             ) -> Image.Image:
    """Applies one RandAugment op at `magnitude` in [0, 10] (sign for +- ops)."""
    m = magnitude / 10.0
    fill = _FILL if img.mode == "L" else (_FILL,) * 3
    w, h = img.size
    if op == "identity":
        return img
    if op == "auto_contrast":
        return ImageOps.autocontrast(img)
    if op == "equalize":
        return ImageOps.equalize(img)
    if op == "rotate":
        return img.rotate(sign * 30.0 * m, resample=Image.BILINEAR, fillcolor=fill)
    if op == "solarize":
        return ImageOps.solarize(img, int(256 - 256 * m))
    if op == "posterize":
        return ImageOps.posterize(img, max(1, int(round(8 - 4 * m))))
    enhancers = {"color": ImageEnhance.Color, "contrast": ImageEnhance.Contrast,
                 "brightness": ImageEnhance.Brightness,
                 "sharpness": ImageEnhance.Sharpness}
    if op in enhancers:
        return enhancers[op](img).enhance(max(0.0, 1.0 + sign * 0.9 * m))
    affine = {"shear_x": (1, sign * 0.3 * m, 0, 0, 1, 0),
              "shear_y": (1, 0, 0, sign * 0.3 * m, 1, 0),
              "translate_x": (1, 0, sign * 0.45 * m * w, 0, 1, 0),
              "translate_y": (1, 0, 0, 0, 1, sign * 0.45 * m * h)}
    if op in affine:
        return img.transform(img.size, Image.AFFINE, affine[op],
                             resample=Image.BILINEAR, fillcolor=fill)
    raise ValueError(f"Unknown RandAugment op {op!r}; known: {OPS}.")
