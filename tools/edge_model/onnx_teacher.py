"""A teacher run by onnxruntime on exactly the views the student trains on (EdgeFace-XXS by default).

:class:`OnnxTeacher` takes what the trainer holds - RGB 0..255 float NCHW torch tensors - and
applies the teacher's own input spec (colour order, mean, std) before running the ONNX in batches.
The session is opened on first use, so building one costs nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

EDGEFACE_XXS = Path(__file__).resolve().parents[3] / "shared" / "models" / "edgeface-xxs" / "edgeface_xxs_float.onnx"


@dataclass(frozen=True)
class InputSpec:
    """How a teacher wants its pixels: ``(x - mean) / std`` per channel on 0..255 values, in ``color`` order."""

    color: str = "rgb"
    mean: float = 127.5
    std: float = 127.5  # EdgeFace: (x / 255 - 0.5) / 0.5
    size: int = 112


EDGEFACE_SPEC = InputSpec()


class OnnxTeacher:
    """Callable: (N, 3, S, S) RGB 0..255 float torch -> (N, D) float torch embeddings (not normalised)."""

    def __init__(self, path: Path = EDGEFACE_XXS, spec: InputSpec = EDGEFACE_SPEC, batch: int = 128,
                 threads: int | None = None) -> None:
        self.path, self.spec, self.batch, self.threads = Path(path), spec, batch, threads
        self._session = None

    def session(self):
        if self._session is None:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = self.threads or torch.get_num_threads()
            self._session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        return self._session

    def preprocess(self, x: torch.Tensor) -> np.ndarray:
        if self.spec.color == "bgr":
            x = x.flip(1)
        if x.shape[-1] != self.spec.size:
            x = torch.nn.functional.interpolate(x, size=(self.spec.size, self.spec.size), mode="area")
        return ((x.detach().float().cpu() - self.spec.mean) / self.spec.std).numpy().astype(np.float32)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        session = self.session()
        name = session.get_inputs()[0].name
        arr = self.preprocess(x)
        outs = [session.run(None, {name: arr[i:i + self.batch]})[0] for i in range(0, len(arr), self.batch)]
        return torch.from_numpy(np.concatenate(outs)).to(x.device)


def teacher_from_option(value: str | None) -> OnnxTeacher:
    """``--teacher``: ``edgeface`` (default) or a path to an ONNX taking the EdgeFace input spec."""
    if value in (None, "", "edgeface"):
        return OnnxTeacher()
    return OnnxTeacher(Path(value))
