"""``edge liveness`` (judge image files) and ``edge liveness-tune`` (record at the door, report, write the threshold)."""

from __future__ import annotations

import time
from pathlib import Path

import click

from .cli import _load, _setup_logging, boundary, config_option


def _build(config):
    from .app import build_detector
    from .checks import LivenessCheck

    return build_detector(config), LivenessCheck.from_config(config)


@click.command("liveness")
@config_option
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@boundary
def liveness(config_path, images):
    """Judge the face in each IMAGE: one line per image with the path, ``real`` or ``attack``, and the score.

    The score is the liveness models' averaged real-face probability; below ``liveness.threshold`` the face
    is an attack (a photo or a screen).  An image with several faces is judged on its largest face.  Images
    without a face, that cannot be read, or whose face fills so much of the picture that the models cannot see
    around it (``liveness.max_face_fraction``: a tight portrait crop) are reported on stderr and make the exit
    status 65.
    """
    from .errors import EdgeError, NoFaceError
    from .images import load_image
    from .types import Frame

    config = _load(config_path)
    _setup_logging("warning")
    detector, check = _build(config)
    failed = 0
    for path in images:
        try:
            image = load_image(path)
            faces = detector.detect_image(image)
            if not faces:
                raise NoFaceError(f"{path}: no face found (too small, too dark, or turned away)")
        except EdgeError as exc:  # unreadable, a decode bomb, no face: reported, the others still judged
            click.echo(f"edge liveness: {exc}", err=True)
            failed += 1
            continue
        face = max(faces, key=lambda f: f.box[2] * f.box[3])
        frame = Frame(0, 0.0, image, image)
        if check.too_close(frame, face) is not None:
            click.echo(f"edge liveness: {path}: the face spans {check.spans(frame, face):.0%} of the picture (at most "
                       f"{check.max_face_fraction:.0%}), too close to judge: the models look at what surrounds the "
                       f"face; use a picture with more of the scene around it", err=True)
            failed += 1
            continue
        (verdict,) = check.check(frame, [face])
        note = f"\t(largest of {len(faces)} faces)" if len(faces) > 1 else ""
        click.echo(f"{path}\t{'real' if verdict.passed else 'attack'}\t{verdict.score:.4f}{note}")
    if failed:
        raise SystemExit(65)


@click.group("liveness-tune")
def tune():
    """Tune the liveness threshold on this door's camera (BPCER/APCER, ISO/IEC 30107-3).

    \b
    1. edge liveness-tune record --label real   -o door.jsonl   (the door's own people, normal light)
    2. edge liveness-tune record --label print  -o door.jsonl   (a printed photo of an enrolled person)
    3. edge liveness-tune record --label screen -o door.jsonl   (a phone showing a photo of them)
    4. edge liveness-tune report door.jsonl --plot scores.png --write -c /etc/edge/edge.toml

    The camera must be free: stop the recognizer first (systemctl stop edge-recognizer; the door stays locked).
    """


@tune.command("record")
@config_option
@click.option("--label", required=True, help="What is shown: real, print, screen (or another attack species).")
@click.option("-o", "--out", "out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Session file (JSON lines, appended): liveness scores only, no images.")
@click.option("--frames", type=click.IntRange(1, 100000), default=150, show_default=True,
              help="Stop after this many frames with a face.")
@click.option("--seconds", type=click.FloatRange(0.1, 3600), default=60.0, show_default=True,
              help="Stop after this long.")
@click.option("--keep-frames", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also save each recorded frame as a JPEG here (faces: only if the people shown agree).")
@boundary
def record(config_path, label, out, frames, seconds, keep_frames):
    """Record presentations from the configured camera: the largest face's liveness score per frame."""
    import cv2

    from .camera import open_source
    from .liveness_tuning import Presentation, write_presentations

    label = label.strip().lower()
    if not label or not label.replace("_", "").replace("-", "").isalnum():
        raise click.BadParameter("a word such as real, print or screen", param_hint="--label")
    config = _load(config_path)
    _setup_logging(config.log_level)
    detector, check = _build(config)
    if keep_frames is not None:
        keep_frames.mkdir(parents=True, exist_ok=True)
    recorded: list[Presentation] = []
    seen = too_close = 0
    deadline = time.monotonic() + seconds
    with open_source(config) as source, click.progressbar(length=frames, label=f"recording {label}",
                                                          file=click.get_text_stream("stderr")) as bar:
        while len(recorded) < frames and time.monotonic() < deadline:
            frame = source.read()
            if frame is None:
                break
            seen += 1
            faces = detector.detect(frame)
            if not faces:
                continue
            face = max(faces, key=lambda f: f.box[2] * f.box[3])
            if check.too_close(frame, face) is not None:  # the door does not judge these, so neither does tuning
                too_close += 1
                continue
            score = float(check.scores(frame, [face])[0])
            recorded.append(Presentation(label, score, time.time(), config.camera.source))
            if keep_frames is not None:
                cv2.imwrite(str(keep_frames / f"{label}_{len(recorded):05d}.jpg"), frame.main)
            bar.update(1)
    write_presentations(out, recorded)
    closer = f"; {too_close} frames with the face too close to judge were skipped" if too_close else ""
    if not recorded:
        raise click.ClickException(f"no face to judge in {seen} frames{closer}: nothing recorded (is the camera "
                                   f"pointed at the face, from at least an arm's length?)")
    scores = [p.score for p in recorded]
    judged_real = sum(s >= check.threshold for s in scores)
    click.echo(f"{label}: {len(recorded)} frames with a face of {seen} read -> {out}; score min {min(scores):.3f} "
               f"median {sorted(scores)[len(scores) // 2]:.3f} max {max(scores):.3f}; judged real at the current "
               f"threshold {check.threshold:.3f}: {judged_real}/{len(recorded)}{closer}")


@tune.command("report")
@config_option
@click.argument("sessions", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--bpcer", "bpcer_target", type=click.FloatRange(0.0, 0.5), default=0.02, show_default=True,
              help="The largest share of real-face frames the door may turn away.")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Draw the score distributions and the chosen threshold as a PNG.")
@click.option("--write", is_flag=True, help="Write the chosen threshold into the -c config file ([liveness]).")
@boundary
def report(config_path, sessions, bpcer_target, plot, write):
    """BPCER and APCER across thresholds from recorded SESSIONS, and the threshold to use."""
    from .config import update_config_file
    from .errors import TuningError
    from .liveness_tuning import choose_threshold, curve, describe, plot_scores, read_presentations

    if write and config_path is None:
        raise click.UsageError("--write needs the config file to change: -c /etc/edge/edge.toml")
    presentations = read_presentations(sessions)
    if not presentations:
        raise TuningError("the session files hold no presentations")
    chosen = choose_threshold(presentations, bpcer_target)
    if not chosen.apcer:
        click.echo("warning: no attack presentations recorded: APCER is unmeasured; record a printed photo and a "
                   "phone screen (--label print / --label screen)", err=True)
    species = list(chosen.apcer)
    click.echo("threshold  BPCER %  " + "  ".join(f"APCER[{s}] %" for s in species))
    for point in curve(presentations, steps=11) + [chosen]:
        mark = "   <- chosen" if point is chosen else ""
        click.echo(f"{point.threshold:9.4f}  {100 * point.bpcer:7.2f}  "
                   + "  ".join(f"{100 * point.apcer[s]:>{len(s) + 9}.2f}" for s in species) + mark)
    measured = describe(presentations, chosen)
    click.echo(measured)
    if plot is not None:
        click.echo(f"plot: {plot_scores(presentations, chosen, plot)}")
    if write:
        update_config_file(config_path, "liveness", {"threshold": round(chosen.threshold, 4), "measured": measured})
        click.echo(f"wrote liveness.threshold = {chosen.threshold:.4f} into {config_path}; "
                   "restart the recognizer or send it SIGHUP (systemctl reload edge-recognizer)")
