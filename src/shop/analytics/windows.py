"""Stage 4, aggregate: a ring of 60 per-second buckets; windows are summed when read.

Each bucket holds one counter per ``Kind`` (slot 0 counts every event) and the revenue of
that second per currency (captured minus refunded, minor units). Adding a batch counts its
events by (second, kind) with ``Counter`` first, so buckets are touched once per group, not once
per event; only payments and created orders are visited one by one, for their amounts.
Reading a window of N seconds sums the last N buckets: O(N), at most 60.

Example::

    windows = SlidingWindows()
    summary = windows.add(facts, now)
    snapshot = windows.snapshot(10, now)
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from itertools import compress
from operator import add

from shop.analytics.domain import (
    SLOTS,
    SPAN,
    WINDOWS,
    EventColumns,
    Kind,
    Snapshot,
    UnknownWindowError,
)

__all__ = ["BatchSummary", "SlidingWindows"]

_CAPTURED = int(Kind.PAYMENT_CAPTURED)
_REFUNDED = int(Kind.PAYMENT_REFUNDED)
_CREATED = int(Kind.ORDER_CREATED)
#: Whether a kind moves revenue (captured adds, refunded takes back), indexed by kind.
_MOVES_MONEY = tuple(kind in (Kind.PAYMENT_CAPTURED, Kind.PAYMENT_REFUNDED) for kind in Kind)
_IS_CREATED = tuple(kind is Kind.ORDER_CREATED for kind in Kind)


@dataclass(slots=True)
class BatchSummary:
    """What one batch added: counts by ``Kind``, the largest order created per currency and
    how many events were older than the ring (accepted, but in no window)."""

    counts: list[int] = field(default_factory=lambda: [0] * SLOTS)
    largest_order: dict[str, int] = field(default_factory=dict)
    too_old: int = 0


class SlidingWindows:
    """Per-second buckets covering the last 60 seconds (event time, clamped by ``enrich``)."""

    def __init__(self) -> None:
        self._seconds = [-1] * SPAN
        self._counts = [[0] * SLOTS for _ in range(SPAN)]
        self._revenue: list[dict[str, int]] = [{} for _ in range(SPAN)]

    def add(self, events: EventColumns, now: float) -> BatchSummary:
        """Count a batch of enriched events into their buckets."""
        summary = BatchSummary()
        if not events:
            return summary
        kinds, seconds = events.kinds, events.seconds
        first, last = min(seconds), max(seconds)
        if first == last:
            groups: Counter[tuple[int, int]] = Counter(
                {(first, kind): number for kind, number in Counter(kinds).items()}
            )
        else:
            groups = Counter(zip(seconds, kinds, strict=True))
        present = {kind for _, kind in groups}
        oldest = int(now) - SPAN + 1
        counts = summary.counts
        for (second, kind), number in groups.items():
            counts[kind] += number
            counts[Kind.ALL] += number
            bucket = self._bucket(second) if second >= oldest else None
            if bucket is None:
                summary.too_old += number
                continue
            bucket[kind] += number
            bucket[Kind.ALL] += number
        if _CAPTURED in present or _REFUNDED in present:
            self._add_revenue(events, oldest)
        if _CREATED in present:
            summary.largest_order = _largest_orders(events)
        return summary

    def _add_revenue(self, events: EventColumns, oldest: int) -> None:
        revenue: dict[tuple[int, str], int] = {}
        moves = compress(
            zip(events.kinds, events.seconds, events.currencies, events.minors, strict=True),
            map(_MOVES_MONEY.__getitem__, events.kinds),
        )
        for kind, second, currency, minor in moves:
            key = (second, currency)
            revenue[key] = revenue.get(key, 0) + (minor if kind == _CAPTURED else -minor)
        for (second, currency), minor in revenue.items():
            if second >= oldest and self._bucket(second) is not None:
                amounts = self._revenue[second % SPAN]
                amounts[currency] = amounts.get(currency, 0) + minor

    def _bucket(self, second: int) -> list[int] | None:
        """The counters of ``second``, recycled if the slot held an older second; ``None`` if
        it holds a newer one (the clock went back)."""
        slot = second % SPAN
        held = self._seconds[slot]
        if held > second:
            return None
        if held != second:
            self._seconds[slot] = second
            self._counts[slot] = [0] * SLOTS
            self._revenue[slot] = {}
        return self._counts[slot]

    def counts(self, window: int, now: float) -> list[int]:
        """Counts by ``Kind`` over the last ``window`` seconds (1 to 60)."""
        counts = [0] * SLOTS
        for slot in self._slots(window, now):
            counts = list(map(add, counts, self._counts[slot]))
        return counts

    def revenue(self, window: int, now: float) -> dict[str, int]:
        """Captured minus refunded minor units by currency over the last ``window`` seconds."""
        revenue: dict[str, int] = {}
        for slot in self._slots(window, now):
            for currency, minor in self._revenue[slot].items():
                revenue[currency] = revenue.get(currency, 0) + minor
        return revenue

    def _slots(self, window: int, now: float) -> list[int]:
        if not 1 <= window <= SPAN:
            raise UnknownWindowError(window)
        last = int(now)
        seconds = self._seconds
        return [
            second % SPAN
            for second in range(last - window + 1, last + 1)
            if seconds[second % SPAN] == second
        ]

    def snapshot(self, window: int, now: float) -> Snapshot:
        """The aggregates over one of ``WINDOWS`` ending at ``now``."""
        if window not in WINDOWS:
            raise UnknownWindowError(window)
        counts, revenue = self.counts(window, now), self.revenue(window, now)
        return Snapshot(as_of=now, window=window, counts=tuple(counts), revenue=revenue)


def _largest_orders(events: EventColumns) -> dict[str, int]:
    """The largest amount of an ORDER_CREATED event, per currency."""
    largest: dict[str, int] = {}
    created = map(_IS_CREATED.__getitem__, events.kinds)
    for currency, minor in compress(zip(events.currencies, events.minors, strict=True), created):
        if minor > largest.get(currency, 0):
            largest[currency] = minor
    return largest
