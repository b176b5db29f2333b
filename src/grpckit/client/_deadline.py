"""Client interceptors that carry deadlines and the request id across service hops.

For every call made on a :func:`grpckit.dial` channel:

1. a call without a timeout gets ``default_timeout``;
2. inside a grpckit-served handler, the timeout is capped to what is left of the incoming
   call (``context.time_remaining()`` and the deadline interceptor's bound);
3. ``x-request-id`` of the incoming call is forwarded unless the caller set one.
"""

from __future__ import annotations

from typing import Any

import grpc

from grpckit.call import NESTED_KEY, current_call
from grpckit.client._kinds import Continuation, every_kind

__all__ = ["REQUEST_ID_KEY", "propagation_interceptors"]

REQUEST_ID_KEY = "x-request-id"


def _details(details: grpc.aio.ClientCallDetails, default_timeout: float | None) -> Any:
    timeout: float | None = details.timeout
    if timeout is None:
        timeout = default_timeout
    metadata = details.metadata
    call = current_call()
    if call is not None:
        remaining = call.time_remaining() if call.propagate_deadline else None
        if remaining is not None:
            remaining = max(remaining, 0.0)
            timeout = remaining if timeout is None else min(timeout, remaining)
        metadata = _nested(metadata, call.request_id or call.header(REQUEST_ID_KEY))
    if timeout is details.timeout and metadata is details.metadata:
        return details
    return grpc.aio.ClientCallDetails(
        details.method, timeout, metadata, details.credentials, details.wait_for_ready
    )


def _nested(metadata: Any, request_id: str | bytes | None) -> grpc.aio.Metadata:
    """The caller's metadata plus the request id (unless set) and the nested-call marker."""
    merged = grpc.aio.Metadata(*(tuple(metadata) if metadata is not None else ()))
    if request_id and REQUEST_ID_KEY not in merged:
        merged.add(REQUEST_ID_KEY, request_id)
    if NESTED_KEY not in merged:
        merged.add(NESTED_KEY, "1")
    return merged


def propagation_interceptors(default_timeout: float | None) -> list[Any]:
    """The four interceptors (one per RPC kind) that :func:`grpckit.dial` installs."""

    async def intercept(continuation: Continuation, details: Any, arg: Any) -> Any:
        return await continuation(_details(details, default_timeout), arg)

    return every_kind(intercept)
