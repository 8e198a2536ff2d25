"""Verification protocols: which image pairs to compare, whether they are the same person, and their fold.

Two layouts are read:

* **LFW** ``pairs.txt``: an optional header (``folds n``: ``folds`` blocks of
  ``n`` same then ``n`` different pairs; a lone ``n`` is one block), then
  ``name n1 n2`` (same person) and ``name1 n1 name2 n2`` (different people)
  lines; images at ``<root>/<name>/<name>_<nnnn>.jpg``.  Folds are consecutive
  blocks as in LFW's own file; without a header the file is cut into 10 equal
  consecutive blocks.
* **CFP** (Celebrities in Frontal-Profile): ``Protocol/Pair_list_F.txt`` and
  ``Pair_list_P.txt`` map numbers to image paths relative to ``Protocol/``;
  ``Protocol/Split/{FF,FP}/01..10/{same,diff}.txt`` hold ``a,b`` lines (FF:
  both frontal; FP: ``a`` frontal, ``b`` profile).

Every image a protocol names must exist: a missing one is a
:class:`PairsProtocolError` naming the file and line, before any model runs.
Folds are numbered from 0.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

from edge.errors import EdgeError
from edge.images import is_image_file

PROTOCOLS = ("lfw", "cfp-ff", "cfp-fp")


class PairsProtocolError(EdgeError):
    """A verification protocol (its pairs file, people folder or CFP tree) is missing, malformed or
    names an image that is not there.

    Not to be confused with :class:`edge.service.protocol.ProtocolError`, the lock socket's.
    """

    exit_code = 65


@dataclass(frozen=True)
class Pair:
    path_a: Path
    path_b: Path
    same: bool
    fold: int


class _Exists:
    """``Path.is_file`` with a cache: protocols name the same image many times."""

    def __init__(self) -> None:
        self._seen: dict[Path, bool] = {}

    def __call__(self, path: Path) -> bool:
        if path not in self._seen:
            self._seen[path] = path.is_file()
        return self._seen[path]


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise PairsProtocolError(f"protocol file {path} does not exist")
    try:
        return path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        raise PairsProtocolError(f"protocol file {path}: cannot read: {exc}") from exc


# ---------------------------------------------------------------- LFW


def lfw_image(root: Path, name: str, number: int) -> Path:
    return Path(root) / name / f"{name}_{number:04d}.jpg"


def parse_lfw(pairs_file: str | Path, root: str | Path, default_folds: int = 10) -> list[Pair]:
    """Pairs from an LFW-style ``pairs.txt``; images under ``root``."""
    pairs_file, root = Path(pairs_file), Path(root)
    if not root.is_dir():
        raise PairsProtocolError(f"image root {root} is not a folder")
    lines = _read_lines(pairs_file)
    exists = _Exists()
    raw: list[tuple[int, Path, Path, bool]] = []  # (line number, a, b, same)
    header: tuple[int, int] | None = None
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{pairs_file}:{number}"
        if not raw and header is None and all(f.isdigit() for f in fields) and len(fields) <= 2:
            header = (int(fields[0]), int(fields[1])) if len(fields) == 2 else (1, int(fields[0]))
            continue
        try:
            if len(fields) == 3:
                a, b, same = lfw_image(root, fields[0], int(fields[1])), lfw_image(root, fields[0], int(fields[2])), True
            elif len(fields) == 4:
                a, b, same = lfw_image(root, fields[0], int(fields[1])), lfw_image(root, fields[2], int(fields[3])), False
            else:
                raise ValueError
        except ValueError:
            raise PairsProtocolError(
                f"{where}: expected 'name n1 n2' or 'name1 n1 name2 n2', got {line.strip()!r}"
            ) from None
        for image in (a, b):
            if not exists(image):
                raise PairsProtocolError(f"{where}: image {image} does not exist ({line.strip()!r})")
        raw.append((number, a, b, same))
    if not raw:
        raise PairsProtocolError(f"{pairs_file}: no pairs")
    if header is not None:
        folds, per_class = header
        block = 2 * per_class
        if folds * block != len(raw):
            raise PairsProtocolError(
                f"{pairs_file}: header says {folds} folds of {per_class} same + {per_class} different "
                f"pairs ({folds * block}), but the file has {len(raw)} pairs"
            )
    else:
        folds = default_folds if len(raw) >= default_folds else 1
        block = -(-len(raw) // folds)
    return [Pair(a, b, same, min(index // block, folds - 1)) for index, (_, a, b, same) in enumerate(raw)]


# ---------------------------------------------------------------- CFP


def _cfp_protocol_dir(root: Path) -> Path:
    root = Path(root)
    for candidate in (root / "Protocol", root):
        if (candidate / "Pair_list_F.txt").is_file():
            return candidate
    raise PairsProtocolError(f"{root}: not a CFP tree (no Protocol/Pair_list_F.txt)")


def _cfp_list(path: Path) -> dict[str, tuple[Path, int]]:
    """``Pair_list_X.txt``: number -> (image path, line number)."""
    mapping: dict[str, tuple[Path, int]] = {}
    for number, line in enumerate(_read_lines(path), start=1):
        fields = line.split(maxsplit=1)
        if not fields:
            continue
        if len(fields) != 2:
            raise PairsProtocolError(f"{path}:{number}: expected 'number relative/path.jpg', got {line.strip()!r}")
        mapping[fields[0]] = ((path.parent / fields[1].strip()), number)
    return mapping


def parse_cfp(root: str | Path, split: str = "FF") -> list[Pair]:
    """Pairs of the CFP frontal-frontal (``FF``) or frontal-profile (``FP``) protocol."""
    split = split.upper()
    if split not in ("FF", "FP"):
        raise PairsProtocolError(f"CFP split {split!r}: expected FF or FP")
    protocol = _cfp_protocol_dir(Path(root))
    exists = _Exists()
    frontal = _cfp_list(protocol / "Pair_list_F.txt")
    profile = frontal if split == "FF" else _cfp_list(protocol / "Pair_list_P.txt")
    split_dir = protocol / "Split" / split
    fold_dirs = sorted(d for d in split_dir.iterdir() if d.is_dir()) if split_dir.is_dir() else []
    if not fold_dirs:
        raise PairsProtocolError(f"{split_dir}: no fold folders (expected 01..10)")
    pairs: list[Pair] = []
    for fold, fold_dir in enumerate(fold_dirs):
        for name, same in (("same.txt", True), ("diff.txt", False)):
            path = fold_dir / name
            for number, line in enumerate(_read_lines(path), start=1):
                if not line.strip():
                    continue
                fields = [f.strip() for f in line.split(",")]
                where = f"{path}:{number}"
                if len(fields) != 2:
                    raise PairsProtocolError(f"{where}: expected 'a,b', got {line.strip()!r}")
                images = []
                for key, table, label in ((fields[0], frontal, "Pair_list_F"), (fields[1], profile,
                                          "Pair_list_F" if split == "FF" else "Pair_list_P")):
                    if key not in table:
                        raise PairsProtocolError(f"{where}: {key} is not in {label}.txt ({line.strip()!r})")
                    image, list_line = table[key]
                    if not exists(image):
                        raise PairsProtocolError(
                            f"{where}: image {image} ({label}.txt line {list_line}) does not exist ({line.strip()!r})"
                        )
                    images.append(image)
                pairs.append(Pair(images[0], images[1], same, fold))
    if not pairs:
        raise PairsProtocolError(f"{split_dir}: no pairs")
    return pairs


# ---------------------------------------------------------------- folder per person


def parse_people(root: str | Path) -> tuple[list[Path], list[str]]:
    """Images of a folder-per-person tree (``root/<person>/*.jpg``), or a flat folder with ``identity.txt``."""
    root = Path(root)
    if not root.is_dir():
        raise PairsProtocolError(f"people folder {root} does not exist")
    paths: list[Path] = []
    people: list[str] = []
    labels = root / "identity.txt"
    if labels.is_file():
        # The CelebA layout: one flat folder and "file identity" lines.
        for line_no, line in enumerate(labels.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            parts = line.split()
            if len(parts) < 2:
                continue
            image = root / parts[0]
            if not image.is_file():
                raise PairsProtocolError(f"{labels}:{line_no}: {parts[0]} does not exist")
            paths.append(image)
            people.append(parts[1])
    for person in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and not labels.is_file()):
        for image in sorted(person.rglob("*")):
            if is_image_file(image):
                paths.append(image)
                people.append(person.name)
    if len(set(people)) < 2:
        raise PairsProtocolError(
            f"{root}: needs a folder per person with at least two people (found {len(set(people))}); "
            "impostor pairs come from different people"
        )
    return paths, people


def people_pairs(people: list[str]) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """All genuine (same folder) and impostor (different folders) index pairs, i < j."""
    genuine, impostor = [], []
    for i, j in itertools.combinations(range(len(people)), 2):
        (genuine if people[i] == people[j] else impostor).append((i, j))
    return genuine, impostor


def load_protocol(name: str, root: str | Path, pairs_file: str | Path | None = None) -> list[Pair]:
    """``lfw`` (``pairs_file`` defaults to ``root/pairs.txt``), ``cfp-ff`` or ``cfp-fp``."""
    name = name.lower()
    if name == "lfw":
        root = Path(root)
        return parse_lfw(Path(pairs_file) if pairs_file else root / "pairs.txt", root)
    if name in ("cfp-ff", "cfp-fp"):
        if pairs_file:
            raise PairsProtocolError("--pairs is for the LFW layout; CFP reads its own Protocol/ folder")
        return parse_cfp(root, name.split("-")[1])
    raise PairsProtocolError(f"unknown protocol {name!r}: expected one of {', '.join(PROTOCOLS)}")
