"""Client metrics: go-grpc-middleware's ``grpc_client_*`` Prometheus metrics for outgoing calls.

grpc.aio takes one interceptor object per RPC kind; :func:`client_metrics_interceptors` returns
the four, sharing one set of metric families. Each call counts once in
``grpc_client_started_total`` and, when it finishes (response, error, cancellation or
deadline), in ``grpc_client_handled_total{grpc_code}`` and ``grpc_client_handling_seconds``.
Messages count as grpc takes each request and as the application reads each response.

Emits: no status code of its own; calls, metadata and status pass through untouched. A
response-streaming call comes back as grpc's response-iterator wrapper (``read()`` and
``async for`` work on the call the application holds; an interceptor placed *outside* this
one sees an iterator-backed call).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Any

import grpc

from grpckit.call import RpcKind
from grpckit.client._call_status import code_now
from grpckit.metrics import (
    DEFAULT_BUCKETS,
    ExemplarFn,
    MethodMetrics,
    RpcMetrics,
    trace_exemplar,
)

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = ["client_metrics_interceptors"]

Continuation = Callable[[Any, Any], Any]
_OK = grpc.StatusCode.OK
_pending: set[asyncio.Task[None]] = set()


class _Recorder:
    """What the four interceptors share: families, exemplars and the end-of-call bookkeeping."""

    __slots__ = ("_exemplar", "_families")

    def __init__(self, families: RpcMetrics, exemplar: ExemplarFn | None) -> None:
        self._families = families
        self._exemplar = exemplar

    def begin(self, details: Any, kind: RpcKind) -> tuple[MethodMetrics, Callable[..., None]]:
        """Count the start; return the method's series and the done callback for its call."""
        m = self._families.method(details.method, kind)
        m.begin(sent=1 if kind is RpcKind.UNARY or kind is RpcKind.SERVER_STREAM else 0)
        # the caller's context (its current span), for an exemplar taken when the call ends
        context = contextvars.copy_context() if self._exemplar is not None else None
        unary_response = kind is RpcKind.UNARY or kind is RpcKind.CLIENT_STREAM
        done = functools.partial(
            _finish, m, time.monotonic(), self._exemplar, context, unary_response
        )
        return m, done

    async def start(self, continuation: Continuation, details: Any, arg: Any, done: Any) -> Any:
        """Run ``continuation``; arrange for ``done(call)`` when the call finishes."""
        try:
            call = await continuation(details, arg)
        except BaseException as exc:
            done(None, _code_of(exc))
            raise
        if call.done():
            done(call)
        else:
            call.add_done_callback(done)
        return call


def _finish(
    m: MethodMetrics,
    started: float,
    exemplar_fn: ExemplarFn | None,
    context: contextvars.Context | None,
    unary_response: bool,
    call: Any,
    code: grpc.StatusCode | None = None,
) -> None:
    if code is None:
        code = code_now(call)
        if code is None:  # not readable without awaiting: finish on the loop
            late = _finish_later(m, started, exemplar_fn, context, unary_response, call)
            task = asyncio.ensure_future(late)
            _pending.add(task)
            task.add_done_callback(_pending.discard)
            return
    seconds = time.monotonic() - started
    exemplar = None
    if exemplar_fn is not None and context is not None and m.exemplar_due(seconds):
        exemplar = context.run(exemplar_fn)
    received = 1 if unary_response and code is _OK else 0
    m.finish(code, seconds, received=received, exemplar=exemplar)


async def _finish_later(
    m: MethodMetrics,
    started: float,
    exemplar_fn: ExemplarFn | None,
    context: contextvars.Context | None,
    unary_response: bool,
    call: Any,
) -> None:
    code = await call.code()
    _finish(m, started, exemplar_fn, context, unary_response, call, code)


def _code_of(exc: BaseException) -> grpc.StatusCode:
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc.code()
    if isinstance(exc, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN


async def _count_requests(requests: Any, m: MethodMetrics) -> AsyncIterator[Any]:
    if hasattr(requests, "__aiter__"):
        async for request in requests:
            m.on_send(None, request)
            yield request
    else:
        for request in requests:
            m.on_send(None, request)
            yield request


async def _count_responses(call: Any, m: MethodMetrics) -> AsyncIterator[Any]:
    async for response in call:
        m.on_receive(None, response)
        yield response


class _UnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    def __init__(self, recorder: _Recorder) -> None:
        self._recorder = recorder

    async def intercept_unary_unary(
        self, continuation: Continuation, client_call_details: Any, request: Any
    ) -> Any:
        _, done = self._recorder.begin(client_call_details, RpcKind.UNARY)
        return await self._recorder.start(continuation, client_call_details, request, done)


class _UnaryStream(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[type-arg]
    def __init__(self, recorder: _Recorder) -> None:
        self._recorder = recorder

    async def intercept_unary_stream(
        self, continuation: Continuation, client_call_details: Any, request: Any
    ) -> Any:
        m, done = self._recorder.begin(client_call_details, RpcKind.SERVER_STREAM)
        call = await self._recorder.start(continuation, client_call_details, request, done)
        return _count_responses(call, m)


class _StreamUnary(grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[type-arg]
    def __init__(self, recorder: _Recorder) -> None:
        self._recorder = recorder

    async def intercept_stream_unary(
        self, continuation: Continuation, client_call_details: Any, request_iterator: Any
    ) -> Any:
        m, done = self._recorder.begin(client_call_details, RpcKind.CLIENT_STREAM)
        requests = _count_requests(request_iterator, m)
        return await self._recorder.start(continuation, client_call_details, requests, done)


class _StreamStream(grpc.aio.StreamStreamClientInterceptor):  # type: ignore[type-arg]
    def __init__(self, recorder: _Recorder) -> None:
        self._recorder = recorder

    async def intercept_stream_stream(
        self, continuation: Continuation, client_call_details: Any, request_iterator: Any
    ) -> Any:
        m, done = self._recorder.begin(client_call_details, RpcKind.BIDI_STREAM)
        requests = _count_requests(request_iterator, m)
        call = await self._recorder.start(continuation, client_call_details, requests, done)
        return _count_responses(call, m)


def client_metrics_interceptors(
    registry: CollectorRegistry | None = None,
    *,
    buckets: Sequence[float] = DEFAULT_BUCKETS,
    exemplar: ExemplarFn | None = trace_exemplar,
) -> list[grpc.aio.ClientInterceptor]:
    """The four grpc.aio client interceptors recording ``grpc_client_*`` metrics.

    ``registry`` defaults to :func:`grpckit.metrics.default_registry`; ``buckets`` are the
    ``grpc_client_handling_seconds`` bounds; ``exemplar`` as for the server ``metrics()``.

    Example::

        channel = dial("127.0.0.1:50051", interceptors=client_metrics_interceptors(registry))
    """
    recorder = _Recorder(RpcMetrics.of(registry, "client", buckets), exemplar)
    interceptors: list[Any] = [  # grpc-stubs leaves grpc.aio.ClientInterceptor opaque
        _UnaryUnary(recorder),
        _UnaryStream(recorder),
        _StreamUnary(recorder),
        _StreamStream(recorder),
    ]
    return interceptors
