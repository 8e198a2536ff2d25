"""One person's state (or tombstone) as one signed MQTT message.

Wire format (UTF-8 JSON)::

    {"body": {...}, "sig": "<base64 Ed25519 signature>"}

The signature covers ``b"edge-sync/1\\n" + canonical(body)`` (keys sorted, no spaces, ASCII), made by
``body.unit``'s key from the site key list. A person's body::

    {"format": "edge-sync/1", "kind": "person", "site": S, "uuid": U, "unit": origin, "version": N,
     "at": t, "name": "...", "created_at": t, "model_id": "<the site model>",
     "samples": [{"model_id", "capture_id", "dtype", "dim", "scale", "quality", "source", "created_at",
                  "embedding": "<base64 of the stored bytes>"}, ...]}

A tombstone's body carries no name and no biometric data::

    {"format": "edge-sync/1", "kind": "tombstone", "site": S, "uuid": U, "unit": origin, "version": N,
     "at": t, "forgotten": true|false}

Crops never travel: they stay on the unit where the person was enrolled.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from dataclasses import dataclass

from ..errors import PayloadRefused
from ..gallery import SAMPLE_FIELDS, decode_embedding

FORMAT = "edge-sync/1"
DOMAIN = b"edge-sync/1\n"
MAX_BYTES = 1 << 20  # a person with 100 float32 samples of 512-D is ~300 KB
_UUID_RE = re.compile(r"[0-9a-f]{32}")


def canonical(body: dict) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def sign(body: dict, private_key) -> bytes:
    signature = private_key.sign(DOMAIN + canonical(body))
    return json.dumps({"body": body, "sig": base64.b64encode(signature).decode()},
                      separators=(",", ":"), ensure_ascii=True).encode()


def person_body(record: dict, *, site: str, unit: str, model_id: str) -> dict:
    """The body of a gallery record (:meth:`Gallery.sync_record`, kind "person") this unit publishes."""
    return {
        "format": FORMAT, "kind": "person", "site": site, "uuid": record["uuid"], "unit": unit,
        "version": int(record["version"]), "at": time.time(), "name": record["name"],
        "created_at": record.get("created_at"), "model_id": model_id,
        "samples": [{**{k: s.get(k) for k in SAMPLE_FIELDS},
                     "embedding": base64.b64encode(s["embedding"]).decode()} for s in record["samples"]],
    }


def tombstone_body(record: dict, *, site: str, unit: str) -> dict:
    return {"format": FORMAT, "kind": "tombstone", "site": site, "uuid": record["uuid"], "unit": unit,
            "version": int(record["version"]), "at": record.get("removed_at") or time.time(),
            "forgotten": bool(record["forgotten"])}


@dataclass(frozen=True)
class Verified:
    """A body whose signature, unit, site and shape are checked; person samples' embeddings decoded to bytes."""

    body: dict

    @property
    def kind(self) -> str:
        return self.body["kind"]

    @property
    def unit(self) -> str:
        return self.body["unit"]

    def record(self) -> dict:
        """The gallery record (:meth:`Gallery.put_remote_person`) of a person body."""
        b = self.body
        return {"uuid": b["uuid"], "name": b["name"], "version": b["version"], "created_at": b.get("created_at"),
                "samples": [{**s, "embedding": base64.b64decode(s["embedding"])} for s in b["samples"]]}


def _need(cond: bool, reason: str, message: str) -> None:
    if not cond:
        raise PayloadRefused(reason, message)


def verify(data: bytes, *, topic_uuid: str, site: str, keys, models: dict[str, str] | None = None) -> Verified:
    """Check a message from the broker; PayloadRefused (with a reason code) when it must not be applied.

    ``models`` (exported id -> id stored here, this unit's main model first, see
    :func:`edge.enrollment.transfer.model_map`): a person of another site model is refused.
    Tombstones are applied whatever the model: a forget must reach every door.
    """
    _need(len(data) <= MAX_BYTES, "format", f"message of {len(data)} bytes is over {MAX_BYTES}")
    try:
        message = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise PayloadRefused("format", "not JSON") from None
    _need(isinstance(message, dict) and isinstance(message.get("body"), dict), "format", "no body")
    body = message["body"]
    _need(isinstance(message.get("sig"), str), "unsigned", "unsigned message")
    unit = body.get("unit")
    _need(body.get("format") == FORMAT, "format", f"format {body.get('format')!r} is not {FORMAT}")
    _need(body.get("site") == site, "site", f"for site {body.get('site')!r}, this unit is in {site!r}")
    _need(body.get("uuid") == topic_uuid and bool(_UUID_RE.fullmatch(topic_uuid)), "format",
          f"person id {body.get('uuid')!r} does not match the topic's {topic_uuid!r}")
    _need(isinstance(unit, str) and unit in keys, "unit", f"unit {unit!r} is not in the site key list")
    try:
        signature = base64.b64decode(message["sig"], validate=True)
        keys.get(unit).verify(signature, DOMAIN + canonical(body))
    except (ValueError, binascii.Error, TypeError):
        raise PayloadRefused("signature", f"malformed signature claiming unit {unit}") from None
    except Exception as exc:  # cryptography's InvalidSignature
        if type(exc).__name__ != "InvalidSignature":
            raise
        raise PayloadRefused("signature", f"signature does not verify with unit {unit}'s key") from None
    version = body.get("version")
    _need(isinstance(version, int) and not isinstance(version, bool) and version >= 1, "format", "bad version")
    kind = body.get("kind")
    if kind == "tombstone":
        _need(isinstance(body.get("forgotten"), bool), "format", "tombstone without forgotten")
        return Verified(body)
    _need(kind == "person", "format", f"unknown kind {kind!r}")
    _need(isinstance(body.get("name"), str) and isinstance(body.get("samples"), list), "format",
          "person without name or samples")
    if models is not None:
        main = next(iter(models.values()))
        _need(models.get(body.get("model_id")) == main, "model",
              f"unit {unit} enrolled this person with model {body.get('model_id')}, the site's model, but this "
              f"unit runs {main}: embeddings of different models cannot be compared. Run the site's bundle here "
              "(embedder.model), or move the whole site: on the unit where each person was enrolled, switch the "
              "bundle and run 'edge enroll reembed' (re-embeds kept crops), then re-enroll the others")
    for sample in body["samples"]:
        try:
            blob = base64.b64decode(sample["embedding"], validate=True)
            decode_embedding(blob, sample["dtype"], int(sample["dim"]), sample.get("scale"))
            _need(isinstance(sample.get("model_id"), str), "format", "sample without model id")
        except PayloadRefused:
            raise
        except Exception as exc:
            raise PayloadRefused("format", f"a sample does not decode ({exc})") from None
    return Verified(body)
