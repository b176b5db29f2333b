from __future__ import annotations

from typing import Any

import grpc
import pytest
from structlog.testing import capture_logs

from grpckit import StatusError
from grpckit.interceptors import recovery
from grpckit.testing import PingServicer, serve_in_process
from grpckit.testing.api.v1 import ping_pb2


class Buggy(PingServicer):
    async def Ping(self, request: ping_pb2.PingRequest, context: Any) -> ping_pb2.PingResponse:
        raise ValueError("db password is hunter2")


async def failing_call(*interceptors: Any) -> grpc.aio.AioRpcError:
    async with serve_in_process(Buggy(), interceptors=interceptors) as server:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await server.ping.Ping(ping_pb2.PingRequest(message="x"))
    return caught.value


async def test_unexpected_exception_becomes_internal_with_error_id() -> None:
    with capture_logs() as logs:
        rpc_error = await failing_call(recovery())
    err = StatusError.from_rpc_error(rpc_error)
    assert err.code is grpc.StatusCode.INTERNAL
    assert err.message == "internal error"
    assert err.reason == "INTERNAL"
    assert err.error_info is not None
    error_id = err.error_info.metadata["error_id"]
    assert error_id
    assert "hunter2" not in repr(rpc_error.trailing_metadata())
    assert "hunter2" not in (rpc_error.details() or "")
    [record] = [r for r in logs if r["event"] == "rpc.unexpected_error"]
    assert record["error_id"] == error_id
    assert record["log_level"] == "error"
    assert isinstance(record["exc_info"], ValueError)


async def test_without_recovery_the_adapter_still_hides_the_exception() -> None:
    with capture_logs():
        rpc_error = await failing_call()
    assert rpc_error.code() is grpc.StatusCode.INTERNAL
    assert rpc_error.details() == "internal error"
    assert StatusError.from_rpc_error(rpc_error).reason == "INTERNAL"


async def test_status_errors_pass_through_recovery() -> None:
    async with serve_in_process(PingServicer(), interceptors=[recovery()]) as server:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await server.ping.Ping(ping_pb2.PingRequest(error_code=5))
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND


async def test_recovery_log_carries_the_trace_of_the_failed_call() -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from grpckit.interceptors import tracing

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with capture_logs() as logs:
        await failing_call(recovery(), tracing(provider))
    [span] = exporter.get_finished_spans()
    [record] = [r for r in logs if r["event"] == "rpc.unexpected_error"]
    assert record["trace_id"] == format(span.context.trace_id, "032x")
    assert record["span_id"] == format(span.context.span_id, "016x")
