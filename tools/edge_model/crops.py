"""Face crops from folders of images, built once with the project's detector and aligner.

Aligned crops (:func:`build_crops`) feed the embedders; liveness crops
(:func:`build_liveness_crops`) are the detector's box scaled out with its
surroundings, as :func:`edge.liveness.liveness_crop` cuts them on the device.

Calibration, evaluation-free distillation and student training all read crops
produced here, so they see exactly what the device's pipeline produces.  The
result is cached as an ``.npz`` keyed by the file list and the settings.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path

import click
import cv2
import numpy as np

from edge.align import align_face
from edge.bundle import load_bundle
from edge.cli import boundary
from edge.detect import YuNetDetector
from edge.errors import EdgeError
from edge.images import is_image_file, load_image

log = logging.getLogger(__name__)

DEFAULT_DETECTOR = Path(__file__).resolve().parents[2] / "models" / "yunet"
MIN_DETECT_SIDE = 200  # small crops (89x109 CelebA) are upsampled so YuNet's anchors fit them


class NoImagesError(EdgeError):
    """The folders given hold no image files: nothing to crop, calibrate or train on."""

    exit_code = 66  # EX_NOINPUT


@dataclass
class CropSet:
    crops: np.ndarray  # (N, S, S, 3) uint8 BGR
    paths: list[str]
    identities: list[str]  # "" where the data set has no identity labels


def read_identity_file(folder: Path) -> dict[str, str]:
    """``identity.txt`` lines ``file identity`` -> {file: identity}."""
    mapping: dict[str, str] = {}
    path = folder / "identity.txt"
    if path.is_file():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            parts = line.split()
            if len(parts) >= 2:
                mapping[parts[0]] = parts[1]
    return mapping


def list_face_images(root: Path) -> list[tuple[Path, str]]:
    """Every image under ``root`` with its identity.

    Identity comes from an ``identity.txt`` in the image's folder when there is
    one; in a folder-per-person tree (``root/person/img.jpg``) from the folder
    name; otherwise it is unknown ("").
    """
    root = Path(root)
    items: list[tuple[Path, str]] = []
    id_files: dict[Path, dict[str, str]] = {}
    # A root whose subfolders carry identity.txt files is a collection of data
    # sets (like shared/faces/train), not a folder per person: an unlabelled
    # set beside them (UTKFace) must not become one 10,000-image "person".
    folder_per_person = not any(root.glob("*/identity.txt"))
    for path in sorted(root.rglob("*")):
        if not is_image_file(path):
            continue
        folder = path.parent
        if folder not in id_files:
            id_files[folder] = read_identity_file(folder)
        ids = id_files[folder]
        if ids:
            identity = ids.get(path.name, "")
            identity = f"{folder.name}/{identity}" if identity else ""
        elif folder_per_person and folder != root and folder.parent == root:
            identity = folder.name
        else:
            identity = ""
        items.append((path, identity))
    return items


def _largest_face(image: np.ndarray, detector: YuNetDetector):
    """(face, scale, image it was found in): small images are upsampled first, as YuNet misses small faces."""
    scale = 1.0
    shorter = min(image.shape[:2])
    if shorter < MIN_DETECT_SIDE:
        scale = MIN_DETECT_SIDE / shorter
        image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
    faces = detector.detect_image(image)
    if not faces:
        return None, scale, image
    return max(faces, key=lambda f: f.size), scale, image


def crop_largest_face(image: np.ndarray, detector: YuNetDetector, size: int = 112) -> np.ndarray | None:
    """Align the largest detected face; None when there is none."""
    face, _, found_in = _largest_face(image, detector)
    return None if face is None else align_face(found_in, face.landmarks, size)


def _cache_key(items: list[tuple[Path, str]], size: int, detector_sha: str) -> str:
    # Keyed on file contents, not mtimes: a fresh copy of the same images (another machine, a
    # re-provisioned data folder) reuses the cache; an edited image does not.
    digest = hashlib.sha256()
    digest.update(f"{size}|{detector_sha}|v2".encode())
    for path, identity in items:
        content = hashlib.sha256(path.read_bytes()).hexdigest()
        digest.update(f"{path}|{identity}|{content}\n".encode())
    return digest.hexdigest()[:20]


def select_images(roots: list[Path], limit: int | None, seed: int) -> list[tuple[Path, str]]:
    items = [item for root in roots for item in list_face_images(Path(root))]
    if limit is not None and limit < len(items):
        items = random.Random(seed).sample(items, limit)
        items.sort()
    return items


def _crop_images(roots: list[Path], limit: int | None, seed: int, cache_dir: Path | None, detector_bundle: Path,
                 progress: bool, cache_name, size: int, crop, desc: str, meta: dict) -> CropSet:
    """Sample images, crop the largest face of each with ``crop(image, detector)`` (None: no usable face),
    and cache the result under ``cache_name(key)``, keyed on file contents and the detector."""
    bundle = load_bundle(detector_bundle, expect_kind="detector")
    items = select_images(roots, limit, seed)
    if not items:
        raise NoImagesError(f"no images under {', '.join(str(r) for r in roots)}")
    cache_path = None
    if cache_dir is not None:
        cache_path = Path(cache_dir) / cache_name(items, bundle.sha256)
        cached = _read_cache(cache_path)
        if cached is not None:
            return cached
    detector = YuNetDetector(bundle, score_threshold=0.6, min_face_size=16)
    crops, paths, identities, failed = [], [], [], 0
    from tqdm import tqdm

    for path, identity in tqdm(items, desc=desc, unit="img", disable=not progress):
        try:
            image = load_image(path)
        except EdgeError as exc:
            log.warning("%s", exc)
            failed += 1
            continue
        cropped = crop(image, detector)
        if cropped is None:
            failed += 1
            continue
        crops.append(cropped)
        paths.append(str(path))
        identities.append(identity)
    log.info("%s: %d crops, %d images without a usable face", desc, len(crops), failed)
    result = CropSet(np.stack(crops) if crops else np.zeros((0, size, size, 3), np.uint8), paths, identities)
    if cache_path is not None:
        _write_cache(cache_path, result, {"roots": [str(r) for r in roots], "count": len(paths), "failed": failed,
                                          "size": size, "limit": limit, "seed": seed, **meta})
    return result


def build_crops(
    roots: list[Path],
    size: int = 112,
    limit: int | None = None,
    seed: int = 0,
    cache_dir: Path | None = None,
    detector_bundle: Path = DEFAULT_DETECTOR,
    progress: bool = True,
) -> CropSet:
    """Detect and align the largest face of every image (or ``limit`` sampled with ``seed``)."""
    return _crop_images(
        roots, limit, seed, cache_dir, detector_bundle, progress,
        lambda items, sha: f"crops-{size}-{_cache_key(items, size, sha)}.npz", size,
        lambda image, detector: crop_largest_face(image, detector, size), "detect+align", {})


def _read_cache(cache_path: Path) -> CropSet | None:
    if not cache_path.is_file():
        return None
    data = np.load(cache_path, allow_pickle=False)
    log.info("using cached crops %s", cache_path)
    return CropSet(data["crops"], list(data["paths"]), list(data["identities"]))


def _write_cache(cache_path: Path, result: CropSet, info: dict) -> None:
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_path.with_suffix(".tmp.npz")
    np.savez(tmp, crops=result.crops, paths=np.array(result.paths), identities=np.array(result.identities))
    tmp.replace(cache_path)
    cache_path.with_suffix(".json").write_text(json.dumps(info, indent=2))


def largest_face_box(image: np.ndarray, detector: YuNetDetector) -> tuple[float, float, float, float] | None:
    """The largest detected face's box (x, y, w, h) in ``image``'s pixels; None when there is none.

    Small images are upsampled for detection as :func:`crop_largest_face` does; the box is mapped back.
    """
    face, scale, _ = _largest_face(image, detector)
    if face is None:
        return None
    x, y, w, h = face.box
    return x / scale, y / scale, w / scale, h / scale


def build_liveness_crops(
    roots: list[Path],
    scale: float,
    size: int = 80,
    limit: int | None = None,
    seed: int = 0,
    cache_dir: Path | None = None,
    detector_bundle: Path = DEFAULT_DETECTOR,
    progress: bool = True,
) -> CropSet:
    """Liveness crops of the largest face of every image (or ``limit`` sampled with ``seed``): the YuNet box
    scaled by ``scale`` with its surroundings, as the device crops it (:func:`edge.liveness.liveness_crop`)."""
    from edge.liveness import liveness_crop

    def crop(image, detector):
        box = largest_face_box(image, detector)
        return None if box is None else liveness_crop(image, box, scale, size)

    what = f"liveness-x{scale:g}-{size}"
    return _crop_images(
        roots, limit, seed, cache_dir, detector_bundle, progress,
        lambda items, sha: f"{what}-{_cache_key(items, what, sha)}.npz", size, crop, f"detect+crop x{scale:g}",
        {"scale": scale})


@click.command("crops")
@click.argument("roots", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--size", default=112, show_default=True, help="Aligned crop side in pixels.")
@click.option("--limit", type=int, default=None, help="Sample at most this many images.")
@click.option("--seed", default=0, show_default=True)
@click.option("--cache-dir", type=click.Path(path_type=Path), default=Path(".cache/crops"), show_default=True)
@boundary
def command(roots, size, limit, seed, cache_dir):
    """Detect and align faces under ROOTS once and cache the crops."""
    crop_set = build_crops(list(roots), size, limit, seed, cache_dir)
    click.echo(f"{len(crop_set.paths)} crops of {size}x{size}")
