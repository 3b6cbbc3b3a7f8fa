"""Errors that carry the gRPC status a caller should see.

Pure: the status is a name (``"PERMISSION_DENIED"``), mapped to ``grpc.StatusCode``
only at the service edge, so domain code never imports gRPC.
"""

from __future__ import annotations


class BecoError(Exception):
    """An error with the gRPC status name and a message for the caller."""

    code = "INTERNAL"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class InvalidArgument(BecoError):
    code = "INVALID_ARGUMENT"


class NotFound(BecoError):
    code = "NOT_FOUND"


class AlreadyExists(BecoError):
    code = "ALREADY_EXISTS"


class PermissionDenied(BecoError):
    code = "PERMISSION_DENIED"


class Unauthenticated(BecoError):
    code = "UNAUTHENTICATED"


class FailedPrecondition(BecoError):
    code = "FAILED_PRECONDITION"


class Unavailable(BecoError):
    code = "UNAVAILABLE"
