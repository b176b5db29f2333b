"""`shop serve`: every service its own process, peers by flags and environment, over sockets."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from grpckit.client import MethodPolicy, RetryPolicy, service_config
from grpckit.client import connect as grpckit_connect
from shop.api.orders.v1 import orders_pb2
from shop.api.payments.v1 import payments_pb2
from tests.e2e.clients import DECLINE, Stubs, act_as, connect, order_request
from tests.e2e.harness import ShopProcess

pytestmark = pytest.mark.e2e


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[dict[str, ShopProcess]]:
    """catalog, users, payments, orders and gateway, each `shop serve` on a free port."""
    started: dict[str, ShopProcess] = {}

    def serve(service: str, peers: dict[str, str], env: dict[str, str] | None = None) -> str:
        flags = [arg for peer, addr in peers.items() for arg in (f"--{peer}-addr", addr)]
        process = ShopProcess(
            tmp_path / "data", flags, env=env or {}, command=("serve", service, "--port", "0")
        )
        started[service] = process.start()
        return process.grpc_address

    try:
        # every service verifies tokens with the users service's public keys
        users = serve("users", {})
        catalog = serve("catalog", {"users": users})
        payments = serve("payments", {"users": users})
        orders = serve("orders", {"catalog": catalog, "users": users})
        # The gateway takes one peer from the environment, to cover SHOP_<PEER>_ADDR.
        serve(
            "gateway",
            {"users": users, "catalog": catalog, "payments": payments},
            env={"SHOP_ORDERS_ADDR": orders},
        )
        yield started
    finally:
        for process in reversed(list(started.values())):
            process.stop()


async def test_order_saga_across_processes(cluster: dict[str, ShopProcess]) -> None:
    users_address = cluster["users"].grpc_address
    channels = {name: connect(p.grpc_address, users=users_address) for name, p in cluster.items()}
    try:
        users, catalog = Stubs.on(channels["users"]), Stubs.on(channels["catalog"])
        gateway, orders = Stubs.on(channels["gateway"]), Stubs.on(channels["orders"])
        user_id, product = await users.customer(), await catalog.product()
        paid = await gateway.gateway.ProcessOrder(order_request(user_id, product.id), timeout=20)
        assert paid.order.status == orders_pb2.ORDER_STATUS_PAID
        assert await catalog.stock(product.id) == product.stock - 1

        with pytest.raises(grpc.aio.AioRpcError) as info:
            await gateway.gateway.ProcessOrder(
                order_request(user_id, product.id, card=DECLINE), timeout=20
            )
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        listed = await orders.orders.ListOrders(
            orders_pb2.ListOrdersRequest(user_id=user_id), timeout=5
        )
        assert sorted(o.status for o in listed.orders) == [
            orders_pb2.ORDER_STATUS_PAID,
            orders_pb2.ORDER_STATUS_CANCELLED,
        ]
        assert await catalog.stock(product.id) == product.stock - 1
        payments = Stubs.on(channels["payments"]).payments
        for order in listed.orders:
            found = await payments.ListPayments(
                payments_pb2.ListPaymentsRequest(order_id=order.id), timeout=5
            )
            assert len(found.payments) == 1

        # Each process serves health for its own service only.
        health = health_pb2_grpc.HealthStub(channels["orders"])
        reply = await health.Check(
            health_pb2.HealthCheckRequest(service="shop.orders.v1.OrderService"), timeout=5
        )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await health.Check(
                health_pb2.HealthCheckRequest(service="shop.users.v1.UserService"), timeout=5
            )
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        for channel in channels.values():
            await channel.close()


async def test_workers_share_one_port_and_survive_one_dying(tmp_path: Path) -> None:
    """`shop serve users --workers 2`: two processes on one port (SO_REUSEPORT); when one is
    killed the other keeps serving and the supervisor brings the first back."""
    shop = ShopProcess(
        tmp_path / "data", command=("serve", "users", "--port", "0", "--workers", "2")
    ).start()
    try:
        ready = shop.wait_for(lambda r: r.get("event") == "ready")
        workers = ready["processes"]
        assert len(workers) == 2 and len({w["pid"] for w in workers}) == 2
        assert {w["address"].rpartition(":")[2] for w in workers} == {
            shop.grpc_address.rpartition(":")[2]
        }
        async with connect(shop.grpc_address) as channel:
            await Stubs.on(channel).customer()
        os.kill(workers[0]["pid"], signal.SIGKILL)
        # new connections go to the living worker; one made in the instant of the kill may be
        # reset by the dying socket, which a client's waitForReady + retry policy absorb
        retrying = service_config(
            default=MethodPolicy(
                wait_for_ready=True,
                retry=RetryPolicy(max_attempts=4, retryable_codes=(grpc.StatusCode.UNAVAILABLE,)),
            )
        )
        for _ in range(5):
            channel = grpckit_connect(
                shop.grpc_address, config=retrying, interceptors=act_as(shop.grpc_address)
            )
            async with channel:
                await Stubs.on(channel).customer()
        restarted = await asyncio.to_thread(
            shop.wait_for, lambda r: r.get("event") == "process.restarted", 30
        )
        assert restarted["process"] == "users#0"
    finally:
        assert shop.stop() == 0
