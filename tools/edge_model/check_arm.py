"""``edge-model check-arm``: prove a bundle runs on the aarch64 target and gives the same numbers.

How it works
------------
* An arm64 Debian bookworm root with Python 3.11 is built once under the cache
  folder (``.cache/arm64/root``): ``debootstrap --foreign`` downloads and
  verifies the packages and unpacks the essential ones, the rest (Python) are
  unpacked with ``dpkg-deb``.  Nothing in it is ever executed as a chroot, so
  neither binfmt_misc nor a second stage is needed.
* The aarch64 wheels (``ai-edge-litert``, ``tflite-runtime==2.14.0``, numpy<2,
  opencv-python-headless) are installed on the x86 host with ``pip install
  --platform manylinux_2_X_aarch64 --only-binary=:all: --target DIR``.
* Each check starts ``qemu-aarch64-static -L PREFIX ROOT/usr/bin/python3.11
  tools/edge_model/arm_worker.py ...``.  qemu-user (7.2, Debian 12) resolves every
  absolute path the guest opens inside the ``-L`` prefix first, falling back to
  the host; it does *not* fake ``/proc/cpuinfo`` for aarch64.  So the prefix
  for a CPU profile holds ``usr``/``lib``/``etc`` (links into the root) and a
  real ``proc/cpuinfo`` and ``sys/devices/system/cpu`` copied from a Raspberry
  Pi 4 or 5, and ``QEMU_CPU`` is set to the matching core.  Runtimes detect
  ISA features from AT_HWCAP (set by qemu from ``QEMU_CPU``) *and* from the
  MIDR in /proc/cpuinfo, so the two must agree: ``pi4`` = cortex-a72 + Pi 4
  cpuinfo, ``pi5`` = cortex-a76 + Pi 5 cpuinfo.
* The worker runs the device's own ``TFLiteEmbedder.embed_one`` on aligned
  crops (built on x86 with the project's detector and aligner), and the same
  worker runs on x86 with the same runtime for the reference.  For an INT8
  model the raw int8 outputs must match exactly.
* A liveness bundle (``kind: "liveness"``) is checked the same way on its own
  crops (the YuNet box scaled by the manifest's ``crop.scale``,
  :func:`edge_model.crops.build_liveness_crops`) through
  ``TFLiteLiveness.crop_probabilities``; its final outputs are the softmax, and
  besides the runtime's rule no face may change its arg-max class.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import click
import numpy as np

from edge.bundle import load_bundle
from edge.cli import boundary
from edge.errors import EdgeError, ModelError, NoFaceError

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).resolve().with_name("arm_worker.py")
DEFAULT_CACHE = REPO / ".cache" / "arm64"
DEFAULT_FACES = REPO / "tests" / "fixtures" / "faces"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
SUITE = "bookworm"
PYTHON_VERSION = "3.11"
ROOT_PACKAGES = "python3.11-minimal,libpython3.11-stdlib,libstdc++6,libgcc-s1"
ROOT_FORMAT = 1  # bump to force a rebuild of cached roots

NUMPY_PIN = "numpy==1.26.4"
OPENCV_PIN = "opencv-python-headless==4.11.0.86"
TFLITE_RUNTIME_PIN = "tflite-runtime==2.14.0"
DEFAULT_LITERT = "2.3.0"
RUNTIMES = ("ai-edge-litert", "tflite-runtime")
CHECKED_KINDS = ("embedder", "liveness")
# Default pass rule per runtime: (largest int8 output difference, smallest cosine), x86 vs arm64.
# ai-edge-litert (XNNPACK) is bit-exact between x86 and arm64, so any difference is a fault.
# tflite-runtime 2.14 is not: its x86 and arm64 int8 kernels round differently (measured on
# SFace INT8: up to 15 LSB, cosine 0.990), so only the cosine is held for it.
DEFAULT_RULES: dict[str, tuple[int | None, float]] = {
    "ai-edge-litert": (0, 0.9999),
    "tflite-runtime": (None, 0.98),
}
# pip >= 24 no longer widens --platform to older manylinux tags, so list them all.
AARCH64_PLATFORMS = [f"manylinux_2_{minor}_aarch64" for minor in range(36, 16, -1)] + ["manylinux2014_aarch64"]


@dataclass(frozen=True)
class CpuProfile:
    """A Raspberry Pi model as the emulated process sees it: qemu core + /proc/cpuinfo + /sys."""

    name: str
    qemu_cpu: str
    model: str
    revision: str
    features: str
    variant: str
    part: str
    cpu_revision: str
    midr: str
    max_khz: int
    min_khz: int

    def cpuinfo(self) -> str:
        blocks = []
        for index in range(4):
            blocks.append(
                f"processor\t: {index}\n"
                "BogoMIPS\t: 108.00\n"
                f"Features\t: {self.features}\n"
                "CPU implementer\t: 0x41\n"
                "CPU architecture: 8\n"
                f"CPU variant\t: {self.variant}\n"
                f"CPU part\t: {self.part}\n"
                f"CPU revision\t: {self.cpu_revision}\n"
            )
        tail = f"Revision\t: {self.revision}\nSerial\t\t: 10000000e1c2a3b4\nModel\t\t: {self.model}\n"
        return "\n".join(blocks) + "\n" + tail


PROFILES = {
    # BCM2711: 4x Cortex-A72 r0p3, no crypto extension, 1.8 GHz (Rev 1.4 boards).
    "pi4": CpuProfile(
        name="pi4", qemu_cpu="cortex-a72", model="Raspberry Pi 4 Model B Rev 1.4", revision="d03114",
        features="fp asimd evtstrm crc32 cpuid", variant="0x0", part="0xd08", cpu_revision="3",
        midr="0x00000000410fd083", max_khz=1800000, min_khz=600000,
    ),
    # BCM2712: 4x Cortex-A76 r4p1, dot product, fp16, 2.4 GHz.
    "pi5": CpuProfile(
        name="pi5", qemu_cpu="cortex-a76", model="Raspberry Pi 5 Model B Rev 1.0", revision="d04170",
        features="fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp",
        variant="0x4", part="0xd0b", cpu_revision="1", midr="0x00000000414fd0b1", max_khz=2400000, min_khz=1500000,
    ),
}


class SetupError(EdgeError):
    """The emulation environment cannot be built or started (exit 69, EX_UNAVAILABLE).

    An :class:`edge.errors.EdgeError` like every other failure, so the command's
    boundary (:func:`edge.cli.boundary`) prints it and exits with its status.
    """

    exit_code = 69


@dataclass
class RunResult:
    runtime: str
    cpu: str
    qemu_cpu: str
    passed: bool
    int8_max_diff: int | None = None
    float_max_diff: float | None = None
    min_cosine: float | None = None
    faces: int = 0
    int8_tolerance: int | None = None
    min_cosine_required: float | None = None
    error: str | None = None
    seconds: float = 0.0
    arm: dict = field(default_factory=dict)
    x86: dict = field(default_factory=dict)
    argmax_flips: int | None = None  # liveness: faces whose most likely class differs from x86's


# --------------------------------------------------------------------------- environment


def find_qemu() -> str:
    for name in ("qemu-aarch64-static", "qemu-aarch64"):
        path = shutil.which(name)
        if path:
            return path
    raise SetupError(
        "qemu-aarch64-static is not installed; it runs the arm64 Python for this check: "
        "apt-get install qemu-user-static"
    )


def _run(cmd: list[str], what: str, **kwargs) -> subprocess.CompletedProcess:
    log.debug("running %s", " ".join(map(str, cmd)))
    proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
        raise SetupError(f"{what} failed (exit {proc.returncode}):\n" + "\n".join(tail))
    return proc


@contextmanager
def _locked(cache: Path):
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _stamp_ok(path: Path, expected: dict) -> bool:
    try:
        return json.loads(path.read_text()) == expected
    except (OSError, ValueError):
        return False


def build_root(cache: Path, qemu: str, mirror: str = DEFAULT_MIRROR) -> Path:
    """The arm64 bookworm root with python3.11 (built once; about 30 s and 230 MB)."""
    root = cache / "root"
    stamp = {"format": ROOT_FORMAT, "suite": SUITE, "packages": ROOT_PACKAGES}
    if _stamp_ok(root / ".edge-root.json", stamp):
        return root
    debootstrap = shutil.which("debootstrap") or ("/usr/sbin/debootstrap" if Path("/usr/sbin/debootstrap").exists() else None)
    if debootstrap is None:
        raise SetupError("debootstrap is not installed; it fetches the arm64 Python: apt-get install debootstrap")
    if os.geteuid() != 0:
        raise SetupError(f"building the arm64 root needs root (debootstrap); run once as root or copy a built {root}")
    work = cache / "root.tmp"
    shutil.rmtree(work, ignore_errors=True)
    click.echo(f"building arm64 {SUITE} root in {root} (once) ...", err=True)
    started = time.monotonic()
    _run([debootstrap, "--foreign", "--arch=arm64", "--variant=minbase", f"--include={ROOT_PACKAGES}",
          SUITE, str(work), mirror], "debootstrap --foreign (arm64)")
    # The first stage unpacks only the essential packages; unpack the rest (python) the
    # same way dpkg would, keeping the merged-/usr links (lib -> usr/lib) intact.
    archives = work / "var" / "cache" / "apt" / "archives"
    for name in (work / "debootstrap" / "base").read_text().split():
        debs = sorted(archives.glob(f"{name}_*_*.deb"))
        if not debs:
            raise SetupError(f"debootstrap did not download {name}")
        deb = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(debs[0])], stdout=subprocess.PIPE)
        tar = subprocess.run(["tar", "-x", "--keep-directory-symlink", "-C", str(work)], stdin=deb.stdout,
                             capture_output=True, text=True)
        deb.stdout.close()
        if deb.wait() != 0 or tar.returncode != 0:
            raise SetupError(f"unpacking {debs[0].name} failed: {tar.stderr.strip()}")
    for deb in archives.glob("*.deb"):
        deb.unlink()
    for name in ("doc", "man", "info", "locale"):
        shutil.rmtree(work / "usr" / "share" / name, ignore_errors=True)
    probe = _run([qemu, "-L", str(work), str(work / "usr/bin/python3.11"), "-c",
                  "import platform, ssl, sqlite3, ctypes; print(platform.machine(), platform.python_version())"],
                 "starting the arm64 python under qemu")
    log.info("arm64 python: %s", probe.stdout.strip())
    (work / ".edge-root.json").write_text(json.dumps(stamp))
    shutil.rmtree(root, ignore_errors=True)
    work.rename(root)
    click.echo(f"arm64 root ready in {time.monotonic() - started:.0f} s", err=True)
    return root


def _pip_target(target: Path, requirements: list[str], platforms: list[str] | None, no_deps: bool = False) -> None:
    stamp = {"requirements": requirements, "platforms": platforms, "no_deps": no_deps}
    if _stamp_ok(target / ".edge-site.json", stamp):
        return
    work = target.with_name(target.name + ".tmp")
    shutil.rmtree(work, ignore_errors=True)
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
           "--no-warn-script-location", "--only-binary=:all:", "--target", str(work)]
    if platforms:
        for platform_tag in platforms:
            cmd += ["--platform", platform_tag]
        cmd += ["--python-version", PYTHON_VERSION, "--implementation", "cp", "--abi", "cp311"]
    if no_deps:
        cmd.append("--no-deps")
    click.echo(f"pip installing {' '.join(requirements)} for {'aarch64' if platforms else 'x86'} ...", err=True)
    _run(cmd + requirements, f"pip install {' '.join(requirements)}")
    (work / ".edge-site.json").write_text(json.dumps(stamp))
    shutil.rmtree(target, ignore_errors=True)
    work.rename(target)


def host_litert_version() -> str:
    try:
        from importlib.metadata import version

        return version("ai-edge-litert")
    except Exception:  # noqa: BLE001 - not installed on the host: use the project's pin
        return DEFAULT_LITERT


def runtime_pin(runtime: str) -> str:
    return TFLITE_RUNTIME_PIN if runtime == "tflite-runtime" else f"ai-edge-litert=={host_litert_version()}"


def arm_sites(cache: Path, runtime: str) -> list[Path]:
    """aarch64 site folders for ``runtime``: [runtime + numpy, opencv]."""
    pin = runtime_pin(runtime)
    site = cache / "site" / pin.replace("==", "-")
    _pip_target(site, [pin, NUMPY_PIN], AARCH64_PLATFORMS)
    cv = cache / "site" / OPENCV_PIN.replace("==", "-")
    _pip_target(cv, [OPENCV_PIN], AARCH64_PLATFORMS, no_deps=True)
    return [site, cv]


def x86_sites(cache: Path, runtime: str) -> list[Path]:
    """Extra host folders for the reference run; the host env already has ai-edge-litert."""
    try:
        __import__({"ai-edge-litert": "ai_edge_litert", "tflite-runtime": "tflite_runtime"}[runtime])
        return []
    except ImportError:
        pass
    target = cache / "host" / runtime_pin(runtime).replace("==", "-")
    _pip_target(target, [runtime_pin(runtime)], None, no_deps=True)
    return [target]


def make_prefix(cache: Path, root: Path, profile: CpuProfile) -> Path:
    """The ``qemu -L`` folder for a profile: links into the root plus a Pi's /proc/cpuinfo and /sys cpu tree."""
    prefix = cache / "prefix" / profile.name
    shutil.rmtree(prefix, ignore_errors=True)
    prefix.mkdir(parents=True)
    for name in ("usr", "etc"):
        (prefix / name).symlink_to(root / name)
    for name in ("lib", "bin", "sbin"):
        (prefix / name).symlink_to(f"usr/{name}")
    (prefix / "proc").mkdir()
    (prefix / "proc" / "cpuinfo").write_text(profile.cpuinfo())
    cpus = prefix / "sys" / "devices" / "system" / "cpu"
    cpus.mkdir(parents=True)
    for name in ("possible", "present", "online"):
        (cpus / name).write_text("0-3\n")
    (cpus / "offline").write_text("\n")
    (cpus / "kernel_max").write_text("3\n")
    for index in range(4):
        cpu = cpus / f"cpu{index}"
        files = {
            "online": "1",
            "cpufreq/cpuinfo_max_freq": str(profile.max_khz),
            "cpufreq/cpuinfo_min_freq": str(profile.min_khz),
            "cpufreq/scaling_max_freq": str(profile.max_khz),
            "topology/physical_package_id": "0",
            "topology/core_id": str(index),
            "topology/cluster_id": "0",
            "topology/core_siblings_list": "0-3",
            "topology/package_cpus_list": "0-3",
            "topology/cluster_cpus_list": "0-3",
            "topology/thread_siblings_list": str(index),
            "topology/core_cpus_list": str(index),
            "regs/identification/midr_el1": profile.midr,
            "regs/identification/revidr_el1": "0x0000000000000000",
        }
        for rel, text in files.items():
            path = cpu / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text + "\n")
    return prefix


# --------------------------------------------------------------------------- running


def _parse_worker(proc: subprocess.CompletedProcess) -> dict:
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("ARM-WORKER-RESULT "):
            return json.loads(line.split(" ", 1)[1])
    return {}


def _describe_failure(proc: subprocess.CompletedProcess) -> str:
    code = proc.returncode
    text = (proc.stdout + proc.stderr).strip()
    if code < 0:
        try:
            what = signal.Signals(-code).name
        except ValueError:
            what = f"signal {-code}"
    elif "uncaught target signal" in text:
        what = text[text.index("uncaught target signal"):].splitlines()[0]
    else:
        what = f"exit {code}"
    lines = [line for line in text.splitlines() if line.strip()]
    detail = lines[-1] if lines else ""
    return f"crashed ({what}): {detail}"[:300]


def run_worker(python_cmd: list[str], env_extra: dict, bundle: Path, crops_file: Path, runtime: str,
               threads: int, out: Path, timeout: float) -> tuple[subprocess.CompletedProcess, dict]:
    env = {key: os.environ[key] for key in ("PATH", "HOME", "TMPDIR") if key in os.environ}
    env.update({"LANG": "C.UTF-8", "PYTHONNOUSERSITE": "1", "TF_CPP_MIN_LOG_LEVEL": "2"})
    env.update(env_extra)
    cmd = python_cmd + [str(WORKER), str(bundle), str(crops_file), runtime, str(threads), str(out)]
    log.debug("worker: %s %s", " ".join(f"{k}={v}" for k, v in env_extra.items()), " ".join(cmd))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=str(REPO))
    except subprocess.TimeoutExpired as exc:
        proc = subprocess.CompletedProcess(cmd, 124, exc.stdout or "", (exc.stderr or "") + f"\ntimed out after {timeout:.0f} s")
        if isinstance(proc.stdout, bytes):
            proc = subprocess.CompletedProcess(cmd, 124, proc.stdout.decode(errors="replace"), str(proc.stderr))
    return proc, _parse_worker(proc)


def _final(outputs) -> np.ndarray:
    """The worker's final outputs (embeddings or class probabilities; ``embeddings`` in older files)."""
    names = getattr(outputs, "files", outputs)
    return outputs["outputs" if "outputs" in names else "embeddings"].astype(np.float64)


def compare(reference: np.lib.npyio.NpzFile, candidate: np.lib.npyio.NpzFile) -> dict:
    raw_ref, raw_arm = reference["raw"], candidate["raw"]
    emb_ref, emb_arm = _final(reference), _final(candidate)
    if raw_ref.shape != raw_arm.shape:
        raise ValueError(f"output shapes differ: x86 {raw_ref.shape}, arm64 {raw_arm.shape}")
    integer = np.issubdtype(raw_ref.dtype, np.integer)
    cosines = np.sum(emb_ref * emb_arm, axis=1) / np.maximum(
        np.linalg.norm(emb_ref, axis=1) * np.linalg.norm(emb_arm, axis=1), 1e-12)
    return {
        "int8_max_diff": int(np.max(np.abs(raw_ref.astype(np.int64) - raw_arm.astype(np.int64)))) if integer else None,
        "raw_max_diff": float(np.max(np.abs(raw_ref.astype(np.float64) - raw_arm.astype(np.float64)))),
        "float_max_diff": float(np.max(np.abs(emb_ref - emb_arm))),
        "min_cosine": float(np.min(cosines)),
        "differing_values": int(np.count_nonzero(raw_ref != raw_arm)),
        "argmax_flips": int(np.count_nonzero(emb_ref.argmax(axis=1) != emb_arm.argmax(axis=1))),
    }


def rule_for(runtime: str, int8_tolerance: int | None, min_cosine: float | None) -> tuple[int | None, float]:
    default_tolerance, default_cosine = DEFAULT_RULES.get(runtime, (0, 0.9999))
    return (default_tolerance if int8_tolerance is None else int8_tolerance,
            default_cosine if min_cosine is None else min_cosine)


def load_faces(faces: Path, limit: int | None, size: int, crop_scale: float | None = None) -> np.ndarray:
    """Aligned crops (an embedder's), or liveness crops at ``crop_scale`` (a liveness model's)."""
    from edge_model.crops import build_crops, build_liveness_crops

    cache = REPO / ".cache" / "crops"
    if crop_scale is None:
        crop_set = build_crops([faces], size=size, limit=limit, cache_dir=cache, progress=False)
    else:
        crop_set = build_liveness_crops([faces], crop_scale, size=size, limit=limit, cache_dir=cache, progress=False)
    if len(crop_set.crops) == 0:
        raise NoFaceError(f"no usable faces under {faces}")
    return crop_set.crops


def _checked_bundle(bundle_dir: Path):
    """The bundle, verified; only the kinds the worker runs (an OpenCV detector has no TFLite to compare)."""
    bundle = load_bundle(bundle_dir)
    if bundle.kind not in CHECKED_KINDS:
        raise ModelError(f"check-arm runs {' and '.join(CHECKED_KINDS)} bundles; {bundle_dir} is a {bundle.kind}")
    return bundle


def _environment(cache: Path, qemu: str, mirror: str, runtimes: tuple[str, ...]) -> tuple[Path, dict, dict]:
    """The arm64 root and the site folders of each runtime (arm64 and, where the host lacks it, x86).

    Built under the cache lock: two checks at once share one root instead of racing to build it.
    Returns (root, arm64 sites by runtime, x86 sites by runtime).
    """
    with _locked(cache):
        root = build_root(cache, qemu, mirror)
        sites = {runtime: arm_sites(cache, runtime) for runtime in runtimes}
        host_sites = {runtime: x86_sites(cache, runtime) for runtime in runtimes}
    return root, sites, host_sites


@dataclass(frozen=True)
class _Run:
    """What every worker run of one check shares: the emulator, the bundle, the crops and the pass rule."""

    qemu: str
    root: Path  # the arm64 root
    bundle: Path
    kind: str  # embedder or liveness
    crops_file: Path
    faces: int
    tmp: Path  # where the workers write their outputs
    threads: int
    timeout: float
    int8_tolerance: int | None
    min_cosine: float | None


Reference = tuple[Path | None, dict, str | None]  # x86 outputs file, worker info, error


def _x86_references(run: _Run, runtimes: tuple[str, ...], host_sites: dict, timings: dict) -> dict[str, Reference]:
    """Each runtime's outputs on x86, by the same worker the arm64 runs use, so the two differ only by CPU.

    A failed reference fails every arm64 run of that runtime instead of stopping the check.
    """
    references: dict[str, Reference] = {}
    for runtime in runtimes:
        mark = time.monotonic()
        out = run.tmp / f"x86-{runtime}.npz"
        pythonpath = os.pathsep.join([str(REPO)] + [str(p) for p in host_sites[runtime]])
        proc, info = run_worker([sys.executable], {"PYTHONPATH": pythonpath}, run.bundle, run.crops_file,
                                runtime, run.threads, out, run.timeout)
        error = None if proc.returncode == 0 and out.is_file() else "x86 reference " + _describe_failure(proc)
        references[runtime] = (out if error is None else None, info, error)
        timings[f"x86_{runtime}_s"] = round(time.monotonic() - mark, 1)
    return references


def _judge(result: RunResult, stats: dict, runtime: str, int8_tolerance: int | None,
           min_cosine: float | None, kind: str = "embedder") -> None:
    """Record the x86-vs-arm64 figures on ``result`` and pass it by the runtime's rule (:func:`rule_for`);
    a liveness model must also keep every face's arg-max class."""
    result.int8_max_diff = stats["int8_max_diff"]
    result.float_max_diff = stats["float_max_diff"]
    result.min_cosine = stats["min_cosine"]
    result.arm["differing_values"] = stats["differing_values"]
    tolerance, cosine_floor = rule_for(runtime, int8_tolerance, min_cosine)
    result.int8_tolerance, result.min_cosine_required = tolerance, cosine_floor
    ok = stats["int8_max_diff"] is None or tolerance is None or stats["int8_max_diff"] <= tolerance
    if kind == "liveness":
        result.argmax_flips = stats["argmax_flips"]
        ok = ok and stats["argmax_flips"] == 0
    result.passed = bool(ok and stats["min_cosine"] >= cosine_floor)


def _arm_run(run: _Run, prefix: Path, profile: CpuProfile, emulated: str, runtime: str, sites: list[Path],
             reference: Reference) -> RunResult:
    """One runtime on one emulated Pi, compared with its x86 reference; a crash or mismatch is a failed
    result, never an exception, so the other pairs still run."""
    mark = time.monotonic()
    ref_path, ref_info, ref_error = reference
    result = RunResult(runtime=runtime, cpu=profile.name, qemu_cpu=emulated, passed=False, faces=run.faces,
                       x86=ref_info)
    if ref_error:
        result.error = ref_error
        return result
    out = run.tmp / f"arm-{profile.name}-{runtime}.npz"
    env = {
        "QEMU_CPU": emulated,
        "PYTHONPATH": os.pathsep.join([str(REPO)] + [str(p) for p in sites]),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    python = [run.qemu, "-L", str(prefix), str(run.root / "usr" / "bin" / "python3.11")]
    proc, info = run_worker(python, env, run.bundle, run.crops_file, runtime, run.threads, out, run.timeout)
    result.arm = info
    result.seconds = round(time.monotonic() - mark, 1)
    if proc.returncode != 0 or not out.is_file():
        result.error = _describe_failure(proc)
        return result
    seen = info.get("cpuinfo", {})
    if seen.get("CPU part") != profile.part:
        log.warning("the emulated process saw CPU part %s in /proc/cpuinfo, not %s (%s)",
                    seen.get("CPU part"), profile.part, profile.name)
    with np.load(ref_path) as ref, np.load(out) as arm:
        try:
            stats = compare(ref, arm)
        except ValueError as exc:
            result.error = str(exc)
            stats = None
    if stats:
        _judge(result, stats, runtime, run.int8_tolerance, run.min_cosine, run.kind)
    return result


def check_arm(bundle_dir: Path, faces: Path = DEFAULT_FACES, cpus: tuple[str, ...] = ("pi4", "pi5"),
              runtimes: tuple[str, ...] = RUNTIMES, qemu_cpu: str | None = None, threads: int = 2,
              limit: int | None = 16, cache: Path = DEFAULT_CACHE, int8_tolerance: int | None = None,
              min_cosine: float | None = None, timeout: float = 900.0, mirror: str = DEFAULT_MIRROR) -> dict:
    """Run every (runtime, cpu) pair; returns the report as a dict (see ``--json``).

    ``int8_tolerance`` / ``min_cosine`` of None take the runtime's entry in DEFAULT_RULES.
    """
    timings: dict[str, float] = {}
    started = time.monotonic()
    qemu = find_qemu()
    bundle = _checked_bundle(bundle_dir)
    size = int(bundle.input_spec.get("width", 112))
    crop_scale = float(bundle.manifest["crop"]["scale"]) if bundle.kind == "liveness" else None
    root, sites, host_sites = _environment(cache, qemu, mirror, runtimes)
    timings["setup_s"] = round(time.monotonic() - started, 1)

    mark = time.monotonic()
    crops = load_faces(faces, limit, size, crop_scale)
    timings["crops_s"] = round(time.monotonic() - mark, 1)

    results: list[RunResult] = []
    with tempfile.TemporaryDirectory(prefix="check-arm-") as tmp_name:
        tmp = Path(tmp_name)
        crops_file = tmp / "crops.npy"
        np.save(crops_file, crops)
        run = _Run(qemu, root, bundle.root, bundle.kind, crops_file, len(crops), tmp, threads, timeout,
                   int8_tolerance, min_cosine)
        references = _x86_references(run, runtimes, host_sites, timings)
        with _locked(cache):
            prefixes = {name: make_prefix(cache, root, PROFILES[name]) for name in cpus}
        for cpu in cpus:
            profile = PROFILES[cpu]
            for runtime in runtimes:
                result = _arm_run(run, prefixes[cpu], profile, qemu_cpu or profile.qemu_cpu, runtime,
                                  sites[runtime], references[runtime])
                results.append(result)
                if not references[runtime][2]:
                    timings[f"arm_{cpu}_{runtime}_s"] = result.seconds

    timings["total_s"] = round(time.monotonic() - started, 1)
    return {
        "bundle": str(bundle.root),
        "model_id": bundle.model_id,
        "kind": bundle.kind,
        "crops": "aligned faces" if crop_scale is None else f"liveness crops (face box x{crop_scale:g})",
        "faces": int(len(crops)),
        "faces_from": str(faces),
        "threads": threads,
        "passed": bool(results) and all(r.passed for r in results),
        "results": [asdict(r) for r in results],
        "timings": timings,
    }


def format_table(report: dict) -> str:
    header = f"{'runtime':<16} {'cpu':<5} {'qemu cpu':<11} {'int8 max diff':>13} {'float max diff':>15} {'min cosine':>11}  result"
    crops = report.get("crops", "aligned faces")
    lines = [f"{report['model_id']}: {report['faces']} {crops} from {report['faces_from']}", header,
             "-" * len(header)]
    for r in report["results"]:
        int8 = "-" if r["int8_max_diff"] is None else str(r["int8_max_diff"])
        flt = "-" if r["float_max_diff"] is None else f"{r['float_max_diff']:.3g}"
        cos = "-" if r["min_cosine"] is None else f"{r['min_cosine']:.6f}"
        if r["passed"]:
            verdict = "PASS" if not r["int8_max_diff"] else "PASS (not bit-exact; cosine rule)"
        elif r["error"]:
            verdict = "FAIL: " + r["error"]
        elif r.get("argmax_flips"):
            verdict = f"FAIL: {r['argmax_flips']} faces change class"
        else:
            verdict = "FAIL: outputs differ"
        lines.append(f"{r['runtime']:<16} {r['cpu']:<5} {r['qemu_cpu']:<11} {int8:>13} {flt:>15} {cos:>11}  {verdict}")
    timings = report["timings"]
    lines.append(f"total {timings['total_s']:.0f} s (setup {timings['setup_s']:.0f} s)")
    return "\n".join(lines)


@click.command("check-arm")
@click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--faces", type=click.Path(exists=True, file_okay=False, path_type=Path), default=DEFAULT_FACES,
              show_default=True, help="Folder of face images; aligned (embedder) or cropped at the bundle's scale "
                                      "(liveness) on x86 with the project's detector.")
@click.option("--limit", type=int, default=16, show_default=True, help="Use at most this many images.")
@click.option("--cpu", "cpus", type=click.Choice(sorted(PROFILES)), multiple=True,
              help="Pi model to emulate (repeatable; default pi4 and pi5): pi4 = cortex-a72 + Pi 4 cpuinfo, "
                   "pi5 = cortex-a76 + Pi 5 cpuinfo.")
@click.option("--runtime", "runtimes", type=click.Choice(RUNTIMES), multiple=True,
              help="TFLite runtime (repeatable; default both).")
@click.option("--qemu-cpu", default=None,
              help="Override the emulated core but keep the profile's cpuinfo (e.g. max) to show what a mismatch does.")
@click.option("--threads", default=2, show_default=True, help="Interpreter threads, as on the device.")
@click.option("--int8-tolerance", type=int, default=None,
              help="Largest allowed int8 output difference [default: 0 for ai-edge-litert, "
                   "unchecked for tflite-runtime, whose x86 and arm64 kernels round differently].")
@click.option("--min-cosine", type=float, default=None,
              help="Smallest allowed cosine to the x86 embedding [default: 0.9999 ai-edge-litert, 0.98 tflite-runtime].")
@click.option("--timeout", default=900, show_default=True, help="Seconds allowed per emulated run.")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_CACHE,
              show_default=True, help="Where the arm64 root and wheels are kept.")
@click.option("--mirror", default=DEFAULT_MIRROR, show_default=True, help="Debian mirror for the arm64 root.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@boundary
def command(bundle, faces, limit, cpus, runtimes, qemu_cpu, threads, int8_tolerance, min_cosine, timeout,
            cache_dir, mirror, as_json):
    """Run BUNDLE under qemu-aarch64 (Pi 4 / Pi 5 CPUs) and compare with x86, output by output.

    BUNDLE is an embedder (aligned crops) or a liveness model (its scaled face crops; no face may change
    class).  Each arm64 run is compared with the same runtime on x86.  Exits 0 when every
    runtime and CPU reproduces the x86 outputs (ai-edge-litert INT8: exactly),
    1 on a mismatch or crash, 65 when the bundle fails its sha256 check, 69 when
    the emulator cannot be set up.
    """
    report = check_arm(bundle, faces, tuple(cpus) or ("pi4", "pi5"), tuple(runtimes) or RUNTIMES, qemu_cpu,
                       threads, limit, cache_dir, int8_tolerance, min_cosine, timeout, mirror)
    click.echo(json.dumps(report, indent=2) if as_json else format_table(report))
    if not report["passed"]:
        sys.exit(1)
