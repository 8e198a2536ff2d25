"""Configuration: frozen dataclasses that reject unknown keys and out-of-range values.

One TOML file (``/etc/edge/edge.toml`` on a Pi) maps onto :class:`Config`.
Every field has a documented default and bounds; a key the code does not know
is an error, never silently ignored, because a misspelt ``threshold`` on a door
lock must not fall back to a default nobody chose.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import sys
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_MODELS_DIR = PACKAGE_DIR.parent / "models"
DEMO_DIR = PACKAGE_DIR / "demo"


def default_models_dir() -> Path:
    """The checkout's ``models/`` in a source or editable install; else ``models/`` beside the venv.

    A non-editable install (the appliance's ``/opt/edge/venv``) has no checkout
    around its package; ``install.sh --pi`` puts the bundles in ``/opt/edge/models``,
    next to the venv.  A bare ``site-packages/models`` is never taken: any
    package may have put a folder of that name there.
    """
    if (PACKAGE_DIR.parent / "pyproject.toml").is_file():
        return REPO_MODELS_DIR
    return Path(sys.prefix).resolve().parent / "models"


def shown(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters: a 50 MB config value must not be echoed into the journal."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 1]}… ({len(text):,} characters)"


def _field(default: Any, *, lo: float | None = None, hi: float | None = None, choices: tuple | None = None, doc: str = ""):
    return field(default=default, metadata={"lo": lo, "hi": hi, "choices": choices, "doc": doc})


@dataclass(frozen=True)
class CameraConfig:
    source: str = _field("replay", doc="frame source backend: replay, opencv, picamera2, fake, or one a package registers")
    path: str = _field("", doc="replay: folder of images or a video; opencv: /dev/videoN, an index, RTSP URL or file")
    width: int = _field(640, lo=64, hi=4096, doc="main stream width (what faces are cropped from)")
    height: int = _field(480, lo=48, hi=3072, doc="main stream height")
    lores_width: int = _field(320, lo=64, hi=1920, doc="detector input width (lores stream)")
    fps: float = _field(10.0, lo=0.0, hi=120.0, doc="replay pacing; 0 replays as fast as possible")
    loop: bool = _field(False, doc="replay: start again at the end instead of stopping")
    read_timeout: float = _field(5.0, lo=0.1, hi=120.0, doc="seconds without a frame before the camera counts as dead")
    tuning: str = _field("", doc="picamera2: libcamera tuning file, e.g. imx708_noir.json for a NoIR module; "
                                 "empty: the sensor's default")


@dataclass(frozen=True)
class DetectorConfig:
    model: str = _field("yunet", doc="bundle name under models_dir, or a path to a bundle folder")
    score_threshold: float = _field(0.8, lo=0.05, hi=0.999)
    nms_threshold: float = _field(0.3, lo=0.05, hi=0.95)
    min_face_size: int = _field(40, lo=8, hi=2000, doc="shorter box side in main-stream pixels")


@dataclass(frozen=True)
class EmbedderConfig:
    model: str = _field("edgeface-xxs-fp16", doc="bundle name under models_dir, or a path to a bundle folder; "
                                                 "the default's weights are for non-commercial research use only "
                                                 "(WebFace): sface-int8 is the Apache-2.0 choice")
    threads: int = _field(2, lo=1, hi=16, doc="XNNPACK threads")
    runtime: str = _field("auto", choices=("auto", "ai-edge-litert", "tflite-runtime"))
    delegate: str = _field("", doc="TFLite external delegate library for an accelerator (e.g. libedgetpu.so.1 for a "
                                   "Coral; the model must be compiled for it); empty: XNNPACK on the CPU")
    confirm_model: str = _field(
        "", doc="two-stage: an accurate bundle that confirms once before an unlock (empty: off); "
                "enrollment then stores samples of both models"
    )


@dataclass(frozen=True)
class GalleryConfig:
    path: str = _field("gallery.db", doc="SQLite file; relative paths are inside state_dir")
    embedding_dtype: str = _field("float32", choices=("float32", "int8"), doc="how new samples are stored")
    reload_interval: float = _field(1.0, lo=0.05, hi=60.0, doc="seconds between checks for changes by other processes")


@dataclass(frozen=True)
class DecisionConfig:
    threshold: float = _field(0.0, lo=0.0, hi=2.0, doc="L2 distance threshold; 0 uses the model manifest's tuned value")
    margin: float = _field(0.05, lo=0.0, hi=1.0, doc="required lead of the best identity over the runner-up")
    frames_required: int = _field(3, lo=1, hi=100, doc="k: accepted frames of one person needed to grant")
    window_frames: int = _field(5, lo=1, hi=200, doc="n: the last n frames considered")
    window_seconds: float = _field(3.0, lo=0.1, hi=60.0, doc="only frames this recent count")
    cooldown_seconds: float = _field(10.0, lo=0.0, hi=3600.0, doc="no second grant for the same person within this")
    confirm_threshold: float = _field(
        0.0, lo=0.0, hi=2.0, doc="two-stage: L2 threshold of the confirming model; 0 uses its manifest's tuned value"
    )
    face_checks: str = _field("liveness", doc="comma-separated face checks (edge.checks registry) run before "
                                              "embedding; a face one turns down never counts towards a grant; "
                                              "empty: none (a photo or a phone screen can then open the door)")


@dataclass(frozen=True)
class LivenessConfig:
    """The ``liveness`` face check: passive presentation-attack detection (MiniFASNet) before the match."""

    models: str = _field("minifasnet-v2-fp16,minifasnet-v1se-fp16",
                         doc="comma-separated liveness bundles (names under models_dir or paths); their real-face "
                             "probabilities are averaged")
    threshold: float = _field(0.3, lo=0.0, hi=1.0,
                              doc="a face whose averaged real-face probability is below this is a presentation "
                                  "attack; tune it on this door's camera with edge liveness-tune")
    max_face_fraction: float = _field(
        0.66, lo=0.1, hi=1.0,
        doc="a face box spanning more than this share of the frame's width or height is too close for the "
            "liveness crop to see the face's surroundings: it is turned down (not as an attack) and the person "
            "is asked to step back; measured on CelebA photos, see models/minifasnet-v2-fp16/MODEL_CARD.md")
    threads: int = _field(1, lo=1, hi=16, doc="XNNPACK threads of each liveness model")
    measured: str = _field("", doc="what the threshold was measured on (written by edge liveness-tune report --write)")
    alert_attacks: int = _field(3, lo=1, hi=1000, doc="this many spoof decisions within alert_window_seconds raise "
                                                      "a spoof_alert event")
    alert_window_seconds: float = _field(300.0, lo=1.0, hi=86400.0)


@dataclass(frozen=True)
class DemoConfig:
    enroll: bool = _field(False, doc="enroll the bundled demo people into an empty gallery at start")


@dataclass(frozen=True)
class EnrollmentConfig:
    """Live and bulk enrollment: quality gates (measured, see edge/enrollment/quality.py) and the control socket."""

    samples: int = _field(5, lo=1, hi=50, doc="live enrollment: good samples to collect per person")
    timeout: float = _field(120.0, lo=5.0, hi=3600.0, doc="live enrollment gives up (saving nothing) after this many seconds")
    min_sample_interval: float = _field(0.3, lo=0.0, hi=10.0, doc="live: seconds between two accepted samples")
    min_face_px: int = _field(64, lo=20, hi=2000, doc="too far below this shorter face-box side (main-stream pixels)")
    max_face_fraction: float = _field(0.8, lo=0.1, hi=1.0, doc="live: too close above this face height / frame height")
    min_score: float = _field(0.85, lo=0.0, hi=1.0, doc="detector score a sample needs")
    min_sharpness: float = _field(60.0, lo=0.0, hi=10000.0, doc="variance of the Laplacian on the aligned gray crop")
    min_brightness: float = _field(50.0, lo=0.0, hi=255.0, doc="too dark below this mean gray of the aligned crop")
    max_brightness: float = _field(205.0, lo=0.0, hi=255.0, doc="too bright above this mean gray of the aligned crop")
    max_clipped: float = _field(0.15, lo=0.0, hi=1.0, doc="fraction of crop pixels allowed at black or white")
    max_yaw: float = _field(25.0, lo=0.0, hi=90.0, doc="degrees, estimated from the nose offset between the eyes")
    max_pitch: float = _field(25.0, lo=0.0, hi=90.0, doc="degrees, estimated from eye-nose-mouth ratios")
    max_roll: float = _field(20.0, lo=0.0, hi=90.0, doc="degrees, the tilt of the eye line")
    min_sample_distance: float = _field(0.25, lo=0.0, hi=2.0, doc="L2 distance a new sample must keep from those accepted in the session")
    duplicate_warn_margin: float = _field(0.1, lo=0.0, hi=1.0, doc="warn when a new person is within threshold + this of someone enrolled")
    socket_path: str = _field("", doc="control socket; empty: <state_dir>/control.sock (systemd: /run/edge/control.sock)")
    socket_group: str = _field("", doc="group allowed to use the control socket; empty: the service's own group")


_UNIX_PATH_MAX = 107  # sun_path is 108 bytes with the terminating NUL
_NAME_RE = r"[A-Za-z0-9_-]+"


@dataclass(frozen=True)
class DoorConfig:
    """[door]: the relay actuator (``edge door``) and how the recognizer reaches it."""

    socket: str = _field("/run/edge-door/door.sock", doc="actuator unix socket (edge door listens, edge serve connects); empty: no actuator, decisions only")
    pulse_seconds: float = _field(3.0, lo=0.2, hi=30.0, doc="how long one unlock energises the relay")
    max_unlocks_per_minute: int = _field(6, lo=1, hi=60, doc="pulses allowed in any 60 s; more requests are refused")
    flood_requests: int = _field(20, lo=2, hi=1000, doc="more unlock requests than this within flood_window_seconds: relay off, lockout")
    flood_window_seconds: float = _field(10.0, lo=1.0, hi=300.0, doc="window for flood_requests")
    lockout_seconds: float = _field(60.0, lo=1.0, hi=3600.0, doc="after a flood, every unlock is refused for this long")
    relay_pin: int = _field(17, lo=0, hi=53, doc="BCM GPIO number driving the relay")
    active_high: bool = _field(True, doc="true: pin high energises the relay; false for active-low relay boards")
    contact_pin: int = _field(-1, lo=-1, hi=53, doc="BCM GPIO of a door contact (reed switch, closed = door shut); -1: none")
    contact_pull_up: bool = _field(True, doc="contact wired between the pin and GND (internal pull-up); false: to 3V3 with pull-down")
    open_grace_seconds: float = _field(10.0, lo=0.0, hi=300.0, doc="the door may open this long after a pulse ends; later it is 'forced open'")
    left_open_seconds: float = _field(60.0, lo=1.0, hi=3600.0, doc="door open longer than this: a 'door left open' event")
    recognizer_user: str = _field("edge", doc="user name or uid whose unlock requests the actuator accepts (SO_PEERCRED)")
    request_timeout: float = _field(1.0, lo=0.05, hi=10.0, doc="edge serve: seconds to wait for the actuator's reply")
    events_log: str = _field("", doc="edge door: also append relay/contact events as JSON lines to this file; empty: journal only")

    def __post_init__(self) -> None:
        import re

        if len(self.socket.encode()) > _UNIX_PATH_MAX:
            raise ConfigError(f"door.socket: {shown(self.socket)} is longer than {_UNIX_PATH_MAX} bytes (a unix socket path limit)")
        if self.socket.startswith("@"):
            raise ConfigError("door.socket: abstract sockets ('@...') have no file permissions; use a path")
        if len(self.recognizer_user) > 32 or not re.fullmatch(r"[a-z_][a-z0-9_-]*\$?|[0-9]+", self.recognizer_user):
            raise ConfigError(f"door.recognizer_user: {shown(self.recognizer_user)} is not a user name or a numeric uid")
        if self.contact_pin == self.relay_pin:
            raise ConfigError(f"door.contact_pin: GPIO{self.contact_pin} is already door.relay_pin")


@dataclass(frozen=True)
class EventsConfig:
    """[events]: optional sinks beside the journal and the SQLite audit table; both off by default."""

    webhook_url: str = _field("", doc="POST every event as JSON to this http(s) URL; empty: off")
    webhook_timeout: float = _field(5.0, lo=0.5, hi=60.0, doc="seconds per webhook request")
    mqtt_host: str = _field("", doc="MQTT broker host; empty: off (needs the paho-mqtt package)")
    mqtt_port: int = _field(1883, lo=1, hi=65535)
    mqtt_tls: bool = _field(False, doc="connect with TLS (system CA store)")
    mqtt_username: str = _field("", doc="empty: anonymous")
    mqtt_password_file: str = _field("", doc="file holding the MQTT password (keeps the secret out of this file)")
    mqtt_topic_prefix: str = _field("edge", doc="events go to <prefix>/<node_id>/event, availability to .../availability")
    mqtt_discovery_prefix: str = _field("homeassistant", doc="Home Assistant MQTT discovery prefix; empty: no discovery")
    mqtt_node_id: str = _field("door", doc="this unit's id in topics and Home Assistant ([A-Za-z0-9_-])")
    queue_size: int = _field(100, lo=1, hi=10000, doc="events buffered per sink; when full the oldest are dropped")

    def __post_init__(self) -> None:
        import re
        from urllib.parse import urlsplit

        if self.webhook_url:
            parts = urlsplit(self.webhook_url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ConfigError(f"events.webhook_url: {shown(self.webhook_url)} is not an http:// or https:// URL with a host")
        if self.mqtt_host and (any(c.isspace() for c in self.mqtt_host) or "/" in self.mqtt_host):
            raise ConfigError(f"events.mqtt_host: {shown(self.mqtt_host)} is not a host name or address")
        for key in ("mqtt_topic_prefix", "mqtt_discovery_prefix"):
            value = getattr(self, key)
            if any(c in value for c in "+#\0") or value.startswith("/") or value.endswith("/"):
                raise ConfigError(f"events.{key}: {shown(value)} must not contain + or # or start/end with /")
        if not self.mqtt_topic_prefix:
            raise ConfigError("events.mqtt_topic_prefix: must not be empty")
        if not re.fullmatch(_NAME_RE, self.mqtt_node_id):
            raise ConfigError(f"events.mqtt_node_id: {shown(self.mqtt_node_id)} may only hold letters, digits, _ and -")


def parse_broker(url: str) -> tuple[str, str, int]:
    """``mqtt://host[:port]`` or ``mqtts://host[:port]`` -> (scheme, host, port); ConfigError otherwise."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"fleet.broker: {shown(url)} is not a broker URL ({exc})") from exc
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname or parts.path not in ("", "/") \
            or parts.username or parts.query:
        raise ConfigError(f"fleet.broker: {shown(url)} is not mqtt://host[:port] or mqtts://host[:port] "
                          "(credentials go in fleet.username and fleet.password_file)")
    return parts.scheme, parts.hostname, port or (8883 if parts.scheme == "mqtts" else 1883)


@dataclass(frozen=True)
class FleetConfig:
    """[fleet]: many doors sharing one set of people through an MQTT broker (``edge sync``); off by default."""

    broker: str = _field("", doc="mqtt://host[:port] or mqtts://host[:port] (TLS); empty: no sync")
    site: str = _field("", doc="the building: units of one site share their people ([A-Za-z0-9_-])")
    unit: str = _field("", doc="this door's name in the site key list and its changes ([A-Za-z0-9_-])")
    username: str = _field("", doc="broker user (one per unit, see firmware_config/mosquitto/); empty: anonymous")
    password_file: str = _field("", doc="file holding the broker password")
    ca_file: str = _field("", doc="mqtts: CA certificate that signed the broker's; empty: the system CA store")
    cert_file: str = _field("", doc="mqtts: this unit's client certificate (optional)")
    key_file: str = _field("", doc="mqtts: the client certificate's private key")
    signing_key: str = _field("", doc="this unit's Ed25519 private key (edge sync keygen writes it, mode 0600)")
    site_keys: str = _field("", doc="the site key list: one '<unit> ed25519 <base64 public key>' line per unit")
    topic_prefix: str = _field("edge", doc="people are retained at <prefix>/<site>/people/<uuid>")
    poll_interval: float = _field(1.0, lo=0.05, hi=60.0, doc="seconds between looks at the gallery for local changes")
    queue_size: int = _field(1000, lo=10, hi=100000, doc="messages buffered each way; beyond it incoming ones wait "
                                                         "(the broker keeps them) and outgoing ones are retried")
    max_inflight: int = _field(20, lo=1, hi=1000, doc="QoS 1 messages sent and not yet acknowledged")
    keepalive: int = _field(30, lo=5, hi=3600, doc="MQTT keepalive seconds")
    status_file: str = _field("", doc="where edge sync writes its status; empty: <state_dir>/sync-status.json")

    def __post_init__(self) -> None:
        for key in ("site", "unit"):
            value = getattr(self, key)
            if value and not re.fullmatch(_NAME_RE, value):
                raise ConfigError(f"fleet.{key}: {shown(value)} may only hold letters, digits, _ and -")
        prefix = self.topic_prefix
        if not prefix or any(c in prefix for c in "+#\0") or prefix.startswith("/") or prefix.endswith("/"):
            raise ConfigError(f"fleet.topic_prefix: {shown(prefix)} must be non-empty, without + or #, "
                              "not starting or ending with /")
        if self.broker:
            scheme, _, _ = parse_broker(self.broker)
            missing = [k for k in ("site", "unit", "signing_key", "site_keys") if not getattr(self, k)]
            if missing:
                raise ConfigError(f"fleet.broker is set, so fleet.{', fleet.'.join(missing)} must be too")
            if scheme == "mqtt" and (self.ca_file or self.cert_file):
                raise ConfigError("fleet.ca_file / fleet.cert_file are for TLS: use an mqtts:// broker URL")
        if bool(self.cert_file) != bool(self.key_file):
            raise ConfigError("fleet.cert_file and fleet.key_file go together")


@dataclass(frozen=True)
class Config:
    state_dir: str = _field("", doc="gallery and runtime state; empty: $EDGE_STATE_DIR or ~/.local/state/edge")
    models_dir: str = _field("", doc="where bundle names are looked up; empty: $EDGE_MODELS_DIR or the shipped models/")
    log_level: str = _field("info", choices=("debug", "info", "warning", "error"))
    camera: CameraConfig = field(default_factory=CameraConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    embedder: EmbedderConfig = field(default_factory=EmbedderConfig)
    gallery: GalleryConfig = field(default_factory=GalleryConfig)
    decision: DecisionConfig = field(default_factory=DecisionConfig)
    liveness: LivenessConfig = field(default_factory=LivenessConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)
    door: DoorConfig = field(default_factory=DoorConfig)
    events: EventsConfig = field(default_factory=EventsConfig)
    enrollment: EnrollmentConfig = field(default_factory=EnrollmentConfig)
    fleet: FleetConfig = field(default_factory=FleetConfig)
    source_file: str = field(default="", metadata={"internal": True})

    # Resolved locations ---------------------------------------------------
    @property
    def base_dir(self) -> Path:
        return Path(self.source_file).resolve().parent if self.source_file else Path.cwd()

    def resolved_state_dir(self) -> Path:
        if self.state_dir:
            return self._resolve(self.state_dir)
        env = os.environ.get("EDGE_STATE_DIR")
        if env:
            return Path(env)
        xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
        return Path(xdg) / "edge"

    def resolved_models_dir(self) -> Path:
        if self.models_dir:
            return self._resolve(self.models_dir)
        env = os.environ.get("EDGE_MODELS_DIR")
        return Path(env) if env else default_models_dir()

    def model_path(self, value: str) -> Path:
        """A bare name is a bundle in models_dir; anything with a slash is a path."""
        if "/" in value or value.startswith("."):
            return self._resolve(value)
        return self.resolved_models_dir() / value

    def gallery_path(self) -> Path:
        path = Path(self.gallery.path).expanduser()
        return path if path.is_absolute() else self.resolved_state_dir() / path

    def camera_path(self) -> str:
        value = self.camera.path
        if self.camera.source == "replay" and not value:
            return str(DEMO_DIR / "replay")
        if self.camera.source in ("replay",) and value:
            return str(self._resolve(value))
        return value

    def resolve_path(self, value: str) -> Path:
        """A file named in the config: relative to the config file's folder."""
        return self._resolve(value)

    def sync_status_path(self) -> Path:
        value = self.fleet.status_file
        return self._resolve(value) if value else self.resolved_state_dir() / "sync-status.json"

    def _resolve(self, value: str) -> Path:
        path = Path(value).expanduser()
        return path if path.is_absolute() else self.base_dir / path


def _check_value(name: str, value: Any, hint: Any, meta: dict) -> Any:
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name}: expected true or false, got {shown(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name}: expected an integer, got {shown(value)}")
    elif hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name}: expected a number, got {shown(value)}")
        value = float(value)
        # NaN fails every bound check (all comparisons are false) and inf passes one-sided ones:
        # a nan pulse_seconds once held the relay on for good.
        if not math.isfinite(value):
            raise ConfigError(f"{name}: {shown(value)} is not a finite number")
    elif hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name}: expected a string, got {shown(value)}")
    lo, hi, choices = meta.get("lo"), meta.get("hi"), meta.get("choices")
    if lo is not None and value < lo or hi is not None and value > hi:
        raise ConfigError(f"{name}: {shown(value)} is out of range [{lo}, {hi}]")
    if choices is not None and value not in choices:
        raise ConfigError(f"{name}: {shown(value)} is not one of {', '.join(map(str, choices))}")
    return value


def _build(cls, data: Any, prefix: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a table, got {shown(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f" in [{prefix}]" if prefix else ""
        raise ConfigError(
            f"unknown config key{'s' if len(unknown) > 1 else ''} {', '.join(shown(k) for k in unknown)}{where}; "
            f"known keys: {', '.join(sorted(fields))}"
        )
    values = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else key
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            values[key] = _build(hint, value, name)
        else:
            values[key] = _check_value(name, value, hint, fields[key].metadata)
    return cls(**values)


def _cross_check(config: Config) -> None:
    from .camera import CAMERAS  # late: the camera package imports this module

    from .checks import CHECKS, check_names

    unknown = [name for name in check_names(config) if name not in CHECKS.names()]
    if unknown:
        raise ConfigError(f"decision.face_checks: {', '.join(map(shown, unknown))} not registered; "
                          f"known: {', '.join(CHECKS.names()) or 'none installed'}")
    if config.camera.source not in CAMERAS.names():
        raise ConfigError(f"camera.source: {shown(config.camera.source)} is not one of {', '.join(CAMERAS.names())}")
    d = config.decision
    if d.frames_required > d.window_frames:
        raise ConfigError(
            f"decision.frames_required ({d.frames_required}) cannot exceed decision.window_frames ({d.window_frames})"
        )
    if config.camera.lores_width > config.camera.width:
        raise ConfigError(f"camera.lores_width ({config.camera.lores_width}) cannot exceed camera.width ({config.camera.width})")
    e = config.enrollment
    if e.min_brightness >= e.max_brightness:
        raise ConfigError(
            f"enrollment.min_brightness ({e.min_brightness}) must be below enrollment.max_brightness ({e.max_brightness})"
        )


def config_from_dict(data: dict, source_file: str = "") -> Config:
    config = _build(Config, data, "")
    config = dataclasses.replace(config, source_file=source_file)
    _cross_check(config)
    return config


def load_config(path: str | Path | None) -> Config:
    """Load and validate a TOML file; None gives the embedded demo default."""
    if path is None:
        return default_config()
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} does not exist") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc}") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    try:
        return config_from_dict(data, str(path))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def default_config() -> Config:
    """The embedded default: replay camera over the bundled demo sequence and a demo gallery."""
    return config_from_dict({"demo": {"enroll": True}, "camera": {"source": "replay", "fps": 0.0}})


def to_toml(config: Config) -> str:
    """The effective configuration as commented TOML (what ``edge check-config`` prints)."""
    lines: list[str] = []

    def emit(obj, prefix: str) -> None:
        nested = []
        for f in dataclasses.fields(obj):
            if f.metadata.get("internal"):
                continue
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                nested.append((f.name, value))
                continue
            doc = f.metadata.get("doc")
            if doc:
                lines.append(f"# {doc}")
            if isinstance(value, bool):
                rendered = "true" if value else "false"
            elif isinstance(value, str):
                rendered = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
            else:
                rendered = repr(value)
            lines.append(f"{f.name} = {rendered}")
        for name, value in nested:
            lines.append("")
            lines.append(f"[{prefix}{name}]")
            emit(value, f"{prefix}{name}.")

    emit(config, "")
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string with ASCII escapes is a valid TOML basic string
    if isinstance(value, (int, float)) and math.isfinite(value):
        return repr(value)
    raise ConfigError(f"cannot write {shown(value)} into a config file")


def update_config_file(path: str | Path, section: str, values: dict[str, Any]) -> Config:
    """Set ``[section] key = value`` in a config file, keeping every other line and comment as it is.

    The edited text is validated like any config before it replaces the file (atomically, same mode):
    a value the config would refuse never reaches the disk.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        lines = []
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc}") from exc
    header = re.compile(r"^\s*\[\s*" + re.escape(section) + r"\s*\]\s*(#.*)?$")
    any_header = re.compile(r"^\s*\[")
    start = next((i for i, line in enumerate(lines) if header.match(line)), None)
    if start is None:
        if lines and lines[-1].strip():
            lines.append("")
        lines.append(f"[{section}]")
        start = len(lines) - 1
    end = next((i for i in range(start + 1, len(lines)) if any_header.match(lines[i])), len(lines))
    for key, value in values.items():
        assignment = f"{key} = {_toml_value(value)}"
        pattern = re.compile(r"^\s*" + re.escape(key) + r"\s*=")
        found = next((i for i in range(start + 1, end) if pattern.match(lines[i])), None)
        if found is None:
            lines.insert(start + 1, assignment)
            end += 1
        else:
            lines[found] = assignment
    text = "\n".join(lines) + "\n"
    try:
        config = config_from_dict(tomllib.loads(text), str(path))
    except (tomllib.TOMLDecodeError, ConfigError) as exc:
        raise ConfigError(f"{path}: the updated config would not load ({exc}); the file was not changed") from exc
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o7777)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ConfigError(f"config file {path} cannot be written: {exc}") from exc
    return config
