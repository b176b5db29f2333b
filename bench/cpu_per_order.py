"""Server CPU per ProcessOrder: the shop process's CPU time over N orders, read with psutil.

Throughput on this 2-core machine is bound by the CPU one order costs on the shop's event loop,
so this is the number to move. Extra arguments go to `shop up` (e.g. a --database-url).
Orders are authenticated (issue 4): ``--customers`` customers log in, each order carries one's
access token, so the figure includes token verification on every internal call and the
account check.

    .venv/bin/python bench/cpu_per_order.py [--orders 100] [--concurrency 4] [--customers 4] [-- shop up flags]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import grpc
import psutil
from shop_login import Customer, bench_products, customers

from shop.api.gateway.v1 import gateway_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.e2e.clients import order_request
from tests.e2e.harness import ShopProcess


async def load(
    address: str, orders: int, concurrency: int, buyers: list[Customer], product_id: str
) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        gateway = gateway_pb2_grpc.GatewayServiceStub(channel)

        async def worker(index: int) -> None:
            for i in range(orders // concurrency):
                buyer = buyers[(index + i) % len(buyers)]
                request = order_request(buyer.user_id, product_id)
                await gateway.ProcessOrder(request, timeout=60, metadata=await buyer.metadata())

        await asyncio.gather(*(worker(i) for i in range(concurrency)))


async def measure(
    address: str, process: psutil.Process, orders: int, concurrency: int, buyers: int
) -> tuple[float, float, float]:
    """Set up, warm up, then ``(user CPU s, system CPU s, wall s)`` of the shop over ``orders``."""
    customers_ = await customers(address, buyers)
    (product,) = await bench_products(address, 1, "CPU")
    await load(address, 20, 1, customers_, product.id)  # warm up
    before, start = process.cpu_times(), time.perf_counter()
    await load(address, orders, concurrency, customers_, product.id)
    after, wall = process.cpu_times(), time.perf_counter() - start
    return after.user - before.user, after.system - before.system, wall


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--orders", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--customers", type=int, default=4)
    parser.add_argument("shop_args", nargs="*")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        shop = ShopProcess(Path(tmp) / "data", args.shop_args, follow=False).start()
        try:
            process = psutil.Process(shop.proc.pid)  # type: ignore[union-attr]
            user_s, system_s, wall = asyncio.run(
                measure(shop.grpc_address, process, args.orders, args.concurrency, args.customers)
            )
        finally:
            shop.stop()
    user = user_s / args.orders * 1000
    system = system_s / args.orders * 1000
    print(
        f"{args.orders} orders at concurrency {args.concurrency} in {wall:.1f} s "
        f"({args.orders / wall:.1f}/s); shop CPU per order {user + system:.1f} ms "
        f"(user {user:.1f}, system {system:.1f})"
    )


if __name__ == "__main__":
    main()
