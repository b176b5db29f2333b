"""Credentials for the benchmarks that drive ``shop up``: customers whose tokens stay fresh.

Since issue 4 every non-public shop method needs ``authorization: Bearer <access token>``. The
benchmarks register customers (CreateUser, Login), send each customer's token as explicit call
metadata (no client interceptor: the load generator's CPU is part of what is measured on this
2-core machine) and log in again a minute before the 15-minute token expires, so a long leak
run keeps working. Admin-only set-up calls (CreateProduct) go through ``tests.e2e.clients``'
signing channel, which logs the harness's admin in.

Example::

    ann = await Customer.register(shop.grpc_address)
    await stub.ProcessOrder(order_request(ann.user_id, product_id), metadata=await ann.metadata())
"""

from __future__ import annotations

import asyncio
import secrets
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import grpc
from google.type import money_pb2

from shop.api.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from shop.api.users.v1 import users_pb2, users_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.e2e.clients import connect  # the admin-signing channel

PASSWORD = "bench horse battery"
#: Log in again this long before the access token expires.
RENEW_BEFORE = 60.0

Metadata = tuple[tuple[str, str], ...]


class Customer:
    """A registered customer and its current access token (renewed by :meth:`metadata`)."""

    def __init__(self, address: str, user_id: str, email: str) -> None:
        self._address = address
        self.user_id = user_id
        self.email = email
        self._metadata: Metadata = ()
        self._expires_at = 0.0
        self._lock = asyncio.Lock()
        self.logins = 0

    @classmethod
    async def register(cls, address: str) -> Customer:
        """CreateUser (public) and Login at the shop at ``address``."""
        email = f"bench-{secrets.token_hex(5)}@example.com"
        async with grpc.aio.insecure_channel(address) as channel:
            reply = await users_pb2_grpc.UserServiceStub(channel).CreateUser(
                users_pb2.CreateUserRequest(email=email, password=PASSWORD, name="Bench"),
                timeout=10,
            )
        customer = cls(address, reply.user.id, email)
        await customer.metadata()
        return customer

    async def metadata(self) -> Metadata:
        """``(("authorization", "Bearer ..."),)`` with a token valid for another minute at least."""
        if time.monotonic() < self._expires_at:
            return self._metadata
        async with self._lock:
            if time.monotonic() >= self._expires_at:
                async with grpc.aio.insecure_channel(self._address) as channel:
                    login = await users_pb2_grpc.UserServiceStub(channel).Login(
                        users_pb2.LoginRequest(email=self.email, password=PASSWORD), timeout=10
                    )
                self._metadata = (("authorization", f"Bearer {login.access_token}"),)
                self._expires_at = time.monotonic() + login.expires_in - RENEW_BEFORE
                self.logins += 1
        return self._metadata


async def customers(address: str, count: int) -> list[Customer]:
    """``count`` fresh customers (one after another: CreateUser is limited per address)."""
    return [await Customer.register(address) for _ in range(count)]


async def bench_products(
    address: str, count: int, prefix: str, *, users: str | None = None
) -> Sequence[catalog_pb2.Product]:
    """``count`` products with stock enough for any run, created as the harness's admin.

    ``users``: where the admin logs in when ``address`` does not serve UserService (a
    distributed shop's catalog process).
    """
    tag = secrets.token_hex(3).upper()
    async with connect(address, users=users) as channel:
        catalog = catalog_pb2_grpc.CatalogServiceStub(channel)
        return [
            (
                await catalog.CreateProduct(
                    catalog_pb2.CreateProductRequest(
                        sku=f"{prefix}-{tag}-{i}",
                        name=f"Bench product {i}",
                        price=money_pb2.Money(currency_code="USD", units=9, nanos=990_000_000),
                        stock=1_000_000_000,
                    ),
                    timeout=10,
                )
            ).product
            for i in range(count)
        ]
