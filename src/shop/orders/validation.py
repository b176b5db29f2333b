"""Orders: request validation. Every check runs; all violations are reported at once.

Each function returns the request's values in domain terms or raises INVALID_ARGUMENT with a
``google.rpc.BadRequest`` naming each bad field (``items[2].quantity``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from shop.api.orders.v1 import orders_pb2
from shop.common import money
from shop.common.paging import Page, PagingError, parse_page
from shop.common.violations import Violations, check_id, raise_if_any
from shop.orders.convert import STATUS_FROM_PROTO, from_timestamp
from shop.orders.domain import (
    MAX_CANCEL_REASON,
    MAX_IDEMPOTENCY_KEY,
    MAX_ITEMS,
    MAX_QUANTITY,
    LineRequest,
    OrderFilter,
)

MAX_SEARCH_TEXT = 200


def _page(violations: Violations, page_size: int, page_token: str) -> Page:
    try:
        return parse_page(page_size, page_token)
    except PagingError as err:
        violations.append((err.field, str(err)))
        return Page(0, 0)


def _time(
    violations: Violations,
    request: orders_pb2.SearchOrdersRequest,
    field: Literal["created_after", "created_before"],
) -> datetime | None:
    if not request.HasField(field):
        return None
    try:
        return from_timestamp(getattr(request, field))
    except (ValueError, OverflowError):
        violations.append((field, f"{field} is not a valid time"))
        return None


def order_id(value: str) -> str:
    """A request's ``order_id``: a UUID."""
    violations: Violations = []
    check_id(violations, "order_id", value)
    raise_if_any(violations, "invalid order id")
    return value


def create_order(request: orders_pb2.CreateOrderRequest) -> tuple[str, list[LineRequest], str]:
    """(user_id, lines, idempotency_key) of a CreateOrder request."""
    violations: Violations = []
    check_id(violations, "user_id", request.user_id)
    if not 1 <= len(request.items) <= MAX_ITEMS:
        violations.append(("items", f"an order has 1 to {MAX_ITEMS} items"))
    for index, item in enumerate(request.items):
        check_id(violations, f"items[{index}].product_id", item.product_id)
        if not 1 <= item.quantity <= MAX_QUANTITY:
            violations.append((f"items[{index}].quantity", f"quantity must be 1 to {MAX_QUANTITY}"))
    if len(request.idempotency_key) > MAX_IDEMPOTENCY_KEY:
        violations.append(
            ("idempotency_key", f"idempotency_key is at most {MAX_IDEMPOTENCY_KEY} characters")
        )
    raise_if_any(violations, "invalid order")
    lines = [LineRequest(item.product_id, item.quantity) for item in request.items]
    return request.user_id, lines, request.idempotency_key


def mark_order_paid(request: orders_pb2.MarkOrderPaidRequest) -> tuple[str, str]:
    violations: Violations = []
    check_id(violations, "order_id", request.order_id)
    check_id(violations, "payment_id", request.payment_id)
    raise_if_any(violations, "invalid payment of an order")
    return request.order_id, request.payment_id


def cancel_order(request: orders_pb2.CancelOrderRequest) -> tuple[str, str]:
    violations: Violations = []
    check_id(violations, "order_id", request.order_id)
    if not 1 <= len(request.reason) <= MAX_CANCEL_REASON:
        violations.append(("reason", f"reason must be 1 to {MAX_CANCEL_REASON} characters"))
    raise_if_any(violations, "invalid cancellation")
    return request.order_id, request.reason


def list_orders(request: orders_pb2.ListOrdersRequest) -> tuple[str, Page]:
    violations: Violations = []
    check_id(violations, "user_id", request.user_id)
    page = _page(violations, request.page_size, request.page_token)
    raise_if_any(violations, "invalid list request")
    return request.user_id, page


def search_orders(request: orders_pb2.SearchOrdersRequest) -> tuple[OrderFilter, Page]:
    violations: Violations = []
    if request.user_id:
        check_id(violations, "user_id", request.user_id)
    statuses = set()
    for index, value in enumerate(request.statuses):
        if value in STATUS_FROM_PROTO:
            statuses.add(STATUS_FROM_PROTO[value])
        else:
            violations.append((f"statuses[{index}]", f"unknown order status {value}"))
    after = _time(violations, request, "created_after")
    before = _time(violations, request, "created_before")
    if after is not None and before is not None and before <= after:
        violations.append(("created_before", "created_before must be later than created_after"))
    min_total = None
    if request.HasField("min_total"):
        try:
            min_total = money.from_proto(request.min_total)
        except money.MoneyError as err:
            violations.append(("min_total", str(err)))
    if len(request.text) > MAX_SEARCH_TEXT:
        violations.append(("text", f"text is at most {MAX_SEARCH_TEXT} characters"))
    page = _page(violations, request.page_size, request.page_token)
    raise_if_any(violations, "invalid search")
    query = OrderFilter(
        request.user_id, frozenset(statuses), after, before, min_total, request.text.strip()
    )
    return query, page
