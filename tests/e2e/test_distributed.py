"""`shop up --distributed`: every service its own supervised process, replicas on PostgreSQL.

Fault test 1 of issue 5: SIGKILL one of two orders replicas, then one of two payments replicas,
then the (only) gateway, during steady ProcessOrder load. Every call must end in success or a clean error, the
supervisor must bring the killed processes back, and reconciliation must find nothing lost and
nothing charged twice.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.type import money_pb2

from grpckit.client import MethodPolicy, RetryPolicy, service_config
from grpckit.client import connect as grpckit_connect
from shop.api.catalog.v1 import catalog_pb2
from shop.api.orders.v1 import orders_pb2
from shop.api.payments.v1 import payments_pb2
from tests.e2e.clients import APPROVE, Stubs, act_as, all_orders, connect, order_request
from tests.e2e.harness import ShopProcess

pytestmark = pytest.mark.e2e

#: Codes a caller may see while a replica dies: retryable or explicit, never INTERNAL/UNKNOWN.
CLEAN = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}


@pytest.fixture
def distributed(tmp_path: Path, postgres_url: str) -> Iterator[ShopProcess]:
    shop = ShopProcess(
        tmp_path / "data",
        [
            "--database-url",
            postgres_url,
            "--replicas",
            "orders=2,payments=2",
            "--call-timeout",
            "5",
        ],
        command=("up", "--distributed", "--grpc-port", "0", "--http-port", "0"),
    ).start()
    try:
        yield shop
    finally:
        assert shop.stop() == 0


async def big_stock(stubs: Stubs, name: str) -> catalog_pb2.Product:
    """A product created as the admin, with enough stock that no order fails for want of it."""
    created = await stubs.catalog.CreateProduct(
        catalog_pb2.CreateProductRequest(
            sku=f"{name}-{os.getpid()}",
            name=name,
            price=money_pb2.Money(currency_code="USD", units=3),
            stock=100_000,
        ),
        timeout=10,
    )
    return created.product


def processes(shop: ShopProcess) -> list[dict[str, Any]]:
    ready = shop.wait_for(lambda r: r.get("event") == "ready")
    return list(ready["processes"])


def address_of(shop: ShopProcess, service: str) -> str:
    return next(p["address"] for p in processes(shop) if p["service"] == service)


async def test_ready_line_lists_every_process(distributed: ShopProcess) -> None:
    listed = processes(distributed)
    assert Counter(p["service"] for p in listed) == {
        "users": 1, "catalog": 1, "payments": 2, "analytics": 1, "orders": 2, "gateway": 1,
    }  # fmt: skip
    assert all(p["pid"] and p["address"] for p in listed)
    assert len({p["pid"] for p in listed}) == len(listed)
    gateway = next(p for p in listed if p["service"] == "gateway")
    assert distributed.grpc_address.endswith(gateway["address"].rpartition(":")[2])
    # the terminal commands work against it, pointed at the right processes
    where = {p["service"]: p["address"] for p in listed}

    def shop_cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "shop.cli", *args], capture_output=True, text=True, timeout=60
        )

    ordered = await asyncio.to_thread(
        shop_cli, "order", "--addr", distributed.grpc_address,
        "--users-addr", where["users"], "--catalog-addr", where["catalog"],
    )  # fmt: skip
    assert ordered.returncode == 0 and "ORDER_STATUS_PAID" in ordered.stdout, ordered.stderr
    watched = await asyncio.to_thread(
        shop_cli, "watch", "--addr", where["analytics"], "--users-addr", where["users"],
        "--count", "1", "--interval", "0.2", "--json",
    )  # fmt: skip
    assert watched.returncode == 0, watched.stderr


async def test_killing_replicas_under_load_loses_nothing(
    distributed: ShopProcess, postgres_url: str
) -> None:
    users_addr = address_of(distributed, "users")
    catalog_addr = address_of(distributed, "catalog")
    async with (
        connect(distributed.grpc_address, users=users_addr) as gateway_ch,
        connect(users_addr) as users_ch,
        connect(catalog_addr, users=users_addr) as catalog_ch,
    ):
        gateway = Stubs.on(gateway_ch).gateway
        customers = [await Stubs.on(users_ch).customer() for _ in range(4)]
        product = await big_stock(Stubs.on(catalog_ch), "load")
        outcomes: list[tuple[str, grpc.StatusCode]] = []
        stop = asyncio.Event()

        async def shopper(user_id: str) -> None:
            while not stop.is_set():
                try:
                    await gateway.ProcessOrder(order_request(user_id, product.id), timeout=15)
                    outcomes.append((user_id, grpc.StatusCode.OK))
                except grpc.aio.AioRpcError as err:
                    outcomes.append((user_id, err.code()))

        load = [asyncio.create_task(shopper(c)) for c in customers]
        await asyncio.sleep(4)  # steady load first (this is the test's timeline, not a sync)
        victims = {}
        for service in ("orders", "payments", "gateway"):  # the gateway: sagas recovered
            victim = next(p for p in processes(distributed) if p["service"] == service)
            os.kill(victim["pid"], signal.SIGKILL)
            victims[service] = victim
            await asyncio.to_thread(
                distributed.wait_for,
                lambda r, v=victim: (
                    r.get("event") == "process.restarted"
                    and r.get("process") == f"{v['service']}#{v['replica']}"
                ),
                30,
            )
            await asyncio.sleep(4)
        stop.set()
        await asyncio.gather(*load)

        codes = Counter(code for _, code in outcomes)
        assert codes[grpc.StatusCode.OK] > 10, codes
        assert set(codes) <= CLEAN | {grpc.StatusCode.OK}, codes

        # nothing lost, nothing charged twice: every customer's orders reconcile
        paid_by_user = Counter(u for u, c in outcomes if c == grpc.StatusCode.OK)
        await _reconcile(distributed, users_addr, customers, paid_by_user)
    # and the operator's view: every invariant across the services' databases holds
    checked = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "shop.cli", "verify", "--database-url", postgres_url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0, (checked.stdout, checked.stderr)


async def _reconcile(
    shop: ShopProcess, users_addr: str, customers: list[str], paid_by_user: Counter[str]
) -> None:
    orders_addr = address_of(shop, "orders")
    payments_addr = address_of(shop, "payments")
    async with (
        connect(orders_addr, users=users_addr) as orders_ch,
        connect(payments_addr, users=users_addr) as payments_ch,
    ):
        payments = Stubs.on(payments_ch).payments
        deadline = time.monotonic() + 30
        while True:  # sagas interrupted by a kill are finished or undone by the gateway
            orders = {u: await all_orders(Stubs.on(orders_ch), u) for u in customers}
            pending = [
                o for listed in orders.values() for o in listed
                if o.status == orders_pb2.ORDER_STATUS_PENDING
            ]  # fmt: skip
            if not pending or time.monotonic() > deadline:
                break
            await asyncio.sleep(1)
        assert pending == []
        by_order = await _payments_by_order(payments)  # read after every saga settled
        for user_id, listed in orders.items():
            statuses = Counter(o.status for o in listed)
            # a success the caller saw is a PAID order; a PAID order may also come from a call
            # whose reply was lost (a clean error) - never the other way round
            assert statuses[orders_pb2.ORDER_STATUS_PAID] >= paid_by_user[user_id]
            for order in listed:
                captured = [
                    p
                    for p in by_order.get(order.id, [])
                    if p.status == payments_pb2.PAYMENT_STATUS_CAPTURED
                ]
                if order.status == orders_pb2.ORDER_STATUS_PAID:
                    assert len(captured) == 1, (order.id, by_order.get(order.id))
                    assert captured[0].amount == order.total
                else:
                    assert captured == [], (order.id, by_order.get(order.id))


async def _payments_by_order(payments: Any) -> dict[str, list[Any]]:
    """Every payment (all pages, as the admin), grouped by order."""
    grouped: dict[str, list[Any]] = {}
    token = ""
    while True:
        page = await payments.ListPayments(
            payments_pb2.ListPaymentsRequest(page_size=1000, page_token=token), timeout=10
        )
        for payment in page.payments:
            grouped.setdefault(payment.order_id, []).append(payment)
        token = page.next_page_token
        if not token:
            return grouped


async def test_rolling_restart_under_load_fails_no_call(tmp_path: Path, postgres_url: str) -> None:
    """SIGHUP: the supervisor replaces every process one by one while customers order. Graceful
    drain, client-side health checks, waitForReady and retries: not one call fails."""
    shop = ShopProcess(
        tmp_path / "data",
        ["--database-url", postgres_url, "--replicas", "orders=2,payments=2",
         "--call-timeout", "10"],
        command=("up", "--distributed", "--grpc-port", "0", "--http-port", "0"),
    ).start()  # fmt: skip
    try:
        users_addr = address_of(shop, "users")
        # how a client should call a gateway that may restart: wait for a SERVING backend,
        # retry UNAVAILABLE (a draining server refuses new calls with it)
        config = service_config(
            default=MethodPolicy(
                wait_for_ready=True,
                retry=RetryPolicy(
                    max_attempts=5,
                    initial_backoff=0.2,
                    max_backoff=2.0,
                    retryable_codes=(grpc.StatusCode.UNAVAILABLE,),
                ),
            ),
            load_balancing="round_robin",
            health_check_service="",
        )
        gateway_ch = grpckit_connect(
            shop.grpc_address, config=config, interceptors=act_as(users_addr), default_timeout=None
        )
        async with gateway_ch, connect(users_addr) as users_ch:
            customers = [await Stubs.on(users_ch).customer() for _ in range(3)]
            async with connect(address_of(shop, "catalog"), users=users_addr) as catalog_ch:
                product = await big_stock(Stubs.on(catalog_ch), "rolling")
            gateway = Stubs.on(gateway_ch).gateway
            outcomes: list[tuple[grpc.StatusCode, str]] = []
            stop = asyncio.Event()

            async def shopper(user_id: str) -> None:
                while not stop.is_set():
                    try:
                        await gateway.ProcessOrder(
                            order_request(user_id, product.id, card=APPROVE), timeout=30
                        )
                        outcomes.append((grpc.StatusCode.OK, ""))
                    except grpc.aio.AioRpcError as err:
                        outcomes.append((err.code(), str(err.details())))

            load = [asyncio.create_task(shopper(c)) for c in customers]
            assert shop.proc is not None
            shop.signal(signal.SIGHUP)
            await asyncio.to_thread(
                shop.wait_for, lambda r: r.get("event") == "rolling_restart.finished", 240
            )
            stop.set()
            await asyncio.gather(*load)
        replaced = [r for r in shop.records if r.get("event") == "rolling_restart.replaced"]
        assert len(replaced) == 8
        failed = [o for o in outcomes if o[0] != grpc.StatusCode.OK]
        assert not failed, failed
        assert len(outcomes) > 20
    finally:
        assert shop.stop() == 0
