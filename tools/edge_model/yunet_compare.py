"""YuNet as TFLite (INT8 / FP32 bundles from :mod:`edge_model.yunet_tflite`) against the ONNX model in OpenCV.

Usage (from the repo root, after converting with ``--convert`` once)::

    python -m edge_model.yunet_compare --convert --json .cache/yunet-tflite/compare.json

Frames (all 320x240 lores, as the detector sees them on the door):

* ``train``: images from ``../shared/faces/train`` *not* in the calibration
  sample, placed in a black 320x240 frame at a random scale/position
  (:func:`edge_model.yunet_tflite.lores_frame`);
* ``replay``: ``edge/demo/replay/*.jpg`` (640x480 main) through the camera's own
  ``make_lores``;
* ``fixtures``: ``tests/fixtures/faces`` centred at full fit.

The reference is :class:`edge.detect.YuNetDetector` (``cv2.FaceDetectorYN`` on
``models/yunet``), both sides with the runtime defaults (score 0.8, NMS 0.3,
min face 40 px, top-k 50).  Faces are matched greedily at IoU >= 0.5.  Timing:
one thread each (``cv2.setNumThreads(1)``, TFLite ``num_threads=1``), every
frame run by each detector in turn in the same loop, median of per-frame
``detect_image`` (pre-processing, inference, decoding, NMS all included).
Downstream: SFace INT8 embeddings of the crops aligned from the reference's and
the candidate's landmarks, cosine between the two.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import cv2
import numpy as np

from edge.align import align_face
from edge.bundle import load_bundle
from edge.camera.base import make_lores
from edge.detect import YuNetDetector, YuNetTFLiteDetector
from edge.embedder import TFLiteEmbedder
from edge.images import load_image
from edge_model.crops import select_images
from edge_model.yunet_tflite import LORES_SIZE, lores_frame

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".cache" / "yunet-tflite"
TRAIN = REPO.parent / "shared" / "faces" / "train"
ONNX = REPO / "models" / "yunet" / "face_detection_yunet_2023mar.onnx"


def iou(a, b) -> float:
    ax2, ay2, bx2, by2 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw = max(0.0, min(ax2, bx2) - max(a[0], b[0]))
    ih = max(0.0, min(ay2, by2) - max(a[1], b[1]))
    inter = iw * ih
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def match(ref, cand, threshold: float = 0.5):
    """Greedy one-to-one matching by IoU; returns [(i_ref, j_cand, iou)], unmatched ref, unmatched cand."""
    pairs = sorted(((iou(r.box, c.box), i, j) for i, r in enumerate(ref) for j, c in enumerate(cand)), reverse=True)
    used_r, used_c, out = set(), set(), []
    for value, i, j in pairs:
        if value < threshold or i in used_r or j in used_c:
            continue
        used_r.add(i), used_c.add(j)
        out.append((i, j, value))
    return out, [i for i in range(len(ref)) if i not in used_r], [j for j in range(len(cand)) if j not in used_c]


def build_frames(n_train: int, seed: int, exclude: set[str]) -> list[dict]:
    """[{set, name, lores, main, scale}] for the three frame sources."""
    frames = []
    items = [p for p, _ in select_images([TRAIN], None, seed) if str(p) not in exclude]
    rng = random.Random(seed)
    for path in sorted(rng.sample(items, min(n_train, len(items)))):
        lores = lores_frame(load_image(path), rng)
        frames.append({"set": "train", "name": str(path.relative_to(TRAIN)), "lores": lores, "main": lores, "scale": 1.0})
    for path in sorted((REPO / "edge" / "demo" / "replay").glob("*.jpg")):
        main = load_image(path)
        lores, scale = make_lores(main, LORES_SIZE[0])
        frames.append({"set": "replay", "name": path.name, "lores": lores, "main": main, "scale": scale})
    for path in sorted((REPO / "tests" / "fixtures" / "faces").glob("*.jpg")):
        lores = lores_frame(load_image(path))
        frames.append({"set": "fixtures", "name": path.name, "lores": lores, "main": lores, "scale": 1.0})
    return frames


def timed(detector, image):
    start = time.perf_counter()
    faces = detector.detect_image(image)
    return faces, (time.perf_counter() - start) * 1000.0


def summary(values, digits=4) -> dict:
    arr = np.asarray(values, np.float64)
    if not len(arr):
        return {"n": 0}
    return {"n": len(arr), "mean": round(float(arr.mean()), digits), "median": round(float(np.median(arr)), digits),
            "p95": round(float(np.percentile(arr, 95)), digits), "min": round(float(arr.min()), digits),
            "max": round(float(arr.max()), digits)}


def compare(candidates: dict[str, Path], n_train: int, seed: int, repeats: int, embedder_bundle: Path) -> dict:
    cv2.setNumThreads(1)
    conversion = json.loads((CACHE / "conversion.json").read_text()) if (CACHE / "conversion.json").is_file() else {}
    exclude = set(conversion.get("calibration_images", []))
    frames = build_frames(n_train, seed, exclude)
    reference = YuNetDetector(load_bundle(REPO / "models" / "yunet", expect_kind="detector"))
    # Each candidate through its sealed bundle, as a door unit whose manifest names tflite-yunet runs it.
    dets = {name: YuNetTFLiteDetector(load_bundle(path.parent, expect_kind="detector"), threads=1)
            for name, path in candidates.items()}
    embedder = TFLiteEmbedder(load_bundle(embedder_bundle, expect_kind="embedder"), threads=1)
    for frame in frames[:5]:  # warm-up
        reference.detect_image(frame["lores"])
        for det in dets.values():
            det.detect_image(frame["lores"])
    times = {"onnx-opencv": []} | {name: [] for name in dets}
    invoke = {name: [] for name in dets}
    results = {"onnx-opencv": []} | {name: [] for name in dets}
    for _ in range(repeats):
        for k, frame in enumerate(frames):
            faces, ms = timed(reference, frame["lores"])
            times["onnx-opencv"].append(ms)
            if len(results["onnx-opencv"]) < len(frames):
                results["onnx-opencv"].append(faces)
            for name, det in dets.items():
                faces, ms = timed(det, frame["lores"])
                times[name].append(ms)
                if len(results[name]) < len(frames):
                    results[name].append(faces)
                start = time.perf_counter()
                det._interpreter.invoke()
                invoke[name].append((time.perf_counter() - start) * 1000.0)

    report = {
        "frames": {s: sum(f["set"] == s for f in frames) for s in ("train", "replay", "fixtures")},
        "reference": "models/yunet ONNX via cv2.FaceDetectorYN (edge.detect.YuNetDetector), OpenCV " + cv2.__version__,
        "settings": {"score_threshold": 0.8, "nms_threshold": 0.3, "min_face_size": 40, "top_k": 50,
                     "match_iou": 0.5, "threads": 1, "repeats": repeats, "seed": seed},
        "reference_faces": int(sum(len(r) for r in results["onnx-opencv"])),
        "speed_ms": {"onnx-opencv": {"detect_median": round(float(np.median(times["onnx-opencv"])), 3),
                                     "detect_p90": round(float(np.percentile(times["onnx-opencv"], 90)), 3)}},
        "candidates": {},
    }
    for name, det in dets.items():
        report["speed_ms"][name] = {
            "detect_median": round(float(np.median(times[name])), 3),
            "detect_p90": round(float(np.percentile(times[name], 90)), 3),
            "invoke_median": round(float(np.median(invoke[name])), 3),
            "runtime": det.runtime,
        }
        ious, lm_px, lm_io, lm_max_px, score_diff, cosines = [], [], [], [], [], []
        misses, extras, disagree, matched = [], [], [], 0
        crops_ref, crops_cand, pair_sets = [], [], []
        for frame, ref, cand in zip(frames, results["onnx-opencv"], results[name]):
            pairs, miss, extra = match(ref, cand)
            matched += len(pairs)
            if miss or extra:
                disagree.append(frame["name"])
            misses += [{"frame": frame["name"], "score": round(ref[i].score, 3),
                        "size": round(min(ref[i].box[2:]), 1)} for i in miss]
            extras += [{"frame": frame["name"], "score": round(cand[j].score, 3),
                        "size": round(min(cand[j].box[2:]), 1)} for j in extra]
            for i, j, value in pairs:
                r, c = ref[i].landmarks, cand[j].landmarks
                dist = np.linalg.norm(r - c, axis=1)
                interocular = float(np.linalg.norm(r[0] - r[1]))
                ious.append(value)
                lm_px.append(float(dist.mean()))
                lm_max_px.append(float(dist.max()))
                lm_io.append(float(dist.mean()) / max(interocular, 1e-6))
                score_diff.append(abs(ref[i].score - cand[j].score))
                pair_sets.append(frame["set"])
                s = frame["scale"]
                crops_ref.append(align_face(frame["main"], r * s))
                crops_cand.append(align_face(frame["main"], c * s))
        if crops_ref:
            a = np.concatenate([embedder.embed(crops_ref[k : k + 32]) for k in range(0, len(crops_ref), 32)])
            b = np.concatenate([embedder.embed(crops_cand[k : k + 32]) for k in range(0, len(crops_cand), 32)])
            cosines = (a * b).sum(axis=1).tolist()
        report["candidates"][name] = {
            "file": str(candidates[name].relative_to(REPO)) if candidates[name].is_relative_to(REPO) else str(candidates[name]),
            "size_bytes": candidates[name].stat().st_size,
            "matched": matched, "missed": len(misses), "extra": len(extras),
            "frames_disagreeing": len(disagree),
            "box_iou": summary(ious),
            "landmark_err_px": summary(lm_px, 3),
            "landmark_max_point_err_px": summary(lm_max_px, 3),
            "landmark_err_interocular": summary(lm_io),
            "score_abs_diff": summary(score_diff),
            "sface_int8_cosine": summary(cosines),
            "sface_cosine_below_0.99": int(sum(c < 0.99 for c in cosines)),
            "by_set": {
                name_set: {
                    "landmark_err_px_mean": round(float(np.mean([v for v, t in zip(lm_px, pair_sets) if t == name_set])), 3),
                    "sface_int8_cosine_mean": round(float(np.mean([v for v, t in zip(cosines, pair_sets) if t == name_set])), 4),
                    "faces": int(sum(t == name_set for t in pair_sets)),
                }
                for name_set in sorted(set(pair_sets))
            },
            "misses": misses, "extras": extras,
        }
    return report


def table(report: dict) -> str:
    names = list(report["candidates"])
    rows = [("", *names)]

    def add(label, fn):
        rows.append((label, *[fn(report["candidates"][n]) for n in names]))

    add("matched / missed / extra", lambda c: f"{c['matched']} / {c['missed']} / {c['extra']}")
    add("frames disagreeing", lambda c: str(c["frames_disagreeing"]))
    add("box IoU mean / median / min", lambda c: "{mean:.4f} / {median:.4f} / {min:.4f}".format(**c["box_iou"]))
    add("landmark err px mean / median / p95", lambda c: "{mean:.3f} / {median:.3f} / {p95:.3f}".format(**c["landmark_err_px"]))
    add("landmark worst point px p95 / max", lambda c: "{p95:.3f} / {max:.3f}".format(**c["landmark_max_point_err_px"]))
    add("landmark err / inter-ocular mean / p95", lambda c: "{mean:.4f} / {p95:.4f}".format(**c["landmark_err_interocular"]))
    add("|score diff| mean / max", lambda c: "{mean:.4f} / {max:.4f}".format(**c["score_abs_diff"]))
    add("SFace INT8 cosine mean / min", lambda c: "{mean:.4f} / {min:.4f}".format(**c["sface_int8_cosine"]))
    add("size bytes", lambda c: f"{c['size_bytes']:,}")
    for key, label in (("detect_median", "detect ms median (1 thread)"), ("invoke_median", "invoke ms median (1 thread)")):
        rows.append((label, *[f"{report['speed_ms'][n][key]:.3f}" for n in names]))
    widths = [max(len(r[k]) for r in rows) for k in range(len(rows[0]))]
    lines = [" | ".join(v.ljust(w) for v, w in zip(r, widths)) for r in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    ref = report["speed_ms"]["onnx-opencv"]
    lines.append(f"reference ONNX in OpenCV: {report['reference_faces']} faces on {sum(report['frames'].values())} frames "
                 f"{report['frames']}; detect ms median {ref['detect_median']:.3f} (p90 {ref['detect_p90']:.3f})")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--convert", action="store_true", help="(re)convert the ONNX into .cache/yunet-tflite first")
    parser.add_argument("--train", type=int, default=250, help="train frames (besides replay and fixtures)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="timing passes over all frames")
    parser.add_argument("--embedder", type=Path, default=REPO / "models" / "sface-int8")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    if args.convert:
        from edge_model.yunet_tflite import convert_yunet

        convert_yunet(ONNX, CACHE, [TRAIN], calib_count=200, seed=0, progress=False)
    candidates = {q: CACHE / f"yunet-{q}-320x256" / f"yunet-{q}-320x256.tflite" for q in ("int8", "fp32")}
    candidates = {k: v for k, v in candidates.items() if v.is_file()}
    if not candidates:
        parser.error(f"no converted models in {CACHE}; run with --convert")
    report = compare(candidates, args.train, args.seed, args.repeats, args.embedder)
    print(table(report))
    text = json.dumps(report, indent=2)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
