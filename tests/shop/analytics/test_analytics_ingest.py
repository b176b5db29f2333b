"""Stages 1-3: validate, dedupe, enrich."""

from __future__ import annotations

import pytest

from shop.analytics.domain import EventColumns, Kind
from shop.analytics.ingest import Deduper, Validator, enrich
from shop.common.money import Money

from .conftest import T0, EventType, MakeEvent


def test_a_clean_batch_is_all_valid_with_amounts_in_minor_units(make_event: MakeEvent) -> None:
    events = [make_event(EventType.EVENT_TYPE_PAYMENT_CAPTURED, 1999), make_event(amount=500)]
    checked = Validator().validate(events, T0)
    assert checked.rejections == []
    assert list(checked.event_ids) == ["evt-1", "evt-2"]
    assert list(checked.events.rows()) == [
        (0, "evt-1", Kind.PAYMENT_CAPTURED, int(T0), "USD", 1999),
        (1, "evt-2", Kind.ORDER_CREATED, int(T0), "USD", 500),
    ]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda e: setattr(e, "id", ""), "id: required"),
        (lambda e: setattr(e, "type", 0), "type: unknown event type 0"),
        (lambda e: setattr(e, "type", 42), "type: unknown event type 42"),
        (lambda e: e.ClearField("occurred_at"), "occurred_at: required"),
        (
            lambda e: setattr(e.occurred_at, "seconds", int(T0) + 301),
            "occurred_at: more than 5 minutes in the future",
        ),
        (lambda e: setattr(e.amount, "currency_code", "usd"), "amount: currency_code 'usd'"),
        (lambda e: setattr(e.amount, "nanos", 5), "amount: USD amounts cannot be finer"),
        (lambda e: setattr(e.amount, "nanos", -10_000_000), "amount: units and nanos"),
        (lambda e: setattr(e.amount, "units", -3), "amount: must not be negative"),
    ],
)
def test_invalid_events_are_rejected_with_a_reason(
    make_event: MakeEvent, change: object, reason: str
) -> None:
    good, bad, also_good = make_event(amount=100), make_event(amount=100), make_event()
    assert callable(change)
    change(bad)
    checked = Validator().validate([good, bad, also_good], T0)
    assert [index for index, _ in checked.rejections] == [1]
    assert checked.rejections[0][1].startswith(reason)
    assert list(checked.events.indexes) == [0, 2]


def test_an_event_five_minutes_ahead_is_still_valid(make_event: MakeEvent) -> None:
    checked = Validator().validate([make_event(at=T0 + 300)], T0)
    assert checked.rejections == []


def test_fast_path_and_event_by_event_path_agree(make_event: MakeEvent) -> None:
    """A batch with a never-seen currency goes event by event; a second, identical batch
    takes the whole-batch path. Both must produce the same columns."""
    validator = Validator()
    batch = [
        make_event(EventType.EVENT_TYPE_PAYMENT_CAPTURED, Money(250, "EUR"), id="a"),
        make_event(EventType.EVENT_TYPE_ORDER_PAID, id="b"),
        make_event(EventType.EVENT_TYPE_ORDER_CREATED, Money(990, "EUR"), id="c"),
    ]
    first = validator.validate(batch, T0)
    second = validator.validate(batch, T0)
    assert isinstance(first.events.indexes, tuple)  # built event by event
    assert isinstance(second.events.indexes, range)  # whole-batch fast path
    assert list(first.events.rows()) == list(second.events.rows())
    assert [row[4:] for row in second.events.rows()] == [("EUR", 250), ("", 0), ("EUR", 990)]


def test_mixed_scales_take_the_careful_path(make_event: MakeEvent) -> None:
    validator = Validator()
    batch = [make_event(amount=Money(1000, "JPY")), make_event(amount=Money(1234, "USD"))]
    validator.validate(batch, T0)  # learn both currencies
    checked = validator.validate(batch, T0)
    assert [row[5] for row in checked.events.rows()] == [1000, 1234]


def test_an_empty_batch_is_fine() -> None:
    checked = Validator().validate([], T0)
    assert len(checked.events) == 0
    assert checked.rejections == []


def _columns(*ids: str) -> EventColumns:
    return EventColumns.of(
        (i, event_id, int(Kind.ORDER_CREATED), int(T0), "USD", 0) for i, event_id in enumerate(ids)
    )


def test_dedupe_drops_repeats_within_and_across_batches() -> None:
    deduper = Deduper()
    fresh, duplicates = deduper.fresh(_columns("a", "b", "a"), T0)
    assert list(fresh.ids) == ["a", "b"]
    assert duplicates == [2]
    fresh, duplicates = deduper.fresh(_columns("b", "c"), T0 + 1)
    assert list(fresh.ids) == ["c"]
    assert list(fresh.indexes) == [1]
    assert duplicates == [0]


def test_dedupe_forgets_ids_after_the_horizon() -> None:
    deduper = Deduper(horizon=60)
    deduper.fresh(_columns("a"), T0)
    deduper.fresh(_columns("b"), T0 + 30)
    _, duplicates = deduper.fresh(_columns("a", "b"), T0 + 59)
    assert duplicates == [0, 1]
    fresh, duplicates = deduper.fresh(_columns("a", "b"), T0 + 60)
    assert list(fresh.ids) == ["a"]  # a is forgotten, b (seen at +30) is not
    assert duplicates == [1]


def test_dedupe_memory_is_bounded_by_max_ids() -> None:
    deduper = Deduper(max_ids=3)
    deduper.fresh(_columns("a", "b"), T0)
    deduper.fresh(_columns("c", "d"), T0 + 1)
    assert len(deduper) == 3
    fresh, _ = deduper.fresh(_columns("a", "d"), T0 + 2)
    assert list(fresh.ids) == ["a"]  # the oldest id went first
    assert len(deduper) == 3


def test_enrich_clamps_future_seconds_and_defaults_the_currency() -> None:
    events = EventColumns.of(
        [
            (0, "a", int(Kind.PAYMENT_CAPTURED), int(T0) - 5, "", 100),
            (1, "b", int(Kind.PAYMENT_CAPTURED), int(T0) + 120, "EUR", 200),
        ]
    )
    enriched = enrich(events, T0)
    assert list(enriched.seconds) == [int(T0) - 5, int(T0)]
    assert list(enriched.currencies) == ["USD", "EUR"]
    assert list(enriched.ids) == ["a", "b"]


def test_enrich_leaves_a_clean_batch_untouched() -> None:
    events = _columns("a", "b")
    assert enrich(events, T0) is events
