"""Images as the encoder sees them: the one place a radiograph becomes ``pixel_values``.

``load_pixels(path, size)`` reads any image Pillow reads as 8-bit grayscale
(:func:`cxrlib.explore.load_image`: colour to luminance, 16-bit stretched), resizes it
to ``size`` x ``size`` (bilinear with antialiasing; radiographs are near-square and the
published code resized without padding too), repeats it over 3 channels, scales to
[0, 1] and normalises with the ImageNet mean and std that DINOv3 was trained with.

:func:`preprocessing` describes these steps as plain data; anything derived from
``pixel_values`` (the encoder feature cache) keys on it, so a change here (bump
:data:`PREPROCESSING_VERSION`) never serves stale features.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image

from cxrlib.errors import CxrError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PREPROCESSING_VERSION = 1


def preprocessing(image_size: int) -> dict:
    """The preprocessing of :func:`load_pixels` at ``image_size``, as JSON-ready data."""
    return {
        "version": PREPROCESSING_VERSION,
        "image_size": int(image_size),
        "resize": "bilinear-antialias-square",
        "channels": "gray-repeated-3",
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
    }


def resize_gray(gray: np.ndarray, image_size: int) -> np.ndarray:
    """A uint8 (H, W) array resized to (S, S) (bilinear, antialiased), or as is."""
    if gray.shape == (image_size, image_size):
        return gray
    img = Image.fromarray(gray).resize((image_size, image_size), Image.Resampling.BILINEAR)
    return np.asarray(img)


def normalise(gray: torch.Tensor) -> torch.Tensor:
    """uint8 (..., S, S) grayscale -> (..., 3, S, S) float32 in ImageNet normalisation."""
    x = gray.to(torch.float32).div(255.0).unsqueeze(-3)
    x = x.expand(*x.shape[:-3], 3, *x.shape[-2:])
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (x - mean) / std


def to_pixels(gray: np.ndarray, image_size: int) -> torch.Tensor:
    """A uint8 (H, W) grayscale array -> (3, S, S) float32 normalised ``pixel_values``."""
    if gray.ndim != 2 or gray.dtype != np.uint8:
        raise ValueError(f"expected a uint8 (H, W) array, got {gray.dtype} {gray.shape}")
    return normalise(torch.from_numpy(np.array(resize_gray(gray, image_size))))  # a copy


def load_pixels(path: str | os.PathLike, image_size: int) -> torch.Tensor:
    """Read ``path`` as (3, S, S) float32 ``pixel_values`` (S = ``image_size``).

    Raises
    ------
    CxrError
        Naming the file, when it is missing or not a readable image.
    """
    from cxrlib.explore import load_image

    if not os.path.isfile(path):
        raise CxrError(f"{path}: image file not found")
    return to_pixels(load_image(path), image_size)
