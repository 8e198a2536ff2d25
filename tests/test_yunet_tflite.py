"""YuNet as fixed-size TFLite (edge_model.yunet_tflite): the decoder agrees with cv2.FaceDetectorYN.

The conversion needs tensorflow + onnx2tf (the ``build`` extra) and is skipped
without them; calibration uses the committed replay frames, not the fixtures.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_model.yunet_tflite import LORES_SIZE, lores_frame, pad_frame, padded_size

ROOT = Path(__file__).resolve().parents[1]
FACES = ROOT / "tests" / "fixtures" / "faces"
ONNX = ROOT / "models" / "yunet" / "face_detection_yunet_2023mar.onnx"


def test_padded_size_matches_facedetectoryn():
    assert padded_size(*LORES_SIZE) == (320, 256)
    assert padded_size(320, 256) == (320, 256)
    frame = np.full((240, 320, 3), 7, np.uint8)
    padded = pad_frame(frame, (320, 256))
    assert padded.shape == (256, 320, 3)
    assert (padded[:240] == 7).all() and (padded[240:] == 0).all()


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    pytest.importorskip("tensorflow")
    pytest.importorskip("onnx2tf")
    from edge_model.yunet_tflite import convert_yunet

    out = tmp_path_factory.mktemp("yunet-tflite")
    record = convert_yunet(ONNX, out, [ROOT / "edge" / "demo" / "replay"], calib_count=24, seed=0, progress=False)
    return {q: Path(p) for q, p in record["files"].items()}


def _pairs(model_path: Path):
    from edge_model.yunet_tflite import YuNetTFLiteDetector

    ref = cv2.FaceDetectorYN.create(str(ONNX), "", LORES_SIZE, 0.8, 0.3, 50)
    det = YuNetTFLiteDetector(model_path, score_threshold=0.8, min_face_size=0)
    assert (det.width, det.height) == (320, 256)
    pairs = []
    for path in sorted(FACES.glob("*.jpg")):
        frame = lores_frame(cv2.imread(str(path)))
        _, want = ref.detect(frame)
        got = det.detect_image(frame)
        assert want is not None and len(want) == 1, path.name
        assert len(got) == 1, f"{path.name}: {len(got)} faces from the TFLite decoder"
        pairs.append((want[0], got[0]))
    return pairs


def _iou(a, b) -> float:
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


@pytest.mark.parametrize("quant, min_iou, max_px, max_score", [("fp32", 0.999, 0.05, 1e-3), ("int8", 0.8, 4.0, 0.03)])
def test_decoder_agrees_with_facedetectoryn(converted, quant, min_iou, max_px, max_score):
    for want, got in _pairs(converted[quant]):
        assert _iou(want[:4], got.box) > min_iou
        err = np.linalg.norm(want[4:14].reshape(5, 2) - got.landmarks, axis=1)
        assert err.max() < max_px, err
        assert abs(float(want[14]) - got.score) < max_score
