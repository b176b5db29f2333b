"""Payments: request validation. Every check runs; all violations are reported at once.

Card data is checked here and never echoed back: violation descriptions do not quote it.
"""

from __future__ import annotations

from datetime import date

from shop.api.payments.v1 import payments_pb2
from shop.common import money
from shop.common.money import Money
from shop.common.paging import Page, PagingError, parse_page
from shop.common.violations import Violations, check_id, raise_if_any
from shop.payments.domain import (
    MAX_CARD_DIGITS,
    MAX_IDEMPOTENCY_KEY,
    MAX_REFUND_REASON,
    MIN_CARD_DIGITS,
    Card,
    expired,
    luhn_valid,
)

MAX_YEARS_AHEAD = 50


def _amount(violations: Violations, request: payments_pb2.ProcessPaymentRequest) -> Money:
    if not request.HasField("amount"):
        violations.append(("amount", "amount is required"))
        return Money(0)
    try:
        amount = money.from_proto(request.amount)
    except money.MoneyError as err:
        violations.append(("amount", str(err)))
        return Money(0)
    if amount.minor <= 0:
        violations.append(("amount", "amount must be positive"))
    return amount


def _card(violations: Violations, method: payments_pb2.PaymentMethod, today: date) -> Card:
    number = method.card_number
    if not (number.isascii() and number.isdigit()) or not (
        MIN_CARD_DIGITS <= len(number) <= MAX_CARD_DIGITS
    ):
        violations.append(
            ("method.card_number", f"card_number is {MIN_CARD_DIGITS} to {MAX_CARD_DIGITS} digits")
        )
    elif not luhn_valid(number):
        violations.append(("method.card_number", "card_number fails the Luhn check"))
    month_ok = 1 <= method.exp_month <= 12
    if not month_ok:
        violations.append(("method.exp_month", "exp_month must be 1 to 12"))
    if not today.year <= method.exp_year <= today.year + MAX_YEARS_AHEAD:
        violations.append(("method.exp_year", "exp_year is in the past or too far ahead"))
    elif month_ok and expired(method.exp_month, method.exp_year, today):
        violations.append(("method.exp_year", "the card has expired"))
    cvc = method.cvc
    if not (cvc.isascii() and cvc.isdigit() and 3 <= len(cvc) <= 4):
        violations.append(("method.cvc", "cvc is 3 or 4 digits"))
    return Card(number, method.exp_month, method.exp_year, cvc)


def process_payment(
    request: payments_pb2.ProcessPaymentRequest, today: date
) -> tuple[str, Money, Card, str, str]:
    """(order_id, amount, card, idempotency_key, user_id) of a ProcessPayment request.

    ``user_id`` is optional (empty: not recorded); when set it must be a UUID.
    """
    violations: Violations = []
    check_id(violations, "order_id", request.order_id)
    amount = _amount(violations, request)
    card = _card(violations, request.method, today)
    if not 1 <= len(request.idempotency_key) <= MAX_IDEMPOTENCY_KEY:
        violations.append(
            ("idempotency_key", f"idempotency_key is 1 to {MAX_IDEMPOTENCY_KEY} characters")
        )
    if request.user_id:
        check_id(violations, "user_id", request.user_id)
    raise_if_any(violations, "invalid payment")
    return request.order_id, amount, card, request.idempotency_key, request.user_id


def refund_payment(request: payments_pb2.RefundPaymentRequest) -> tuple[str, str]:
    violations: Violations = []
    check_id(violations, "payment_id", request.payment_id)
    if len(request.reason) > MAX_REFUND_REASON:
        violations.append(("reason", f"reason is at most {MAX_REFUND_REASON} characters"))
    raise_if_any(violations, "invalid refund")
    return request.payment_id, request.reason


def payment_id(value: str) -> str:
    violations: Violations = []
    check_id(violations, "payment_id", value)
    raise_if_any(violations, "invalid payment id")
    return value


def list_payments(request: payments_pb2.ListPaymentsRequest) -> tuple[str, Page]:
    violations: Violations = []
    if request.order_id:
        check_id(violations, "order_id", request.order_id)
    page = Page(0, 0)
    try:
        page = parse_page(request.page_size, request.page_token)
    except PagingError as err:
        violations.append((err.field, str(err)))
    raise_if_any(violations, "invalid list request")
    return request.order_id, page
