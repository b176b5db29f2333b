"""Payments' error contract: each domain error becomes one gRPC status with a reason.

| domain error        | code                | reason                | metadata                 |
|---------------------|---------------------|-----------------------|--------------------------|
| PaymentNotFoundError     | NOT_FOUND           | PAYMENT_NOT_FOUND     | (ResourceInfo)           |
| PaymentDeclinedError     | FAILED_PRECONDITION | PAYMENT_DECLINED      | decline_code, payment_id |
| PaymentNotCapturedError  | FAILED_PRECONDITION | PAYMENT_NOT_CAPTURED  | payment_id, status       |
| ProviderUnavailableError | UNAVAILABLE         | PROVIDER_UNAVAILABLE  | (RetryInfo)              |
| PaymentInProgressError   | UNAVAILABLE         | PAYMENT_IN_PROGRESS   | (RetryInfo)              |
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from grpckit import StatusError
from grpckit.errors import failed_precondition, not_found, unavailable
from shop.payments.domain import (
    PaymentDeclinedError,
    PaymentError,
    PaymentInProgressError,
    PaymentNotCapturedError,
    PaymentNotFoundError,
    ProviderUnavailableError,
)

DOMAIN = "shop"
RETRY_AFTER = 1.0


def to_status_error(err: PaymentError) -> StatusError:
    """The gRPC status a domain error is reported as."""
    if isinstance(err, PaymentNotFoundError):
        return not_found(
            str(err),
            resource_type="payment",
            resource_name=err.payment_id,
            reason="PAYMENT_NOT_FOUND",
            domain=DOMAIN,
        )
    if isinstance(err, PaymentDeclinedError):
        metadata = {"decline_code": err.payment.decline_code, "payment_id": err.payment.id}
        return failed_precondition(
            str(err), reason="PAYMENT_DECLINED", domain=DOMAIN, metadata=metadata
        )
    if isinstance(err, PaymentNotCapturedError):
        metadata = {"payment_id": err.payment.id, "status": err.payment.status.value}
        return failed_precondition(
            str(err), reason="PAYMENT_NOT_CAPTURED", domain=DOMAIN, metadata=metadata
        )
    if isinstance(err, ProviderUnavailableError):
        return unavailable(
            str(err), reason="PROVIDER_UNAVAILABLE", domain=DOMAIN, retry_after=RETRY_AFTER
        )
    if isinstance(err, PaymentInProgressError):
        return unavailable(
            str(err), reason="PAYMENT_IN_PROGRESS", domain=DOMAIN, retry_after=RETRY_AFTER
        )
    raise TypeError(f"no status for {type(err).__name__}") from err


@contextmanager
def status_errors() -> Iterator[None]:
    """Report the domain errors raised in the block as their gRPC statuses."""
    try:
        yield
    except PaymentError as err:
        raise to_status_error(err) from None
