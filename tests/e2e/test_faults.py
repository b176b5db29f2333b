"""Fault drills against a running shop (issue 5, fault test 2).

Payments slowed beyond the internal call deadline: the deadlines fire, the sagas compensate
(orders CANCELLED, stock back), the gateway's circuit breaker to payments opens and then fails
fast; once payments recover the breaker lets a probe through and closes, and orders are PAID
again. Reconciliation finds nothing charged for a cancelled order.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import pytest

from grpckit import StatusError
from tests.e2e.clients import Stubs, connect, order_request
from tests.e2e.harness import ShopProcess

pytestmark = pytest.mark.e2e

PROCESS_PAYMENT = "/shop.payments.v1.PaymentService/ProcessPayment"


def circuit_state(http_port: int) -> float | None:
    """The gateway's breaker state for ProcessPayment from /metrics (0 closed, 2 open)."""
    url = f"http://127.0.0.1:{http_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    for line in text.splitlines():
        if line.startswith("grpckit_client_circuit_state{") and PROCESS_PAYMENT in line:
            return float(line.rsplit(" ", 1)[1])
    return None


async def test_slow_payments_trip_the_breaker_and_it_heals(tmp_path: Path) -> None:
    faults = tmp_path / "faults.json"
    shop = ShopProcess(
        tmp_path / "data", ["--fault-file", str(faults), "--call-timeout", "1"]
    ).start()
    try:
        async with connect(shop.grpc_address) as channel:
            stubs = Stubs.on(channel)
            user_id, product = await stubs.customer(), await stubs.product(5)
            stock = await stubs.stock(product.id)
            paid = await stubs.gateway.ProcessOrder(order_request(user_id, product.id), timeout=20)
            assert paid.payment.status  # healthy first

            faults.write_text(json.dumps({"payment_latency_ms": 3000}))

            async def attempt() -> tuple[grpc.StatusCode, str, float]:
                started = time.monotonic()
                try:
                    await stubs.gateway.ProcessOrder(order_request(user_id, product.id), timeout=20)
                    return grpc.StatusCode.OK, "", time.monotonic() - started
                except grpc.aio.AioRpcError as err:
                    status = StatusError.from_rpc_error(err)
                    text = f"{status.reason} {status.message}"
                    return err.code(), text, time.monotonic() - started

            failures = []
            for _ in range(6):  # 4 at a time: the deadline fires for each
                failures += await asyncio.gather(*(attempt() for _ in range(4)))
                if await asyncio.to_thread(circuit_state, shop.http_port) == 2.0:
                    break
            # (the provider reads the fault file lazily: the first calls may still go through)
            timed_out = [f for f in failures if "DEADLINE_EXCEEDED" in f[1]]
            assert len(timed_out) >= 4, failures
            assert all(code != grpc.StatusCode.INTERNAL for code, _, _ in failures), failures
            assert await asyncio.to_thread(circuit_state, shop.http_port) == 2.0
            # open: the next order fails fast (no 1 s deadline wait), saying why
            code, text, took = await attempt()
            assert code == grpc.StatusCode.UNAVAILABLE and took < 0.9, (code, text, took)
            # every failed order was compensated: only the paid ones keep their stock
            ok = 1 + sum(code == grpc.StatusCode.OK for code, _, _ in failures)
            assert await stubs.stock(product.id) == stock - ok

            faults.write_text(json.dumps({}))  # payments recover
            deadline = time.monotonic() + 30
            while True:  # the breaker's cool-down (5 s) must pass before a probe goes through
                code, text, _ = await attempt()
                if code == grpc.StatusCode.OK or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.5)
            assert code == grpc.StatusCode.OK, text
            assert await asyncio.to_thread(circuit_state, shop.http_port) == 0.0
            # nothing charged for a cancelled order: payments that outlived their deadline
            # and were captured late get refunded by the compensation (or, if they settled
            # after its retries, by recovery) - reconciliation converges to clean
            give_up = time.monotonic() + 40
            while True:
                checked = await asyncio.to_thread(verify, shop.data_dir)
                if checked.returncode == 0 or time.monotonic() > give_up:
                    break
                await asyncio.sleep(1)
            assert checked.returncode == 0, (checked.stdout, checked.stderr)
    finally:
        assert shop.stop() == 0


def verify(data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shop.cli", "verify", "--data-dir", str(data_dir),
         "--saga-timeout", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
