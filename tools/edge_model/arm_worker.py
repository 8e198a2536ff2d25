"""Run a bundle's model over saved crops and save the raw and final outputs.

Started by ``edge-model check-arm`` twice per runtime: with the x86 host's Python
(the reference) and with an arm64 Python under ``qemu-aarch64-static``.  It only
needs the repository's ``edge`` package, numpy, opencv and one TFLite runtime on
``sys.path``, and it runs the device's own code per crop, exactly as the door
calls it: ``TFLiteEmbedder.embed_one`` (an embedder: the final output is the
embedding) or ``TFLiteLiveness.crop_probabilities`` (a liveness model: the
softmax).  The tensor the interpreter returns is captured on its way into
``_dequantise``, so the raw (int8) output and the final one come from the same call.

    python tools/edge_model/arm_worker.py BUNDLE CROPS.npy RUNTIME THREADS OUT.npz
"""

from __future__ import annotations

import json
import platform
import sys
import time


def _cpuinfo_summary() -> dict:
    """What this process reads from /proc/cpuinfo (under qemu-user: the faked file, if any)."""
    seen: dict = {"processors": 0}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key == "processor":
                    seen["processors"] += 1
                elif key in ("CPU part", "CPU variant", "Features", "Model", "model name") and key not in seen:
                    seen[key] = value
    except OSError as exc:
        seen["error"] = str(exc)
    return seen


def main(argv: list[str]) -> int:
    bundle_dir, crops_path, runtime, threads, out_path = argv
    started = time.monotonic()
    import numpy as np

    from edge.bundle import load_bundle

    crops = np.load(crops_path)
    bundle = load_bundle(bundle_dir)
    if bundle.kind == "liveness":
        from edge.liveness import TFLiteLiveness

        model = TFLiteLiveness(bundle, int(threads), runtime=runtime)

        def run_one(crop):
            return model.crop_probabilities(crop[None])[0]
    else:
        from edge.embedder import TFLiteEmbedder

        model = TFLiteEmbedder(load_bundle(bundle_dir, expect_kind="embedder"), int(threads), runtime)
        run_one = model.embed_one
    loaded = time.monotonic()
    raw: list[np.ndarray] = []
    dequantise = model._dequantise

    def capture(output):
        raw.append(np.array(output, copy=True))
        return dequantise(output)

    model._dequantise = capture
    outputs = np.stack([run_one(crop) for crop in crops])
    done = time.monotonic()
    raw_array = np.stack([r.reshape(-1) for r in raw])
    np.savez(out_path, raw=raw_array, outputs=outputs)
    module = sys.modules.get({"ai-edge-litert": "ai_edge_litert", "tflite-runtime": "tflite_runtime"}.get(model.runtime, ""))
    try:
        from importlib.metadata import version

        runtime_version = version(model.runtime)
    except Exception:  # noqa: BLE001 - informative only
        runtime_version = getattr(module, "__version__", "?")
    info = {
        "kind": bundle.kind,
        "runtime": model.runtime,
        "runtime_version": runtime_version,
        "numpy": np.__version__,
        "machine": platform.machine(),
        "python": platform.python_version(),
        "cpuinfo": _cpuinfo_summary(),
        "output_dtype": str(raw_array.dtype),
        "load_s": round(loaded - started, 2),
        "invoke_s": round(done - loaded, 2),
    }
    print("ARM-WORKER-RESULT " + json.dumps(info), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
