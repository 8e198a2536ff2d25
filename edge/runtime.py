"""A small shim over the TFLite runtimes found on Pi OS and PyPI.

``ai-edge-litert`` (the maintained LiteRT wheels) is preferred;
``tflite-runtime`` 2.14 stays usable because older images pin it.  The shim
keeps the choice in one place and turns the classic failure - tflite-runtime
2.14 was built against numpy 1.x and breaks at ``Interpreter(...)`` (not at
import) under numpy 2 - into a message that says what to do.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path

import numpy as np
from typing import Any

from .errors import ModelFormatError, RuntimeShimError

log = logging.getLogger(__name__)

RUNTIMES = {
    "ai-edge-litert": "ai_edge_litert.interpreter",
    "tflite-runtime": "tflite_runtime.interpreter",
}
AUTO_ORDER = ("ai-edge-litert", "tflite-runtime")


def available_runtimes() -> list[str]:
    """Names of the runtimes that import here (importing does not prove they work)."""
    found = []
    for name, module in RUNTIMES.items():
        try:
            importlib.import_module(module)
        except ImportError:
            continue
        found.append(name)
    return found


def _numpy_major() -> int:
    import numpy

    return int(numpy.__version__.split(".")[0])


def _interpreter_class(name: str):
    module = importlib.import_module(RUNTIMES[name])
    return module.Interpreter


def resolve_runtime(requested: str = "auto") -> str:
    """Pick the runtime to use: the one asked for, or the first that imports."""
    if requested != "auto":
        if requested not in RUNTIMES:
            raise RuntimeShimError(
                f"unknown TFLite runtime {requested!r}; choose one of auto, {', '.join(RUNTIMES)}"
            )
        try:
            importlib.import_module(RUNTIMES[requested])
        except ImportError as exc:
            raise RuntimeShimError(
                f"TFLite runtime {requested!r} was asked for but is not installed ({exc}); "
                f"pip install {requested}"
            ) from exc
        return requested
    for name in AUTO_ORDER:
        try:
            importlib.import_module(RUNTIMES[name])
        except ImportError:
            continue
        return name
    raise RuntimeShimError(
        "no TFLite runtime is installed: pip install ai-edge-litert (or tflite-runtime==2.14.0 with numpy<2)"
    )


def load_delegate(name: str, library: str) -> Any:
    """An external delegate (e.g. ``libedgetpu.so.1`` for a Coral) from the chosen runtime."""
    module = importlib.import_module(RUNTIMES[name])
    try:
        return module.load_delegate(library)
    except (ValueError, OSError, RuntimeError, AttributeError) as exc:
        raise RuntimeShimError(
            f"{name} could not load the delegate {library!r} ({type(exc).__name__}: {exc}); is the accelerator's "
            "runtime library installed (e.g. libedgetpu1-std for a Coral)? Leave embedder.delegate empty for the CPU"
        ) from exc


def load_interpreter(model_path: str | Path, threads: int = 2, runtime: str = "auto",
                     delegate: str = "") -> tuple[Any, str]:
    """Build an allocated interpreter for ``model_path``; returns (interpreter, runtime name).

    XNNPACK is the default delegate of both runtimes for float and int8 models;
    ``num_threads`` is what sizes its thread pool.  ``delegate`` names an external
    delegate library instead (an accelerator); the model must be compiled for it.
    """
    name = resolve_runtime(runtime)
    cls = _interpreter_class(name)
    extra = {"experimental_delegates": [load_delegate(name, delegate)]} if delegate else {}
    try:
        interpreter = cls(model_path=str(model_path), num_threads=int(threads), **extra)
        interpreter.allocate_tensors()
    except (ImportError, AttributeError, RuntimeError, ValueError, SystemError) as exc:
        if name == "tflite-runtime" and _numpy_major() >= 2:
            import numpy

            raise RuntimeShimError(
                f"tflite-runtime 2.14 cannot run under numpy {numpy.__version__}: it was built against "
                f"numpy 1.x and fails when the interpreter is created ({type(exc).__name__}: {exc}). "
                "Install numpy<2 (as Raspberry Pi OS bookworm ships, 1.24) or use ai-edge-litert."
            ) from exc
        if isinstance(exc, (ValueError, RuntimeError)):
            # The runtime imported and ran; it is the file it refused (its sha256 may well match a
            # manifest that was re-sealed over a broken or foreign file).
            raise ModelFormatError(
                f"{model_path} is not a model {name} can load ({type(exc).__name__}: {exc}); "
                "reinstall the bundle or rebuild it with edge-model convert"
            ) from exc
        raise RuntimeShimError(f"{name} could not load {model_path}: {type(exc).__name__}: {exc}") from exc
    log.debug("loaded %s with %s, %d threads", model_path, name, threads)
    return interpreter, name


def quantise(detail: dict, values: np.ndarray) -> np.ndarray:
    """Float values as the tensor ``detail`` (from get_input_details) stores them: as is, or int8/uint8/int16."""
    dtype = detail["dtype"]
    if dtype == np.float32:
        return values.astype(np.float32, copy=False)
    scale, zero_point = detail["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.round(values / scale + zero_point), info.min, info.max).astype(dtype)


def dequantise(detail: dict, values: np.ndarray) -> np.ndarray:
    """A tensor read with get_tensor as float32, by the scale and zero point of its ``detail``."""
    if values.dtype == np.float32:
        return values
    scale, zero_point = detail["quantization"]
    return (values.astype(np.float32) - zero_point) * scale
