"""Hedging interceptor over a real server: the hedge beats a slow first copy; scope; failures."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool

from grpckit.client import dial, hedging_interceptors, idempotent_reads
from grpckit.errors import StatusError
from grpckit.testing import PingServicer, TestServer, expect_status, serve_in_process
from grpckit.testing.api.v1 import ping_pb2, ping_pb2_grpc

PING = "/grpckit.testing.v1.PingService/Ping"


class SlowFirst(PingServicer):
    """The first Ping hangs until cancelled (or fails with ``first_code``); later ones answer."""

    def __init__(self, first_code: grpc.StatusCode | None = None, *, all_hang: bool = False):
        super().__init__()
        self.first_code = first_code
        self.all_hang = all_hang

    async def Ping(self, request: ping_pb2.PingRequest, context: Any) -> ping_pb2.PingResponse:
        self.calls += 1
        attempt = self.calls
        if attempt == 1 and self.first_code is not None:
            raise StatusError(self.first_code, "first copy fails")
        if attempt == 1 or self.all_hang:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        return ping_pb2.PingResponse(message=f"attempt {attempt}")


async def call_through(server: TestServer, interceptors: list[Any], **kwargs: Any) -> Any:
    async with dial(server.address, interceptors=interceptors) as channel:
        stub = ping_pb2_grpc.PingServiceStub(channel)
        return await stub.Ping(ping_pb2.PingRequest(message="m"), **kwargs)


async def test_the_hedge_beats_a_slow_first_answer() -> None:
    servicer = SlowFirst()
    async with serve_in_process(servicer) as server:
        started = time.monotonic()
        reply = await call_through(server, hedging_interceptors(0.05, methods=lambda m: True))
        assert reply.message == "attempt 2"
        assert time.monotonic() - started < 2
        await asyncio.wait_for(servicer.cancelled.wait(), 5)  # the slow copy was cancelled
        assert servicer.calls == 2


async def test_methods_not_marked_no_side_effects_are_not_hedged(
    server: TestServer, servicer: PingServicer
) -> None:
    async with dial(server.address, interceptors=hedging_interceptors(0.01)) as channel:
        stub = ping_pb2_grpc.PingServiceStub(channel)
        reply = await stub.Ping(ping_pb2.PingRequest(message="slow", sleep_ms=150))
    assert reply.message == "slow"
    assert servicer.calls == 1  # a hedge would have arrived 140 ms before the answer


async def test_a_fatal_status_ends_the_call_at_once() -> None:
    servicer = SlowFirst(grpc.StatusCode.INVALID_ARGUMENT)
    async with serve_in_process(servicer) as server:
        interceptors = hedging_interceptors(10.0, methods=lambda m: True)
        await expect_status(call_through(server, interceptors), grpc.StatusCode.INVALID_ARGUMENT)
        assert servicer.calls == 1


async def test_a_non_fatal_failure_sends_the_hedge_now() -> None:
    servicer = SlowFirst(grpc.StatusCode.UNAVAILABLE)
    async with serve_in_process(servicer) as server:
        interceptors = hedging_interceptors(10.0, methods=lambda m: True)
        reply = await call_through(server, interceptors, timeout=5)  # not 10 s later
        assert reply.message == "attempt 2"


async def test_every_copy_failing_gives_the_last_error(
    server: TestServer, servicer: PingServicer
) -> None:
    interceptors = hedging_interceptors(0.01, max_attempts=3, methods=lambda m: True)
    async with dial(server.address, interceptors=interceptors) as channel:
        stub = ping_pb2_grpc.PingServiceStub(channel)
        request = ping_pb2.PingRequest(error_code=grpc.StatusCode.UNAVAILABLE.value[0])
        await expect_status(stub.Ping(request), grpc.StatusCode.UNAVAILABLE)
    assert servicer.calls == 3


async def test_copies_share_the_callers_deadline() -> None:
    servicer = SlowFirst(all_hang=True)
    async with serve_in_process(servicer) as server:
        interceptors = hedging_interceptors(0.05, methods=lambda m: True)
        started = time.monotonic()
        await expect_status(
            call_through(server, interceptors, timeout=0.3), grpc.StatusCode.DEADLINE_EXCEEDED
        )
        assert time.monotonic() - started < 1.0
        assert servicer.calls == 2


def test_idempotent_reads_reads_the_proto_option() -> None:
    pool = descriptor_pool.DescriptorPool()
    no_side_effects = descriptor_pb2.MethodOptions(
        idempotency_level=descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS
    )
    idempotent = descriptor_pb2.MethodOptions(
        idempotency_level=descriptor_pb2.MethodOptions.IDEMPOTENT
    )
    empty = ".google.protobuf.Empty"
    pool.Add(descriptor_pb2.FileDescriptorProto.FromString(_empty_proto()))
    pool.Add(
        descriptor_pb2.FileDescriptorProto(
            name="hedge_test.proto",
            package="hedge.v1",
            dependency=["google/protobuf/empty.proto"],
            service=[
                descriptor_pb2.ServiceDescriptorProto(
                    name="Catalog",
                    method=[
                        descriptor_pb2.MethodDescriptorProto(
                            name=name, input_type=empty, output_type=empty, options=options
                        )
                        for name, options in (
                            ("Get", no_side_effects),
                            ("Put", idempotent),
                            ("Buy", None),
                        )
                    ],
                )
            ],
        )
    )
    selected = idempotent_reads(pool)
    assert selected("/hedge.v1.Catalog/Get")
    assert not selected("/hedge.v1.Catalog/Put")
    assert not selected("/hedge.v1.Catalog/Buy")
    assert not selected("/hedge.v1.Catalog/Missing")
    assert not idempotent_reads()(PING)  # the default pool: Ping declares no idempotency


def _empty_proto() -> bytes:
    from google.protobuf import empty_pb2

    proto = descriptor_pb2.FileDescriptorProto()
    empty_pb2.DESCRIPTOR.CopyToProto(proto)
    return proto.SerializeToString()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"delay": 0}, "delay"),
        ({"delay": 0.1, "max_attempts": 1}, "max_attempts"),
        ({"delay": 0.1, "non_fatal_codes": [grpc.StatusCode.OK]}, "OK"),
    ],
)
def test_bad_settings(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        hedging_interceptors(**kwargs)
