"""Tests of service.preprocess.image: formats, modes, EXIF, limits, patches."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.bundle import ImagePreprocess
from service.errors import InvalidInput, TooLarge
from service.preprocess import (
    IMAGE_EXTENSIONS,
    array_to_patches,
    decode_image,
    image_to_array,
    load_image,
    preprocess_image,
    sniff_modality,
)

MAX = 40_000_000


def picture(width: int = 40, height: int = 30) -> Image.Image:
    """Left half red, right half blue: easy to recognise after rotation."""
    arr = np.zeros((height, width, 3), dtype=np.uint8)
    arr[:, : width // 2] = (255, 0, 0)
    arr[:, width // 2 :] = (0, 0, 255)
    return Image.fromarray(arr, mode="RGB")


def save(img: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def png_chunk(kind: bytes, body: bytes) -> bytes:
    crc = zlib.crc32(kind + body) & 0xFFFFFFFF
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"])
def test_formats_decode_to_rgb(fmt: str) -> None:
    data = save(picture(), fmt)
    img = decode_image(data, MAX)
    assert img.mode == "RGB" and img.size == (40, 30)
    left, right = img.getpixel((5, 15)), img.getpixel((35, 15))
    assert isinstance(left, tuple) and isinstance(right, tuple)
    assert left[0] > 200 and left[2] < 60 and right[2] > 200 and right[0] < 60
    assert sniff_modality(data) == "image"


def test_gif_first_frame() -> None:
    frames = [Image.new("RGB", (16, 16), c) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=50)
    img = decode_image(buf.getvalue(), MAX)
    assert img.mode == "RGB" and img.getpixel((8, 8)) == (255, 0, 0)


@pytest.mark.parametrize(
    ("mode", "fmt", "value", "expected"),
    [
        ("L", "PNG", 128, (128, 128, 128)),
        ("1", "PNG", 1, (255, 255, 255)),
        ("P", "PNG", 3, None),
        ("LA", "PNG", (0, 0), (255, 255, 255)),
        ("RGBA", "PNG", (0, 0, 0, 0), (255, 255, 255)),
        ("RGBA", "WEBP", (0, 0, 0, 255), (0, 0, 0)),
        ("CMYK", "JPEG", (0, 255, 255, 0), None),
        ("CMYK", "TIFF", (0, 0, 0, 0), (255, 255, 255)),
        ("I;16", "PNG", 65535, (255, 255, 255)),
        ("I;16", "TIFF", 32896, (128, 128, 128)),
    ],
)
def test_modes_convert_to_rgb(
    mode: str, fmt: str, value: int | tuple[int, ...], expected: tuple[int, int, int] | None
) -> None:
    img = Image.new(mode, (8, 8), value)
    if mode == "P":
        img.putpalette([0, 0, 0, 10, 20, 30, 40, 50, 60, 200, 100, 50] + [0] * 756)
        expected = (200, 100, 50)
    out = decode_image(save(img, fmt), MAX)
    assert out.mode == "RGB" and out.size == (8, 8)
    pixel = out.getpixel((4, 4))
    assert isinstance(pixel, tuple)
    if expected is None:  # lossy CMYK JPEG: just a strong red
        assert pixel[0] > 200 and pixel[1] < 60 and pixel[2] < 60
    else:
        assert max(abs(a - b) for a, b in zip(pixel, expected, strict=True)) <= 2


def test_transparent_palette_gif_is_white() -> None:
    img = Image.new("P", (8, 8), 0)
    img.putpalette([0, 0, 0] + [255, 0, 0] * 255)
    out = decode_image(save(img, "GIF", transparency=0), MAX)
    assert out.getpixel((0, 0)) == (255, 255, 255)


def test_exif_orientation_6_rotates() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = save(picture(40, 30), "JPEG", exif=exif)
    img = decode_image(data, MAX)
    assert img.size == (30, 40)
    top, bottom = img.getpixel((15, 5)), img.getpixel((15, 35))
    assert isinstance(top, tuple) and isinstance(bottom, tuple)
    assert top[0] > 200 and bottom[2] > 200  # the left (red) half is now on top


def test_huge_png_header_is_too_large_without_decoding() -> None:
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IEND", b"")
    with pytest.raises(TooLarge) as err:
        decode_image(data, MAX)
    assert err.value.status_code == 413


def test_max_pixels_is_checked_from_the_header() -> None:
    ihdr = struct.pack(">IIBBBBB", 5000, 5000, 8, 2, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IEND", b"")
    with pytest.raises(TooLarge, match="5000x5000"):
        decode_image(data, 1_000_000)
    with pytest.raises(TooLarge):
        decode_image(save(picture(), "PNG"), 100)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "WEBP"])
def test_truncated_is_invalid(fmt: str) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = save(Image.fromarray(noise), fmt)
    with pytest.raises(InvalidInput):
        decode_image(data[: len(data) // 2], MAX)


@pytest.mark.parametrize("data", [b"hello world", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, b""])
def test_garbage_is_invalid(data: bytes) -> None:
    with pytest.raises(InvalidInput):
        decode_image(data, MAX)


def test_image_to_array_resizes_short_side_and_crops() -> None:
    arr = image_to_array(picture(128, 64), 32)
    assert arr.shape == (32, 32, 3) and arr.dtype == np.float32
    assert arr.min() >= 0.0 and arr.max() <= 1.0
    # The centre crop straddles the red/blue border in the middle.
    assert arr[16, 2, 0] > 0.9 and arr[16, 29, 2] > 0.9


def test_patches_shape_and_content() -> None:
    spec = ImagePreprocess.model_validate({})  # the default spec
    assert spec.grid == (7, 7)
    arr = np.random.default_rng(1).random((64, 64, 3), dtype=np.float32)
    patches = array_to_patches(arr, spec)
    assert patches.shape == (7, 7, 3, 16, 16) and patches.dtype == np.float32
    assert patches.flags.c_contiguous
    norm = (arr - np.float32(0.5)) / np.float32(0.25)
    np.testing.assert_allclose(patches[0, 1], norm[0:16, 8:24].transpose(2, 0, 1), rtol=1e-6)
    np.testing.assert_allclose(patches[6, 6], norm[48:64, 48:64].transpose(2, 0, 1), rtol=1e-6)
    with pytest.raises(ValueError):
        array_to_patches(arr[:32], spec)


def test_preprocess_image_and_load_image(tmp_path: Path) -> None:
    spec = ImagePreprocess(image_size=32, patch_size=8, patch_stride=8)
    path = tmp_path / "p.png"
    picture(50, 70).save(path)
    img = load_image(path)
    assert img.mode == "RGB"
    out = preprocess_image(img, spec)
    assert out.shape == (4, 4, 3, 8, 8)
    np.testing.assert_array_equal(out, preprocess_image(decode_image(path.read_bytes(), MAX), spec))
    with pytest.raises(FileNotFoundError):
        load_image(tmp_path / "missing.png")
    assert {".jpg", ".png", ".webp", ".tiff"} <= set(IMAGE_EXTENSIONS)


def test_sniff_modality_for_text_and_unknown() -> None:
    assert sniff_modality(b"Hello, world. This is text.") is None
    assert sniff_modality("naïve café".encode()) is None
    assert sniff_modality(b"") is None
    assert sniff_modality(b"RIFF\x00\x00\x00\x00AVI LIST") is None
    assert sniff_modality(b"BMW is a car maker, not a bitmap") is None
