"""Bad and unusual image files: each gets a clear ImageError or is decoded correctly."""

import struct
import zlib

import cv2
import numpy as np
import pytest

from edge.errors import ImageError
from edge.images import declared_size, load_image

from .conftest import FIXTURES


def exif_orientation_segment(orientation: int) -> bytes:
    # Big-endian TIFF with one IFD entry: Orientation (0x0112), SHORT, count 1.
    tiff = b"MM\x00*" + struct.pack(">I", 8) + struct.pack(">H", 1)
    tiff += struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack(">I", 0)
    payload = b"Exif\x00\x00" + tiff
    return b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload


def test_fixture_decodes_as_bgr8():
    image = load_image(FIXTURES / "person_a_1.jpg")
    assert image.dtype == np.uint8 and image.shape == (244, 204, 3)


def test_truncated_and_corrupt_files(tmp_path):
    data = (FIXTURES / "person_a_2.jpg").read_bytes()
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(data[: len(data) // 8])
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"\x00\x01not an image at all" * 50)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    for path, message in [(garbage, "not a readable image"), (empty, "empty file")]:
        with pytest.raises(ImageError, match=message):
            load_image(path)
    # libjpeg pads a truncated stream with grey: it may decode, but must not crash or hang
    try:
        image = load_image(truncated)
        assert image.ndim == 3
    except ImageError as exc:
        assert "truncated.jpg" in str(exc)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path / "nope.jpg")
    with pytest.raises(ImageError, match="is a directory"):
        load_image(tmp_path)


def test_huge_png_is_refused_before_decoding(tmp_path):
    # A valid PNG header declaring 20000x20000 with a tiny IDAT: the check must not decode it.
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(b"\x00" * 100)) + chunk(b"IEND", b"")
    path = tmp_path / "huge.png"
    path.write_bytes(png)
    assert declared_size(png) == (20000, 20000)
    with pytest.raises(ImageError, match="20000x20000 pixels is over the limit"):
        load_image(path)


def test_huge_jpeg_header_is_refused(tmp_path):
    data = bytearray((FIXTURES / "person_a_1.jpg").read_bytes())
    w, h = declared_size(bytes(data))
    assert (w, h) == (204, 244)
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 20000, 20000)
    path = tmp_path / "huge.jpg"
    path.write_bytes(bytes(data))
    with pytest.raises(ImageError, match="over the limit"):
        load_image(path)


def test_too_big_file(tmp_path):
    path = tmp_path / "big.jpg"
    path.write_bytes((FIXTURES / "person_a_1.jpg").read_bytes())
    with pytest.raises(ImageError, match="MB is over"):
        load_image(path, max_bytes=1000)


def test_gray_16bit_and_alpha_become_bgr8(tmp_path):
    image = load_image(FIXTURES / "person_a_1.jpg")
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    cv2.imwrite(str(tmp_path / "gray.png"), gray)
    cv2.imwrite(str(tmp_path / "deep.png"), image.astype(np.uint16) * 257)
    cv2.imwrite(str(tmp_path / "alpha.png"), cv2.cvtColor(image, cv2.COLOR_BGR2BGRA))
    for name in ("gray.png", "deep.png", "alpha.png"):
        loaded = load_image(tmp_path / name)
        assert loaded.dtype == np.uint8 and loaded.shape == image.shape, name
    deep = load_image(tmp_path / "deep.png")
    assert np.abs(deep.astype(int) - image.astype(int)).max() <= 1


def test_exif_rotation_is_applied(tmp_path, detector):
    upright = load_image(FIXTURES / "person_a_2.jpg")
    # Store the pixels rotated 90 degrees clockwise and say so in EXIF (orientation 6 =
    # "rotate 90 CW to display"), as a phone held sideways does.
    stored = cv2.rotate(upright, cv2.ROTATE_90_COUNTERCLOCKWISE)
    ok, jpeg = cv2.imencode(".jpg", stored, [cv2.IMWRITE_JPEG_QUALITY, 92])
    data = jpeg.tobytes()
    path = tmp_path / "phone.jpg"
    path.write_bytes(data[:2] + exif_orientation_segment(6) + data[2:])
    loaded = load_image(path)
    assert loaded.shape == upright.shape
    assert len(detector.detect_image(loaded)) == 1
