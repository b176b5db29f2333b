"""Issue 5, fault test 3: restart Redis and NATS under load.

The test runs its own ``redis-server`` and ``nats-server -js`` on free ports (it restarts only
processes it started), and a distributed shop on PostgreSQL using them. While customers keep
ordering, NATS is stopped and started again, then Redis. Orders keep succeeding (events wait in
the outboxes, rate limits fall back to per-process budgets), and afterwards every paid order
reaches analytics exactly once.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import duration_pb2
from google.type import money_pb2

from shop.api.analytics.v1 import analytics_pb2
from shop.api.catalog.v1 import catalog_pb2
from shop.api.orders.v1 import orders_pb2
from tests.conftest import unavailable
from tests.e2e.clients import Stubs, all_orders, connect, order_request
from tests.e2e.harness import ShopProcess

pytestmark = pytest.mark.e2e


def _binary(name: str) -> str:
    found = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.path.exists(p)), None
    )
    if found is None:
        unavailable(f"{name} not found: apt-get install redis-server nats-server to run this test")
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """A server process this test owns: started, stopped (by its PID) and started again."""

    def __init__(self, argv: list[str], port: int) -> None:
        self.argv, self.port = argv, port
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:  # poll the port: the server has no readiness event
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.argv[0]} exited with {self.proc.returncode}")
            time.sleep(0.05)
        raise RuntimeError(f"{self.argv[0]} did not listen on {self.port}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture
def infra(tmp_path: Path) -> Iterator[tuple[Server, Server]]:
    redis_port, nats_port = _free_port(), _free_port()
    redis = Server(
        [_binary("redis-server"), "--port", str(redis_port), "--bind", "127.0.0.1",
         "--save", "", "--appendonly", "no"],
        redis_port,
    )  # fmt: skip
    nats = Server(
        [_binary("nats-server"), "-a", "127.0.0.1", "-p", str(nats_port), "-js",
         "-sd", str(tmp_path / "nats")],
        nats_port,
    )  # fmt: skip
    redis.start()
    nats.start()
    try:
        yield redis, nats
    finally:
        redis.stop()
        nats.stop()


async def test_restarting_redis_and_nats_under_load_loses_no_event(
    tmp_path: Path, postgres_url: str, infra: tuple[Server, Server]
) -> None:
    redis, nats = infra
    shop = ShopProcess(
        tmp_path / "data",
        [
            "--database-url", postgres_url,
            "--redis-url", f"redis://127.0.0.1:{redis.port}/0",
            "--nats-url", f"nats://127.0.0.1:{nats.port}",
        ],
        command=("up", "--distributed", "--grpc-port", "0", "--http-port", "0"),
    ).start()  # fmt: skip
    try:
        processes = shop.wait_for(lambda r: r.get("event") == "ready")["processes"]
        address = {p["service"]: p["address"] for p in processes}
        users = address["users"]
        async with (
            connect(shop.grpc_address, users=users) as gateway_ch,
            connect(users) as users_ch,
            connect(address["catalog"], users=users) as catalog_ch,
            connect(address["orders"], users=users) as orders_ch,
            connect(address["analytics"], users=users) as analytics_ch,
        ):
            customers = [await Stubs.on(users_ch).customer() for _ in range(3)]
            created = await Stubs.on(catalog_ch).catalog.CreateProduct(
                catalog_pb2.CreateProductRequest(
                    sku=f"infra-{os.getpid()}",
                    name="Restart drill",
                    price=money_pb2.Money(currency_code="USD", units=2),
                    stock=100_000,
                ),
                timeout=10,
            )
            product_id = created.product.id
            gateway = Stubs.on(gateway_ch).gateway
            outcomes: list[grpc.StatusCode] = []
            stop = asyncio.Event()

            async def shopper(user_id: str) -> None:
                while not stop.is_set():
                    try:
                        await gateway.ProcessOrder(order_request(user_id, product_id), timeout=15)
                        outcomes.append(grpc.StatusCode.OK)
                    except grpc.aio.AioRpcError as err:
                        outcomes.append(err.code())

            load = [asyncio.create_task(shopper(c)) for c in customers]
            await asyncio.sleep(3)  # the drill's timeline: load, then each restart
            await asyncio.to_thread(nats.stop)
            await asyncio.sleep(2)
            await asyncio.to_thread(nats.start)
            await asyncio.sleep(2)
            await asyncio.to_thread(redis.stop)
            # logins while Redis is down: rate limiting falls back to local budgets
            await Stubs.on(users_ch).customer()
            await asyncio.sleep(1)
            await asyncio.to_thread(redis.start)
            await asyncio.sleep(2)
            stop.set()
            await asyncio.gather(*load)

            codes = Counter(outcomes)
            assert set(codes) == {grpc.StatusCode.OK}, codes  # the bus is behind the outbox
            paid = 0
            for user_id in customers:
                listed = await all_orders(Stubs.on(orders_ch), user_id)
                paid += sum(o.status == orders_pb2.ORDER_STATUS_PAID for o in listed)
            assert paid == codes[grpc.StatusCode.OK]

            window = duration_pb2.Duration(seconds=60)
            analytics = Stubs.on(analytics_ch).analytics
            deadline = time.monotonic() + 30
            while True:  # events replayed by the outboxes arrive after NATS is back
                reply = await analytics.GetMetrics(
                    analytics_pb2.GetMetricsRequest(window=window), timeout=10
                )
                seen = reply.snapshot.orders_paid
                if seen >= paid or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.5)
            assert seen == paid, (seen, paid)  # none lost, none counted twice
        assert any(r.get("event") == "ratelimit.redis_unavailable" for r in shop.records)
    finally:
        assert shop.stop() == 0
