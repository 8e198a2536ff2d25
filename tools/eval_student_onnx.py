"""CFP (cfp-ff / cfp-fp, from the OUT folder name) of float student ONNX files with the student's input spec (RGB, (x - 127.5) / 128) through onnxruntime: `edge-model eval` on a bare ONNX assumes SFace's 0..255 input.
A bundle folder among them is opened as `edge-model eval` opens it, so a float graph and its INT8 bundle share one
detection pass (and one report, with their cosine).

Usage: python tools/eval_student_onnx.py OUT/cfp-ff MODEL.onnx [MODEL2.onnx | BUNDLE ...]
"""
import json, sys
from pathlib import Path
from edge.embedder import OnnxRuntimeEmbedder
from edge_model.evaluate import evaluate, open_model

import onnx


def input_spec(model: Path) -> dict:
    """The student's pixel convention at the side the graph takes (112, or a smaller --input-size)."""
    dims = onnx.load(str(model)).graph.input[0].type.tensor_type.shape.dim
    side = int(dims[-1].dim_value)
    return {"width": side, "height": side, "channels": 3, "layout": "NCHW", "dtype": "float32",
            "color": "RGB", "mean": [127.5] * 3, "std": [128.0] * 3}


models = [Path(p) for p in sys.argv[2:]]
out = Path(sys.argv[1])
embedders = [OnnxRuntimeEmbedder(m, threads=2, input_spec=input_spec(m)) if m.suffix == ".onnx" else open_model(m, 2)
             for m in models]
report = evaluate(models, sys.argv[1].rstrip("/").split("/")[-1], Path("../shared/faces/eval/cfp"), None, out, embedders=embedders, progress=False)
print(json.dumps({k: report[k] for k in report if k in ("models", "cosine", "failed_pairs")}, default=str)[:3000])
