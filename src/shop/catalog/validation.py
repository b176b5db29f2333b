"""Request checks of the catalog: proto in, domain values out, every violation at once.

Each function raises ``invalid_argument`` listing all field violations (paths such as
``items[2].quantity``), so the caller can fix a request in one round trip.
"""

from __future__ import annotations

from collections.abc import Sequence

from grpckit.errors import invalid_argument
from shop.api.catalog.v1 import catalog_pb2
from shop.api.common.v1 import common_pb2
from shop.catalog import domain
from shop.catalog.domain import ProductDraft, StockLine, Violation
from shop.common.ids import is_id
from shop.common.money import Money, MoneyError, from_proto
from shop.common.paging import Page, PagingError, parse_page


def _raise_if(violations: Sequence[Violation], message: str) -> None:
    if violations:
        raise invalid_argument(message, violations)


def _id_violations(value: str, path: str) -> list[Violation]:
    if not value:
        return [(path, "is required")]
    return [] if is_id(value) else [(path, "is not an id issued by this shop")]


def draft(
    message: catalog_pb2.Product | catalog_pb2.CreateProductRequest, prefix: str = ""
) -> tuple[ProductDraft, list[Violation]]:
    """The draft a message describes, with everything wrong with it (fields under ``prefix``)."""
    violations: list[Violation] = []
    price = Money(0)
    if not message.HasField("price"):
        violations.append((prefix + "price", "is required"))
    else:
        try:
            price = from_proto(message.price)
        except MoneyError as error:
            violations.append((prefix + "price", str(error)))
    result = ProductDraft(message.sku, message.name, message.description, price, message.stock)
    return result, violations + domain.product_violations(result, prefix)


def create_product(request: catalog_pb2.CreateProductRequest) -> ProductDraft:
    result, violations = draft(request)
    _raise_if(violations, "the new product is not valid")
    return result


def product_id(value: str) -> str:
    _raise_if(_id_violations(value, "product_id"), "product_id is not valid")
    return value


def product_ids(values: Sequence[str]) -> list[str]:
    violations = [
        v for i, pid in enumerate(values) for v in _id_violations(pid, f"product_ids[{i}]")
    ]
    if not values:
        violations.append(("product_ids", "must name at least one product"))
    elif len(values) > domain.MAX_BATCH_IDS:
        violations.append(("product_ids", f"must name at most {domain.MAX_BATCH_IDS} products"))
    _raise_if(violations, "product_ids are not valid")
    return list(values)


def page(page_size: int, page_token: str, query: str | None = None) -> Page:
    """The requested page; ``query`` (when given) is checked in the same pass."""
    violations = domain.query_violations(query) if query is not None else []
    try:
        result = parse_page(page_size, page_token)
    except PagingError as error:
        violations.append((error.field, str(error)))
    _raise_if(violations, "the request is not valid")
    return result


def reservation(
    order_id: str, items: Sequence[common_pb2.LineItem]
) -> tuple[str, tuple[StockLine, ...]]:
    """The order id and its merged stock lines (see ``domain.merge_lines``)."""
    violations = _id_violations(order_id, "order_id")
    if not items:
        violations.append(("items", "must hold at least one item"))
    elif len(items) > domain.MAX_RESERVE_ITEMS:
        violations.append(("items", f"must hold at most {domain.MAX_RESERVE_ITEMS} items"))
    for i, item in enumerate(items):
        violations += _id_violations(item.product_id, f"items[{i}].product_id")
        if item.quantity < 1:
            violations.append((f"items[{i}].quantity", "must be at least 1"))
    _raise_if(violations, "the reservation is not valid")
    return order_id, domain.merge_lines(StockLine(i.product_id, i.quantity) for i in items)


def order_id(value: str) -> str:
    _raise_if(_id_violations(value, "order_id"), "order_id is not valid")
    return value
