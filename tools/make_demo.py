"""Rebuild the bundled demo: enrollment photos and a replay sequence composed from credited photos.

Run from the repository root: ``python tools/make_demo.py``.  The replay
frames are 640x480 "door camera" frames: an empty scene, then each visitor
for a few frames with small shifts and exposure changes, so the k-of-n
decision has something to do.  Sources and licences: edge/demo/CREDITS.md.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "faces"
DEMO = ROOT / "edge" / "demo"

ENROLL = {"Emmanuel_Macron": ["person_a_1.jpg"], "Jacinda_Ardern": ["person_b_1.jpg"]}
# (photo or None for an empty scene, frames)
SEQUENCE = [
    (None, 6),
    ("person_a_2.jpg", 8),  # enrolled: Macron, eleven years after his enrollment photo
    (None, 6),
    ("impostor_1.jpg", 8),  # stranger
    (None, 6),
    ("person_b_2.jpg", 8),  # enrolled: Ardern
    (None, 6),
]
WIDTH, HEIGHT = 640, 480


def background(rng: random.Random) -> np.ndarray:
    y = np.linspace(0, 1, HEIGHT)[:, None]
    x = np.linspace(0, 1, WIDTH)[None, :]
    base = 90 + 60 * y + 20 * x
    image = np.stack([base * 0.9, base, base * 1.05], axis=-1)
    cv2.rectangle(image, (40, 60), (200, 470), (70, 80, 95), -1)  # a door frame
    noise = np.random.default_rng(rng.randrange(1 << 30)).normal(0, 3, image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8)


def place(photo: np.ndarray, rng: random.Random) -> np.ndarray:
    frame = background(rng)
    scale = (HEIGHT * rng.uniform(0.78, 0.86)) / photo.shape[0]
    resized = cv2.resize(photo, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    h, w = resized.shape[:2]
    x = (WIDTH - w) // 2 + rng.randint(-25, 25)
    y = HEIGHT - h + rng.randint(0, 10)
    x0, y0 = max(x, 0), max(y, 0)
    x1, y1 = min(x + w, WIDTH), min(y + h, HEIGHT)
    frame[y0:y1, x0:x1] = resized[y0 - y : y1 - y, x0 - x : x1 - x]
    gain = rng.uniform(0.8, 1.15)
    return np.clip(frame.astype(np.float32) * gain + rng.uniform(-10, 10), 0, 255).astype(np.uint8)


def main() -> None:
    rng = random.Random(7)
    for folder in ("enroll", "replay"):
        shutil.rmtree(DEMO / folder, ignore_errors=True)
    for person, files in ENROLL.items():
        target = DEMO / "enroll" / person
        target.mkdir(parents=True)
        for name in files:
            shutil.copy(FIXTURES / name, target / name)
    replay = DEMO / "replay"
    replay.mkdir(parents=True)
    index = 0
    for photo_name, count in SEQUENCE:
        photo = cv2.imread(str(FIXTURES / photo_name)) if photo_name else None
        for _ in range(count):
            frame = background(rng) if photo is None else place(photo, rng)
            label = Path(photo_name).stem if photo_name else "empty"
            cv2.imwrite(str(replay / f"{index:03d}_{label}.jpg"), frame, [cv2.IMWRITE_JPEG_QUALITY, 80])
            index += 1
    print(f"wrote {index} replay frames to {replay}")


if __name__ == "__main__":
    main()
