"""Gallery sync (edge/sync/): signed payloads, the conflict rule, and three units over a real mosquitto."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
import uuid

import numpy as np
import pytest

pytest.importorskip("cryptography")
pytest.importorskip("paho.mqtt.client")

from edge.errors import PayloadRefused  # noqa: E402
from edge.gallery import Gallery  # noqa: E402
from edge.sync import keys, payload, state  # noqa: E402
from edge.sync.conflict import Stamp, remote_wins  # noqa: E402

from .conftest import FIXTURES, MODELS, ROOT  # noqa: E402
from .sync_helpers import SITE, Broker, Unit, mosquitto_binary, wait_for, write_site_keys  # noqa: E402

MODEL = "model-x:0123456789abcdef"
MODELS_MAP = {MODEL: MODEL}


@pytest.fixture
def site(tmp_path):
    """Two units' keys and the site key list."""
    lines, private = [], {}
    for unit in ("a", "b"):
        lines.append(keys.generate(tmp_path / f"{unit}.key", unit))
        private[unit] = keys.load_private(tmp_path / f"{unit}.key")
    return private, keys.SiteKeys.from_text("\n".join(lines))


def person_message(key, unit="a", *, version=1, name="Ada", person_uuid=None, model=MODEL, site_name=SITE):
    vector = np.random.default_rng(0).normal(size=128).astype(np.float32)
    record = {"uuid": person_uuid or uuid.uuid4().hex, "name": name, "version": version, "created_at": 1.0,
              "samples": [{"model_id": model, "capture_id": "c1", "dtype": "float32", "dim": 128, "scale": None,
                           "quality": None, "source": None, "created_at": 1.0,
                           "embedding": (vector / np.linalg.norm(vector)).tobytes()}]}
    body = payload.person_body(record, site=site_name, unit=unit, model_id=model)
    return record["uuid"], payload.sign(body, key)


def verify(data, person_uuid, site_keys, models=MODELS_MAP):
    return payload.verify(data, topic_uuid=person_uuid, site=SITE, keys=site_keys, models=models)


# -- payloads ------------------------------------------------------------------------------------
def test_a_signed_person_verifies_and_round_trips(site):
    private, site_keys = site
    person_uuid, data = person_message(private["a"])
    verified = verify(data, person_uuid, site_keys)
    assert verified.kind == "person" and verified.unit == "a"
    assert len(verified.record()["samples"][0]["embedding"]) == 512


def refusal(data, person_uuid, site_keys, models=MODELS_MAP) -> str:
    with pytest.raises(PayloadRefused) as info:
        verify(data, person_uuid, site_keys, models)
    return info.value.reason


def test_forged_unsigned_unknown_unit_wrong_model_and_tampered_are_refused(site, tmp_path):
    private, site_keys = site
    person_uuid, good = person_message(private["a"])
    message = json.loads(good)
    # Signed by b's key but claiming to be a: the signature does not verify with a's key.
    _, by_b = person_message(private["b"], "a", person_uuid=person_uuid)
    assert json.loads(by_b)["body"]["unit"] == "a"
    assert refusal(by_b, person_uuid, site_keys) == "signature"
    # Unsigned.
    assert refusal(json.dumps({"body": message["body"]}).encode(), person_uuid, site_keys) == "unsigned"
    # A unit that is not in the site key list, with a perfectly good key of its own.
    keys.generate(tmp_path / "rogue.key", "rogue")
    _, rogue = person_message(keys.load_private(tmp_path / "rogue.key"), "rogue", person_uuid=person_uuid)
    assert refusal(rogue, person_uuid, site_keys) == "unit"
    # Another site model: refused, saying which model the site uses and how to move.
    with pytest.raises(PayloadRefused) as info:
        verify(good, person_uuid, site_keys, {"other:1": "other:1"})
    assert info.value.reason == "model" and MODEL in str(info.value) and "reembed" in str(info.value)
    # One embedding value changed after signing.
    tampered = json.loads(good)
    blob = bytearray(base64.b64decode(tampered["body"]["samples"][0]["embedding"]))
    blob[0] ^= 1
    tampered["body"]["samples"][0]["embedding"] = base64.b64encode(bytes(blob)).decode()
    assert refusal(json.dumps(tampered).encode(), person_uuid, site_keys) == "signature"
    # A renamed person, a replay onto another person's topic, another site, not JSON.
    renamed = json.loads(good)
    renamed["body"]["name"] = "Mallory"
    assert refusal(json.dumps(renamed).encode(), person_uuid, site_keys) == "signature"
    assert refusal(good, uuid.uuid4().hex, site_keys) == "format"
    _, elsewhere = person_message(private["a"], person_uuid=person_uuid, site_name="other-site")
    assert refusal(elsewhere, person_uuid, site_keys) == "site"
    assert refusal(b"\x00garbage", person_uuid, site_keys) == "format"


def test_a_tombstone_is_applied_whatever_the_model(site):
    private, site_keys = site
    body = payload.tombstone_body({"uuid": uuid.uuid4().hex, "version": 3, "forgotten": True}, site=SITE, unit="b")
    verified = verify(payload.sign(body, private["b"]), body["uuid"], site_keys, {"other:1": "other:1"})
    assert verified.kind == "tombstone" and "name" not in verified.body and "samples" not in verified.body


def test_keygen_writes_a_private_key_only_its_owner_reads(tmp_path):
    line = keys.generate(tmp_path / "k", "door-1")
    assert (tmp_path / "k").stat().st_mode & 0o777 == 0o600 and line.startswith("door-1 ed25519 ")
    with pytest.raises(Exception, match="exists"):
        keys.generate(tmp_path / "k", "door-1")


# -- the conflict rule ---------------------------------------------------------------------------
def test_last_writer_wins_by_version_then_unit_and_forget_wins():
    assert remote_wins(Stamp(2, "a"), Stamp(1, "z"))
    assert not remote_wins(Stamp(1, "z"), Stamp(2, "a"))
    assert remote_wins(Stamp(2, "b"), Stamp(2, "a")) and not remote_wins(Stamp(2, "a"), Stamp(2, "b"))
    assert not remote_wins(Stamp(2, "a"), Stamp(2, "a"))  # its own message coming back
    assert remote_wins(Stamp(1, "a", forgotten=True), Stamp(9, "z"))  # forget beats a newer concurrent update
    assert not remote_wins(Stamp(99, "z"), Stamp(1, "a", forgotten=True))  # and is final
    assert remote_wins(Stamp(1, "a"), None)


def test_applying_states_renames_and_a_remote_forget_erases_the_bytes(site, tmp_path):
    private, site_keys = site
    gallery = Gallery(tmp_path / "g.db")
    person_uuid, data = person_message(private["a"], version=1)
    blob = verify(data, person_uuid, site_keys).record()["samples"][0]["embedding"]
    assert state.apply(gallery, verify(data, person_uuid, site_keys), self_unit="b", models=MODELS_MAP).action == "created"
    assert state.apply(gallery, verify(data, person_uuid, site_keys), self_unit="b", models=MODELS_MAP).action == "stale"
    _, renamed = person_message(private["a"], version=2, name="Ada L", person_uuid=person_uuid)
    assert state.apply(gallery, verify(renamed, person_uuid, site_keys), self_unit="b",
                       models=MODELS_MAP).action == "updated"
    assert [p.name for p in gallery.people()] == ["Ada L"]
    # A local rename is this unit's change: version 3, origin this unit, published from here.
    gallery.rename("Ada L", "Ada Lovelace")
    record = gallery.sync_record(person_uuid)
    assert (record["version"], record["unit"]) == (3, None)
    assert [c["person_uuid"] for c in gallery.local_changes(0)] == [person_uuid]
    message = state.own_message(gallery, person_uuid, site=SITE, unit="b", model_id=MODEL, key=private["b"])
    assert verify(message, person_uuid, site_keys).body["name"] == "Ada Lovelace"
    # An older concurrent update from a loses; a forget of any version wins and erases the bytes.
    _, older = person_message(private["a"], version=2, name="Old", person_uuid=person_uuid)
    assert state.apply(gallery, verify(older, person_uuid, site_keys), self_unit="b", models=MODELS_MAP).action == "stale"
    forget = payload.sign(payload.tombstone_body({"uuid": person_uuid, "version": 1, "forgotten": True},
                                                 site=SITE, unit="a"), private["a"])
    assert state.apply(gallery, verify(forget, person_uuid, site_keys), self_unit="b",
                       models=MODELS_MAP).action == "forgotten"
    assert gallery.people() == [] and gallery.tombstones()[0]["forgotten"]
    _, later = person_message(private["a"], version=9, person_uuid=person_uuid)
    assert state.apply(gallery, verify(later, person_uuid, site_keys), self_unit="b",
                       models=MODELS_MAP).action == "refused_forgotten"
    gallery.close()
    for path in tmp_path.glob("g.db*"):
        assert blob not in path.read_bytes(), path


# -- three units over a real broker --------------------------------------------------------------
needs_broker = pytest.mark.skipif(mosquitto_binary() is None, reason="mosquitto is absent (apt install mosquitto)")
needs_models = pytest.mark.skipif(not (MODELS / "sface-int8" / "manifest.json").exists(), reason="no sface-int8")


@pytest.fixture
def fleet(tmp_path):
    broker = Broker(tmp_path / "broker").start()
    units = [Unit(tmp_path, name, broker.port) for name in ("a", "b", "c")]
    write_site_keys(units)
    yield broker, units
    for unit in units:
        unit.stop()
    broker.stop()


def embedding_blobs(unit: Unit, name: str) -> list[bytes]:
    with Gallery(unit.gallery_path, create=False) as gallery:
        return [s["embedding"] for p in gallery.snapshot([name]) for s in p["samples"]]


@needs_broker
@needs_models
def test_three_units_share_people_forget_everywhere_survive_broker_restart_and_catch_up(fleet):
    broker, (a, b, c) = fleet
    check = a.edge("check-config", "--for", "sync")
    assert "signing key matches the site key list (3 units" in check.stderr
    for unit in (a, b, c):
        unit.start()
    # Enroll on A: it appears on B and C, under the same person id.
    a.edge("enroll", "files", "Alice", str(FIXTURES / "person_a_1.jpg"))
    alice = a.people()["Alice"]
    blobs = embedding_blobs(a, "Alice")
    wait_for(lambda: all(u.people().get("Alice") == alice for u in (b, c)), 30, "Alice on B and C")
    assert embedding_blobs(b, "Alice") == blobs
    # Forget on B: gone everywhere, and the embedding bytes are gone from every SQLite file.
    b.edge("enroll", "forget", "Alice")
    wait_for(lambda: all("Alice" not in u.people() for u in (a, c)), 30, "Alice forgotten on A and C")
    for unit in (a, b, c):
        # The applying unit VACUUMs right after the forget; give it the moment to finish.
        def erased():
            files = list(unit.gallery_path.parent.glob("gallery.db*"))
            return all(blob not in f.read_bytes() for f in files for blob in blobs)
        wait_for(erased, 10, f"Alice's embedding bytes gone from {unit.name}'s files")
    # The broker killed mid-way: A keeps working on its own gallery, and converges once it is back.
    broker.kill()
    a.edge("enroll", "files", "Bob", str(FIXTURES / "person_b_1.jpg"))
    assert "Bob" in a.edge("enroll", "list").stdout
    time.sleep(0.5)
    assert "Bob" not in b.people()
    wait_for(lambda: a.status().get("pending", 0) >= 1 and not a.status().get("connected"), 10, "A to see it is offline")
    broker.start()
    wait_for(lambda: all("Bob" in u.people() for u in (b, c)), 60, "Bob on B and C after the broker restart")
    # C offline while changes happen; it catches up when it is back.
    c.stop()
    a.edge("enroll", "files", "Carol", str(FIXTURES / "impostor_1.jpg"))
    b.edge("enroll", "rename", "Bob", "Robert")
    wait_for(lambda: {"Carol", "Robert"} <= set(a.people()) and {"Carol", "Robert"} <= set(b.people()), 30,
             "Carol and Robert on A and B")
    assert set(c.people()) == {"Bob"}
    c.start()
    wait_for(lambda: set(c.people()) == {"Carol", "Robert"}, 30, "C to catch up")
    assert a.people() == b.people() == c.people()
    status = b.edge("sync", "status").stdout
    assert "connected" in status and "peers: a (online" in status and "pending changes" in status
    # The audit trail says which unit changed what.
    with Gallery(c.gallery_path, create=False) as gallery:
        synced = [json.loads(e["detail"]) for e in gallery.events(limit=100, kind="synced")]
    assert {(d["unit"], d["change"]) for d in synced} >= {("a", "created"), ("b", "forgotten"), ("b", "updated")}


@needs_broker
@needs_models
def test_forged_and_unsigned_payloads_from_the_broker_are_refused_and_counted(fleet, tmp_path):
    from edge.service.sinks import _paho_client

    broker, (a, b, c) = fleet
    b.start()
    wait_for(lambda: b.status().get("connected"), 20, "B connected")
    forger = keys.load_private(a.key)  # a's key, but the message claims unit c: forged
    person_uuid, forged = person_message(forger, "c", model="sface")
    _, unsigned_data = person_message(forger, "a")
    unsigned = json.dumps({"body": json.loads(unsigned_data)["body"]}).encode()
    unsigned_uuid = json.loads(unsigned)["body"]["uuid"]
    client = _paho_client("forger")
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    for topic_uuid, data in ((person_uuid, forged), (unsigned_uuid, unsigned)):
        client.publish(f"edge/{SITE}/people/{topic_uuid}", data, qos=1, retain=True).wait_for_publish(5)
    client.disconnect()
    client.loop_stop()
    wait_for(lambda: b.status().get("refused", {}) == {"signature": 1, "unsigned": 1}, 20, "two refusals")
    assert b.people() == {}
    log = b.log.read_text()
    assert "WARNING" in log and "refused" in log and "signature does not verify with unit c's key" in log


def _tls_files(folder):
    """A throw-away CA and a server certificate for 127.0.0.1 (what a site makes once with openssl)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def write_key(key, path):
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edge test site CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(1).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(ca_key, hashes.SHA256()))
    server = (x509.CertificateBuilder()
              .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
              .issuer_name(ca_name).public_key(server_key.public_key()).serial_number(2)
              .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
              .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                             critical=False).sign(ca_key, hashes.SHA256()))
    paths = {name: folder / f"{name}.pem" for name in ("ca", "server", "server-key")}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["server"].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    write_key(server_key, paths["server-key"])
    return paths


@needs_broker
@needs_models
def test_tls_per_unit_passwords_and_the_shipped_acl(tmp_path):
    """mqtts with the site's CA, one broker user per unit, the ACL example from firmware_config as shipped."""
    import shutil as _shutil

    folder = tmp_path / "tls"
    folder.mkdir()
    tls = _tls_files(folder)
    acl = folder / "acl.conf"
    acl.write_text((ROOT / "firmware_config" / "mosquitto" / "edge-acl.conf").read_text()
                   .replace("building-1", SITE))
    passwords = folder / "passwd"
    for i, unit in enumerate(("a", "b")):
        subprocess.run([_shutil.which("mosquitto_passwd") or "mosquitto_passwd", "-b", *(["-c"] if i == 0 else []),
                        str(passwords), unit, f"secret-{unit}"], check=True, capture_output=True)
    broker = Broker(tmp_path / "broker")
    broker.conf.write_text(
        f"listener {broker.port} 127.0.0.1\ncafile {tls['ca']}\ncertfile {tls['server']}\n"
        f"keyfile {tls['server-key']}\nallow_anonymous false\npassword_file {passwords}\nacl_file {acl}\n"
        f"persistence true\npersistence_location {broker.root / 'data'}/\n"
        # As root mosquitto drops to its own user before reading the password file, which then sits in a folder
        # only root may enter; a site's broker keeps these files readable by the mosquitto user instead.
        + ("user root\n" if os.geteuid() == 0 else ""))
    broker.start()
    units = [Unit(tmp_path, name, broker.port) for name in ("a", "b", "c")]
    write_site_keys(units)
    try:
        for unit, password in zip(units, ("secret-a", "secret-b", "wrong")):
            (unit.root / "broker-password").write_text(password + "\n")
            text = unit.config.read_text().replace(f"mqtt://127.0.0.1:{broker.port}", f"mqtts://127.0.0.1:{broker.port}")
            text += f'username = "{unit.name}"\npassword_file = "{unit.root / "broker-password"}"\nca_file = "{tls["ca"]}"\n'
            unit.config.write_text(text)
            unit.start()
        a, b, c = units
        a.edge("enroll", "files", "Alice", str(FIXTURES / "person_a_1.jpg"))
        wait_for(lambda: b.people().get("Alice") == a.people()["Alice"], 60, "Alice on B over TLS")
        # C's broker password is wrong: it never gets the people, keeps running, and says why in its status.
        wait_for(lambda: "refused" in str(c.status().get("last_error", "")) or
                 "not authori" in str(c.status().get("last_error", "")).lower(), 30, "C's refusal in its status")
        assert "Alice" not in c.people() and c.process.poll() is None
    finally:
        for unit in units:
            unit.stop()
        broker.stop()
