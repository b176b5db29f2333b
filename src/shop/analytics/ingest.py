"""The first three pipeline stages: validate, dedupe and enrich a batch of events.

Every proto field of an event is read exactly once, by one C-level ``attrgetter`` per event;
from then on the batch is an ``EventColumns``. Each stage first tries a whole-batch fast path
(``set``/``min``/``max`` over columns: the common case of a clean batch costs almost no Python
bytecode per event) and falls back to a per-event loop, which is the definition of the rule.

Example::

    validator, deduper = Validator(), Deduper()
    checked = validator.validate(events, now)
    fresh, duplicates = deduper.fresh(checked.events, now)
    enriched = enrich(fresh, now)
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from itertools import repeat
from operator import add, attrgetter, floordiv, mul
from typing import Any

from shop.analytics.domain import EMPTY, EventColumns, Kind
from shop.api.events.v1 import events_pb2
from shop.common.money import DEFAULT_CURRENCY, MoneyError, from_proto, minor_digits

__all__ = ["Deduper", "Validated", "Validator", "enrich"]

_NANOS = 1_000_000_000
_KNOWN_KINDS = frozenset(int(kind) for kind in Kind if kind is not Kind.ALL)
_READ = attrgetter(
    "id", "type", "occurred_at.seconds", "amount.currency_code", "amount.units", "amount.nanos"
)
#: (id, type, occurred_at.seconds, amount.currency_code, amount.units, amount.nanos)
Row = tuple[str, int, int, str, int, int]


@dataclass(slots=True)
class Validated:
    """A validated batch: every event id (by index), the valid events and the rejections."""

    event_ids: Sequence[str] = ()
    events: EventColumns = EMPTY
    rejections: list[tuple[int, str]] = field(default_factory=list)


class Validator:
    """Stage 1: rejects events with no id, an unknown type, no or a future ``occurred_at``, or
    an amount that is not valid money (``shop.common.money.from_proto``) or is negative."""

    def __init__(self, max_future: float = 300.0) -> None:
        self.max_future = max_future
        # currency code -> (minor units per unit, nanos per minor unit), for codes seen valid
        self._scales: dict[str, tuple[int, int]] = {}

    def validate(self, events: Sequence[events_pb2.Event], now: float) -> Validated:
        rows: list[Row] = list(map(_READ, events))
        if not rows:
            return Validated()
        ids, kinds, seconds, currencies, units, nanos = zip(*rows, strict=True)
        minors = self._clean_minors(now, ids, kinds, seconds, currencies, units, nanos)
        if minors is None:
            return self._one_by_one(events, rows, now)
        columns = EventColumns(range(len(rows)), ids, kinds, seconds, currencies, minors)
        return Validated(ids, columns)

    def _clean_minors(
        self,
        now: float,
        ids: Sequence[str],
        kinds: Sequence[int],
        seconds: Sequence[int],
        currencies: Sequence[str],
        units: Sequence[int],
        nanos: Sequence[int],
    ) -> Sequence[int] | None:
        """The amounts in minor units if the whole batch is valid, else ``None``."""
        if "" in ids or not _KNOWN_KINDS.issuperset(kinds):
            return None
        if min(seconds) <= 0 or max(seconds) > now + self.max_future:
            return None
        if min(units) < 0 or min(nanos) < 0 or max(nanos) >= _NANOS:
            return None
        scales = {self._scales.get(code) for code in set(currencies)}
        if len(scales) != 1 or None in scales:
            return None  # a new or more than one kind of currency: check event by event
        scale, step = next(iter(scales))  # type: ignore[misc]
        if any(map(step.__rmod__, nanos)):
            return None
        return list(map(add, map(mul, units, repeat(scale)), map(floordiv, nanos, repeat(step))))

    def _one_by_one(
        self, events: Sequence[events_pb2.Event], rows: Sequence[Row], now: float
    ) -> Validated:
        out = Validated(event_ids=[row[0] for row in rows])
        valid: list[tuple[int, str, int, int, str, int]] = []
        latest = now + self.max_future
        for index, (event_id, kind, second, currency, _, _) in enumerate(rows):
            if not event_id:
                problem = "id: required"
            elif kind not in _KNOWN_KINDS:
                problem = f"type: unknown event type {kind}"
            elif second <= 0:
                problem = "occurred_at: required"
            elif second > latest:
                problem = "occurred_at: more than 5 minutes in the future"
            else:
                minor, problem = self._amount(events[index].amount)
                if not problem:
                    valid.append((index, event_id, kind, second, currency, minor))
                    continue
            out.rejections.append((index, problem))
        out.events = EventColumns.of(valid)
        return out

    def _amount(self, amount: Any) -> tuple[int, str]:
        """(minor units, "") for a valid ``google.type.Money``, else (0, reason); learns the
        currencies it sees valid, for the fast path."""
        try:
            money = from_proto(amount)
        except MoneyError as err:
            return 0, f"amount: {err}"
        if money.minor < 0:
            return 0, "amount: must not be negative"
        scale = 10 ** minor_digits(money.currency)
        self._scales[amount.currency_code] = (scale, _NANOS // scale)
        return money.minor, ""


class Deduper:
    """Stage 2: drops events whose id was seen in the last ``horizon`` seconds.

    Memory is bounded twice: ids are forgotten ``horizon`` seconds after they arrived (kept in
    per-second generations), and at most ``max_ids`` are kept (the oldest go first). With the
    horizon at least the largest window, a late duplicate can no longer change any window.
    """

    def __init__(self, horizon: int = 60, max_ids: int = 1_000_000) -> None:
        if horizon < 1 or max_ids < 1:
            raise ValueError("horizon and max_ids must be positive")
        self.horizon, self.max_ids = horizon, max_ids
        self._seen: set[str] = set()
        self._generations: deque[tuple[int, list[str]]] = deque()

    def __len__(self) -> int:
        return len(self._seen)

    def fresh(self, events: EventColumns, now: float) -> tuple[EventColumns, list[int]]:
        """(the events not seen before, batch indexes of the duplicates)."""
        second = int(now)
        self._expire(second)
        generations = self._generations
        if not generations or generations[-1][0] != second:
            generations.append((second, []))
        remembered = generations[-1][1]
        ids, seen = events.ids, self._seen
        unique = set(ids)
        if len(unique) == len(ids) and seen.isdisjoint(unique):
            seen |= unique
            remembered.extend(ids)
            self._trim()
            return events, []
        keep: list[int] = []
        duplicates: list[int] = []
        for position, (index, event_id) in enumerate(zip(events.indexes, ids, strict=True)):
            if event_id in seen:
                duplicates.append(index)
            else:
                seen.add(event_id)
                remembered.append(event_id)
                keep.append(position)
        self._trim()
        return events.select(keep), duplicates

    def _expire(self, second: int) -> None:
        generations, seen = self._generations, self._seen
        while generations and generations[0][0] <= second - self.horizon:
            seen.difference_update(generations.popleft()[1])

    def _trim(self) -> None:
        generations, seen = self._generations, self._seen
        while len(seen) > self.max_ids:
            ids = generations[0][1]
            excess = len(seen) - self.max_ids
            if excess >= len(ids):
                generations.popleft()
                seen.difference_update(ids)
            else:
                seen.difference_update(ids[:excess])
                del ids[:excess]


def enrich(events: EventColumns, now: float) -> EventColumns:
    """Stage 3: the bucket second (``occurred_at``; future clock skew clamped to now) and the
    normalised currency (none means ``USD``) of each event."""
    if not events:
        return events
    latest = int(now)
    seconds, currencies = events.seconds, events.currencies
    if max(seconds) > latest:
        seconds = [second if second <= latest else latest for second in seconds]
    if "" in currencies:
        currencies = [currency or DEFAULT_CURRENCY for currency in currencies]
    if seconds is events.seconds and currencies is events.currencies:
        return events
    return replace(events, seconds=seconds, currencies=currencies)
