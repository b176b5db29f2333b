"""Analytics domain: event kinds, windows, alerts, snapshots and batch outcomes (no gRPC).

The ingestion pipeline is ``validate -> dedupe -> enrich -> aggregate -> alert`` (modules
``ingest``, ``windows``, ``alerts``, composed by ``pipeline``). Every stage takes a list and
returns a list; events travel between stages as plain tuples (see ``Candidate`` and ``Fact``)
so that a batch of 1,000 events costs 1,000 tuples and no other per-event objects.

Money is integer minor units per ISO 4217 currency, as in ``shop.common.money``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from operator import itemgetter
from typing import Any

from shop.common.money import DEFAULT_CURRENCY

__all__ = [
    "WINDOWS",
    "Alert",
    "BatchOutcome",
    "EventColumns",
    "Kind",
    "Snapshot",
    "UnknownWindowError",
    "Verdict",
]

#: Window lengths in seconds that snapshots can cover; the ring buffer covers the largest.
WINDOWS = (1, 10, 60)
#: Seconds of per-second buckets the aggregates keep.
SPAN = WINDOWS[-1]


class Kind(IntEnum):
    """What an event reports; the values are those of ``shop.events.v1.EventType``.

    ``Kind.ALL`` (0) is the slot that counts every event in a bucket.
    """

    ALL = 0
    ORDER_CREATED = 1
    ORDER_PAID = 2
    ORDER_CANCELLED = 3
    PAYMENT_CAPTURED = 4
    PAYMENT_DECLINED = 5
    PAYMENT_REFUNDED = 6


#: Number of counter slots per bucket (``Kind.ALL`` plus the six kinds).
SLOTS = len(Kind)


class Verdict(IntEnum):
    """How the pipeline took one event; values are those of ``shop.analytics.v1.AckStatus``."""

    ACCEPTED = 1
    REJECTED = 2
    DUPLICATE = 3


@dataclass(frozen=True, slots=True)
class EventColumns:
    """A batch of events as columns: entry ``i`` of every column is one event.

    Stages pass whole columns along (built and checked with C-level ``map``/``zip``/``set``
    calls), so the Python interpreter does little work per event. ``indexes`` are the events'
    positions in the batch as received, for the acks. ``currency`` is "" and ``minor`` 0 for an
    event without an amount.

    Example: ``EventColumns.of([(0, "e-1", Kind.ORDER_CREATED, 1_700_000_000, "USD", 1999)])``
    """

    indexes: Sequence[int]
    ids: Sequence[str]
    kinds: Sequence[int]
    seconds: Sequence[int]
    currencies: Sequence[str]
    minors: Sequence[int]

    @staticmethod
    def of(rows: Iterable[tuple[int, str, int, int, str, int]]) -> EventColumns:
        """Columns from ``(index, id, kind, second, currency, minor)`` rows."""
        columns = tuple(zip(*rows, strict=True))
        return EventColumns(*columns) if columns else EMPTY

    def __len__(self) -> int:
        return len(self.ids)

    def rows(self) -> Iterator[tuple[int, str, int, int, str, int]]:
        """The events as ``(index, id, kind, second, currency, minor)`` tuples."""
        return zip(
            self.indexes,
            self.ids,
            self.kinds,
            self.seconds,
            self.currencies,
            self.minors,
            strict=True,
        )

    def select(self, positions: Sequence[int]) -> EventColumns:
        """The events at ``positions`` (positions in these columns, not batch indexes)."""
        if len(positions) == len(self.ids):
            return self
        take = itemgetter(*positions) if positions else None
        if take is None:
            return EMPTY
        if len(positions) == 1:
            return EventColumns(*([take(column)] for column in self._columns()))
        return EventColumns(*(take(column) for column in self._columns()))

    def _columns(self) -> tuple[Sequence[Any], ...]:
        return (self.indexes, self.ids, self.kinds, self.seconds, self.currencies, self.minors)


EMPTY = EventColumns((), (), (), (), (), ())


class UnknownWindowError(ValueError):
    """A window that is not one of ``WINDOWS``."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"window must be one of {', '.join(f'{w}s' for w in WINDOWS)}")
        self.seconds = seconds


@dataclass(frozen=True, slots=True)
class Alert:
    """A rule that fired: ``rule`` is HIGH_DECLINE_RATE, LARGE_ORDER or REFUND_SPIKE."""

    rule: str
    message: str
    value: float
    threshold: float
    at: float


@dataclass(slots=True)
class BatchOutcome:
    """What one batch did: a verdict per event (by index), counts and the alerts it fired.

    Example::

        outcome = pipeline.process(events)
        for event_id, verdict, reason in outcome.acks(): ...
    """

    event_ids: Sequence[str]
    rejections: list[tuple[int, str]] = field(default_factory=list)
    duplicates: list[int] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)

    @property
    def rejected(self) -> int:
        return len(self.rejections)

    @property
    def accepted(self) -> int:
        return len(self.event_ids) - len(self.rejections) - len(self.duplicates)

    def verdicts(self) -> list[Verdict]:
        """One verdict per event of the batch, in batch order."""
        verdicts = [Verdict.ACCEPTED] * len(self.event_ids)
        for index, _ in self.rejections:
            verdicts[index] = Verdict.REJECTED
        for index in self.duplicates:
            verdicts[index] = Verdict.DUPLICATE
        return verdicts

    def acks(self) -> list[tuple[str, Verdict, str]]:
        """``(event_id, verdict, reason)`` per event, in batch order."""
        reasons = dict(self.rejections)
        return [
            (event_id, verdict, reasons.get(index, ""))
            for index, (event_id, verdict) in enumerate(
                zip(self.event_ids, self.verdicts(), strict=True)
            )
        ]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Aggregates over the ``window`` seconds that end at ``as_of``, with derived metrics.

    ``counts`` is indexed by ``Kind``; ``revenue`` maps currency to captured minus refunded
    minor units.
    """

    as_of: float
    window: int
    counts: tuple[int, ...]
    revenue: Mapping[str, int]

    def count(self, kind: Kind) -> int:
        return self.counts[kind]

    @property
    def events_total(self) -> int:
        return self.counts[Kind.ALL]

    @property
    def currencies(self) -> list[str]:
        """Currencies with revenue in the window: USD first when present, then by code."""
        return sorted(self.revenue, key=lambda code: (code != DEFAULT_CURRENCY, code))

    @property
    def main_currency(self) -> str:
        currencies = self.currencies
        return currencies[0] if currencies else DEFAULT_CURRENCY

    @property
    def main_revenue(self) -> int:
        return self.revenue.get(self.main_currency, 0)

    @property
    def orders_per_second(self) -> float:
        return self.counts[Kind.ORDER_CREATED] / self.window

    @property
    def events_per_second(self) -> float:
        return self.counts[Kind.ALL] / self.window

    @property
    def decline_rate(self) -> float:
        """Declined / (captured + declined); 0 with no payments."""
        declined = self.counts[Kind.PAYMENT_DECLINED]
        payments = self.counts[Kind.PAYMENT_CAPTURED] + declined
        return declined / payments if payments else 0.0

    @property
    def cancellation_rate(self) -> float:
        """Cancelled / created orders of the window; 0 with no orders created."""
        created = self.counts[Kind.ORDER_CREATED]
        return self.counts[Kind.ORDER_CANCELLED] / created if created else 0.0

    @property
    def average_order_value(self) -> int:
        """Main-currency revenue / orders paid, in minor units rounded half up; 0 with none."""
        paid = self.counts[Kind.ORDER_PAID]
        if not paid:
            return 0
        quotient, remainder = divmod(self.main_revenue, paid)
        return quotient + (1 if 2 * remainder >= paid else 0)
