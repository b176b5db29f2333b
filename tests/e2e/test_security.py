"""Issue 4's hostile-client matrix against a running `shop up`, over real sockets.

Forged tokens are made the way an attacker would try (alg none, HS256 keyed with the public
key, another key under the real kid, a tampered payload) and the way only a key holder could
(tokens signed with the real key but expired, not yet valid, for another issuer or audience):
the latter prove that each claim is checked on its own, not just the signature.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import re
import secrets
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.rpc import error_details_pb2

from grpckit import StatusError
from grpckit.auth import SigningKey, TokenSigner
from shop.api.catalog.v1 import catalog_pb2
from shop.api.common.v1 import common_pb2
from shop.api.gateway.v1 import gateway_pb2
from shop.api.orders.v1 import orders_pb2
from shop.api.payments.v1 import payments_pb2
from shop.api.users.v1 import users_pb2
from tests.e2e.clients import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    APPROVE,
    PASSWORD,
    Stubs,
    bearer,
    order_request,
)
from tests.e2e.harness import ShopProcess

pytestmark = pytest.mark.e2e

Metadata = tuple[tuple[str, str], ...]


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShopProcess]:
    """One shop for the token and policy tests (each test uses fresh accounts)."""
    process = ShopProcess(tmp_path_factory.mktemp("secured") / "data").start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
async def stubs(secured: ShopProcess) -> AsyncIterator[Stubs]:
    async with grpc.aio.insecure_channel(secured.grpc_address) as channel:
        yield Stubs.on(channel)


class Account:
    def __init__(self, user_id: str, email: str, login: users_pb2.LoginResponse) -> None:
        self.id, self.email, self.login = user_id, email, login

    @property
    def md(self) -> Metadata:
        return bearer(self.login.access_token)


async def sign_up(stubs: Stubs) -> Account:
    email = f"sec-{secrets.token_hex(5)}@example.com"
    user = await stubs.users.CreateUser(
        users_pb2.CreateUserRequest(email=email, password=PASSWORD, name="S"), timeout=10
    )
    login = await stubs.users.Login(
        users_pb2.LoginRequest(email=email, password=PASSWORD), timeout=10
    )
    return Account(user.user.id, email, login)


async def admin(stubs: Stubs) -> Metadata:
    login = await stubs.users.Login(
        users_pb2.LoginRequest(email=ADMIN_EMAIL, password=ADMIN_PASSWORD), timeout=10
    )
    return bearer(login.access_token)


async def rejected(call: Any) -> StatusError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return StatusError.from_rpc_error(info.value)


def http_get(port: int, path: str) -> str:
    url = f"http://127.0.0.1:{port}{path}"
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


# -- forging ------------------------------------------------------------------------------


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def compact(header: dict[str, Any], claims: dict[str, Any], sign: Callable[[bytes], bytes]) -> str:
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{b64(sign(signing_input.encode()))}"


def users_key(shop: ShopProcess) -> tuple[SigningKey, Ed25519PrivateKey]:
    pem = (shop.data_dir / "keys" / "users-ed25519.pem").read_bytes()
    private = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(private, Ed25519PrivateKey)
    return SigningKey.from_pem(pem), private


def claims_for(user_id: str, **override: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "iss": "shop.users",
        "aud": "shop",
        "sub": user_id,
        "roles": ["customer"],
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "jti": secrets.token_hex(8),
    }
    claims.update(override)
    return claims


def forgeries(shop: ShopProcess, user_id: str) -> dict[str, str]:
    key, private = users_key(shop)
    header = {"alg": "EdDSA", "typ": "JWT", "kid": key.kid}
    real = private.sign
    other = Ed25519PrivateKey.generate().sign
    public_raw = base64.urlsafe_b64decode(key.public_jwk()["x"] + "==")
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    now = int(time.time())
    valid = compact(header, claims_for(user_id), real)
    head, payload, signature = valid.split(".")
    tampered_claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    tampered_claims["roles"] = ["admin"]
    return {
        "expired": compact(header, claims_for(user_id, iat=now - 7200, exp=now - 3600), real),
        "not_yet_valid": compact(header, claims_for(user_id, iat=now, nbf=now + 3600), real),
        "wrong_signature": compact(header, claims_for(user_id), other),
        "wrong_issuer": compact(header, claims_for(user_id, iss="evil.example"), real),
        "wrong_audience": compact(header, claims_for(user_id, aud="another-api"), real),
        "alg_none": compact({"alg": "none", "typ": "JWT"}, claims_for(user_id), lambda _: b""),
        "alg_none_with_kid": compact(
            {"alg": "none", "typ": "JWT", "kid": key.kid}, claims_for(user_id), lambda _: b""
        ),
        "hs256_with_public_key_raw": compact(
            {"alg": "HS256", "typ": "JWT", "kid": key.kid},
            claims_for(user_id, roles=["admin"]),
            lambda data: hmac.new(public_raw, data, hashlib.sha256).digest(),
        ),
        "hs256_with_public_key_pem": compact(
            {"alg": "HS256", "typ": "JWT", "kid": key.kid},
            claims_for(user_id, roles=["admin"]),
            lambda data: hmac.new(public_pem, data, hashlib.sha256).digest(),
        ),
        "tampered_payload": f"{head}.{b64(json.dumps(tampered_claims).encode())}.{signature}",
        "unknown_kid": compact({**header, "kid": "not-a-key"}, claims_for(user_id), real),
        "garbage": "not.a.token",
    }


FORGERIES = [
    "expired",
    "not_yet_valid",
    "wrong_signature",
    "wrong_issuer",
    "wrong_audience",
    "alg_none",
    "alg_none_with_kid",
    "hs256_with_public_key_raw",
    "hs256_with_public_key_pem",
    "tampered_payload",
    "unknown_kid",
    "garbage",
]


async def test_the_real_key_signs_a_token_the_shop_accepts(
    secured: ShopProcess, stubs: Stubs
) -> None:
    """The forging helper is right: a well-formed token signed with the real key passes."""
    account = await sign_up(stubs)
    key, private = users_key(secured)
    token = compact(
        {"alg": "EdDSA", "typ": "JWT", "kid": key.kid}, claims_for(account.id), private.sign
    )
    reply = await stubs.orders.ListOrders(
        orders_pb2.ListOrdersRequest(user_id=account.id), metadata=bearer(token), timeout=10
    )
    assert list(reply.orders) == []
    signer = TokenSigner(key, issuer="shop.users", audience="shop", ttl=60)
    await stubs.orders.ListOrders(
        orders_pb2.ListOrdersRequest(user_id=account.id),
        metadata=bearer(signer.issue(account.id, roles=["customer"]).value),
        timeout=10,
    )


@pytest.mark.parametrize("kind", FORGERIES)
async def test_forged_tokens_are_unauthenticated(
    secured: ShopProcess, stubs: Stubs, kind: str
) -> None:
    account = await sign_up(stubs)
    token = forgeries(secured, account.id)[kind]
    # a customer method, an admin method, and a public method (a bad token fails even there)
    for call in (
        stubs.orders.ListOrders(
            orders_pb2.ListOrdersRequest(user_id=account.id), metadata=bearer(token), timeout=10
        ),
        stubs.catalog.CreateProduct(
            catalog_pb2.CreateProductRequest(), metadata=bearer(token), timeout=10
        ),
        stubs.catalog.ListProducts(
            catalog_pb2.ListProductsRequest(), metadata=bearer(token), timeout=10
        ),
    ):
        status = await rejected(call)
        assert status.code == grpc.StatusCode.UNAUTHENTICATED, (kind, status)
        assert token not in status.message


async def test_no_token(stubs: Stubs) -> None:
    account = await sign_up(stubs)
    status = await rejected(
        stubs.orders.ListOrders(orders_pb2.ListOrdersRequest(user_id=account.id), timeout=10)
    )
    assert status.code == grpc.StatusCode.UNAUTHENTICATED
    assert "Login" in status.message  # says how to get one
    # public methods stay open
    page = await stubs.catalog.ListProducts(catalog_pb2.ListProductsRequest(), timeout=10)
    assert page.products


async def test_a_user_token_is_not_a_service_token(stubs: Stubs) -> None:
    account = await sign_up(stubs)
    product = await stubs.product()
    status = await rejected(
        stubs.catalog.ReserveStock(
            catalog_pb2.ReserveStockRequest(
                order_id=secrets.token_hex(8),
                items=[common_pb2.LineItem(product_id=product.id, quantity=1)],
            ),
            metadata=(("x-service-authorization", f"Bearer {account.login.access_token}"),),
            timeout=10,
        )
    )
    assert status.code == grpc.StatusCode.UNAUTHENTICATED


async def test_disabled_and_deleted_users_lose_access_at_once(stubs: Stubs) -> None:
    disabled, deleted = await sign_up(stubs), await sign_up(stubs)
    for account in (disabled, deleted):  # warm the account cache first
        await stubs.orders.ListOrders(
            orders_pb2.ListOrdersRequest(user_id=account.id), metadata=account.md, timeout=10
        )
    await stubs.users.DisableUser(
        users_pb2.DisableUserRequest(user_id=disabled.id), metadata=await admin(stubs), timeout=10
    )
    await stubs.users.DeleteUser(
        users_pb2.DeleteUserRequest(user_id=deleted.id), metadata=deleted.md, timeout=10
    )
    for account in (disabled, deleted):
        status = await rejected(
            stubs.orders.ListOrders(
                orders_pb2.ListOrdersRequest(user_id=account.id), metadata=account.md, timeout=10
            )
        )
        assert status.code == grpc.StatusCode.UNAUTHENTICATED
        assert status.reason == "ACCOUNT_INACTIVE"
        refresh = await rejected(
            stubs.users.Refresh(
                users_pb2.RefreshRequest(refresh_token=account.login.refresh_token), timeout=10
            )
        )
        assert refresh.code == grpc.StatusCode.UNAUTHENTICATED
        login = await rejected(
            stubs.users.Login(
                users_pb2.LoginRequest(email=account.email, password=PASSWORD), timeout=10
            )
        )
        assert login.code == grpc.StatusCode.UNAUTHENTICATED


async def test_refresh_rotates_and_a_replayed_token_revokes_the_family(stubs: Stubs) -> None:
    account = await sign_up(stubs)
    first = account.login.refresh_token
    rotated = await stubs.users.Refresh(users_pb2.RefreshRequest(refresh_token=first), timeout=10)
    assert rotated.refresh_token != first and rotated.access_token
    assert rotated.expires_in > 0
    await stubs.orders.ListOrders(
        orders_pb2.ListOrdersRequest(user_id=account.id),
        metadata=bearer(rotated.access_token),
        timeout=10,
    )
    replay = await rejected(
        stubs.users.Refresh(users_pb2.RefreshRequest(refresh_token=first), timeout=10)
    )
    assert (replay.code, replay.reason) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "REFRESH_TOKEN_REUSED",
    )
    # the whole family is gone: the newest token stops working too
    newest = await rejected(
        stubs.users.Refresh(users_pb2.RefreshRequest(refresh_token=rotated.refresh_token))
    )
    assert newest.code == grpc.StatusCode.UNAUTHENTICATED


async def test_logout_revokes_the_refresh_token(stubs: Stubs) -> None:
    account = await sign_up(stubs)
    await stubs.users.Logout(
        users_pb2.LogoutRequest(refresh_token=account.login.refresh_token), timeout=10
    )
    status = await rejected(
        stubs.users.Refresh(
            users_pb2.RefreshRequest(refresh_token=account.login.refresh_token), timeout=10
        )
    )
    assert status.code == grpc.StatusCode.UNAUTHENTICATED


async def test_customers_reach_only_their_own_data(stubs: Stubs) -> None:
    alice, mallory = await sign_up(stubs), await sign_up(stubs)
    product = await stubs.product()
    paid = await stubs.gateway.ProcessOrder(
        order_request(alice.id, product.id), metadata=alice.md, timeout=30
    )
    order_id, payment_id = paid.order.id, paid.payment.id
    assert paid.payment.user_id == alice.id
    # alice sees her own
    mine = await stubs.gateway.GetOrderDetails(
        gateway_pb2.GetOrderDetailsRequest(order_id=order_id), metadata=alice.md, timeout=10
    )
    assert mine.order.id == order_id
    await stubs.payments.GetPayment(
        payments_pb2.GetPaymentRequest(payment_id=payment_id), metadata=alice.md, timeout=10
    )
    # mallory sees nothing of alice's: NOT_FOUND (no data) or PERMISSION_DENIED
    attempts = {
        "GetOrder": stubs.orders.GetOrder(
            orders_pb2.GetOrderRequest(order_id=order_id), metadata=mallory.md, timeout=10
        ),
        "GetOrderDetails": stubs.gateway.GetOrderDetails(
            gateway_pb2.GetOrderDetailsRequest(order_id=order_id), metadata=mallory.md, timeout=10
        ),
        "GetPayment": stubs.payments.GetPayment(
            payments_pb2.GetPaymentRequest(payment_id=payment_id), metadata=mallory.md, timeout=10
        ),
        "ListOrders": stubs.orders.ListOrders(
            orders_pb2.ListOrdersRequest(user_id=alice.id), metadata=mallory.md, timeout=10
        ),
        "SearchOrders": stubs.orders.SearchOrders(
            orders_pb2.SearchOrdersRequest(user_id=alice.id), metadata=mallory.md, timeout=10
        ),
        "SearchOrders(all)": stubs.orders.SearchOrders(
            orders_pb2.SearchOrdersRequest(), metadata=mallory.md, timeout=10
        ),
        "GetUser": stubs.users.GetUser(
            users_pb2.GetUserRequest(user_id=alice.id), metadata=mallory.md, timeout=10
        ),
        "DeleteUser": stubs.users.DeleteUser(
            users_pb2.DeleteUserRequest(user_id=alice.id), metadata=mallory.md, timeout=10
        ),
        "ListPayments": stubs.payments.ListPayments(
            payments_pb2.ListPaymentsRequest(order_id=order_id), metadata=mallory.md, timeout=10
        ),
    }
    for name, call in attempts.items():
        status = await rejected(call)
        assert status.code in (
            grpc.StatusCode.NOT_FOUND,
            grpc.StatusCode.PERMISSION_DENIED,
        ), (name, status)
        # nothing of alice's beyond the ids mallory sent herself: not her email, not the total
        # (the ids are removed first: a uuid may contain the total's digits by chance)
        told = status.message
        for sent in (order_id, payment_id, alice.id):
            told = told.replace(sent, "")
        assert alice.email not in told
        assert not re.search(rf"\b{paid.order.total.units}\b", told), told
    watch = stubs.orders.WatchOrder(
        orders_pb2.WatchOrderRequest(order_id=order_id), metadata=mallory.md, timeout=10
    )
    status = await rejected(_first(watch))
    assert status.code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED)
    # ordering for someone else is refused before anything happens
    status = await rejected(
        stubs.gateway.ProcessOrder(
            order_request(alice.id, product.id), metadata=mallory.md, timeout=30
        )
    )
    assert (status.code, status.reason) == (grpc.StatusCode.PERMISSION_DENIED, "NOT_OWNER")
    assert await stubs.stock(product.id) == product.stock - 1
    # an admin may read anyone's
    details = await stubs.gateway.GetOrderDetails(
        gateway_pb2.GetOrderDetailsRequest(order_id=order_id),
        metadata=await admin(stubs),
        timeout=10,
    )
    assert details.user.id == alice.id


async def _first(call: Any) -> Any:
    async for reply in call:
        return reply
    return None


async def test_customers_cannot_call_admin_or_service_methods(stubs: Stubs) -> None:
    account = await sign_up(stubs)
    product = await stubs.product()
    md = account.md
    item = common_pb2.LineItem(product_id=product.id, quantity=1)
    card = payments_pb2.PaymentMethod(card_number=APPROVE, exp_month=12, exp_year=2031, cvc="123")
    calls = {
        "CreateProduct": stubs.catalog.CreateProduct(
            catalog_pb2.CreateProductRequest(), metadata=md, timeout=10
        ),
        "ImportProducts": stubs.catalog.ImportProducts(
            iter([catalog_pb2.ImportProductsRequest()]), metadata=md, timeout=10
        ),
        "RefundPayment": stubs.payments.RefundPayment(
            payments_pb2.RefundPaymentRequest(payment_id=account.id), metadata=md, timeout=10
        ),
        "DisableUser": stubs.users.DisableUser(
            users_pb2.DisableUserRequest(user_id=account.id), metadata=md, timeout=10
        ),
        "ReserveStock": stubs.catalog.ReserveStock(
            catalog_pb2.ReserveStockRequest(order_id=account.id, items=[item]),
            metadata=md,
            timeout=10,
        ),
        "ReleaseStock": stubs.catalog.ReleaseStock(
            catalog_pb2.ReleaseStockRequest(order_id=account.id), metadata=md, timeout=10
        ),
        "ProcessPayment": stubs.payments.ProcessPayment(
            payments_pb2.ProcessPaymentRequest(order_id=account.id, method=card),
            metadata=md,
            timeout=10,
        ),
        "CreateOrder": stubs.orders.CreateOrder(
            orders_pb2.CreateOrderRequest(user_id=account.id, items=[item]),
            metadata=md,
            timeout=10,
        ),
        "CancelOrder": stubs.orders.CancelOrder(
            orders_pb2.CancelOrderRequest(order_id=account.id), metadata=md, timeout=10
        ),
        "ValidateUser": stubs.users.ValidateUser(
            users_pb2.ValidateUserRequest(user_id=account.id), metadata=md, timeout=10
        ),
    }
    for name, call in calls.items():
        status = await rejected(call)
        assert (status.code, status.reason) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "ROLE_REQUIRED",
        ), name
    assert await stubs.stock(product.id) == product.stock


async def test_password_guessing_is_throttled_per_email(stubs: Stubs) -> None:
    account = await sign_up(stubs)  # one successful login already counted
    codes = []
    for attempt in range(6):
        try:
            await stubs.users.Login(
                users_pb2.LoginRequest(email=account.email, password=f"guess-{attempt}"),
                timeout=10,
            )
        except grpc.aio.AioRpcError as err:
            codes.append(err.code())
            last = err
    assert codes[:4] == [grpc.StatusCode.UNAUTHENTICATED] * 4
    assert codes[-1] == grpc.StatusCode.RESOURCE_EXHAUSTED
    status = StatusError.from_rpc_error(last)
    retry = [d for d in status.details if isinstance(d, error_details_pb2.RetryInfo)]
    quota = [d for d in status.details if isinstance(d, error_details_pb2.QuotaFailure)]
    assert retry and retry[0].retry_delay.seconds > 0
    assert quota and account.email in quota[0].violations[0].subject
    # even the right password waits now; another account is unaffected
    status = await rejected(
        stubs.users.Login(users_pb2.LoginRequest(email=account.email, password=PASSWORD))
    )
    assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    other = await sign_up(stubs)
    assert other.login.access_token


async def test_jwks_is_published_over_grpc_and_http(secured: ShopProcess, stubs: Stubs) -> None:
    key, _ = users_key(secured)
    reply = await stubs.users.GetJwks(users_pb2.GetJwksRequest(), timeout=10)
    assert [k.kid for k in reply.keys] == [key.kid]
    assert (reply.keys[0].kty, reply.keys[0].crv, reply.keys[0].alg) == ("OKP", "Ed25519", "EdDSA")
    document = json.loads(
        await asyncio.to_thread(http_get, secured.http_port, "/.well-known/jwks.json")
    )
    assert document == {"keys": [key.public_jwk()]}
    assert "d" not in document["keys"][0]  # never the private part


def test_no_secrets_in_the_logs(secured: ShopProcess) -> None:
    """Runs after the tests above in this module: their tokens, passwords, cards never logged."""
    text = "\n".join(json.dumps(r) for r in secured.records)
    assert secured.records, "the shop logged nothing?"
    assert PASSWORD not in text and ADMIN_PASSWORD not in text
    assert APPROVE not in text
    assert '"cvc"' not in text
    assert "eyJ" not in text  # no JWT (base64 of '{"') anywhere


# -- audit ---------------------------------------------------------------------------------


async def test_a_tampered_audit_entry_is_detected(tmp_path: Path) -> None:
    data = tmp_path / "data"
    shop = ShopProcess(data).start()
    try:
        async with grpc.aio.insecure_channel(shop.grpc_address) as channel:
            stubs = Stubs.on(channel)
            account = await sign_up(stubs)
            product = await stubs.product()
            await stubs.gateway.ProcessOrder(
                order_request(account.id, product.id), metadata=account.md, timeout=30
            )
            await rejected(
                stubs.catalog.CreateProduct(
                    catalog_pb2.CreateProductRequest(), metadata=account.md, timeout=10
                )
            )
    finally:
        assert shop.stop() == 0

    def audit(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "shop.cli", "audit", "--data-dir", str(data), *args],
            capture_output=True,
            text=True,
            timeout=60,
        )

    intact = audit("--verify")
    assert intact.returncode == 0, intact.stderr
    entries = [json.loads(line) for line in intact.stdout.splitlines()]
    methods = {e["method"].rsplit("/", 1)[1] for e in entries}
    assert {"CreateUser", "Login", "ProcessOrder", "CreateOrder", "ProcessPayment"} <= methods
    denied = [e for e in entries if e["method"].endswith("/CreateProduct")]
    assert denied and denied[0]["code"] == "PERMISSION_DENIED"
    assert denied[0]["actor"] == account.id
    # who, what, which resource, outcome, request id, time
    order = next(e for e in entries if e["method"].endswith("/ProcessOrder"))
    assert order["actor"] == account.id and order["code"] == "OK"
    assert account.id in order["resource"] and order["request_id"] and order["at"]

    with sqlite3.connect(data / "orders.db") as db:
        db.execute("UPDATE audit_log SET actor = 'someone-else' WHERE seq = 1")
    tampered = audit("--verify")
    assert tampered.returncode == 1
    report = [json.loads(line) for line in tampered.stderr.splitlines() if line.startswith("{")]
    orders = next(r for r in report if r["service"] == "orders")
    assert not orders["ok"] and orders["violations"][0]["seq"] == 1


async def test_password_guessing_across_accounts_is_throttled_per_address(tmp_path: Path) -> None:
    shop = ShopProcess(tmp_path / "data", ["--login-limit-per-address", "3"]).start()
    try:
        async with grpc.aio.insecure_channel(shop.grpc_address) as channel:
            users = Stubs.on(channel).users
            codes = []
            for n in range(5):  # a different account each time: the per-email limit never trips
                try:
                    await users.Login(
                        users_pb2.LoginRequest(email=f"victim{n}@example.com", password="guess"),
                        timeout=10,
                    )
                except grpc.aio.AioRpcError as err:
                    codes.append(err.code())
    finally:
        shop.stop()
    assert codes[:3] == [grpc.StatusCode.UNAUTHENTICATED] * 3
    assert codes[3:] == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 2


# -- transport ------------------------------------------------------------------------------


def _credentials(tls: Path, cert: str | None) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=(tls / "ca.pem").read_bytes(),
        private_key=(tls / f"{cert}-key.pem").read_bytes() if cert else None,
        certificate_chain=(tls / f"{cert}.pem").read_bytes() if cert else None,
    )


async def _health_code(channel: grpc.aio.Channel) -> grpc.StatusCode:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    try:
        await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5, wait_for_ready=False
        )
    except grpc.aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """`shop certs` twice: the shop's CA, and an unrelated CA an attacker controls."""
    root = tmp_path_factory.mktemp("certs")
    for name in ("tls", "other"):
        made = subprocess.run(
            [sys.executable, "-m", "shop.cli", "certs", "--out", str(root / name)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert made.returncode == 0, made.stderr
    return root / "tls", root / "other"


async def test_mtls_shop_accepts_only_clients_with_certificates_from_its_ca(
    tmp_path: Path, certs: tuple[Path, Path]
) -> None:
    tls, other = certs
    shop = ShopProcess(tmp_path / "data", ["--tls-dir", str(tls), "--mtls"]).start()
    try:
        assert shop.wait_for(lambda r: r.get("event") == "ready")["tls"] == "mtls"
        address = shop.grpc_address
        attempts = {
            "plaintext": grpc.aio.insecure_channel(address),
            "no client certificate": grpc.aio.secure_channel(address, _credentials(tls, None)),
            "certificate from another CA": grpc.aio.secure_channel(
                address,
                grpc.ssl_channel_credentials(
                    root_certificates=(tls / "ca.pem").read_bytes(),
                    private_key=(other / "client-key.pem").read_bytes(),
                    certificate_chain=(other / "client.pem").read_bytes(),
                ),
            ),
            "server from another CA": grpc.aio.secure_channel(
                address, _credentials(other, "client")
            ),
        }
        for name, channel in attempts.items():
            async with channel:
                assert await _health_code(channel) == grpc.StatusCode.UNAVAILABLE, name

        async with grpc.aio.secure_channel(address, _credentials(tls, "client")) as channel:
            stubs = Stubs.on(channel)
            account = await sign_up(stubs)
            product = await stubs.product()
            # the whole saga: gateway → users, orders, catalog, payments over mTLS
            paid = await stubs.gateway.ProcessOrder(
                order_request(account.id, product.id), metadata=account.md, timeout=30
            )
            assert paid.order.status == orders_pb2.ORDER_STATUS_PAID
            # the operator certificate identifies a client, not a service
            status = await rejected(
                stubs.catalog.ReleaseStock(
                    catalog_pb2.ReleaseStockRequest(order_id=paid.order.id), timeout=10
                )
            )
            assert status.code == grpc.StatusCode.UNAUTHENTICATED
        # the service certificate is a service identity: service-only methods open up
        async with grpc.aio.secure_channel(address, _credentials(tls, "server")) as channel:
            reply = await Stubs.on(channel).orders.GetOrder(
                orders_pb2.GetOrderRequest(order_id=paid.order.id), timeout=10
            )
            assert reply.order.user_id == account.id
    finally:
        assert shop.stop() == 0


async def test_tls_shop_refuses_plaintext_and_uses_service_tokens_inside(
    tmp_path: Path, certs: tuple[Path, Path]
) -> None:
    tls, _ = certs
    shop = ShopProcess(tmp_path / "data", ["--tls-dir", str(tls)]).start()
    try:
        async with grpc.aio.insecure_channel(shop.grpc_address) as plain:
            assert await _health_code(plain) == grpc.StatusCode.UNAVAILABLE
        async with grpc.aio.secure_channel(shop.grpc_address, _credentials(tls, None)) as channel:
            assert await _health_code(channel) == grpc.StatusCode.OK
            stubs = Stubs.on(channel)
            account = await sign_up(stubs)
            product = await stubs.product()
            paid = await stubs.gateway.ProcessOrder(
                order_request(account.id, product.id), metadata=account.md, timeout=30
            )
            assert paid.order.status == orders_pb2.ORDER_STATUS_PAID
    finally:
        assert shop.stop() == 0


async def test_redis_login_limit_is_shared_by_two_processes(tmp_path: Path) -> None:
    from tests.conftest import REDIS_URL, require_redis

    await require_redis()
    args = ["--redis-url", REDIS_URL, "--login-limit-per-email", "4"]
    first = ShopProcess(tmp_path / "one", args).start()
    second = ShopProcess(tmp_path / "two", args).start()
    email = f"shared-{secrets.token_hex(6)}@example.com"
    codes = []
    try:
        for n in range(6):
            shop = (first, second)[n % 2]
            async with grpc.aio.insecure_channel(shop.grpc_address) as channel:
                try:
                    await Stubs.on(channel).users.Login(
                        users_pb2.LoginRequest(email=email, password="guess"), timeout=10
                    )
                except grpc.aio.AioRpcError as err:
                    codes.append(err.code())
    finally:
        first.stop()
        second.stop()
    # one budget of 4 for the email across both processes (each alone would allow 4)
    assert codes == [grpc.StatusCode.UNAUTHENTICATED] * 4 + [grpc.StatusCode.RESOURCE_EXHAUSTED] * 2


async def test_unreachable_redis_falls_back_to_local_limits(tmp_path: Path) -> None:
    with socket_closed_port() as port:
        shop = ShopProcess(
            tmp_path / "data", ["--redis-url", f"redis://127.0.0.1:{port}/0"]
        ).start()
        codes = []
        try:
            async with grpc.aio.insecure_channel(shop.grpc_address) as channel:
                for _ in range(7):
                    try:
                        await Stubs.on(channel).users.Login(
                            users_pb2.LoginRequest(email="nobody@example.com", password="guess"),
                            timeout=10,
                        )
                    except grpc.aio.AioRpcError as err:
                        codes.append(err.code())
            metrics = await asyncio.to_thread(http_get, shop.http_port, "/metrics")
        finally:
            shop.stop()
    assert codes == [grpc.StatusCode.UNAUTHENTICATED] * 5 + [grpc.StatusCode.RESOURCE_EXHAUSTED] * 2
    outages = [r for r in shop.records if r.get("event") == "ratelimit.redis_unavailable"]
    assert len(outages) == 1  # logged once, not per call
    fallback = [
        line for line in metrics.splitlines() if line.startswith("grpckit_ratelimit_fallback_total")
    ]
    assert fallback and float(fallback[0].rsplit(" ", 1)[1]) >= 7


@contextlib.contextmanager
def socket_closed_port() -> Iterator[int]:
    """A loopback port nothing listens on (bound, never listened, released on exit)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


async def test_per_user_budget_limits_customers_not_admins(stubs: Stubs) -> None:
    """A customer hammering one method runs out of budget (100/s, burst 200) and is told when
    to retry; an admin reconciling at the same pace is not limited."""
    customer, admin_md = await sign_up(stubs), await admin(stubs)
    gate = asyncio.Semaphore(16)

    async def burst(md: Metadata, n: int) -> list[grpc.StatusCode]:
        async def one() -> grpc.StatusCode:
            async with gate:
                try:
                    await stubs.orders.ListOrders(
                        orders_pb2.ListOrdersRequest(user_id=customer.id), metadata=md, timeout=10
                    )
                    return grpc.StatusCode.OK
                except grpc.aio.AioRpcError as err:
                    return err.code()

        return list(await asyncio.gather(*(one() for _ in range(n))))

    codes = await burst(customer.md, 600)
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes
    assert set(codes) == {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert set(await burst(admin_md, 600)) == {grpc.StatusCode.OK}
