"""Client interceptors that trace outgoing calls and propagate the W3C trace context.

Each call made through a channel with :func:`client_tracing_interceptors` gets a CLIENT span
named ``<package.Service>/<Method>``, a child of the current span (inside a grpckit handler
traced by :func:`grpckit.interceptors.tracing`, the server span), and its context is injected
into the outgoing metadata (``traceparent``, ``tracestate``, through the global propagator).
The span ends when the call's status arrives; the returned call object is grpc's own, so
metadata, status and streaming behave exactly as without the interceptor.

Attributes (semantic conventions v1.37.0): ``rpc.system="grpc"``, ``rpc.service``,
``rpc.method``, ``rpc.grpc.status_code`` (int), ``server.address`` / ``server.port`` when the
``target`` is given. Span status is ERROR for every code but OK (the client-side rule).
Emits no status codes of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, cast

import grpc

from grpckit.tracing import SCOPE, enabled_check, require_opentelemetry, target_attributes

if TYPE_CHECKING:
    from opentelemetry.trace import Span, TracerProvider

__all__ = ["client_tracing_interceptors"]

Continuation = Callable[[Any, Any], Any]


class _ClientTracer:
    """Starts client spans, injects their context, ends them when the call is done."""

    __slots__ = (
        "_enabled",
        "_error",
        "_inject",
        "_kind",
        "_server",
        "_set_span",
        "_static",
        "_status",
        "_tracer",
    )

    def __init__(self, tracer_provider: TracerProvider | None, target: str | None) -> None:
        from opentelemetry import propagate, trace

        self._tracer = trace.get_tracer(SCOPE, tracer_provider=tracer_provider)
        self._enabled = enabled_check(tracer_provider)
        self._inject: Callable[..., None] = propagate.inject
        self._set_span: Callable[..., Any] = trace.set_span_in_context
        self._kind = trace.SpanKind.CLIENT
        self._error = trace.StatusCode.ERROR
        self._status: Callable[..., Any] = trace.Status
        self._static: dict[str, tuple[str, dict[str, str | int]]] = {}
        self._server = target_attributes(target) if target else {}

    def _describe(self, method: str) -> tuple[str, dict[str, str | int]]:
        name = method.lstrip("/")
        service, _, short = name.rpartition("/")
        attributes: dict[str, str | int] = {
            "rpc.system": "grpc",
            "rpc.service": service,
            "rpc.method": short,
            **self._server,
        }
        return name, attributes

    def start(self, details: Any) -> tuple[Span, Any]:
        """Start the span for ``details``; return it and the details carrying its context."""
        method = details.method
        if isinstance(method, bytes):
            method = method.decode("ascii", "replace")
        static = self._static.get(method)
        if static is None:
            static = self._static[method] = self._describe(method)
        span = self._tracer.start_span(static[0], kind=self._kind, attributes=static[1])
        carrier: dict[str, str] = {}
        self._inject(carrier, context=self._set_span(span))
        if not carrier:
            return span, details
        kept = tuple((k, v) for k, v in (details.metadata or ()) if k not in carrier)
        metadata = grpc.aio.Metadata(*kept, *carrier.items())
        return span, grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )

    async def trace(self, continuation: Continuation, details: Any, request: Any) -> Any:
        """Run ``continuation`` under a client span; return grpc's call object untouched."""
        if not self._enabled():
            return await continuation(details, request)
        span, details = self.start(details)
        try:
            call = await continuation(details, request)
        except BaseException as exc:
            self._end(span, grpc.StatusCode.UNKNOWN, repr(exc))
            raise
        try:
            call.add_done_callback(self._on_done(span))
        except NotImplementedError:  # an inner interceptor answered without a real call
            self._end(span, grpc.StatusCode.OK, "")
        return call

    def _on_done(self, span: Span) -> Callable[[Any], None]:
        def done(call: Any) -> None:
            code = _now(call.code(), grpc.StatusCode.UNKNOWN)
            details = "" if code is grpc.StatusCode.OK else _now(call.details(), "")
            self._end(span, code, details)

        return done

    def _end(self, span: Span, code: grpc.StatusCode, details: str) -> None:
        if span.is_recording():
            span.set_attribute("rpc.grpc.status_code", code.value[0])
            if code is not grpc.StatusCode.OK:
                span.set_status(self._status(self._error, f"{code.name}: {details or ''}"))
        span.end()


def _now(coroutine: Coroutine[Any, Any, Any], default: Any) -> Any:
    """The result of a coroutine that completes without suspending (a finished call's status).

    grpc.aio only offers ``code()`` / ``details()`` as coroutines; in a done callback the
    status is already there, so one ``send`` finishes them.
    """
    try:
        coroutine.send(None)
    except StopIteration as finished:
        return finished.value
    coroutine.close()
    return default


class _UnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    def __init__(self, tracer: _ClientTracer) -> None:
        self._tracer = tracer

    async def intercept_unary_unary(
        self, continuation: Continuation, client_call_details: Any, request: Any
    ) -> Any:
        return await self._tracer.trace(continuation, client_call_details, request)


class _UnaryStream(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[type-arg]
    def __init__(self, tracer: _ClientTracer) -> None:
        self._tracer = tracer

    async def intercept_unary_stream(
        self, continuation: Continuation, client_call_details: Any, request: Any
    ) -> Any:
        return await self._tracer.trace(continuation, client_call_details, request)


class _StreamUnary(grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[type-arg]
    def __init__(self, tracer: _ClientTracer) -> None:
        self._tracer = tracer

    async def intercept_stream_unary(
        self, continuation: Continuation, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await self._tracer.trace(continuation, client_call_details, request_iterator)


class _StreamStream(grpc.aio.StreamStreamClientInterceptor):  # type: ignore[type-arg]
    def __init__(self, tracer: _ClientTracer) -> None:
        self._tracer = tracer

    async def intercept_stream_stream(
        self, continuation: Continuation, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await self._tracer.trace(continuation, client_call_details, request_iterator)


def client_tracing_interceptors(
    tracer_provider: TracerProvider | None = None, *, target: str | None = None
) -> list[grpc.aio.ClientInterceptor]:
    """One tracing interceptor per RPC kind, for ``dial(..., interceptors=...)``.

    ``tracer_provider`` defaults to the global one (a no-op until one is installed).
    ``target`` (the address dialled) fills ``server.address`` / ``server.port``.
    Raises ``ImportError`` without the ``tracing`` extra.

    Example::

        channel = dial(address, interceptors=client_tracing_interceptors(target=address))
    """
    require_opentelemetry()
    tracer = _ClientTracer(tracer_provider, target)
    interceptors = [
        _UnaryUnary(tracer),
        _UnaryStream(tracer),
        _StreamUnary(tracer),
        _StreamStream(tracer),
    ]
    return cast("list[grpc.aio.ClientInterceptor]", interceptors)  # grpc-stubs: partial stub
