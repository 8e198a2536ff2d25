"""Errors of the enrollment tools (all :class:`edge.errors.EdgeError`, so the CLI maps them to exit codes)."""

from ..errors import EdgeError


class EnrollmentError(EdgeError):
    """An enrollment did not complete (timeout, cancelled, refused); nothing was saved."""

    exit_code = 75  # EX_TEMPFAIL: try again


class ServiceNotRunning(EnrollmentError):
    """No recognizer service listens on the control socket."""


class ControlPermissionError(EnrollmentError):
    """The caller may not use the control socket (file mode or SO_PEERCRED check)."""

    exit_code = 77  # EX_NOPERM


class TransferError(EnrollmentError):
    """An export file is corrupt, truncated, of another format or of another model."""

    exit_code = 65  # EX_DATAERR
