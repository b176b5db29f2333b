"""Charging a card exactly once per idempotency key, and refunding it.

``PaymentProcessor.process`` claims the key in the store (a PROCESSING row), charges only when it
owns the claim, and settles the row with the provider's answer. A duplicate call — concurrent,
a retry, or from another process — waits for the owner's outcome by re-reading the row, and
returns the same payment (or raises the same decline). See ``store`` for the crash lease.
"""

from __future__ import annotations

import asyncio

from shop.common.money import Money
from shop.payments.domain import (
    Card,
    Payment,
    PaymentDeclinedError,
    PaymentInProgressError,
    PaymentStatus,
    ProviderUnavailableError,
)
from shop.payments.provider import Provider
from shop.payments.store import PaymentsStore


class PaymentProcessor:
    """Coordinates the store and the provider for ProcessPayment and RefundPayment.

    ``wait`` bounds how long a duplicate waits for the first call's outcome before answering
    ``PaymentInProgressError``; ``poll_interval`` is how often it re-reads the row meanwhile.
    """

    def __init__(
        self,
        store: PaymentsStore,
        provider: Provider,
        *,
        wait: float = 10.0,
        poll_interval: float = 0.02,
    ) -> None:
        self._store = store
        self._provider = provider
        self._wait = wait
        self._poll_interval = poll_interval

    async def process(
        self, order_id: str, amount: Money, card: Card, idempotency_key: str, *, user_id: str = ""
    ) -> Payment:
        """Charge ``card`` once for ``idempotency_key``; a decline raises ``PaymentDeclinedError``.

        ``user_id`` (the customer, may be empty) is stored with a new payment.
        """
        payment, owned = await self._store.claim(
            idempotency_key, order_id, amount, card.last4, user_id=user_id
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._wait
        delay = self._poll_interval
        while not owned and payment.status is PaymentStatus.PROCESSING:
            if loop.time() >= deadline:
                raise PaymentInProgressError(payment.id)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)
            found, owned = await self._store.reclaim(payment.id)
            if found is None:  # the owner released the key: the charge did not happen
                found, owned = await self._store.claim(
                    idempotency_key, order_id, amount, card.last4, user_id=user_id
                )
            payment = found
        if owned:
            # Once the provider is asked, finish even if the caller goes away meanwhile.
            payment = await asyncio.shield(self._charge(payment, card, idempotency_key))
        if payment.status is PaymentStatus.DECLINED:
            raise PaymentDeclinedError(payment)
        return payment

    async def refund(self, payment_id: str, reason: str) -> Payment:
        """Refund a CAPTURED payment in full; REFUNDED already: returned as it is."""

        async def refund_at_provider(payment: Payment) -> str:
            return (await self._provider.refund(payment.charge_id, payment.amount)).refund_id

        return await self._store.refund(payment_id, reason, refund_at_provider)

    async def _charge(self, payment: Payment, card: Card, idempotency_key: str) -> Payment:
        try:
            result = await self._provider.charge(payment.amount, card, idempotency_key)
        except ProviderUnavailableError:
            await self._store.release(payment.id)
            raise
        # Cancelled or crashed here: the row stays PROCESSING until its lease expires.
        return await self._store.settle(payment.id, result)
