"""The event bus between services: publish batches of domain events, subscribe by group.

``InMemoryEventBus`` serves the all-in-one process; ``NatsEventBus`` (shop.common.bus_nats, the
``nats`` extra) implements the same protocol on NATS JetStream for the distributed mode.
Delivery is at-least-once: handlers must drop duplicates by event id (analytics does).

Example::

    bus = await open_bus(settings.nats_url, name="orders")   # None: the in-process bus
    subscription = await bus.subscribe("analytics", handle_batch)
    await bus.publish(events)
    await bus.close()
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from shop.api.events.v1 import events_pb2

Handler = Callable[[Sequence[events_pb2.Event]], Awaitable[None]]


class Subscription(Protocol):
    async def close(self) -> None: ...


class EventBus(Protocol):
    """Where outbox relays publish and consumers subscribe."""

    async def publish(self, events: Sequence[events_pb2.Event]) -> None:
        """Deliver a batch; returns once the bus has accepted it (raise if it could not)."""
        ...

    async def subscribe(self, group: str, handler: Handler) -> Subscription:
        """Call ``handler`` with every batch published from now on, once per group."""
        ...


class ClosableEventBus(EventBus, Protocol):
    """An event bus its opener closes when the process stops."""

    async def close(self) -> None:
        """Close the subscriptions and release the connection."""
        ...


async def open_bus(nats_url: str | None, *, name: str = "shop") -> ClosableEventBus:
    """NATS JetStream at ``nats_url`` (``NatsEventBus``), or the in-process bus when ``None``.

    Raises ``ConnectionError`` (``NatsUnavailableError``) naming the URL when NATS cannot be
    reached or has no JetStream.

    Example: ``bus = await open_bus("nats://127.0.0.1:4222", name="orders")``
    """
    if nats_url is None:
        return InMemoryEventBus()
    from shop.common.bus_nats import NatsEventBus

    return await NatsEventBus.connect(nats_url, name=name)


class _MemorySubscription:
    def __init__(self, bus: InMemoryEventBus, group: str, handler: Handler) -> None:
        self._bus, self.group, self.handler = bus, group, handler

    async def close(self) -> None:
        self._bus._remove(self)


class InMemoryEventBus:
    """Delivers each batch to every subscriber group in the publishing task.

    A handler that raises does not stop the others; the error goes to ``on_error`` and the
    publish still counts as accepted (the consumer owns its failures, as with a real broker).
    """

    def __init__(self, on_error: Callable[[str, BaseException], None] | None = None) -> None:
        self._subscriptions: list[_MemorySubscription] = []
        self._on_error = on_error
        self.published = 0

    async def publish(self, events: Sequence[events_pb2.Event]) -> None:
        if not events:
            return
        self.published += len(events)
        for sub in list(self._subscriptions):
            try:
                await sub.handler(events)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._on_error is not None:
                    self._on_error(sub.group, exc)

    async def subscribe(self, group: str, handler: Handler) -> Subscription:
        sub = _MemorySubscription(self, group, handler)
        self._subscriptions.append(sub)
        return sub

    async def close(self) -> None:
        """Drop every subscription."""
        self._subscriptions.clear()

    def _remove(self, sub: _MemorySubscription) -> None:
        if sub in self._subscriptions:
            self._subscriptions.remove(sub)
