"""One ProcessOrder, seen by the observability chain of a real process: one trace id in every
call's log line when tracing is configured by the standard OTEL_* variables."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.e2e.clients import Stubs, connect, order_request
from tests.e2e.harness import ShopProcess

pytestmark = pytest.mark.e2e

DOWNSTREAM = {
    "ValidateUser",
    "CreateOrder",
    "BatchGetProducts",
    "ReserveStock",
    "ProcessPayment",
    "MarkOrderPaid",
}


async def test_one_order_is_one_trace_in_the_logs(tmp_path: Path) -> None:
    env = {"OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "shop-e2e"}
    shop = ShopProcess(tmp_path / "data", env=env).start()
    try:
        async with connect(shop.grpc_address) as ch:
            stubs = Stubs.on(ch)
            user_id, product = await stubs.customer(), await stubs.product()
            reply = await stubs.gateway.ProcessOrder(order_request(user_id, product.id), timeout=15)
        assert reply.order.id
        root = await asyncio.to_thread(
            shop.wait_for, lambda r: r.get("event") == "rpc" and r.get("method") == "ProcessOrder"
        )
    finally:
        assert shop.stop() == 0
    trace_id = root["trace_id"]
    assert len(trace_id) == 32
    calls = [r for r in shop.records if r.get("event") == "rpc" and r.get("trace_id") == trace_id]
    assert {r["method"] for r in calls} == DOWNSTREAM | {"ProcessOrder"}
    assert len({r["span_id"] for r in calls}) == len(calls)  # one server span per call
    assert len({r["request_id"] for r in calls}) == 1  # the request id travels too
