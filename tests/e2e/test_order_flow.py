"""The order saga end to end: a real `shop up` process, real sockets, SQLite."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import urllib.request

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from grpckit import StatusError
from shop.api.catalog.v1 import catalog_pb2
from shop.api.gateway.v1 import gateway_pb2
from shop.api.orders.v1 import orders_pb2
from shop.api.payments.v1 import payments_pb2
from shop.api.users.v1 import users_pb2
from tests.conftest import IN_CI
from tests.e2e.clients import DECLINE, INSUFFICIENT, Stubs, order_request
from tests.e2e.harness import ShopProcess

pytestmark = pytest.mark.e2e

SERVICES = [
    "shop.users.v1.UserService",
    "shop.catalog.v1.CatalogService",
    "shop.orders.v1.OrderService",
    "shop.payments.v1.PaymentService",
    "shop.analytics.v1.AnalyticsService",
    "shop.gateway.v1.GatewayService",
]


async def test_health_of_every_service_and_healthz(
    shop: ShopProcess, channel: grpc.aio.Channel
) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for name in ["", *SERVICES]:
        reply = await health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, name
    body = await asyncio.to_thread(
        lambda: urllib.request.urlopen(
            f"http://127.0.0.1:{shop.http_port}/healthz", timeout=5
        ).read()
    )
    assert json.loads(body)["status"] == "ok"


async def test_demo_catalog_is_seeded(channel: grpc.aio.Channel) -> None:
    stubs = Stubs.on(channel)
    page = await stubs.catalog.ListProducts(
        catalog_pb2.ListProductsRequest(page_size=100), timeout=5
    )
    assert len(page.products) >= 20
    assert all(p.stock > 0 and (p.price.units or p.price.nanos) for p in page.products)


async def test_happy_path_pays_the_order(channel: grpc.aio.Channel) -> None:
    stubs = Stubs.on(channel)
    user_id, product = await stubs.customer(), await stubs.product()
    reply = await stubs.gateway.ProcessOrder(
        order_request(user_id, product.id, quantity=2), timeout=15
    )
    assert reply.order.status == orders_pb2.ORDER_STATUS_PAID
    assert reply.payment.status == payments_pb2.PAYMENT_STATUS_CAPTURED
    assert reply.payment.card_last4 == "4242"
    expected_minor = (product.price.units * 100 + product.price.nanos // 10_000_000) * 2
    assert reply.order.total.units * 100 + reply.order.total.nanos // 10_000_000 == expected_minor
    assert reply.payment.amount == reply.order.total
    assert await stubs.stock(product.id) == product.stock - 2
    details = await stubs.gateway.GetOrderDetails(
        gateway_pb2.GetOrderDetailsRequest(order_id=reply.order.id), timeout=5
    )
    assert details.user.id == user_id
    assert details.payment.id == reply.payment.id


@pytest.mark.parametrize(
    ("card", "code"), [(DECLINE, "card_declined"), (INSUFFICIENT, "insufficient_funds")]
)
async def test_declined_card_compensates(channel: grpc.aio.Channel, card: str, code: str) -> None:
    stubs = Stubs.on(channel)
    user_id, product = await stubs.customer(), await stubs.product(1)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stubs.gateway.ProcessOrder(order_request(user_id, product.id, card=card), timeout=15)
    err = StatusError.from_rpc_error(info.value)
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION
    assert err.reason == "PAYMENT_DECLINED"
    assert err.error_info is not None and err.error_info.metadata["decline_code"] == code
    assert err.error_info.domain == "shop"
    assert await stubs.stock(product.id) == product.stock
    orders = await stubs.orders.ListOrders(orders_pb2.ListOrdersRequest(user_id=user_id), timeout=5)
    assert [o.status for o in orders.orders] == [orders_pb2.ORDER_STATUS_CANCELLED]
    assert orders.orders[0].cancel_reason
    payments = await stubs.payments.ListPayments(
        payments_pb2.ListPaymentsRequest(order_id=orders.orders[0].id), timeout=5
    )
    assert [p.status for p in payments.payments] == [payments_pb2.PAYMENT_STATUS_DECLINED]


async def test_out_of_stock_names_the_product(channel: grpc.aio.Channel) -> None:
    stubs = Stubs.on(channel)
    user_id, product = await stubs.customer(), await stubs.product(2)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stubs.gateway.ProcessOrder(
            order_request(user_id, product.id, quantity=product.stock + 1), timeout=15
        )
    err = StatusError.from_rpc_error(info.value)
    assert (err.code, err.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "OUT_OF_STOCK")
    resource = err.detail(error_details_pb2.ResourceInfo)
    assert resource is not None and resource.resource_name == product.id
    assert await stubs.stock(product.id) == product.stock
    orders = await stubs.orders.ListOrders(orders_pb2.ListOrdersRequest(user_id=user_id), timeout=5)
    assert [o.status for o in orders.orders] == [orders_pb2.ORDER_STATUS_CANCELLED]


async def test_bad_input_lists_every_field(channel: grpc.aio.Channel) -> None:
    stubs = Stubs.on(channel)
    user_id, product = await stubs.customer(), await stubs.product()
    request = order_request(user_id, product.id, quantity=0, card="4242 4242 4242 4242")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stubs.gateway.ProcessOrder(request, timeout=10)
    err = StatusError.from_rpc_error(info.value)
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    fields = {f for f, _ in err.field_violations}
    assert {"items[0].quantity", "payment_method.card_number"} <= fields

    # A well-formed card number that fails the Luhn check is caught by the service itself.
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stubs.gateway.ProcessOrder(
            order_request(user_id, product.id, card="4242424242424241"), timeout=10
        )
    err = StatusError.from_rpc_error(info.value)
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in err.field_violations] == ["payment_method.card_number"]

    empty = gateway_pb2.ProcessOrderRequest(user_id=user_id, payment_method=request.payment_method)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stubs.gateway.ProcessOrder(empty, timeout=10)
    assert "items" in {f for f, _ in StatusError.from_rpc_error(info.value).field_violations}

    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stubs.users.CreateUser(
            users_pb2.CreateUserRequest(email="not-an-email", password="long enough", name="x"),
            timeout=5,
        )
    err = StatusError.from_rpc_error(info.value)
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "email" in {f for f, _ in err.field_violations}


async def test_unknown_ids_are_not_found(channel: grpc.aio.Channel) -> None:
    stubs = Stubs.on(channel)
    missing = "00000000-0000-4000-8000-000000000000"
    for call, request in [
        (stubs.orders.GetOrder, orders_pb2.GetOrderRequest(order_id=missing)),
        (stubs.catalog.GetProduct, catalog_pb2.GetProductRequest(product_id=missing)),
        (stubs.users.GetUser, users_pb2.GetUserRequest(user_id=missing)),
        (stubs.payments.GetPayment, payments_pb2.GetPaymentRequest(payment_id=missing)),
        (stubs.gateway.GetOrderDetails, gateway_pb2.GetOrderDetailsRequest(order_id=missing)),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call(request, timeout=5)  # type: ignore[operator]
        assert info.value.code() == grpc.StatusCode.NOT_FOUND, request


async def test_duplicate_email_already_exists(channel: grpc.aio.Channel) -> None:
    stubs = Stubs.on(channel)
    request = users_pb2.CreateUserRequest(email="dup@example.com", password="long enough", name="D")
    await stubs.users.CreateUser(request, timeout=5)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stubs.users.CreateUser(request, timeout=5)
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_same_idempotency_key_eight_at_once_is_one_order_one_charge(
    channel: grpc.aio.Channel,
) -> None:
    stubs = Stubs.on(channel)
    user_id, product = await stubs.customer(), await stubs.product(3)
    request = order_request(user_id, product.id, key="same-key-8x")
    replies = await asyncio.gather(
        *(stubs.gateway.ProcessOrder(request, timeout=20) for _ in range(8))
    )
    assert len({r.order.id for r in replies}) == 1
    assert len({r.payment.id for r in replies}) == 1
    again = await stubs.gateway.ProcessOrder(request, timeout=20)
    assert again.order.id == replies[0].order.id
    payments = await stubs.payments.ListPayments(
        payments_pb2.ListPaymentsRequest(order_id=replies[0].order.id), timeout=5
    )
    assert len(payments.payments) == 1
    assert await stubs.stock(product.id) == product.stock - 1
    orders = await stubs.orders.ListOrders(orders_pb2.ListOrdersRequest(user_id=user_id), timeout=5)
    assert len(orders.orders) == 1


async def test_metrics_count_the_order(shop: ShopProcess, channel: grpc.aio.Channel) -> None:
    stubs = Stubs.on(channel)
    user_id, product = await stubs.customer(), await stubs.product()
    await stubs.gateway.ProcessOrder(order_request(user_id, product.id), timeout=15)
    body = await asyncio.to_thread(
        lambda: (
            urllib.request.urlopen(f"http://127.0.0.1:{shop.http_port}/metrics", timeout=5)
            .read()
            .decode()
        )
    )
    handled = (
        'grpc_server_handled_total{grpc_code="OK",grpc_method="ProcessOrder",'
        'grpc_service="shop.gateway.v1.GatewayService",grpc_type="unary"} 1.0'
    )
    assert handled in body
    assert 'grpc_client_handled_total{grpc_code="OK",grpc_method="ReserveStock"' in body
    promtool = shutil.which("promtool")
    if promtool is None:
        message = "promtool not found: apt-get install prometheus to lint the exposition"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    checked = await asyncio.to_thread(
        subprocess.run,
        [promtool, "check", "metrics"],
        input=body.encode(),
        capture_output=True,
        timeout=30,
    )
    assert checked.returncode == 0, checked.stdout.decode() + checked.stderr.decode()
