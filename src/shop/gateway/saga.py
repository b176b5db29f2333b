"""The ProcessOrder saga: forward steps, journaled one by one, compensated on failure.

``OrderSaga.process`` inserts the journal row (the unique (user_id, idempotency_key) makes the
first caller the owner), then drives the steps in a task of its own, shielded from the caller's
cancellation. A replay of the key waits for the owner's outcome and returns it unchanged.

Example (with the in-memory fakes of the tests)::

    saga = OrderSaga(SagaStore(db), FakePeers(), SagaConfig())
    response = await saga.process(order_request)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import grpc
import structlog

from grpckit.call import detach_deadline
from grpckit.errors import StatusError, internal
from shop.api.gateway.v1 import gateway_pb2
from shop.api.orders.v1 import orders_pb2
from shop.api.payments.v1 import payments_pb2
from shop.common.ids import new_id
from shop.common.money import MoneyError, from_proto
from shop.gateway.compensation import Compensator, RetryPolicy, order_key, payment_key
from shop.gateway.domain import (
    STATE_AFTER,
    OrderRequest,
    Progress,
    Saga,
    SagaConflictError,
    SagaInProgressError,
    SagaState,
    SagaTakenOverError,
    Step,
    StepFailure,
    cancel_reason,
    check_replay,
    compensation_plan,
    fingerprint,
    is_transient,
    outcome_unknown,
)
from shop.gateway.errors import (
    DOMAIN,
    StepFailedError,
    caller_error,
    dependency_unavailable,
    outcome_of,
    step_failure,
    stored_error,
    user_error,
)
from shop.gateway.peers import Peers
from shop.gateway.store import SagaStore

T = TypeVar("T")
log = structlog.stdlib.get_logger("shop.gateway.saga")


def _kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class SagaConfig:
    """Timing and fault injection of the saga. ``kill_after`` names a :class:`Step`."""

    saga_timeout: float = 30.0
    step_timeout: float = 5.0
    poll_interval: float = 0.05
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    kill_after: Step | None = None
    kill: Callable[[], None] = _kill_self


class OrderSaga:
    """The orchestrator: one instance per process; ``owner`` identifies the process."""

    def __init__(
        self,
        store: SagaStore,
        peers: Peers,
        config: SagaConfig,
        *,
        owner: str | None = None,
        clock: Callable[[], datetime] = utc_now,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.store = store
        self.peers = peers
        self.config = config
        self.owner = owner or new_id()
        self.clock = clock
        self.compensator = Compensator(peers, config.retry, sleep)
        self._running: dict[str, asyncio.Event] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def is_running(self, saga_id: str) -> bool:
        """True while this process drives the saga."""
        return saga_id in self._running

    async def process(self, request: OrderRequest) -> gateway_pb2.ProcessOrderResponse:
        """Run the saga for ``request`` or return the outcome stored for its key."""
        saga = self._new_saga(request)
        self._running[saga.id] = asyncio.Event()
        try:
            await self.store.create(saga)
        except SagaConflictError as conflict:
            self._running.pop(saga.id, None)
            check_replay(conflict.existing, saga.fingerprint)
            return await self.wait_for_outcome(conflict.existing.id)
        except BaseException:
            self._running.pop(saga.id, None)
            raise
        task = self.spawn(saga, self._drive(saga, request))
        await asyncio.shield(task)
        if saga.has_outcome:
            return outcome_of(saga)
        if saga.state is SagaState.PAYMENT_CAPTURED and saga.owner == self.owner:
            raise dependency_unavailable(
                Step.MARK_ORDER_PAID.value,
                StatusError(grpc.StatusCode.UNAVAILABLE, "the payment is captured; recovery "
                            "will mark the order paid: retry with the same key"),
            )  # fmt: skip
        return await self.wait_for_outcome(saga.id)

    def spawn(self, saga: Saga, work: Awaitable[None]) -> asyncio.Task[None]:
        """Drive ``saga`` in a task that outlives a cancelled caller; waiters get an event."""
        event = self._running.setdefault(saga.id, asyncio.Event())

        async def run() -> None:
            try:
                await work
            except SagaTakenOverError:
                log.warning("saga taken over by another process", saga_id=saga.id)
            finally:
                self._running.pop(saga.id, None)
                event.set()

        task = asyncio.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def wait_for_outcome(self, saga_id: str) -> gateway_pb2.ProcessOrderResponse:
        """Wait for the saga's stored outcome (event in-process, journal polling otherwise)."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.config.saga_timeout
        while True:
            saga = await self.store.get(saga_id)
            if saga is None:
                raise SagaInProgressError(saga_id)
            if saga.has_outcome and (saga.state.terminal or not self.is_running(saga_id)):
                return outcome_of(saga)
            if loop.time() >= give_up:
                raise SagaInProgressError(saga_id)
            event = self._running.get(saga_id)
            if event is None:
                await asyncio.sleep(self.config.poll_interval)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), self.config.poll_interval)

    async def drain(self, grace: float) -> None:
        """Wait up to ``grace`` seconds for the sagas this process drives."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=grace)

    def _new_saga(self, request: OrderRequest) -> Saga:
        now = self.clock()
        return Saga(
            id=new_id(),
            user_id=request.user_id,
            idempotency_key=request.idempotency_key,
            fingerprint=fingerprint(request),
            items=request.items,
            state=SagaState.STARTED,
            owner=self.owner,
            created_at=now,
            updated_at=now,
            deadline=now + timedelta(seconds=self.config.saga_timeout),
            pending_step=Step.VALIDATE_USER,
        )

    async def journal(self, saga: Saga) -> None:
        saga.updated_at = self.clock()
        await self.store.save(saga)

    def _fault_point(self, step: Step) -> None:
        if self.config.kill_after is step:
            log.warning("fault injection: killing the process", after=step.value)
            self.config.kill()

    async def _drive(self, saga: Saga, request: OrderRequest) -> None:
        try:
            await self._forward(saga, request)
        except StepFailedError as failed:
            await self.fail(saga, failed)

    async def _step(self, saga: Saga, step: Step, call: Awaitable[T]) -> T:
        """Await one peer call within the step timeout and, before the pivot (the payment),
        within the saga deadline; MarkOrderPaid must be able to finish a late saga."""
        timeout = self.config.step_timeout
        if step is not Step.MARK_ORDER_PAID:
            timeout = min(timeout, (saga.deadline - self.clock()).total_seconds())
        try:
            return await asyncio.wait_for(call, max(0.0, timeout))
        except StatusError as err:
            error = err
        except TimeoutError:
            error = StatusError(grpc.StatusCode.DEADLINE_EXCEEDED, f"{step.value} timed out")
        except MoneyError as exc:
            error = StatusError(grpc.StatusCode.FAILED_PRECONDITION, f"{step.value}: {exc}")
        except Exception:
            error_id = new_id()
            log.exception("saga step crashed", step=step.value, error_id=error_id)
            error = internal(error_id=error_id, domain=DOMAIN)
        raise StepFailedError(step_failure(step, error), error)

    async def _forward(self, saga: Saga, request: OrderRequest) -> None:
        peers = self.peers
        reason = await self._step(saga, Step.VALIDATE_USER, peers.validate_user(saga.user_id))
        if reason:
            err = user_error(saga.user_id, reason)
            raise StepFailedError(step_failure(Step.VALIDATE_USER, err), err)
        saga.pending_step = None
        await self._advance(saga, Step.VALIDATE_USER)
        saga.pending_step = Step.CREATE_ORDER  # intent: CreateOrder may create an order
        await self.journal(saga)
        order = await self._step(
            saga, Step.CREATE_ORDER,
            peers.create_order(saga.user_id, saga.items, order_key(saga.id)),
        )  # fmt: skip
        saga.pending_step = None
        saga.progress = replace(saga.progress, order_id=order.id)
        saga.amount = from_proto(order.total)
        await self._advance(saga, Step.CREATE_ORDER)
        await self._step(saga, Step.RESERVE_STOCK, peers.reserve_stock(order.id, saga.items))
        saga.progress = replace(saga.progress, stock_held=True)
        await self._advance(saga, Step.RESERVE_STOCK)
        charge = peers.process_payment(
            order.id, saga.amount, request.card, payment_key(saga.id), user_id=order.user_id
        )
        payment = await self._step(saga, Step.PROCESS_PAYMENT, charge)
        saga.progress = replace(saga.progress, payment_id=payment.id)
        await self._advance(saga, Step.PROCESS_PAYMENT)
        await detached(self.complete(saga, payment))

    async def _advance(self, saga: Saga, step: Step) -> None:
        saga.state = STATE_AFTER[step]
        await self.journal(saga)
        self._fault_point(step)

    async def complete(self, saga: Saga, payment: payments_pb2.Payment) -> None:
        """Mark the order paid (the pivot is passed: retried, never compensated for a transient
        error) and store the response. A transient failure leaves the saga for recovery."""
        order = await self._mark_paid(saga, payment.id)
        if order is None:
            log.warning("mark paid left to recovery", saga_id=saga.id)
            return
        saga.state = SagaState.COMPLETED
        saga.result = gateway_pb2.ProcessOrderResponse(
            order=order, payment=payment
        ).SerializeToString()
        await self.journal(saga)

    async def _mark_paid(self, saga: Saga, payment_id: str) -> orders_pb2.Order | None:
        order_id = saga.progress.order_id or ""
        for delay in [*self.compensator.delays(), None]:
            try:
                return await self._step(
                    saga, Step.MARK_ORDER_PAID, self.peers.mark_order_paid(order_id, payment_id)
                )
            except StepFailedError as failed:
                if not is_transient(failed.failure.code) or delay is None:
                    if is_transient(failed.failure.code):
                        return None
                    raise
                await self.compensator.sleep(delay)
        return None

    async def fail(self, saga: Saga, failed: StepFailedError) -> None:
        """Journal the failure and the error the caller gets, then compensate what ran."""
        failure = failed.failure
        saga.progress = _with_uncertainty(saga.progress, failure)
        saga.pending_step = None
        saga.error = stored_error(caller_error(failure.step, failed.error))
        plan = compensation_plan(saga.progress)
        if not plan:
            saga.state = SagaState.FAILED
            await self.journal(saga)
            return
        saga.state = SagaState.COMPENSATING
        await self.journal(saga)
        await self.compensate(saga, cancel_reason(failure))

    async def compensate(self, saga: Saga, reason: str) -> None:
        """Run the plan for ``saga.progress``; COMPENSATED when done, else stay COMPENSATING."""
        plan = compensation_plan(saga.progress)
        if await detached(self.compensator.run(saga, plan, reason, self.journal)):
            saga.state = SagaState.COMPENSATED
            await self.journal(saga)


async def detached(work: Coroutine[Any, Any, T]) -> T:
    """Run ``work`` without the incoming call's deadline: once money moved or an undo is due,
    the peers' calls get their own timeouts instead of what the caller has left."""

    async def run() -> T:
        detach_deadline()  # only in this task's copy of the context; request id and trace stay
        return await work

    return await asyncio.create_task(run())


def _with_uncertainty(progress: Progress, failure: StepFailure) -> Progress:
    """Record that the failed step may have acted on the peer (its outcome is unknown)."""
    if not outcome_unknown(failure.code):
        return progress
    if failure.step is Step.CREATE_ORDER:
        return replace(progress, order_uncertain=True)
    if failure.step is Step.RESERVE_STOCK:
        return replace(progress, stock_held=True)
    if failure.step is Step.PROCESS_PAYMENT:
        return replace(progress, payment_uncertain=True)
    return progress
