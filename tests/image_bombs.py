"""Small image files that declare huge dimensions, in every format ``edge.images`` decodes.

Each builder makes a valid file at the size asked for: called with the real
size of ``pixels`` it decodes to that image (the tests check this, so the
patched header fields are the ones OpenCV reads); called with 30000x30000 it is
a decode bomb of a few kB.
"""

from __future__ import annotations

import functools
import struct
import zlib

import cv2
import numpy as np


def small_image(width: int = 40, height: int = 30) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    return np.dstack([(x * 6) % 256, (y * 8) % 256, ((x + y) * 3) % 256]).astype(np.uint8)


def _encode(ext: str, image: np.ndarray, params=()) -> bytearray:
    ok, data = cv2.imencode(ext, image, list(params))
    assert ok, ext
    return bytearray(data.tobytes())


# -- TIFF, written by hand: classic or BigTIFF, either byte order, several pages ----------
_TIFF_CODES = {1: "B", 3: "H", 4: "I", 11: "f", 16: "Q"}  # BYTE, SHORT, LONG, FLOAT, LONG8


def tiff(pages: list[dict], order: str = "<", big: bool = False) -> bytes:
    """pages: dicts of width, height, blob (strip data), and optionally strips (how many
    strips all pointing at blob), rows (per strip), compression, bits, spp, photometric,
    extra ({tag: (type, [values])}) and repeat ({tag: value}: a second entry for that tag)."""
    inline, offset_code, count_code, entry_size = (8, "Q", "Q", 20) if big else (4, "I", "H", 12)
    out = bytearray(16 if big else 8)
    out[0:2] = b"II" if order == "<" else b"MM"
    if big:
        struct.pack_into(order + "HHH", out, 2, 43, 8, 0)
    else:
        struct.pack_into(order + "H", out, 2, 42)
    link = 8 if big else 4  # where the offset of the next IFD goes
    for page in pages:
        blob_at = len(out)
        out += page["blob"]
        strips, spp = page.get("strips", 1), page.get("spp", 1)
        entries = [
            (256, 4, [page["width"]]), (257, 4, [page["height"]]), (258, 3, [page.get("bits", 8)] * spp),
            (259, 3, [page.get("compression", 1)]), (262, 3, [page.get("photometric", 1)]),
            (273, 4, [blob_at] * strips), (277, 3, [spp]), (278, 4, [page.get("rows", page["height"])]),
            (279, 4, [len(page["blob"])] * strips), (284, 3, [1]),
        ]
        entries += [(tag, kind, values) for tag, (kind, values) in page.get("extra", {}).items()]
        entries.sort(key=lambda e: e[0])
        for tag, value in page.get("repeat", {}).items():
            at = next(i for i, e in enumerate(entries) if e[0] == tag)
            entries.insert(at + 1, (tag, 4, [value]))
        out += b"\0" * (len(out) % 2)
        struct.pack_into(order + offset_code, out, link, len(out))
        out += struct.pack(order + count_code, len(entries))
        table = len(out)
        out += b"\0" * (entry_size * len(entries))
        link = len(out)
        out += b"\0" * inline
        for i, (tag, kind, values) in enumerate(entries):
            payload = struct.pack(f"{order}{len(values)}{_TIFF_CODES[kind]}", *values)
            at = table + i * entry_size
            struct.pack_into(order + "HH" + offset_code, out, at, tag, kind, len(values))
            if len(payload) <= inline:
                out[at + entry_size - inline:at + entry_size - inline + len(payload)] = payload
            else:
                out += b"\0" * (len(out) % 2)
                struct.pack_into(order + offset_code, out, at + entry_size - inline, len(out))
                out += payload
    return bytes(out)


def tiff_gray(width: int, height: int, order: str = "<", big: bool = False, **page) -> bytes:
    """A one-page 8-bit gray TIFF; pixel data is a small gradient (too short for a huge size)."""
    pixels = small_image(min(width, 40), min(height, 30))[..., 0]
    return tiff([{"width": width, "height": height, "blob": pixels.tobytes(), **page}], order, big)


def tiff_deflate_bomb(side: int = 30000, rows: int = 1000) -> bytes:
    """A complete, valid side x side gray TIFF of zeros (deflate): what the decoder would really expand."""
    blob = zlib.compress(b"\0" * (side * rows), 9)
    return tiff([{"width": side, "height": side, "blob": blob, "strips": side // rows, "rows": rows,
                  "compression": 8}])


# -- WebP ---------------------------------------------------------------------------------
def webp_vp8l(width: int, height: int) -> bytes:
    data = _encode(".webp", small_image())  # lossless: a VP8L chunk
    assert data[12:16] == b"VP8L"
    (bits,) = struct.unpack_from("<I", data, 21)
    struct.pack_into("<I", data, 21, (bits & ~0xFFFFFFF) | (width - 1) | (height - 1) << 14)
    return bytes(data)


def webp_vp8(width: int, height: int) -> bytes:
    data = _encode(".webp", small_image(), [cv2.IMWRITE_WEBP_QUALITY, 80])  # lossy: a "VP8 " chunk
    assert data[12:16] == b"VP8 "
    struct.pack_into("<HH", data, 26, width, height)
    return bytes(data)


def webp_vp8x(width: int, height: int) -> bytes:
    """The extended format: a VP8X chunk with the canvas size, then the (40x30) bitstream."""
    chunk = bytes(_encode(".webp", small_image())[12:])
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\0\0\0\0" + (width - 1).to_bytes(3, "little") \
        + (height - 1).to_bytes(3, "little")
    body = b"WEBP" + vp8x + chunk
    return b"RIFF" + struct.pack("<I", len(body)) + body


# -- BMP ----------------------------------------------------------------------------------
def bmp(width: int, height: int, top_down: bool = False) -> bytes:
    image = small_image()
    data = _encode(".bmp", image[::-1] if top_down else image)
    struct.pack_into("<ii", data, 18, width, -height if top_down else height)
    return bytes(data)


def bmp_core(width: int, height: int) -> bytes:
    """The OS/2 BITMAPCOREHEADER: 12 bytes, 16-bit unsigned sizes."""
    image = small_image(min(width, 40), min(height, 30))
    row = (image.shape[1] * 3 + 3) & ~3
    pixels = b"".join(r.tobytes().ljust(row, b"\0") for r in image[::-1])
    header = struct.pack("<IHHHH", 12, width, height, 1, 24)
    return b"BM" + struct.pack("<IHHI", 14 + 12 + len(pixels), 0, 0, 26) + header + pixels


# -- PNM (P1-P6) and PAM (P7), with comments where the format allows them --------------------
def pnm(kind: int, width: int, height: int) -> bytes:
    image = small_image(min(width, 40), min(height, 30))
    gray = image[..., 0]
    head = f"P{kind}\n# made by the edge tests\n{width}\n# the height\n{height}"
    if kind in (1, 4):
        bits = (gray > 127).astype(np.uint8)
        body = (" ".join(map(str, bits.ravel())).encode() if kind == 1
                else np.packbits(bits, axis=1).tobytes())
    else:
        head += " # maxval next\n255"
        samples = gray if kind in (2, 5) else image[..., ::-1]
        body = " ".join(map(str, samples.ravel())).encode() if kind in (2, 3) else samples.tobytes()
    return head.encode() + b"\n" + body + b"\n"


def pam(width: int, height: int) -> bytes:
    image = small_image(min(width, 40), min(height, 30))
    # Channel order as OpenCV writes PAM: BGR, no TUPLTYPE.
    head = f"P7\n# comment\nWIDTH {width}\n#another\nHEIGHT {height}\nDEPTH 3\nMAXVAL 255\nENDHDR\n"
    return head.encode() + image.tobytes()


# -- PNG, JPEG ----------------------------------------------------------------------------
def png(width: int, height: int) -> bytes:
    data = _encode(".png", small_image())
    struct.pack_into(">II", data, 16, width, height)
    struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    return bytes(data)


def jpeg(width: int, height: int, progressive: bool = False) -> bytes:
    data = _encode(".jpg", small_image(), [cv2.IMWRITE_JPEG_PROGRESSIVE, int(progressive)])
    sof = data.find(b"\xff\xc2" if progressive else b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


BOMBS = {
    "tiff-le": lambda w, h: tiff_gray(w, h, "<"),
    "tiff-be": lambda w, h: tiff_gray(w, h, ">"),
    "bigtiff-le": lambda w, h: tiff_gray(w, h, "<", big=True),
    "bigtiff-be": lambda w, h: tiff_gray(w, h, ">", big=True),
    "tiff-strips": lambda w, h: tiff_gray(w, h, rows=10, strips=(min(h, 30) + 9) // 10),
    "webp-vp8": webp_vp8,
    "webp-vp8l": webp_vp8l,
    "webp-vp8x": webp_vp8x,
    "bmp": bmp,
    "bmp-top-down": lambda w, h: bmp(w, h, top_down=True),
    "bmp-os2": bmp_core,
    **{f"pnm-p{k}": functools.partial(pnm, k) for k in range(1, 7)},
    "pam": pam,
    "png": png,
    "jpeg": jpeg,
    "jpeg-progressive": lambda w, h: jpeg(w, h, progressive=True),
}
# The largest size each format can declare at all (VP8 and VP8L store 14 bits).
LARGEST = {"webp-vp8": (16383, 16383), "webp-vp8l": (16384, 16384)}
