"""with_fallback: degrade on UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED; nothing else."""

from __future__ import annotations

import grpc
import pytest

from grpckit.client import with_fallback
from grpckit.testing import TestServer
from grpckit.testing.api.v1 import ping_pb2


def failing(code: grpc.StatusCode, sleep_ms: int = 0) -> ping_pb2.PingRequest:
    return ping_pb2.PingRequest(message="live", error_code=code.value[0], sleep_ms=sleep_ms)


async def test_a_dependency_that_cannot_answer_gets_the_fallback(server: TestServer) -> None:
    seen: list[grpc.StatusCode] = []

    def cached(error: grpc.aio.AioRpcError) -> ping_pb2.PingResponse:
        seen.append(error.code())
        return ping_pb2.PingResponse(message="cached")

    reply = await with_fallback(server.ping.Ping(failing(grpc.StatusCode.UNAVAILABLE)), cached)
    assert reply.message == "cached"
    slow = server.ping.Ping(ping_pb2.PingRequest(sleep_ms=2000), timeout=0.05)
    assert (await with_fallback(slow, cached)).message == "cached"
    assert seen == [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED]


async def test_an_async_fallback_is_awaited(server: TestServer) -> None:
    async def later(error: grpc.aio.AioRpcError) -> ping_pb2.PingResponse:
        return ping_pb2.PingResponse(message=f"after {error.code().name}")

    call = server.ping.Ping(failing(grpc.StatusCode.RESOURCE_EXHAUSTED))
    assert (await with_fallback(call, later)).message == "after RESOURCE_EXHAUSTED"


async def test_success_and_caller_mistakes_pass_through(server: TestServer) -> None:
    def never(error: grpc.aio.AioRpcError) -> ping_pb2.PingResponse:
        raise AssertionError("no fallback expected")

    ok = await with_fallback(server.ping.Ping(ping_pb2.PingRequest(message="live")), never)
    assert ok.message == "live"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await with_fallback(server.ping.Ping(failing(grpc.StatusCode.INVALID_ARGUMENT)), never)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT


async def test_on_chooses_the_codes(server: TestServer) -> None:
    call = server.ping.Ping(failing(grpc.StatusCode.NOT_FOUND))
    reply = await with_fallback(
        call, lambda _: ping_pb2.PingResponse(message="default"), on={grpc.StatusCode.NOT_FOUND}
    )
    assert reply.message == "default"
    with pytest.raises(grpc.aio.AioRpcError):
        await with_fallback(
            server.ping.Ping(failing(grpc.StatusCode.UNAVAILABLE)),
            lambda _: ping_pb2.PingResponse(),
            on={grpc.StatusCode.NOT_FOUND},
        )
