"""Ed25519 keys: each unit signs its own changes; the site key list says which unit holds which public key.

Site key list (``fleet.site_keys``), one unit a line, ``#`` comments::

    door-lobby ed25519 3q2+7w...base64 of the 32-byte public key...=
"""

from __future__ import annotations

import base64
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import SyncError

_UNIT_RE = re.compile(r"[A-Za-z0-9_-]+")


def _crypto():
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError as exc:
        raise SyncError("gallery sync needs the cryptography package (pip install 'edge-door[sync]', "
                        "or apt install python3-cryptography)") from exc
    return serialization, ed25519


def public_line(unit: str, public_key) -> str:
    serialization, _ = _crypto()
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return f"{unit} ed25519 {base64.b64encode(raw).decode()}"


def generate(path: Path, unit: str, *, force: bool = False) -> str:
    """Write a new private key to ``path`` (PEM, mode 0600); returns the site key list line."""
    serialization, ed25519 = _crypto()
    if not _UNIT_RE.fullmatch(unit):
        raise SyncError(f"unit name {unit!r} may only hold letters, digits, _ and -")
    path = Path(path)
    if path.exists() and not force:
        raise SyncError(f"{path} exists; a unit keeps its key (use --force to replace it, then update the site key list)")
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return public_line(unit, key.public_key())


def load_private(path: Path):
    serialization, ed25519 = _crypto()
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SyncError(f"fleet.signing_key {path}: cannot read: {exc.strerror or exc}") from exc
    if path.stat().st_mode & 0o077:
        raise SyncError(f"fleet.signing_key {path}: readable by group or others (mode "
                        f"{path.stat().st_mode & 0o777:o}); chmod 600 it")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise SyncError(f"fleet.signing_key {path}: not an unencrypted PEM private key ({exc})") from exc
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise SyncError(f"fleet.signing_key {path}: not an Ed25519 key")
    return key


@dataclass(frozen=True)
class SiteKeys:
    """unit -> Ed25519 public key."""

    keys: dict

    def __contains__(self, unit: str) -> bool:
        return unit in self.keys

    def get(self, unit: str):
        return self.keys.get(unit)

    def units(self) -> list[str]:
        return sorted(self.keys)

    @classmethod
    def from_text(cls, text: str, where: str = "site key list") -> "SiteKeys":
        _, ed25519 = _crypto()
        keys = {}
        for number, line in enumerate(text.splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            if len(parts) != 3 or parts[1] != "ed25519" or not _UNIT_RE.fullmatch(parts[0]):
                raise SyncError(f"{where} line {number}: expected '<unit> ed25519 <base64 key>'")
            try:
                raw = base64.b64decode(parts[2], validate=True)
                key = ed25519.Ed25519PublicKey.from_public_bytes(raw)
            except ValueError as exc:
                raise SyncError(f"{where} line {number}: not a 32-byte base64 Ed25519 public key") from exc
            if parts[0] in keys:
                raise SyncError(f"{where} line {number}: unit {parts[0]} is listed twice")
            keys[parts[0]] = key
        return cls(keys)

    @classmethod
    def load(cls, path: Path) -> "SiteKeys":
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise SyncError(f"fleet.site_keys {path}: cannot read: {exc}") from exc
        return cls.from_text(text, f"fleet.site_keys {path}")
