"""metrics: go-grpc-middleware's Prometheus server metrics for every call.

Emits: no status code of its own; it only observes. Each call counts once in
``grpc_server_started_total`` and, with its final code, in ``grpc_server_handled_total`` and
``grpc_server_handling_seconds`` (seconds since the adapter accepted the call, with a trace-id
exemplar when an OpenTelemetry span is current, at most one per bucket and method per second). ``grpc_server_msg_received_total`` /
``grpc_server_msg_sent_total`` count messages as they pass (a listener on streams), so a
long-lived stream shows progress before it ends. The final code is the one the caller sees:
``StatusError`` keeps its code, cancellation is CANCELLED, other exceptions INTERNAL.

Place it after ``recovery()`` and tracing (so the exemplar finds the span), before guards (so
rejected calls are counted). Needs the ``metrics`` extra (prometheus-client).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import grpc

from grpckit.call import CallInfo, Outcome, RpcKind
from grpckit.metrics import DEFAULT_BUCKETS, ExemplarFn, MethodMetrics, RpcMetrics, trace_exemplar
from grpckit.middleware import Interceptor, Next

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = ["metrics"]

_OK = grpc.StatusCode.OK
_UNARY = RpcKind.UNARY
_SERVER_STREAM = RpcKind.SERVER_STREAM


class _Metrics:
    __slots__ = ("_exemplar", "_families", "_methods")

    def __init__(self, families: RpcMetrics, exemplar: ExemplarFn | None) -> None:
        self._families = families
        self._methods: dict[str, MethodMetrics] = {}
        self._exemplar = exemplar

    def _resolve(self, call: CallInfo) -> MethodMetrics:
        found = self._families.method(call.full_method, call.kind)
        self._methods[call.full_method] = found
        return found

    async def intercept(self, call: CallInfo, next_: Next) -> None:
        m = self._methods.get(call.full_method) or self._resolve(call)
        kind = call.kind
        if kind is _UNARY:
            m.begin(received=1)
        else:
            m.begin(received=1 if kind is _SERVER_STREAM else 0)
            call.listen(m)
        try:
            await next_(call)
        except BaseException as exc:
            self._done(call, m, Outcome.of(call, exc).code)
            raise
        self._done(call, m, _returned_code(call))

    def _done(self, call: CallInfo, m: MethodMetrics, code: grpc.StatusCode) -> None:
        seconds = time.monotonic() - call.start_time
        exemplar = None
        if self._exemplar is not None and m.exemplar_due(seconds):
            exemplar = self._exemplar()
        # a unary response counts when it is sent; stream messages count in the listener
        sent = 1 if code is _OK and call.kind is _UNARY else 0
        m.finish(code, seconds, sent=sent, exemplar=exemplar)

    def __repr__(self) -> str:
        return "metrics()"


def _returned_code(call: CallInfo) -> grpc.StatusCode:
    """The code of a call whose handler returned: OK unless it called ``context.set_code``."""
    code = call.context.code()
    if code is None:
        return _OK
    return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN


def metrics(
    registry: CollectorRegistry | None = None,
    *,
    buckets: Sequence[float] = DEFAULT_BUCKETS,
    exemplar: ExemplarFn | None = trace_exemplar,
) -> Interceptor:
    """Record go-grpc-middleware's ``grpc_server_*`` metrics for each call.

    ``registry`` defaults to :func:`grpckit.metrics.default_registry`; interceptors built on
    the same registry share its series. ``buckets`` are the ``grpc_server_handling_seconds``
    bounds. ``exemplar`` returns the exemplar labels for an observation (default: the current
    OpenTelemetry trace id; ``None`` turns exemplars off). Serve the result with
    :func:`grpckit.metrics.render`.

    Example::

        registry = prometheus_client.CollectorRegistry()
        app = App(interceptors=[recovery(), logging(), metrics(registry), deadlines()])
        content_type, body = grpckit.metrics.render(registry, accept=request_accept_header)
    """
    return _Metrics(RpcMetrics.of(registry, "server", buckets), exemplar)
