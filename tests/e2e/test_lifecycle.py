"""Process lifecycle: graceful stop, restart persistence, crash in the middle of the saga."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import grpc
import pytest

from shop.api.catalog.v1 import catalog_pb2
from shop.api.orders.v1 import orders_pb2
from shop.api.payments.v1 import payments_pb2
from tests.e2e.clients import Stubs, connect, order_request
from tests.e2e.harness import ShopProcess

pytestmark = pytest.mark.e2e


async def _count_products(stubs: Stubs) -> int:
    page = await stubs.catalog.ListProducts(
        catalog_pb2.ListProductsRequest(page_size=100), timeout=5
    )
    return len(page.products)


async def test_data_survives_a_restart(tmp_path: Path) -> None:
    shop = ShopProcess(tmp_path / "data").start()
    try:
        async with connect(shop.grpc_address) as ch:
            stubs = Stubs.on(ch)
            user_id, product = await stubs.customer(), await stubs.product()
            paid = await stubs.gateway.ProcessOrder(order_request(user_id, product.id), timeout=15)
            products = await _count_products(stubs)
    finally:
        assert shop.stop() == 0
    shop = ShopProcess(tmp_path / "data").start()
    try:
        async with connect(shop.grpc_address) as ch:
            stubs = Stubs.on(ch)
            order = await stubs.orders.GetOrder(
                orders_pb2.GetOrderRequest(order_id=paid.order.id), timeout=5
            )
            assert order.order.status == orders_pb2.ORDER_STATUS_PAID
            assert await _count_products(stubs) == products  # demo data not seeded twice
            assert await stubs.stock(product.id) == product.stock - 1
    finally:
        assert shop.stop() == 0


async def test_sigterm_lets_in_flight_calls_finish(tmp_path: Path) -> None:
    shop = ShopProcess(tmp_path / "data", ["--payment-latency-ms", "1500"]).start()
    async with connect(shop.grpc_address) as ch:
        stubs = Stubs.on(ch)
        user_id, product = await stubs.customer(), await stubs.product()
        call = asyncio.ensure_future(
            stubs.gateway.ProcessOrder(order_request(user_id, product.id), timeout=20)
        )
        # The saga has reached the payment step once ReserveStock has finished.
        await asyncio.to_thread(
            shop.wait_for, lambda r: r.get("event") == "rpc" and r.get("method") == "ReserveStock"
        )
        shop.signal(signal.SIGTERM)
        reply = await call
        assert reply.order.status == orders_pb2.ORDER_STATUS_PAID
    assert await asyncio.to_thread(shop.wait, 30) == 0


@pytest.mark.parametrize(
    ("step", "final"),
    [
        ("create_order", orders_pb2.ORDER_STATUS_CANCELLED),
        ("reserve_stock", orders_pb2.ORDER_STATUS_CANCELLED),
        ("process_payment", orders_pb2.ORDER_STATUS_PAID),
    ],
)
async def test_crash_mid_saga_is_recovered_on_restart(
    tmp_path: Path, step: str, final: int
) -> None:
    shop = ShopProcess(tmp_path / "data", ["--fault-kill-after", step]).start()
    async with connect(shop.grpc_address) as ch:
        stubs = Stubs.on(ch)
        user_id, product = await stubs.customer(), await stubs.product()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stubs.gateway.ProcessOrder(order_request(user_id, product.id), timeout=15)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert await asyncio.to_thread(shop.wait, 30) == -signal.SIGKILL

    shop = ShopProcess(tmp_path / "data").start()
    try:
        async with connect(shop.grpc_address) as ch:
            stubs = Stubs.on(ch)
            orders: list[orders_pb2.Order] = []
            for _ in range(100):  # recovery runs at start, in the background: poll, bounded
                listed = await stubs.orders.ListOrders(
                    orders_pb2.ListOrdersRequest(user_id=user_id), timeout=5
                )
                orders = list(listed.orders)
                if orders and all(o.status != orders_pb2.ORDER_STATUS_PENDING for o in orders):
                    break
                await asyncio.sleep(0.1)
            assert [o.status for o in orders] == [final]
            held = product.stock - (1 if final == orders_pb2.ORDER_STATUS_PAID else 0)
            assert await stubs.stock(product.id) == held
            payments = await stubs.payments.ListPayments(
                payments_pb2.ListPaymentsRequest(order_id=orders[0].id), timeout=5
            )
            captured = [
                p for p in payments.payments if p.status == payments_pb2.PAYMENT_STATUS_CAPTURED
            ]
            assert len(captured) == (1 if final == orders_pb2.ORDER_STATUS_PAID else 0)
    finally:
        assert shop.stop() == 0


async def test_runs_on_postgresql(tmp_path: Path, postgres_url: str) -> None:
    shop = ShopProcess(tmp_path / "data", ["--database-url", postgres_url]).start()
    try:
        async with connect(shop.grpc_address) as ch:
            stubs = Stubs.on(ch)
            user_id, product = await stubs.customer(), await stubs.product()
            reply = await stubs.gateway.ProcessOrder(order_request(user_id, product.id), timeout=15)
            assert reply.order.status == orders_pb2.ORDER_STATUS_PAID
    finally:
        assert shop.stop() == 0
    shop = ShopProcess(tmp_path / "data", ["--database-url", postgres_url]).start()
    try:
        async with connect(shop.grpc_address) as ch:
            stubs = Stubs.on(ch)
            order = await stubs.orders.GetOrder(
                orders_pb2.GetOrderRequest(order_id=reply.order.id), timeout=5
            )
            assert order.order.status == orders_pb2.ORDER_STATUS_PAID
    finally:
        assert shop.stop() == 0


async def test_sigterm_under_load_loses_no_accepted_call(tmp_path: Path) -> None:
    """Steady ProcessOrder load, then SIGTERM: every call the server accepted is answered.

    A call either succeeds, or fails before the server accepted it: UNAVAILABLE (refused while
    draining, or the port closed) or CANCELLED (grpc-core cancels streams still queued, never
    handed to the application, when the server stops). After a restart every order is PAID and
    there are exactly as many as the client saw succeed: nothing accepted was dropped or undone.
    """
    shop = ShopProcess(tmp_path / "data").start()
    outcomes: list[str] = []
    async with connect(shop.grpc_address) as ch:
        stubs = Stubs.on(ch)
        user_id, product = await stubs.customer(), await stubs.product()
        started = asyncio.Event()

        async def worker() -> None:
            while True:
                try:
                    await stubs.gateway.ProcessOrder(order_request(user_id, product.id), timeout=20)
                    outcomes.append("OK")
                    started.set()
                except grpc.aio.AioRpcError as err:
                    outcomes.append(err.code().name)
                    return

        workers = [asyncio.create_task(worker()) for _ in range(6)]
        await started.wait()
        shop.signal(signal.SIGTERM)
        await asyncio.wait_for(asyncio.gather(*workers), 60)
    assert await asyncio.to_thread(shop.wait, 30) == 0
    assert set(outcomes) <= {"OK", "UNAVAILABLE", "CANCELLED"}, outcomes
    succeeded = outcomes.count("OK")

    shop = ShopProcess(tmp_path / "data").start()
    try:
        async with connect(shop.grpc_address) as ch:
            listed = await Stubs.on(ch).orders.ListOrders(
                orders_pb2.ListOrdersRequest(user_id=user_id, page_size=100), timeout=5
            )
        statuses = [o.status for o in listed.orders]
        assert statuses == [orders_pb2.ORDER_STATUS_PAID] * succeeded
    finally:
        assert shop.stop() == 0
