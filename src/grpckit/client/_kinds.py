"""One client interceptor for the four RPC kinds.

grpc.aio wants a separate interceptor class per RPC kind. Most of grpckit's client
interceptors do the same thing whatever the kind (rewrite the call details, admit or refuse the
call), so :func:`every_kind` builds the four from one function.

Example::

    async def stamp(continuation, details, request_or_iterator):
        return await continuation(with_header(details), request_or_iterator)

    channel = dial(target, interceptors=every_kind(stamp))
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc

__all__ = ["Continuation", "Intercept", "every_kind"]

Continuation = Callable[[Any, Any], Any]
#: ``intercept(continuation, client_call_details, request_or_request_iterator)``
Intercept = Callable[[Continuation, Any, Any], Awaitable[Any]]


class _Kind:
    __slots__ = ("__dict__", "_intercept")

    def __init__(self, intercept: Intercept) -> None:
        self._intercept = intercept


class _UnaryUnary(_Kind, grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    async def intercept_unary_unary(
        self, continuation: Continuation, client_call_details: Any, request: Any
    ) -> Any:
        return await self._intercept(continuation, client_call_details, request)


class _UnaryStream(_Kind, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[type-arg]
    async def intercept_unary_stream(
        self, continuation: Continuation, client_call_details: Any, request: Any
    ) -> Any:
        return await self._intercept(continuation, client_call_details, request)


class _StreamUnary(_Kind, grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[type-arg]
    async def intercept_stream_unary(
        self, continuation: Continuation, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await self._intercept(continuation, client_call_details, request_iterator)


class _StreamStream(_Kind, grpc.aio.StreamStreamClientInterceptor):  # type: ignore[type-arg]
    async def intercept_stream_stream(
        self, continuation: Continuation, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await self._intercept(continuation, client_call_details, request_iterator)


def every_kind(intercept: Intercept, **attributes: Any) -> list[grpc.aio.ClientInterceptor]:
    """Four interceptors (unary-unary, unary-stream, stream-unary, stream-stream) that all run
    ``intercept``; ``attributes`` are set on each (e.g. ``breaker=self`` for introspection)."""
    made: list[Any] = []
    for kind in (_UnaryUnary, _UnaryStream, _StreamUnary, _StreamStream):
        interceptor = kind(intercept)
        interceptor.__dict__.update(attributes)
        made.append(interceptor)
    return made
