"""The payment provider seam: a one-method-each ``Provider`` protocol and a simulated default.

``SimulatedProvider`` follows the public card-testing convention:

=====================  ====================================
4242424242424242       approved
4000000000000002       declined, ``card_declined``
4000000000009995       declined, ``insufficient_funds``
other Luhn-valid       approved
=====================  ====================================

Example::

    provider = SimulatedProvider(latency_ms=50, failure_rate=0.1, rng=random.Random(7))
    result = await provider.charge(Money(1999), card, idempotency_key="order-1")
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from shop.common.money import Money
from shop.payments.domain import Card, ProviderUnavailableError, luhn_valid

DECLINING_CARDS = {
    "4000000000000002": "card_declined",
    "4000000000009995": "insufficient_funds",
}


@dataclass(frozen=True)
class ChargeResult:
    """What the provider said of a charge: approved with a charge id, or a decline code."""

    approved: bool
    charge_id: str
    decline_code: str = ""


@dataclass(frozen=True)
class RefundResult:
    """A completed refund."""

    refund_id: str


class Provider(Protocol):
    """Charges and refunds cards. Both calls raise ``ProviderUnavailableError`` when unreachable.

    ``charge`` must be idempotent per ``idempotency_key`` (the same key returns the first
    result and never charges twice), as real providers are; ``refund`` refunds the whole
    charge and is idempotent per ``charge_id``.
    """

    async def charge(self, amount: Money, card: Card, idempotency_key: str) -> ChargeResult: ...

    async def refund(self, charge_id: str, amount: Money) -> RefundResult: ...


class SimulatedProvider:
    """An in-memory provider with a latency and a failure-rate knob (see the module table)."""

    def __init__(
        self,
        *,
        latency_ms: int = 0,
        failure_rate: float = 0.0,
        rng: random.Random | None = None,
        knobs: Callable[[str, float], float] | None = None,
    ) -> None:
        if not 0.0 <= failure_rate <= 1.0:
            raise ValueError("failure_rate must be between 0 and 1")
        self._latency = latency_ms / 1000
        self._failure_rate = failure_rate
        #: ``knobs(name, default)`` overrides latency/failure rate at run time (fault drills).
        self._knobs = knobs
        self._rng = rng if rng is not None else random.Random()
        self._charges: dict[str, ChargeResult] = {}
        self._refunds: dict[str, RefundResult] = {}
        self.charges_made = 0
        self.refunds_made = 0

    async def charge(self, amount: Money, card: Card, idempotency_key: str) -> ChargeResult:
        await self._answer()
        if idempotency_key in self._charges:
            return self._charges[idempotency_key]
        decline = DECLINING_CARDS.get(
            card.number, "" if luhn_valid(card.number) else "incorrect_number"
        )
        result = ChargeResult(not decline, f"ch_{uuid.uuid4().hex}", decline)
        self._charges[idempotency_key] = result
        self.charges_made += 1
        return result

    async def refund(self, charge_id: str, amount: Money) -> RefundResult:
        await self._answer()
        if charge_id not in self._refunds:
            self._refunds[charge_id] = RefundResult(f"re_{uuid.uuid4().hex}")
            self.refunds_made += 1
        return self._refunds[charge_id]

    async def _answer(self) -> None:
        latency, failure_rate = self._latency, self._failure_rate
        if self._knobs is not None:
            latency = self._knobs("payment_latency_ms", latency * 1000) / 1000
            failure_rate = self._knobs("payment_failure_rate", failure_rate)
        if latency:
            await asyncio.sleep(latency)
        if failure_rate and self._rng.random() < failure_rate:
            raise ProviderUnavailableError("the payment provider is unavailable")
