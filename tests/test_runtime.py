"""The TFLite runtime shim: choice of runtime and the tflite-runtime/numpy-2 failure message."""

import sys
import types

import pytest

from edge import runtime
from edge.errors import ModelFormatError, RuntimeShimError

from .conftest import MODELS


def fake_tflite_runtime(monkeypatch, error):
    class Interpreter:
        def __init__(self, model_path, num_threads=1):
            raise error

    package = types.ModuleType("tflite_runtime")
    module = types.ModuleType("tflite_runtime.interpreter")
    module.Interpreter = Interpreter
    package.interpreter = module
    monkeypatch.setitem(sys.modules, "tflite_runtime", package)
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", module)


def test_litert_is_preferred_and_loads_the_shipped_model():
    interpreter, name = runtime.load_interpreter(MODELS / "sface-int8" / "sface-int8-cal300-seed0.tflite", threads=1)
    assert name == "ai-edge-litert"
    assert interpreter.get_input_details()[0]["shape"][1:].tolist() == [112, 112, 3]


def test_tflite_runtime_under_numpy2_gets_an_actionable_message(monkeypatch, tmp_path):
    # What tflite-runtime 2.14 does under numpy 2: import works, Interpreter() fails.
    fake_tflite_runtime(monkeypatch, ImportError("numpy.core.multiarray failed to import"))
    monkeypatch.setattr(runtime, "_numpy_major", lambda: 2)
    with pytest.raises(RuntimeShimError, match=r"tflite-runtime 2\.14 cannot run under numpy .*numpy<2"):
        runtime.load_interpreter(tmp_path / "model.tflite", runtime="tflite-runtime")


def test_a_file_the_runtime_refuses_is_a_data_error_not_a_missing_runtime(monkeypatch, tmp_path):
    fake_tflite_runtime(monkeypatch, ValueError("Could not open 'model.tflite'"))
    monkeypatch.setattr(runtime, "_numpy_major", lambda: 1)
    with pytest.raises(ModelFormatError, match="not a model tflite-runtime can load .*Could not open") as caught:
        runtime.load_interpreter(tmp_path / "model.tflite", runtime="tflite-runtime")
    assert caught.value.exit_code == 65


def test_a_broken_runtime_is_reported_as_such(monkeypatch, tmp_path):
    fake_tflite_runtime(monkeypatch, AttributeError("module has no attribute 'Interpreter'"))
    monkeypatch.setattr(runtime, "_numpy_major", lambda: 1)
    with pytest.raises(RuntimeShimError, match="tflite-runtime could not load .*no attribute") as caught:
        runtime.load_interpreter(tmp_path / "model.tflite", runtime="tflite-runtime")
    assert caught.value.exit_code == 69


def test_unknown_or_missing_runtime(monkeypatch):
    with pytest.raises(RuntimeShimError, match="unknown TFLite runtime"):
        runtime.resolve_runtime("tensorflow")
    monkeypatch.setitem(sys.modules, "tflite_runtime", None)
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", None)
    with pytest.raises(RuntimeShimError, match="not installed"):
        runtime.resolve_runtime("tflite-runtime")


def test_a_missing_accelerator_delegate_keeps_the_recognizer_down(tmp_path):
    import subprocess
    import sys

    from .conftest import ROOT

    config = tmp_path / "edge.toml"
    config.write_text(f'state_dir = "{tmp_path / "state"}"\n[embedder]\ndelegate = "/nonexistent/libedgetpu.so.1"\n')
    for command in ("check-config", "run"):
        result = subprocess.run([sys.executable, "-m", "edge.cli", command, "-c", str(config)], cwd=ROOT,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 69, result.stderr
        assert "could not load the delegate '/nonexistent/libedgetpu.so.1'" in result.stderr
