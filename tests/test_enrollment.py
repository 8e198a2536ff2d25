"""Enrollment: quality gates on crafted frames, identity safety, bulk, forget, export/import (real models, real faces)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from edge.align import TEMPLATE_112
from edge.cli import main
from edge.config import load_config
from edge.enrollment.quality import SessionGuard, Thresholds, assess, pose_from_landmarks
from edge.gallery import Gallery, GalleryMatrix
from edge.images import load_image

from .conftest import FIXTURES, MODELS

pytestmark = pytest.mark.skipif(not (MODELS / "sface-int8" / "manifest.json").exists(), reason="no sface-int8 bundle")

THRESHOLD = 1.0  # L2; the fixtures: same person 0.69-0.88, different people >= 1.22


def door_frame(photo: np.ndarray, face_height: int = 300, second: np.ndarray | None = None) -> np.ndarray:
    """A 640x480 door-camera frame with the photo in the middle (or two photos side by side)."""
    frame = np.full((480, 640, 3), 110, np.uint8)
    scale = face_height / photo.shape[0]
    small = cv2.resize(photo, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    h, w = small.shape[:2]
    y = max(0, (480 - h) // 2)
    if second is None:
        x = (640 - w) // 2
        frame[y:y + h, x:x + w] = small[: 480 - y]
    else:
        frame[y:y + h, 20:20 + w] = small[: 480 - y]
        other = cv2.resize(second, (w, h), interpolation=cv2.INTER_AREA)
        frame[y:y + h, 620 - w:620] = other[: 480 - y]
    return frame


def close_up(detector, photo: np.ndarray, face_px: int) -> np.ndarray:
    """A 640x480 frame in which the face box is ``face_px`` tall (someone right at the lens)."""
    x, y, w, h = detector.detect_image(photo)[0].box
    scale = face_px / h
    big = cv2.resize(photo, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    big = cv2.copyMakeBorder(big, 480, 480, 640, 640, cv2.BORDER_REPLICATE)
    cx, cy = int((x + w / 2) * scale) + 640, int((y + h / 2) * scale) + 480
    return np.ascontiguousarray(big[cy - 240:cy + 240, cx - 320:cx + 320])


@pytest.fixture(scope="module")
def photos():
    return {p.stem: load_image(p) for p in sorted(FIXTURES.glob("*.jpg"))}


def codes(detector, image, live=True):
    return assess(image, detector.detect_image(image), Thresholds(), live=live).codes


def test_good_door_frame_passes_every_gate(detector, photos):
    for name in ("person_a_1", "person_b_1", "impostor_1"):
        assert codes(detector, door_frame(photos[name])) == [], name


def test_rejection_reasons_on_crafted_frames(detector, photos):
    clean = door_frame(photos["person_a_1"])
    assert "blurred" in codes(detector, cv2.GaussianBlur(clean, (0, 0), 4))
    assert "too_dark" in codes(detector, (clean * 0.25).astype(np.uint8))
    assert "too_bright" in codes(detector, np.clip(clean.astype(np.float32) * 2.0 + 60, 0, 255).astype(np.uint8))
    assert codes(detector, door_frame(photos["person_a_1"], face_height=70))[0] == "too_far"
    assert "too_close" in codes(detector, close_up(detector, photos["person_a_1"], 420))
    assert "two_faces" in codes(detector, door_frame(photos["person_a_1"], 260, second=photos["person_b_1"]))
    assert codes(detector, np.full((480, 640, 3), 120, np.uint8)) == ["no_face"]
    # A photo filling the picture is fine for a file, not for the door camera.
    assert "too_close" not in codes(detector, photos["person_a_1"], live=False)


def test_pose_from_landmarks_geometry():
    frontal = TEMPLATE_112.copy()
    frontal[2, 1] = 51.6 + 0.57 * (92.28 - 51.6)  # nose where YuNet puts it on a frontal face
    yaw, pitch, roll = pose_from_landmarks(frontal)
    assert abs(yaw) < 1 and abs(pitch) < 1 and abs(roll) < 1
    turned = frontal.copy()
    turned[2, 0] += 0.5 * 35.2  # nose half an eye distance to the side: tan(yaw) = 1 -> 45 deg
    assert pose_from_landmarks(turned)[0] == pytest.approx(45, abs=1)
    angle = math.radians(30)
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    tilted = (frontal - 56) @ rot.T + 56
    yaw, pitch, roll = pose_from_landmarks(tilted)
    assert roll == pytest.approx(30, abs=0.5) and abs(yaw) < 1 and abs(pitch) < 1


def _matrix(embedder, fixture_crops, people: dict[str, list[str]]) -> GalleryMatrix:
    rows, ids, names = [], [], {}
    for pid, (name, keys) in enumerate(people.items(), start=1):
        names[pid] = name
        for key in keys:
            rows.append(embedder.embed_one(fixture_crops[key]))
            ids.append(pid)
    return GalleryMatrix(np.stack(rows), np.array(ids), names, 1)


def test_guard_refuses_someone_already_enrolled_and_names_both(embedder, fixture_crops):
    matrix = _matrix(embedder, fixture_crops, {"Emmanuel Macron": ["person_a_1"], "Jacinda Ardern": ["person_b_1"]})
    macron_again = embedder.embed_one(fixture_crops["person_a_2"])
    # A new name for an enrolled face: refused (recognizer would grant it as Macron).
    verdict = SessionGuard("Visitor", matrix, THRESHOLD, Thresholds()).check(macron_again)
    assert [r.code for r in verdict.reasons] == ["other_person"]
    assert "already enrolled as Emmanuel Macron" in verdict.reasons[0].message
    # Adding Macron's face to Ardern: it matches Macron better than Ardern -> refused, both named.
    verdict = SessionGuard("Jacinda Ardern", matrix, THRESHOLD, Thresholds()).check(macron_again)
    message = verdict.reasons[0].message
    assert verdict.reasons[0].code == "other_person" and "Emmanuel Macron" in message and "Jacinda Ardern" in message
    # Ardern's second photo for Ardern: fine.
    assert SessionGuard("Jacinda Ardern", matrix, THRESHOLD, Thresholds()).check(
        embedder.embed_one(fixture_crops["person_b_2"])).ok
    # A look-alike within threshold + margin but beyond the threshold: accepted with a warning.
    guard = SessionGuard("Visitor", matrix, 0.8, Thresholds(duplicate_warn_margin=0.2))
    verdict = guard.check(macron_again)  # distance 0.88: above 0.8, within 1.0
    assert verdict.ok and "possible duplicate identity" in verdict.warnings[0]


def test_guard_diversity_refuses_a_copy_of_an_accepted_sample(embedder, fixture_crops):
    empty = GalleryMatrix(np.zeros((0, 0), np.float32), np.zeros(0, np.int64), {}, 0)
    guard = SessionGuard("Visitor", empty, THRESHOLD, Thresholds())
    e = embedder.embed_one(fixture_crops["impostor_1"])
    assert guard.check(e).ok
    guard.accept(e)
    assert [r.code for r in guard.check(e).reasons] == ["near_duplicate"]


# -- the CLI over a real gallery ------------------------------------------------------------
def replay_config(tmp_path):
    """A config over the shipped models and the replay camera, state in ``tmp_path``."""
    path = tmp_path / "edge.toml"
    path.write_text(
        f'state_dir = "{tmp_path / "state"}"\n'
        f'models_dir = "{MODELS}"\n'
        "[decision]\nthreshold = 1.0\n"
        "[camera]\nsource = \"replay\"\nfps = 0.0\n"
    )
    return path


@pytest.fixture
def config_file(tmp_path):
    return replay_config(tmp_path)


def run_cli(config_file, *args, ok=True):
    result = CliRunner().invoke(main, ["enroll", *args[:1], "-c", str(config_file), *args[1:]])
    if ok:
        assert result.exit_code == 0, result.output + repr(result.exception)
    return result


@pytest.fixture
def people_dir(tmp_path):
    root = tmp_path / "people"
    for folder, files in {"Emmanuel_Macron": ["person_a_1.jpg", "person_a_2.jpg"],
                          "Jacinda_Ardern": ["person_b_1.jpg", "person_b_2.jpg"]}.items():
        (root / folder).mkdir(parents=True)
        for name in files:
            shutil.copy(FIXTURES / name, root / folder / name)
    return root


def test_folder_enrollment_reports_per_file_and_is_idempotent(config_file, people_dir):
    first = run_cli(config_file, "folder", str(people_dir), "--keep-crops")
    assert first.output.count("accepted ") == 4
    assert "added 4 samples for 2 people" in first.output
    again = run_cli(config_file, "folder", str(people_dir), "--json")
    report = json.loads(again.output.strip().splitlines()[-1])
    assert {f["status"] for person in report for f in person["files"]} == {"skipped"}
    gallery = Gallery(load_config(config_file).gallery_path())
    assert {p.name: (p.samples, p.crops) for p in gallery.people()} == {
        "Emmanuel Macron": (2, 2), "Jacinda Ardern": (2, 2)}
    gallery.close()
    listing = run_cli(config_file, "list").output
    model = load_config(config_file).embedder.model
    assert f"Emmanuel Macron\tsamples=2\tcrops=2\tlast_seen=never\tmodel={model}" in listing


def test_files_refuses_a_face_enrolled_under_another_name(config_file, tmp_path):
    run_cli(config_file, "files", "Emmanuel Macron", str(FIXTURES / "person_a_1.jpg"))
    run_cli(config_file, "files", "Jacinda Ardern", str(FIXTURES / "person_b_1.jpg"))
    # Macron's second photo offered as Ardern: refused, naming both.
    result = run_cli(config_file, "files", "Jacinda Ardern", str(FIXTURES / "person_a_2.jpg"), ok=False)
    assert result.exit_code == 65
    assert "rejected" in result.output and "looks more like Emmanuel Macron" in result.output
    assert "than Jacinda Ardern" in result.output
    # ... and as a new person: refused as already enrolled.
    result = run_cli(config_file, "files", "Someone Else", str(FIXTURES / "person_a_2.jpg"), ok=False)
    assert "already enrolled as Emmanuel Macron" in result.output
    # The same file under another name: refused by its content hash.
    copy = tmp_path / "renamed.jpg"
    shutil.copy(FIXTURES / "person_b_1.jpg", copy)
    result = run_cli(config_file, "files", "Jacinda Twin", str(copy), ok=False)
    assert "this exact file is already enrolled as Jacinda Ardern" in result.output
    with Gallery(load_config(config_file).gallery_path()) as gallery:
        assert sorted(p.name for p in gallery.people()) == ["Emmanuel Macron", "Jacinda Ardern"]


def test_files_rejects_bad_photos_with_reasons(config_file, tmp_path, photos):
    blurred = tmp_path / "blurred.jpg"
    cv2.imwrite(str(blurred), cv2.GaussianBlur(photos["impostor_1"], (0, 0), 5))
    group = tmp_path / "group.jpg"
    cv2.imwrite(str(group), door_frame(photos["impostor_1"], 260, second=photos["person_b_1"]))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    result = run_cli(config_file, "files", "Visitor", str(blurred), str(group), str(broken),
                     str(FIXTURES / "impostor_1.jpg"))
    lines = {Path(line.split("\t")[1]).name: line for line in result.output.splitlines() if "\t" in line}
    assert lines["blurred.jpg"].startswith("rejected") and "blurred" in lines["blurred.jpg"]
    assert "2 faces in the picture" in lines["group.jpg"]
    assert lines["broken.jpg"].startswith("error")
    assert lines["impostor_1.jpg"].startswith("accepted")


def test_forget_really_deletes_the_embedding_bytes(config_file):
    run_cli(config_file, "files", "Visitor", str(FIXTURES / "impostor_1.jpg"), "--keep-crops")
    run_cli(config_file, "files", "Emmanuel Macron", str(FIXTURES / "person_a_1.jpg"))
    path = load_config(config_file).gallery_path()
    with Gallery(path) as gallery:
        blob, = gallery.db.execute("SELECT embedding FROM samples s JOIN people p ON p.id = s.person_id "
                                   "WHERE p.name = 'Visitor'").fetchone()
        crop, = gallery.db.execute("SELECT image FROM crops").fetchone()
        gallery.log_event("granted", name="Visitor", person_id=gallery.person_id("Visitor"), distance=0.5)
        gallery.vacuum()
    assert blob in path.read_bytes()
    result = run_cli(config_file, "forget", "Visitor")
    assert "deleted 1 embeddings, 1 crops and 2 events" in result.output  # "enrolled" + "granted"
    on_disk = b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))
    assert blob not in on_disk and crop[:64] not in on_disk and b"Visitor" not in on_disk
    assert "Emmanuel Macron" in run_cli(config_file, "list").output


def test_export_import_round_trip_and_refusals(config_file, people_dir, tmp_path):
    run_cli(config_file, "folder", str(people_dir), "--keep-crops")
    export = tmp_path / "gallery.edge"
    assert "exported 2 people, 4 samples" in run_cli(config_file, "export", str(export), "--crops").output
    other = tmp_path / "other.toml"
    other.write_text(config_file.read_text().replace(str(tmp_path / "state"), str(tmp_path / "state2")))
    assert "imported 2 people (2 new), 4 samples, 4 crops" in run_cli(other, "import", str(export)).output
    model = "sface-int8-cal300-seed0:f2c8fec591963cb1"
    a, b = Gallery(load_config(config_file).gallery_path()), Gallery(load_config(other).gallery_path())
    model = a.people()[0].models[0]
    ma, mb = a.matrix(model), b.matrix(model)
    np.testing.assert_array_equal(ma.embeddings, mb.embeddings)
    assert sorted(ma.names.values()) == sorted(mb.names.values())
    assert [p.crops for p in a.people()] == [p.crops for p in b.people()]
    a.close(), b.close()
    # Importing again: conflict refused as a whole; --merge adds nothing new (same capture ids).
    result = run_cli(other, "import", str(export), ok=False)
    assert result.exit_code == 65 and "already enrolled here" in result.output
    assert "4 samples already here" in run_cli(other, "import", str(export), "--merge").output
    # A corrupted file is refused, nothing imported.
    data = bytearray(export.read_bytes())
    data[-100] ^= 0xFF
    corrupt = tmp_path / "corrupt.edge"
    corrupt.write_bytes(bytes(data))
    third = tmp_path / "third.toml"
    third.write_text(config_file.read_text().replace(str(tmp_path / "state"), str(tmp_path / "state3")))
    result = run_cli(third, "import", str(corrupt), ok=False)
    assert result.exit_code == 65 and "checksum mismatch" in result.output
    # An export of another model is refused.
    with Gallery(tmp_path / "foreign.db") as foreign:
        foreign.add_samples("Somebody", np.eye(1, 128, dtype=np.float32), "other-model:0123")
        from edge.enrollment.transfer import export_gallery

        export_gallery(foreign, tmp_path / "foreign.edge")
    result = run_cli(third, "import", str(tmp_path / "foreign.edge"), ok=False)
    assert result.exit_code == 65 and "other-model:0123" in result.output
    with Gallery(load_config(third).gallery_path()) as gallery:
        assert gallery.people() == []


def test_rename_and_remove(config_file):
    run_cli(config_file, "files", "Visitor", str(FIXTURES / "impostor_1.jpg"))
    assert "renamed Visitor to Guest" in run_cli(config_file, "rename", "Visitor", "Guest").output
    assert "deleted 1 embeddings and 0 crops; events kept" in run_cli(config_file, "remove", "Guest").output
    result = run_cli(config_file, "remove", "Guest", ok=False)
    assert result.exit_code == 67


def test_name_stored_decomposed_by_an_older_gallery_is_the_same_person(config_file):
    # Galleries written before names were NFC-normalised can hold "Jose" + U+0301
    # (a folder copied from macOS is named that way): enrolling "José" again must
    # add to that person, not refuse the face as someone else's or create a twin.
    run_cli(config_file, "files", "Jos\u00e9 Ruiz", str(FIXTURES / "person_a_1.jpg"))
    path = load_config(config_file).gallery_path()
    with Gallery(path) as gallery:
        gallery.db.execute("UPDATE people SET name = ?", ["Jose\u0301 Ruiz"])
        gallery.db.execute("UPDATE events SET name = ?", ["Jose\u0301 Ruiz"])
    result = run_cli(config_file, "files", "Jos\u00e9 Ruiz", str(FIXTURES / "person_a_2.jpg"))
    assert "accepted Jos\u00e9 Ruiz" in result.output
    with Gallery(path) as gallery:
        assert {p.name: p.samples for p in gallery.people()} == {"Jos\u00e9 Ruiz": 2}  # healed to NFC
        assert {e["name"] for e in gallery.events(kind="enrolled")} == {"Jos\u00e9 Ruiz"}
    # The same file again is skipped as already enrolled by that person, not "another person's".
    again = run_cli(config_file, "files", "Jose\u0301 Ruiz", str(FIXTURES / "person_a_1.jpg"))
    assert "skipped" in again.output and "already enrolled" in again.output


def test_bad_person_in_a_folder_does_not_stop_the_others(config_file, people_dir):
    (people_dir / "___").mkdir()
    shutil.copy(FIXTURES / "impostor_1.jpg", people_dir / "___" / "x.jpg")
    (people_dir / "No_Photos").mkdir()
    result = run_cli(config_file, "folder", str(people_dir), "--json", ok=False)
    assert result.exit_code == 65
    report = {p["name"]: p for p in json.loads(result.output.strip().splitlines()[0])}
    assert report["Emmanuel Macron"]["added"] == 2 and report["Jacinda Ardern"]["added"] == 2
    assert report["   "]["error"] == "a person's name cannot be empty"
    assert report["No Photos"]["error"] == "no image files"
