"""The one place where catalog domain errors become gRPC statuses.

=========================  ===================  ====================
domain error               code                 ErrorInfo.reason
=========================  ===================  ====================
SkuTakenError              ALREADY_EXISTS       SKU_TAKEN
ProductNotFoundError       NOT_FOUND            PRODUCT_NOT_FOUND
OutOfStockError            FAILED_PRECONDITION  OUT_OF_STOCK
ReservationMismatchError   FAILED_PRECONDITION  RESERVATION_MISMATCH
ReservationReleasedError   FAILED_PRECONDITION  RESERVATION_RELEASED
=========================  ===================  ====================

Every ErrorInfo carries ``domain="shop"``. OUT_OF_STOCK also carries a ``ResourceInfo``
naming the product and ``product_id``, ``requested``, ``available`` in its metadata.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from google.rpc import error_details_pb2

from grpckit import StatusError
from grpckit.errors import already_exists, failed_precondition, not_found
from shop.catalog.domain import (
    CatalogError,
    OutOfStockError,
    ProductNotFoundError,
    ReservationMismatchError,
    ReservationReleasedError,
    SkuTakenError,
)

DOMAIN = "shop"


def to_status(error: CatalogError) -> StatusError:
    """The status a caller sees for ``error``; an unmapped error is a bug and is re-raised."""
    message = str(error)
    match error:
        case SkuTakenError(sku=sku):
            return already_exists(message, reason="SKU_TAKEN", domain=DOMAIN, metadata={"sku": sku})
        case ProductNotFoundError(product_id=product_id):
            return not_found(
                message,
                resource_type="product",
                resource_name=product_id,
                reason="PRODUCT_NOT_FOUND",
                domain=DOMAIN,
            )
        case OutOfStockError():
            return _out_of_stock(error)
        case ReservationMismatchError(order_id=order_id):
            return failed_precondition(
                message,
                reason="RESERVATION_MISMATCH",
                domain=DOMAIN,
                metadata={"order_id": order_id},
            )
        case ReservationReleasedError(order_id=order_id):
            return failed_precondition(
                message,
                reason="RESERVATION_RELEASED",
                domain=DOMAIN,
                metadata={"order_id": order_id},
            )
    raise error


def _out_of_stock(error: OutOfStockError) -> StatusError:
    resource = error_details_pb2.ResourceInfo(
        resource_type="product", resource_name=error.product_id, description=str(error)
    )
    metadata = {
        "product_id": error.product_id,
        "requested": str(error.requested),
        "available": str(error.available),
    }
    return failed_precondition(
        str(error), reason="OUT_OF_STOCK", domain=DOMAIN, metadata=metadata, details=[resource]
    )


@contextmanager
def status_errors() -> Iterator[None]:
    """Translate the domain errors raised inside the block."""
    try:
        yield
    except CatalogError as error:
        raise to_status(error) from None
