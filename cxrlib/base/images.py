"""Images as the encoder sees them: the one place a radiograph becomes ``pixel_values``.

``load_pixels(path, size)`` reads any image Pillow reads as 8-bit grayscale
(:func:`load_image`: colour to luminance, 16-bit stretched), resizes it
to ``size`` x ``size`` (bilinear with antialiasing; radiographs are near-square and the
published code resized without padding too), repeats it over 3 channels, scales to
[0, 1] and normalises with the ImageNet mean and std that DINOv3 was trained with.

:func:`preprocessing` describes these steps as plain data; anything derived from
``pixel_values`` (the encoder feature cache) keys on it, so a change here (bump
:data:`PREPROCESSING_VERSION`) never serves stale features.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from cxrlib.base.errors import CxrError
from cxrlib.base.storage import is_url, read_bytes

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
    if not is_url(path) and not os.path.isfile(path):
        raise CxrError(f"{path}: image file not found")
    return to_pixels(load_image(path), image_size)


def stretch_to_uint8(values: np.ndarray) -> np.ndarray:
    """Any numeric array stretched linearly from its min..max to uint8 0..255 (all 0 when
    constant): how a high-bit-depth radiograph becomes 8-bit grayscale."""
    a = np.asarray(values, dtype=np.float64)
    lo, hi = float(a.min()), float(a.max())
    scaled = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
    return np.rint(scaled).astype(np.uint8)


MAX_PIXELS = 2**26
"""The most pixels an image file may declare (8192 x 8192; radiographs are a few
thousand pixels a side): a file declaring more is refused before it is decoded, so a
small corrupt header cannot make a reader allocate gigabytes or decode for minutes
(Pillow itself warns at 89M pixels and refuses only at 179M)."""


def check_pixels(img: Image.Image, path: str | os.PathLike, what: str) -> None:
    """CxrError naming ``path`` when an opened (not yet loaded) image is too large."""
    width, height = img.size
    if width * height > MAX_PIXELS:
        raise CxrError(f"{path}: {what} of {width}x{height} pixels is over {MAX_PIXELS} pixels")


def image_source(path: str | os.PathLike, what: str) -> tuple[str | Path, Path | io.BytesIO]:
    """``(name, source)`` of an image file for ``Image.open``: a local path as itself, a
    URL (:mod:`cxrlib.base.storage`) as its bytes; CxrError naming it when it is missing."""
    if is_url(path):
        return path, io.BytesIO(read_bytes(path, what))
    path = Path(path)
    if not path.is_file():
        raise CxrError(f"{path}: {what} file does not exist")
    return path, path


def open_gray(path: str | os.PathLike, what: str) -> np.ndarray:
    """``path`` (a local path or a URL) as a uint8 (H, W) grayscale array (16-bit
    stretched, colour to luminance); a :class:`CxrError` naming the file and ``what``
    it should be otherwise."""
    path, source = image_source(path, what)
    try:
        with Image.open(source) as img:
            check_pixels(img, path, what)
            img.load()
            if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
                # High bit depth (e.g. 12/16-bit radiographs): stretch min..max to 0..255.
                gray = stretch_to_uint8(np.asarray(img))
            else:
                gray = np.asarray(img.convert("L"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CxrError(f"{path}: not a readable {what} ({reason})") from None
    except Image.DecompressionBombError as err:
        raise CxrError(f"{path}: not a readable {what} ({err})") from None
    if gray.ndim != 2:
        raise CxrError(f"{path}: {what} is not a 2-D image (shape {gray.shape})")
    return np.ascontiguousarray(gray)


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as 8-bit grayscale.

    Colour images are converted to luminance; high-bit-depth images (16-bit PNG) are
    stretched linearly from their min..max to 0..255.

    Parameters
    ----------
    path : path-like or str
        Image file (any format Pillow reads): a local path or an fsspec URL
        (:mod:`cxrlib.base.storage`).

    Returns
    -------
    numpy.ndarray
        uint8 array of shape (height, width), values 0..255.

    Raises
    ------
    CxrError
        Naming the file, when it does not exist or cannot be decoded.
    """
    return open_gray(path, "image")
