"""``edge-model tune``: choose a bundle's L2 match threshold for a target false-accept rate.

Distances come from the full device pipeline (see :mod:`edge_model.evaluate`)
over labelled faces: a folder per person of the operator's own people (every
pair within a person is genuine, every pair across people an impostor), an
LFW-style pairs file, or a CFP protocol.

Rule: the **largest** L2 threshold whose impostor acceptance rate on these
pairs is at most the target FAR (accept when ``L2 <= threshold``); see
:func:`edge_model.metrics.threshold_at_far`.  It gives the most genuine
accepts the FAR allows on this sample and no more impostor accepts than it.

Too few impostors: with zero false accepts in n impostor pairs the 95 % upper
bound on the true FAR is about 3 / n (the rule of three), so fewer than
3 / FAR impostor pairs cannot show that the FAR is met at all (3,000 for 1e-3,
30,000 for 1e-4).  Below that the threshold is still written - it is the
closest-impostor bound the data allow - but with a recorded warning.

Pairs with an image where no face was found are left out here (and listed):
counting them as rejected impostors would inflate the denominator and loosen
the threshold.  ``edge-model eval`` keeps them, counted as rejected.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
from pathlib import Path

import click
import numpy as np

from edge.bundle import load_bundle, read_manifest, write_manifest
from edge.cli import boundary
from edge.embedder import Embedder
from edge.errors import ModelError
from edge.matcher import l2_distances
from edge_model import metrics
from edge_model.backends import open_embedder
from edge_model.crops import DEFAULT_DETECTOR
from edge_model.evaluate import FacePipeline, embed_images
from edge_model.protocols import (
    PROTOCOLS,
    PairsProtocolError,
    load_protocol,
    parse_lfw,
    parse_people,
)

log = logging.getLogger(__name__)

MAX_FAR = 0.1
MIN_GENUINE = 20  # below this the recorded TAR is a rough estimate
# The operating points recorded beside the chosen one; their span is the range of
# thresholds this tuning can vouch for (edge warns about a configured override outside it).
CURVE_FARS = (1e-2, 1e-3, 1e-4, 1e-5, 1e-6)


def choose_threshold(genuine: np.ndarray, impostor: np.ndarray, far: float) -> dict:
    """The threshold record for scorable genuine and impostor distances (pure; no I/O)."""
    genuine = np.asarray(genuine, dtype=np.float64)
    impostor = np.asarray(impostor, dtype=np.float64)
    if impostor.size == 0:
        raise PairsProtocolError("no impostor pairs: a threshold for a false-accept rate needs pairs of different people")
    if genuine.size == 0:
        raise PairsProtocolError("no genuine pairs: every person needs at least two images with a face")
    threshold = metrics.threshold_at_far(impostor, far)
    needed = metrics.min_impostors_for(far)
    warnings = []
    if impostor.size < needed:
        warnings.append(
            f"only {impostor.size} impostor pairs: at least {needed} (3/FAR, the rule of three) are needed "
            f"to support FAR {far:g}; the threshold is the tightest these pairs allow, the real FAR may be higher"
        )
    if genuine.size < MIN_GENUINE:
        warnings.append(f"only {genuine.size} genuine pairs: the TAR is a rough estimate")
    curve = [
        {"far": point, "l2": (l2 := metrics.threshold_at_far(impostor, point)), "tar": float((genuine <= l2).mean())}
        for point in sorted({*CURVE_FARS, far}, reverse=True)
        if impostor.size >= metrics.min_impostors_for(point) or point == far
    ]
    return {
        "l2": threshold,
        "far": far,
        "far_measured": float((impostor <= threshold).mean()),
        "tar": float((genuine <= threshold).mean()),
        "genuine_pairs": int(genuine.size),
        "impostor_pairs": int(impostor.size),
        "min_impostor_pairs": needed,
        "rule": "largest L2 with impostor acceptance <= far; accept when L2 <= l2",
        "curve": curve,
        "supported_l2": [min(p["l2"] for p in curve), max(p["l2"] for p in curve)],
        "warnings": warnings,
    }


def people_distances(root: Path, embedder: Embedder, pipeline: FacePipeline, progress: bool, block: int = 512):
    """Genuine and impostor L2 distances over every pair of a folder-per-person tree.

    Row blocks of the distance matrix keep memory at block x N floats: 6,000
    images give ~18M impostor pairs, which as Python index pairs took 19 GB.
    """
    paths, people = parse_people(root)
    cache = embed_images(paths, [embedder], pipeline, progress=progress)
    emb = cache.embeddings[0]
    usable = ~np.isnan(emb).any(axis=1)
    emb = np.ascontiguousarray(emb[usable], dtype=np.float64)
    labels = np.asarray(people)[usable]
    _, label_ids = np.unique(labels, return_inverse=True)
    columns = np.arange(len(emb))
    genuine, impostor = [], []
    for start in range(0, len(emb), block):
        rows = columns[start : start + block]
        distance = l2_distances(emb[rows], emb)
        upper = columns[None, :] > rows[:, None]
        same = label_ids[rows][:, None] == label_ids[None, :]
        genuine.append(distance[upper & same])
        impostor.append(distance[upper & ~same])
    empty = np.zeros(0)
    return (np.concatenate(genuine) if genuine else empty,
            np.concatenate(impostor) if impostor else empty, cache.failures)


def pairs_distances(pairs, embedder: Embedder, pipeline: FacePipeline, progress: bool):
    cache = embed_images([p for pair in pairs for p in (pair.path_a, pair.path_b)], [embedder], pipeline,
                         progress=progress)
    index = cache.index()
    emb = cache.embeddings[0]
    d = metrics.l2_distance(emb[[index[p.path_a] for p in pairs]], emb[[index[p.path_b] for p in pairs]])
    same = np.array([p.same for p in pairs])
    return d[same], d[~same], cache.failures


def tune(bundle: Path, far: float = 1e-3, people: Path | None = None, pairs_file: Path | None = None,
         root: Path | None = None, protocol: str | None = None, write: bool = True,
         detector: Path = DEFAULT_DETECTOR, threads: int = 2, progress: bool = True,
         embedder: Embedder | None = None) -> dict:
    """Measure, choose and (unless ``write`` is False) record the threshold in ``bundle``'s manifest.

    ``embedder`` overrides the model opened from the bundle (tests use it to
    run a float model under a scratch bundle).
    """
    if not 0 < far <= MAX_FAR:
        raise click.BadParameter(f"FAR {far:g} must be in (0, {MAX_FAR:g}]", param_hint="--far")
    bundle = Path(bundle)
    if not bundle.is_dir():
        raise ModelError(f"{bundle}: tune writes the threshold into a model bundle's manifest; give a bundle folder")
    checked = load_bundle(bundle, expect_kind="embedder")  # refuses a tampered model before measuring it
    sources = [people is not None, pairs_file is not None, protocol is not None]
    if sum(sources) != 1:
        raise click.UsageError("give exactly one of --people DIR, --pairs FILE --root DIR, --protocol NAME --root DIR")
    if embedder is None:
        embedder = open_embedder(bundle, threads)
    pipeline = FacePipeline(detector)
    if people is not None:
        genuine, impostor, failures = people_distances(Path(people), embedder, pipeline, progress)
        source = f"people:{people}"  # as given: a manifest must not carry this machine's paths
    else:
        if root is None:
            raise click.UsageError("--pairs and --protocol need --root (the image folder)")
        if pairs_file is not None:
            pairs = parse_lfw(pairs_file, root)
            source = f"pairs:{pairs_file} root:{root}"
        else:
            pairs = load_protocol(protocol, root)
            source = f"{protocol}:{root}"
        genuine, impostor, failures = pairs_distances(pairs, embedder, pipeline, progress)
    unscorable = int(np.isnan(genuine).sum() + np.isnan(impostor).sum())
    record = choose_threshold(genuine[~np.isnan(genuine)], impostor[~np.isnan(impostor)], far)
    if failures:
        record["warnings"].append(
            f"{len(failures)} images without a usable face were left out"
            + (f" ({unscorable} pairs)" if unscorable else "") + ": "
            + ", ".join(str(p) for p in list(failures)[:10]) + (" ..." if len(failures) > 10 else "")
        )
    record.update({
        "source": source,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model_id": checked.model_id,
        "detector": pipeline.settings["detector"],
    })
    for warning in record["warnings"]:
        log.warning("%s", warning)
    if write:
        manifest = read_manifest(bundle)
        before = manifest["sha256"]
        manifest["threshold"] = record
        write_manifest(bundle, manifest)
        after = read_manifest(bundle)["sha256"]
        if after != before:  # write_manifest re-hashes the file; the model must not have moved under us
            raise ModelError(f"{bundle}: model sha256 changed while tuning ({before} -> {after})")
    return record


@click.command("tune")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--people", type=click.Path(path_type=Path), default=None,
              help="Folder with one sub-folder of photos per person.")
@click.option("--pairs", "pairs_file", type=click.Path(path_type=Path), default=None,
              help="LFW-style pairs.txt (with --root).")
@click.option("--protocol", type=click.Choice(PROTOCOLS, case_sensitive=False), default=None,
              help="A named protocol's pairs, all folds (with --root).")
@click.option("--root", type=click.Path(path_type=Path), default=None, help="Image root for --pairs/--protocol.")
@click.option("--far", type=float, default=1e-3, show_default=True,
              help="Target false-accept rate per comparison (e.g. 1e-3, 1e-4).")
@click.option("--dry-run", is_flag=True, help="Measure and print, but leave the manifest alone.")
@click.option("--json", "as_json", is_flag=True, help="Print the threshold record as JSON.")
@click.option("--threads", default=2, show_default=True)
@click.option("--detector", type=click.Path(path_type=Path), default=DEFAULT_DETECTOR, show_default=True)
@click.option("--no-progress", is_flag=True)
@boundary
def command(bundle, people, pairs_file, protocol, root, far, dry_run, as_json, threads, detector, no_progress):
    """Choose BUNDLE's L2 threshold for a target FAR and write it into its manifest."""
    record = tune(bundle, far, people, pairs_file, root, protocol.lower() if protocol else None,
                  write=not dry_run, detector=detector, threads=threads, progress=not no_progress)
    if as_json:
        click.echo(json.dumps(record, indent=2))
        return
    click.echo(f"threshold L2 {record['l2']:.4f} for FAR {far:g}: measured FAR {record['far_measured']:.2e}, "
               f"TAR {record['tar'] * 100:.2f}% on {record['genuine_pairs']} genuine / "
               f"{record['impostor_pairs']} impostor pairs")
    for warning in record["warnings"]:
        click.echo(f"warning: {warning}", err=True)
    click.echo("dry run: manifest unchanged" if dry_run else f"written to {Path(bundle) / 'manifest.json'}")
