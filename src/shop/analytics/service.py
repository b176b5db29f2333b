"""The AnalyticsService servicer: request validation and proto <-> domain, nothing else.

Every request field is validated up front (all violations collected, then one
INVALID_ARGUMENT); batches go to the shared ``Pipeline``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
from google.protobuf import duration_pb2, timestamp_pb2

from grpckit.errors import invalid_argument
from shop.analytics.clock import Sleep
from shop.analytics.domain import WINDOWS, Alert, BatchOutcome, Kind, Snapshot
from shop.analytics.pipeline import Pipeline
from shop.api.analytics.v1 import analytics_pb2, analytics_pb2_grpc
from shop.common.money import Money, to_proto

__all__ = ["AnalyticsService"]

Context = grpc.aio.ServicerContext[Any, Any]
MetricType = analytics_pb2.MetricType
_ALL_METRICS = tuple(v for v in MetricType.values() if v != MetricType.METRIC_TYPE_UNSPECIFIED)
_DEFAULT_WINDOW = 10
_DEFAULT_INTERVAL = 1.0
_MIN_INTERVAL_NS = 100_000_000


class AnalyticsService(analytics_pb2_grpc.AnalyticsServiceServicer):
    """Serves one ``Pipeline``; ``active_streams`` counts open StreamRealTimeMetrics calls.

    Example::

        service = AnalyticsService(Pipeline())
        app.add_service(analytics_pb2_grpc.add_AnalyticsServiceServicer_to_server, service,
                        analytics_pb2.DESCRIPTOR.services_by_name["AnalyticsService"])
    """

    def __init__(self, pipeline: Pipeline, *, sleep: Sleep = asyncio.sleep) -> None:
        self.pipeline = pipeline
        self._sleep = sleep
        self.active_streams = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = asyncio.Event()

    async def close_streams(self) -> None:
        """End every StreamRealTimeMetrics call now (with OK), e.g. when the server drains."""
        self._closing.set()
        await self._idle.wait()

    async def wait_idle(self) -> None:
        """Return once no StreamRealTimeMetrics call is running."""
        await self._idle.wait()

    async def IngestEvents(
        self, request_iterator: AsyncIterator[analytics_pb2.IngestEventsRequest], context: Context
    ) -> analytics_pb2.IngestEventsResponse:
        accepted = rejected = duplicates = 0
        async for request in request_iterator:
            outcome = self.pipeline.process(request.events)
            accepted += outcome.accepted
            rejected += outcome.rejected
            duplicates += len(outcome.duplicates)
        return analytics_pb2.IngestEventsResponse(
            accepted=accepted, rejected=rejected, duplicates=duplicates
        )

    async def ProcessEventStream(  # type: ignore[override]
        self,
        request_iterator: AsyncIterator[analytics_pb2.ProcessEventStreamRequest],
        context: Context,
    ) -> None:
        async for request in request_iterator:
            outcome = self.pipeline.process(request.events)
            await context.write(_batch_response(outcome))

    async def GetMetrics(
        self, request: analytics_pb2.GetMetricsRequest, context: Context
    ) -> analytics_pb2.GetMetricsResponse:
        violations: list[tuple[str, str]] = []
        window = _window(request, violations)
        if violations:
            raise invalid_argument("invalid metrics request", violations)
        snapshot = self.pipeline.snapshot(window)
        return analytics_pb2.GetMetricsResponse(snapshot=_snapshot(snapshot, _ALL_METRICS))

    async def StreamRealTimeMetrics(  # type: ignore[override]
        self, request: analytics_pb2.StreamRealTimeMetricsRequest, context: Context
    ) -> None:
        """A snapshot now, then one per interval, until the caller cancels."""
        violations: list[tuple[str, str]] = []
        types = _metric_types(request.metric_types, violations)
        window = _window(request, violations)
        interval = _interval(request, violations)
        if violations:
            raise invalid_argument("invalid metrics stream request", violations)
        self.active_streams += 1
        self._idle.clear()
        try:
            while not self._closing.is_set():
                snapshot = _snapshot(self.pipeline.snapshot(window), types)
                await context.write(analytics_pb2.StreamRealTimeMetricsResponse(snapshot=snapshot))
                await self._pause(interval)
        finally:
            self.active_streams -= 1
            if not self.active_streams:
                self._idle.set()

    async def _pause(self, seconds: float) -> None:
        """Sleep ``seconds``, or less when close_streams() is called meanwhile."""
        sleeper = asyncio.ensure_future(self._sleep(seconds))
        closing = asyncio.ensure_future(self._closing.wait())
        try:
            await asyncio.wait({sleeper, closing}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            closing.cancel()


def _window(
    request: analytics_pb2.GetMetricsRequest | analytics_pb2.StreamRealTimeMetricsRequest,
    violations: list[tuple[str, str]],
) -> int:
    if not request.HasField("window"):
        return _DEFAULT_WINDOW
    window = request.window
    if window.nanos == 0 and window.seconds in WINDOWS:
        return int(window.seconds)
    violations.append(("window", "must be 1s, 10s or 60s"))
    return _DEFAULT_WINDOW


def _interval(
    request: analytics_pb2.StreamRealTimeMetricsRequest, violations: list[tuple[str, str]]
) -> float:
    if not request.HasField("interval"):
        return _DEFAULT_INTERVAL
    nanos = request.interval.seconds * 1_000_000_000 + request.interval.nanos
    if nanos < _MIN_INTERVAL_NS:
        violations.append(("interval", "must be at least 100ms"))
    return nanos / 1e9


def _metric_types(requested: Sequence[int], violations: list[tuple[str, str]]) -> Sequence[int]:
    for index, value in enumerate(requested):
        if value not in _ALL_METRICS:
            violations.append((f"metric_types[{index}]", "must be a known metric type"))
    return requested or _ALL_METRICS


def _batch_response(outcome: BatchOutcome) -> analytics_pb2.ProcessEventStreamResponse:
    ack = analytics_pb2.Ack
    return analytics_pb2.ProcessEventStreamResponse(
        acks=[
            ack(event_id=event_id, status=int(verdict), reason=reason)  # type: ignore[arg-type]
            for event_id, verdict, reason in outcome.acks()
        ],
        alerts=[_alert(alert) for alert in outcome.alerts],
    )


def _alert(alert: Alert) -> analytics_pb2.Alert:
    return analytics_pb2.Alert(
        rule=alert.rule,
        message=alert.message,
        value=alert.value,
        threshold=alert.threshold,
        at=_timestamp(alert.at),
    )


def _snapshot(snapshot: Snapshot, types: Sequence[int]) -> analytics_pb2.MetricsSnapshot:
    counts = snapshot.counts
    return analytics_pb2.MetricsSnapshot(
        as_of=_timestamp(snapshot.as_of),
        window=duration_pb2.Duration(seconds=snapshot.window),
        orders_created=counts[Kind.ORDER_CREATED],
        orders_paid=counts[Kind.ORDER_PAID],
        orders_cancelled=counts[Kind.ORDER_CANCELLED],
        payments_captured=counts[Kind.PAYMENT_CAPTURED],
        payments_declined=counts[Kind.PAYMENT_DECLINED],
        payments_refunded=counts[Kind.PAYMENT_REFUNDED],
        events_total=snapshot.events_total,
        revenue=[to_proto(Money(snapshot.revenue[c], c)) for c in snapshot.currencies],
        orders_per_second=snapshot.orders_per_second,
        decline_rate=snapshot.decline_rate,
        metrics=[_metric(snapshot, metric_type) for metric_type in types],
    )


def _metric(snapshot: Snapshot, metric_type: int) -> analytics_pb2.Metric:
    kind: Any = metric_type
    if metric_type == MetricType.METRIC_TYPE_REVENUE:
        money = to_proto(Money(snapshot.main_revenue, snapshot.main_currency))
        return analytics_pb2.Metric(type=kind, money=money)
    if metric_type == MetricType.METRIC_TYPE_AVERAGE_ORDER_VALUE:
        money = to_proto(Money(snapshot.average_order_value, snapshot.main_currency))
        return analytics_pb2.Metric(type=kind, money=money)
    values: dict[int, float] = {
        MetricType.METRIC_TYPE_ORDERS_PER_SECOND: snapshot.orders_per_second,
        MetricType.METRIC_TYPE_DECLINE_RATE: snapshot.decline_rate,
        MetricType.METRIC_TYPE_CANCELLATION_RATE: snapshot.cancellation_rate,
        MetricType.METRIC_TYPE_EVENTS_PER_SECOND: snapshot.events_per_second,
    }
    value = values[metric_type]
    return analytics_pb2.Metric(type=kind, value=value)


def _timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    timestamp = timestamp_pb2.Timestamp()
    timestamp.FromNanoseconds(round(seconds * 1e9))
    return timestamp
