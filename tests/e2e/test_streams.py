"""The three streaming RPC kinds over a real process: client, server and bidirectional."""

from __future__ import annotations

import asyncio
import secrets

import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2
from google.type import money_pb2

from shop.api.analytics.v1 import analytics_pb2
from shop.api.catalog.v1 import catalog_pb2
from shop.api.events.v1 import events_pb2
from shop.api.orders.v1 import orders_pb2
from tests.e2e.clients import Stubs, order_request
from tests.e2e.harness import ShopProcess

pytestmark = pytest.mark.e2e


def _event(kind: int = events_pb2.EVENT_TYPE_ORDER_CREATED) -> events_pb2.Event:
    now = timestamp_pb2.Timestamp()
    now.GetCurrentTime()
    return events_pb2.Event(
        id=secrets.token_hex(8),
        type=kind,
        occurred_at=now,
        source="test",
        order_id=secrets.token_hex(8),
        amount=money_pb2.Money(currency_code="USD", units=10),
    )


async def test_import_products_client_stream(channel: grpc.aio.Channel) -> None:
    stubs = Stubs.on(channel)
    sku = f"IMP-{secrets.token_hex(3).upper()}"

    async def requests():  # type: ignore[no-untyped-def]
        for i in range(50):
            yield catalog_pb2.ImportProductsRequest(
                product=catalog_pb2.Product(
                    sku=f"{sku}-{i}", name=f"Imported {i}", stock=5,
                    price=money_pb2.Money(currency_code="USD", units=3, nanos=500_000_000),
                )
            )  # fmt: skip
        yield catalog_pb2.ImportProductsRequest(product=catalog_pb2.Product(sku="", name=""))

    reply = await stubs.catalog.ImportProducts(requests(), timeout=20)
    assert (reply.created, reply.updated, reply.failed) == (50, 0, 1)
    found = await stubs.catalog.SearchProducts(
        catalog_pb2.SearchProductsRequest(query=f"{sku}-49"), timeout=5
    )
    assert [p.sku for p in found.products] == [f"{sku}-49"]


async def test_watch_order_server_stream_ends_on_terminal_status(channel: grpc.aio.Channel) -> None:
    stubs = Stubs.on(channel)
    user_id, product = await stubs.customer(), await stubs.product()
    reply = await stubs.gateway.ProcessOrder(order_request(user_id, product.id), timeout=15)
    statuses = [
        r.order.status
        async for r in stubs.orders.WatchOrder(
            orders_pb2.WatchOrderRequest(order_id=reply.order.id), timeout=10
        )
    ]
    assert statuses[-1] == orders_pb2.ORDER_STATUS_PAID


async def test_process_event_stream_bidi_is_message_by_message(channel: grpc.aio.Channel) -> None:
    stubs = Stubs.on(channel)
    call = stubs.analytics.ProcessEventStream(timeout=20)
    for size in (1, 100, 3):
        batch = [_event() for _ in range(size)]
        await call.write(analytics_pb2.ProcessEventStreamRequest(events=batch))
        answer = await call.read()  # the answer arrives before we send the next batch
        assert [a.event_id for a in answer.acks] == [e.id for e in batch]
        assert all(a.status == analytics_pb2.ACK_STATUS_ACCEPTED for a in answer.acks)
    await call.done_writing()
    assert await call.read() == grpc.aio.EOF


async def test_ingest_then_metrics_and_stream_cancellation(
    shop: ShopProcess, channel: grpc.aio.Channel
) -> None:
    stubs = Stubs.on(channel)

    async def batches():  # type: ignore[no-untyped-def]
        for _ in range(10):
            yield analytics_pb2.IngestEventsRequest(events=[_event() for _ in range(100)])

    reply = await stubs.analytics.IngestEvents(batches(), timeout=20)
    assert (reply.accepted, reply.rejected) == (1000, 0)
    request = analytics_pb2.StreamRealTimeMetricsRequest(
        window=duration_pb2.Duration(seconds=60), interval=duration_pb2.Duration(nanos=100_000_000)
    )
    call = stubs.analytics.StreamRealTimeMetrics(request)
    first = await call.read()
    assert first.snapshot.orders_created >= 1000
    call.cancel()
    # The server-side handler must end promptly: its call record is logged with CANCELLED.
    record = shop.wait_for(
        lambda r: r.get("method") == "StreamRealTimeMetrics" and r.get("code") == "CANCELLED",
        timeout=5,
    )
    assert record["service"] == "shop.analytics.v1.AnalyticsService"


async def test_orders_flow_into_analytics(channel: grpc.aio.Channel) -> None:
    stubs = Stubs.on(channel)
    user_id, product = await stubs.customer(), await stubs.product()
    await stubs.gateway.ProcessOrder(order_request(user_id, product.id), timeout=15)
    window = analytics_pb2.GetMetricsRequest(window=duration_pb2.Duration(seconds=60))
    for _ in range(100):  # the outbox relay publishes asynchronously: poll, bounded
        snapshot = (await stubs.analytics.GetMetrics(window, timeout=5)).snapshot
        if snapshot.orders_paid >= 1 and snapshot.payments_captured >= 1:
            break
        await asyncio.sleep(0.1)
    assert snapshot.orders_created >= 1
    assert snapshot.orders_paid >= 1
    assert snapshot.payments_captured >= 1
