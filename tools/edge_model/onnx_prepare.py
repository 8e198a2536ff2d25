"""Prepare an ONNX graph for onnx2tf and TFLite: only the rewrites the graph needs, each logged and recorded.

``edge-model convert`` hands every ONNX source to :func:`prepare` before onnx2tf.  A graph that
needs none of the steps (SFace, YuNet, MiniFASNet, the student) comes back untouched, so their
conversions do not change.  The steps, found on EdgeFace-XXS (PyTorch export, opset 17: LayerNorm,
exact GELU, cross-covariance attention with a sine positional encoding):

``fix_batch`` + ``simplify``
    The graph computes shapes at run time (``Shape``/``ConstantOfShape``/``CumSum`` ... feeding
    ``Reshape`` targets and the positional encoding).  onnx2tf cannot translate that arithmetic;
    with the batch fixed at 1, onnxsim folds it into constants (the positional encoding becomes one
    tensor).  onnx2tf's NCHW->NHWC layout guesses also need the static shapes: with the batch
    re-opened it mis-transposes a 3-D (N, tokens, channels) constant, so the bundle stays at batch 1.
``fuse_gelu``
    The exact GELU exports as ``Div(x, sqrt 2) -> Erf -> Add 1 -> Mul x -> Mul 0.5``.  onnx2tf
    chokes on the sqrt(2) constant and TFLite has no ``Erf`` builtin; one ONNX ``Gelu`` node
    (opset 20, ``approximate="none"``) becomes ``tf.nn.gelu`` and TFLite's ``GELU`` builtin, which
    has float and int8 kernels: the same function, no tanh approximation.  The opset is raised to 20
    first (``onnx.version_converter``) when it is lower.
``l2norm_rsqrt``
    ``F.normalize`` exports as ``x / Expand(Clip(ReduceL2(x), eps))``.  In int8 the quantised norm
    can land on its zero point and TFLite's DIV kernel then refuses to run (``div.cc: data[i] !=
    zero_point``: the first full-INT8 EdgeFace failed this way on some faces), and the 16x8 quantiser
    has no DIV at all.  ``x * Pow(Max(ReduceMean(x * x), eps^2 / n), -0.5) / sqrt(n)`` is the same
    function; TensorFlow turns the power into RSQRT, so the graph becomes MUL/MEAN/MAXIMUM/RSQRT, which
    both quantisers take (a mean, not a sum: TFLite's 16-bit SUM of 196 squares lost the norm,
    cosine 0.88 to float, where MEAN keeps it).
``layernorm_centred``
    onnx2tf writes LayerNormalization as Keras' moments + batchnorm (``SQUARED_DIFFERENCE``,
    ``x * s - mean * s + beta``); TFLite's 16x8 quantiser has no ``SQUARED_DIFFERENCE`` kernel
    (the a16w8 model does not run).  ``d = x - mean(x); d * Pow(mean(d * d) + eps, -0.5) * gamma +
    beta`` is the same function in SUB/MUL/MEAN/RSQRT, which it has.
``rename``
    onnx2tf names some Keras layers after their ONNX node (grouped convolutions it does not take
    as depthwise: EdgeFace's ``/model/stages/.../conv_dw/Conv``), and SavedModel generation refuses
    op names outside ``[A-Za-z0-9.][A-Za-z0-9_.\\/>-]*``.  A graph rewritten by the steps above also
    gets every node and tensor name in ``[A-Za-z0-9_.]``.  Graphs needing no rewrite keep their
    names: onnx2tf has converted them as they are (MiniFASNet's ``/conv1/...`` included).

These make EdgeFace convert to float, int8 and 16x8 TFLite and run; they do not make full INT8
accurate (per-tensor int8 activations lose LayerNorm's per-token variance and the outlier channels:
cosine to float about 0.29): see ``models/edgeface-xxs-fp16/MODEL_CARD.md``.

When a step was applied, the prepared graph is run beside the original on the check inputs (real
calibration crops in ``convert``) and must reproduce it (cosine >= ``min_cosine``), else
:class:`PrepareError`.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

import numpy as np

from edge.errors import ModelError

log = logging.getLogger(__name__)

GELU_OPSET = 20  # ONNX Gelu exists from opset 20
SHAPE_OPS = {"Shape", "Size", "ConstantOfShape", "Range", "CumSum", "NonZero"}
TF_OP_NAME = re.compile(r"[A-Za-z0-9.][A-Za-z0-9_.\\/>-]*")
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.]*")
MIN_COSINE = 0.9999


class PrepareError(ModelError):
    """A preparation step failed or changed what the graph computes."""


@dataclass
class Prepared:
    model: object  # onnx.ModelProto, the graph to hand to onnx2tf (the original when no step applied)
    steps: list[dict] = field(default_factory=list)  # {"step", "why", ...} in the order applied
    batch: int | None = None  # the input's batch dimension after preparation (None: dynamic)

    @property
    def changed(self) -> bool:
        return bool(self.steps)

    @property
    def shapes_folded(self) -> bool:
        """Shapes were folded to constants at ``batch``: the graph holds only at that batch."""
        return any(step["step"] == "simplify" for step in self.steps)


# --------------------------------------------------------------------------- helpers


def _copy(model):
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _opset(model) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _constants(model) -> dict[str, np.ndarray]:
    """Initialisers and ``Constant`` node outputs by tensor name."""
    from onnx import numpy_helper

    values = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def _consumers(model) -> dict[str, list]:
    users: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    return users


def _graph_inputs(model) -> list:
    initialisers = {init.name for init in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in initialisers]


def _batch_dim(model) -> int | None:
    dim = _graph_inputs(model)[0].type.tensor_type.shape.dim[0]
    return int(dim.dim_value) if dim.HasField("dim_value") else None


def _static_shapes(model) -> dict[str, list[int]]:
    """Tensor name -> shape from ONNX shape inference (0 or less where a dimension is not known)."""
    from onnx import shape_inference

    inferred = shape_inference.infer_shapes(model)
    shapes = {}
    for value in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = [int(d.dim_value) if d.HasField("dim_value") else -1 for d in dims]
    return shapes


def _drop_unused(model) -> int:
    """Remove initialisers and Constant nodes nothing reads any more; returns how many went."""
    removed = 0
    while True:
        used = {name for node in model.graph.node for name in node.input} | {o.name for o in model.graph.output}
        dead = [n for n in model.graph.node if n.op_type == "Constant" and n.output[0] not in used]
        inits = [i for i in model.graph.initializer if i.name not in used]
        if not dead and not inits:
            return removed
        for node in dead:
            model.graph.node.remove(node)
        for init in inits:
            model.graph.initializer.remove(init)
        removed += len(dead) + len(inits)


# --------------------------------------------------------------------------- what a graph needs


def shape_ops(model) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type in SHAPE_OPS:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def find_gelus(model) -> list[tuple[str, list, str]]:
    """Exact-GELU subgraphs ``0.5 * x * (1 + erf(x / sqrt 2))``: (x, [nodes], output name) each."""
    values = _constants(model)
    users = _consumers(model)

    def scalar(name: str, target: float) -> bool:
        value = values.get(name)
        return value is not None and value.size == 1 and abs(float(value.reshape(-1)[0]) - target) < 1e-5

    def only_user(node, op: str):
        found = users.get(node.output[0], [])
        return found[0] if len(found) == 1 and found[0].op_type == op else None

    matches = []
    for div in model.graph.node:
        if div.op_type != "Div" or len(div.input) != 2 or not scalar(div.input[1], 2 ** 0.5):
            continue
        x = div.input[0]
        erf = only_user(div, "Erf")
        add = erf and only_user(erf, "Add")
        if add is None or not any(scalar(i, 1.0) for i in add.input if i != erf.output[0]):
            continue
        mul_x = only_user(add, "Mul")
        if mul_x is None or x not in mul_x.input:
            continue
        half = only_user(mul_x, "Mul")
        if half is None or not any(scalar(i, 0.5) for i in half.input if i != mul_x.output[0]):
            continue
        matches.append((x, [div, erf, add, mul_x, half], half.output[0]))
    return matches


def find_l2norms(model) -> list[tuple[str, list, object, float, str]]:
    """``x / [Expand](Clip(ReduceL2(x, keepdims=1), min=eps))``: (x, [nodes], axes, eps, output name) each."""
    from onnx import helper

    values = _constants(model)
    users = _consumers(model)

    def only_user(name: str, *ops: str):
        found = users.get(name, [])
        return found[0] if len(found) == 1 and found[0].op_type in ops else None

    matches = []
    for red in model.graph.node:
        if red.op_type != "ReduceL2":
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in red.attribute}
        if not attrs.get("keepdims", 1):
            continue
        axes = attrs.get("axes")
        if axes is None and len(red.input) > 1 and red.input[1] in values:
            axes = values[red.input[1]].reshape(-1).tolist()
        if axes is None:
            continue
        x = red.input[0]
        clip = only_user(red.output[0], "Clip", "Max")
        if clip is None:
            continue
        if clip.op_type == "Clip":
            low = values.get(clip.input[1]) if len(clip.input) > 1 and clip.input[1] else None
            if low is None or (len(clip.input) > 2 and clip.input[2]):
                continue
        else:
            other = [i for i in clip.input if i != red.output[0]]
            low = values.get(other[0]) if len(other) == 1 else None
        if low is None or low.size != 1 or not 0 < float(low.reshape(-1)[0]) < 1e-3:
            continue
        nodes = [red, clip]
        last = clip
        expand = only_user(clip.output[0], "Expand")
        if expand is not None:
            nodes.append(expand)
            last = expand
        div = only_user(last.output[0], "Div")
        if div is None or div.input[0] != x or div.input[1] != last.output[0]:
            continue
        nodes.append(div)
        matches.append((x, nodes, [int(a) for a in axes], float(low.reshape(-1)[0]), div.output[0]))
    return matches


def find_layernorms(model) -> list:
    """LayerNormalization nodes over the last axis (the only ones :func:`layernorm_centred` rewrites)."""
    from onnx import helper

    found = []
    for node in model.graph.node:
        if node.op_type == "LayerNormalization" and len(node.output) == 1:
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            if attrs.get("axis", -1) == -1 and attrs.get("stash_type", 1) == 1:
                found.append(node)
    return found


def bad_names(model) -> list[str]:
    """Node and tensor names a SavedModel refuses as op names."""
    names = [n.name for n in model.graph.node if n.name]
    names += [t for n in model.graph.node for t in list(n.input) + list(n.output) if t]
    names += [i.name for i in model.graph.initializer]
    return sorted({n for n in names if not TF_OP_NAME.fullmatch(n)})


def needs(model) -> list[str]:
    """Why ``model`` needs preparing (empty: hand it to onnx2tf as it is)."""
    reasons = []
    if shape_ops(model):
        reasons.append("computes shapes at run time: " + ", ".join(f"{k} x{v}" for k, v in sorted(shape_ops(model).items())))
    if find_gelus(model):
        reasons.append(f"{len(find_gelus(model))} exact GELU(s) built on Erf")
    if find_l2norms(model):
        reasons.append(f"{len(find_l2norms(model))} L2 normalisation(s) dividing by a norm")
    if find_layernorms(model):
        reasons.append(f"{len(find_layernorms(model))} LayerNormalization(s)")
    if reasons and bad_names(model):
        reasons.append(f"{len(bad_names(model))} names a SavedModel refuses")
    return reasons


# --------------------------------------------------------------------------- steps


def fix_batch(model, batch: int = 1):
    """The graph with its input's and outputs' leading dimension fixed at ``batch``."""
    out = _copy(model)
    for value in list(_graph_inputs(out)) + list(out.graph.output):
        dims = value.type.tensor_type.shape.dim
        if len(dims):
            dims[0].Clear()
            dims[0].dim_value = batch
    del out.graph.value_info[:]
    return out


def simplify(model):
    """onnxsim: constant folding and shape inference (folds run-time shape arithmetic at a fixed batch)."""
    import onnxsim

    try:
        simplified, ok = onnxsim.simplify(model)
    except Exception as exc:  # onnxsim raises whatever onnxruntime/onnx raise inside
        raise PrepareError(f"onnxsim could not simplify the graph: {type(exc).__name__}: {exc}") from exc
    if not ok:
        raise PrepareError("onnxsim's check of the simplified graph failed")
    return simplified


def raise_opset(model, version: int):
    import onnx.version_converter

    try:
        return onnx.version_converter.convert_version(model, version)
    except Exception as exc:
        raise PrepareError(f"cannot raise the ONNX opset to {version}: {exc}") from exc


def fuse_gelu(model) -> int:
    """Replace each exact-GELU subgraph in place by one ``Gelu`` node (opset >= 20); returns how many."""
    from onnx import helper

    matches = find_gelus(model)
    if not matches:
        return 0
    if _opset(model) < GELU_OPSET:
        raise PrepareError(f"Gelu needs opset {GELU_OPSET}; the graph is at {_opset(model)}")
    replace, drop = {}, set()
    for x, nodes, output in matches:
        drop.update(id(n) for n in nodes)
        last = nodes[-1]
        replace[id(last)] = helper.make_node("Gelu", [x], [output], name=f"{last.name or output}_gelu",
                                             approximate="none")
    kept = [replace.get(id(n), n) for n in model.graph.node if id(n) not in drop or id(n) in replace]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    _drop_unused(model)
    return len(matches)


def l2norm_rsqrt(model) -> int:
    """Rewrite each :func:`find_l2norms` match in place as ``x * Pow(Max(ReduceMean(x * x), eps^2 / n), -0.5)
    / sqrt(n)`` over its ``n`` reduced elements (opset >= 18: ReduceMean takes its axes as an input); returns
    how many."""
    from onnx import helper, numpy_helper

    matches = find_l2norms(model)
    if not matches:
        return 0
    if _opset(model) < 18:
        raise PrepareError(f"the L2-norm rewrite needs opset 18; the graph is at {_opset(model)}")
    shapes = _static_shapes(model)
    replace, drop = {}, set()
    for k, (x, nodes, axes, eps, output) in enumerate(matches):
        if x not in shapes or any(shapes[x][a] <= 0 for a in axes):
            raise PrepareError(f"the L2 normalisation of {x} runs over axes {axes} of unknown length")
        drop.update(id(n) for n in nodes)
        tag = f"l2norm_{k}"
        count = int(np.prod([shapes[x][a] for a in axes]))
        consts = {
            f"{tag}_axes": np.array(axes, np.int64),
            f"{tag}_eps2": np.array(eps * eps / count, np.float32),
            f"{tag}_power": np.array(-0.5, np.float32),
            f"{tag}_n": np.array(count ** -0.5, np.float32),
        }
        for name, value in consts.items():
            model.graph.initializer.append(numpy_helper.from_array(value, name))
        replace[id(nodes[-1])] = [
            helper.make_node("Mul", [x, x], [f"{tag}_sq"], name=f"{tag}_square"),
            helper.make_node("ReduceMean", [f"{tag}_sq", f"{tag}_axes"], [f"{tag}_ms"], name=f"{tag}_mean", keepdims=1),
            helper.make_node("Max", [f"{tag}_ms", f"{tag}_eps2"], [f"{tag}_safe"], name=f"{tag}_max"),
            helper.make_node("Pow", [f"{tag}_safe", f"{tag}_power"], [f"{tag}_inv"], name=f"{tag}_rsqrt"),
            helper.make_node("Mul", [x, f"{tag}_inv"], [f"{tag}_unit"], name=f"{tag}_normalise"),
            helper.make_node("Mul", [f"{tag}_unit", f"{tag}_n"], [output], name=f"{tag}_scale"),
        ]
    kept = []
    for node in model.graph.node:
        if id(node) in replace:
            kept.extend(replace[id(node)])
        elif id(node) not in drop:
            kept.append(node)
    del model.graph.node[:]
    model.graph.node.extend(kept)
    _drop_unused(model)
    return len(matches)


def layernorm_centred(model) -> int:
    """Rewrite each :func:`find_layernorms` node in place as ``(x - mean) * Pow(var + eps, -0.5) * gamma + beta``
    (opset >= 18: ReduceMean takes its axes as an input); returns how many."""
    from onnx import helper, numpy_helper

    nodes = find_layernorms(model)
    if not nodes:
        return 0
    if _opset(model) < 18:
        raise PrepareError(f"the LayerNorm rewrite needs opset 18; the graph is at {_opset(model)}")
    shared = {"ln_axes": np.array([-1], np.int64), "ln_power": np.array(-0.5, np.float32)}
    for name, value in shared.items():
        model.graph.initializer.append(numpy_helper.from_array(value, name))
    replace = {}
    for k, node in enumerate(nodes):
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        tag = f"ln_{k}"
        model.graph.initializer.append(numpy_helper.from_array(
            np.array(attrs.get("epsilon", 1e-5), np.float32), f"{tag}_eps"))
        x, gamma = node.input[0], node.input[1]
        beta = node.input[2] if len(node.input) > 2 and node.input[2] else None
        out = node.output[0]
        chain = [
            helper.make_node("ReduceMean", [x, "ln_axes"], [f"{tag}_mean"], name=f"{tag}_mean", keepdims=1),
            helper.make_node("Sub", [x, f"{tag}_mean"], [f"{tag}_centred"], name=f"{tag}_centre"),
            helper.make_node("Mul", [f"{tag}_centred", f"{tag}_centred"], [f"{tag}_sq"], name=f"{tag}_square"),
            helper.make_node("ReduceMean", [f"{tag}_sq", "ln_axes"], [f"{tag}_var"], name=f"{tag}_var", keepdims=1),
            helper.make_node("Add", [f"{tag}_var", f"{tag}_eps"], [f"{tag}_var_eps"], name=f"{tag}_add_eps"),
            helper.make_node("Pow", [f"{tag}_var_eps", "ln_power"], [f"{tag}_inv_std"], name=f"{tag}_rsqrt"),
            helper.make_node("Mul", [f"{tag}_centred", f"{tag}_inv_std"], [f"{tag}_normed"], name=f"{tag}_normalise"),
            helper.make_node("Mul", [f"{tag}_normed", gamma], [f"{tag}_scaled" if beta else out], name=f"{tag}_gamma"),
        ]
        if beta:
            chain.append(helper.make_node("Add", [f"{tag}_scaled", beta], [out], name=f"{tag}_beta"))
        replace[id(node)] = chain
    kept = []
    for node in model.graph.node:
        kept.extend(replace.get(id(node), [node]))
    del model.graph.node[:]
    model.graph.node.extend(kept)
    _drop_unused(model)
    return len(nodes)


def rename(model) -> int:
    """Rewrite node and tensor names to ``[A-Za-z0-9_.]`` (unique, starting alphanumeric); returns how many
    names changed.  The graph's input and output names are kept when they are already safe."""
    taken: set[str] = set()
    tensors: dict[str, str] = {}
    changed = 0

    def fresh(name: str) -> str:
        nonlocal changed
        new = re.sub(r"[^A-Za-z0-9_.]", "_", name).lstrip("_.")
        if not new or not new[0].isalnum():
            new = "t" + new
        base, k = new, 1
        while new in taken:
            k += 1
            new = f"{base}_{k}"
        taken.add(new)
        changed += new != name
        return new

    def tensor(name: str) -> str:
        if name not in tensors:
            tensors[name] = fresh(name)
        return tensors[name]

    graph = model.graph
    for value in list(graph.input) + list(graph.output):  # claim the interface names first
        if SAFE_NAME.fullmatch(value.name) and value.name not in taken:
            taken.add(value.name)
            tensors[value.name] = value.name
    for value in list(graph.input) + list(graph.output) + list(graph.value_info):
        value.name = tensor(value.name)
    for init in graph.initializer:
        init.name = tensor(init.name)
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name:
                node.input[i] = tensor(name)
        for i, name in enumerate(node.output):
            if name:
                node.output[i] = tensor(name)
    for node in graph.node:  # node names after every tensor name is taken, so none collides with one
        if node.name:
            node.name = fresh(node.name)
    return changed


# --------------------------------------------------------------------------- check and orchestration


def run(model, nchw: np.ndarray) -> np.ndarray:
    """onnxruntime outputs (N, D) of ``model`` on float NCHW inputs, batch by batch if it is fixed."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    step = inp.shape[0] if isinstance(inp.shape[0], int) and inp.shape[0] > 0 else len(nchw)
    rows = [session.run(None, {inp.name: nchw[i : i + step].astype(np.float32)})[0] for i in range(0, len(nchw), step)]
    return np.concatenate(rows).reshape(len(nchw), -1)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return (a * b).sum(axis=1)


def check(original, prepared, nchw: np.ndarray, min_cosine: float = MIN_COSINE) -> dict:
    """Cosine of the prepared graph's outputs to the original's on ``nchw``; PrepareError below ``min_cosine``."""
    cos = _cosines(run(prepared, nchw), run(original, nchw))
    record = {"step": "check", "why": "the prepared graph must compute what the original does",
              "inputs": int(len(nchw)), "cosine_min": round(float(cos.min()), 7),
              "cosine_mean": round(float(cos.mean()), 7)}
    log.info("onnx prepare: check on %d inputs: cosine min %.7f, mean %.7f", len(nchw), cos.min(), cos.mean())
    if float(cos.min()) < min_cosine:
        raise PrepareError(f"the prepared ONNX graph differs from the original: cosine min {cos.min():.6f} "
                           f"< {min_cosine} on {len(nchw)} inputs")
    return record


def prepare(model, check_inputs: np.ndarray | None = None, min_cosine: float = MIN_COSINE) -> Prepared:
    """Apply the steps ``model`` needs (see the module docstring); ``check_inputs`` (float NCHW, the model's own
    preprocessing) are run through both graphs when anything changed."""
    steps: list[dict] = []
    batch = _batch_dim(model)

    def record(step: str, why: str, **detail) -> None:
        steps.append({"step": step, "why": why, **detail})
        log.info("onnx prepare: %s (%s)%s", step, why,
                 "".join(f"; {k} {v}" for k, v in detail.items()))

    def editable_at(work, opset: int, why: str):
        """``work`` safe to edit (a copy while it is still the caller's model) at ``opset`` or above."""
        if work is model:
            work = _copy(model)
        if _opset(work) < opset:
            old = _opset(work)
            work = raise_opset(work, opset)
            record("raise_opset", why, opset_from=old, opset_to=opset)
        return work

    work = model
    shapes = shape_ops(model)
    if shapes:
        if batch is None:
            work = fix_batch(work, 1)
            batch = 1
            record("fix_batch", "run-time shape arithmetic folds to constants only at a fixed batch", batch=1)
        before = len(work.graph.node)
        work = simplify(work)
        record("simplify", "fold run-time shape arithmetic (onnxsim)",
               folded=", ".join(f"{k} x{v}" for k, v in sorted(shapes.items())),
               nodes_before=before, nodes_after=len(work.graph.node))
    gelus = find_gelus(work)
    if gelus:
        work = editable_at(work, GELU_OPSET, "ONNX Gelu needs opset 20")
        fused = fuse_gelu(work)
        record("fuse_gelu", "TFLite has no Erf builtin; Gelu maps to its GELU builtin (exact, int8 kernel)",
               fused=fused)
    norms = find_l2norms(work)
    if norms:
        work = editable_at(work, 18, "ReduceMean with axes as an input needs opset 18")
        rewritten = l2norm_rsqrt(work)
        record("l2norm_rsqrt", "int8 DIV by a quantised norm can divide by zero and 16x8 has no DIV; "
               "x * (mean x^2)^-0.5 / sqrt(n) quantises as MUL/MEAN/RSQRT", rewritten=rewritten)
    layernorms = find_layernorms(work)
    if layernorms:
        work = editable_at(work, 18, "ReduceMean with axes as an input needs opset 18")
        rewritten = layernorm_centred(work)
        record("layernorm_centred", "16x8 has no SQUARED_DIFFERENCE (Keras' LayerNorm moments); "
               "(x - mean) * (mean (x - mean)^2 + eps)^-0.5 is MEAN/SUB/MUL/RSQRT", rewritten=rewritten)
    refused = bad_names(work) if steps else []
    if refused:
        if work is model:
            work = _copy(model)
        changed = rename(work)
        record("rename", "SavedModel op names must match [A-Za-z0-9.][A-Za-z0-9_.\\/>-]*",
               renamed=changed, example=refused[0])
    if steps and check_inputs is not None:
        steps.append(check(model, work, check_inputs, min_cosine))
    return Prepared(work, steps, batch)
