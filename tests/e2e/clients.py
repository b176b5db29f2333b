"""Small typed helpers the end-to-end tests share: stubs, a customer, an order request.

Every shop method needs credentials now (issue 4). :func:`connect` opens a channel that signs
calls on the tests' behalf, so the flow tests stay about the flow: a request naming a
``user_id`` goes with that customer's token (registered by :meth:`Stubs.customer`), anything
else with the admin's (the harness starts the shop with ``SHOP_ADMIN_EMAIL``). The security
tests (test_security.py) use plain channels and explicit tokens instead.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import Message

from grpckit.client import every_kind
from shop.api.analytics.v1 import analytics_pb2_grpc
from shop.api.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from shop.api.common.v1 import common_pb2
from shop.api.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from shop.api.orders.v1 import orders_pb2, orders_pb2_grpc
from shop.api.payments.v1 import payments_pb2, payments_pb2_grpc
from shop.api.users.v1 import users_pb2, users_pb2_grpc

ADMIN_EMAIL = "admin@shop.test"
ADMIN_PASSWORD = "e2e-admin-password"
PASSWORD = "correct horse"
#: user id -> access token of the customers the tests registered (tokens outlive restarts:
#: the signing key is kept in the data dir).
TOKENS: dict[str, str] = {}
_ADMIN_TOKENS: dict[str, str] = {}

APPROVE = "4242424242424242"
DECLINE = "4000000000000002"
INSUFFICIENT = "4000000000009995"


@dataclass
class Stubs:
    users: users_pb2_grpc.UserServiceStub
    catalog: catalog_pb2_grpc.CatalogServiceStub
    orders: orders_pb2_grpc.OrderServiceStub
    payments: payments_pb2_grpc.PaymentServiceStub
    analytics: analytics_pb2_grpc.AnalyticsServiceStub
    gateway: gateway_pb2_grpc.GatewayServiceStub

    @classmethod
    def on(cls, channel: grpc.aio.Channel) -> Stubs:
        return cls(
            users_pb2_grpc.UserServiceStub(channel),
            catalog_pb2_grpc.CatalogServiceStub(channel),
            orders_pb2_grpc.OrderServiceStub(channel),
            payments_pb2_grpc.PaymentServiceStub(channel),
            analytics_pb2_grpc.AnalyticsServiceStub(channel),
            gateway_pb2_grpc.GatewayServiceStub(channel),
        )

    async def customer(self) -> str:
        """Register a customer, log in, remember the token; returns the user id."""
        email = f"c-{secrets.token_hex(5)}@example.com"
        reply = await self.users.CreateUser(
            users_pb2.CreateUserRequest(email=email, password=PASSWORD, name="C"), timeout=10
        )
        login = await self.users.Login(
            users_pb2.LoginRequest(email=email, password=PASSWORD), timeout=10
        )
        TOKENS[reply.user.id] = login.access_token
        return reply.user.id

    async def product(self, index: int = 0) -> catalog_pb2.Product:
        page = await self.catalog.ListProducts(
            catalog_pb2.ListProductsRequest(page_size=index + 1), timeout=10
        )
        return page.products[index]

    async def stock(self, product_id: str) -> int:
        reply = await self.catalog.GetProduct(
            catalog_pb2.GetProductRequest(product_id=product_id), timeout=10
        )
        return reply.product.stock


def order_request(
    user_id: str, product_id: str, *, quantity: int = 1, card: str = APPROVE, key: str = ""
) -> gateway_pb2.ProcessOrderRequest:
    return gateway_pb2.ProcessOrderRequest(
        user_id=user_id,
        items=[common_pb2.LineItem(product_id=product_id, quantity=quantity)],
        payment_method=payments_pb2.PaymentMethod(
            card_number=card, exp_month=12, exp_year=2031, cvc="123"
        ),
        idempotency_key=key or secrets.token_hex(12),
    )


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    """Call metadata carrying ``token``."""
    return (("authorization", f"Bearer {token}"),)


async def admin_token(address: str) -> str:
    """The admin's access token for the shop at ``address`` (logged in once)."""
    if address not in _ADMIN_TOKENS:
        async with grpc.aio.insecure_channel(address) as channel:
            reply = await users_pb2_grpc.UserServiceStub(channel).Login(
                users_pb2.LoginRequest(email=ADMIN_EMAIL, password=ADMIN_PASSWORD), timeout=10
            )
        _ADMIN_TOKENS[address] = reply.access_token
    return _ADMIN_TOKENS[address]


def act_as(users_address: str) -> list[Any]:
    """Client interceptors adding ``authorization``: the token of the request's ``user_id``
    (a customer registered by :meth:`Stubs.customer`), else the admin's."""

    async def intercept(continuation: Any, details: Any, request: Any) -> Any:
        if details.metadata is None or all(k != "authorization" for k, _ in details.metadata):
            user_id = getattr(request, "user_id", "") if isinstance(request, Message) else ""
            token = TOKENS.get(user_id) if user_id else None
            if token is None:
                token = await admin_token(users_address)
            metadata = grpc.aio.Metadata(*(details.metadata or ()), *bearer(token))
            details = grpc.aio.ClientCallDetails(
                details.method, details.timeout, metadata, details.credentials,
                details.wait_for_ready,
            )  # fmt: skip
        return await continuation(details, request)

    return every_kind(intercept)


def connect(address: str, *, users: str | None = None) -> grpc.aio.Channel:
    """A plaintext channel to the shop that authenticates each call (see the module docstring).

    ``users``: where to log the admin in when ``address`` does not serve UserService.
    """
    return grpc.aio.insecure_channel(address, interceptors=act_as(users or address))


async def all_orders(stubs: Stubs, user_id: str) -> list[Any]:
    """Every order of ``user_id`` (all pages), read with that customer's token."""
    orders: list[Any] = []
    token = ""
    while True:
        page = await stubs.orders.ListOrders(
            orders_pb2.ListOrdersRequest(user_id=user_id, page_size=100, page_token=token),
            metadata=bearer(TOKENS[user_id]),
            timeout=10,
        )
        orders.extend(page.orders)
        token = page.next_page_token
        if not token:
            return orders
