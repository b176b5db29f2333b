"""Prometheus metrics for gRPC calls: the metric families, exemplars and ``/metrics`` exposition.

The names, labels and help texts are go-grpc-middleware v2's (``providers/prometheus``), so
dashboards and alerts written for Go services work unchanged: ``grpc_{server,client}_started_total``,
``grpc_{server,client}_handled_total`` (the only ones with ``grpc_code``),
``grpc_{server,client}_msg_received_total``, ``grpc_{server,client}_msg_sent_total`` and the
``grpc_{server,client}_handling_seconds`` histogram. ``grpc_code`` values are Go's code names
(``OK``, ``NotFound``, ``Canceled`` ...). See docs/metrics.md.

The interceptors that record them are :func:`grpckit.interceptors.metrics` (server) and
:func:`grpckit.client.client_metrics_interceptors`. This module needs the ``metrics`` extra
(prometheus-client) only when a function here is called: importing it is free.

Example (serve ``/metrics`` from any HTTP server)::

    from grpckit.metrics import render

    async def metrics_route(request):
        content_type, body = render(accept=request.headers.get("accept", ""))
        return Response(body, media_type=content_type)
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal

import grpc

from grpckit.call import RpcKind

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter, Histogram

__all__ = [
    "DEFAULT_BUCKETS",
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

_CODE_LABELS = {
    grpc.StatusCode.OK: "OK",
    grpc.StatusCode.CANCELLED: "Canceled",
    grpc.StatusCode.UNKNOWN: "Unknown",
    grpc.StatusCode.INVALID_ARGUMENT: "InvalidArgument",
    grpc.StatusCode.DEADLINE_EXCEEDED: "DeadlineExceeded",
    grpc.StatusCode.NOT_FOUND: "NotFound",
    grpc.StatusCode.ALREADY_EXISTS: "AlreadyExists",
    grpc.StatusCode.PERMISSION_DENIED: "PermissionDenied",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "ResourceExhausted",
    grpc.StatusCode.FAILED_PRECONDITION: "FailedPrecondition",
    grpc.StatusCode.ABORTED: "Aborted",
    grpc.StatusCode.OUT_OF_RANGE: "OutOfRange",
    grpc.StatusCode.UNIMPLEMENTED: "Unimplemented",
    grpc.StatusCode.INTERNAL: "Internal",
    grpc.StatusCode.UNAVAILABLE: "Unavailable",
    grpc.StatusCode.DATA_LOSS: "DataLoss",
    grpc.StatusCode.UNAUTHENTICATED: "Unauthenticated",
}


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
    for item in accept.split(","):
        media_type, *params = (part.strip() for part in item.split(";"))
        if media_type.lower() != "application/openmetrics-text":
            continue
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q" and _float(value) <= 0:
                break
        else:
            return True
    return False


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return 0.0


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


class MethodMetrics:
    """The label children of one method, resolved once; also a message listener.

    ``on_receive`` / ``on_send`` make it usable with :meth:`grpckit.CallInfo.listen`, so stream
    messages are counted as they pass.
    """

    __slots__ = ("_handled", "_handled_vec", "_labels", "handling", "received", "sent", "started")

    def __init__(self, families: RpcMetrics, labels: tuple[str, str, str]) -> None:
        self._labels = labels
        self.started = families.started.labels(*labels)
        self.received = families.received.labels(*labels)
        self.sent = families.sent.labels(*labels)
        self.handling = families.handling.labels(*labels)
        self._handled_vec = families.handled
        self._handled: dict[grpc.StatusCode, Counter] = {}

    def on_receive(self, call: object, message: object) -> None:
        """Count one received message."""
        self.received.inc()

    def on_send(self, call: object, message: object) -> None:
        """Count one sent message."""
        self.sent.inc()

    def handled(self, code: grpc.StatusCode, seconds: float, exemplar: Exemplar | None) -> None:
        """Record the end of a call: ``handled_total{grpc_code}`` and ``handling_seconds``."""
        child = self._handled.get(code)
        if child is None:
            child = self._handled_vec.labels(*self._labels, code_label(code))
            self._handled[code] = child
        child.inc()
        if exemplar is None:
            self.handling.observe(seconds)
        else:
            self.handling.observe(seconds, exemplar)


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
    """The five families of one side (server or client) in one registry, and a per-method cache.

    Use :meth:`of`: a registry holds each side's families once, shared by every interceptor
    built on it (two servers in one process count into the same series).

    Example::

        families = RpcMetrics.of(registry, "server")
        m = families.method("/grpckit.testing.v1.PingService/Ping", RpcKind.UNARY)
        m.started.inc()
    """

    def __init__(self, registry: CollectorRegistry, side: Side, buckets: Sequence[float]) -> None:
        _prometheus()
        from prometheus_client import Counter, Histogram

        helps = _HELP[side]
        prefix = f"grpc_{side}_"
        self.buckets = tuple(buckets)
        self.started = Counter(prefix + "started_total", helps[0], _LABELS, registry=registry)
        self.handled = Counter(
            prefix + "handled_total", helps[1], (*_LABELS, "grpc_code"), registry=registry
        )
        self.received = Counter(prefix + "msg_received_total", helps[2], _LABELS, registry=registry)
        self.sent = Counter(prefix + "msg_sent_total", helps[3], _LABELS, registry=registry)
        self.handling: Histogram = Histogram(
            prefix + "handling_seconds", helps[4], _LABELS, registry=registry, buckets=buckets
        )
        self._methods: dict[str | bytes, MethodMetrics] = {}

    @classmethod
    def of(
        cls,
        registry: CollectorRegistry | None,
        side: Side,
        buckets: Sequence[float] = DEFAULT_BUCKETS,
    ) -> RpcMetrics:
        """The ``side`` families in ``registry`` (default :func:`default_registry`), created once.

        Raises ``ValueError`` if they already exist there with other ``buckets``.
        """
        target = registry if registry is not None else default_registry()
        with _SHARED_LOCK:
            sides = _SHARED.setdefault(target, {})
            families = sides.get(side)
            if families is None:
                families = sides[side] = cls(target, side, buckets)
        if families.buckets != tuple(buckets):
            raise ValueError(
                f"grpc_{side}_handling_seconds already has buckets {families.buckets} "
                "in this registry"
            )
        return families

    def method(self, full_method: str | bytes, kind: RpcKind) -> MethodMetrics:
        """The cached :class:`MethodMetrics` of ``/package.Service/Method`` (str or bytes)."""
        found = self._methods.get(full_method)
        if found is None:
            name = full_method.decode() if isinstance(full_method, bytes) else full_method
            service, _, method = name.lstrip("/").rpartition("/")
            found = MethodMetrics(self, (kind.value, service, method))
            self._methods[full_method] = found
        return found
