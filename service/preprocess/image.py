"""Image decoding and patching shared by training and the service.

An image (file or uploaded bytes) is opened with Pillow, its size checked
against `max_pixels` from the header before any pixel is decoded, reduced to
its first frame, turned upright by its EXIF orientation and converted to RGB
(transparency composited on white). `image_to_array` resizes the shorter side
to `image_size` and centre-crops; `array_to_patches` normalises and cuts the
overlapping patch grid the image encoder sees.
"""

from __future__ import annotations

import io
import logging
import threading
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps

from service.bundle import ImagePreprocess
from service.errors import CPCError, InvalidInput, TooLarge

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")
ACCEPTED_IMAGES = "JPEG, PNG, WebP, GIF, BMP or TIFF"
DEFAULT_MAX_PIXELS = 40_000_000
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_WHITE = (255, 255, 255)
_OPEN_LOCK = threading.Lock()


def _to_uint8(img: Image.Image) -> Image.Image:
    """Scale a 16-bit, 32-bit integer or float single-band image to L (a float image with
    NaN or infinite pixels is refused: it has no picture to show)."""
    arr = np.asarray(img)
    if img.mode == "F" and not np.isfinite(arr).all():
        raise InvalidInput("the image holds NaN or infinite pixel values")
    if img.mode.startswith("I;16"):
        scaled = arr.astype(np.float64) / 257.0
    elif img.mode == "F" and arr.size and arr.max() <= 1.0:
        scaled = arr.astype(np.float64) * 255.0
    elif img.mode == "I" and arr.size and arr.max() > 255:
        scaled = arr.astype(np.float64) / 257.0
    else:
        scaled = arr.astype(np.float64)
    scaled = np.nan_to_num(scaled, nan=0.0, posinf=255.0, neginf=0.0)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode to RGB; alpha is composited on white."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        return _to_uint8(img).convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in _ALPHA_MODES:
        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, _WHITE)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return img.convert("RGB")


def _upright(img: Image.Image, label: str) -> Image.Image:
    """Apply the EXIF orientation; an unreadable EXIF block is ignored."""
    try:
        return ImageOps.exif_transpose(img) or img
    except Exception as exc:  # a broken EXIF block should not lose the picture
        logger.info("ignoring unreadable EXIF orientation of %s: %r", label, exc)
        return img


def _check_size(img: Image.Image, label: str, max_pixels: int) -> None:
    width, height = img.size
    if width <= 0 or height <= 0:
        raise InvalidInput(f"{label} declares a size of {width}x{height}")
    if width * height > max_pixels:
        raise TooLarge(
            f"{label} is {width}x{height} = {width * height} pixels; the limit is {max_pixels}"
        )


def _open(source: BinaryIO | str, label: str, max_pixels: int) -> Image.Image:
    """Open, check the size, decode the first frame and return it as RGB."""
    try:
        # Pillow's bomb warning becomes an error only while the header is read;
        # the lock keeps concurrent callers from undoing each other's filters.
        with _OPEN_LOCK, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(source)
        with img:
            _check_size(img, label, max_pixels)  # from the header, nothing decoded yet
            img.seek(0)  # first frame of GIF, animated WebP/PNG, multi-page TIFF
            img.load()
            _check_size(img, label, max_pixels)
            rgb = to_rgb(_upright(img, label))
            rgb.load()
            return rgb.copy() if rgb is img else rgb
    except CPCError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise TooLarge(f"{label} is too large to decode safely ({exc})") from exc
    except Image.UnidentifiedImageError as exc:
        raise InvalidInput(
            f"{label} is not a recognised image; expected {ACCEPTED_IMAGES}"
        ) from exc
    except Exception as exc:  # Pillow's decoders raise OSError, SyntaxError, ValueError...
        logger.debug("image decode failed for %s: %r", label, exc)
        raise InvalidInput(
            f"{label} is corrupt or truncated ({exc}); expected {ACCEPTED_IMAGES}"
        ) from exc


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """Decode image bytes to an upright RGB image; InvalidInput or TooLarge."""
    if not data:
        raise InvalidInput("the image input is empty (0 bytes)")
    return _open(io.BytesIO(data), "the image input", max_pixels)


def load_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Read an image file exactly as `decode_image` reads uploaded bytes."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no image file at {path}")
    return _open(str(path), f"image file {path}", max_pixels)


def image_to_array(img: Image.Image, image_size: int) -> np.ndarray:
    """Resize the shorter side to `image_size` (bicubic), centre-crop a square.

    Returns float32 [image_size, image_size, 3] in [0, 1].
    """
    img = to_rgb(img)
    width, height = img.size
    scale = image_size / min(width, height)
    new_w = max(image_size, round(width * scale))
    new_h = max(image_size, round(height * scale))
    if (new_w, new_h) != (width, height):
        img = img.resize((new_w, new_h), resample=Image.Resampling.BICUBIC)
    left, top = (new_w - image_size) // 2, (new_h - image_size) // 2
    img = img.crop((left, top, left + image_size, top + image_size))
    return np.asarray(img, dtype=np.float32) / np.float32(255.0)


def array_to_patches(arr: np.ndarray, spec: ImagePreprocess) -> np.ndarray:
    """Normalise [H, W, 3] in [0, 1] and cut it into [rows, cols, 3, P, P] patches.

    Patch (r, c) covers pixel rows r*stride : r*stride+P and columns
    c*stride : c*stride+P.
    """
    size, p, stride = spec.image_size, spec.patch_size, spec.patch_stride
    if arr.shape != (size, size, 3):
        raise ValueError(f"expected an array of shape {(size, size, 3)}, got {arr.shape}")
    rows, cols = spec.grid
    if rows <= 0 or cols <= 0:
        raise ValueError(f"patch_size {p} does not fit in image_size {size}")
    mean = np.asarray(spec.mean, dtype=np.float32)
    std = np.asarray(spec.std, dtype=np.float32)
    norm = ((arr.astype(np.float32) - mean) / std).transpose(2, 0, 1)  # [3, H, W]
    windows = np.lib.stride_tricks.sliding_window_view(norm, (p, p), axis=(1, 2))
    grid = windows[:, ::stride, ::stride][:, :rows, :cols]  # [3, rows, cols, P, P]
    return np.ascontiguousarray(grid.transpose(1, 2, 0, 3, 4), dtype=np.float32)


def preprocess_image(img: Image.Image, spec: ImagePreprocess) -> np.ndarray:
    """An RGB image to the model's [rows, cols, 3, P, P] float32 patch grid."""
    return array_to_patches(image_to_array(img, spec.image_size), spec)
