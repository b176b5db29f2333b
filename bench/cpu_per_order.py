"""Server CPU per ProcessOrder: the shop process's CPU time over N orders, read with psutil.

Throughput on this 2-core machine is bound by the CPU one order costs on the shop's event loop,
so this is the number to move. Extra arguments go to `shop up` (e.g. a --database-url).

    .venv/bin/python bench/cpu_per_order.py [--orders 100] [--concurrency 4] [-- shop up flags]
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
from google.type import money_pb2

from shop.api.catalog.v1 import catalog_pb2

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.e2e.clients import Stubs, order_request
from tests.e2e.harness import ShopProcess


async def load(address: str, orders: int, concurrency: int) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stubs = Stubs.on(channel)
        user_id = await stubs.customer()
        product = await stubs.catalog.CreateProduct(
            catalog_pb2.CreateProductRequest(
                sku=f"CPU-{time.time_ns()}",
                name="CPU bench product",
                price=money_pb2.Money(currency_code="USD", units=1),
                stock=10**9,
            ),
            timeout=10,
        )

        async def worker() -> None:
            for _ in range(orders // concurrency):
                request = order_request(user_id, product.product.id)
                await stubs.gateway.ProcessOrder(request, timeout=60)

        await asyncio.gather(*(worker() for _ in range(concurrency)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--orders", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("shop_args", nargs="*")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        shop = ShopProcess(Path(tmp) / "data", args.shop_args, follow=False).start()
        try:
            process = psutil.Process(shop.proc.pid)  # type: ignore[union-attr]
            asyncio.run(load(shop.grpc_address, 20, 1))  # warm up
            before, start = process.cpu_times(), time.perf_counter()
            asyncio.run(load(shop.grpc_address, args.orders, args.concurrency))
            after, wall = process.cpu_times(), time.perf_counter() - start
        finally:
            shop.stop()
    user = (after.user - before.user) / args.orders * 1000
    system = (after.system - before.system) / args.orders * 1000
    print(
        f"{args.orders} orders at concurrency {args.concurrency} in {wall:.1f} s "
        f"({args.orders / wall:.1f}/s); shop CPU per order {user + system:.1f} ms "
        f"(user {user:.1f}, system {system:.1f})"
    )


if __name__ == "__main__":
    main()
