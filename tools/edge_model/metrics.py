"""Face-verification metrics in plain numpy, small enough to check by hand.

Conventions used throughout:

* A pair is **accepted** (called "same person") when its L2 distance is
  ``<= threshold``.  Embeddings are unit vectors, so distances lie in [0, 2]
  and ``cos = 1 - d**2 / 2``.
* A distance of ``NaN`` marks a pair that could not be scored (no face found
  in one of its images).  Such a pair is **never accepted**: it counts as a
  false rejection when genuine and a correct rejection when impostor in TAR/FAR
  (a door that finds no face stays shut), it stays in every denominator, and
  in the k-fold accuracy it counts as **wrong** either way (conservative) and
  plays no part in choosing a threshold.
"""

from __future__ import annotations

import math

import numpy as np


def l2_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise L2 distance between two (N, D) arrays of unit embeddings (NaN rows stay NaN)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return np.sqrt(np.maximum(((a - b) ** 2).sum(axis=-1), 0.0))


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-12)


def _split(distances: np.ndarray, same: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    distances = np.asarray(distances, dtype=np.float64)
    same = np.asarray(same, dtype=bool)
    if distances.shape != same.shape:
        raise ValueError(f"distances {distances.shape} and labels {same.shape} differ in shape")
    return distances, same


def candidate_thresholds(distances: np.ndarray) -> np.ndarray:
    """Every threshold that splits the pairs differently: midpoints of consecutive distinct
    distances, plus one below the smallest (accept none) and one above the largest (accept all)."""
    values = np.unique(np.asarray(distances, dtype=np.float64)[~np.isnan(distances)])
    if values.size == 0:
        return np.array([0.0])
    return np.concatenate([[values[0] - 1e-6], (values[:-1] + values[1:]) / 2, [values[-1] + 1e-6]])


def accuracy_at(distances: np.ndarray, same: np.ndarray, threshold: float) -> float:
    """Fraction of pairs decided correctly at ``threshold`` (unscorable pairs count as wrong)."""
    distances, same = _split(distances, same)
    if distances.size == 0:
        return float("nan")
    valid = ~np.isnan(distances)
    accepted = np.zeros_like(same)
    accepted[valid] = distances[valid] <= threshold
    correct = (accepted == same) & valid
    return float(correct.sum() / distances.size)


def best_threshold(distances: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    """(threshold, accuracy) maximising accuracy by exhaustive search over :func:`candidate_thresholds`.

    Ties go to the smallest threshold (the stricter one).  Unscorable pairs count
    as wrong for every threshold, so they lower the accuracy but not the choice.
    """
    distances, same = _split(distances, same)
    valid = ~np.isnan(distances)
    genuine = np.sort(distances[valid & same])
    impostor = np.sort(distances[valid & ~same])
    candidates = candidate_thresholds(distances)
    accepted_genuine = np.searchsorted(genuine, candidates, side="right")
    rejected_impostor = impostor.size - np.searchsorted(impostor, candidates, side="right")
    correct = accepted_genuine + rejected_impostor
    best = int(np.argmax(correct))
    return float(candidates[best]), float(correct[best] / max(distances.size, 1))


def kfold_accuracy(distances: np.ndarray, same: np.ndarray, folds: np.ndarray) -> dict:
    """Accuracy on each fold with the threshold chosen on all the other folds; mean and std.

    ``std`` is the population standard deviation over folds (numpy's default,
    as in the usual LFW/CFP reports).
    """
    distances, same = _split(distances, same)
    folds = np.asarray(folds)
    labels = sorted(set(folds.tolist()))
    if len(labels) < 2:
        raise ValueError("k-fold accuracy needs at least two folds")
    accuracies, thresholds = [], []
    for fold in labels:
        test = folds == fold
        threshold, _ = best_threshold(distances[~test], same[~test])
        thresholds.append(threshold)
        accuracies.append(accuracy_at(distances[test], same[test], threshold))
    accuracies_arr = np.array(accuracies)
    return {
        "mean": float(accuracies_arr.mean()),
        "std": float(accuracies_arr.std()),
        "per_fold": [float(a) for a in accuracies],
        "thresholds": [float(t) for t in thresholds],
        "folds": len(labels),
    }


def threshold_at_far(impostor: np.ndarray, far: float) -> float:
    """The largest threshold whose impostor acceptance rate (``d <= t``) is at most ``far``.

    With n impostor distances sorted as s_0 <= s_1 <= ..., at most
    k = floor(far * n) may be accepted, so the threshold sits just below s_k
    (the largest float64 smaller than it); ties at s_k are all rejected.  NaN
    (unscorable) impostors are never accepted but count in n.  When k reaches
    the number of scorable impostors, the threshold is the largest of them.
    """
    if not 0.0 <= far < 1.0:
        raise ValueError(f"FAR {far} must be in [0, 1)")
    impostor = np.asarray(impostor, dtype=np.float64)
    n = impostor.size
    if n == 0:
        raise ValueError("no impostor pairs: cannot choose a threshold for a FAR")
    scored = np.sort(impostor[~np.isnan(impostor)])
    k = int(math.floor(far * n + 1e-9))
    if k >= scored.size:
        return float(scored[-1]) if scored.size else 2.0
    return float(np.nextafter(scored[k], -np.inf))


def tar_at_far(distances: np.ndarray, same: np.ndarray, far: float) -> dict:
    """True-accept rate at the :func:`threshold_at_far` threshold: {tar, far (achieved), threshold}."""
    distances, same = _split(distances, same)
    genuine, impostor = distances[same], distances[~same]
    threshold = threshold_at_far(impostor, far)
    with np.errstate(invalid="ignore"):
        tar = float((genuine <= threshold).sum() / genuine.size) if genuine.size else float("nan")
        achieved = float((impostor <= threshold).sum() / impostor.size)
    return {"tar": tar, "far": achieved, "threshold": threshold, "far_target": far,
            "genuine_pairs": int(genuine.size), "impostor_pairs": int(impostor.size)}


def roc_points(distances: np.ndarray, same: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(far, tar, thresholds) at every candidate threshold, FAR ascending."""
    distances, same = _split(distances, same)
    genuine = np.sort(distances[same & ~np.isnan(distances)])
    impostor = np.sort(distances[~same & ~np.isnan(distances)])
    thresholds = candidate_thresholds(distances)
    tar = np.searchsorted(genuine, thresholds, side="right") / max(int(same.sum()), 1)
    far = np.searchsorted(impostor, thresholds, side="right") / max(int((~same).sum()), 1)
    return far, tar, thresholds


def auc(far: np.ndarray, tar: np.ndarray) -> float:
    """Area under the ROC (trapezoids; ends at the largest FAR reached)."""
    far = np.concatenate([[0.0], np.asarray(far, dtype=np.float64)])
    tar = np.concatenate([[0.0], np.asarray(tar, dtype=np.float64)])
    return float(np.sum((far[1:] - far[:-1]) * (tar[1:] + tar[:-1]) / 2))


def min_impostors_for(far: float) -> int:
    """Impostor pairs needed before a FAR estimate means anything: 3 / FAR (the rule of three).

    With zero false accepts in n independent trials the one-sided 95 % upper
    bound on the true FAR is about 3 / n; below n = 3 / FAR a clean sample
    cannot even show the FAR is under the target.
    """
    return int(math.ceil(3.0 / far - 1e-9))
