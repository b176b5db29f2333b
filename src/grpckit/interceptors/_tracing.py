"""tracing: one OpenTelemetry SERVER span per call, current while the rest of the chain runs.

The span is named ``<package.Service>/<Method>`` and continues the caller's trace from the
W3C ``traceparent`` / ``tracestate`` invocation metadata (through the globally configured
propagator). It is the current span while the inner interceptors and the handler run, so the
logging interceptor sees its ids and :func:`grpckit.dial` channels with
:func:`grpckit.client.client_tracing_interceptors` continue the trace downstream.

Attributes (semantic conventions v1.37.0, see docs/tracing.md): ``rpc.system="grpc"``,
``rpc.service``, ``rpc.method``, ``rpc.grpc.status_code`` (int), ``network.peer.address`` /
``network.peer.port`` / ``network.transport`` / ``network.type`` from the peer,
``server.address`` / ``server.port`` when ``server_address`` is given. Span status is ERROR for
the server-side error codes (UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE,
DATA_LOSS) and left unset otherwise; INTERNAL calls record the exception as a span event.
With ``message_events`` each streamed message adds a ``message`` event (off: it costs).

Emits no status codes of its own. Requires the ``tracing`` extra; OpenTelemetry is imported
when :func:`tracing` is called, never when this module is imported.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc

from grpckit.call import CallInfo, Outcome, RpcKind
from grpckit.middleware import Interceptor, Next
from grpckit.tracing import (
    METADATA_GETTER,
    SCOPE,
    SERVER_ERROR_CODES,
    enabled_check,
    peer_attributes,
    require_opentelemetry,
    target_attributes,
)

if TYPE_CHECKING:
    from opentelemetry.trace import Span, TracerProvider

__all__ = ["tracing"]


class _MessageEvents:
    """A ``MessageListener`` adding one ``message`` span event per streamed message."""

    __slots__ = ("_received", "_sent", "_span")

    def __init__(self, span: Span) -> None:
        self._span = span
        self._sent = 0
        self._received = 0

    def on_receive(self, call: CallInfo, message: Any) -> None:
        self._received += 1
        self._event("RECEIVED", self._received)

    def on_send(self, call: CallInfo, message: Any) -> None:
        self._sent += 1
        self._event("SENT", self._sent)

    def _event(self, kind: str, message_id: int) -> None:
        self._span.add_event("message", {"message.type": kind, "message.id": message_id})


class _Tracing:
    __slots__ = ("_api", "_enabled", "_events", "_server", "_static", "_tracer")

    def __init__(
        self, tracer_provider: TracerProvider | None, message_events: bool, server: str | None
    ) -> None:
        from opentelemetry import context, propagate, trace

        self._tracer = trace.get_tracer(SCOPE, tracer_provider=tracer_provider)
        self._enabled = enabled_check(tracer_provider)
        self._api = _Api(context, propagate, trace)
        self._events = message_events
        self._server = target_attributes(server) if server else {}
        self._static: dict[str, tuple[str, dict[str, str | int]]] = {}

    def _start(self, call: CallInfo) -> tuple[Span, Any]:
        api = self._api
        parent = api.extract(call.metadata, getter=METADATA_GETTER)
        static = self._static.get(call.full_method)
        if static is None:
            static = self._static[call.full_method] = self._describe(call)
        name, attributes = static
        span = self._tracer.start_span(
            name, parent, api.server, {**attributes, **peer_attributes(call.peer)}
        )
        return span, api.set_span_in_context(span, parent)

    def _describe(self, call: CallInfo) -> tuple[str, dict[str, str | int]]:
        attributes: dict[str, str | int] = {
            "rpc.system": "grpc",
            "rpc.service": call.service,
            "rpc.method": call.method,
            **self._server,
        }
        return call.full_method.lstrip("/"), attributes

    async def intercept(self, call: CallInfo, next_: Next) -> None:
        if not self._enabled():  # no provider installed: nothing to record or propagate
            await next_(call)
            return
        span, ctx = self._start(call)
        call.span_context = span.get_span_context()
        token = self._api.attach(ctx)
        if self._events and call.kind is not RpcKind.UNARY and span.is_recording():
            call.listen(_MessageEvents(span))
        error: BaseException | None = None
        try:
            await next_(call)
        except BaseException as exc:
            error = exc
            raise
        finally:
            try:
                if span.is_recording():
                    _finish(span, call, error, self._api)
            finally:
                self._api.detach(token)
                span.end()


class _Api:
    """The OpenTelemetry functions one call needs, bound once (module lookups cost per call)."""

    __slots__ = ("attach", "detach", "error", "extract", "server", "set_span_in_context", "status")

    def __init__(self, context: Any, propagate: Any, trace: Any) -> None:
        self.extract: Callable[..., Any] = propagate.extract
        self.attach: Callable[[Any], Any] = context.attach
        self.detach: Callable[[Any], None] = context.detach
        self.set_span_in_context: Callable[..., Any] = trace.set_span_in_context
        self.server = trace.SpanKind.SERVER
        self.error = trace.StatusCode.ERROR
        self.status: Callable[..., Any] = trace.Status


def _finish(span: Span, call: CallInfo, error: BaseException | None, api: _Api) -> None:
    if error is None and call.context.code() is None:  # plain success: skip building an Outcome
        span.set_attribute("rpc.grpc.status_code", 0)
        return
    outcome = Outcome.of(call, error)
    code = outcome.code
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if code in SERVER_ERROR_CODES:
        span.set_status(api.status(api.error, f"{code.name}: {outcome.message}"))
        if code is grpc.StatusCode.INTERNAL and outcome.exception is not None:
            span.record_exception(outcome.exception, escaped=True)


def tracing(
    tracer_provider: TracerProvider | None = None,
    *,
    message_events: bool = False,
    server_address: str | None = None,
) -> Interceptor:
    """Trace every call with a SERVER span continuing the caller's W3C trace context.

    ``tracer_provider`` defaults to the global one (a no-op until a provider is installed,
    e.g. by :func:`grpckit.tracing.configure_from_env`). ``message_events`` adds a span event
    per streamed message. ``server_address`` (``host:port``) fills ``server.address`` /
    ``server.port``. Place it right after ``recovery()`` so every inner interceptor (logging
    first) runs inside the span. Raises ``ImportError`` without the ``tracing`` extra.

    Example::

        app = App(interceptors=[recovery(), tracing(), logging(), deadlines()])
    """
    require_opentelemetry()
    return _Tracing(tracer_provider, message_events, server_address)
