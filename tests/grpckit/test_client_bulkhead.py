"""Bulkhead interceptors over a real server: slots, queue, deadlines, streams, gauges."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry

from grpckit.client import BULKHEAD_FULL, Bulkhead, bulkhead_interceptors, dial
from grpckit.testing import PingServicer, TestServer, expect_status, serve_in_process
from grpckit.testing.api.v1 import ping_pb2, ping_pb2_grpc

EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


class Gated(PingServicer):
    """Ping waits for ``release``; ``arrived`` counts the calls that reached the server."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.arrived = 0
        self.changed = asyncio.Event()

    async def Ping(self, request: ping_pb2.PingRequest, context: Any) -> ping_pb2.PingResponse:
        self.arrived += 1
        self.changed.set()
        await self.release.wait()
        return ping_pb2.PingResponse(message=request.message)

    async def until_arrived(self, count: int) -> None:
        while self.arrived < count:
            self.changed.clear()
            await self.changed.wait()


class Timeouts(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    """Records the timeout each call goes on with (placed inside the bulkhead)."""

    def __init__(self) -> None:
        self.seen: list[float | None] = []

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        self.seen.append(details.timeout)
        return await continuation(details, request)


async def until(condition: Callable[[], bool]) -> None:
    """Let other tasks run until ``condition()`` holds (interceptor tasks start on the loop)."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


@pytest.fixture
def gated() -> Gated:
    return Gated()


@pytest.fixture
async def gated_server(gated: Gated) -> AsyncIterator[TestServer]:
    async with serve_in_process(gated) as running:
        yield running


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def sample(registry: CollectorRegistry, name: str, bulkhead: str) -> float | None:
    return registry.get_sample_value(name, {"name": bulkhead})


async def test_rejects_the_call_beyond_max_concurrent(
    gated_server: TestServer, gated: Gated, registry: CollectorRegistry
) -> None:
    bulkhead = Bulkhead(2, name="ping", registry=registry)
    async with dial(gated_server.address, interceptors=bulkhead.interceptors()) as channel:
        stub = ping_pb2_grpc.PingServiceStub(channel)
        first, second = (
            stub.Ping(ping_pb2.PingRequest(message="1")),
            stub.Ping(ping_pb2.PingRequest(message="2")),
        )
        await gated.until_arrived(2)
        assert bulkhead.in_flight == 2
        assert sample(registry, "grpckit_client_bulkhead_in_flight", "ping") == 2

        err = await expect_status(stub.Ping(ping_pb2.PingRequest()), EXHAUSTED)
        assert err.reason == BULKHEAD_FULL
        assert err.error_info is not None
        assert err.error_info.domain == "grpckit"
        assert err.error_info.metadata["bulkhead"] == "ping"
        assert gated.arrived == 2  # failed fast, never sent
        assert bulkhead.rejected == 1
        assert sample(registry, "grpckit_client_bulkhead_rejected_total", "ping") == 1

        gated.release.set()
        assert [(await first).message, (await second).message] == ["1", "2"]
        await until(lambda: bulkhead.in_flight == 0)
        assert (await stub.Ping(ping_pb2.PingRequest(message="3"))).message == "3"
        await until(lambda: bulkhead.in_flight == 0)
        assert sample(registry, "grpckit_client_bulkhead_in_flight", "ping") == 0


async def test_queued_calls_wait_for_a_slot_and_a_full_queue_rejects(
    gated_server: TestServer, gated: Gated, registry: CollectorRegistry
) -> None:
    timeouts = Timeouts()
    bulkhead = Bulkhead(1, max_queue=1, name="q", registry=registry)
    interceptors = [*bulkhead.interceptors(), timeouts]
    async with dial(gated_server.address, interceptors=interceptors) as channel:
        stub = ping_pb2_grpc.PingServiceStub(channel)
        first = stub.Ping(ping_pb2.PingRequest(message="1"))
        await gated.until_arrived(1)
        queued = stub.Ping(ping_pb2.PingRequest(message="2"), timeout=5.0)
        await until(lambda: bulkhead.queued == 1)
        assert sample(registry, "grpckit_client_bulkhead_queued", "q") == 1
        err = await expect_status(stub.Ping(ping_pb2.PingRequest()), EXHAUSTED)
        assert err.reason == BULKHEAD_FULL

        gated.release.set()
        assert (await first).message == "1"
        assert (await queued).message == "2"
        assert gated.arrived == 2
        queued_timeout = timeouts.seen[1]
        assert queued_timeout is not None and queued_timeout < 5.0  # time queued was taken off


async def test_deadline_passing_in_the_queue(gated_server: TestServer, gated: Gated) -> None:
    bulkhead = Bulkhead(1, max_queue=1)
    async with dial(gated_server.address, interceptors=bulkhead.interceptors()) as channel:
        stub = ping_pb2_grpc.PingServiceStub(channel)
        first = stub.Ping(ping_pb2.PingRequest())
        await gated.until_arrived(1)
        err = await expect_status(
            stub.Ping(ping_pb2.PingRequest(), timeout=0.05), grpc.StatusCode.DEADLINE_EXCEEDED
        )
        assert err.reason == BULKHEAD_FULL
        assert bulkhead.queued == 0
        assert bulkhead.rejected == 1
        gated.release.set()
        await first
        await until(lambda: bulkhead.in_flight == 0)


async def test_a_cancelled_waiter_gives_up_its_place(
    gated_server: TestServer, gated: Gated
) -> None:
    bulkhead = Bulkhead(1, max_queue=1)
    async with dial(gated_server.address, interceptors=bulkhead.interceptors()) as channel:
        stub = ping_pb2_grpc.PingServiceStub(channel)
        first = stub.Ping(ping_pb2.PingRequest())
        await gated.until_arrived(1)
        waiting = stub.Ping(ping_pb2.PingRequest())
        await until(lambda: bulkhead.queued == 1)
        waiting.cancel()
        await until(lambda: bulkhead.queued == 0)
        gated.release.set()
        await first
        await until(lambda: bulkhead.in_flight == 0)
        assert gated.arrived == 1


async def test_a_stream_holds_its_slot_until_it_ends(server: TestServer) -> None:
    interceptors = bulkhead_interceptors(1, name="streams")
    bulkhead = interceptors[0].bulkhead  # type: ignore[attr-defined]
    async with dial(server.address, interceptors=interceptors) as channel:
        stub = ping_pb2_grpc.PingServiceStub(channel)
        bidi = stub.PingBidi()
        await bidi.write(ping_pb2.PingBidiRequest(message="a"))
        assert (await bidi.read()).message == "a"
        assert bulkhead.in_flight == 1
        await expect_status(stub.Ping(ping_pb2.PingRequest()), EXHAUSTED)
        await bidi.done_writing()
        assert await bidi.code() == grpc.StatusCode.OK
        await until(lambda: bulkhead.in_flight == 0)
        assert (await stub.Ping(ping_pb2.PingRequest(message="b"))).message == "b"


def test_bad_limits() -> None:
    with pytest.raises(ValueError, match="max_concurrent"):
        Bulkhead(0)
    with pytest.raises(ValueError, match="max_queue"):
        Bulkhead(1, max_queue=-1)
