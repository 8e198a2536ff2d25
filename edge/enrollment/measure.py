"""Measure the enrollment quality gates: ``python -m edge.enrollment.measure [--n 300]``.

Runs the gates over real face photos (``../shared/faces/train``) as they are,
and over door-camera-like frames built from them (the photo scaled into a
640x480 scene, as in the demo replay) with synthetic degradations: blur,
motion blur, dark, bright, small (far away), two faces.  Prints per-gate pass
rates, which is how the defaults in ``[enrollment]`` were chosen.
"""

from __future__ import annotations

import argparse
import collections
import random

import cv2
import numpy as np

from ..bundle import load_bundle
from ..config import REPO_MODELS_DIR, default_config
from ..detect import YuNetDetector
from ..images import load_image
from .quality import Thresholds, assess

SHARED = REPO_MODELS_DIR.parent.parent / "shared" / "faces" / "train"


def scene(photo: np.ndarray, face_height: float, rng: random.Random, second: np.ndarray | None = None) -> np.ndarray:
    frame = np.full((480, 640, 3), 110, np.uint8)
    frame = np.clip(frame + np.random.default_rng(rng.randrange(1 << 30)).normal(0, 3, frame.shape), 0, 255).astype(np.uint8)
    scale = face_height / photo.shape[0]
    small = cv2.resize(photo, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    h, w = small.shape[:2]
    x = (640 - w) // 2 if second is None else 40
    y = max(0, (480 - h) // 2)
    frame[y:y + h, x:x + w] = small[: 480 - y, : 640 - x]
    if second is not None:
        s2 = cv2.resize(second, (w, h), interpolation=cv2.INTER_AREA)
        frame[y:y + h, 600 - w:600] = s2[: 480 - y]
    return frame


DEGRADATIONS = {
    "door (clean)": lambda f: f,
    "gaussian blur s=2.5": lambda f: cv2.GaussianBlur(f, (0, 0), 2.5),
    "motion blur 15px": lambda f: cv2.filter2D(f, -1, np.eye(15, dtype=np.float32)[::-1] / 15),
    "dark (x0.25)": lambda f: (f.astype(np.float32) * 0.25).astype(np.uint8),
    "bright (x2.2+40)": lambda f: np.clip(f.astype(np.float32) * 2.2 + 40, 0, 255).astype(np.uint8),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    config = default_config()
    t = Thresholds.from_config(config.enrollment)
    detector = YuNetDetector(load_bundle(REPO_MODELS_DIR / "yunet"), score_threshold=0.5, min_face_size=16)
    rng = random.Random(args.seed)

    def run(label, images, live):
        counts, passed, found = collections.Counter(), 0, 0
        for image in images:
            a = assess(image, detector.detect_image(image), t, live=live)
            if a.face is not None:
                found += 1
            passed += a.ok
            counts.update(set(a.codes))
        n = len(images)
        rej = ", ".join(f"{k} {v / n:.0%}" for k, v in counts.most_common())
        print(f"{label:34s} n={n:4d} detected {found / n:5.1%}  PASS {passed / n:5.1%}  rejected by: {rej}")

    sets = {}
    for name in ("utkface", "celeba_wild"):
        files = sorted((SHARED / name).glob("*.jpg"))
        sets[name] = [load_image(p) for p in rng.sample(files, min(args.n, len(files)))]
    for name, images in sets.items():
        run(f"{name} photos", images, live=False)
    photos = sets["utkface"]
    for label, fn in DEGRADATIONS.items():
        run(f"{label}, face 200px", [fn(scene(p, 260, rng)) for p in photos], live=True)
    run("far: face ~55px", [scene(p, 75, rng) for p in photos], live=True)
    run("close: face ~400px", [scene(p, 470, rng) for p in photos], live=True)
    run("two faces", [scene(p, 220, rng, second=photos[(i + 1) % len(photos)]) for i, p in enumerate(photos)], live=True)


if __name__ == "__main__":
    main()
