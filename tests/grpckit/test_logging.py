from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from structlog.testing import capture_logs

from grpckit.interceptors import logging
from grpckit.testing import PingServicer, serve_in_process
from grpckit.testing.api.v1 import ping_pb2


def rpc_records(logs: list[Any]) -> list[dict[str, Any]]:
    return [r for r in logs if r["event"] == "rpc"]


async def test_one_record_per_unary_call_with_request_id_round_trip() -> None:
    async with serve_in_process(PingServicer(), interceptors=[logging()]) as server:
        with capture_logs() as logs:
            call = server.ping.Ping(
                ping_pb2.PingRequest(message="hi"),
                metadata=(("x-request-id", "req-1"), ("authorization", "Bearer s3cret")),
            )
            await call
            headers = await call.initial_metadata()
    assert ("x-request-id", "req-1") in tuple(headers or ())
    [record] = rpc_records(logs)
    assert record["service"] == "grpckit.testing.v1.PingService"
    assert record["method"] == "Ping"
    assert record["kind"] == "unary"
    assert record["code"] == "OK"
    assert record["log_level"] == "info"
    assert record["request_id"] == "req-1"
    assert isinstance(record["duration_ms"], float)
    assert str(record["peer"]).startswith("ipv4:127.0.0.1:")
    assert "msgs_sent" not in record
    metadata = record["metadata"]
    assert isinstance(metadata, dict) and metadata["authorization"] == "[redacted]"
    assert "s3cret" not in repr(record)


async def test_generated_request_id_is_returned_and_logged() -> None:
    async with serve_in_process(PingServicer(), interceptors=[logging()]) as server:
        with capture_logs() as logs:
            call = server.ping.Ping(ping_pb2.PingRequest(message="hi"))
            await call
            headers = dict(tuple(await call.initial_metadata() or ()))
    [record] = rpc_records(logs)
    assert headers["x-request-id"] == record["request_id"]
    assert len(str(record["request_id"])) == 32


async def test_stream_record_counts_messages() -> None:
    async with serve_in_process(PingServicer(), interceptors=[logging()]) as server:
        with capture_logs() as logs:
            responses = server.ping.PingServerStream(
                ping_pb2.PingServerStreamRequest(message="s", count=3)
            )
            assert len([r async for r in responses]) == 3

            async def requests() -> AsyncIterator[ping_pb2.PingClientStreamRequest]:
                for i in range(4):
                    yield ping_pb2.PingClientStreamRequest(message=str(i))

            await server.ping.PingClientStream(requests())
    server_stream, client_stream = rpc_records(logs)
    assert server_stream["kind"] == "server_stream"
    assert (server_stream["msgs_received"], server_stream["msgs_sent"]) == (1, 3)
    assert client_stream["kind"] == "client_stream"
    assert (client_stream["msgs_received"], client_stream["msgs_sent"]) == (4, 1)


@pytest.mark.parametrize(
    ("code", "level"),
    [
        (grpc.StatusCode.NOT_FOUND, "info"),
        (grpc.StatusCode.PERMISSION_DENIED, "warning"),
        (grpc.StatusCode.INTERNAL, "error"),
        (grpc.StatusCode.UNAVAILABLE, "error"),
    ],
)
async def test_level_follows_the_code(code: grpc.StatusCode, level: str) -> None:
    async with serve_in_process(PingServicer(), interceptors=[logging()]) as server:
        with capture_logs() as logs, pytest.raises(grpc.aio.AioRpcError):
            await server.ping.Ping(ping_pb2.PingRequest(message="m", error_code=code.value[0]))
    [record] = rpc_records(logs)
    assert record["code"] == code.name
    assert record["log_level"] == level
    assert record["message"] == "ping failed: m"


async def test_request_id_can_ride_in_trailers_instead() -> None:
    interceptors = [logging(echo_request_id="trailing")]
    async with serve_in_process(PingServicer(), interceptors=interceptors) as server:
        with capture_logs():
            call = server.ping.Ping(ping_pb2.PingRequest(), metadata=(("x-request-id", "t-1"),))
            await call
            assert "x-request-id" not in dict(tuple(await call.initial_metadata() or ()))
            assert ("x-request-id", "t-1") in tuple(await call.trailing_metadata() or ())


async def test_request_id_falls_back_to_trailers_when_the_handler_sent_headers() -> None:
    async with serve_in_process(PingServicer(), interceptors=[logging()]) as server:
        with capture_logs():
            call = server.ping.Ping(
                ping_pb2.PingRequest(echo_metadata=True), metadata=(("x-request-id", "h-1"),)
            )
            await call
            trailers = tuple(await call.trailing_metadata() or ())
    assert trailers.count(("x-request-id", "h-1")) >= 1
