"""ProcessOrder throughput and latency on the all-in-one system, against a bare grpc.aio baseline.

Both servers run as separate processes started by this script, and the same Python client
(grpc.aio, one channel, N concurrent callers) drives them in the same run, so the printed ratio
is meaningful on a noisy machine. Also records the shop process's peak RSS under load, and its
RSS after 1,000 and after 10,000 orders (growth means a leak).

    .venv/bin/python bench/process_order.py [--duration 10] [--concurrency 1,8,32] [--leak-orders 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
import statistics
import subprocess
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

BASELINE_SERVER = """
import asyncio, grpc, sys
async def main():
    server = grpc.aio.server()
    async def noop(request, context):
        return b""
    handler = grpc.method_handlers_generic_handler(
        "bench.Noop", {"Call": grpc.unary_unary_rpc_method_handler(noop)})
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()
asyncio.run(main())
"""


async def drive(call, concurrency: int, duration: float) -> tuple[int, list[float], int]:  # type: ignore[no-untyped-def]
    latencies: list[float] = []
    errors = 0
    stop = time.perf_counter() + duration

    async def worker() -> None:
        nonlocal errors
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            try:
                await call()
            except grpc.aio.AioRpcError:
                errors += 1
                continue
            latencies.append(time.perf_counter() - t0)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(latencies), latencies, errors


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[q - 1] * 1000 if len(values) > 1 else float("nan")


async def baseline(concurrency: int, duration: float) -> float:
    proc = subprocess.Popen([sys.executable, "-c", BASELINE_SERVER], stdout=subprocess.PIPE)  # noqa: ASYNC220
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            noop = ch.unary_unary("/bench.Noop/Call")
            await noop(b"")
            n, lat, _ = await drive(lambda: noop(b"", timeout=5), concurrency, duration)
        rate = n / duration
        print(
            f"  baseline bare grpc.aio no-op   c={concurrency:<3} {rate:8.0f} calls/s  p50 {pct(lat, 50):6.2f} ms  p99 {pct(lat, 99):6.2f} ms",
            flush=True,
        )
        return rate
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)


async def bench_products(stubs: Stubs, count: int) -> list[catalog_pb2.Product]:
    """Products with stock enough for any run (the demo catalog would sell out)."""
    tag = secrets.token_hex(3).upper()
    products = []
    for i in range(count):
        reply = await stubs.catalog.CreateProduct(
            catalog_pb2.CreateProductRequest(
                sku=f"BENCH-{tag}-{i}",
                name=f"Bench product {i}",
                price=money_pb2.Money(currency_code="USD", units=9, nanos=990_000_000),
                stock=1_000_000_000,
            ),
            timeout=10,
        )
        products.append(reply.product)
    return products


async def shop_load(shop: ShopProcess, concurrency: int, duration: float) -> float:
    rss = psutil.Process(shop.proc.pid)  # type: ignore[union-attr]
    async with grpc.aio.insecure_channel(shop.grpc_address) as ch:
        stubs = Stubs.on(ch)
        user_id = await stubs.customer()
        products = await bench_products(stubs, 10)
        counter = 0

        def one():  # type: ignore[no-untyped-def]
            nonlocal counter
            counter += 1
            product = products[counter % len(products)]
            return stubs.gateway.ProcessOrder(order_request(user_id, product.id), timeout=30)

        peak = 0

        async def sample() -> None:
            nonlocal peak
            while True:
                peak = max(peak, rss.memory_info().rss)
                await asyncio.sleep(0.2)

        sampler = asyncio.create_task(sample())
        n, lat, errors = await drive(one, concurrency, duration)
        sampler.cancel()
    rate = n / duration
    print(
        f"  shop ProcessOrder (SQLite)     c={concurrency:<3} {rate:8.0f} orders/s p50 {pct(lat, 50):6.2f} ms  p99 {pct(lat, 99):6.2f} ms  errors {errors}  peak RSS {peak / 2**20:.0f} MiB",
        flush=True,
    )
    return rate


async def leak_check(shop: ShopProcess, total: int) -> None:
    rss = psutil.Process(shop.proc.pid)  # type: ignore[union-attr]
    async with grpc.aio.insecure_channel(shop.grpc_address) as ch:
        stubs = Stubs.on(ch)
        user_id = await stubs.customer()
        products = await bench_products(stubs, 20)
        done = 0
        marks = {1000: 0.0, total: 0.0}
        failed: dict[str, int] = {}

        async def worker(index: int) -> None:
            nonlocal done
            while done < total:
                done += 1
                product = products[done % len(products)]
                try:
                    await stubs.gateway.ProcessOrder(order_request(user_id, product.id), timeout=30)
                except grpc.aio.AioRpcError as err:
                    failed[err.code().name] = failed.get(err.code().name, 0) + 1
                if done in marks:
                    marks[done] = rss.memory_info().rss / 2**20
                if done % 1000 == 0:
                    print(
                        f"    {done} orders, RSS {rss.memory_info().rss / 2**20:.0f} MiB",
                        flush=True,
                    )

        await asyncio.gather(*(worker(i) for i in range(16)))
    print(
        f"  RSS after 1,000 orders {marks[1000]:.0f} MiB, after {total:,} orders {marks[total]:.0f} MiB (growth {marks[total] - marks[1000]:+.0f} MiB)"
    )


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--leak-orders", type=int, default=10_000)
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    print(
        f"python {sys.version.split()[0]}, grpcio {grpc.__version__}, {os.cpu_count()} cores; client: grpc.aio, one channel"
    )
    with tempfile.TemporaryDirectory() as tmp:
        shop = ShopProcess(Path(tmp) / "data", follow=False).start()
        try:
            for c in levels:
                base = await baseline(c, args.duration)
                rate = await shop_load(shop, c, args.duration)
                print(f"  ratio ProcessOrder / bare no-op at c={c}: {rate / base:.3f}", flush=True)
            if args.leak_orders:
                await leak_check(shop, args.leak_orders)
        finally:
            shop.stop()


if __name__ == "__main__":
    asyncio.run(main())
