"""grpckit_client_circuit_state{target,method}: the breaker's state as a Prometheus gauge."""

from __future__ import annotations

import gc

import grpc
from prometheus_client import CollectorRegistry

from grpckit.client import BreakerPolicy, CircuitBreaker, dial
from grpckit.testing import TestServer, expect_status
from grpckit.testing.api.v1 import ping_pb2, ping_pb2_grpc

PING = "/grpckit.testing.v1.PingService/Ping"
POLICY = BreakerPolicy(minimum_calls=2, window_calls=4, window_seconds=None, cooldown=10)


def state(registry: CollectorRegistry, target: str) -> float | None:
    labels = {"target": target, "method": PING}
    return registry.get_sample_value("grpckit_client_circuit_state", labels)


async def test_the_gauge_follows_closed_open_half_open_closed(server: TestServer) -> None:
    registry = CollectorRegistry()
    now = [1000.0]
    breaker = CircuitBreaker(POLICY, target="ping", clock=lambda: now[0], registry=registry)
    unavailable = ping_pb2.PingRequest(error_code=grpc.StatusCode.UNAVAILABLE.value[0])
    async with dial(server.address, interceptors=breaker.interceptors()) as channel:
        stub = ping_pb2_grpc.PingServiceStub(channel)
        assert state(registry, "ping") is None  # no call yet: no series
        await stub.Ping(ping_pb2.PingRequest())
        assert state(registry, "ping") == 0
        for _ in range(2):
            await expect_status(stub.Ping(unavailable), grpc.StatusCode.UNAVAILABLE)
        assert state(registry, "ping") == 2
        now[0] += 10
        assert state(registry, "ping") == 1  # the cool-down is over: half-open
        await stub.Ping(ping_pb2.PingRequest())
        assert state(registry, "ping") == 0


async def test_breakers_sharing_a_target_show_the_worse_state_and_leave_when_dropped(
    server: TestServer,
) -> None:
    registry = CollectorRegistry()
    healthy = CircuitBreaker(POLICY, target="shared", registry=registry)
    tripped = CircuitBreaker(POLICY, target="shared", registry=registry)
    unavailable = ping_pb2.PingRequest(error_code=grpc.StatusCode.UNAVAILABLE.value[0])
    async with dial(server.address, interceptors=healthy.interceptors()) as channel:
        await ping_pb2_grpc.PingServiceStub(channel).Ping(ping_pb2.PingRequest())
    async with dial(server.address, interceptors=tripped.interceptors()) as channel:
        stub = ping_pb2_grpc.PingServiceStub(channel)
        for _ in range(2):
            await expect_status(stub.Ping(unavailable), grpc.StatusCode.UNAVAILABLE)
    assert state(registry, "shared") == 2
    del tripped, channel, stub
    gc.collect()
    assert state(registry, "shared") == 0
