"""Checks of a ProcessOrder request, all violations at once, before any side effect.

>>> from grpckit.errors import StatusError
>>> try:
...     parse_process_order(gateway_pb2.ProcessOrderRequest())
... except StatusError as err:
...     [field for field, _ in err.field_violations]
['user_id', 'items', 'payment_method']
"""

from __future__ import annotations

from grpckit.errors import invalid_argument
from shop.api.gateway.v1 import gateway_pb2
from shop.api.payments.v1 import payments_pb2
from shop.common.ids import is_id, new_id
from shop.gateway.domain import Card, LineItem, OrderRequest, luhn_valid

MAX_ITEMS = 100
MAX_QUANTITY = 1000
MAX_KEY_LENGTH = 200

Violations = list[tuple[str, str]]


def parse_process_order(request: gateway_pb2.ProcessOrderRequest) -> OrderRequest:
    """The validated request; INVALID_ARGUMENT listing every violation otherwise.

    An empty idempotency key becomes a fresh random one (the call is then not retry-safe).
    """
    violations: Violations = []
    if not is_id(request.user_id):
        violations.append(("user_id", "must be a user id (UUID)"))
    _check_items(request, violations)
    if not request.HasField("payment_method"):
        violations.append(("payment_method", "is required"))
    else:
        _check_card(request.payment_method, violations)
    if len(request.idempotency_key) > MAX_KEY_LENGTH:
        violations.append(("idempotency_key", f"must be at most {MAX_KEY_LENGTH} characters"))
    if violations:
        raise invalid_argument("the order request is invalid", violations)
    method = request.payment_method
    return OrderRequest(
        user_id=request.user_id,
        items=tuple(LineItem(i.product_id, i.quantity) for i in request.items),
        card=Card(method.card_number, method.exp_month, method.exp_year, method.cvc),
        idempotency_key=request.idempotency_key or new_id(),
    )


def _check_items(request: gateway_pb2.ProcessOrderRequest, violations: Violations) -> None:
    if not 1 <= len(request.items) <= MAX_ITEMS:
        violations.append(("items", f"must have 1 to {MAX_ITEMS} items"))
    for index, item in enumerate(request.items):
        if not is_id(item.product_id):
            violations.append((f"items[{index}].product_id", "must be a product id (UUID)"))
        if not 1 <= item.quantity <= MAX_QUANTITY:
            violations.append((f"items[{index}].quantity", f"must be 1 to {MAX_QUANTITY}"))


def _check_card(method: payments_pb2.PaymentMethod, violations: Violations) -> None:
    number = method.card_number
    if not (number.isdigit() and 12 <= len(number) <= 19):
        violations.append(("payment_method.card_number", "must be 12 to 19 digits"))
    elif not luhn_valid(number):
        violations.append(("payment_method.card_number", "fails the Luhn check"))
    if not 1 <= method.exp_month <= 12:
        violations.append(("payment_method.exp_month", "must be 1 to 12"))
    if not (method.cvc.isdigit() and 3 <= len(method.cvc) <= 4):
        violations.append(("payment_method.cvc", "must be 3 or 4 digits"))
