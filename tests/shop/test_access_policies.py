"""Every shop method declares its access rule once, in the protos, as issue 4 lists them."""

from __future__ import annotations

import pytest

from grpckit.auth import declared_policy, missing_policies
from shop.system import FULL_NAMES, _mount_fn

PUBLIC = [
    "users.v1.UserService/CreateUser",
    "users.v1.UserService/Login",
    "users.v1.UserService/Refresh",
    "catalog.v1.CatalogService/GetProduct",
    "catalog.v1.CatalogService/ListProducts",
    "catalog.v1.CatalogService/SearchProducts",
]
ADMIN_ONLY = [
    "catalog.v1.CatalogService/CreateProduct",
    "catalog.v1.CatalogService/ImportProducts",
    "users.v1.UserService/DisableUser",
]
SERVICE_ONLY = [
    "catalog.v1.CatalogService/ReserveStock",
    "catalog.v1.CatalogService/ReleaseStock",
    "payments.v1.PaymentService/ProcessPayment",
    "orders.v1.OrderService/CreateOrder",
    "orders.v1.OrderService/CancelOrder",
    "orders.v1.OrderService/MarkOrderPaid",
]
OWNER_SCOPED = [
    "users.v1.UserService/GetUser",
    "gateway.v1.GatewayService/ProcessOrder",
    "orders.v1.OrderService/ListOrders",
    "orders.v1.OrderService/SearchOrders",
]


@pytest.fixture(autouse=True, scope="module")
def _load_services() -> None:
    for service in FULL_NAMES:
        _mount_fn(service)  # imports the generated modules, registering their descriptors


def test_every_shop_method_declares_a_policy() -> None:
    assert missing_policies(FULL_NAMES.values()) == []


@pytest.mark.parametrize("method", PUBLIC)
def test_public_methods(method: str) -> None:
    policy = declared_policy(f"/shop.{method}")
    assert policy is not None and policy.public


@pytest.mark.parametrize("method", ADMIN_ONLY)
def test_admin_only_methods(method: str) -> None:
    policy = declared_policy(f"/shop.{method}")
    assert policy is not None
    assert not policy.public and not policy.authenticated and policy.roles == {"admin"}


@pytest.mark.parametrize("method", SERVICE_ONLY)
def test_service_only_methods(method: str) -> None:
    policy = declared_policy(f"/shop.{method}")
    assert policy is not None
    assert not policy.public and not policy.authenticated and policy.roles == {"service"}


def test_refunds_are_for_admins_and_the_saga_only() -> None:
    policy = declared_policy("/shop.payments.v1.PaymentService/RefundPayment")
    assert policy is not None and policy.roles == {"admin", "service"}


@pytest.mark.parametrize("method", OWNER_SCOPED)
def test_customers_act_only_for_themselves(method: str) -> None:
    policy = declared_policy(f"/shop.{method}")
    assert policy is not None and policy.authenticated and policy.owner_field == "user_id"
    assert policy.owner_exempt_roles == {"admin", "service"}
