"""Multiply-accumulate and parameter counts of a ``.tflite`` graph, from the interpreter alone.

Counts one inference at the model's allocated input shape (batch 1 for a
dynamic-batch model).  MACs come from the ops that do dense arithmetic:

==================  =====================================================
CONV_2D             N*Ho*Wo*Cout * kh*kw*(Cin/groups)
DEPTHWISE_CONV_2D   N*Ho*Wo*Cout * kh*kw
TRANSPOSE_CONV      N*Hi*Wi*Cin * kh*kw*Cout   (every input pixel scatters)
FULLY_CONNECTED     rows * out * in
BATCH_MATMUL        batch * M * K * N          (adj_x / adj_y aware via shapes)
CONV_3D             N*Do*Ho*Wo*Cout * kd*kh*kw*Cin
==================  =====================================================

Element-wise ops (ADD, MUL, PRELU, pooling...) are reported separately as
``elementwise`` (one per output element), not added to ``macs``.

Parameters are the elements of constant tensors feeding ops - weights,
biases, PReLU slopes, constant operands of ADD/MUL - but not integer
shape/axis/permutation operands (RESHAPE's shape, TRANSPOSE's perm...).
A constant is a tensor that no op produces and that is not a graph input.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import click
import numpy as np

from edge.cli import boundary
from edge.errors import ModelError

WEIGHTED = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV", "CONV_3D", "CONV_3D_TRANSPOSE"}
ELEMENTWISE = {
    "ADD", "SUB", "MUL", "DIV", "PRELU", "RELU", "RELU6", "LEAKY_RELU", "LOGISTIC", "TANH", "HARD_SWISH",
    "AVERAGE_POOL_2D", "MAX_POOL_2D", "MEAN", "SUM", "SQUARED_DIFFERENCE", "RSQRT", "SQRT", "EXP",
    "MAXIMUM", "MINIMUM", "SOFTMAX", "L2_NORMALIZATION", "GELU",
}
_FLOAT_OR_WEIGHT = {np.float32, np.float16, np.float64, np.int8, np.uint8, np.int16, np.int4} if hasattr(np, "int4") else {
    np.float32, np.float16, np.float64, np.int8, np.uint8, np.int16}


def _interpreter(path: Path):
    """An interpreter without the XNNPACK delegate, so every op keeps its own entry.

    ai-edge-litert / tflite-runtime first (no tensorflow needed), else tf.lite.
    """
    import importlib

    from edge.runtime import AUTO_ORDER, RUNTIMES

    modules = [RUNTIMES[name] for name in AUTO_ORDER] + ["tensorflow.lite.python.interpreter"]
    last: Exception | None = None
    for module_name in modules:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            last = exc
            continue
        kwargs = {}
        resolver = getattr(module, "OpResolverType", None)
        if resolver is not None:
            kwargs["experimental_op_resolver_type"] = resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        try:
            interpreter = module.Interpreter(model_path=str(path), **kwargs)
            interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"{path} is not a loadable TFLite model: {exc}") from exc
        return interpreter
    raise ModelError(f"no TFLite interpreter to read {path}: {last}")


def _prod(values) -> int:
    out = 1
    for v in values:
        out *= int(v)
    return out


def op_macs(name: str, ins: list[tuple], outs: list[tuple]) -> int:
    """MACs of one op from its input and output tensor shapes ([] for an absent optional input)."""
    if name == "CONV_2D":
        out, weight = outs[0], ins[1]  # weight [Cout, kh, kw, Cin/groups]
        return _prod(out) * _prod(weight[1:])
    if name == "DEPTHWISE_CONV_2D":
        out, weight = outs[0], ins[1]  # weight [1, kh, kw, Cout]
        return _prod(out) * _prod(weight[1:3])
    if name == "CONV_3D":
        out, weight = outs[0], ins[1]  # weight [kd, kh, kw, Cin, Cout]
        return _prod(out) * _prod(weight[:4])
    if name == "TRANSPOSE_CONV":
        weight, data = ins[1], ins[2]  # inputs: output_shape, weight [Cout, kh, kw, Cin], input
        return _prod(data) * _prod(weight[:3])
    if name == "CONV_3D_TRANSPOSE":
        weight, data = ins[1], ins[2]  # weight [kd, kh, kw, Cout, Cin]
        return _prod(data) * _prod(weight[:4])
    if name == "FULLY_CONNECTED":
        weight = ins[1]  # [out, in]
        rows = _prod(outs[0]) // max(int(weight[0]), 1)
        return rows * int(weight[0]) * int(weight[1])
    if name == "BATCH_MATMUL":
        out = outs[0]  # [..., M, N]; K is the reduced dim shared by the inputs
        a = ins[0]  # [..., M, K], or [..., K, M] with adj_x; when M == K either reading is right
        k = a[-1] if a[-2] == out[-2] else a[-2]
        return _prod(out) * int(k)
    return 0


def _ops(interpreter) -> list[dict]:
    try:
        return interpreter._get_ops_details()
    except AttributeError as exc:  # very old runtimes
        raise ModelError("this TFLite runtime cannot list ops (no _get_ops_details)") from exc


_BIAS_INPUT = {"CONV_2D": 2, "DEPTHWISE_CONV_2D": 2, "FULLY_CONNECTED": 2, "TRANSPOSE_CONV": 3, "CONV_3D": 2,
               "CONV_3D_TRANSPOSE": 3}


def count_tflite(path: str | Path) -> dict:
    """``{'macs', 'params', 'elementwise', 'ops': {op: count}, 'macs_by_op': {op: macs}}`` for one inference."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path} does not exist")
    interpreter = _interpreter(path)
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    ops = _ops(interpreter)
    graph_inputs = {d["index"] for d in interpreter.get_input_details()}
    produced = {i for op in ops for i in op["outputs"] if i >= 0}

    def shape(index: int) -> tuple:
        return tuple(int(v) for v in tensors[index]["shape"]) if index >= 0 else ()

    macs = elementwise = params = 0
    counts: Counter = Counter()
    by_op: Counter = Counter()
    seen_const: set[int] = set()
    for op in ops:
        name = op["op_name"]
        if name == "DELEGATE":  # a delegate node lists the constants of the ops it swallowed
            continue
        counts[name] += 1
        ins = [shape(i) for i in op["inputs"]]
        outs = [shape(i) for i in op["outputs"]]
        m = op_macs(name, ins, outs)
        macs += m
        by_op[name] += m
        if name in ELEMENTWISE and outs:
            elementwise += _prod(outs[0])
        for pos, index in enumerate(op["inputs"]):
            if index < 0 or index in produced or index in graph_inputs or index in seen_const:
                continue
            detail = tensors[index]
            dtype = np.dtype(detail["dtype"]).type
            is_bias = name in _BIAS_INPUT and pos == _BIAS_INPUT[name]
            if dtype in _FLOAT_OR_WEIGHT or is_bias:
                seen_const.add(index)
                params += _prod(detail["shape"])
    return {
        "macs": int(macs),
        "params": int(params),
        "elementwise": int(elementwise),
        "ops": dict(sorted(counts.items())),
        "macs_by_op": {k: int(v) for k, v in sorted(by_op.items()) if v},
    }


def human(value: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= div:
            return f"{value / div:.2f}{unit}"
    return str(int(value))


@click.command("macs")
@click.argument("models", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True)
@boundary
def command(models, as_json):
    """MACs and parameters of .tflite files (or bundle folders)."""
    from edge.bundle import load_bundle

    results = {}
    for model in models:
        target = load_bundle(model).model_path if Path(model).is_dir() else Path(model)
        results[str(model)] = count_tflite(target)
    if as_json:
        click.echo(json.dumps(results, indent=2))
        return
    for model, r in results.items():
        click.echo(f"{model}: {human(r['macs'])} MACs, {human(r['params'])} params")
