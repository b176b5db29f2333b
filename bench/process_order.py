"""ProcessOrder throughput and latency on the all-in-one system, against a bare grpc.aio baseline.

Both servers run as separate processes started by this script, and the same Python client
(grpc.aio, one channel, N concurrent callers) drives them in the same run, so the printed ratio
is meaningful on a noisy machine. Also records the shop process's peak RSS under load, and its
RSS after 1,000 and after 10,000 orders (growth means a leak).

Since issue 4 every order is an authenticated call: the bench registers ``--customers``
customers, logs them in and sends each order with its customer's access token (renewed before
it expires). Orders take the customers in turn, so the per-user ProcessOrder limit (20/s,
burst 40, which one customer hits at concurrency 1 here) is not what is measured; a rejected
call is counted under its status code.

    .venv/bin/python bench/process_order.py [--duration 10] [--concurrency 1,8,32] [--leak-orders 10000] [--customers 8]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import psutil
from shop_login import Customer, bench_products, customers

from shop.api.catalog.v1 import catalog_pb2
from shop.api.gateway.v1 import gateway_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.e2e.clients import order_request
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


async def drive(call, concurrency: int, duration: float) -> tuple[int, list[float], dict[str, int]]:  # type: ignore[no-untyped-def]
    """``call()`` in a loop from ``concurrency`` workers for ``duration`` seconds."""
    latencies: list[float] = []
    errors: dict[str, int] = {}
    stop = time.perf_counter() + duration

    async def worker() -> None:
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            try:
                await call()
            except grpc.aio.AioRpcError as err:
                errors[err.code().name] = errors.get(err.code().name, 0) + 1
                continue
            latencies.append(time.perf_counter() - t0)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(latencies), latencies, errors


def error_text(errors: dict[str, int]) -> str:
    return ", ".join(f"{code} {n}" for code, n in sorted(errors.items())) or "0"


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


async def shop_load(
    shop: ShopProcess,
    concurrency: int,
    duration: float,
    buyers: list[Customer],
    products: list[catalog_pb2.Product],
) -> float:
    rss = psutil.Process(shop.proc.pid)  # type: ignore[union-attr]
    async with grpc.aio.insecure_channel(shop.grpc_address) as ch:
        gateway = gateway_pb2_grpc.GatewayServiceStub(ch)
        counter = 0

        async def one() -> None:
            nonlocal counter
            counter += 1
            buyer = buyers[counter % len(buyers)]
            product = products[counter % len(products)]
            await gateway.ProcessOrder(
                order_request(buyer.user_id, product.id),
                timeout=30,
                metadata=await buyer.metadata(),
            )

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
        f"  shop ProcessOrder (SQLite)     c={concurrency:<3} {rate:8.0f} orders/s p50 {pct(lat, 50):6.2f} ms  p99 {pct(lat, 99):6.2f} ms  errors {error_text(errors)}  peak RSS {peak / 2**20:.0f} MiB",
        flush=True,
    )
    return rate


async def leak_check(shop: ShopProcess, total: int, buyers: list[Customer]) -> None:
    rss = psutil.Process(shop.proc.pid)  # type: ignore[union-attr]
    products = await bench_products(shop.grpc_address, 20, "LEAK")
    async with grpc.aio.insecure_channel(shop.grpc_address) as ch:
        gateway = gateway_pb2_grpc.GatewayServiceStub(ch)
        started = finished = 0
        first = min(1000, total)
        marks = {first: 0.0, total: 0.0}
        failed: dict[str, int] = {}

        async def worker() -> None:
            nonlocal started, finished
            while started < total:
                started += 1
                buyer = buyers[started % len(buyers)]
                product = products[started % len(products)]
                try:
                    await gateway.ProcessOrder(
                        order_request(buyer.user_id, product.id),
                        timeout=30,
                        metadata=await buyer.metadata(),
                    )
                except grpc.aio.AioRpcError as err:
                    failed[err.code().name] = failed.get(err.code().name, 0) + 1
                finished += 1
                if finished in marks:
                    marks[finished] = rss.memory_info().rss / 2**20
                if finished % 1000 == 0:
                    print(
                        f"    {finished} orders, RSS {rss.memory_info().rss / 2**20:.0f} MiB",
                        flush=True,
                    )

        await asyncio.gather(*(worker() for _ in range(16)))
    print(
        f"  RSS after {first:,} orders {marks[first]:.0f} MiB, after {total:,} orders {marks[total]:.0f} MiB (growth {marks[total] - marks[first]:+.0f} MiB); failed calls {error_text(failed)}"
    )


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--leak-orders", type=int, default=10_000)
    parser.add_argument("--customers", type=int, default=8, help="buyers the workers take in turn")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    print(
        f"python {sys.version.split()[0]}, grpcio {grpc.__version__}, {os.cpu_count()} cores; client: grpc.aio, one channel"
    )
    with tempfile.TemporaryDirectory() as tmp:
        shop = ShopProcess(Path(tmp) / "data", follow=False).start()
        try:
            buyers = await customers(shop.grpc_address, args.customers)
            products = list(await bench_products(shop.grpc_address, 10, "BENCH"))
            for c in levels:
                base = await baseline(c, args.duration)
                rate = await shop_load(shop, c, args.duration, buyers, products)
                print(f"  ratio ProcessOrder / bare no-op at c={c}: {rate / base:.3f}", flush=True)
            if args.leak_orders:
                await leak_check(shop, args.leak_orders, buyers)
        finally:
            shop.stop()


if __name__ == "__main__":
    asyncio.run(main())
