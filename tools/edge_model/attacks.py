"""Synthetic presentation attacks made from real face photos: a printed photo or a phone screen held up to a door camera.

These are not real attacks.  They imitate what a recapture does to an image -
the things passive anti-spoofing models look for - so that the liveness check
can be measured on many faces, not only on the three upstream samples:

- **print**: the photo on paper with a white margin, lower contrast and
  saturation (ink gamut), a paper tint, a halftone dot screen, paper texture, a
  soft glossy highlight; held at an angle in front of the camera;
- **screen**: the photo on a phone with a black bezel, the display's pixel grid
  (resampled by the camera, which is what makes moire), a cooler white point
  and raised blacks, a reflection streak; held at an angle.

Both are composited into a 640x480 door-camera frame (background, perspective,
blur, sensor noise, JPEG), the face about as large as a person at the door.
What they cannot imitate: real paper and ink spectra, real display subpixel
layouts and refresh, lens flare, a hand's motion blur, a printed photo bent in
the hand.  Figures measured on them say how the models react to those cues, not
what a real attacker at a real door achieves; that is what ``edge liveness-tune``
measures on the door's own camera.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

FRAME = (480, 640)  # height, width of the door-camera frame the attack is shown to
SPECIES = ("print", "screen")


@dataclass(frozen=True)
class Placement:
    """Where the medium is held: its centre in the frame, its height as a share of the frame, its tilt."""

    cx: float
    cy: float
    height: float
    yaw: float  # degrees, turning left/right (perspective)
    pitch: float
    roll: float


def random_placement(rng: np.random.Generator) -> Placement:
    return Placement(cx=rng.uniform(0.4, 0.6), cy=rng.uniform(0.42, 0.58), height=rng.uniform(0.55, 0.85),
                     yaw=rng.uniform(-25, 25), pitch=rng.uniform(-15, 15), roll=rng.uniform(-10, 10))


def close_placement(rng: np.random.Generator) -> Placement:
    """The medium held up to the lens: larger than the frame, so its edges (margin, bezel) are out of view."""
    return Placement(cx=rng.uniform(0.45, 0.55), cy=rng.uniform(0.45, 0.55), height=rng.uniform(1.3, 2.8),
                     yaw=rng.uniform(-15, 15), pitch=rng.uniform(-10, 10), roll=rng.uniform(-8, 8))


def _background(rng: np.random.Generator) -> np.ndarray:
    """A plausible, unremarkable scene behind the medium: a lit wall with a gradient and some texture."""
    h, w = FRAME
    base = rng.uniform(60, 200, 3)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    gradient = (xx / w - 0.5) * rng.uniform(-60, 60) + (yy / h - 0.5) * rng.uniform(-60, 60)
    texture = cv2.GaussianBlur(rng.normal(0, 12, (h, w)).astype(np.float32), (0, 0), 6)
    image = base[None, None, :] + (gradient + texture)[:, :, None]
    return np.clip(image, 0, 255).astype(np.uint8)


def _quad(placement: Placement, aspect: float) -> np.ndarray:
    """The medium's four corners in the frame after a 3-D tilt, as a hand would hold it."""
    h, w = FRAME
    mh = placement.height * h
    mw = mh * aspect
    corners = np.array([[-mw / 2, -mh / 2, 0], [mw / 2, -mh / 2, 0], [mw / 2, mh / 2, 0], [-mw / 2, mh / 2, 0]])
    yaw, pitch, roll = np.radians([placement.yaw, placement.pitch, placement.roll])
    ry = np.array([[np.cos(yaw), 0, np.sin(yaw)], [0, 1, 0], [-np.sin(yaw), 0, np.cos(yaw)]])
    rx = np.array([[1, 0, 0], [0, np.cos(pitch), -np.sin(pitch)], [0, np.sin(pitch), np.cos(pitch)]])
    rz = np.array([[np.cos(roll), -np.sin(roll), 0], [np.sin(roll), np.cos(roll), 0], [0, 0, 1]])
    rotated = corners @ (rz @ rx @ ry).T
    focal = 1.2 * w  # a door camera's moderate field of view
    depth = focal + rotated[:, 2]
    projected = rotated[:, :2] * (focal / depth)[:, None]
    return (projected + [placement.cx * w, placement.cy * h]).astype(np.float32)


def _composite(medium: np.ndarray, placement: Placement, rng: np.random.Generator) -> np.ndarray:
    mh, mw = medium.shape[:2]
    quad = _quad(placement, mw / mh)
    src = np.array([[0, 0], [mw - 1, 0], [mw - 1, mh - 1], [0, mh - 1]], np.float32)
    # Warped at twice the frame's resolution, then area-averaged: a camera pixel integrates over its area,
    # so fine print and display detail still aliases (moire) but is not point-sampled into noise.
    transform = np.diag([2.0, 2.0, 1.0]) @ cv2.getPerspectiveTransform(src, quad)
    frame = _background(rng)
    size = (2 * FRAME[1], 2 * FRAME[0])
    warped = cv2.resize(cv2.warpPerspective(medium, transform, size, flags=cv2.INTER_LINEAR),
                        (FRAME[1], FRAME[0]), interpolation=cv2.INTER_AREA)
    mask = cv2.resize(cv2.warpPerspective(np.full((mh, mw), 255, np.uint8), transform, size),
                      (FRAME[1], FRAME[0]), interpolation=cv2.INTER_AREA)
    alpha = (mask.astype(np.float32) / 255.0)[:, :, None]
    return (warped * alpha + frame * (1 - alpha)).astype(np.uint8)


def _camera(frame: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """What the door camera adds: slight defocus, sensor noise, JPEG."""
    sigma = rng.uniform(0.3, 1.0)
    out = cv2.GaussianBlur(frame, (0, 0), sigma).astype(np.float32)
    out += rng.normal(0, rng.uniform(1.5, 4.0), out.shape)
    out = np.clip(out, 0, 255).astype(np.uint8)
    ok, data = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(75, 93))])
    return cv2.imdecode(data, cv2.IMREAD_COLOR)


def _fit(photo: np.ndarray, height: int, aspect: float) -> np.ndarray:
    """The photo cropped about its centre to the medium's aspect and scaled to ``height`` pixels."""
    h, w = photo.shape[:2]
    if w / h > aspect:
        nw = int(round(h * aspect))
        photo = photo[:, (w - nw) // 2:(w - nw) // 2 + nw]
    else:
        nh = int(round(w / aspect))
        photo = photo[(h - nh) // 2:(h - nh) // 2 + nh]
    return cv2.resize(photo, (int(round(height * aspect)), height), interpolation=cv2.INTER_CUBIC)


def printed(photo: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The photo as a print on paper, margin included (not yet placed in a frame)."""
    image = _fit(photo, 900, rng.uniform(0.7, 0.8)).astype(np.float32)
    hsv = cv2.cvtColor(np.clip(image, 0, 255).astype(np.uint8), cv2.COLOR_BGR2HSV).astype(np.float32)
    hsv[:, :, 1] *= rng.uniform(0.6, 0.85)  # ink gamut: less saturated
    image = cv2.cvtColor(np.clip(hsv, 0, 255).astype(np.uint8), cv2.COLOR_HSV2BGR).astype(np.float32)
    lo, hi = rng.uniform(25, 45), rng.uniform(205, 235)  # paper white and ink black
    image = lo + image * (hi - lo) / 255.0
    tint = np.array([rng.uniform(0.88, 0.96), rng.uniform(0.96, 1.0), 1.0])  # warm paper (BGR)
    image *= tint
    period = rng.uniform(3.0, 5.0)  # halftone screen in print pixels
    angle = np.radians(rng.choice([15.0, 45.0, 75.0]))
    yy, xx = np.mgrid[0:image.shape[0], 0:image.shape[1]].astype(np.float32)
    u = xx * np.cos(angle) + yy * np.sin(angle)
    v = -xx * np.sin(angle) + yy * np.cos(angle)
    dots = (np.cos(2 * np.pi * u / period) * np.cos(2 * np.pi * v / period))[:, :, None]
    image *= 1.0 + rng.uniform(0.05, 0.12) * dots
    paper = cv2.GaussianBlur(rng.normal(0, 1, image.shape[:2]).astype(np.float32), (0, 0), 2)[:, :, None]
    image += paper * rng.uniform(3, 7)
    gx, gy = rng.uniform(0.2, 0.8) * image.shape[1], rng.uniform(0.2, 0.8) * image.shape[0]
    glare = np.exp(-(((xx - gx) / (0.25 * image.shape[1])) ** 2 + ((yy - gy) / (0.2 * image.shape[0])) ** 2))
    image += glare[:, :, None] * rng.uniform(15, 45)
    margin = int(image.shape[0] * rng.uniform(0.04, 0.08))
    sheet = np.full((image.shape[0] + 2 * margin, image.shape[1] + 2 * margin, 3), hi, np.float32) * tint
    sheet[margin:-margin, margin:-margin] = image
    return np.clip(sheet, 0, 255).astype(np.uint8)


def on_screen(photo: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The photo on a phone display with its bezel: the pixel grid is drawn, so the camera resamples it."""
    pixels_h = int(rng.integers(300, 420))  # display pixels across the shown photo's height, after the camera's scale
    aspect = rng.uniform(0.46, 0.56)
    image = _fit(photo, pixels_h, aspect).astype(np.float32)
    image = 255.0 * (image / 255.0) ** rng.uniform(0.8, 0.95)  # a brighter display gamma
    image = rng.uniform(8, 20) + image * (1 - rng.uniform(0.03, 0.08))  # raised blacks (backlight)
    image *= np.array([rng.uniform(1.02, 1.1), 1.0, rng.uniform(0.9, 0.97)])  # cool white point (BGR)
    cell = 3  # each display pixel as three vertical sub-pixel stripes, B G R
    grid = np.repeat(np.repeat(image, cell, axis=0), cell, axis=1)
    stripes = np.zeros((cell, cell, 3), np.float32)
    for channel in range(3):
        stripes[:, channel, 2 - channel] = 1.0
    stripes = stripes * 2.2 + 0.15  # sub-pixel fill factor and bleed
    grid *= np.tile(stripes, (pixels_h, grid.shape[1] // cell, 1))
    grid[cell - 1::cell, :, :] *= 0.55  # the black matrix between rows
    h, w = grid.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(-0.6, 0.6)
    offset = rng.uniform(0.2, 0.8) * w
    streak = np.exp(-(((xx - offset) * np.cos(angle) - (yy - h / 2) * np.sin(angle)) / (0.12 * w)) ** 2)
    grid += streak[:, :, None] * rng.uniform(20, 60)
    bezel = int(w * rng.uniform(0.04, 0.07))
    body = np.full((h + 4 * bezel, w + 2 * bezel, 3), rng.uniform(8, 25), np.float32)
    body[2 * bezel:2 * bezel + h, bezel:bezel + w] = grid
    return np.clip(body, 0, 255).astype(np.uint8)


MEDIA = {"print": printed, "screen": on_screen}


def attack_frame(photo: np.ndarray, species: str, rng: np.random.Generator,
                 placement: Placement | None = None) -> np.ndarray:
    """A door-camera frame (BGR, 480x640) of ``photo`` shown as a print or on a screen."""
    medium = MEDIA[species](photo, rng)
    return _camera(_composite(medium, placement or random_placement(rng), rng), rng)


def hand_held(photo: np.ndarray, species: str, frames: int, rng: np.random.Generator) -> list[np.ndarray]:
    """A short sequence of one medium moved by hand: the same print or screen, placement drifting frame to frame."""
    medium = MEDIA[species](photo, rng)
    start = random_placement(rng)
    out = []
    for i in range(frames):
        t = i / max(frames - 1, 1)
        drift = Placement(cx=start.cx + 0.05 * np.sin(2 * np.pi * t), cy=start.cy + 0.03 * np.cos(3 * t),
                          height=start.height * (1 + 0.05 * t), yaw=start.yaw + 10 * np.sin(2 * np.pi * t),
                          pitch=start.pitch + 5 * t, roll=start.roll + 3 * np.sin(4 * t))
        out.append(_camera(_composite(medium, drift, rng), rng))
    return out
