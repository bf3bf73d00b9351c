"""The Sluiceway client SDK: `AsyncClient` (grpc.aio) and `Client` (blocking) over the Control
and Tracker APIs, with typed errors (`sluiceway.client.errors`)."""

from sluiceway.client.aio import (
    TERMINAL,
    AsyncClient,
    Export,
    config_document,
    config_file,
    is_terminal,
)
from sluiceway.client.errors import (
    Cancelled,
    Cutoff,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    SluicewayError,
    Unauthenticated,
    Unavailable,
)
from sluiceway.client.options import ClientOptions, RetryPolicy, bearer_interceptors, with_token
from sluiceway.client.sync import Client

__all__ = [
    "TERMINAL",
    "AsyncClient",
    "Cancelled",
    "Client",
    "ClientOptions",
    "Cutoff",
    "DeadlineExceeded",
    "Export",
    "FailedPrecondition",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "RetryPolicy",
    "SluicewayError",
    "Unauthenticated",
    "Unavailable",
    "bearer_interceptors",
    "config_document",
    "config_file",
    "is_terminal",
    "with_token",
]
