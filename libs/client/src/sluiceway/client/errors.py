"""Typed errors of the Sluiceway APIs, mapped from gRPC status codes."""

from __future__ import annotations

import re

import grpc


class SluicewayError(Exception):
    """A call failed. `code` is the gRPC status, `message` the server's details verbatim."""

    retryable = False  # the same call may succeed later

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code.name}: {' '.join(self.message.split())}"


class InvalidArgument(SluicewayError):
    """Bad input. `field` is the request or config field the server named ("" if none)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(code, message)
        self.field = field_of(message)


class NotFound(SluicewayError):
    """No such run (or not yet projected by this tracker)."""


class FailedPrecondition(SluicewayError):
    """The request is valid but the state forbids it: a run that has ended cannot be canceled;
    a source that cannot be planned."""


class Unavailable(SluicewayError):
    """The service, its run log or its source cannot be reached, or a tracker has not yet
    applied the requested stream sequence (GetRun.min_seq)."""

    retryable = True


class DeadlineExceeded(SluicewayError):
    """No answer within the call's timeout."""

    retryable = True


class ResourceExhausted(SluicewayError):
    """The server refused to wait for this client: WatchRun cuts a slow reader off (the
    client's `watch` resumes by itself)."""

    retryable = True


Cutoff = ResourceExhausted


class Unauthenticated(SluicewayError):
    """No or bad credentials (a proxy in front of the services said so)."""


class PermissionDenied(SluicewayError):
    """The credentials are not allowed to make this call."""


class Cancelled(SluicewayError):
    """The call was cancelled (by the server, e.g. while shutting down)."""

    retryable = True


_BY_CODE: dict[grpc.StatusCode, type[SluicewayError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.CANCELLED: Cancelled,
}


def from_status(code: grpc.StatusCode, message: str) -> SluicewayError:
    """The typed error for a status; codes without a class of their own (INTERNAL, UNKNOWN,
    ...) give a plain SluicewayError."""
    return _BY_CODE.get(code, SluicewayError)(code, message)


def from_rpc_error(err: grpc.RpcError) -> SluicewayError:
    """Map a grpc (or grpc.aio) RpcError."""
    code = err.code() if callable(getattr(err, "code", None)) else None
    details = err.details() if callable(getattr(err, "details", None)) else None
    if not isinstance(code, grpc.StatusCode):
        code = grpc.StatusCode.UNKNOWN
    return from_status(code, details if isinstance(details, str) and details else str(err))


# The servers name the field at the start of INVALID_ARGUMENT details ("run_id is required",
# "requested_by: at most 256 characters", "options['k']: ...", "page_size must be >= 0"), or,
# for a config problem, as "field 'chunk_size'" after the file and export.
_CONFIG_FIELD = re.compile(r"\bfield '([^']+)'")
_LEADING_FIELD = re.compile(r"^([a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)*)(?=[:\[ ])")


def field_of(message: str) -> str:
    """The field an INVALID_ARGUMENT message names, or ""."""
    if m := _CONFIG_FIELD.search(message):
        return m.group(1)
    if m := _LEADING_FIELD.match(message):
        return m.group(1)
    return ""
