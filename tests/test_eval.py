"""edge-model eval / tune: protocol parsers, metrics against hand-computed examples, tuning, bad inputs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from edge.bundle import read_manifest, sha256_file, write_manifest
from edge.errors import ModelError
from edge_model import metrics
from edge_model.protocols import (
    PairsProtocolError,
    load_protocol,
    parse_cfp,
    parse_lfw,
    parse_people,
    people_pairs,
)

FIXTURES = Path(__file__).parent / "fixtures" / "faces"
REPO = Path(__file__).resolve().parents[1]
INT8_BUNDLE = REPO / "models" / "sface-int8"


def _sface_onnx() -> Path:
    from edge_model.sources import package_model

    try:
        return package_model("sface")
    except ModelError as exc:
        pytest.skip(f"float SFace unavailable: {exc}")


# ------------------------------------------------------------------ trees


def make_lfw(root: Path, header: str | None = "2 2") -> Path:
    """LFW layout from the fixtures: Anna (person_a), Bob (person_b), Ivan (impostor)."""
    for name, stem in (("Anna", "person_a"), ("Bob", "person_b"), ("Ivan", "impostor")):
        (root / name).mkdir(parents=True)
        for n in (1, 2):
            shutil.copy(FIXTURES / f"{stem}_{n}.jpg", root / name / f"{name}_{n:04d}.jpg")
    lines = [
        "Anna 1 2", "Bob 1 2", "Anna 1 Ivan 1", "Bob 2 Ivan 2",  # fold 0
        "Ivan 1 2", "Anna 2 2", "Anna 2 Bob 1", "Ivan 2 Anna 1",  # fold 1
    ]
    text = ((header + "\n") if header else "") + "\n".join(lines) + "\n"
    (root / "pairs.txt").write_text(text)
    return root / "pairs.txt"


def make_cfp(root: Path) -> Path:
    """CFP layout: 2 people x 2 frontal + 1 profile, two folds of FF and FP pairs."""
    images = root / "Data" / "Images"
    frontal = {1: ("001", "person_a_1"), 2: ("001", "person_a_2"), 3: ("002", "person_b_1"), 4: ("002", "person_b_2")}
    profile = {1: ("001", "impostor_1"), 2: ("002", "impostor_2")}  # stand-ins: any face will do for parsing
    lines_f, lines_p = [], []
    for number, (person, stem) in frontal.items():
        target = images / person / "frontal" / f"{number:02d}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(FIXTURES / f"{stem}.jpg", target)
        lines_f.append(f"{number} ../Data/Images/{person}/frontal/{number:02d}.jpg")
    for number, (person, stem) in profile.items():
        target = images / person / "profile" / f"{number:02d}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(FIXTURES / f"{stem}.jpg", target)
        lines_p.append(f"{number} ../Data/Images/{person}/profile/{number:02d}.jpg")
    protocol = root / "Protocol"
    protocol.mkdir(parents=True)
    (protocol / "Pair_list_F.txt").write_text("\n".join(lines_f) + "\n")
    (protocol / "Pair_list_P.txt").write_text("\n".join(lines_p) + "\n")
    splits = {
        "FF": {"01": ("1,2", "1,3"), "02": ("3,4", "2,4")},
        "FP": {"01": ("1,1", "3,1"), "02": ("4,2", "2,2")},
    }
    for split, folds in splits.items():
        for fold, (same, diff) in folds.items():
            folder = protocol / "Split" / split / fold
            folder.mkdir(parents=True)
            (folder / "same.txt").write_text(same + "\n")
            (folder / "diff.txt").write_text(diff + "\n")
    return root


# ------------------------------------------------------------------ parsers


def test_lfw_parser_reads_pairs_and_folds(tmp_path):
    pairs_file = make_lfw(tmp_path)
    pairs = parse_lfw(pairs_file, tmp_path)
    assert len(pairs) == 8
    assert [p.same for p in pairs] == [True, True, False, False] * 2
    assert [p.fold for p in pairs] == [0] * 4 + [1] * 4
    assert pairs[0].path_a == tmp_path / "Anna" / "Anna_0001.jpg"
    assert pairs[0].path_b == tmp_path / "Anna" / "Anna_0002.jpg"
    assert pairs[2].path_b == tmp_path / "Ivan" / "Ivan_0001.jpg"
    # load_protocol defaults the pairs file to <root>/pairs.txt
    assert load_protocol("lfw", tmp_path) == pairs


def test_lfw_without_header_cuts_consecutive_blocks(tmp_path):
    pairs_file = make_lfw(tmp_path, header=None)
    lines = pairs_file.read_text().splitlines()
    pairs_file.write_text("\n".join(lines + lines[:2]) + "\n")  # 10 pairs, no header -> 10 folds of 1
    pairs = parse_lfw(pairs_file, tmp_path)
    assert [p.fold for p in pairs] == list(range(10))


def test_lfw_header_mismatch_and_bad_lines(tmp_path):
    pairs_file = make_lfw(tmp_path, header="3 2")
    with pytest.raises(PairsProtocolError, match="header says 3 folds"):
        parse_lfw(pairs_file, tmp_path)
    pairs_file.write_text("Anna 1 2\nAnna one 2\n")
    with pytest.raises(PairsProtocolError, match=r"pairs.txt:2: expected"):
        parse_lfw(pairs_file, tmp_path)


def test_lfw_missing_image_names_the_line(tmp_path):
    pairs_file = make_lfw(tmp_path)
    text = pairs_file.read_text().replace("Bob 2 Ivan 2", "Bob 2 Ivan 7")
    pairs_file.write_text(text)
    with pytest.raises(PairsProtocolError, match=r"pairs.txt:5: image .*Ivan_0007.jpg does not exist"):
        parse_lfw(pairs_file, tmp_path)


def test_missing_pairs_file_and_unknown_protocol(tmp_path):
    with pytest.raises(PairsProtocolError, match="does not exist"):
        load_protocol("lfw", tmp_path)
    with pytest.raises(PairsProtocolError, match="unknown protocol 'ytf'"):
        load_protocol("ytf", tmp_path)
    with pytest.raises(PairsProtocolError, match="not a CFP tree"):
        load_protocol("cfp-ff", tmp_path)


def test_cfp_parser_ff_and_fp(tmp_path):
    make_cfp(tmp_path)
    ff = parse_cfp(tmp_path, "FF")
    assert [(p.same, p.fold) for p in ff] == [(True, 0), (False, 0), (True, 1), (False, 1)]
    assert ff[0].path_a.resolve() == (tmp_path / "Data/Images/001/frontal/01.jpg").resolve()
    assert ff[1].path_b.resolve() == (tmp_path / "Data/Images/002/frontal/03.jpg").resolve()
    fp = load_protocol("cfp-fp", tmp_path / "Protocol")  # the Protocol folder itself works too
    assert len(fp) == 4
    # FP: a from the frontal list, b from the profile list
    assert fp[0].path_a.resolve() == (tmp_path / "Data/Images/001/frontal/01.jpg").resolve()
    assert fp[0].path_b.resolve() == (tmp_path / "Data/Images/001/profile/01.jpg").resolve()
    assert fp[1].path_a.resolve() == (tmp_path / "Data/Images/002/frontal/03.jpg").resolve()
    assert all("profile" in str(p.path_b) for p in fp)


def test_cfp_missing_image_and_unknown_number_name_the_line(tmp_path):
    make_cfp(tmp_path)
    (tmp_path / "Data/Images/002/profile/02.jpg").unlink()
    with pytest.raises(PairsProtocolError, match=r"FP/02/same.txt:1: image .*profile/02.jpg \(Pair_list_P.txt line 2\)"):
        parse_cfp(tmp_path, "FP")
    (tmp_path / "Protocol/Split/FF/02/diff.txt").write_text("2,9\n")
    with pytest.raises(PairsProtocolError, match=r"FF/02/diff.txt:1: 9 is not in Pair_list_F.txt"):
        parse_cfp(tmp_path, "FF")


def test_people_tree(tmp_path):
    for person in ("a", "b"):
        (tmp_path / person).mkdir()
        shutil.copy(FIXTURES / "person_a_1.jpg", tmp_path / person / "1.jpg")
        shutil.copy(FIXTURES / "person_a_2.jpg", tmp_path / person / "2.jpg")
    paths, people = parse_people(tmp_path)
    assert people == ["a", "a", "b", "b"]
    genuine, impostor = people_pairs(people)
    assert genuine == [(0, 1), (2, 3)]
    assert impostor == [(0, 2), (0, 3), (1, 2), (1, 3)]
    shutil.rmtree(tmp_path / "b")
    with pytest.raises(PairsProtocolError, match="at least two people"):
        parse_people(tmp_path)


# ------------------------------------------------------------------ metrics


def test_l2_and_cosine():
    a = np.array([[1.0, 0.0], [0.0, 1.0]])
    b = np.array([[0.0, 1.0], [0.0, 1.0]])
    assert metrics.l2_distance(a, b) == pytest.approx([np.sqrt(2), 0.0])
    assert metrics.cosine(a, b) == pytest.approx([0.0, 1.0])


def test_best_threshold_hand_example():
    # genuine 0.2 0.4 0.9, impostor 0.6 1.0 1.3; candidate midpoints 0.3 0.5 0.75 0.95 1.15:
    # correct = 3,4,5,4,5,4,3 -> the first best is 0.5 with 5/6
    d = np.array([0.2, 0.4, 0.9, 0.6, 1.0, 1.3])
    same = np.array([True, True, True, False, False, False])
    threshold, accuracy = metrics.best_threshold(d, same)
    assert threshold == pytest.approx(0.5)
    assert accuracy == pytest.approx(5 / 6)
    assert metrics.accuracy_at(d, same, 0.95) == pytest.approx(5 / 6)


def test_kfold_accuracy_hand_example():
    # fold 0: genuine 0.2 0.4, impostor 0.65 1.0; fold 1: genuine 0.5 0.9, impostor 0.7 1.3.
    # test 0 <- threshold from fold 1 = 0.6 (3/4 there): fold 0 all right -> 1.0
    # test 1 <- threshold from fold 0 = (0.4+0.65)/2 = 0.525: 0.9 rejected -> 3/4
    d = np.array([0.2, 0.4, 0.65, 1.0, 0.5, 0.9, 0.7, 1.3])
    same = np.array([1, 1, 0, 0, 1, 1, 0, 0], bool)
    folds = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    result = metrics.kfold_accuracy(d, same, folds)
    assert result["per_fold"] == pytest.approx([1.0, 0.75])
    assert result["thresholds"] == pytest.approx([0.6, 0.525])
    assert result["mean"] == pytest.approx(0.875)
    assert result["std"] == pytest.approx(0.125)
    # an unscorable genuine pair in fold 1 counts as wrong there: 3/5; thresholds unchanged
    d2, same2, folds2 = np.append(d, np.nan), np.append(same, True), np.append(folds, 1)
    result = metrics.kfold_accuracy(d2, same2, folds2)
    assert result["per_fold"] == pytest.approx([1.0, 0.6])
    assert result["thresholds"] == pytest.approx([0.6, 0.525])
    with pytest.raises(ValueError):
        metrics.kfold_accuracy(d, same, np.zeros(8))


def test_tar_at_far_hand_example():
    impostor = np.array([0.3, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6])  # n = 10
    genuine = np.array([0.2, 0.5, 0.85, 1.05])
    d = np.concatenate([genuine, impostor])
    same = np.array([True] * 4 + [False] * 10)
    # FAR 0.1 -> k = 1 impostor may pass -> threshold just below 0.8 -> genuine 0.2, 0.5 pass
    r = metrics.tar_at_far(d, same, 0.1)
    assert r["threshold"] < 0.8 and r["threshold"] == pytest.approx(0.8)
    assert (r["tar"], r["far"]) == (0.5, 0.1)
    # FAR 0.05 -> k = 0 -> just below the closest impostor 0.3 -> only 0.2 passes
    r = metrics.tar_at_far(d, same, 0.05)
    assert (r["tar"], r["far"]) == (0.25, 0.0)
    # FAR 0.2 -> k = 2 -> just below 0.9 -> 0.2, 0.5, 0.85 pass
    assert metrics.tar_at_far(d, same, 0.2)["tar"] == 0.75
    # ties at the cut are all rejected: never more impostors than the FAR allows
    tied = np.array([0.5, 0.5] + [1.0] * 8)
    t = metrics.threshold_at_far(tied, 0.1)
    assert (tied <= t).sum() == 0
    # unscorable pairs are never accepted but stay in the denominators
    r = metrics.tar_at_far(np.append(d, [np.nan, np.nan]), np.append(same, [True, False]), 0.1)
    assert r["tar"] == pytest.approx(2 / 5) and r["impostor_pairs"] == 11


def test_roc_points_and_rule_of_three():
    d = np.array([0.2, 0.4, 0.6, 1.0])
    same = np.array([True, True, False, False])
    far, tar, _ = metrics.roc_points(d, same)
    assert far[0] == 0 and tar[0] == 0 and far[-1] == 1 and tar[-1] == 1
    assert metrics.auc(far, tar) == pytest.approx(1.0)
    assert metrics.min_impostors_for(1e-3) == 3000
    assert metrics.min_impostors_for(1e-4) == 30000


def test_choose_threshold_warns_on_too_few_impostors():
    from edge_model.tune import choose_threshold

    record = choose_threshold(np.array([0.3, 0.5, 0.9]), np.array([0.7, 1.1, 1.2, 1.4]), 1e-3)
    assert record["l2"] < 0.7 and record["l2"] == pytest.approx(0.7)
    assert record["tar"] == pytest.approx(2 / 3)
    assert record["far_measured"] == 0.0
    assert any("3000" in w for w in record["warnings"])
    big = np.linspace(0.8, 1.6, 4000)
    record = choose_threshold(np.full(50, 0.4), big, 1e-3)  # k = 4 -> just below the 5th impostor
    assert (big <= record["l2"]).sum() == 4 and record["warnings"] == []


# ------------------------------------------------------------------ backends


def test_open_embedder_errors(tmp_path):
    from edge_model.backends import open_embedder

    with pytest.raises(ModelError, match="no such model"):
        open_embedder(tmp_path / "nope")
    with pytest.raises(ModelError, match="without manifest.json"):
        open_embedder(tmp_path)
    (tmp_path / "model.pt").write_bytes(b"x")
    with pytest.raises(ModelError, match="not a model this tool can open"):
        open_embedder(tmp_path / "model.pt")


def test_onnx_embedder_is_unit_norm_and_matches_opencv_preprocessing():
    from edge_model.backends import open_embedder

    onnx = _sface_onnx()
    embedder = open_embedder(onnx)
    crops = np.random.default_rng(0).integers(0, 256, (3, 112, 112, 3), dtype=np.uint8)
    out = embedder.embed(crops)
    assert out.shape == (3, 128)
    assert np.linalg.norm(out, axis=1) == pytest.approx(np.ones(3), abs=1e-5)
    net = cv2.dnn.readNetFromONNX(str(onnx))
    net.setInput(cv2.dnn.blobFromImage(crops[1], 1, (112, 112), 0, swapRB=True))
    ref = net.forward().ravel()
    assert out[1] == pytest.approx(ref / np.linalg.norm(ref), abs=1e-5)


# ------------------------------------------------------------------ eval end to end


def test_eval_cli_on_tiny_lfw(tmp_path):
    from edge_model.cli import main

    onnx = _sface_onnx()
    root = tmp_path / "lfw"
    make_lfw(root)
    # one image without a face: the pairs using it are reported and counted as failures
    cv2.imwrite(str(root / "Ivan" / "Ivan_0002.jpg"), np.full((240, 240, 3), 128, np.uint8))
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main, ["eval", str(onnx), "--protocol", "lfw", "--root", str(root), "--out", str(out), "--json",
               "--no-progress"],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report == json.loads((out / "report.json").read_text())
    assert (out / "roc.png").stat().st_size > 0 and (out / "distances.png").stat().st_size > 0
    assert report["pairs"] == 8 and report["folds"] == 2 and report["images"] == 6
    assert report["detection"]["failed_images"] == 1
    assert report["detection"]["failed_pairs"] == 3  # "Bob 2 Ivan 2", "Ivan 1 2", "Ivan 2 Anna 1"
    model = report["models"][0]
    assert model["kind"] == "onnx-float" and 0 <= model["accuracy"]["mean"] <= 1
    assert set(model["tar_at_far"]) == {"0.01", "0.001"}


def test_eval_cli_bad_inputs(tmp_path):
    from edge_model.cli import main

    runner = CliRunner()
    result = runner.invoke(main, ["eval", str(tmp_path), "--protocol", "ytf", "--root", str(tmp_path)])
    assert result.exit_code == 2 and "ytf" in result.output
    result = runner.invoke(main, ["eval", str(tmp_path / "none.onnx"), "--protocol", "lfw", "--root", str(tmp_path)])
    assert result.exit_code == 65 and "pairs.txt does not exist" in result.output  # PairsProtocolError
    make_lfw(tmp_path)
    result = runner.invoke(main, ["eval", str(tmp_path / "none.onnx"), "--protocol", "lfw", "--root", str(tmp_path)])
    assert result.exit_code == 66 and "no such model" in result.output  # ModelError


# ------------------------------------------------------------------ tune


def make_people(root: Path) -> Path:
    for person, stem in (("alice", "person_a"), ("bob", "person_b"), ("ivan", "impostor")):
        (root / person).mkdir(parents=True)
        for n in (1, 2):
            shutil.copy(FIXTURES / f"{stem}_{n}.jpg", root / person / f"{n}.jpg")
    return root


def test_tune_people_writes_threshold_and_keeps_sha(tmp_path):
    from edge_model.backends import OnnxEmbedder
    from edge_model.tune import tune

    onnx = _sface_onnx()
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    shutil.copy(onnx, bundle / "model.onnx")
    write_manifest(bundle, {"name": "scratch", "version": "0", "kind": "embedder", "file": "model.onnx",
                            "licence": "Apache-2.0", "embedding_size": 128, "note": "kept"})
    before = read_manifest(bundle)
    people = make_people(tmp_path / "people")
    embedder = OnnxEmbedder(bundle / "model.onnx")
    record = tune(bundle, 1e-3, people=people, embedder=embedder, progress=False)
    after = read_manifest(bundle)
    assert after["sha256"] == before["sha256"] == sha256_file(bundle / "model.onnx")
    assert after["note"] == "kept"
    stored = after["threshold"]
    assert stored == json.loads(json.dumps(record))
    for key in ("l2", "far", "tar", "genuine_pairs", "impostor_pairs", "source", "date"):
        assert key in stored
    assert stored["genuine_pairs"] == 3 and stored["impostor_pairs"] == 12 and stored["far"] == 1e-3
    assert any("rule of three" in w for w in stored["warnings"])
    # recompute by hand: 12 impostors at FAR 1e-3 allow none, so the threshold sits just below the closest
    from edge_model.evaluate import FacePipeline, embed_images

    paths, names = parse_people(people)
    emb = embed_images(paths, [embedder], FacePipeline(), progress=False).embeddings[0]
    genuine, impostor = people_pairs(names)
    gd = metrics.l2_distance(emb[[i for i, _ in genuine]], emb[[j for _, j in genuine]])
    idist = metrics.l2_distance(emb[[i for i, _ in impostor]], emb[[j for _, j in impostor]])
    assert stored["l2"] < idist.min() and stored["l2"] == pytest.approx(idist.min())
    assert stored["tar"] == pytest.approx((gd <= stored["l2"]).mean())


def test_tune_bad_inputs(tmp_path):
    from edge_model.cli import main

    runner = CliRunner()
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"x")
    result = runner.invoke(main, ["tune", str(onnx), "--people", str(tmp_path)])
    assert result.exit_code == 66 and "give a bundle folder" in result.output  # ModelError
    result = runner.invoke(main, ["tune", str(tmp_path), "--people", str(tmp_path)])
    assert result.exit_code == 66 and "manifest.json" in result.output
    result = runner.invoke(main, ["tune", str(tmp_path), "--people", str(tmp_path), "--far", "0.5"])
    assert result.exit_code == 2 and "FAR" in result.output


@pytest.mark.parametrize("source", [INT8_BUNDLE, Path(__file__).parent / "fixtures" / "tiny-int8"],
                         ids=["sface-int8", "tiny-int8"])
def test_tune_cli_on_tflite_bundle(tmp_path, source):
    from edge_model.cli import main

    if not (source / "manifest.json").is_file():
        pytest.skip(f"{source} not built yet")
    bundle = tmp_path / "bundle"
    shutil.copytree(source, bundle, ignore=shutil.ignore_patterns("eval", "*.py"))
    original = read_manifest(bundle)
    before = original["sha256"]
    people = make_people(tmp_path / "people")
    runner = CliRunner()
    result = runner.invoke(main, ["tune", str(bundle), "--people", str(people), "--far", "1e-4", "--json",
                                  "--no-progress", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert read_manifest(bundle) == original  # a dry run leaves the manifest alone
    result = runner.invoke(main, ["tune", str(bundle), "--people", str(people), "--far", "1e-4", "--json",
                                  "--no-progress"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    manifest = read_manifest(bundle)
    assert manifest["sha256"] == before and manifest["threshold"]["l2"] == record["l2"]
    assert record["far"] == 1e-4 and record["warnings"]


def test_parse_people_reads_a_flat_identity_file(tmp_path):
    import shutil

    from .conftest import FIXTURES

    for name in ("person_a_1", "person_a_2", "impostor_1"):
        shutil.copy(FIXTURES / f"{name}.jpg", tmp_path / f"{name}.jpg")
    (tmp_path / "identity.txt").write_text("person_a_1.jpg 7\nperson_a_2.jpg 7\nimpostor_1.jpg 9\n")
    paths, people = parse_people(tmp_path)
    assert [p.name for p in paths] == ["person_a_1.jpg", "person_a_2.jpg", "impostor_1.jpg"]
    assert people == ["7", "7", "9"]
    (tmp_path / "identity.txt").write_text("missing.jpg 1\n")
    with pytest.raises(PairsProtocolError, match="identity.txt:1: missing.jpg does not exist"):
        parse_people(tmp_path)


# ------------------------------------------------------------------ exit statuses


STUDENT_BUNDLE = REPO / "models" / "student-int8"


def _edge_model(*args) -> subprocess.CompletedProcess:
    """``edge-model ARGS`` as its own process, so the exit status is the one a shell or CI sees."""
    return subprocess.run([sys.executable, "-m", "edge_model.cli", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=300, check=False)


def _tampered_bundle(tmp_path: Path) -> Path:
    if not (STUDENT_BUNDLE / "manifest.json").is_file():
        pytest.skip(f"{STUDENT_BUNDLE} not built")
    bundle = tmp_path / "tampered"
    shutil.copytree(STUDENT_BUNDLE, bundle)
    model = bundle / read_manifest(bundle)["file"]
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    return bundle


@pytest.mark.parametrize("subcommand", [["tune", "--people", "."], ["bench", "--threads", "1", "--batch", "1",
                                                                    "--runs", "1", "--no-progress"]],
                         ids=["tune", "bench"])
def test_model_tool_keeps_the_exit_status_of_a_tampered_or_missing_bundle(tmp_path, subcommand):
    """edge-model goes through edge's boundary: 65 for a model that fails its sha256, 66 for no bundle, not 1."""
    name, *options = subcommand
    tampered = _edge_model(name, _tampered_bundle(tmp_path), *options)
    assert tampered.returncode == 65, tampered.stderr
    assert tampered.stderr.startswith("edge: error: ") and "sha256" in tampered.stderr
    assert "Traceback" not in tampered.stderr
    missing = _edge_model(name, tmp_path / "no-such-bundle", *options)
    assert missing.returncode == 66, missing.stderr
    assert missing.stderr.startswith("edge: error: ") and "no-such-bundle" in missing.stderr


def test_a_folder_without_images_is_no_input(tmp_path):
    from edge_model.cli import main

    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(main, ["crops", str(tmp_path / "empty"), "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 66 and "edge: error: no images under" in result.output


def test_every_model_subcommand_goes_through_the_one_boundary():
    """Each subcommand's callback is edge.cli.boundary's wrapper: none re-wraps errors as plain click ones."""
    import click

    from edge.cli import boundary
    from edge_model.cli import SUBCOMMANDS, main

    wrapper_code = boundary(lambda: None).__code__
    ctx = click.Context(main)
    for name in SUBCOMMANDS:
        try:
            command = main.get_command(ctx, name)
        except click.ClickException:  # a subcommand whose build extra is missing here
            continue
        assert command is not None, name
        assert command.callback.__code__ is wrapper_code, f"edge-model {name} bypasses edge.cli.boundary"
