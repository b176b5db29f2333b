"""mount(): AnalyticsService on the App, fed by the event bus; the subscription ends on stop."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from grpckit import App, ServerConfig, dial
from shop.analytics.main import BUS_GROUP, mount
from shop.api.analytics.v1 import analytics_pb2, analytics_pb2_grpc
from shop.api.events.v1 import events_pb2
from shop.common.bus import Handler, InMemoryEventBus, Subscription
from shop.common.runtime import ServiceContext, Settings

from .conftest import EventType, MakeEvent


@dataclass
class RecordingBus:
    """An in-memory bus that remembers which groups subscribed and which closed."""

    inner: InMemoryEventBus = field(default_factory=InMemoryEventBus)
    groups: list[str] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)

    async def publish(self, events: Sequence[events_pb2.Event]) -> None:
        await self.inner.publish(events)

    async def subscribe(self, group: str, handler: Handler) -> Subscription:
        subscription = await self.inner.subscribe(group, handler)
        self.groups.append(group)
        bus = self

        class Recorded:
            async def close(self) -> None:
                await subscription.close()
                bus.closed.append(group)

        return Recorded()


async def test_events_from_the_bus_reach_the_metrics(make_event: MakeEvent) -> None:
    bus = RecordingBus()
    ctx = ServiceContext(settings=Settings(), bus=bus, peers={})
    app = App(ServerConfig(grace_period=1.0), name="analytics-test")
    await mount(app, ctx)
    assert bus.groups == [BUS_GROUP]
    async with app:
        channel = dial(app.address)
        stub = analytics_pb2_grpc.AnalyticsServiceStub(channel)
        now = time.time()  # mount() runs on the system clock
        created = make_event(EventType.EVENT_TYPE_ORDER_CREATED, 1_000, at=now)
        captured = make_event(EventType.EVENT_TYPE_PAYMENT_CAPTURED, 1_000, at=now)
        await bus.publish([created, captured])
        await bus.publish([created])  # redelivered: dropped by id
        reply = await stub.GetMetrics(analytics_pb2.GetMetricsRequest())
        assert (reply.snapshot.orders_created, reply.snapshot.events_total) == (1, 2)
        await channel.close(None)
    assert bus.closed == [BUS_GROUP]
