"""Stage 4, aggregate: a ring of 60 per-second buckets; windows are summed when read.

Each bucket holds one counter per ``Kind`` (slot 0 counts every event) and the revenue of
that second per currency (captured minus refunded, minor units). Adding a batch groups its
events by (second, kind) first, so buckets are touched once per group, not once per event.
Reading a window of N seconds sums the last N buckets: O(N), at most 60.

Example::

    windows = SlidingWindows()
    summary = windows.add(facts, now)
    snapshot = windows.snapshot(10, now)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from operator import add

from shop.analytics.domain import SLOTS, SPAN, WINDOWS, Fact, Kind, Snapshot, UnknownWindowError

__all__ = ["BatchSummary", "SlidingWindows"]

_CAPTURED = int(Kind.PAYMENT_CAPTURED)
_REFUNDED = int(Kind.PAYMENT_REFUNDED)
_CREATED = int(Kind.ORDER_CREATED)
_SHIFT = 3  # (second << _SHIFT) | kind keys one group; kinds fit in 3 bits
assert SLOTS <= 1 << _SHIFT


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

    def add(self, facts: Sequence[Fact], now: float) -> BatchSummary:
        """Count a batch of enriched events into their buckets."""
        groups: dict[int, int] = {}
        revenue: dict[tuple[int, str], int] = {}
        summary = BatchSummary()
        largest = summary.largest_order
        for kind, second, currency, minor in facts:
            key = second << _SHIFT | kind
            groups[key] = groups.get(key, 0) + 1
            if kind == _CAPTURED:
                revenue[second, currency] = revenue.get((second, currency), 0) + minor
            elif kind == _REFUNDED:
                revenue[second, currency] = revenue.get((second, currency), 0) - minor
            elif kind == _CREATED and minor > largest.get(currency, 0):
                largest[currency] = minor
        oldest = int(now) - SPAN + 1
        counts = summary.counts
        for key, number in groups.items():
            second, kind = key >> _SHIFT, key & ((1 << _SHIFT) - 1)
            counts[kind] += number
            counts[Kind.ALL] += number
            bucket = self._bucket(second) if second >= oldest else None
            if bucket is None:
                summary.too_old += number
                continue
            bucket[kind] += number
            bucket[Kind.ALL] += number
        for (second, currency), minor in revenue.items():
            if second >= oldest and self._bucket(second) is not None:
                amounts = self._revenue[second % SPAN]
                amounts[currency] = amounts.get(currency, 0) + minor
        return summary

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

    def totals(self, window: int, now: float) -> tuple[list[int], dict[str, int]]:
        """(counts by ``Kind``, revenue by currency) over the last ``window`` seconds."""
        if not 1 <= window <= SPAN:
            raise UnknownWindowError(window)
        counts = [0] * SLOTS
        revenue: dict[str, int] = {}
        last = int(now)
        for second in range(last - window + 1, last + 1):
            slot = second % SPAN
            if self._seconds[slot] != second:
                continue
            counts = list(map(add, counts, self._counts[slot]))
            for currency, minor in self._revenue[slot].items():
                revenue[currency] = revenue.get(currency, 0) + minor
        return counts, revenue

    def snapshot(self, window: int, now: float) -> Snapshot:
        """The aggregates over one of ``WINDOWS`` ending at ``now``."""
        if window not in WINDOWS:
            raise UnknownWindowError(window)
        counts, revenue = self.totals(window, now)
        return Snapshot(as_of=now, window=window, counts=tuple(counts), revenue=revenue)
