"""GatewayService over real gRPC: the gateway mounted on an App, its peers fake servicers."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from grpckit import App, ServerConfig, StatusError
from grpckit.testing import Service, serve_in_process
from shop.api.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from shop.api.common.v1 import common_pb2
from shop.api.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from shop.api.orders.v1 import orders_pb2, orders_pb2_grpc
from shop.api.payments.v1 import payments_pb2, payments_pb2_grpc
from shop.api.users.v1 import users_pb2, users_pb2_grpc
from shop.common.bus import InMemoryEventBus
from shop.common.ids import new_id
from shop.common.money import from_proto
from shop.common.runtime import ServiceContext, Settings
from shop.gateway.domain import Card, LineItem
from shop.gateway.main import SERVICE, mount
from tests.shop.gateway.gateway_fakes import DECLINED_CARD, GOOD_CARD, FakePeers

Ctx = grpc.aio.ServicerContext[Any, Any]


def _items(items: Any) -> list[LineItem]:
    return [LineItem(i.product_id, i.quantity) for i in items]


class Users(users_pb2_grpc.UserServiceServicer):
    def __init__(self, peers: FakePeers) -> None:
        self.peers = peers

    async def ValidateUser(self, request: Any, context: Ctx) -> Any:
        reason = await self.peers.validate_user(request.user_id)
        return users_pb2.ValidateUserResponse(valid=not reason, reason=reason)

    async def GetUser(self, request: Any, context: Ctx) -> Any:
        return users_pb2.GetUserResponse(user=await self.peers.get_user(request.user_id))


class Catalog(catalog_pb2_grpc.CatalogServiceServicer):
    def __init__(self, peers: FakePeers) -> None:
        self.peers = peers

    async def ReserveStock(self, request: Any, context: Ctx) -> Any:
        await self.peers.reserve_stock(request.order_id, _items(request.items))
        return catalog_pb2.ReserveStockResponse()

    async def ReleaseStock(self, request: Any, context: Ctx) -> Any:
        await self.peers.release_stock(request.order_id)
        return catalog_pb2.ReleaseStockResponse()


class Orders(orders_pb2_grpc.OrderServiceServicer):
    def __init__(self, peers: FakePeers) -> None:
        self.peers = peers

    async def CreateOrder(self, request: Any, context: Ctx) -> Any:
        items = _items(request.items)
        order = await self.peers.create_order(request.user_id, items, request.idempotency_key)
        return orders_pb2.CreateOrderResponse(order=order)

    async def GetOrder(self, request: Any, context: Ctx) -> Any:
        return orders_pb2.GetOrderResponse(order=await self.peers.get_order(request.order_id))

    async def MarkOrderPaid(self, request: Any, context: Ctx) -> Any:
        order = await self.peers.mark_order_paid(request.order_id, request.payment_id)
        return orders_pb2.MarkOrderPaidResponse(order=order)

    async def CancelOrder(self, request: Any, context: Ctx) -> Any:
        await self.peers.cancel_order(request.order_id, request.reason)
        return orders_pb2.CancelOrderResponse(order=self.peers.orders[request.order_id])


class Payments(payments_pb2_grpc.PaymentServiceServicer):
    def __init__(self, peers: FakePeers) -> None:
        self.peers = peers

    async def ProcessPayment(self, request: Any, context: Ctx) -> Any:
        m = request.method
        card = Card(m.card_number, m.exp_month, m.exp_year, m.cvc)
        payment = await self.peers.process_payment(
            request.order_id,
            from_proto(request.amount),
            card,
            request.idempotency_key,
            user_id=request.user_id,
        )
        return payments_pb2.ProcessPaymentResponse(payment=payment)

    async def RefundPayment(self, request: Any, context: Ctx) -> Any:
        await self.peers.refund_payment(request.payment_id, request.reason)
        return payments_pb2.RefundPaymentResponse(payment=self.peers.payments[request.payment_id])

    async def GetPayment(self, request: Any, context: Ctx) -> Any:
        return payments_pb2.GetPaymentResponse(
            payment=await self.peers.get_payment(request.payment_id)
        )

    async def ListPayments(self, request: Any, context: Ctx) -> Any:
        payments = await self.peers.list_payments(request.order_id)
        return payments_pb2.ListPaymentsResponse(payments=payments)


def peer_services(peers: FakePeers) -> list[Service]:
    def service(module: Any, name: str, servicer: object, descriptor_module: Any) -> Service:
        add = getattr(module, f"add_{name}Servicer_to_server")
        return Service(add, servicer, descriptor_module.DESCRIPTOR.services_by_name[name])

    return [
        service(users_pb2_grpc, "UserService", Users(peers), users_pb2),
        service(catalog_pb2_grpc, "CatalogService", Catalog(peers), catalog_pb2),
        service(orders_pb2_grpc, "OrderService", Orders(peers), orders_pb2),
        service(payments_pb2_grpc, "PaymentService", Payments(peers), payments_pb2),
    ]


@dataclass
class Gateway:
    stub: gateway_pb2_grpc.GatewayServiceAsyncStub
    channel: grpc.aio.Channel
    peers: FakePeers
    user_id: str
    product_id: str

    def request(self, *, card: str = GOOD_CARD, quantity: int = 1, key: str = "k1") -> Any:
        return gateway_pb2.ProcessOrderRequest(
            user_id=self.user_id,
            items=[common_pb2.LineItem(product_id=self.product_id, quantity=quantity)],
            payment_method=payments_pb2.PaymentMethod(
                card_number=card, exp_month=12, exp_year=2031, cvc="123"
            ),
            idempotency_key=key,
        )


async def start_gateway(tmp_path: Path, addresses: dict[str, str]) -> tuple[App, ServiceContext]:
    settings = Settings(data_dir=tmp_path, saga_timeout=10.0, call_timeout=2.0)
    ctx = ServiceContext(settings=settings, bus=InMemoryEventBus(), peers=addresses)
    app = App(ServerConfig(grace_period=1.0), name="gateway")
    await mount(app, ctx)
    return app, ctx


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[Gateway]:
    peers = FakePeers()
    async with serve_in_process(*peer_services(peers)) as peer_server:
        addresses = dict.fromkeys(("users", "catalog", "orders", "payments"), peer_server.address)
        app, ctx = await start_gateway(tmp_path, addresses)
        try:
            async with serve_in_process(app=app) as server:
                stub = gateway_pb2_grpc.GatewayServiceStub(server.channel)
                yield Gateway(stub, server.channel, peers, peers.add_user(), peers.add_product(5))
        finally:
            await ctx.close()


async def failure(call: Awaitable[Any]) -> StatusError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return StatusError.from_rpc_error(caught.value)


async def test_process_order_and_details(gateway: Gateway) -> None:
    reply = await gateway.stub.ProcessOrder(gateway.request(quantity=2))
    assert reply.order.status == orders_pb2.ORDER_STATUS_PAID
    assert reply.payment.status == payments_pb2.PAYMENT_STATUS_CAPTURED
    assert reply.payment.user_id == reply.order.user_id == gateway.user_id  # sent to payments
    assert gateway.peers.stock[gateway.product_id] == 3
    again = await gateway.stub.ProcessOrder(gateway.request(quantity=2))
    assert again == reply
    details = await gateway.stub.GetOrderDetails(
        gateway_pb2.GetOrderDetailsRequest(order_id=reply.order.id)
    )
    assert (details.order.id, details.payment.id, details.user.id) == (
        reply.order.id,
        reply.payment.id,
        gateway.user_id,
    )


async def test_every_violation_is_listed_before_any_side_effect(gateway: Gateway) -> None:
    request = gateway_pb2.ProcessOrderRequest(
        user_id="nope",
        items=[common_pb2.LineItem(product_id="x", quantity=0)],
        payment_method=payments_pb2.PaymentMethod(
            card_number="4242424242424241", exp_month=13, cvc="12"
        ),
        idempotency_key="k" * 201,
    )
    error = await failure(gateway.stub.ProcessOrder(request))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [field for field, _ in error.field_violations] == [
        "user_id",
        "items[0].product_id",
        "items[0].quantity",
        "payment_method.card_number",
        "payment_method.exp_month",
        "payment_method.cvc",
        "idempotency_key",
    ]
    empty = await failure(gateway.stub.ProcessOrder(gateway_pb2.ProcessOrderRequest()))
    assert [f for f, _ in empty.field_violations] == ["user_id", "items", "payment_method"]
    assert gateway.peers.calls == []


async def test_a_decline_reaches_the_caller_with_its_details(gateway: Gateway) -> None:
    error = await failure(gateway.stub.ProcessOrder(gateway.request(card=DECLINED_CARD)))
    assert (error.code, error.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "PAYMENT_DECLINED")
    assert error.error_info is not None
    assert error.error_info.metadata["decline_code"] == "card_declined"
    assert error.error_info.metadata["payment_id"] in gateway.peers.payments
    [order] = gateway.peers.orders.values()
    assert order.status == orders_pb2.ORDER_STATUS_CANCELLED
    details = await gateway.stub.GetOrderDetails(
        gateway_pb2.GetOrderDetailsRequest(order_id=order.id)
    )
    assert details.payment.status == payments_pb2.PAYMENT_STATUS_DECLINED  # latest attempt


async def test_out_of_stock_names_the_product(gateway: Gateway) -> None:
    error = await failure(gateway.stub.ProcessOrder(gateway.request(quantity=6)))
    assert (error.code, error.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "OUT_OF_STOCK")
    resource = error.detail(error_details_pb2.ResourceInfo)
    assert resource is not None and resource.resource_name == gateway.product_id


async def test_unknown_user_is_not_found(gateway: Gateway) -> None:
    gateway.user_id = new_id()
    error = await failure(gateway.stub.ProcessOrder(gateway.request()))
    assert (error.code, error.reason) == (grpc.StatusCode.NOT_FOUND, "USER_NOT_FOUND")
    assert error.error_info is not None and error.error_info.domain == "shop"


async def test_a_reused_key_with_another_request_is_refused(gateway: Gateway) -> None:
    await gateway.stub.ProcessOrder(gateway.request())
    error = await failure(gateway.stub.ProcessOrder(gateway.request(quantity=2)))
    assert (error.code, error.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "IDEMPOTENCY_KEY_REUSED",
    )


async def test_order_details_of_unknown_or_malformed_ids(gateway: Gateway) -> None:
    missing = await failure(
        gateway.stub.GetOrderDetails(gateway_pb2.GetOrderDetailsRequest(order_id=new_id()))
    )
    assert missing.code == grpc.StatusCode.NOT_FOUND
    bad = await failure(
        gateway.stub.GetOrderDetails(gateway_pb2.GetOrderDetailsRequest(order_id="x"))
    )
    assert bad.field_violations == [("order_id", "must be an order id (UUID)")]


async def test_health_is_registered(gateway: Gateway) -> None:
    health = health_pb2_grpc.HealthStub(gateway.channel)
    reply = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE.full_name))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def closed_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


async def test_an_unreachable_peer_is_dependency_unavailable(tmp_path: Path) -> None:
    down = closed_port()
    app, ctx = await start_gateway(tmp_path, dict.fromkeys(("users", "catalog", "orders",
                                                            "payments"), down))  # fmt: skip
    try:
        async with serve_in_process(app=app) as server:
            stub = gateway_pb2_grpc.GatewayServiceStub(server.channel)
            request = Gateway(stub, server.channel, FakePeers(), new_id(), new_id()).request()
            error = await failure(stub.ProcessOrder(request))
    finally:
        await ctx.close()
    assert (error.code, error.reason) == (grpc.StatusCode.UNAVAILABLE, "DEPENDENCY_UNAVAILABLE")
    assert error.error_info is not None
    assert error.error_info.metadata["step"] == "validate_user"
