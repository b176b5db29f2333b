"""Circuit breaker interceptors over a real server, with a fake clock (no sleeps)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2

from grpckit.client import dial
from grpckit.client._breaker import (
    CIRCUIT_OPEN,
    BreakerPolicy,
    CircuitBreaker,
    circuit_breaker_interceptors,
)
from grpckit.errors import StatusError
from grpckit.testing import PingServicer, TestServer, expect_status
from grpckit.testing.api.v1 import ping_pb2, ping_pb2_grpc

PING = "/grpckit.testing.v1.PingService/Ping"
STREAM = "/grpckit.testing.v1.PingService/PingServerStream"
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
POLICY = BreakerPolicy(
    failure_ratio=0.5, minimum_calls=4, window_calls=10, window_seconds=30, cooldown=10
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def breaker(server: TestServer, clock: FakeClock) -> CircuitBreaker:
    return CircuitBreaker(POLICY, target=server.address, clock=clock)


@pytest.fixture
async def stub(
    server: TestServer, breaker: CircuitBreaker
) -> AsyncIterator[ping_pb2_grpc.PingServiceAsyncStub]:
    async with dial(server.address, interceptors=breaker.interceptors()) as channel:
        yield ping_pb2_grpc.PingServiceStub(channel)


def _req(code: grpc.StatusCode | None = None) -> ping_pb2.PingRequest:
    return ping_pb2.PingRequest(message="m", error_code=code.value[0] if code else 0)


async def _fail(stub: Any, times: int, code: grpc.StatusCode = UNAVAILABLE) -> None:
    for _ in range(times):
        await expect_status(stub.Ping(_req(code)), code)


async def _trip(stub: Any, breaker: CircuitBreaker) -> None:
    await _fail(stub, 4)
    assert breaker.state(PING) == "open"


async def test_opens_after_failures(stub: Any, breaker: CircuitBreaker) -> None:
    await stub.Ping(_req())
    await stub.Ping(_req())
    await _fail(stub, 1)
    assert breaker.state(PING) == "closed"  # 1 of 3: below minimum_calls
    await _fail(stub, 1)
    assert breaker.state(PING) == "open"  # 2 of 4 failed: ratio reached
    assert breaker.states() == {PING: "open"}
    assert breaker.state(STREAM) == "closed"  # per method


async def test_successes_keep_it_closed(stub: Any, breaker: CircuitBreaker) -> None:
    for _ in range(3):
        await stub.Ping(_req())
        await stub.Ping(_req())
        await _fail(stub, 1)
    assert breaker.state(PING) == "closed"  # 3 of 9 < 50%


async def test_open_fails_fast_without_network(
    stub: Any, breaker: CircuitBreaker, servicer: PingServicer, clock: FakeClock
) -> None:
    await _trip(stub, breaker)
    before = servicer.calls
    clock.advance(4)
    err = await expect_status(stub.Ping(_req()), UNAVAILABLE, reason=CIRCUIT_OPEN)
    assert servicer.calls == before
    assert err.error_info is not None
    assert err.error_info.domain == "grpckit"
    assert err.error_info.metadata["method"] == PING
    assert err.error_info.metadata["target"] == breaker.target
    retry = err.detail(error_details_pb2.RetryInfo)
    assert retry is not None
    assert retry.retry_delay.ToNanoseconds() == 6 * 10**9


async def test_rejection_is_a_real_aio_rpc_error(stub: Any, breaker: CircuitBreaker) -> None:
    await _trip(stub, breaker)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Ping(_req())
    assert caught.value.code() is UNAVAILABLE
    assert StatusError.from_rpc_error(caught.value).reason == CIRCUIT_OPEN


async def test_half_open_probe_success_closes(
    stub: Any, breaker: CircuitBreaker, servicer: PingServicer, clock: FakeClock
) -> None:
    await _trip(stub, breaker)
    clock.advance(10)
    assert breaker.state(PING) == "half_open"
    before = servicer.calls
    reply = await stub.Ping(_req())
    assert reply.message == "m"
    assert servicer.calls == before + 1
    assert breaker.state(PING) == "closed"
    await _fail(stub, 3)  # a fresh window: needs minimum_calls again
    assert breaker.state(PING) == "closed"


async def test_half_open_probe_failure_reopens(
    stub: Any, breaker: CircuitBreaker, servicer: PingServicer, clock: FakeClock
) -> None:
    await _trip(stub, breaker)
    clock.advance(10)
    await _fail(stub, 1)
    assert breaker.state(PING) == "open"
    before = servicer.calls
    clock.advance(9.5)  # a fresh cool-down
    err = await expect_status(stub.Ping(_req()), UNAVAILABLE, reason=CIRCUIT_OPEN)
    retry = err.detail(error_details_pb2.RetryInfo)
    assert retry is not None
    assert retry.retry_delay.ToMilliseconds() == 500
    assert servicer.calls == before


async def test_half_open_lets_k_probes_through(
    server: TestServer, servicer: PingServicer, clock: FakeClock
) -> None:
    policy = BreakerPolicy(minimum_calls=2, window_calls=2, cooldown=1, half_open_calls=2)
    breaker = CircuitBreaker(policy, target="t", clock=clock)
    async with dial(server.address, interceptors=breaker.interceptors()) as channel:
        stub = ping_pb2_grpc.PingServiceStub(channel)
        await _fail(stub, 2)
        assert breaker.state(PING) == "open"
        clock.advance(1)
        first = stub.Ping(_req())
        second = stub.Ping(_req())
        third = stub.Ping(_req())  # over the probe budget while the probes are in flight
        await expect_status(third, UNAVAILABLE, reason=CIRCUIT_OPEN)
        await first
        assert breaker.state(PING) == "half_open"  # 1 of 2 probes succeeded
        await second
        assert breaker.state(PING) == "closed"


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.PERMISSION_DENIED,
    ],
)
async def test_caller_mistakes_do_not_trip(
    stub: Any, breaker: CircuitBreaker, code: grpc.StatusCode
) -> None:
    await _fail(stub, 10, code)
    assert breaker.state(PING) == "closed"


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    ],
)
async def test_default_failure_codes_trip(
    stub: Any, breaker: CircuitBreaker, code: grpc.StatusCode
) -> None:
    await _fail(stub, 4, code)
    assert breaker.state(PING) == "open"


async def test_configurable_failure_codes(server: TestServer, clock: FakeClock) -> None:
    policy = BreakerPolicy(
        failure_ratio=1.0,
        minimum_calls=2,
        window_calls=2,
        failure_codes=frozenset({grpc.StatusCode.NOT_FOUND}),
    )
    breaker = CircuitBreaker(policy, target="t", clock=clock)
    async with dial(server.address, interceptors=breaker.interceptors()) as channel:
        stub = ping_pb2_grpc.PingServiceStub(channel)
        await _fail(stub, 2, UNAVAILABLE)
        assert breaker.state(PING) == "closed"
        await _fail(stub, 2, grpc.StatusCode.NOT_FOUND)
        assert breaker.state(PING) == "open"


async def test_window_forgets_old_outcomes(
    stub: Any, breaker: CircuitBreaker, clock: FakeClock
) -> None:
    await _fail(stub, 3)
    clock.advance(31)  # older than window_seconds
    await _fail(stub, 1)
    assert breaker.state(PING) == "closed"
    await stub.Ping(_req())
    await _fail(stub, 2)
    assert breaker.state(PING) == "open"  # 3 of 4 recent


async def test_window_keeps_last_n_calls(server: TestServer, clock: FakeClock) -> None:
    policy = BreakerPolicy(failure_ratio=0.5, minimum_calls=4, window_calls=4, window_seconds=None)
    breaker = CircuitBreaker(policy, target="t", clock=clock)
    async with dial(server.address, interceptors=breaker.interceptors()) as channel:
        stub = ping_pb2_grpc.PingServiceStub(channel)
        await _fail(stub, 1)
        for _ in range(4):
            await stub.Ping(_req())
        await _fail(stub, 1)  # the first failure has left the window: 1 of 4
        assert breaker.state(PING) == "closed"
        await _fail(stub, 1)
        assert breaker.state(PING) == "open"


async def test_deadline_exceeded_counts(stub: Any, breaker: CircuitBreaker) -> None:
    for _ in range(4):
        await expect_status(
            stub.Ping(ping_pb2.PingRequest(message="slow", sleep_ms=1000), timeout=0.02),
            grpc.StatusCode.DEADLINE_EXCEEDED,
        )
    assert breaker.state(PING) == "open"


async def _stream(stub: Any, code: grpc.StatusCode | None = None) -> list[int]:
    request = ping_pb2.PingServerStreamRequest(
        message="s", count=2, error_code=code.value[0] if code else 0
    )
    return [reply.index async for reply in stub.PingServerStream(request)]


async def test_unary_stream(
    stub: Any, breaker: CircuitBreaker, servicer: PingServicer, clock: FakeClock
) -> None:
    assert await _stream(stub) == [0, 1]
    for _ in range(4):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _stream(stub, UNAVAILABLE)
        assert caught.value.code() is UNAVAILABLE
    assert breaker.state(STREAM) == "open"
    assert breaker.state(PING) == "closed"
    before = servicer.calls
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _stream(stub)
    assert StatusError.from_rpc_error(caught.value).reason == CIRCUIT_OPEN
    assert servicer.calls == before
    clock.advance(10)
    assert await _stream(stub) == [0, 1]  # the probe
    assert breaker.state(STREAM) == "closed"


async def test_unary_stream_read_api(stub: Any, breaker: CircuitBreaker) -> None:
    call = stub.PingServerStream(ping_pb2.PingServerStreamRequest(message="r", count=1))
    first = await call.read()
    assert first.message == "r"
    assert await call.read() is grpc.aio.EOF  # type: ignore[attr-defined]
    assert await call.code() is grpc.StatusCode.OK


async def test_unary_stream_half_open_failure_reopens(
    stub: Any, breaker: CircuitBreaker, clock: FakeClock
) -> None:
    for _ in range(4):
        with pytest.raises(grpc.aio.AioRpcError):
            await _stream(stub, grpc.StatusCode.INTERNAL)
    clock.advance(10)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _stream(stub, grpc.StatusCode.INTERNAL)
    assert caught.value.code() is grpc.StatusCode.INTERNAL
    assert breaker.state(STREAM) == "open"


async def _requests(*codes: int) -> AsyncIterator[ping_pb2.PingClientStreamRequest]:
    for code in codes:
        yield ping_pb2.PingClientStreamRequest(message="c", error_code=code)


async def test_stream_unary_and_bidi(stub: Any, breaker: CircuitBreaker) -> None:
    client_stream = "/grpckit.testing.v1.PingService/PingClientStream"
    bidi = "/grpckit.testing.v1.PingService/PingBidi"
    reply = await stub.PingClientStream(_requests(0, 0))
    assert reply.index == 2
    for _ in range(4):
        await expect_status(stub.PingClientStream(_requests(UNAVAILABLE.value[0])), UNAVAILABLE)
    assert breaker.state(client_stream) == "open"
    await expect_status(stub.PingClientStream(_requests(0)), UNAVAILABLE, reason=CIRCUIT_OPEN)

    for _ in range(4):
        with pytest.raises(grpc.aio.AioRpcError):
            async for _reply in stub.PingBidi(_requests(UNAVAILABLE.value[0])):
                pass
    assert breaker.state(bidi) == "open"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _reply in stub.PingBidi(_requests(0)):
            pass
    assert StatusError.from_rpc_error(caught.value).reason == CIRCUIT_OPEN


async def test_cancelled_probe_is_given_back(
    server: TestServer, servicer: PingServicer, clock: FakeClock
) -> None:
    policy = BreakerPolicy(minimum_calls=2, window_calls=2, cooldown=1)
    breaker = CircuitBreaker(policy, target="t", clock=clock)
    async with dial(server.address, interceptors=breaker.interceptors()) as channel:
        stub = ping_pb2_grpc.PingServiceStub(channel)
        await _fail(stub, 2)
        clock.advance(1)
        servicer.started.clear()
        probe = stub.Ping(ping_pb2.PingRequest(message="slow", sleep_ms=5000))
        await servicer.started.wait()
        probe.cancel()
        with pytest.raises(asyncio.CancelledError):
            await probe
        assert breaker.state(PING) == "half_open"
        await stub.Ping(_req())  # the slot is free again
        assert breaker.state(PING) == "closed"


def test_interceptors_factory() -> None:
    interceptors = circuit_breaker_interceptors(POLICY, target="x:1")
    assert len(interceptors) == 4
    breaker = interceptors[0].breaker  # type: ignore[attr-defined]
    assert all(i.breaker is breaker for i in interceptors)  # type: ignore[attr-defined]
    assert breaker.target == "x:1"
    assert breaker.state("grpckit.testing.v1.PingService/Ping") == "closed"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"failure_ratio": 0},
        {"failure_ratio": 1.5},
        {"minimum_calls": 0},
        {"window_calls": None, "window_seconds": None},
        {"window_calls": 5, "minimum_calls": 10},
        {"window_seconds": 0},
        {"cooldown": -1},
        {"half_open_calls": 0},
        {"failure_codes": frozenset({grpc.StatusCode.OK})},
    ],
)
def test_policy_validation(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        BreakerPolicy(**kwargs)
