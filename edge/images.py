"""Safe image loading for enrollment and the model tools.

Every image from outside goes through :func:`load_image`: it reads only
regular files (a FIFO or ``/dev/zero`` would block or never end), refuses
files that are too big or whose header claims absurd dimensions *before*
decoding them (a 30000x30000 TIFF of 1 MB would otherwise take 1.9 GB),
decodes grayscale, 16-bit and alpha images to 8-bit BGR, and applies the
EXIF orientation.

``cv2.imdecode`` picks its decoder by sniffing the content, not the file
name, so the size check cannot rely on the suffix: content is passed to the
decoder only when one of the header readers below recognises it exactly as
OpenCV's signature check would, and has read its dimensions.  Everything else
(OpenEXR, Radiance HDR, JPEG 2000, Sun raster, PFM, GIF, AVIF, ...) is refused
before decoding.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
from pathlib import Path

import cv2
import numpy as np

from .errors import ImageError

MAX_FILE_BYTES = 40 * 1024 * 1024
MAX_PIXELS = 40_000_000  # a 48 MP phone photo is bigger than any door camera frame needs
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".pgm", ".ppm"}
DECODED_FORMATS = "JPEG, PNG, WebP, BMP, TIFF or PNM"

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_SPACE = b" \t\n\v\f\r"  # C isspace(), which OpenCV's PNM readers use
_INT_MAX = 2**31 - 1


class _HeaderError(Exception):
    """A recognised format whose header is malformed, truncated or of an unsupported kind."""


def _unpack(fmt: str, data: bytes, offset: int) -> tuple:
    if not 0 <= offset <= len(data):
        raise _HeaderError("header points outside the file")
    try:
        return struct.unpack_from(fmt, data, offset)
    except struct.error:
        raise _HeaderError("header is truncated") from None


# -- PNG ---------------------------------------------------------------------------------
def _png_size(data: bytes) -> tuple[int, int]:
    # libpng requires IHDR (13 bytes) as the first chunk.
    length, kind, width, height = _unpack(">I4sII", data, 8)
    if kind != b"IHDR" or length != 13:
        raise _HeaderError("no IHDR chunk where PNG requires it")
    # OpenCV 4.11's PNG reader (the APNG one) allocates and zero-fills each
    # chunk's declared length before reading it: a 4 kB file declaring a
    # 2 GB chunk takes 2 GB, whatever the image size.  So every chunk must fit
    # in the file, which bounds those allocations by the file size.
    pos, end = 8, len(data)
    while pos + 8 <= end:
        length, kind = _unpack(">I4s", data, pos)
        if pos + 12 + length > end:
            raise _HeaderError(f"chunk {kind!r} declares {length:,} bytes, more than the file holds")
        if kind == b"IEND":
            break
        pos += 12 + length
    return width, height


# -- JPEG --------------------------------------------------------------------------------
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg_size(data: bytes) -> tuple[int, int]:
    # Walks the markers the way libjpeg's next_marker() does (garbage before a
    # marker is skipped, FF fill bytes too, FF00 is not a marker), so the frame
    # header found here is the one libjpeg will use; libjpeg refuses image data
    # (SOS) before a frame header, so the walk ends there.
    pos, end = 2, len(data)
    while True:
        while True:
            while pos < end and data[pos] != 0xFF:
                pos += 1
            while pos < end and data[pos] == 0xFF:
                pos += 1
            if pos >= end:
                raise _HeaderError("no frame header (truncated?)")
            marker = data[pos]
            pos += 1
            if marker != 0:
                break
        if marker in _JPEG_SOF:
            height, width = _unpack(">HH", data, pos + 3)
            return width, height
        if marker in (0xD8, 0xD9, 0xDA):
            raise _HeaderError("no frame header before the image data")
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:
            continue  # markers without a length
        (length,) = _unpack(">H", data, pos)
        if length < 2:
            raise _HeaderError("corrupt marker length")
        pos += length


# -- WebP --------------------------------------------------------------------------------
def _webp_size(data: bytes) -> tuple[int, int]:
    # What WebPGetFeatures() reports from the first 32 bytes, which is what
    # OpenCV allocates: the VP8X canvas when there is one, else the bitstream's.
    chunk = data[12:16]
    if chunk == b"VP8X":
        w1, w2, w3, h1, h2, h3 = _unpack("6B", data, 24)
        return 1 + (w1 | w2 << 8 | w3 << 16), 1 + (h1 | h2 << 8 | h3 << 16)
    if chunk == b"VP8 ":
        start, width, height = _unpack("<3sHH", data, 23)
        if start != b"\x9d\x01\x2a":
            raise _HeaderError("corrupt VP8 frame header")
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L":
        signature, bits = _unpack("<BI", data, 20)
        if signature != 0x2F:
            raise _HeaderError("corrupt VP8L header")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    raise _HeaderError(f"unknown WebP chunk {chunk!r}")


# -- BMP ---------------------------------------------------------------------------------
def _bmp_size(data: bytes) -> tuple[int, int]:
    # As OpenCV's BmpDecoder reads it: 32-bit signed sizes in every header of
    # 36 bytes or more, 16-bit in the OS/2 one; a negative height is a
    # top-down image of that many rows.
    (header,) = _unpack("<i", data, 14)
    if header >= 36:
        width, height = _unpack("<ii", data, 18)
    elif header == 12:
        width, height = _unpack("<HH", data, 18)
    else:
        raise _HeaderError(f"unknown BMP header size {header}")
    if width < 0:
        raise _HeaderError(f"header declares a width of {width}")
    return width, abs(height)


# -- TIFF --------------------------------------------------------------------------------
# Integer field types libtiff accepts for the size tags: type -> (struct code, bytes).
_TIFF_INTS = {1: ("B", 1), 3: ("H", 2), 4: ("I", 4), 6: ("b", 1), 8: ("h", 2), 9: ("i", 4),
              13: ("I", 4), 16: ("Q", 8), 17: ("q", 8), 18: ("Q", 8)}
_TIFF_WIDTH, _TIFF_LENGTH, _TIFF_BITS, _TIFF_PHOTOMETRIC, _TIFF_SAMPLE_FORMAT = 256, 257, 258, 262, 339
_TIFF_LOGLUV = (32844, 32845)


def _tiff_size(data: bytes) -> tuple[int, int]:
    # OpenCV decodes the first image file directory (IFD), so that is the one
    # read here, classic (32-bit offsets) or BigTIFF (64-bit).
    order = "<" if data[:2] == b"II" else ">"
    if data[2:4] in (b"*\x00", b"\x00*"):
        (ifd,) = _unpack(order + "I", data, 4)
        count_fmt, entry_fmt, entry_size, inline = "H", "HHI", 12, 4
    else:
        offset_size, zero, ifd = _unpack(order + "HHQ", data, 4)
        if offset_size != 8 or zero != 0:
            raise _HeaderError("corrupt BigTIFF header")
        count_fmt, entry_fmt, entry_size, inline = "Q", "HHQ", 20, 8
    (entries,) = _unpack(order + count_fmt, data, ifd)
    first = ifd + struct.calcsize(count_fmt)
    if entries == 0 or first + entries * entry_size > len(data):
        raise _HeaderError("image file directory is empty or truncated")
    fields: dict[int, list[int]] = {}
    for i in range(entries):
        at = first + i * entry_size
        tag, kind, count = _unpack(order + entry_fmt, data, at)
        if tag not in (_TIFF_WIDTH, _TIFF_LENGTH, _TIFF_BITS, _TIFF_PHOTOMETRIC, _TIFF_SAMPLE_FORMAT):
            continue
        if kind not in _TIFF_INTS or count == 0:
            raise _HeaderError(f"tag {tag} is not an integer")
        code, size = _TIFF_INTS[kind]
        count = min(count, 16)  # one value per sample at most; 4 samples is OpenCV's limit
        where = at + entry_size - inline
        if count * size > inline:
            (where,) = _unpack(order + ("I" if inline == 4 else "Q"), data, where)
        values = _unpack(f"{order}{count}{code}", data, where)
        if min(values) < 0:
            raise _HeaderError(f"tag {tag} is negative")
        # A repeated tag: libtiff keeps the first, but the largest is the safe reading.
        fields.setdefault(tag, []).extend(values if tag in (_TIFF_BITS, _TIFF_SAMPLE_FORMAT) else values[:1])
    if _TIFF_WIDTH not in fields or _TIFF_LENGTH not in fields:
        raise _HeaderError("the first image has no width or height")
    # Float, 32-bit and LogLuv samples decode to 4-8 bytes per sample (then
    # converted again): several times the memory of the pixel count; no face
    # photo needs them.
    bits = max(fields.get(_TIFF_BITS, [1]))
    if bits > 16:
        raise _HeaderError(f"{bits}-bit samples are not supported; save it with 8 bits per sample")
    if any(v != 1 for v in fields.get(_TIFF_SAMPLE_FORMAT, [1])):
        raise _HeaderError("signed or floating-point samples are not supported; save it as 8-bit unsigned")
    if any(v in _TIFF_LOGLUV for v in fields.get(_TIFF_PHOTOMETRIC, [])):
        raise _HeaderError("LogLuv (HDR) images are not supported")
    return max(fields[_TIFF_WIDTH]), max(fields[_TIFF_LENGTH])


# -- PNM (P1-P6) and PAM (P7) ------------------------------------------------------------
def _pnm_number(data: bytes, pos: int) -> tuple[int, int]:
    # Byte for byte OpenCV's ReadNumber(): whitespace and "#..." comments
    # (to CR or LF) before the digits; the byte after the digits is consumed.
    end = len(data)

    def byte(i: int) -> int:
        if i >= end:
            raise _HeaderError("header is truncated")
        return data[i]

    code = byte(pos)
    while not 0x30 <= code <= 0x39:
        if code == 0x23:  # '#'
            pos += 1
            while byte(pos) not in (0x0A, 0x0D):
                pos += 1
            pos += 1
            code = byte(pos)
        elif code in _SPACE:
            while code in _SPACE:
                pos += 1
                code = byte(pos)
        else:
            raise _HeaderError(f"unexpected byte 0x{code:02x} in the header")
    value = 0
    while 0x30 <= code <= 0x39:
        value = value * 10 + code - 0x30
        if value > _INT_MAX:
            raise _HeaderError("number too large in the header")
        pos += 1
        code = byte(pos)
    return value, pos + 1


def _pnm_size(data: bytes) -> tuple[int, int]:
    width, pos = _pnm_number(data, 2)
    height, _ = _pnm_number(data, pos)
    return width, height


_PAM_KEYS = (b"WIDTH", b"HEIGHT", b"DEPTH", b"MAXVAL", b"TUPLTYPE", b"ENDHDR")


def _pam_size(data: bytes) -> tuple[int, int]:
    # Header lines "KEY value" up to ENDHDR, as OpenCV's ReadPAMHeaderLine()
    # splits them; OpenCV refuses a repeated key, and so does this.
    if data[2:3] not in (b"\n", b"\r"):
        raise _HeaderError("P7 must be followed by a line break")
    header_end = data.find(b"ENDHDR")
    if header_end < 0:
        raise _HeaderError("no ENDHDR")
    fields: dict[bytes, bytes] = {}
    pos = 3
    while pos < header_end:
        while pos < header_end and data[pos] in _SPACE:
            pos += 1
        if pos >= header_end:
            break
        if data[pos] == 0x23:  # a comment runs to CR or LF
            while pos < header_end and data[pos] not in (0x0A, 0x0D):
                pos += 1
            continue
        start = pos
        while pos < header_end and data[pos] not in _SPACE:
            pos += 1
        key = data[start:pos]
        if key not in _PAM_KEYS or key in fields:
            raise _HeaderError(f"unknown or repeated header field {key[:16]!r}")
        if pos < header_end and data[pos] in b"\r\n":
            fields[key] = b""
            continue
        while pos < header_end and data[pos] in _SPACE:
            pos += 1
        start = pos
        while pos < header_end and data[pos] not in b"\r\n":
            pos += 1
        fields[key] = data[start:pos].rstrip(_SPACE)

    def number(key: bytes) -> int:
        text = fields.get(key)
        if text is None:
            raise _HeaderError(f"no {key.decode()} in the header")
        if text and not text.isdigit():
            raise _HeaderError(f"{key.decode()} {text[:16]!r} is not a number")
        value = int(text or b"0")
        if value >= _INT_MAX:
            raise _HeaderError("number too large in the header")
        return value

    return number(b"WIDTH"), number(b"HEIGHT")


# -- recognition -------------------------------------------------------------------------
def _format(data: bytes) -> str | None:
    """The decodable format of ``data``, by the same signature OpenCV checks; None if not one of ours."""
    if data[:2] == b"BM":
        return "BMP"
    if data[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF"
    if data[:8] == _PNG_SIGNATURE:
        return "PNG"
    if len(data) >= 3 and data[:1] == b"P" and data[2] in _SPACE:
        if data[1:2] in (b"1", b"2", b"3", b"4", b"5", b"6"):
            return "PNM"
        if data[1:2] == b"7":
            return "PAM"
    return None


_SIZE_READERS = {"PNG": _png_size, "JPEG": _jpeg_size, "WebP": _webp_size, "BMP": _bmp_size,
                 "TIFF": _tiff_size, "PNM": _pnm_size, "PAM": _pam_size}

# Formats OpenCV (or one of its builds) would also decode, named so the refusal says what it saw.
_UNSUPPORTED = [
    (b"#?RADIANCE", "Radiance HDR"), (b"#?RGBE", "Radiance HDR"), (b"\x76\x2f\x31\x01", "OpenEXR"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000"), (b"\xff\x4f\xff\x51", "JPEG 2000"),
    (b"\x59\xa6\x6a\x95", "Sun raster"), (b"PF", "PFM"), (b"Pf", "PFM"), (b"GIF8", "GIF"),
    (b"\xff\x0a", "JPEG XL"), (b"\x00\x00\x00\x0cJXL \r\n\x87\n", "JPEG XL"), (b"qoif", "QOI"),
]


def _unsupported_kind(data: bytes) -> str | None:
    if data[4:8] == b"ftyp":  # ISO media: AVIF/HEIF, which some OpenCV builds decode
        return "HEIF/AVIF"
    for prefix, kind in _UNSUPPORTED:
        if data.startswith(prefix):
            return kind
    return None


def declared_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the header of an image this module decodes, without decoding; else None."""
    kind = _format(data)
    if kind is None:
        return None
    try:
        return _SIZE_READERS[kind](data)
    except _HeaderError:
        return None


def to_bgr8(image: np.ndarray) -> np.ndarray:
    """Any decoded image (gray, BGRA, 16-bit, float) -> contiguous 8-bit 3-channel BGR."""
    if image.dtype == np.uint16:
        # Rounds like x / 257 does, without the two float64 copies (8x the image) numpy would make.
        image = cv2.convertScaleAbs(image, alpha=1 / 257.0)
    elif image.dtype != np.uint8:
        image = np.clip(image.astype(np.float32) * (255.0 if image.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    elif image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    elif image.shape[2] == 1:
        image = cv2.cvtColor(image[..., 0], cv2.COLOR_GRAY2BGR)
    return np.ascontiguousarray(image)


def check_header(data: bytes, name: str = "image", max_pixels: int = MAX_PIXELS) -> str:
    """Refuse, before any decoding, content that is not a decodable format or declares too many pixels.

    Returns the format name.
    """
    if not data:
        raise ImageError(f"{name}: empty file")
    kind = _format(data)
    if kind is None:
        other = _unsupported_kind(data)
        if other:
            raise ImageError(f"{name}: {other} images are not supported; convert it to JPEG or PNG")
        raise ImageError(f"{name}: not a readable image (not {DECODED_FORMATS} content)")
    try:
        width, height = _SIZE_READERS[kind](data)
    except _HeaderError as exc:
        raise ImageError(f"{name}: not a readable {kind} image ({exc})") from None
    if width == 0 or height == 0:
        raise ImageError(f"{name}: header declares a {width}x{height} image")
    if width * height > max_pixels:
        raise ImageError(
            f"{name}: {width}x{height} pixels is over the limit of {max_pixels:,}; "
            "resize it before enrolling"
        )
    return kind


def decode_image(data: bytes, name: str = "image", max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode bytes to 8-bit BGR, refusing oversize, corrupt and unknown data with a clear ImageError."""
    check_header(data, name, max_pixels)
    buffer = np.frombuffer(data, dtype=np.uint8)
    # IMREAD_ANYDEPTH|ANYCOLOR keeps 16-bit and gray as they are for to_bgr8;
    # leaving out IMREAD_IGNORE_ORIENTATION makes OpenCV apply EXIF rotation.
    try:
        image = cv2.imdecode(buffer, cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR)
    except cv2.error:
        image = None
    if image is None:
        raise ImageError(f"{name}: not a readable image (corrupt, truncated or unsupported format)")
    if image.shape[0] * image.shape[1] > max_pixels:
        raise ImageError(f"{name}: {image.shape[1]}x{image.shape[0]} pixels is over the limit of {max_pixels:,}")
    return to_bgr8(image)


_KINDS = [(stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")]


def _not_regular(path: Path, mode: int) -> ImageError:
    kind = next((text for test, text in _KINDS if test(mode)), "not a regular file")
    target = f" ({os.path.realpath(path)})" if path.is_symlink() else ""
    return ImageError(f"{path}: is {kind}{target}, not an image file")


def read_regular_file(path: str | Path, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of ``path``, which must be a regular file (symlinks followed) of at most ``max_bytes``.

    Anything else is refused before it is read: a FIFO would block forever,
    /dev/zero would never end.  The check is made on the path, then again on
    the opened descriptor, which O_NONBLOCK keeps from blocking if a FIFO was
    swapped in between.
    """
    path = Path(path)
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise _not_regular(path, info.st_mode)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0))
        with open(fd, "rb", closefd=True) as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise _not_regular(path, info.st_mode)
            if info.st_size > max_bytes:
                raise ImageError(f"{path}: {info.st_size / 1e6:.1f} MB is over the {max_bytes / 1e6:.0f} MB limit")
            data = handle.read(max_bytes + 1)
    except FileNotFoundError as exc:
        broken = " (a broken symbolic link)" if os.path.islink(path) else ""
        raise ImageError(f"{path}: no such file{broken}") from exc
    except IsADirectoryError as exc:
        raise ImageError(f"{path}: is a directory, not an image file") from exc
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # opening a socket
            raise ImageError(f"{path}: is a socket, not an image file") from exc
        raise ImageError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    if len(data) > max_bytes:  # it grew after the size check
        raise ImageError(f"{path}: over the {max_bytes / 1e6:.0f} MB limit")
    return data


def load_image(path: str | Path, max_bytes: int = MAX_FILE_BYTES, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read an image file as 8-bit BGR with EXIF orientation applied."""
    return decode_image(read_regular_file(path, max_bytes), str(path), max_pixels)


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES
