"""``shop order`` and ``shop watch``: the system from a terminal, over gRPC like any client."""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import secrets
import sys
from collections.abc import Mapping
from pathlib import Path

import grpc
from google.protobuf import duration_pb2, json_format

from grpckit import StatusError
from shop.api.analytics.v1 import analytics_pb2, analytics_pb2_grpc
from shop.api.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from shop.api.common.v1 import common_pb2
from shop.api.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from shop.api.orders.v1 import orders_pb2
from shop.api.payments.v1 import payments_pb2
from shop.api.users.v1 import users_pb2, users_pb2_grpc
from shop.common.ids import is_id
from shop.common.money import from_proto

TIMEOUT = 10.0


def _fail(err: grpc.aio.AioRpcError) -> int:
    status = StatusError.from_rpc_error(err)
    reason = f" [{status.reason}]" if status.reason else ""
    print(f"order failed: {status.code.name}{reason}: {status.message}", file=sys.stderr)
    if status.error_info is not None and status.error_info.metadata:
        print(f"  details: {dict(status.error_info.metadata)}", file=sys.stderr)
    for field, description in status.field_violations:
        print(f"  {field}: {description}", file=sys.stderr)
    return 1


def _channel(ns: argparse.Namespace, addr: str | None = None) -> grpc.aio.Channel:
    """Plaintext, or TLS trusting DIR/ca.pem (with DIR/client.pem when present) for --tls-dir."""
    tls_dir: Path | None = ns.tls_dir
    target = addr or ns.addr
    if tls_dir is None:
        return grpc.aio.insecure_channel(target)
    ca = tls_dir / "ca.pem"
    if not ca.is_file():
        raise LookupError(f"{ca} not found: create certificates with `shop certs --out {tls_dir}`")
    cert, key = tls_dir / "client.pem", tls_dir / "client-key.pem"
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes(),
        private_key=key.read_bytes() if key.is_file() else None,
        certificate_chain=cert.read_bytes() if cert.is_file() else None,
    )
    return grpc.aio.secure_channel(target, credentials)


def token_subject(token: str) -> str:
    """The ``sub`` claim of a JWT, read without verifying it (the server verifies)."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return str(claims["sub"])
    except (IndexError, KeyError, TypeError, ValueError):
        raise LookupError("the token is not a JWT: pass the access_token Login returned") from None


async def _login(channel: grpc.aio.Channel, email: str, password: str) -> users_pb2.LoginResponse:
    users = users_pb2_grpc.UserServiceStub(channel)
    return await users.Login(
        users_pb2.LoginRequest(email=email, password=password), timeout=TIMEOUT
    )


async def _demo_login(channel: grpc.aio.Channel) -> str:
    users = users_pb2_grpc.UserServiceStub(channel)
    email = f"demo-{secrets.token_hex(4)}@example.com"
    password = secrets.token_urlsafe(12)
    reply = await users.CreateUser(
        users_pb2.CreateUserRequest(email=email, password=password, name="Demo Customer"),
        timeout=TIMEOUT,
    )
    print(f"registered demo user {reply.user.email} ({reply.user.id})")
    return (await _login(channel, email, password)).access_token


async def _access_token(
    ns: argparse.Namespace, env: Mapping[str, str], channel: grpc.aio.Channel, *, demo: bool
) -> str:
    """--token / SHOP_TOKEN, else log in with --email/--password, else a new demo user."""
    token = ns.token or env.get("SHOP_TOKEN")
    if token:
        return str(token)
    email = ns.email or env.get("SHOP_EMAIL")
    password = ns.password or env.get("SHOP_PASSWORD")
    if email and password:
        return (await _login(channel, email, password)).access_token
    if email or password:
        raise LookupError("pass both --email and --password (or SHOP_EMAIL and SHOP_PASSWORD)")
    if demo:
        return await _demo_login(channel)
    raise LookupError(
        "no credentials: pass --email and --password (or --token); create an account with "
        "shop.users.v1.UserService/CreateUser, or start the shop with SHOP_ADMIN_EMAIL and "
        "SHOP_ADMIN_PASSWORD set for an admin"
    )


def _bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def _items(channel: grpc.aio.Channel, specs: list[str]) -> list[common_pb2.LineItem]:
    """Line items for ``PRODUCT[:QTY]`` specs (public catalog reads: no token needed)."""
    catalog = catalog_pb2_grpc.CatalogServiceStub(channel)
    if not specs:
        page = await catalog.ListProducts(
            catalog_pb2.ListProductsRequest(page_size=1), timeout=TIMEOUT
        )
        if not page.products:
            raise LookupError(
                "the catalog is empty: start with demo data or pass --item PRODUCT_ID"
            )
        specs = [page.products[0].id]
    items = []
    for spec in specs:
        key, _, qty = spec.partition(":")
        if not is_id(key):  # a sku: look it up
            found = await catalog.SearchProducts(
                catalog_pb2.SearchProductsRequest(query=key), timeout=TIMEOUT
            )
            match = [p for p in found.products if p.sku == key]
            if not match:
                raise LookupError(f"no product with id or sku {key!r}")
            key = match[0].id
        items.append(common_pb2.LineItem(product_id=key, quantity=int(qty or 1)))
    return items


async def order(ns: argparse.Namespace, env: Mapping[str, str]) -> int:
    """Log in (or register a demo user), pick the items, ProcessOrder, print the outcome.

    With ``shop up --distributed`` the gateway serves only GatewayService: pass the users and
    catalog addresses from the ready line as ``--users-addr`` / ``--catalog-addr``.
    """
    try:
        channel = _channel(ns)
        users = _channel(ns, ns.users_addr) if ns.users_addr else channel
        catalog = _channel(ns, ns.catalog_addr) if ns.catalog_addr else channel
    except LookupError as exc:
        print(f"shop order: {exc}", file=sys.stderr)
        return 1
    async with channel:
        try:
            token = await _access_token(ns, env, users, demo=True)
            user_id = ns.user_id or token_subject(token)
            items = await _items(catalog, ns.item)
            request = gateway_pb2.ProcessOrderRequest(
                user_id=user_id,
                items=items,
                payment_method=payments_pb2.PaymentMethod(
                    card_number=ns.card, exp_month=12, exp_year=2030, cvc="123"
                ),
                idempotency_key=ns.idempotency_key or secrets.token_hex(16),
            )
            reply = await gateway_pb2_grpc.GatewayServiceStub(channel).ProcessOrder(
                request, timeout=30, metadata=_bearer(token)
            )
        except grpc.aio.AioRpcError as err:
            return _fail(err)
        except LookupError as exc:
            print(f"shop order: {exc}", file=sys.stderr)
            return 1
        finally:
            for extra in {users, catalog} - {channel}:
                await extra.close(None)
    if ns.json:
        print(json_format.MessageToJson(reply))
        return 0
    o, p = reply.order, reply.payment
    print(
        f"order {o.id} {orders_pb2.OrderStatus.Name(o.status)} total {from_proto(o.total)}; "
        f"payment {p.id} "
        f"{payments_pb2.PaymentStatus.Name(p.status)} card ****{p.card_last4}"
    )
    return 0


async def token(ns: argparse.Namespace, env: Mapping[str, str]) -> int:
    """Log in and print the access token (or the whole Login response with --json)."""
    email = ns.email or env.get("SHOP_EMAIL")
    password = ns.password or env.get("SHOP_PASSWORD")
    if not (email and password):
        print(
            "shop token: pass --email and --password (or SHOP_EMAIL and SHOP_PASSWORD)",
            file=sys.stderr,
        )
        return 2
    try:
        channel = _channel(ns)
    except LookupError as exc:
        print(f"shop token: {exc}", file=sys.stderr)
        return 1
    async with channel:
        try:
            reply = await _login(channel, email, password)
        except grpc.aio.AioRpcError as err:
            print(f"shop token: {err.code().name}: {err.details()}", file=sys.stderr)
            return 1
    if ns.json:
        print(json_format.MessageToJson(reply, preserving_proto_field_name=True))
    else:
        print(reply.access_token)
    return 0


async def watch(ns: argparse.Namespace, env: Mapping[str, str]) -> int:
    window = duration_pb2.Duration()
    window.FromNanoseconds(int(ns.window * 1e9))
    interval = duration_pb2.Duration()
    interval.FromNanoseconds(int(ns.interval * 1e9))
    request = analytics_pb2.StreamRealTimeMetricsRequest(window=window, interval=interval)
    try:
        channel = _channel(ns)
    except LookupError as exc:
        print(f"shop watch: {exc}", file=sys.stderr)
        return 1
    async with channel:
        try:
            if ns.users_addr:  # distributed mode: log in where the users service is
                async with _channel(ns, ns.users_addr) as users:
                    access = await _access_token(ns, env, users, demo=True)
            else:
                access = await _access_token(ns, env, channel, demo=True)
        except (grpc.aio.AioRpcError, LookupError) as err:
            detail = err.details() if isinstance(err, grpc.aio.AioRpcError) else str(err)
            print(f"shop watch: cannot log in: {detail}", file=sys.stderr)
            return 1
        stub = analytics_pb2_grpc.AnalyticsServiceStub(channel)
        call = stub.StreamRealTimeMetrics(request, metadata=_bearer(access))
        seen = 0
        try:
            async for reply in call:
                _print_snapshot(reply.snapshot, as_json=ns.json)
                seen += 1
                if ns.count and seen >= ns.count:
                    call.cancel()
                    break
        except grpc.aio.AioRpcError as err:
            if err.code() != grpc.StatusCode.CANCELLED:
                print(f"shop watch: {err.code().name}: {err.details()}", file=sys.stderr)
                return 1
        except asyncio.CancelledError:
            call.cancel()
    return 0


def _print_snapshot(s: analytics_pb2.MetricsSnapshot, *, as_json: bool) -> None:
    if as_json:
        print(json_format.MessageToJson(s, indent=None), flush=True)
        return
    revenue = ", ".join(str(from_proto(m)) for m in s.revenue) or "0"
    print(
        f"{s.as_of.ToDatetime():%H:%M:%S} window {s.window.ToTimedelta().total_seconds():g}s  "
        f"orders/s {s.orders_per_second:.2f}  created {s.orders_created}  paid {s.orders_paid}  "
        f"cancelled {s.orders_cancelled}  revenue {revenue}  decline rate {s.decline_rate:.1%}",
        flush=True,
    )
