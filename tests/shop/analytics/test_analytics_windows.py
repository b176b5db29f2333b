"""Stage 4: sliding windows over the per-second ring, and the snapshot's derived metrics."""

from __future__ import annotations

import pytest

from shop.analytics.domain import EventColumns, Kind, Snapshot, UnknownWindowError
from shop.analytics.windows import SlidingWindows

from .conftest import T0

NOW = int(T0)


def _batch(*events: tuple[Kind, int, str, int]) -> EventColumns:
    """(kind, second, currency, minor) per event."""
    return EventColumns.of(
        (i, f"e{i}", int(kind), second, currency, minor)
        for i, (kind, second, currency, minor) in enumerate(events)
    )


def test_an_event_leaves_the_1s_window_but_stays_in_the_60s_window() -> None:
    windows = SlidingWindows()
    windows.add(_batch((Kind.ORDER_CREATED, NOW, "USD", 100)), NOW)
    assert windows.snapshot(1, NOW).count(Kind.ORDER_CREATED) == 1
    later = NOW + 1
    assert windows.snapshot(1, later).count(Kind.ORDER_CREATED) == 0
    assert windows.snapshot(10, later).count(Kind.ORDER_CREATED) == 1
    assert windows.snapshot(60, NOW + 59).count(Kind.ORDER_CREATED) == 1
    assert windows.snapshot(10, NOW + 10).count(Kind.ORDER_CREATED) == 0
    assert windows.snapshot(60, NOW + 60).count(Kind.ORDER_CREATED) == 0


def test_windows_sum_the_last_n_buckets() -> None:
    windows = SlidingWindows()
    for offset in range(60):
        windows.add(_batch((Kind.ORDER_PAID, NOW + offset, "USD", 0)), NOW + offset)
    last = NOW + 59
    assert windows.snapshot(1, last).count(Kind.ORDER_PAID) == 1
    assert windows.snapshot(10, last).count(Kind.ORDER_PAID) == 10
    assert windows.snapshot(60, last).count(Kind.ORDER_PAID) == 60
    assert windows.snapshot(60, last).events_total == 60


def test_a_bucket_is_recycled_when_the_ring_wraps() -> None:
    windows = SlidingWindows()
    windows.add(_batch((Kind.ORDER_CREATED, NOW, "USD", 0)), NOW)
    windows.add(_batch((Kind.ORDER_CANCELLED, NOW + 60, "USD", 0)), NOW + 60)  # same slot
    snapshot = windows.snapshot(60, NOW + 60)
    assert snapshot.count(Kind.ORDER_CREATED) == 0
    assert snapshot.count(Kind.ORDER_CANCELLED) == 1


def test_late_events_count_in_their_own_second() -> None:
    windows = SlidingWindows()
    summary = windows.add(
        _batch(
            (Kind.ORDER_CREATED, NOW - 5, "USD", 0),
            (Kind.ORDER_CREATED, NOW, "USD", 0),
            (Kind.ORDER_CREATED, NOW - 60, "USD", 0),  # older than the ring
        ),
        NOW,
    )
    assert summary.too_old == 1
    assert summary.counts[Kind.ORDER_CREATED] == 3
    assert windows.snapshot(1, NOW).count(Kind.ORDER_CREATED) == 1
    assert windows.snapshot(10, NOW).count(Kind.ORDER_CREATED) == 2
    assert windows.snapshot(60, NOW).count(Kind.ORDER_CREATED) == 2


def test_revenue_is_captured_minus_refunded_per_currency() -> None:
    windows = SlidingWindows()
    windows.add(
        _batch(
            (Kind.PAYMENT_CAPTURED, NOW - 2, "USD", 10_000),
            (Kind.PAYMENT_CAPTURED, NOW, "EUR", 5_000),
            (Kind.PAYMENT_REFUNDED, NOW, "USD", 2_500),
            (Kind.PAYMENT_DECLINED, NOW, "USD", 99_999),
            (Kind.ORDER_CREATED, NOW, "USD", 77_777),
        ),
        NOW,
    )
    assert windows.snapshot(10, NOW).revenue == {"USD": 7_500, "EUR": 5_000}
    assert windows.snapshot(1, NOW).revenue == {"USD": -2_500, "EUR": 5_000}


def test_the_largest_order_of_a_batch_is_reported_per_currency() -> None:
    windows = SlidingWindows()
    summary = windows.add(
        _batch(
            (Kind.ORDER_CREATED, NOW, "USD", 300),
            (Kind.ORDER_CREATED, NOW, "USD", 900),
            (Kind.ORDER_CREATED, NOW, "EUR", 50),
            (Kind.PAYMENT_CAPTURED, NOW, "USD", 100_000),
        ),
        NOW,
    )
    assert summary.largest_order == {"USD": 900, "EUR": 50}


def test_only_1_10_and_60_second_windows_exist() -> None:
    with pytest.raises(UnknownWindowError):
        SlidingWindows().snapshot(5, NOW)


def _snapshot(window: int = 10, revenue: dict[str, int] | None = None, **counts: int) -> Snapshot:
    slots = [0] * len(Kind)
    for name, number in counts.items():
        slots[Kind[name.upper()]] = number
    slots[Kind.ALL] = sum(slots)
    return Snapshot(as_of=T0, window=window, counts=tuple(slots), revenue=revenue or {})


def test_derived_metrics() -> None:
    snapshot = _snapshot(
        revenue={"EUR": 100, "USD": 10_001},
        order_created=20,
        order_paid=3,
        order_cancelled=5,
        payment_captured=6,
        payment_declined=2,
    )
    assert snapshot.orders_per_second == 2.0
    assert snapshot.events_per_second == 3.6
    assert snapshot.decline_rate == 0.25
    assert snapshot.cancellation_rate == 0.25
    assert snapshot.currencies == ["USD", "EUR"]
    assert snapshot.average_order_value == 3_334  # 10,001 / 3 rounded half up


def test_derived_metrics_with_nothing_to_divide_by() -> None:
    snapshot = _snapshot()
    assert snapshot.decline_rate == 0.0
    assert snapshot.cancellation_rate == 0.0
    assert snapshot.average_order_value == 0
    assert snapshot.main_currency == "USD"
    assert snapshot.main_revenue == 0


def test_without_usd_the_currencies_are_sorted() -> None:
    assert _snapshot(revenue={"JPY": 1, "EUR": 2}).currencies == ["EUR", "JPY"]
