"""The resilience interceptors together, in the documented order, on a connect() channel."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from prometheus_client import CollectorRegistry

from grpckit import errors
from grpckit.client import (
    BULKHEAD_FULL,
    CIRCUIT_OPEN,
    BreakerPolicy,
    Bulkhead,
    CircuitBreaker,
    client_metrics_interceptors,
    connect,
    hedging_interceptors,
    retry_info_interceptors,
)
from grpckit.testing import PingServicer, expect_status, serve_in_process
from grpckit.testing.api.v1 import ping_pb2, ping_pb2_grpc

PING = "/grpckit.testing.v1.PingService/Ping"


class ShedOnce(PingServicer):
    """The first Ping: RESOURCE_EXHAUSTED with RetryInfo; then answers (or waits on ``gate``)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate: asyncio.Event | None = None

    async def Ping(self, request: ping_pb2.PingRequest, context: Any) -> ping_pb2.PingResponse:
        self.calls += 1
        self.started.set()
        if self.calls == 1:
            raise errors.resource_exhausted("slow down", retry_after=0.01)
        if request.error_code:
            raise errors.StatusError(grpc.StatusCode.UNAVAILABLE, "down")
        if self.gate is not None:
            await self.gate.wait()
        return ping_pb2.PingResponse(message="ok")


async def test_the_recommended_order_sees_one_logical_call() -> None:
    registry = CollectorRegistry()
    servicer = ShedOnce()
    policy = BreakerPolicy(minimum_calls=2, window_calls=2, window_seconds=None, cooldown=60)
    async with serve_in_process(servicer) as server:
        bulkhead = Bulkhead(1, name="ping", registry=registry)
        breaker = CircuitBreaker(policy, target=server.address, registry=registry)
        interceptors = [
            *client_metrics_interceptors(registry, exemplar=None),
            *bulkhead.interceptors(),
            *breaker.interceptors(),
            *retry_info_interceptors(),
            *hedging_interceptors(5.0, methods=lambda m: True),
        ]
        async with connect(server.address, interceptors=interceptors, pool_size=2) as channel:
            stub = ping_pb2_grpc.PingServiceStub(channel)
            assert (await stub.Ping(ping_pb2.PingRequest())).message == "ok"  # after RetryInfo
            assert servicer.calls == 2
            handled = {"grpc_method": "Ping", "grpc_code": "OK", "grpc_type": "unary"}
            handled["grpc_service"] = "grpckit.testing.v1.PingService"
            assert registry.get_sample_value("grpc_client_handled_total", handled) == 1

            # one bulkhead for the whole pool: a call on the other channel is turned away
            servicer.gate = asyncio.Event()
            servicer.started.clear()
            held = stub.Ping(ping_pb2.PingRequest())
            await servicer.started.wait()
            await expect_status(
                stub.Ping(ping_pb2.PingRequest()),
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                reason=BULKHEAD_FULL,
            )
            servicer.gate.set()
            await held
            assert breaker.state(PING) == "closed"  # the bulkhead's rejection is not a failure

            down = ping_pb2.PingRequest(error_code=1)
            for _ in range(2):
                await expect_status(stub.Ping(down), grpc.StatusCode.UNAVAILABLE)
            assert breaker.state(PING) == "open"
            await expect_status(
                stub.Ping(ping_pb2.PingRequest()), grpc.StatusCode.UNAVAILABLE, reason=CIRCUIT_OPEN
            )
            gauge = {"target": server.address, "method": PING}
            assert registry.get_sample_value("grpckit_client_circuit_state", gauge) == 2
