"""Running a compensation plan: each undo action idempotent, retried on transient errors.

A definite refusal of an undo (the order is already PAID, the payment was DECLINED, nothing
reserved) means there is nothing left to undo for that action; it is logged and the plan goes
on. A transient failure that outlasts the retries stops the plan: the saga stays COMPENSATING
and the recovery loop runs the whole (idempotent) plan again later.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

import grpc
import structlog

from grpckit.errors import StatusError
from shop.api.payments.v1 import payments_pb2
from shop.gateway.domain import Compensation, Saga, backoff_delays, is_transient
from shop.gateway.peers import Peers

T = TypeVar("T")
log = structlog.stdlib.get_logger("shop.gateway.compensation")

Sleep = Callable[[float], Awaitable[None]]
#: Journals ``saga`` (called when the plan learns the id of an order it had to look up).
Journal = Callable[[Saga], Awaitable[None]]


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently an undo action is retried on UNAVAILABLE/DEADLINE_EXCEEDED."""

    attempts: int = 5
    base_delay: float = 0.05
    max_delay: float = 1.0


class CompensationStalledError(Exception):
    """An undo action kept failing transiently; the saga stays COMPENSATING."""


class Compensator:
    """Runs :func:`~shop.gateway.domain.compensation_plan` actions against the peers."""

    def __init__(self, peers: Peers, policy: RetryPolicy, sleep: Sleep = asyncio.sleep) -> None:
        self._peers = peers
        self._policy = policy
        self.sleep = sleep

    def delays(self) -> list[float]:
        """The waits between retries of one call."""
        policy = self._policy
        return backoff_delays(policy.attempts, policy.base_delay, policy.max_delay)

    async def run(
        self, saga: Saga, plan: Sequence[Compensation], reason: str, journal: Journal
    ) -> bool:
        """Run ``plan`` in order; False when an action stalled (left for recovery)."""
        try:
            for action in plan:
                await self._run_one(saga, action, reason, journal)
        except CompensationStalledError as stalled:
            log.warning("compensation stalled", saga_id=saga.id, error=str(stalled))
            return False
        return True

    async def _run_one(
        self, saga: Saga, action: Compensation, reason: str, journal: Journal
    ) -> None:
        peers = self._peers
        if action is Compensation.REFUND_PAYMENT:
            payment_id = saga.progress.payment_id
            if payment_id:
                await self._retry(action, lambda: peers.refund_payment(payment_id, reason))
            return
        order_id = await self._order_id(saga, journal)
        if order_id is None:
            return
        if action is Compensation.RELEASE_STOCK:
            await self._retry(action, lambda: peers.release_stock(order_id))
        elif action is Compensation.CANCEL_ORDER:
            await self._retry(action, lambda: peers.cancel_order(order_id, reason))
        elif action is Compensation.REFUND_CAPTURED:
            # A payment whose outcome the saga never learned may still be PROCESSING (the
            # provider call outlived our deadline): wait for it to settle, else it would be
            # captured after this check and never refunded. Still unsettled after the retries:
            # the compensation stalls and recovery tries again later.
            payments = await self._retry(action, lambda: self._settled(order_id))
            captured = [
                p.id for p in payments or () if p.status == payments_pb2.PAYMENT_STATUS_CAPTURED
            ]
            for captured_id in captured:
                await self._refund(action, captured_id, reason)

    async def _settled(self, order_id: str) -> Sequence[payments_pb2.Payment]:
        found = await self._peers.list_payments(order_id)
        if any(p.status == payments_pb2.PAYMENT_STATUS_PROCESSING for p in found):
            raise StatusError(
                grpc.StatusCode.UNAVAILABLE, f"a payment of order {order_id} is still processing"
            )
        return found

    async def _refund(self, action: Compensation, payment_id: str, reason: str) -> None:
        await self._retry(action, lambda: self._peers.refund_payment(payment_id, reason))

    async def _order_id(self, saga: Saga, journal: Journal) -> str | None:
        """The saga's order id; when CreateOrder's outcome was unknown, ask again with the same
        idempotency key (it returns the order if one was made) and journal the answer.
        None: there is no order (CreateOrder now refuses definitely)."""
        if saga.progress.order_id:
            return saga.progress.order_id
        if not saga.progress.order_uncertain:
            return None
        order = await self._retry(
            Compensation.CANCEL_ORDER,
            lambda: self._peers.create_order(saga.user_id, saga.items, order_key(saga.id)),
        )
        if order is None:
            saga.progress = replace(saga.progress, order_uncertain=False)
            await journal(saga)
            return None
        saga.progress = replace(saga.progress, order_id=order.id, order_uncertain=False)
        await journal(saga)
        return order.id

    async def _retry(self, action: Compensation, call: Callable[[], Awaitable[T]]) -> T | None:
        for delay in [*self.delays(), None]:
            try:
                return await call()
            except StatusError as err:
                if not is_transient(err.code.name):
                    log.info("nothing to undo", action=action.name, code=err.code.name,
                             reason=err.reason)  # fmt: skip
                    return None
                if delay is None:
                    raise CompensationStalledError(f"{action.name}: {err}") from err
                await self.sleep(delay)
        return None


def order_key(saga_id: str) -> str:
    """The CreateOrder idempotency key of a saga."""
    return f"saga:{saga_id}"


def payment_key(saga_id: str) -> str:
    """The ProcessPayment idempotency key of a saga."""
    return f"saga:{saga_id}:payment"
