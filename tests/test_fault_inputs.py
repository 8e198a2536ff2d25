"""Hostile inputs through the real ``edge`` process, as an operator would meet them.

Decode bombs, files that are not files, folders with unusable names, a full
disk, lookalike names: each run must neither hang nor balloon, must print
the per-file report and a one-line error (no traceback), and must exit with
the documented status (65 bad data, 73 the gallery could not be written).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest

from edge.config import load_config
from edge.gallery import Gallery

from .test_enrollment import replay_config

from .conftest import FIXTURES, MODELS, ROOT
from .image_bombs import tiff_deflate_bomb

pytestmark = pytest.mark.skipif(not (MODELS / "sface-int8" / "manifest.json").exists(), reason="no sface-int8 bundle")

PEAK_RSS_LIMIT = 300 * 1024 * 1024  # a normal one-photo enrollment peaks near 120 MB


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    peak_rss: int  # bytes, of this child alone


# Starts the measured command and reports its exit status, time and peak RSS
# (wait4).  On Linux a process's peak RSS includes that of the process it was
# forked from, so the command is started from this small launcher rather than
# from pytest, whose own RSS would otherwise be counted.
LAUNCHER = r"""
import json, os, resource, signal, subprocess, sys, threading, time
spec = json.loads(sys.argv[1])

def limit():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (spec["fsize"], spec["fsize"]))

start = time.monotonic()
proc = subprocess.Popen(spec["argv"], preexec_fn=limit if spec["fsize"] else None)
killer = threading.Timer(spec["timeout"], proc.kill)
killer.start()
_, status, usage = os.wait4(proc.pid, 0)
killer.cancel()
proc.returncode = os.waitstatus_to_exitcode(status)
with open(spec["report"], "w") as report:
    json.dump({"returncode": proc.returncode, "seconds": time.monotonic() - start,
               "peak_rss": usage.ru_maxrss * 1024}, report)
"""


def edge(*args: str, timeout: float = 120, file_size_limit: int = 0) -> Run:
    """``python -m edge.cli ARGS`` as a process, killed after ``timeout``.

    ``file_size_limit``: RLIMIT_FSIZE for the command (bytes), with SIGXFSZ
    ignored so an oversize write fails with EFBIG as a full disk fails with ENOSPC.
    """
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "report.json"
        spec = {"argv": [sys.executable, "-m", "edge.cli", *args], "timeout": timeout,
                "fsize": file_size_limit, "report": str(report)}
        done = subprocess.run([sys.executable, "-c", LAUNCHER, json.dumps(spec)], cwd=ROOT,
                              stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout + 60, check=False)
        measured = json.loads(report.read_text())
        return Run(measured["returncode"], done.stdout.decode(errors="replace"),
                   done.stderr.decode(errors="replace"), measured["seconds"], measured["peak_rss"])


@pytest.fixture
def config(tmp_path):
    return replay_config(tmp_path)


def people_in(config) -> dict[str, int]:
    with Gallery(load_config(config).gallery_path()) as gallery:
        return {p.name: p.samples for p in gallery.people()}


def assert_clean_failure(run: Run, code: int) -> None:
    assert run.returncode == code, f"exit {run.returncode}\n{run.stdout}\n{run.stderr}"
    assert "Traceback" not in run.stderr, run.stderr


# -- 4. decode bombs ------------------------------------------------------------------------------
def png_chunk_bomb() -> bytes:
    """A valid 8x8 PNG header, then a text chunk declaring 2 GB that is not there.

    OpenCV 4.11 allocates (and zero-fills) a chunk's declared length before
    reading it, whatever the image size.
    """
    def chunk(kind, body, declared=None):
        length = len(body) if declared is None else declared
        return struct.pack(">I", length) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 2, 0, 0, 0))
            + chunk(b"tEXt", b"", declared=0x7FFFFFF0))


@pytest.mark.parametrize("name, build, message", [
    # 30 kB, a complete and valid 30000x30000 image: before the header check
    # it reached 1.85 GB and 8 s, an OOM kill on a 1-2 GB Pi.
    ("bomb.tif", tiff_deflate_bomb, "30000x30000 pixels is over the limit of 40,000,000"),
    ("bomb.png", png_chunk_bomb, "chunk b'tEXt' declares 2,147,483,632 bytes, more than the file holds"),
])
def test_decode_bombs_are_refused_by_enroll_files_without_expanding_them(config, tmp_path, name, build, message):
    bomb = tmp_path / name
    bomb.write_bytes(build())
    run = edge("enroll", "files", "-c", str(config), "Visitor", str(bomb))
    assert_clean_failure(run, 65)
    assert f"error    Visitor\t{bomb}\t{bomb}: " in run.stdout and message in run.stdout
    assert run.peak_rss < PEAK_RSS_LIMIT, f"peak RSS {run.peak_rss / 2**20:.0f} MB"
    assert run.seconds < 60
    print(f"\n{name} ({bomb.stat().st_size} bytes) refused by `edge enroll files`: exit {run.returncode}, "
          f"{run.seconds:.2f} s for the whole command, peak RSS {run.peak_rss / 2**20:.0f} MB")


FUZZ = r"""
import random, re, sys
sys.path.insert(0, sys.argv[1])
from image_bombs import BOMBS
from edge.errors import ImageError
from edge.images import decode_image

for kind in sorted(BOMBS):
    data = BOMBS[kind](40, 30)
    rng = random.Random(kind)
    for _ in range(300):
        mangled = bytearray(data)
        for _ in range(rng.randint(1, 3)):
            # Half in the first 64 bytes, where the size and length fields are.
            where = rng.randrange(2, min(64, len(mangled)) if rng.random() < 0.5 else len(mangled))
            mangled[where] = rng.choice([0, 0x7F, 0x80, 0xFF, rng.randrange(256)])
        try:
            image = decode_image(bytes(mangled), kind, max_pixels=100_000)
            assert image.shape[0] * image.shape[1] <= 100_000
        except ImageError:
            pass
    # VmHWM: this process's own peak since exec (ru_maxrss would include pytest's, inherited through fork).
    status = open("/proc/self/status").read()
    print(kind, int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) // 1024, flush=True)
"""


def test_mangled_files_never_make_the_decoder_allocate_much(tmp_path):
    # One byte in a PNG chunk length once took this to 2.4 GB: corrupt headers
    # must give an ImageError (nothing else), and memory must stay near the
    # interpreter's own.
    done = subprocess.run([sys.executable, "-c", FUZZ, str(ROOT / "tests")], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    peaks = dict(line.split() for line in done.stdout.splitlines())
    assert len(peaks) > 20
    over = {kind: int(mb) for kind, mb in peaks.items() if int(mb) > 200}
    assert not over, f"peak RSS (MB) after fuzzing: {over}"


# -- 5. files that are not files ----------------------------------------------------------------------
def test_fifo_and_dev_zero_link_are_refused_fast_and_do_not_hang(config, tmp_path):
    fifo = tmp_path / "z.jpg"
    os.mkfifo(fifo)
    zero = tmp_path / "zero.jpg"
    zero.symlink_to("/dev/zero")
    run = edge("enroll", "files", "-c", str(config), "Visitor", str(fifo), str(zero), timeout=60)
    assert run.returncode != -signal.SIGKILL, "edge enroll files hung on a FIFO or /dev/zero"
    assert_clean_failure(run, 65)
    assert f"error    Visitor\t{fifo}\t{fifo}: is a named pipe (FIFO), not an image file" in run.stdout
    assert f"error    Visitor\t{zero}\t{zero}: is a character device (/dev/zero), not an image file" in run.stdout
    assert "added 0 samples for 0 people; 2 error" in run.stdout
    assert run.seconds < 30
    print(f"\nFIFO and /dev/zero refused by `edge enroll files`: {run.seconds:.2f} s for the whole command")


def test_folder_reports_a_fifo_and_enrolls_the_rest(config, tmp_path):
    person = tmp_path / "people" / "Ada_Lovelace"
    person.mkdir(parents=True)
    shutil.copy(FIXTURES / "person_a_1.jpg", person / "a1.jpg")
    os.mkfifo(person / "pipe.jpg")
    (person / "zero.png").symlink_to("/dev/zero")
    run = edge("enroll", "folder", "-c", str(config), str(tmp_path / "people"), timeout=60)
    assert_clean_failure(run, 0)
    assert "accepted Ada Lovelace" in run.stdout
    assert "pipe.jpg: is a named pipe (FIFO)" in run.stdout and "zero.png: is a character device" in run.stdout
    assert people_in(config) == {"Ada Lovelace": 1}


# -- 6. bulk enrollment finishes and reports ------------------------------------------------------------
def test_folder_with_unusable_names_reports_them_and_enrolls_everyone_else(config, tmp_path):
    root = tmp_path / "people"
    folders = {
        " ": "impostor_2.jpg",               # empty once normalised, sorts first
        "Ada_Lovelace": "person_a_1.jpg",
        "Bad\nName": "person_b_1.jpg",       # a newline in the middle
        "Zed_Person": "person_b_2.jpg",
        "___": "impostor_1.jpg",             # empty once normalised
        "\u202eevil": "impostor_2.jpg",      # a bidi override, sorts last
    }
    for folder, photo in folders.items():
        (root / folder).mkdir(parents=True)
        shutil.copy(FIXTURES / photo, root / folder / photo)
    run = edge("enroll", "folder", "-c", str(config), str(root))
    assert_clean_failure(run, 65)
    lines = run.stdout.splitlines()
    assert any(line.startswith("accepted Ada Lovelace\t") for line in lines)
    assert any(line.startswith("accepted Zed Person\t") for line in lines)
    assert "error    Bad\\nName\t" in run.stdout and "U+000A is whitespace other than a plain space" in run.stdout
    assert "error    \\u202eevil\t" in run.stdout and "U+202E RIGHT-TO-LEFT OVERRIDE" in run.stdout
    assert run.stdout.count("a person's name cannot be empty") == 2
    assert "\u202e" not in run.stdout + run.stderr  # escaped, never printed to the terminal
    assert lines[-1] == "added 2 samples for 2 people; 2 accepted, 4 error"
    assert "edge: error: 4 of 6 people not enrolled" in run.stderr
    assert people_in(config) == {"Ada Lovelace": 1, "Zed Person": 1}


# -- 7. a full disk ---------------------------------------------------------------------------------------
def test_full_disk_in_bulk_enrollment_is_a_clean_error(config, tmp_path):
    # No mount needed: a file size limit makes the gallery's WAL writes fail
    # with EFBIG (SQLITE_IOERR_WRITE), past the 32 kB shared-memory file, so the
    # gallery opens and bulk's own transaction is what fails.
    assert edge("enroll", "files", "-c", str(config), "Ada Lovelace", str(FIXTURES / "person_a_1.jpg")).returncode == 0
    root = tmp_path / "people"
    for folder, photos in {"Bea_Bell": ["person_b_1.jpg", "person_b_2.jpg"], "Cy_Coe": ["impostor_1.jpg"]}.items():
        (root / folder).mkdir(parents=True)
        for photo in photos:
            shutil.copy(FIXTURES / photo, root / folder / photo)
    run = edge("enroll", "folder", "-c", str(config), str(root), "--keep-crops", file_size_limit=40_000)
    assert_clean_failure(run, 73)
    assert "edge: error: gallery" in run.stderr and "nothing was written (disk I/O error)" in run.stderr
    assert "file is over a size limit" in run.stderr
    assert len(run.stderr.strip().splitlines()[-1]) < 300  # one line, not 40
    # The report is printed all the same: what was not saved, and who was not tried.
    assert run.stdout.count("error    Bea Bell\t") == 2 and "not saved: gallery" in run.stdout
    assert "error    Cy Coe\t-\tnot processed: the gallery write before failed" in run.stdout
    assert people_in(config) == {"Ada Lovelace": 1}
    with Gallery(load_config(config).gallery_path()) as gallery:
        assert gallery.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    # enroll files gives the same.
    run = edge("enroll", "files", "-c", str(config), "Bea Bell", str(root / "Bea_Bell" / "person_b_1.jpg"),
               "--keep-crops", file_size_limit=40_000)
    assert_clean_failure(run, 73)
    assert "not saved: gallery" in run.stdout and "nothing was written" in run.stderr


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 1 MB tmpfs of its own (a really full disk: ENOSPC); skipped where mounting is not allowed."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True, check=False)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, check=False)


def test_really_full_disk_in_bulk_enrollment_is_a_clean_error(tmp_path, tiny_tmpfs):
    config = tmp_path / "disk.toml"
    config.write_text(f'state_dir = "{tiny_tmpfs / "state"}"\nmodels_dir = "{MODELS}"\n[decision]\nthreshold = 1.0\n')
    assert edge("enroll", "files", "-c", str(config), "Ada Lovelace", str(FIXTURES / "person_a_1.jpg")).returncode == 0
    # Leave room to open the gallery (its 32 kB shared-memory file) but not for two kept crops.
    free = os.statvfs(tiny_tmpfs).f_bavail * os.statvfs(tiny_tmpfs).f_frsize
    (tiny_tmpfs / "filler").write_bytes(b"\0" * (free - 40 * 1024))
    run = edge("enroll", "files", "-c", str(config), "Bea Bell", str(FIXTURES / "person_b_1.jpg"),
               str(FIXTURES / "person_b_2.jpg"), "--keep-crops")
    assert_clean_failure(run, 73)
    assert "the disk is full; nothing was written (database or disk is full)" in run.stderr
    assert run.stdout.count("not saved: gallery") == 2
    (tiny_tmpfs / "filler").unlink()
    assert people_in(config) == {"Ada Lovelace": 1}


# -- 11. lookalike names ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name, shown", [
    ("\u202eevil", "U+202E RIGHT-TO-LEFT OVERRIDE"),
    ("Ada\u200bLovelace", "U+200B ZERO WIDTH SPACE"),
    ("Ada\u2066Lovelace", "U+2066 LEFT-TO-RIGHT ISOLATE"),
    ("Ada\u00a0Lovelace", "U+00A0 NO-BREAK SPACE is whitespace other than a plain space"),
])
def test_enroll_files_refuses_invisible_and_bidi_names(config, name, shown):
    run = edge("enroll", "files", "-c", str(config), name, str(FIXTURES / "person_a_1.jpg"))
    assert_clean_failure(run, 65)
    assert run.stderr.strip().splitlines()[-1].startswith(f"edge: error: invalid name {name!a}: {shown}")
    assert not load_config(config).gallery_path().exists()  # refused before anything was opened


def test_decomposed_and_composed_names_are_the_same_person_through_the_cli(config):
    run = edge("enroll", "files", "-c", str(config), "Jose\u0301 Ruiz", str(FIXTURES / "person_a_1.jpg"))
    assert run.returncode == 0, run.stdout + run.stderr
    run = edge("enroll", "files", "-c", str(config), "Jos\u00e9 Ruiz", str(FIXTURES / "person_a_2.jpg"))
    assert run.returncode == 0, run.stdout + run.stderr
    assert people_in(config) == {"Jos\u00e9 Ruiz": 2}
    run = edge("enroll", "rename", "-c", str(config), "Jose\u0301 Ruiz", "\u202eRuiz")
    assert_clean_failure(run, 65)
    run = edge("enroll", "remove", "-c", str(config), "Jose\u0301 Ruiz")
    assert run.returncode == 0, run.stderr
    assert people_in(config) == {}
