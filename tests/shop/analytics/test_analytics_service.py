"""AnalyticsService over a real grpc.aio server on 127.0.0.1:0 (grpckit's in-process App)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest
from google.protobuf import duration_pb2

from grpckit.errors import StatusError
from grpckit.testing import Service, serve_in_process
from shop.analytics.clock import FakeClock
from shop.analytics.pipeline import Pipeline
from shop.analytics.service import AnalyticsService
from shop.api.analytics.v1 import analytics_pb2, analytics_pb2_grpc
from shop.common.money import Money

from .conftest import EventType, MakeEvent

pb = analytics_pb2
ACCEPTED, REJECTED, DUPLICATE = (
    pb.ACK_STATUS_ACCEPTED,
    pb.ACK_STATUS_REJECTED,
    pb.ACK_STATUS_DUPLICATE,
)


@dataclass
class Server:
    stub: analytics_pb2_grpc.AnalyticsServiceAsyncStub
    service: AnalyticsService
    clock: FakeClock


@pytest.fixture
async def server(clock: FakeClock) -> AsyncIterator[Server]:
    service = AnalyticsService(Pipeline(clock), sleep=clock.sleep)
    descriptor = analytics_pb2.DESCRIPTOR.services_by_name["AnalyticsService"]
    add = analytics_pb2_grpc.add_AnalyticsServiceServicer_to_server
    async with serve_in_process(Service(add, service, descriptor)) as running:
        yield Server(analytics_pb2_grpc.AnalyticsServiceStub(running.channel), service, clock)


async def test_ingest_events_counts_every_batch(server: Server, make_event: MakeEvent) -> None:
    batches = [
        [make_event(id="a"), make_event(id="b"), make_event(id="")],
        [make_event(id="b"), make_event(EventType.EVENT_TYPE_PAYMENT_CAPTURED, 1250, id="c")],
    ]

    async def requests() -> AsyncIterator[pb.IngestEventsRequest]:
        for events in batches:
            yield pb.IngestEventsRequest(events=events)

    reply = await server.stub.IngestEvents(requests())
    assert (reply.accepted, reply.rejected, reply.duplicates) == (3, 1, 1)
    snapshot = (await server.stub.GetMetrics(pb.GetMetricsRequest())).snapshot
    assert (snapshot.orders_created, snapshot.payments_captured, snapshot.events_total) == (2, 1, 3)
    assert [(m.currency_code, m.units, m.nanos) for m in snapshot.revenue] == [
        ("USD", 12, 500_000_000)
    ]


async def test_process_event_stream_answers_each_batch_before_the_next(
    server: Server, make_event: MakeEvent
) -> None:
    call = server.stub.ProcessEventStream()
    await call.write(pb.ProcessEventStreamRequest(events=[make_event(id="a"), make_event(id="")]))
    first = await asyncio.wait_for(call.read(), timeout=5)  # answered before the next batch
    assert isinstance(first, pb.ProcessEventStreamResponse)
    assert [(a.event_id, a.status) for a in first.acks] == [("a", ACCEPTED), ("", REJECTED)]
    assert first.acks[1].reason == "id: required"
    assert list(first.alerts) == []

    big = make_event(EventType.EVENT_TYPE_ORDER_CREATED, 600_000, id="big")
    await call.write(pb.ProcessEventStreamRequest(events=[make_event(id="a"), big]))
    second = await asyncio.wait_for(call.read(), timeout=5)
    assert isinstance(second, pb.ProcessEventStreamResponse)
    assert [(a.event_id, a.status) for a in second.acks] == [("a", DUPLICATE), ("big", ACCEPTED)]
    assert [(a.rule, a.value, a.threshold) for a in second.alerts] == [
        ("LARGE_ORDER", 6000.0, 5000.0)
    ]
    assert second.alerts[0].at.seconds == int(server.clock.now())
    await call.done_writing()
    assert await call.read() == grpc.aio.EOF
    assert await call.code() == grpc.StatusCode.OK


async def test_get_metrics_windows(server: Server, make_event: MakeEvent) -> None:
    pipeline = server.service.pipeline
    pipeline.process([make_event(EventType.EVENT_TYPE_PAYMENT_CAPTURED, Money(900, "EUR"))])
    server.clock.advance(5)
    pipeline.process(
        [
            make_event(EventType.EVENT_TYPE_PAYMENT_CAPTURED, 2_000),
            make_event(EventType.EVENT_TYPE_ORDER_PAID),
        ]
    )

    async def snapshot(seconds: int | None) -> pb.MetricsSnapshot:
        window = None if seconds is None else duration_pb2.Duration(seconds=seconds)
        return (await server.stub.GetMetrics(pb.GetMetricsRequest(window=window))).snapshot

    default = await snapshot(None)
    assert default.window.seconds == 10
    assert [m.currency_code for m in default.revenue] == ["USD", "EUR"]
    assert default.events_total == 3
    assert (await snapshot(1)).events_total == 2
    assert (await snapshot(60)).payments_captured == 2
    metrics = {m.type: m for m in default.metrics}
    assert len(default.metrics) == 6
    assert metrics[pb.METRIC_TYPE_AVERAGE_ORDER_VALUE].money.units == 20
    assert metrics[pb.METRIC_TYPE_EVENTS_PER_SECOND].value == 0.3


@pytest.mark.parametrize(
    "window", [duration_pb2.Duration(seconds=5), duration_pb2.Duration(nanos=1)]
)
async def test_get_metrics_rejects_other_windows(
    server: Server, window: duration_pb2.Duration
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await server.stub.GetMetrics(pb.GetMetricsRequest(window=window))
    error = StatusError.from_rpc_error(caught.value)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.field_violations == [("window", "must be 1s, 10s or 60s")]


async def test_stream_real_time_metrics_follows_ingestion_and_stops_on_cancel(
    server: Server, make_event: MakeEvent
) -> None:
    request = pb.StreamRealTimeMetricsRequest(
        metric_types=[pb.METRIC_TYPE_REVENUE, pb.METRIC_TYPE_ORDERS_PER_SECOND],
        interval=duration_pb2.Duration(nanos=250_000_000),
    )
    call = server.stub.StreamRealTimeMetrics(request)
    first = await call.read()
    assert isinstance(first, pb.StreamRealTimeMetricsResponse)
    assert first.snapshot.events_total == 0
    assert server.service.active_streams == 1

    server.service.pipeline.process(
        [make_event(), make_event(EventType.EVENT_TYPE_PAYMENT_CAPTURED, 4_200)]
    )
    await server.clock.wait_for_sleepers(1)
    server.clock.advance(0.25)
    second = await call.read()
    assert isinstance(second, pb.StreamRealTimeMetricsResponse)
    snapshot = second.snapshot
    assert (snapshot.orders_created, snapshot.events_total) == (1, 2)
    assert [m.type for m in snapshot.metrics] == [
        pb.METRIC_TYPE_REVENUE,
        pb.METRIC_TYPE_ORDERS_PER_SECOND,
    ]
    assert snapshot.metrics[0].money.units == 42
    assert snapshot.metrics[1].value == 0.1

    call.cancel()
    await asyncio.wait_for(server.service.wait_idle(), timeout=5)
    assert server.service.active_streams == 0
    assert server.clock.sleepers == 0


async def test_stream_real_time_metrics_reports_every_bad_field(server: Server) -> None:
    request = pb.StreamRealTimeMetricsRequest(
        metric_types=[pb.METRIC_TYPE_DECLINE_RATE, pb.METRIC_TYPE_UNSPECIFIED, 99],  # type: ignore[list-item]
        window=duration_pb2.Duration(seconds=7),
        interval=duration_pb2.Duration(nanos=99_000_000),
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await server.stub.StreamRealTimeMetrics(request).read()
    error = StatusError.from_rpc_error(caught.value)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [field for field, _ in error.field_violations] == [
        "metric_types[1]",
        "metric_types[2]",
        "window",
        "interval",
    ]
    assert server.service.active_streams == 0


async def test_stream_defaults_to_every_metric_every_second(server: Server) -> None:
    call = server.stub.StreamRealTimeMetrics(pb.StreamRealTimeMetricsRequest())
    first = await call.read()
    assert isinstance(first, pb.StreamRealTimeMetricsResponse)
    assert [m.type for m in first.snapshot.metrics] == list(range(1, 7))
    assert first.snapshot.window.seconds == 10
    await server.clock.wait_for_sleepers(1)
    server.clock.advance(0.999)
    assert server.clock.sleepers == 1  # not yet a second
    server.clock.advance(0.001)
    assert isinstance(await call.read(), pb.StreamRealTimeMetricsResponse)
    call.cancel()
    await asyncio.wait_for(server.service.wait_idle(), timeout=5)
