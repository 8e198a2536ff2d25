"""5-point similarity alignment to the standard 112x112 face template.

The runtime, INT8 calibration, evaluation and student training all crop faces
through :func:`align_face`, so a model sees at run time exactly the crops it
was calibrated and trained on.
"""

from __future__ import annotations

import cv2
import numpy as np

ALIGNED_SIZE = 112

# The ArcFace/InsightFace template (also what SFace was trained with), in the
# same order as the detector's landmarks: right eye, left eye, nose, mouth corners.
TEMPLATE_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float32,
)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping src to dst.

    Umeyama's closed form: no reflection, exactly the 4-DoF model the template
    was built for (an affine fit would shear faces seen at an angle).
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    n = src.shape[0]
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    cov = dst_c.T @ src_c / n
    u, s, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1
    rot = u @ np.diag(d) @ vt
    var_src = (src_c**2).sum() / n
    scale = (s * d).sum() / var_src if var_src > 0 else 1.0
    matrix = np.zeros((2, 3), dtype=np.float64)
    matrix[:, :2] = scale * rot
    matrix[:, 2] = dst_mean - scale * rot @ src_mean
    return matrix


def align_face(image: np.ndarray, landmarks: np.ndarray, size: int = ALIGNED_SIZE) -> np.ndarray:
    """Warp ``image`` so the 5 ``landmarks`` land on the template; returns a size x size BGR crop.

    ``size`` other than 112 scales the template, so a student with a smaller
    input sees the same framing.
    """
    landmarks = np.asarray(landmarks, dtype=np.float32).reshape(5, 2)
    template = TEMPLATE_112 * (size / ALIGNED_SIZE)
    matrix = similarity_transform(landmarks, template)
    return cv2.warpAffine(
        image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
