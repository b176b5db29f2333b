"""Payments: the payment, the card, and the rules (Luhn, expiry) — pure code, no I/O.

A card number and CVC live only in memory for the length of one charge: ``Card`` hides them
from ``repr`` and the store keeps ``last4`` alone.

>>> luhn_valid("4242424242424242"), luhn_valid("4242424242424241")
(True, False)
>>> Card("4242424242424242", 12, 2030, "123")
Card(exp_month=12, exp_year=2030, last4='4242')
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import date, datetime

from shop.common.money import Money

MIN_CARD_DIGITS = 12
MAX_CARD_DIGITS = 19
MAX_IDEMPOTENCY_KEY = 200
MAX_REFUND_REASON = 500


class PaymentStatus(enum.StrEnum):
    """PROCESSING while the provider is being asked; then CAPTURED or DECLINED; REFUNDED last."""

    PROCESSING = "PROCESSING"
    CAPTURED = "CAPTURED"
    DECLINED = "DECLINED"
    REFUNDED = "REFUNDED"


def luhn_valid(number: str) -> bool:
    """True when ``number`` (digits only) passes the Luhn checksum."""
    if not number.isdigit() or not number.isascii():
        return False
    total = 0
    for position, char in enumerate(reversed(number)):
        digit = int(char)
        if position % 2:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0


def expired(exp_month: int, exp_year: int, today: date) -> bool:
    """A card is valid through the last day of its expiry month."""
    return (exp_year, exp_month) < (today.year, today.month)


@dataclass(frozen=True)
class Card:
    """A card to charge. ``number`` and ``cvc`` never appear in ``repr`` (so never in logs)."""

    number: str = field(repr=False)
    exp_month: int
    exp_year: int
    cvc: str = field(repr=False)
    last4: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "last4", self.number[-4:])


@dataclass(frozen=True)
class Payment:
    """A payment attempt as stored (``charge_id`` is the provider's reference).

    ``user_id`` is the customer the payment is for: the only customer who may read it (empty
    for payments recorded before it was: then only admins and services may).
    """

    id: str
    order_id: str
    amount: Money
    status: PaymentStatus
    card_last4: str
    created_at: datetime
    updated_at: datetime
    decline_code: str = ""
    refund_reason: str = ""
    charge_id: str = ""
    user_id: str = ""


class PaymentError(Exception):
    """Root of the errors a payment operation can end with (mapped to gRPC by the service)."""


class PaymentNotFoundError(PaymentError):
    """No payment has this id."""

    def __init__(self, payment_id: str) -> None:
        super().__init__(f"payment {payment_id} not found")
        self.payment_id = payment_id


class PaymentDeclinedError(PaymentError):
    """The provider declined the card; the DECLINED payment is stored."""

    def __init__(self, payment: Payment) -> None:
        super().__init__(f"payment declined: {payment.decline_code}")
        self.payment = payment


class PaymentNotCapturedError(PaymentError):
    """A refund of a payment that was never captured."""

    def __init__(self, payment: Payment) -> None:
        super().__init__(f"payment {payment.id} is {payment.status}, only CAPTURED is refundable")
        self.payment = payment


class PaymentInProgressError(PaymentError):
    """Another call with the same idempotency key is still charging; retry later."""

    def __init__(self, payment_id: str) -> None:
        super().__init__(f"payment {payment_id} is still being processed; retry shortly")
        self.payment_id = payment_id


class ProviderUnavailableError(PaymentError):
    """The payment provider could not be reached; nothing was charged. Retryable."""
