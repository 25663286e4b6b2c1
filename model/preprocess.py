"""Frame preprocessing as the reference DROID pipeline (SPEC §1): centre crop, bilinear resize, ImageNet norm."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

ASPECT_MIN, ASPECT_MAX = 0.75, 1.35
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # mean, std of RGB in [0, 1]


@dataclass(frozen=True)
class InputSpec:
    """What an encoder takes: square frames of `size` pixels, RGB in [0, 1] normalised by mean and std."""

    size: int
    mean: tuple[float, float, float] = IMAGENET[0]
    std: tuple[float, float, float] = IMAGENET[1]

    def describe(self) -> str:
        """The store's `crop` attribute: the preprocessing in words."""
        norm = "ImageNet normalisation" if (self.mean, self.std) == IMAGENET else \
            f"normalisation mean {list(self.mean)} std {list(self.std)}"
        return f"centre crop to aspect [{ASPECT_MIN}, {ASPECT_MAX}], bilinear resize, {norm}"

    def apply(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 frames [n, H, W, 3] -> the encoder's input [n, 3, size, size]."""
        return preprocess(frames, self.size, self.mean, self.std)


def crop_box(width: int, height: int) -> tuple[int, int, int, int]:
    """(top, left, crop_height, crop_width) of the deterministic centre crop.

    Wider than 1.35: full height, width round(1.35 h). Narrower than 0.75: full width,
    height round(w / 0.75). Otherwise the whole frame. Offsets floor-divided.
    """
    ratio = width / height
    if ratio > ASPECT_MAX:
        h, w = height, int(round(height * ASPECT_MAX))
    elif ratio < ASPECT_MIN:
        h, w = int(round(width / ASPECT_MIN)), width
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def preprocess(frames: np.ndarray, size: int, mean: tuple = IMAGENET[0], std: tuple = IMAGENET[1]) -> torch.Tensor:
    """uint8 frames [n, H, W, 3] -> normalised float32 [n, 3, size, size] (an InputSpec's fields after frames).

    Resized in float on the 0..255 scale without antialiasing, as the reference does.
    """
    n, height, width, _ = frames.shape
    top, left, h, w = crop_box(width, height)
    x = torch.from_numpy(np.ascontiguousarray(frames[:, top:top + h, left:left + w]))
    x = x.permute(0, 3, 1, 2).float()
    if (h, w) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
    return (x - torch.tensor(mean).view(1, 3, 1, 1) * 255) / (torch.tensor(std).view(1, 3, 1, 1) * 255)
