"""One exception hierarchy for the whole runtime.

Every failure the appliance can meet maps to one of these; the CLI turns them
into a clear message and a distinct exit status, and the service treats any of
them as "keep the door locked".
"""


class EdgeError(Exception):
    """Base of every error raised on purpose by the runtime."""

    exit_code = 1


class ConfigError(EdgeError):
    """The configuration file or an option is invalid."""

    exit_code = 78  # EX_CONFIG: systemd shows it as "config" in status


class ModelError(EdgeError):
    """A model bundle is missing, unreadable or unusable."""

    exit_code = 66  # EX_NOINPUT


class ModelIntegrityError(ModelError):
    """A model file does not match the sha256 in its manifest."""

    exit_code = 65  # EX_DATAERR


class ModelFormatError(ModelError):
    """A model file with a valid sha256 that the runtime cannot load: bad data, not a missing runtime."""

    exit_code = 65  # EX_DATAERR


class RuntimeShimError(ModelError):
    """No usable TFLite runtime (missing, or broken by the installed numpy)."""

    exit_code = 69  # EX_UNAVAILABLE


class CameraError(EdgeError):
    """The frame source could not be opened or stopped delivering frames."""

    exit_code = 74  # EX_IOERR


class SocketError(EdgeError):
    """A unix socket cannot be served or reached (edge/sockets.py: the door's and the control socket's layer)."""

    exit_code = 69  # EX_UNAVAILABLE


class SocketInUseError(SocketError):
    """Another live process already serves that socket path, so it is not replaced."""


class SocketTimeoutError(SocketError):
    """A peer did not connect, answer or finish its line before the deadline."""

    exit_code = 75  # EX_TEMPFAIL: a busy peer may answer the next time


class ProtocolError(SocketError):
    """A peer broke the JSON-line framing: not UTF-8 JSON, not an object, or a line over the size limit."""

    exit_code = 76  # EX_PROTOCOL


class LineTooLongError(ProtocolError):
    """A line longer than the socket's limit: refused before it is buffered any further."""


class DoorError(EdgeError):
    """The door actuator cannot do its job: the relay or door contact GPIO cannot be used."""

    exit_code = 69  # EX_UNAVAILABLE


class DoorUnavailable(DoorError):
    """The recognizer's side: the actuator did not answer (not running, socket missing, timeout, garbage)."""


class ImageError(EdgeError):
    """An image file is unreadable, corrupt, too large or of an unsupported kind."""

    exit_code = 65


class FaceError(EdgeError):
    """An image has no usable face, or more than one where one is required."""

    exit_code = 65


class NoFaceError(FaceError):
    """No face passed the detector's size and score limits."""


class MultipleFacesError(FaceError):
    """Several faces where exactly one is required (enrollment refuses ambiguity)."""


class GalleryError(EdgeError):
    """The SQLite gallery cannot be opened, read or written."""

    exit_code = 73  # EX_CANTCREAT


class ModelMismatchError(GalleryError):
    """The gallery was enrolled with a different embedder than the one loaded."""

    exit_code = 65


class InvalidNameError(GalleryError):
    """A person's name that cannot be stored (empty, too long, invisible or direction-changing characters)."""

    exit_code = 65  # EX_DATAERR: bad input, not a gallery that cannot be written


class NameTakenError(GalleryError):
    """Another enrolled person already has that name (rename, import)."""

    exit_code = 65


class PersonNotFoundError(GalleryError):
    """No enrolled person has that name."""

    exit_code = 67  # EX_NOUSER


class TuningError(EdgeError):
    """A liveness recording or report that cannot be made (no real faces recorded, an unreadable session file)."""

    exit_code = 65  # EX_DATAERR


class SyncError(EdgeError):
    """Gallery sync cannot run: a key file, the site key list or the broker settings are unusable."""

    exit_code = 69  # EX_UNAVAILABLE


class PayloadRefused(SyncError):
    """A sync message that is not applied: bad signature, unknown unit, another site or model, malformed."""

    exit_code = 65  # EX_DATAERR

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason  # a short code counted in the status view: signature, unit, model, site, format
