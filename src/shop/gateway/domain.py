"""The order saga as pure logic: states, steps, what to compensate, how to retry.

No grpc here. Status codes travel as their names (``"UNAVAILABLE"``), so the rules can be tested
with plain values. The orchestrator (:mod:`shop.gateway.saga`) asks this module what to do next.

>>> plan = compensation_plan(Progress(order_id="o1", stock_held=True, payment_id="p1"))
>>> [c.name for c in plan]
['REFUND_PAYMENT', 'RELEASE_STOCK', 'CANCEL_ORDER']
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from shop.common.money import Money


class SagaState(enum.StrEnum):
    """Where a saga is. The forward states record the last step whose outcome is journaled."""

    STARTED = "STARTED"
    ORDER_CREATED = "ORDER_CREATED"
    STOCK_RESERVED = "STOCK_RESERVED"
    PAYMENT_CAPTURED = "PAYMENT_CAPTURED"
    COMPLETED = "COMPLETED"
    COMPENSATING = "COMPENSATING"
    COMPENSATED = "COMPENSATED"
    FAILED = "FAILED"

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset({SagaState.COMPLETED, SagaState.COMPENSATED, SagaState.FAILED})


class Step(enum.StrEnum):
    """The forward steps. The first four names are the fault-injection points."""

    VALIDATE_USER = "validate_user"
    CREATE_ORDER = "create_order"
    RESERVE_STOCK = "reserve_stock"
    PROCESS_PAYMENT = "process_payment"
    MARK_ORDER_PAID = "mark_order_paid"


#: The state a saga reaches when a step succeeds (validate_user keeps it STARTED).
STATE_AFTER: Mapping[Step, SagaState] = {
    Step.VALIDATE_USER: SagaState.STARTED,
    Step.CREATE_ORDER: SagaState.ORDER_CREATED,
    Step.RESERVE_STOCK: SagaState.STOCK_RESERVED,
    Step.PROCESS_PAYMENT: SagaState.PAYMENT_CAPTURED,
    Step.MARK_ORDER_PAID: SagaState.COMPLETED,
}

#: Names accepted by ``Settings.fault_kill_after``.
FAULT_POINTS: tuple[str, ...] = tuple(
    s.value
    for s in (Step.VALIDATE_USER, Step.CREATE_ORDER, Step.RESERVE_STOCK, Step.PROCESS_PAYMENT)
)


class Compensation(enum.Enum):
    """One undo action, run in the order :func:`compensation_plan` gives."""

    REFUND_PAYMENT = "refund the payment the saga captured"
    RELEASE_STOCK = "release the order's reserved stock"
    CANCEL_ORDER = "cancel the order (found again by its idempotency key if its id is unknown)"
    REFUND_CAPTURED = "refund every CAPTURED payment of the order (ListPayments)"


@dataclass(frozen=True)
class Progress:
    """What the saga may have done, as far as the journal knows.

    ``order_uncertain``: CreateOrder was sent but its outcome is unknown (no order id).
    ``stock_held``: ReserveStock succeeded or its outcome is unknown.
    ``payment_uncertain``: ProcessPayment was sent but its outcome is unknown.
    """

    order_id: str | None = None
    order_uncertain: bool = False
    stock_held: bool = False
    payment_id: str | None = None
    payment_uncertain: bool = False


def compensation_plan(progress: Progress) -> list[Compensation]:
    """The undo actions for what ran, newest first; captured money is returned first."""
    plan: list[Compensation] = []
    has_order = progress.order_id is not None or progress.order_uncertain
    if progress.payment_id:
        plan.append(Compensation.REFUND_PAYMENT)
    if has_order and progress.stock_held:
        plan.append(Compensation.RELEASE_STOCK)
    if has_order:
        plan.append(Compensation.CANCEL_ORDER)
    if has_order and progress.payment_uncertain:
        plan.append(Compensation.REFUND_CAPTURED)
    return plan


def recovery_progress(state: SagaState, pending: Step | None, progress: Progress) -> Progress:
    """What a saga found unfinished after a restart may have done: assume every side effect
    beyond the journaled state happened, since the process died without recording it."""
    if state is SagaState.STARTED:
        return Progress(order_uncertain=pending is Step.CREATE_ORDER)
    return Progress(
        order_id=progress.order_id,
        order_uncertain=progress.order_uncertain,
        stock_held=True,
        payment_id=progress.payment_id,
        payment_uncertain=True,
    )


# -- failures -------------------------------------------------------------------------------

#: Codes that say nothing about whether the peer acted; the call may be retried.
TRANSIENT_CODES = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED"})
#: Codes after which the peer certainly did not act (a definite refusal).
DEFINITE_CODES = frozenset(
    {
        "INVALID_ARGUMENT",
        "NOT_FOUND",
        "FAILED_PRECONDITION",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "UNAUTHENTICATED",
        "OUT_OF_RANGE",
        "RESOURCE_EXHAUSTED",
    }
)


def is_transient(code: str) -> bool:
    """A retryable failure: the peer was unreachable or too slow."""
    return code in TRANSIENT_CODES


def outcome_unknown(code: str) -> bool:
    """True when a failed call may still have taken effect on the peer."""
    return code not in DEFINITE_CODES


@dataclass(frozen=True)
class StepFailure:
    """A failed forward step, as the saga rules need it (no grpc types)."""

    step: Step
    code: str
    reason: str = ""
    message: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    resource_name: str = ""


def cancel_reason(failure: StepFailure) -> str:
    """The human reason stored on the cancelled order."""
    if failure.reason == "PAYMENT_DECLINED":
        return f"payment declined: {failure.metadata.get('decline_code', 'declined')}"
    if failure.reason == "OUT_OF_STOCK":
        return f"out of stock: {failure.resource_name or failure.metadata.get('product_id', '')}"
    if is_transient(failure.code):
        return f"{failure.step.value} unavailable: {failure.code}"
    return f"{failure.step.value} failed: {failure.reason or failure.code}"


RECOVERY_CANCEL_REASON = "saga recovered after gateway restart"


def backoff_delays(attempts: int, base: float = 0.05, cap: float = 1.0) -> list[float]:
    """Delays between ``attempts`` tries: exponential from ``base``, at most ``cap`` each.

    >>> backoff_delays(4, base=0.1, cap=0.3)
    [0.1, 0.2, 0.3]
    """
    return [min(cap, base * 2**i) for i in range(max(0, attempts - 1))]


# -- the request and the journal row ---------------------------------------------------------


@dataclass(frozen=True)
class LineItem:
    product_id: str
    quantity: int


@dataclass(frozen=True)
class Card:
    """Card data for one ProcessPayment call. Never journaled, never logged."""

    number: str
    exp_month: int
    exp_year: int
    cvc: str

    def __repr__(self) -> str:
        return f"Card(****{self.number[-4:]})"


@dataclass(frozen=True)
class OrderRequest:
    """A validated ProcessOrder request."""

    user_id: str
    items: tuple[LineItem, ...]
    card: Card
    idempotency_key: str


def fingerprint(request: OrderRequest) -> str:
    """A hash of the request without the card secrets (number and cvc)."""
    canonical = {
        "user_id": request.user_id,
        "items": [[i.product_id, i.quantity] for i in request.items],
        "card": [request.card.number[-4:], request.card.exp_month, request.card.exp_year],
    }
    raw = json.dumps(canonical, separators=(",", ":"), sort_keys=True)
    return hashlib.sha256(raw.encode()).hexdigest()


def luhn_valid(number: str) -> bool:
    """The Luhn checksum of a digit string.

    >>> luhn_valid("4242424242424242"), luhn_valid("4242424242424241")
    (True, False)
    """
    if not number.isdigit():
        return False
    total = 0
    for index, char in enumerate(reversed(number)):
        digit = int(char)
        if index % 2:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0


@dataclass(frozen=True)
class SagaError:
    """A stored failure: the code name, message and serialized ``google.rpc.Status``."""

    code: str
    message: str
    status: bytes


@dataclass
class Saga:
    """One journal row. ``result`` is the serialized ProcessOrderResponse once COMPLETED."""

    id: str
    user_id: str
    idempotency_key: str
    fingerprint: str
    items: tuple[LineItem, ...]
    state: SagaState
    owner: str
    created_at: datetime
    updated_at: datetime
    deadline: datetime
    version: int = 0
    pending_step: Step | None = None
    progress: Progress = field(default_factory=Progress)
    amount: Money | None = None
    result: bytes | None = None
    error: SagaError | None = None

    @property
    def has_outcome(self) -> bool:
        return self.result is not None or self.error is not None


class SagaConflictError(Exception):
    """Another saga already holds (user_id, idempotency_key)."""

    def __init__(self, existing: Saga) -> None:
        super().__init__(f"saga {existing.id} holds this idempotency key")
        self.existing = existing


def check_replay(existing: Saga, request_fingerprint: str) -> None:
    """Raise :class:`IdempotencyKeyReusedError` when the key was used for a different request."""
    if existing.fingerprint != request_fingerprint:
        raise IdempotencyKeyReusedError(existing.idempotency_key)


class SagaTakenOverError(Exception):
    """Another process claimed the saga (its row version moved); this one must stop driving it."""

    def __init__(self, saga_id: str) -> None:
        super().__init__(f"saga {saga_id} was taken over by another owner")
        self.saga_id = saga_id


class IdempotencyKeyReusedError(Exception):
    """The same idempotency key came with a different request."""

    def __init__(self, key: str) -> None:
        super().__init__(f"idempotency key {key!r} was used for a different request")
        self.key = key


class SagaInProgressError(Exception):
    """A replay waited for the first call's saga longer than it could."""

    def __init__(self, saga_id: str) -> None:
        super().__init__(f"saga {saga_id} is still running; retry later with the same key")
        self.saga_id = saga_id


def items_key(items: Sequence[LineItem]) -> list[list[str | int]]:
    """The JSON form of line items stored in the journal."""
    return [[i.product_id, i.quantity] for i in items]
