"""The adapter: all four RPC kinds through a chain, metadata, streaming, cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from grpckit import CallInfo, Next, Outcome, current_call, select
from grpckit.interceptors import deadlines, logging, recovery
from grpckit.testing import PingServicer, TestServer, serve_in_process
from grpckit.testing.api.v1 import ping_pb2

METADATA = (("x-text", "hello"), ("x-blob-bin", b"\x00\xff\x01"))


class Recorder:
    """Records what an interceptor sees: calls, messages both ways, outcomes."""

    def __init__(self, name: str, trail: list[str]) -> None:
        self.name = name
        self.trail = trail
        self.received: list[Any] = []
        self.sent: list[Any] = []
        self.calls: list[CallInfo] = []
        self.outcomes: list[Outcome] = []

    async def intercept(self, call: CallInfo, next_: Next) -> None:
        self.trail.append(f"{self.name}:before")
        self.calls.append(call)
        call.listen(self)
        error: BaseException | None = None
        try:
            await next_(call)
        except BaseException as exc:
            error = exc
            raise
        finally:
            self.outcomes.append(Outcome.of(call, error))
            self.trail.append(f"{self.name}:after")

    def on_receive(self, call: CallInfo, message: Any) -> None:
        self.received.append(message)

    def on_send(self, call: CallInfo, message: Any) -> None:
        self.sent.append(message)


@pytest.fixture
def trail() -> list[str]:
    return []


@pytest.fixture
def recorder(trail: list[str]) -> Recorder:
    return Recorder("inner", trail)


@pytest.fixture
async def chained(
    servicer: PingServicer, recorder: Recorder, trail: list[str]
) -> AsyncIterator[TestServer]:
    outer = Recorder("outer", trail)
    chain = [recovery(), outer, logging(), deadlines(default=5), recorder]
    async with serve_in_process(servicer, interceptors=chain) as server:
        yield server


def assert_echoed(initial: Any, trailing: Any) -> None:
    initial, trailing = tuple(initial or ()), tuple(trailing or ())
    assert ("x-text", "hello") in initial
    assert ("x-text", "hello") in trailing
    assert ("x-blob-bin", b"\x00\xff\x01") in trailing


async def test_unary(chained: TestServer, recorder: Recorder, trail: list[str]) -> None:
    call = chained.ping.Ping(
        ping_pb2.PingRequest(message="ünïcode", echo_metadata=True), metadata=METADATA
    )
    assert (await call).message == "ünïcode"
    assert_echoed(await call.initial_metadata(), await call.trailing_metadata())
    assert trail == ["outer:before", "inner:before", "inner:after", "outer:after"]
    [info] = recorder.calls
    assert (info.service, info.method, info.kind.value) == (
        "grpckit.testing.v1.PingService",
        "Ping",
        "unary",
    )
    assert info.full_method == "/grpckit.testing.v1.PingService/Ping"
    assert info.request.message == "ünïcode"
    assert info.header("x-blob-bin") == b"\x00\xff\x01"
    assert [m.message for m in recorder.sent] == ["ünïcode"]
    assert recorder.outcomes[0].code is grpc.StatusCode.OK


async def test_server_stream(chained: TestServer, recorder: Recorder) -> None:
    call = chained.ping.PingServerStream(
        ping_pb2.PingServerStreamRequest(message="s", count=3, echo_metadata=True),
        metadata=METADATA,
    )
    assert [r.index async for r in call] == [0, 1, 2]
    assert_echoed(await call.initial_metadata(), await call.trailing_metadata())
    assert [m.index for m in recorder.sent] == [0, 1, 2]
    assert recorder.calls[0].msgs_sent == 3


async def test_client_stream(chained: TestServer, recorder: Recorder) -> None:
    async def requests() -> AsyncIterator[ping_pb2.PingClientStreamRequest]:
        for i in range(3):
            yield ping_pb2.PingClientStreamRequest(message=str(i), echo_metadata=i == 0)

    call = chained.ping.PingClientStream(requests(), metadata=METADATA)
    assert (await call).message == "0,1,2"
    assert_echoed(await call.initial_metadata(), await call.trailing_metadata())
    assert [m.message for m in recorder.received] == ["0", "1", "2"]
    assert recorder.calls[0].msgs_received == 3


async def test_bidi_ping_pong_message_by_message(chained: TestServer, recorder: Recorder) -> None:
    call = chained.ping.PingBidi(metadata=METADATA)
    await call.write(ping_pb2.PingBidiRequest(message="a", echo_metadata=True))
    assert (await call.read()).message == "a"  # answered before the next request is sent
    for index, text in enumerate(["b", "c"], start=1):
        await call.write(ping_pb2.PingBidiRequest(message=text))
        response = await call.read()
        assert (response.message, response.index) == (text, index)
        assert len(recorder.received) == index + 1
    await call.done_writing()
    assert await call.code() is grpc.StatusCode.OK
    assert_echoed(await call.initial_metadata(), await call.trailing_metadata())


async def test_stream_error_after_messages_keeps_the_code(chained: TestServer) -> None:
    call = chained.ping.PingServerStream(
        ping_pb2.PingServerStreamRequest(message="s", count=2, error_code=9)
    )
    received = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for response in call:
            received.append(response.index)
    assert received == [0, 1]
    assert caught.value.code() is grpc.StatusCode.FAILED_PRECONDITION


@pytest.mark.parametrize("method", ["unary", "bidi"])
async def test_client_cancellation_reaches_the_handler(
    chained: TestServer, servicer: PingServicer, recorder: Recorder, method: str
) -> None:
    call: Any
    if method == "unary":
        call = chained.ping.Ping(ping_pb2.PingRequest(sleep_ms=60_000))
    else:
        call = chained.ping.PingBidi()
        await call.write(ping_pb2.PingBidiRequest(sleep_ms=60_000))
    await asyncio.wait_for(servicer.started.wait(), 5)
    call.cancel()
    await asyncio.wait_for(servicer.cancelled.wait(), 5)
    assert await call.code() is grpc.StatusCode.CANCELLED


async def test_handler_sees_its_call_info(chained: TestServer) -> None:
    seen: list[CallInfo | None] = []

    class Peek(PingServicer):
        async def Ping(self, request: ping_pb2.PingRequest, context: Any) -> Any:
            seen.append(current_call())
            return ping_pb2.PingResponse(message="ok")

    async with serve_in_process(Peek(), interceptors=[logging()]) as server:
        await server.ping.Ping(ping_pb2.PingRequest(), metadata=(("x-request-id", "r-9"),))
    [info] = seen
    assert info is not None and info.request_id == "r-9" and info.method == "Ping"
    assert current_call() is None


async def test_select_applies_only_to_matching_calls(trail: list[str]) -> None:
    only_bidi = select(Recorder("bidi", trail), match=lambda c: c.method == "PingBidi")
    async with serve_in_process(PingServicer(), interceptors=[only_bidi]) as server:
        await server.ping.Ping(ping_pb2.PingRequest())
        assert trail == []
        call = server.ping.PingBidi()
        await call.done_writing()
        assert await call.code() is grpc.StatusCode.OK
    assert trail == ["bidi:before", "bidi:after"]


async def test_health_and_reflection_skip_the_chain(trail: list[str]) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async with serve_in_process(PingServicer(), interceptors=[Recorder("r", trail)]) as server:
        health = health_pb2_grpc.HealthStub(server.channel)
        await health.Check(health_pb2.HealthCheckRequest(service=""))
    assert trail == []


async def test_context_abort_and_set_compression_in_handlers() -> None:
    class Custom(PingServicer):
        async def Ping(self, request: ping_pb2.PingRequest, context: Any) -> Any:
            if request.message == "abort":
                await context.abort(grpc.StatusCode.ABORTED, "conflict")
            context.set_compression(grpc.Compression.Gzip)
            return ping_pb2.PingResponse(message="x" * 1000)

    async with serve_in_process(Custom(), interceptors=[recovery(), logging()]) as server:
        call = server.ping.Ping(ping_pb2.PingRequest())
        assert len((await call).message) == 1000
        assert "x-request-id" in dict(tuple(await call.initial_metadata() or ()))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await server.ping.Ping(ping_pb2.PingRequest(message="abort"))
    assert caught.value.code() is grpc.StatusCode.ABORTED
    assert caught.value.details() == "conflict"
