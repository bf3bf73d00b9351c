"""What the gRPC servicers share: aborting with bounded details."""

from __future__ import annotations

from typing import NoReturn

import grpc

# Status details travel in a trailer; gRPC clients refuse metadata past 8 KiB by default, so a
# message that quotes a 10,000-character run id must be cut (else the client sees INTERNAL).
MAX_DETAILS = 1024


async def abort(context: grpc.aio.ServicerContext, code: grpc.StatusCode, details: str) -> NoReturn:
    """context.abort with details cut to MAX_DETAILS characters."""
    if len(details) > MAX_DETAILS:
        details = details[: MAX_DETAILS - 1] + "…"
    await context.abort(code, details)
    raise AssertionError("unreachable: abort raises")
