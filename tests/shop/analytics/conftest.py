"""Fixtures for analytics tests: a fake clock and a builder of ``shop.events.v1.Event``."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest

from shop.analytics.clock import FakeClock
from shop.api.events.v1 import events_pb2
from shop.common.money import Money, to_proto

T0 = 1_700_000_000.0
EventType = events_pb2.EventType
MakeEvent = Callable[..., events_pb2.Event]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=T0)


@pytest.fixture
def make_event(clock: FakeClock) -> MakeEvent:
    """``make_event(kind, amount=None, *, id=None, at=None)``: a valid event, unique id,
    ``occurred_at`` = the fake clock's now unless ``at`` is given; ``amount`` is a ``Money``
    or minor units of USD."""
    numbers = itertools.count(1)

    def build(
        kind: int = EventType.EVENT_TYPE_ORDER_CREATED,
        amount: Money | int | None = None,
        *,
        id: str | None = None,
        at: float | None = None,
    ) -> events_pb2.Event:
        event = events_pb2.Event(
            id=f"evt-{next(numbers)}" if id is None else id,
            type=kind,  # type: ignore[arg-type]
            source="test",
        )
        event.occurred_at.FromNanoseconds(round((clock.now() if at is None else at) * 1e9))
        if amount is not None:
            money = amount if isinstance(amount, Money) else Money(amount, "USD")
            event.amount.CopyFrom(to_proto(money))
        return event

    return build
