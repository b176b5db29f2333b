"""retry_info_interceptors over a real server: the advised wait, the deadline, the limits."""

from __future__ import annotations

import time
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2

from grpckit import errors
from grpckit.client import dial, retry_info_interceptors
from grpckit.client._rejection import local_rejection
from grpckit.client._retry_info import advised_delay
from grpckit.testing import PingServicer, TestServer, expect_status, serve_in_process
from grpckit.testing.api.v1 import ping_pb2, ping_pb2_grpc

EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


class Shedding(PingServicer):
    """Fails the first ``failures`` calls with ``error``; answers the rest."""

    def __init__(self, error: errors.StatusError, failures: int = 1) -> None:
        super().__init__()
        self.error = error
        self.failures = failures

    async def Ping(self, request: ping_pb2.PingRequest, context: Any) -> ping_pb2.PingResponse:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return ping_pb2.PingResponse(message=f"call {self.calls}")


def slow_down(seconds: float) -> errors.StatusError:
    return errors.resource_exhausted("slow down", retry_after=seconds)


async def ping(server: TestServer, interceptors: list[Any], **kwargs: Any) -> Any:
    async with dial(server.address, interceptors=interceptors) as channel:
        return await ping_pb2_grpc.PingServiceStub(channel).Ping(ping_pb2.PingRequest(), **kwargs)


async def test_waits_the_advised_delay_then_succeeds() -> None:
    servicer = Shedding(slow_down(0.2))
    async with serve_in_process(servicer) as server:
        started = time.monotonic()
        reply = await ping(server, retry_info_interceptors())
        elapsed = time.monotonic() - started
    assert reply.message == "call 2"
    assert 0.2 <= elapsed < 1.5


async def test_unavailable_with_retry_info_is_retried_too() -> None:
    servicer = Shedding(errors.unavailable("draining", reason="DRAINING", retry_after=0.01))
    async with serve_in_process(servicer) as server:
        assert (await ping(server, retry_info_interceptors())).message == "call 2"


async def test_never_waits_past_the_deadline() -> None:
    servicer = Shedding(slow_down(2.0))
    async with serve_in_process(servicer) as server:
        started = time.monotonic()
        await expect_status(ping(server, retry_info_interceptors(), timeout=0.5), EXHAUSTED)
        assert time.monotonic() - started < 0.4  # failed at once, not at the deadline
    assert servicer.calls == 1


async def test_never_waits_longer_than_max_delay() -> None:
    servicer = Shedding(slow_down(2.0))
    async with serve_in_process(servicer) as server:
        await expect_status(ping(server, retry_info_interceptors(max_delay=1.0)), EXHAUSTED)
    assert servicer.calls == 1


async def test_stops_after_max_attempts() -> None:
    servicer = Shedding(slow_down(0.01), failures=10)
    async with serve_in_process(servicer) as server:
        err = await expect_status(ping(server, retry_info_interceptors(3)), EXHAUSTED)
    assert err.detail(error_details_pb2.RetryInfo) is not None  # the server's last answer
    assert servicer.calls == 3


async def test_without_retry_info_nothing_is_retried(
    server: TestServer, servicer: PingServicer
) -> None:
    async with dial(server.address, interceptors=retry_info_interceptors()) as channel:
        stub = ping_pb2_grpc.PingServiceStub(channel)
        request = ping_pb2.PingRequest(error_code=grpc.StatusCode.UNAVAILABLE.value[0])
        await expect_status(stub.Ping(request), grpc.StatusCode.UNAVAILABLE)
    assert servicer.calls == 1


def test_advised_delay_ignores_local_rejections_and_other_codes() -> None:
    retry = error_details_pb2.RetryInfo()
    retry.retry_delay.FromMilliseconds(300)
    for reason, expected in (("CIRCUIT_OPEN", None), ("OVERLOADED", 0.3)):
        info = error_details_pb2.ErrorInfo(reason=reason, domain="grpckit")
        error = local_rejection(grpc.StatusCode.UNAVAILABLE, "m", info, retry, source="test")
        assert advised_delay(error) == expected
    aborted = local_rejection(grpc.StatusCode.ABORTED, "m", retry, source="test")
    assert advised_delay(aborted) is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"max_attempts": 1}, "max_attempts"), ({"max_delay": 0}, "max_delay")],
)
def test_bad_settings(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        retry_info_interceptors(**kwargs)
