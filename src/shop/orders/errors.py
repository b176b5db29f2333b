"""Orders' error contract: each domain error becomes one gRPC status with a reason.

| domain error      | code                | reason             | metadata          |
|-------------------|---------------------|--------------------|-------------------|
| OrderNotFoundError     | NOT_FOUND           | ORDER_NOT_FOUND    | (ResourceInfo)    |
| OrderNotPendingError   | FAILED_PRECONDITION | ORDER_NOT_PENDING  | order_id, status  |
| MixedCurrenciesError   | FAILED_PRECONDITION | MIXED_CURRENCIES   | currencies        |
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from grpckit import StatusError
from grpckit.errors import failed_precondition, not_found
from shop.orders.domain import (
    MixedCurrenciesError,
    OrderError,
    OrderNotFoundError,
    OrderNotPendingError,
)

DOMAIN = "shop"


def to_status_error(err: OrderError) -> StatusError:
    """The gRPC status a domain error is reported as."""
    if isinstance(err, OrderNotFoundError):
        return not_found(
            str(err),
            resource_type="order",
            resource_name=err.order_id,
            reason="ORDER_NOT_FOUND",
            domain=DOMAIN,
        )
    if isinstance(err, OrderNotPendingError):
        return failed_precondition(
            str(err),
            reason="ORDER_NOT_PENDING",
            domain=DOMAIN,
            metadata={"order_id": err.order_id, "status": err.status.value},
        )
    if isinstance(err, MixedCurrenciesError):
        return failed_precondition(
            str(err),
            reason="MIXED_CURRENCIES",
            domain=DOMAIN,
            metadata={"currencies": ",".join(err.currencies)},
        )
    raise TypeError(f"no status for {type(err).__name__}") from err


@contextmanager
def status_errors() -> Iterator[None]:
    """Report the domain errors raised in the block as their gRPC statuses."""
    try:
        yield
    except OrderError as err:
        raise to_status_error(err) from None
