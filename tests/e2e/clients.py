"""Small typed helpers the end-to-end tests share: stubs, a customer, an order request."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import grpc

from shop.api.analytics.v1 import analytics_pb2_grpc
from shop.api.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from shop.api.common.v1 import common_pb2
from shop.api.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from shop.api.orders.v1 import orders_pb2_grpc
from shop.api.payments.v1 import payments_pb2, payments_pb2_grpc
from shop.api.users.v1 import users_pb2, users_pb2_grpc

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
        reply = await self.users.CreateUser(
            users_pb2.CreateUserRequest(
                email=f"c-{secrets.token_hex(5)}@example.com", password="correct horse", name="C"
            ),
            timeout=10,
        )
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
