"""The first three pipeline stages: validate, dedupe and enrich a batch of events.

Each stage is a plain function or a small object over a list; each proto field of an event is
read exactly once (in ``Validator.validate``), after which events are tuples.

Example::

    validator, deduper = Validator(), Deduper()
    checked = validator.validate(events, now)
    fresh, duplicates = deduper.fresh(checked.candidates, now)
    facts = enrich(fresh, now)
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from google.type import money_pb2

from shop.api.events.v1 import events_pb2
from shop.analytics.domain import Candidate, Fact, Kind
from shop.common.money import DEFAULT_CURRENCY, MoneyError, from_proto, minor_digits

__all__ = ["Deduper", "Validated", "Validator", "enrich"]

_NANOS = 1_000_000_000
_KNOWN_KINDS = frozenset(int(kind) for kind in Kind if kind is not Kind.ALL)


@dataclass(slots=True)
class Validated:
    """A validated batch: every event id (by index), the valid events and the rejections."""

    event_ids: list[str] = field(default_factory=list)
    candidates: list[Candidate] = field(default_factory=list)
    rejections: list[tuple[int, str]] = field(default_factory=list)


class Validator:
    """Stage 1: rejects events with no id, an unknown type, no or a future ``occurred_at``, or
    an amount that is not valid money (``shop.common.money.from_proto``) or is negative.

    Valid amounts are checked on a fast path (currencies seen before, in canonical form);
    anything else goes through ``from_proto``, which also words the reason.
    """

    def __init__(self, max_future: float = 300.0) -> None:
        self.max_future = max_future
        # currency code -> (minor units per unit, nanos per minor unit), for codes seen valid
        self._scales: dict[str, tuple[int, int]] = {}

    def validate(self, events: Sequence[events_pb2.Event], now: float) -> Validated:
        out = Validated()
        ids, candidates, rejections = out.event_ids, out.candidates, out.rejections
        latest = now + self.max_future
        scales, known = self._scales, _KNOWN_KINDS
        for index, event in enumerate(events):
            event_id = event.id
            ids.append(event_id)
            kind = event.type
            second = event.occurred_at.seconds
            if not event_id:
                rejections.append((index, "id: required"))
            elif kind not in known:
                rejections.append((index, f"type: unknown event type {kind}"))
            elif second <= 0:
                rejections.append((index, "occurred_at: required"))
            elif second > latest:
                rejections.append((index, "occurred_at: more than 5 minutes in the future"))
            else:
                amount = event.amount
                currency, units, nanos = amount.currency_code, amount.units, amount.nanos
                scale = scales.get(currency)
                if scale is not None and units >= 0 and 0 <= nanos < _NANOS:
                    minor, rest = divmod(nanos, scale[1])
                    if not rest:
                        candidates.append((index, event_id, kind, second, currency,
                                           units * scale[0] + minor))
                        continue
                minor, problem = self._slow_amount(amount)
                if problem:
                    rejections.append((index, problem))
                else:
                    candidates.append((index, event_id, kind, second, currency, minor))
        return out

    def _slow_amount(self, amount: money_pb2.Money) -> tuple[int, str]:
        """(minor units, "") for a valid amount, else (0, reason); learns valid currencies."""
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

    def fresh(
        self, candidates: Sequence[Candidate], now: float
    ) -> tuple[list[Candidate], list[int]]:
        """(events not seen before, batch indexes of the duplicates)."""
        second = int(now)
        self._expire(second)
        generations = self._generations
        if not generations or generations[-1][0] != second:
            generations.append((second, []))
        remember = generations[-1][1].append
        seen, add = self._seen, self._seen.add
        fresh: list[Candidate] = []
        keep = fresh.append
        duplicates: list[int] = []
        for candidate in candidates:
            event_id = candidate[1]
            if event_id in seen:
                duplicates.append(candidate[0])
            else:
                add(event_id)
                remember(event_id)
                keep(candidate)
        self._trim()
        return fresh, duplicates

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


def enrich(candidates: Sequence[Candidate], now: float) -> list[Fact]:
    """Stage 3: the bucket second (``occurred_at``, future clock skew clamped to now) and the
    normalised currency (empty means ``USD``) of each event."""
    latest = int(now)
    default = DEFAULT_CURRENCY
    return [
        (kind, second if second <= latest else latest, currency or default, minor)
        for _, _, kind, second, currency, minor in candidates
    ]
