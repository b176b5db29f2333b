"""The saga rules as pure functions."""

from __future__ import annotations

import pytest

from shop.common.ids import new_id
from shop.gateway.domain import (
    Card,
    Compensation,
    LineItem,
    OrderRequest,
    Progress,
    SagaState,
    Step,
    StepFailure,
    backoff_delays,
    cancel_reason,
    compensation_plan,
    fingerprint,
    luhn_valid,
    outcome_unknown,
    recovery_progress,
)

C = Compensation


@pytest.mark.parametrize(
    ("progress", "plan"),
    [
        (Progress(), []),
        (Progress(order_id="o"), [C.CANCEL_ORDER]),
        (Progress(order_uncertain=True), [C.CANCEL_ORDER]),
        (Progress(order_id="o", stock_held=True), [C.RELEASE_STOCK, C.CANCEL_ORDER]),
        (
            Progress(order_id="o", stock_held=True, payment_uncertain=True),
            [C.RELEASE_STOCK, C.CANCEL_ORDER, C.REFUND_CAPTURED],
        ),
        (
            Progress(order_id="o", stock_held=True, payment_id="p"),
            [C.REFUND_PAYMENT, C.RELEASE_STOCK, C.CANCEL_ORDER],
        ),
    ],
)
def test_compensation_plan_undoes_what_ran_newest_first(
    progress: Progress, plan: list[Compensation]
) -> None:
    assert compensation_plan(progress) == plan


def test_recovery_assumes_every_unjournaled_side_effect_happened() -> None:
    assert recovery_progress(SagaState.STARTED, None, Progress()) == Progress()
    assert recovery_progress(SagaState.STARTED, Step.CREATE_ORDER, Progress()) == Progress(
        order_uncertain=True
    )
    progress = recovery_progress(SagaState.ORDER_CREATED, None, Progress(order_id="o"))
    assert compensation_plan(progress) == [C.RELEASE_STOCK, C.CANCEL_ORDER, C.REFUND_CAPTURED]


def test_only_definite_refusals_prove_the_peer_did_nothing() -> None:
    assert not outcome_unknown("FAILED_PRECONDITION")
    assert not outcome_unknown("INVALID_ARGUMENT")
    assert outcome_unknown("UNAVAILABLE")
    assert outcome_unknown("DEADLINE_EXCEEDED")
    assert outcome_unknown("INTERNAL")


@pytest.mark.parametrize(
    ("failure", "reason"),
    [
        (
            StepFailure(Step.PROCESS_PAYMENT, "FAILED_PRECONDITION", "PAYMENT_DECLINED",
                        metadata={"decline_code": "insufficient_funds"}),
            "payment declined: insufficient_funds",
        ),
        (
            StepFailure(Step.RESERVE_STOCK, "FAILED_PRECONDITION", "OUT_OF_STOCK",
                        resource_name="p-1"),
            "out of stock: p-1",
        ),
        (StepFailure(Step.RESERVE_STOCK, "UNAVAILABLE"), "reserve_stock unavailable: UNAVAILABLE"),
        (
            StepFailure(Step.MARK_ORDER_PAID, "FAILED_PRECONDITION", "ORDER_NOT_PENDING"),
            "mark_order_paid failed: ORDER_NOT_PENDING",
        ),
    ],
)  # fmt: skip
def test_cancel_reason_says_why(failure: StepFailure, reason: str) -> None:
    assert cancel_reason(failure) == reason


def test_backoff_doubles_up_to_the_cap() -> None:
    assert backoff_delays(5, base=0.1, cap=0.5) == [0.1, 0.2, 0.4, 0.5]
    assert backoff_delays(1) == []


@pytest.mark.parametrize(
    ("number", "valid"),
    [("4242424242424242", True), ("4000000000000002", True), ("4242424242424241", False),
     ("79927398713", True), ("12ab", False)],
)  # fmt: skip
def test_luhn(number: str, valid: bool) -> None:
    assert luhn_valid(number) is valid


def test_fingerprint_ignores_card_secrets_but_not_the_order() -> None:
    user, product = new_id(), new_id()

    def request(number: str, cvc: str, quantity: int) -> OrderRequest:
        card = Card(number, 12, 2031, cvc)
        return OrderRequest(user, (LineItem(product, quantity),), card, "k")

    base = fingerprint(request("4242424242424242", "123", 1))
    assert fingerprint(request("4242424242424242", "999", 1)) == base
    assert fingerprint(request("4242424242424242", "123", 2)) != base
    assert "4242424242424242" not in repr(request("4242424242424242", "123", 1))
