"""The buf.validate rules declared in the shop protos, as the validation interceptor applies them.

Each case is a request and the field paths its violations must name (empty: valid). Where a
service checks the same request itself, both must name the same fields.
"""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest
from google.protobuf import duration_pb2
from google.type import money_pb2

from grpckit.errors import StatusError
from grpckit.interceptors._validation import validation
from grpckit.middleware import Interceptor
from grpckit.testing import fake_call
from shop.api.analytics.v1 import analytics_pb2
from shop.api.catalog.v1 import catalog_pb2
from shop.api.common.v1 import common_pb2
from shop.api.gateway.v1 import gateway_pb2
from shop.api.orders.v1 import orders_pb2
from shop.api.payments.v1 import payments_pb2
from shop.api.users.v1 import users_pb2
from shop.gateway.validation import parse_process_order
from shop.orders import validation as orders_validation
from shop.payments import validation as payments_validation

ID = "9b2f0e0c-4b7e-4c1a-9a5a-2a4b5c6d7e8f"
CARD = payments_pb2.PaymentMethod(
    card_number="4242424242424242", exp_month=12, exp_year=2040, cvc="123"
)
USD = money_pb2.Money(currency_code="USD", units=12, nanos=500_000_000)


def item(product_id: str = ID, quantity: int = 1) -> common_pb2.LineItem:
    return common_pb2.LineItem(product_id=product_id, quantity=quantity)


CASES: list[tuple[str, Any, list[str]]] = [
    # users
    ("create user", users_pb2.CreateUserRequest(email="ada@example.com", password="s3cret-pass", name="Ada"), []),
    ("create user: all wrong", users_pb2.CreateUserRequest(email="ada", password="short", name=""), ["email", "password", "name"]),
    ("create user: long", users_pb2.CreateUserRequest(email="a@example.com", password="p" * 129, name="n" * 101), ["password", "name"]),
    ("login", users_pb2.LoginRequest(email="ada@example.com", password="x"), []),
    ("login: empty", users_pb2.LoginRequest(), ["email", "password"]),
    ("get user: not a uuid", users_pb2.GetUserRequest(user_id="42"), ["user_id"]),
    # catalog
    ("create product", catalog_pb2.CreateProductRequest(sku="SKU-1.a", name="Tea", price=USD, stock=3), []),
    ("create product: no currency means USD", catalog_pb2.CreateProductRequest(sku="t", name="Tea", price=money_pb2.Money(units=1)), []),
    ("create product: all wrong", catalog_pb2.CreateProductRequest(sku="-bad sku", name="", stock=-1), ["sku", "name", "price", "stock"]),
    ("create product: bad price", catalog_pb2.CreateProductRequest(sku="t", name="Tea", price=money_pb2.Money(currency_code="usd", units=-1)), ["price", "price"]),
    ("create product: sku too long", catalog_pb2.CreateProductRequest(sku="s" * 65, name="Tea", price=USD), ["sku"]),
    ("batch get", catalog_pb2.BatchGetProductsRequest(product_ids=[ID, "x", ID, ""]), ["product_ids[1]", "product_ids[3]"]),
    ("batch get: none", catalog_pb2.BatchGetProductsRequest(), ["product_ids"]),
    ("list products: page size", catalog_pb2.ListProductsRequest(page_size=-1), ["page_size"]),
    ("list products: large page size", catalog_pb2.ListProductsRequest(page_size=1001), ["page_size"]),
    ("search products", catalog_pb2.SearchProductsRequest(query="q" * 201), ["query"]),
    ("reserve stock", catalog_pb2.ReserveStockRequest(order_id=ID, items=[item(), item(quantity=0), item("x")]), ["items[1].quantity", "items[2].product_id"]),
    ("import products: checked per product by the service", catalog_pb2.ImportProductsRequest(product=catalog_pb2.Product(sku="bad sku")), []),
    # orders
    ("create order", orders_pb2.CreateOrderRequest(user_id=ID, items=[item(quantity=1000)]), []),
    ("create order: all wrong", orders_pb2.CreateOrderRequest(user_id="u", items=[item(quantity=1001)], idempotency_key="k" * 201), ["user_id", "items[0].quantity", "idempotency_key"]),
    ("create order: no items", orders_pb2.CreateOrderRequest(user_id=ID), ["items"]),
    ("create order: too many items", orders_pb2.CreateOrderRequest(user_id=ID, items=[item()] * 101), ["items"]),
    ("cancel order", orders_pb2.CancelOrderRequest(order_id=ID, reason=""), ["reason"]),
    ("search orders: empty is fine", orders_pb2.SearchOrdersRequest(), []),
    ("search orders", orders_pb2.SearchOrdersRequest(user_id="u", statuses=[1, 0, 9], text="t" * 201, min_total=money_pb2.Money(currency_code="EURO")), ["user_id", "statuses[1]", "statuses[2]", "min_total", "text"]),
    # payments
    ("process payment", payments_pb2.ProcessPaymentRequest(order_id=ID, amount=USD, method=CARD, idempotency_key="k"), []),
    ("process payment: nothing", payments_pb2.ProcessPaymentRequest(), ["order_id", "amount", "method", "idempotency_key"]),
    ("process payment: bad card", payments_pb2.ProcessPaymentRequest(order_id=ID, amount=money_pb2.Money(), idempotency_key="k", method=payments_pb2.PaymentMethod(card_number="4242 4242", exp_month=13, cvc="12345")), ["amount", "method.card_number", "method.exp_month", "method.cvc"]),
    ("list payments: all", payments_pb2.ListPaymentsRequest(), []),
    ("list payments: bad order", payments_pb2.ListPaymentsRequest(order_id="o"), ["order_id"]),
    ("refund", payments_pb2.RefundPaymentRequest(payment_id=ID, reason="r" * 501), ["reason"]),
    # gateway
    ("process order", gateway_pb2.ProcessOrderRequest(user_id=ID, items=[item()], payment_method=CARD), []),
    ("process order: nothing", gateway_pb2.ProcessOrderRequest(), ["user_id", "items", "payment_method"]),
    ("process order: bad card", gateway_pb2.ProcessOrderRequest(user_id=ID, items=[item(quantity=0)], payment_method=payments_pb2.PaymentMethod(card_number="abc", exp_month=0, cvc="1")), ["items[0].quantity", "payment_method.card_number", "payment_method.exp_month", "payment_method.cvc"]),
    # analytics
    ("metrics stream", analytics_pb2.StreamRealTimeMetricsRequest(metric_types=[1, 2], window=duration_pb2.Duration(seconds=10)), []),
    ("metrics stream: all wrong", analytics_pb2.StreamRealTimeMetricsRequest(metric_types=[0, 99], window=duration_pb2.Duration(seconds=5), interval=duration_pb2.Duration(nanos=5)), ["metric_types[0]", "metric_types[1]", "window", "interval"]),
    ("get metrics", analytics_pb2.GetMetricsRequest(window=duration_pb2.Duration(seconds=60)), []),
]  # fmt: skip


@pytest.fixture(scope="module")
def interceptor() -> Interceptor:
    return validation()


async def violated(interceptor: Interceptor, request: Any) -> list[str]:
    """The field paths the validation interceptor names for ``request`` ([] when it passes)."""
    reached: list[Any] = []

    async def handler(call: Any) -> None:
        reached.append(call.request)

    try:
        await interceptor.intercept(fake_call(request=request), handler)
    except StatusError as err:
        assert reached == []
        return [field for field, _ in err.field_violations]
    assert reached == [request]
    return []


@pytest.mark.parametrize(
    ("request_", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
async def test_rules(interceptor: Interceptor, request_: Any, expected: list[str]) -> None:
    assert await violated(interceptor, request_) == expected


def service_fields(check: Any, *args: Any) -> list[str]:
    try:
        check(*args)
    except StatusError as err:
        return [field for field, _ in err.field_violations]
    return []


@pytest.mark.parametrize(
    "request_",
    [
        gateway_pb2.ProcessOrderRequest(),
        gateway_pb2.ProcessOrderRequest(user_id="x", items=[item("p", 0), item(quantity=1001)], payment_method=payments_pb2.PaymentMethod(card_number="12", exp_month=13, cvc="x")),
    ],
)  # fmt: skip
async def test_gateway_names_the_same_fields(interceptor: Interceptor, request_: Any) -> None:
    assert await violated(interceptor, request_) == service_fields(parse_process_order, request_)


async def test_orders_name_the_same_fields(interceptor: Interceptor) -> None:
    request = orders_pb2.CreateOrderRequest(
        user_id="u", items=[item("p", 0)], idempotency_key="k" * 201
    )
    expected = service_fields(orders_validation.create_order, request)
    assert await violated(interceptor, request) == expected


async def test_payments_name_the_same_fields(interceptor: Interceptor) -> None:
    method = payments_pb2.PaymentMethod(card_number="x", exp_month=0, exp_year=2040, cvc="")
    request = payments_pb2.ProcessPaymentRequest(
        order_id="o", amount=USD, method=method, idempotency_key="k"
    )
    expected = service_fields(payments_validation.process_payment, request, date(2030, 1, 1))
    assert await violated(interceptor, request) == expected
