"""Client interceptors that carry deadlines and the request id across service hops.

For every call made on a :func:`grpckit.dial` channel:

1. a call without a timeout gets ``default_timeout``;
2. inside a grpckit-served handler, the timeout is capped to what is left of the incoming
   call (``context.time_remaining()`` and the deadline interceptor's bound);
3. ``x-request-id`` of the incoming call is forwarded unless the caller set one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from grpckit.call import NESTED_KEY, current_call

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


Continuation = Callable[[Any, Any], Any]


class _UnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    def __init__(self, default_timeout: float | None) -> None:
        self._default = default_timeout

    async def intercept_unary_unary(
        self, continuation: Continuation, client_call_details: Any, request: Any
    ) -> Any:
        return await continuation(_details(client_call_details, self._default), request)


class _UnaryStream(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[type-arg]
    def __init__(self, default_timeout: float | None) -> None:
        self._default = default_timeout

    async def intercept_unary_stream(
        self, continuation: Continuation, client_call_details: Any, request: Any
    ) -> Any:
        return await continuation(_details(client_call_details, self._default), request)


class _StreamUnary(grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[type-arg]
    def __init__(self, default_timeout: float | None) -> None:
        self._default = default_timeout

    async def intercept_stream_unary(
        self, continuation: Continuation, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(_details(client_call_details, self._default), request_iterator)


class _StreamStream(grpc.aio.StreamStreamClientInterceptor):  # type: ignore[type-arg]
    def __init__(self, default_timeout: float | None) -> None:
        self._default = default_timeout

    async def intercept_stream_stream(
        self, continuation: Continuation, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(_details(client_call_details, self._default), request_iterator)


def propagation_interceptors(default_timeout: float | None) -> list[Any]:
    """The four interceptors (one per RPC kind) that :func:`grpckit.dial` installs."""
    return [
        _UnaryUnary(default_timeout),
        _UnaryStream(default_timeout),
        _StreamUnary(default_timeout),
        _StreamStream(default_timeout),
    ]
