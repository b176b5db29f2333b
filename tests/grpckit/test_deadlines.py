"""Deadlines: the deadline interceptor and propagation through dial()."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from grpckit import current_call, dial
from grpckit.interceptors import deadlines, logging
from grpckit.testing import PingServicer, serve_in_process
from grpckit.testing.api.v1 import ping_pb2, ping_pb2_grpc

#: gRPC encodes timeouts with a coarse unit and rounds up; allow for it.
SLACK = 0.05


class Relay(PingServicer):
    """``relay`` calls ``leaf`` on ``downstream``; ``leaf`` records what it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.downstream: Any = None
        self.leaf_remaining: list[float | None] = []
        self.leaf_request_ids: list[Any] = []

    async def Ping(self, request: ping_pb2.PingRequest, context: Any) -> ping_pb2.PingResponse:
        if request.message == "relay":
            return await self.downstream.Ping(ping_pb2.PingRequest(message="leaf"))  # type: ignore[no-any-return]
        self.leaf_remaining.append(context.time_remaining())
        call = current_call()
        self.leaf_request_ids.append(call.header("x-request-id") if call else None)
        return ping_pb2.PingResponse(message="leaf")


async def relay(
    *,
    client_timeout: float | None,
    interceptors: Any = (),
    downstream_default: float | None = 5.0,
    metadata: Any = None,
) -> Relay:
    servicer = Relay()
    async with (
        serve_in_process(servicer, interceptors=interceptors, default_timeout=None) as server,
        dial(server.address, default_timeout=downstream_default) as channel,
    ):
        servicer.downstream = ping_pb2_grpc.PingServiceStub(channel)
        await server.ping.Ping(
            ping_pb2.PingRequest(message="relay"), timeout=client_timeout, metadata=metadata
        )
    return servicer


async def test_downstream_call_gets_the_remaining_time_of_the_incoming_call() -> None:
    servicer = await relay(client_timeout=2.0)
    [remaining] = servicer.leaf_remaining
    # grpc rounds the wire timeout up, so the leaf may see a hair more than the caller sent;
    # without propagation it would see the downstream default of 5 s
    assert remaining is not None and 0 < remaining <= 2.0 + SLACK


async def test_downstream_call_without_incoming_deadline_gets_the_default_timeout() -> None:
    servicer = await relay(client_timeout=None, downstream_default=3.0)
    [remaining] = servicer.leaf_remaining
    assert remaining is not None and 2.0 < remaining <= 3.0 + SLACK


async def test_deadline_interceptor_bound_propagates_downstream() -> None:
    servicer = await relay(client_timeout=None, interceptors=[deadlines(default=1.5)])
    [remaining] = servicer.leaf_remaining
    assert remaining is not None and 0 < remaining <= 1.5 + SLACK


async def test_maximum_caps_a_generous_client_deadline() -> None:
    servicer = await relay(client_timeout=60.0, interceptors=[deadlines(default=None, maximum=1.0)])
    [remaining] = servicer.leaf_remaining
    assert remaining is not None and 0 < remaining <= 1.0 + SLACK


async def test_request_id_is_forwarded() -> None:
    servicer = await relay(
        client_timeout=2.0, interceptors=[logging()], metadata=(("x-request-id", "rid-7"),)
    )
    assert servicer.leaf_request_ids == ["rid-7"]


async def test_dial_applies_default_timeout_outside_handlers() -> None:
    servicer = Relay()
    async with serve_in_process(servicer, default_timeout=4.0) as server:
        await server.ping.Ping(ping_pb2.PingRequest(message="leaf"))
    [remaining] = servicer.leaf_remaining
    assert remaining is not None and 3.0 < remaining <= 4.0 + SLACK


async def test_bound_expiry_is_deadline_exceeded_and_cancels_the_handler() -> None:
    servicer = PingServicer()
    async with serve_in_process(
        servicer, interceptors=[deadlines(default=0.2)], default_timeout=None
    ) as server:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await server.ping.Ping(ping_pb2.PingRequest(sleep_ms=60_000))
    assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert servicer.cancelled.is_set()


async def test_detached_task_does_not_inherit_the_incoming_deadline() -> None:
    import asyncio

    from grpckit.call import detach_deadline

    class Detaching(Relay):
        async def Ping(self, request: ping_pb2.PingRequest, context: Any) -> ping_pb2.PingResponse:
            if request.message != "relay":
                return await super().Ping(request, context)

            async def detached() -> Any:
                detach_deadline()
                return await self.downstream.Ping(ping_pb2.PingRequest(message="leaf"))

            reply = await asyncio.create_task(detached())
            # Only the task's copy of the context was detached: this handler still propagates.
            assert current_call() is not None
            assert current_call().propagate_deadline  # type: ignore[union-attr]
            return reply  # type: ignore[no-any-return]

    servicer = Detaching()
    async with (
        serve_in_process(servicer, interceptors=[logging()], default_timeout=None) as server,
        dial(server.address, default_timeout=4.0) as channel,
    ):
        servicer.downstream = ping_pb2_grpc.PingServiceStub(channel)
        await server.ping.Ping(
            ping_pb2.PingRequest(message="relay"), timeout=1.0, metadata=(("x-request-id", "r-9"),)
        )
    [remaining] = servicer.leaf_remaining
    assert remaining is not None and remaining > 3.0
    assert servicer.leaf_request_ids == ["r-9"]  # the request id still travels
