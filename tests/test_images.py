"""Bad and unusual image files: each gets a clear ImageError or is decoded correctly."""

import os
import random
import socket
import struct
import threading
import time
import zlib

import cv2
import numpy as np
import pytest

import edge.images
from edge.errors import ImageError
from edge.images import declared_size, decode_image, load_image, read_regular_file

from .conftest import FIXTURES
from .image_bombs import BOMBS, LARGEST, small_image, tiff, tiff_deflate_bomb, tiff_gray


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


# -- decode bombs: refused from the header, before any decoding --------------------------------
@pytest.fixture
def no_decoding(monkeypatch):
    """Fails the test if anything reaches the decoder: these refusals must come from the header."""
    def decoder(*args, **kwargs):
        raise AssertionError("cv2.imdecode was called")

    monkeypatch.setattr(edge.images.cv2, "imdecode", decoder)


@pytest.mark.parametrize("kind", sorted(BOMBS))
def test_each_format_at_its_real_size_decodes_as_declared(kind):
    # The builders' patched fields are the ones OpenCV reads: at the true size they decode.
    data = BOMBS[kind](40, 30)
    assert declared_size(data) == (40, 30)
    image = decode_image(data, kind)
    assert image.shape == (30, 40, 3) and image.dtype == np.uint8
    if kind in ("webp-vp8l", "webp-vp8x", "bmp", "bmp-top-down", "pnm-p3", "pnm-p6", "pam", "png"):
        np.testing.assert_array_equal(image, small_image())  # lossless, colour: same pixels, same way up


@pytest.mark.parametrize("kind", sorted(BOMBS))
def test_decode_bombs_are_refused_before_decoding(kind, no_decoding):
    width, height = LARGEST.get(kind, (30000, 30000))
    data = BOMBS[kind](width, height)
    assert len(data) < 64 * 1024
    start = time.perf_counter()
    with pytest.raises(ImageError, match=f"{width}x{height} pixels is over the limit of 40,000,000"):
        decode_image(data, f"bomb.{kind}")
    assert time.perf_counter() - start < 0.5


def test_real_tiff_deflate_bomb_is_refused_fast(tmp_path, no_decoding):
    # 30 kB that is a complete, valid 30000x30000 image: the old check let it
    # through to a 1.85 GB, 8 s decode.
    path = tmp_path / "bomb.tif"
    path.write_bytes(tiff_deflate_bomb())
    assert path.stat().st_size < 64 * 1024
    start = time.perf_counter()
    with pytest.raises(ImageError, match="30000x30000 pixels is over the limit"):
        load_image(path)
    assert time.perf_counter() - start < 0.5


def test_tiff_first_page_is_the_one_checked():
    small = {"width": 40, "height": 30, "blob": small_image()[..., 0].tobytes()}
    huge = {"width": 30000, "height": 30000, "blob": b"\0" * 100}
    # OpenCV decodes the first page only: a huge second page is never expanded ...
    assert decode_image(tiff([small, huge]), "two-pages.tif").shape == (30, 40, 3)
    # ... and a huge first page is refused whatever follows it.
    with pytest.raises(ImageError, match="30000x30000"):
        decode_image(tiff([huge, small]), "two-pages.tif")


def test_tiff_repeated_size_tag_counts_the_largest(no_decoding):
    # libtiff keeps the first of two ImageWidth entries; reading the largest is safe either way.
    with pytest.raises(ImageError, match="30000x30000"):
        decode_image(tiff_gray(40, 30, repeat={256: 30000, 257: 30000}), "repeated.tif")


@pytest.mark.parametrize("page, message", [
    ({"bits": 32, "extra": {339: (3, [3])}}, "32-bit samples are not supported"),
    ({"bits": 64, "extra": {339: (3, [3])}}, "64-bit samples are not supported"),
    ({"extra": {339: (3, [2])}}, "signed or floating-point samples"),
    ({"photometric": 32845, "spp": 3}, "LogLuv"),
    ({"extra": {256: (11, [1.0])}}, "not an integer"),
])
def test_tiff_samples_that_decode_to_several_times_the_pixels_are_refused(page, message, no_decoding):
    # A float image passes the pixel limit but takes 4-8 bytes a sample, then float copies to convert.
    page = dict(page)
    extra = page.pop("extra", {})
    data = tiff([{"width": 40, "height": 30, "blob": b"\0" * 40 * 30 * 8, "extra": extra, **page}])
    with pytest.raises(ImageError, match=message):
        decode_image(data, "deep.tif")


def _unsupported_samples():
    image = small_image(64, 64)
    samples = {
        "PFM": cv2.imencode(".pfm", image.astype(np.float32) / 255)[1].tobytes(),
        "Radiance HDR": cv2.imencode(".hdr", image.astype(np.float32) / 255)[1].tobytes(),
        "Sun raster": cv2.imencode(".sr", image)[1].tobytes(),
        "OpenEXR": b"\x76\x2f\x31\x01\x02\x00\x00\x00" + b"channels\x00" + b"\0" * 64,
        "JPEG 2000": b"\x00\x00\x00\x0cjP  \r\n\x87\n" + b"\0" * 64,
        "GIF": b"GIF89a" + struct.pack("<HH", 30000, 30000) + b"\0" * 64,
        "HEIF/AVIF": b"\x00\x00\x00\x1cftypavif" + b"\0" * 64,
        "JPEG XL": b"\xff\x0a" + b"\0" * 64,
    }
    j2k = cv2.imencode(".jp2", image)
    if j2k[0]:
        samples["JPEG 2000"] = j2k[1].tobytes()
    return samples


@pytest.mark.parametrize("kind, data", sorted(_unsupported_samples().items()))
def test_formats_whose_header_is_not_read_are_refused_before_decoding(kind, data, no_decoding):
    with pytest.raises(ImageError, match=f"{kind} images are not supported; convert it to JPEG or PNG"):
        decode_image(data, "photo.jpg")  # the suffix is irrelevant: OpenCV sniffs the content


@pytest.mark.parametrize("data", [
    b"\x2f" + struct.pack("<I", 16383 | 16383 << 14) + b"\0" * 64,  # a bare VP8L bitstream, no RIFF
    b"\xff\xd8\x00\x9d\x01\x2a" + struct.pack("<HH", 16383, 16383) + b"\0" * 64,  # "JPEG" that is bare VP8
    b"P7 WIDTH 30000\n",  # PAM needs a line break after P7
    b"\x00\x01not an image at all" * 50,
])
def test_content_not_recognised_never_reaches_the_decoder(data, no_decoding):
    with pytest.raises(ImageError, match="not a readable"):
        decode_image(data, "odd.jpg")


@pytest.mark.parametrize("kind", sorted(BOMBS))
def test_truncated_and_mangled_headers_give_image_errors(kind):
    data = BOMBS[kind](40, 30)
    for cut in (3, 8, 12, 16, 20, 26, 30, 40, 60):
        try:
            decode_image(data[:cut], kind, max_pixels=100_000)
        except ImageError:
            pass
    rng = random.Random(kind)
    for _ in range(150):
        mangled = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            mangled[rng.randrange(2, min(len(mangled), 64))] = rng.randrange(256)
        try:
            image = decode_image(bytes(mangled), kind, max_pixels=100_000)
        except ImageError:
            continue
        assert image.shape[0] * image.shape[1] <= 100_000


def test_pnm_and_pam_headers_are_read_as_opencv_reads_them():
    # Comments anywhere between the numbers, CR line ends, tabs.
    assert declared_size(b"P6\r#c\r40\t#w\n 30\n255\n") == (40, 30)
    assert declared_size(b"P7\r#c\nWIDTH  40 \nHEIGHT\t30\nDEPTH 3\nMAXVAL 255\nENDHDR\n") == (40, 30)
    # OpenCV refuses a repeated PAM field, so do we (whichever value it would take).
    assert declared_size(b"P7\nWIDTH 40\nWIDTH 30000\nHEIGHT 30\nDEPTH 3\nMAXVAL 255\nENDHDR\n") is None


# -- files that are not regular files ---------------------------------------------------------------
def test_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "z.jpg"
    os.mkfifo(fifo)
    start = time.perf_counter()
    with pytest.raises(ImageError, match=r"z.jpg: is a named pipe \(FIFO\), not an image file"):
        load_image(fifo)
    assert time.perf_counter() - start < 0.5


def test_symlink_to_dev_zero_is_refused(tmp_path):
    link = tmp_path / "zero.jpg"
    link.symlink_to("/dev/zero")
    with pytest.raises(ImageError, match=r"is a character device \(/dev/zero\)"):
        load_image(link)


def test_symlink_to_a_regular_file_is_read(tmp_path):
    link = tmp_path / "link.jpg"
    link.symlink_to(FIXTURES / "person_a_1.jpg")
    assert load_image(link).shape == (244, 204, 3)


def test_socket_and_broken_link_are_refused(tmp_path):
    path = tmp_path / "s.jpg"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        server.bind(str(path))
        with pytest.raises(ImageError, match="is a socket"):
            load_image(path)
    finally:
        server.close()
    broken = tmp_path / "broken.jpg"
    broken.symlink_to(tmp_path / "gone.jpg")
    with pytest.raises(ImageError, match=r"no such file \(a broken symbolic link\)"):
        load_image(broken)


def test_fifo_swapped_in_after_the_check_is_caught_on_the_descriptor(tmp_path, monkeypatch):
    # Simulates the race: the path looked like a regular file when checked and
    # is a FIFO when opened.  O_NONBLOCK keeps the open from waiting for a
    # writer, and fstat on the descriptor refuses it.
    fifo = tmp_path / "swapped.jpg"
    os.mkfifo(fifo)
    regular = os.stat(FIXTURES / "person_a_1.jpg")
    real_stat = os.stat
    monkeypatch.setattr(edge.images.os, "stat", lambda p, *a, **k: regular if str(p) == str(fifo) else real_stat(p, *a, **k))
    outcome = []

    def read():
        try:
            read_regular_file(fifo)
        except ImageError as exc:
            outcome.append(str(exc))

    worker = threading.Thread(target=read, daemon=True)
    worker.start()
    worker.join(5)
    assert not worker.is_alive(), "opening the FIFO blocked"
    assert outcome and "is a named pipe" in outcome[0]


def test_png_chunk_longer_than_the_file_is_refused_before_decoding(no_decoding):
    # OpenCV 4.11 allocates a chunk's declared length before reading it: 45
    # bytes declaring a 2 GB text chunk took 2.1 GB and 3 s.
    header = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + struct.pack(">IIBBBBB", 8, 8, 8, 2, 0, 0, 0)
    header += struct.pack(">I", zlib.crc32(header[12:29]) & 0xFFFFFFFF)
    bomb = header + struct.pack(">I", 0x7FFFFFF0) + b"tEXt" + b"\0" * 4
    with pytest.raises(ImageError, match=r"chunk b'tEXt' declares 2,147,483,632 bytes, more than the file holds"):
        decode_image(bomb, "bomb.png")
    data = bytearray(BOMBS["png"](40, 30))
    struct.pack_into(">I", data, 33, len(data))  # IDAT longer than the whole file
    with pytest.raises(ImageError, match="b'IDAT' declares"):
        decode_image(bytes(data), "short.png")
