"""The float teacher (SFace ONNX) run in PyTorch, and its cached targets.

SFace's graph is a plain chain (Sub, Mul, Conv, BatchNormalization, PRelu,
Dropout, Flatten, Gemm), so a few lines interpret it in PyTorch: batched, on a
GPU when there is one, with no converter dependency.  It is checked against
OpenCV's DNN on the same crops in the tests.  Input: aligned 112x112 BGR uint8
crops; output: L2-normalised 128-D float embeddings (what cv2.FaceRecognizerSF
gives, which feeds RGB 0..255 to the network).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

SUPPORTED = {"Sub", "Mul", "Add", "Conv", "BatchNormalization", "PRelu", "Relu", "Dropout", "Flatten", "Gemm"}


class OnnxChain(nn.Module):
    """Runs a small ONNX graph made only of :data:`SUPPORTED` ops, node by node."""

    def __init__(self, onnx_path: str | Path) -> None:
        super().__init__()
        import onnx
        from onnx import numpy_helper

        model = onnx.load(str(onnx_path))
        graph = model.graph
        weights = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
        self.input_name = next(i.name for i in graph.input if i.name not in weights)
        self.output_name = graph.output[0].name
        self.params = nn.ParameterDict()
        self._keys: dict[str, str] = {}
        for i, (name, array) in enumerate(weights.items()):
            key = f"w{i}"
            self._keys[name] = key
            self.params[key] = nn.Parameter(torch.from_numpy(np.array(array, dtype=np.float32)), requires_grad=False)
        self.nodes = []
        for node in graph.node:
            if node.op_type not in SUPPORTED:
                raise ValueError(f"{onnx_path}: op {node.op_type} is not supported by the teacher interpreter")
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            self.nodes.append((node.op_type, list(node.input), list(node.output), attrs))

    def _get(self, env: dict, name: str) -> torch.Tensor:
        if name in env:
            return env[name]
        return self.params[self._keys[name]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        env = {self.input_name: x}
        for op, ins, outs, attrs in self.nodes:
            a = self._get(env, ins[0])
            if op == "Sub":
                y = a - self._get(env, ins[1])
            elif op == "Mul":
                y = a * self._get(env, ins[1])
            elif op == "Add":
                y = a + self._get(env, ins[1])
            elif op == "Conv":
                w = self._get(env, ins[1])
                b = self._get(env, ins[2]) if len(ins) > 2 and ins[2] else None
                pads = attrs.get("pads", [0, 0, 0, 0])
                if pads[0] != pads[2] or pads[1] != pads[3]:
                    a = F.pad(a, (pads[1], pads[3], pads[0], pads[2]))
                    padding = 0
                else:
                    padding = (pads[0], pads[1])
                y = F.conv2d(a, w, b, tuple(attrs.get("strides", [1, 1])), padding,
                             tuple(attrs.get("dilations", [1, 1])), attrs.get("group", 1))
            elif op == "BatchNormalization":
                scale, bias, mean, var = (self._get(env, n) for n in ins[1:5])
                y = F.batch_norm(a, mean, var, scale, bias, False, 0.0, attrs.get("epsilon", 1e-5))
            elif op == "PRelu":
                slope = self._get(env, ins[1])
                if a.dim() == 4 and slope.dim() == 1:
                    slope = slope.reshape(1, -1, 1, 1)
                y = torch.where(a >= 0, a, a * slope)
            elif op == "Relu":
                y = F.relu(a)
            elif op == "Dropout":
                y = a
            elif op == "Flatten":
                y = torch.flatten(a, attrs.get("axis", 1))
            elif op == "Gemm":
                w = self._get(env, ins[1])
                if attrs.get("transB", 0):
                    w = w.t()
                if attrs.get("transA", 0):
                    a = a.t()
                y = attrs.get("alpha", 1.0) * (a @ w)
                if len(ins) > 2 and ins[2]:
                    y = y + attrs.get("beta", 1.0) * self._get(env, ins[2])
            env[outs[0]] = y
        return env[self.output_name]


def default_teacher_path() -> Path:
    from .sources import package_model

    return package_model("sface")


def load_teacher(onnx_path: str | Path | None = None, device: str = "cpu") -> OnnxChain:
    path = Path(onnx_path) if onnx_path else default_teacher_path()
    return OnnxChain(path).to(device).eval()


def crops_to_teacher_input(crops: np.ndarray, device: str) -> torch.Tensor:
    """BGR uint8 (N, 112, 112, 3) -> RGB float 0..255 NCHW, as cv2.FaceRecognizerSF feeds SFace."""
    x = torch.from_numpy(np.ascontiguousarray(crops[..., ::-1])).to(device)
    return x.permute(0, 3, 1, 2).float()


@torch.no_grad()
def teacher_embeddings(
    teacher: nn.Module, crops: np.ndarray, device: str = "cpu", batch: int = 64, progress: bool = True
) -> np.ndarray:
    """(N, 112, 112, 3) BGR uint8 -> (N, 2, 128) float32: L2-normalised embeddings of each crop and its mirror."""
    from tqdm import tqdm

    out = np.zeros((len(crops), 2, 128), np.float32)
    for start in tqdm(range(0, len(crops), batch), desc="teacher", unit="batch", disable=not progress):
        x = crops_to_teacher_input(crops[start:start + batch], device)
        both = torch.cat([x, torch.flip(x, dims=[3])])
        emb = F.normalize(teacher(both).float(), dim=1).cpu().numpy()
        n = len(x)
        out[start:start + n, 0] = emb[:n]
        out[start:start + n, 1] = emb[n:]
    return out


def teacher_embeddings_cv2(onnx_path: str | Path, crops: np.ndarray, progress: bool = True) -> np.ndarray:
    """Same as :func:`teacher_embeddings` through OpenCV's DNN, one face at a time (faster on a small CPU)."""
    import cv2
    from tqdm import tqdm

    net = cv2.dnn.readNetFromONNX(str(onnx_path))
    out = np.zeros((len(crops), 2, 128), np.float32)
    for i in tqdm(range(len(crops)), desc="teacher (cv2)", unit="face", disable=not progress):
        for j, crop in enumerate((crops[i], crops[i][:, ::-1])):
            net.setInput(cv2.dnn.blobFromImage(np.ascontiguousarray(crop), 1.0, (112, 112), (0, 0, 0), swapRB=True))
            emb = net.forward().reshape(-1)
            out[i, j] = emb / max(float(np.linalg.norm(emb)), 1e-12)
    return out
