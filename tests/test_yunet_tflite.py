"""YuNet as fixed-size TFLite: edge_model.yunet_tflite converts it into sealed bundles, the runtime's
``tflite-yunet`` backend (edge.detect.YuNetTFLiteDetector) runs them and agrees with cv2.FaceDetectorYN.

The conversion needs tensorflow + onnx2tf (the ``build`` extra) and is skipped
without them; calibration uses the committed replay frames, not the fixtures.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.app import build_detector
from edge.bundle import load_bundle
from edge.config import config_from_dict
from edge.detect import YuNetTFLiteDetector
from edge.images import load_image
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
    assert set(record["bundles"]) == set(record["files"]) == {"int8", "fp32"}
    return {q: Path(p) for q, p in record["files"].items()}


def _pairs(model_path: Path):
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


@pytest.mark.parametrize("quant", ["int8", "fp32"])
def test_a_bundle_naming_tflite_yunet_is_built_by_the_registry_and_detects_as_the_tool_did(converted, quant):
    bundle = load_bundle(converted[quant].parent, expect_kind="detector")  # sealed by convert_yunet
    assert bundle.backend == "tflite-yunet" and bundle.manifest["input"]["width"] == 320
    config = config_from_dict({"detector": {"model": str(bundle.root), "min_face_size": 8}})
    detector = build_detector(config)
    assert type(detector) is YuNetTFLiteDetector and detector.bundle.root == bundle.root
    tool = YuNetTFLiteDetector(converted[quant], score_threshold=0.8, nms_threshold=0.3, min_face_size=8)
    for path in sorted(FACES.glob("*.jpg")):
        frame = lores_frame(cv2.imread(str(path)))
        got, want = detector.detect_image(frame), tool.detect_image(frame)
        assert len(got) == len(want) == 1, path.name
        assert got[0].box == want[0].box and got[0].score == want[0].score
        np.testing.assert_array_equal(got[0].landmarks, want[0].landmarks)


def test_a_frame_larger_than_the_fixed_input_is_scaled_to_fit(converted):
    """A 640x480 frame (lores_width = width) on the 320x256 model is detected at 320x240 and mapped back:
    the faces are FaceDetectorYN's on the halved frame, doubled."""
    det = YuNetTFLiteDetector(converted["fp32"], min_face_size=0)
    ref = cv2.FaceDetectorYN.create(str(ONNX), "", LORES_SIZE, 0.8, 0.3, 50)
    for path in sorted(FACES.glob("*.jpg")):
        big = lores_frame(load_image(path), size=(640, 480))
        _, want = ref.detect(cv2.resize(big, LORES_SIZE, interpolation=cv2.INTER_AREA))
        got = det.detect_image(big)
        assert want is not None and len(want) == len(got) == 1, path.name
        assert _iou(want[0][:4] * 2, got[0].box) > 0.999
        assert np.abs(want[0][4:14].reshape(5, 2) * 2 - got[0].landmarks).max() < 0.1
    assert det.detect_image(big, min_size=1000) == []  # the size filter is in the frame's own pixels
