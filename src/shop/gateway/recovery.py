"""Crash recovery: drive sagas that no live process is driving to a terminal state.

A saga is picked when it is not terminal, this process is not driving it, and either
- this process owns it (a compensation that stalled, a MarkOrderPaid left for later), or
- another owner wrote it longer than ``lease`` ago, or
- the loop runs at startup (every unfinished row of a previous process is taken over).

It is taken over with a compare-and-set on the row version, so two recovering processes never
drive one saga. The card is never needed: a captured payment (ListPayments) means roll forward
(MarkOrderPaid, COMPLETED); no payment means compensate (ReleaseStock, CancelOrder, refund any
CAPTURED payment found afterwards, COMPENSATED).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import replace
from datetime import timedelta

import structlog

from grpckit.errors import StatusError
from shop.api.payments.v1 import payments_pb2
from shop.gateway.domain import (
    RECOVERY_CANCEL_REASON,
    Saga,
    SagaState,
    Step,
    recovery_progress,
)
from shop.gateway.errors import StepFailedError, saga_aborted, stored_error
from shop.gateway.saga import OrderSaga

log = structlog.stdlib.get_logger("shop.gateway.recovery")


class Recovery:
    """Finds abandoned sagas and finishes them; ``start()`` runs it every ``interval`` s."""

    def __init__(self, saga: OrderSaga, *, interval: float = 5.0, lease: float = 30.0) -> None:
        self.saga = saga
        self.interval = interval
        self.lease = timedelta(seconds=lease)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Recover everything left by earlier processes now, then every ``interval`` seconds."""
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        startup = True
        while True:
            try:
                await self.run_once(startup=startup)
                startup = False
            except Exception:  # the loop must survive a broken database or peer
                log.exception("saga recovery pass failed")
            await asyncio.sleep(self.interval)

    async def run_once(self, *, startup: bool = False) -> int:
        """One pass; returns how many sagas it took over."""
        taken = 0
        for saga in await self.saga.store.unfinished():
            if not self._abandoned(saga, startup):
                continue
            if not await self.saga.store.claim(saga, self.saga.owner, self.saga.clock()):
                continue
            taken += 1
            log.info("recovering saga", saga_id=saga.id, state=saga.state.value)
            await self.saga.spawn(saga, self.recover(saga))
        return taken

    def _abandoned(self, saga: Saga, startup: bool) -> bool:
        if self.saga.is_running(saga.id):
            return False
        if saga.owner == self.saga.owner or startup:
            return True
        return saga.updated_at <= self.saga.clock() - self.lease

    async def recover(self, saga: Saga) -> None:
        """Drive one claimed saga to a terminal state (or leave it for the next pass)."""
        if saga.state is SagaState.COMPENSATING:
            await self.saga.compensate(saga, RECOVERY_CANCEL_REASON)
            return
        if saga.state is SagaState.STARTED and saga.pending_step is not Step.CREATE_ORDER:
            saga.state = SagaState.FAILED  # nothing was done on any peer
            saga.error = stored_error(saga_aborted(saga.id))
            await self.saga.journal(saga)
            return
        saga.progress = recovery_progress(saga.state, saga.pending_step, saga.progress)
        saga.pending_step = None
        try:
            payment = await self._captured_payment(saga)
        except StatusError as err:
            log.warning("recovery postponed", saga_id=saga.id, error=str(err))
            return
        if payment is not None:
            await self._roll_forward(saga, payment)
            return
        saga.state = SagaState.COMPENSATING
        saga.error = stored_error(saga_aborted(saga.id))
        await self.saga.journal(saga)
        await self.saga.compensate(saga, RECOVERY_CANCEL_REASON)

    async def _captured_payment(self, saga: Saga) -> payments_pb2.Payment | None:
        peers = self.saga.peers
        candidates: list[payments_pb2.Payment] = []
        if saga.progress.payment_id:
            candidates.append(await peers.get_payment(saga.progress.payment_id))
        if saga.progress.order_id:
            candidates.extend(await peers.list_payments(saga.progress.order_id))
        for payment in candidates:
            if payment.status == payments_pb2.PAYMENT_STATUS_CAPTURED:
                return payment
        return None

    async def _roll_forward(self, saga: Saga, payment: payments_pb2.Payment) -> None:
        saga.progress = replace(saga.progress, payment_id=payment.id, payment_uncertain=False)
        saga.state = SagaState.PAYMENT_CAPTURED
        await self.saga.journal(saga)
        try:
            await self.saga.complete(saga, payment)
        except StepFailedError as failed:  # the order is no longer PENDING: undo, refund first
            await self.saga.fail(saga, failed)
