"""Prometheus metrics for gRPC calls: the metric families, exemplars and ``/metrics`` exposition.

Names, labels and help texts are go-grpc-middleware v2's (``providers/prometheus``), so Go
dashboards work unchanged; ``grpc_code`` (Go's names: ``OK``, ``NotFound``, ``Canceled``) is on
``grpc_*_handled_total`` only. See docs/metrics.md. Recorded by
:func:`grpckit.interceptors.metrics` and :func:`grpckit.client.client_metrics_interceptors`;
prometheus-client (the ``metrics`` extra) is imported only when a function here is called.

Example (serve ``/metrics`` from any HTTP server)::

    from grpckit.metrics import render

    async def metrics_route(request):
        content_type, body = render(accept=request.headers.get("accept", ""))
        return Response(body, media_type=content_type)
"""

from __future__ import annotations

import bisect
import math
import re
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal

import grpc

from grpckit.call import RpcKind

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric

__all__ = [
    "DEFAULT_BUCKETS",
    "EXEMPLAR_INTERVAL",
    "OPENMETRICS_CONTENT_TYPE",
    "TEXT_CONTENT_TYPE",
    "Exemplar",
    "ExemplarFn",
    "MethodMetrics",
    "RpcMetrics",
    "code_label",
    "default_registry",
    "render",
    "trace_exemplar",
]

#: Exemplar labels attached to an observation (``{"trace_id": "4bf9..."}``).
Exemplar = dict[str, str]
#: Returns the exemplar for the observation being made now, or ``None``.
ExemplarFn = Callable[[], Exemplar | None]
Side = Literal["server", "client"]

#: Prometheus' ``DefBuckets`` (go-grpc-middleware's default) plus 1 ms and 2.5 ms, because a
#: Python gRPC call often takes less than 5 ms; every Go ``le`` value is still there.
DEFAULT_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip

#: The Prometheus text format (0.0.4), what :func:`render` returns unless asked otherwise.
TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: OpenMetrics 1.0.0, the only format that carries exemplars.
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"

# Go's names (codes.Code.String()): CamelCase, with Go's spelling of CANCELLED
_CODE_LABELS = {c: "".join(w.capitalize() for w in c.name.split("_")) for c in grpc.StatusCode}
_CODE_LABELS |= {grpc.StatusCode.OK: "OK", grpc.StatusCode.CANCELLED: "Canceled"}


def code_label(code: grpc.StatusCode) -> str:
    """The ``grpc_code`` label value of ``code``: Go's name (``NOT_FOUND`` → ``"NotFound"``)."""
    return _CODE_LABELS.get(code, "Unknown")


def default_registry() -> CollectorRegistry:
    """The process-wide registry: ``prometheus_client.REGISTRY``, used when none is passed.

    It also holds prometheus-client's process and GC collectors, so one ``/metrics`` shows the
    process as well as its calls.

    Example: ``Counter("orders_placed_total", "Orders placed.", registry=default_registry())``
    """
    _prometheus()
    from prometheus_client import REGISTRY

    return REGISTRY


def render(registry: CollectorRegistry | None = None, accept: str = "") -> tuple[str, bytes]:
    """Expose ``registry`` (default: :func:`default_registry`) as ``(content_type, body)``.

    OpenMetrics 1.0.0 (with exemplars) when ``accept`` (the request's ``Accept`` header) lists
    ``application/openmetrics-text`` with a non-zero q, as Prometheus does; otherwise the text
    format 0.0.4 (no exemplars).

    Example::

        content_type, body = render(accept="application/openmetrics-text; version=1.0.0")
    """
    _prometheus()
    from prometheus_client import exposition, openmetrics

    target = registry if registry is not None else default_registry()
    if _wants_openmetrics(accept):
        encode: Callable[[CollectorRegistry], bytes] = openmetrics.exposition.generate_latest
        return OPENMETRICS_CONTENT_TYPE, encode(target)
    return TEXT_CONTENT_TYPE, exposition.generate_latest(target)


def _prometheus() -> ModuleType:
    try:
        import prometheus_client
    except ImportError as exc:
        raise ImportError(
            "grpckit metrics need prometheus-client: pip install 'grpckit-shop[metrics]'"
        ) from exc
    return prometheus_client


def _wants_openmetrics(accept: str) -> bool:
    for item in accept.lower().split(","):
        media_type, *params = (part.strip() for part in item.split(";"))
        if media_type == "application/openmetrics-text" and not any(
            _ZERO_Q.fullmatch(param) for param in params
        ):
            return True
    return False


_ZERO_Q = re.compile(r"q\s*=\s*0(\.0*)?")


_otel_trace: Any = None  # the opentelemetry.trace module once imported; False if unavailable


def trace_exemplar() -> Exemplar | None:
    """``{"trace_id": <32 hex digits>}`` of the current OpenTelemetry span, else ``None``.

    ``None`` when opentelemetry is not installed or no valid span is current. Exemplars only
    show in the OpenMetrics format (see :func:`render`).

    Example: ``metrics(exemplar=trace_exemplar)`` (the default)
    """
    global _otel_trace
    trace = _otel_trace
    if trace is None:
        try:
            from opentelemetry import trace
        except ImportError:
            trace = False
        _otel_trace = trace
    if trace is False:
        return None
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return {"trace_id": format(context.trace_id, "032x")}


#: Seconds between two exemplars captured for the same bucket of the same method.
EXEMPLAR_INTERVAL = 1.0


class MethodMetrics:
    """The series of one method (one ``grpc_type, grpc_service, grpc_method``), under one lock.

    Plain numbers updated under a per-method lock cost a fraction of prometheus-client's
    per-child locking; :class:`RpcMetrics` exposes them at scrape time. It is also a
    :class:`~grpckit.MessageListener`, so ``call.listen(m)`` counts stream messages as they pass.

    Example::

        m.begin(received=1)  # a unary request
        m.finish(grpc.StatusCode.OK, seconds=0.002, sent=1)
    """

    __slots__ = (
        "_bounds",
        "_lock",
        "buckets",
        "exemplars",
        "handled",
        "labels",
        "ok",
        "received",
        "sent",
        "started",
        "sum",
    )

    def __init__(self, labels: tuple[str, str, str], bounds: tuple[float, ...]) -> None:
        self.labels = labels
        self._bounds = bounds  # ends with +Inf
        self._lock = threading.Lock()
        self.started = self.received = self.sent = self.ok = 0
        self.handled: dict[grpc.StatusCode, int] = {}  # codes other than OK
        self.buckets = [0] * len(bounds)  # not cumulative
        self.exemplars: list[tuple[Exemplar, float, float] | None] = [None] * len(bounds)
        self.sum = 0.0

    def begin(self, received: int = 0, sent: int = 0) -> None:
        """Count a started call and the messages that came with it."""
        with self._lock:
            self.started += 1
            self.received += received
            self.sent += sent

    def on_receive(self, call: object, message: object) -> None:
        """Count one received message."""
        with self._lock:
            self.received += 1

    def on_send(self, call: object, message: object) -> None:
        """Count one sent message."""
        with self._lock:
            self.sent += 1

    def exemplar_due(self, seconds: float) -> bool:
        """Whether the bucket of ``seconds`` has had no exemplar for :data:`EXEMPLAR_INTERVAL`."""
        held = self.exemplars[bisect.bisect_left(self._bounds, seconds)]
        return held is None or time.time() - held[2] >= EXEMPLAR_INTERVAL

    def finish(
        self,
        code: grpc.StatusCode,
        seconds: float,
        *,
        received: int = 0,
        sent: int = 0,
        exemplar: Exemplar | None = None,
    ) -> None:
        """Record the end of a call: ``handled_total{grpc_code}`` and ``handling_seconds``."""
        index = bisect.bisect_left(self._bounds, seconds)  # le is inclusive
        with self._lock:
            if code is _OK:
                self.ok += 1
            else:
                self.handled[code] = self.handled.get(code, 0) + 1
            self.received += received
            self.sent += sent
            self.buckets[index] += 1
            self.sum += seconds
            if exemplar is not None:
                self.exemplars[index] = (exemplar, seconds, time.time())

    def snapshot(self) -> tuple[int, int, int, dict[grpc.StatusCode, int], list[int], float]:
        """``(started, received, sent, handled by code, buckets, sum)``, read consistently."""
        with self._lock:
            handled = dict(self.handled)
            if self.ok:
                handled[_OK] = self.ok
            return self.started, self.received, self.sent, handled, list(self.buckets), self.sum


_OK = grpc.StatusCode.OK
_HELP = {
    "server": (
        "Total number of RPCs started on the server.",
        "Total number of RPCs completed on the server, regardless of success or failure.",
        "Total number of RPC stream messages received on the server.",
        "Total number of gRPC stream messages sent by the server.",
        "Histogram of response latency (seconds) of gRPC that had been application-level "
        "handled by the server.",
    ),
    "client": (
        "Total number of RPCs started on the client.",
        "Total number of RPCs completed by the client, regardless of success or failure.",
        "Total number of RPC stream messages received by the client.",
        "Total number of gRPC stream messages sent by the client.",
        "Histogram of response latency (seconds) of the gRPC until it is finished by the "
        "application.",
    ),
}
_LABELS = ("grpc_type", "grpc_service", "grpc_method")
_SHARED: weakref.WeakKeyDictionary[CollectorRegistry, dict[Side, RpcMetrics]] = (
    weakref.WeakKeyDictionary()
)
_SHARED_LOCK = threading.Lock()


class RpcMetrics:
    """The five families of one side (server or client), a prometheus-client ``Collector``.

    Use :meth:`of`: a registry holds each side's families once, shared by every interceptor
    built on it (two servers in one process count into the same series).

    Example::

        families = RpcMetrics.of(registry, "server")
        m = families.method("/grpckit.testing.v1.PingService/Ping", RpcKind.UNARY)
        m.begin(received=1)
    """

    def __init__(self, side: Side, buckets: Sequence[float]) -> None:
        bounds = sorted(float(b) for b in buckets)
        if not bounds or bounds[-1] != math.inf:
            bounds.append(math.inf)
        self.side: Side = side
        self.buckets = tuple(buckets)
        self._bounds = tuple(bounds)
        self._les = tuple(_le(bound) for bound in bounds)
        self._methods: dict[str | bytes, MethodMetrics] = {}
        self._by_labels: dict[tuple[str, str, str], MethodMetrics] = {}
        self._lock = threading.Lock()

    @classmethod
    def of(
        cls,
        registry: CollectorRegistry | None,
        side: Side,
        buckets: Sequence[float] = DEFAULT_BUCKETS,
    ) -> RpcMetrics:
        """The ``side`` families in ``registry`` (default :func:`default_registry`), made once.

        Raises ``ValueError`` if they already exist there with other ``buckets``.
        """
        target = registry if registry is not None else default_registry()
        with _SHARED_LOCK:
            sides = _SHARED.setdefault(target, {})
            families = sides.get(side)
            if families is None:
                families = cls(side, buckets)
                target.register(families)
                sides[side] = families
        if families.buckets != tuple(buckets):
            raise ValueError(
                f"grpc_{side}_handling_seconds already has buckets {families.buckets} "
                "in this registry"
            )
        return families

    def method(self, full_method: str | bytes, kind: RpcKind) -> MethodMetrics:
        """The :class:`MethodMetrics` of ``/package.Service/Method`` (str or bytes), cached."""
        found = self._methods.get(full_method)
        if found is None:
            name = full_method.decode() if isinstance(full_method, bytes) else full_method
            service, _, method = name.lstrip("/").rpartition("/")
            labels = (kind.value, service, method)
            with self._lock:
                found = self._by_labels.get(labels)
                if found is None:
                    found = self._by_labels[labels] = MethodMetrics(labels, self._bounds)
                self._methods[full_method] = found
        return found

    def describe(self) -> list[Metric]:
        """The five empty families (the registry checks names with it)."""
        return list(self._families())

    def collect(self) -> list[Metric]:
        """The five families with a sample set per method called so far."""
        started, handled, received, sent, handling = self._families()
        for m in list(self._by_labels.values()):
            labels = m.labels
            n_started, n_received, n_sent, by_code, buckets, total = m.snapshot()
            started.add_metric(labels, n_started)
            received.add_metric(labels, n_received)
            sent.add_metric(labels, n_sent)
            for code, count in by_code.items():
                handled.add_metric((*labels, code_label(code)), count)
            handling.add_metric(labels, self._cumulative(m, buckets), total)
        return [started, handled, received, sent, handling]

    def _families(self) -> tuple[Any, Any, Any, Any, Any]:
        from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily

        helps, prefix = _HELP[self.side], f"grpc_{self.side}_"
        with_code = (*_LABELS, "grpc_code")
        return (
            CounterMetricFamily(prefix + "started_total", helps[0], labels=_LABELS),
            CounterMetricFamily(prefix + "handled_total", helps[1], labels=with_code),
            CounterMetricFamily(prefix + "msg_received_total", helps[2], labels=_LABELS),
            CounterMetricFamily(prefix + "msg_sent_total", helps[3], labels=_LABELS),
            HistogramMetricFamily(prefix + "handling_seconds", helps[4], labels=_LABELS),
        )

    def _cumulative(self, m: MethodMetrics, buckets: list[int]) -> list[Any]:
        from prometheus_client.samples import Exemplar as PromExemplar

        rows: list[Any] = []
        running = 0
        for le, count, held in zip(self._les, buckets, list(m.exemplars), strict=True):
            running += count
            if held is None:
                rows.append((le, running))
            else:
                rows.append((le, running, PromExemplar(held[0], held[1], held[2])))
        return rows


def _le(bound: float) -> str:
    """The ``le`` label as prometheus-client writes it (``"0.005"``, ``"1.0"``, ``"+Inf"``)."""
    return "+Inf" if bound == math.inf else repr(bound)
