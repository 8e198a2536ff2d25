"""Safe image loading for enrollment and the model tools.

Every image from outside goes through :func:`load_image`: it refuses files
that are too big or claim absurd dimensions *before* decoding them (a
20000x20000 PNG would otherwise take 1.2 GB), decodes grayscale, 16-bit and
alpha images to 8-bit BGR, and applies the EXIF orientation.
"""

from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np

from .errors import ImageError

MAX_FILE_BYTES = 40 * 1024 * 1024
MAX_PIXELS = 40_000_000  # a 48 MP phone photo is bigger than any door camera frame needs
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".pgm", ".ppm"}


def _png_size(head: bytes) -> tuple[int, int] | None:
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        width, height = struct.unpack(">II", head[16:24])
        return width, height
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    if data[:2] != b"\xff\xd8":
        return None
    pos = 2
    while pos + 9 < len(data):
        if data[pos] != 0xFF:
            pos += 1
            continue
        marker = data[pos + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
            pos += 1 if marker == 0xFF else 2
            continue
        length = struct.unpack(">H", data[pos + 2 : pos + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return width, height
        pos += 2 + length
    return None


def declared_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG or JPEG header without decoding; None for other formats."""
    return _png_size(data[:32]) or _jpeg_size(data)


def to_bgr8(image: np.ndarray) -> np.ndarray:
    """Any decoded image (gray, BGRA, 16-bit, float) -> contiguous 8-bit 3-channel BGR."""
    if image.dtype == np.uint16:
        image = (image / 257.0).round().astype(np.uint8)
    elif image.dtype != np.uint8:
        image = np.clip(image.astype(np.float32) * (255.0 if image.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    elif image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    elif image.shape[2] == 1:
        image = cv2.cvtColor(image[..., 0], cv2.COLOR_GRAY2BGR)
    return np.ascontiguousarray(image)


def decode_image(data: bytes, name: str = "image", max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode bytes to 8-bit BGR, refusing oversize and corrupt data with a clear ImageError."""
    if not data:
        raise ImageError(f"{name}: empty file")
    size = declared_size(data)
    if size is not None:
        width, height = size
        if width == 0 or height == 0:
            raise ImageError(f"{name}: header declares a {width}x{height} image")
        if width * height > max_pixels:
            raise ImageError(
                f"{name}: {width}x{height} pixels is over the limit of {max_pixels:,}; "
                "resize it before enrolling"
            )
    buffer = np.frombuffer(data, dtype=np.uint8)
    # IMREAD_ANYDEPTH|ANYCOLOR keeps 16-bit and gray as they are for to_bgr8;
    # leaving out IMREAD_IGNORE_ORIENTATION makes OpenCV apply EXIF rotation.
    image = cv2.imdecode(buffer, cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR)
    if image is None:
        raise ImageError(f"{name}: not a readable image (corrupt, truncated or unsupported format)")
    if image.shape[0] * image.shape[1] > max_pixels:
        raise ImageError(f"{name}: {image.shape[1]}x{image.shape[0]} pixels is over the limit of {max_pixels:,}")
    return to_bgr8(image)


def load_image(path: str | Path, max_bytes: int = MAX_FILE_BYTES, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read an image file as 8-bit BGR with EXIF orientation applied."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise ImageError(f"{path}: {size / 1e6:.1f} MB is over the {max_bytes / 1e6:.0f} MB limit")
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise ImageError(f"{path}: no such file") from exc
    except IsADirectoryError as exc:
        raise ImageError(f"{path}: is a directory, not an image") from exc
    except OSError as exc:
        raise ImageError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    return decode_image(data, str(path), max_pixels)


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES
