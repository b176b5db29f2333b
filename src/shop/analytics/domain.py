"""Analytics domain: event kinds, windows, alerts, snapshots and batch outcomes (no gRPC).

The ingestion pipeline is ``validate -> dedupe -> enrich -> aggregate -> alert`` (modules
``ingest``, ``windows``, ``alerts``, composed by ``pipeline``). Every stage takes a list and
returns a list; events travel between stages as plain tuples (see ``Candidate`` and ``Fact``)
so that a batch of 1,000 events costs 1,000 tuples and no other per-event objects.

Money is integer minor units per ISO 4217 currency, as in ``shop.common.money``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum

from shop.common.money import DEFAULT_CURRENCY

__all__ = [
    "WINDOWS",
    "Alert",
    "BatchOutcome",
    "Candidate",
    "Fact",
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


#: A validated event: (index in its batch, event id, kind, occurred second, currency, minor).
#: ``currency`` is "" and ``minor`` 0 when the event has no amount.
Candidate = tuple[int, str, int, int, str, int]
#: An enriched event as aggregation sees it: (kind, bucket second, currency, minor units).
Fact = tuple[int, int, str, int]


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

    event_ids: list[str]
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
