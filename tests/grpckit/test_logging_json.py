"""The rpc record rendered straight into configure_logging()'s JSON line buffer."""

from __future__ import annotations

import asyncio
import json
import logging as stdlib_logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
import structlog

from grpckit import configure_logging, get_logger
from grpckit.errors import not_found
from grpckit.interceptors import logging
from grpckit.logs import LineSink, flush_logs, json_sink
from grpckit.testing import PingServicer, serve_in_process
from grpckit.testing.api.v1 import ping_pb2


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = stdlib_logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    flush_logs()
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()


def records(capsys: pytest.CaptureFixture[str], event: str = "rpc") -> list[dict[str, Any]]:
    flush_logs()
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line]
    return [line for line in lines if line["event"] == event]


class Missing(PingServicer):
    async def Ping(self, request: ping_pb2.PingRequest, context: Any) -> Any:
        raise not_found("no such ping", resource_type="ping", resource_name="p-1")


pytestmark = pytest.mark.usefixtures("restore_logging")


async def test_unary_record_has_every_field(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", service="orders")
    assert json_sink() is not None
    async with serve_in_process(PingServicer(), interceptors=[logging()]) as server:
        metadata = (("x-request-id", "req-1"), ("authorization", "Bearer s3cret"))
        await server.ping.Ping(ping_pb2.PingRequest(message="hi"), metadata=metadata)
    [record] = records(capsys)
    assert record["timestamp"].endswith("Z") and len(record["timestamp"]) == 27
    assert (record["level"], record["logger"]) == ("info", "grpckit.rpc")
    assert record["service"] == "grpckit.testing.v1.PingService"
    assert (record["method"], record["kind"], record["code"]) == ("Ping", "unary", "OK")
    assert isinstance(record["duration_ms"], float) and record["duration_ms"] > 0
    assert record["peer"].startswith("ipv4:127.0.0.1:")
    assert record["request_id"] == "req-1"
    assert record["metadata"]["authorization"] == "[redacted]"
    assert record["metadata"]["x-request-id"] == "req-1"
    assert "s3cret" not in json.dumps(record)
    assert "msgs_sent" not in record and "message" not in record and "trace_id" not in record


async def test_stream_and_error_records(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info")
    async with serve_in_process(PingServicer(), interceptors=[logging()]) as server:
        call = server.ping.PingServerStream(ping_pb2.PingServerStreamRequest(count=3))
        assert len([r async for r in call]) == 3

        async def requests() -> AsyncIterator[ping_pb2.PingClientStreamRequest]:
            for _ in range(4):
                yield ping_pb2.PingClientStreamRequest(message="m")

        await server.ping.PingClientStream(requests())
    async with serve_in_process(Missing(), interceptors=[logging()]) as server:
        with pytest.raises(grpc.aio.AioRpcError):
            await server.ping.Ping(ping_pb2.PingRequest(), metadata=(("k-bin", b"\x00\x01"),))
    server_stream, client_stream, failed = records(capsys)
    assert (server_stream["msgs_received"], server_stream["msgs_sent"]) == (1, 3)
    assert (client_stream["msgs_received"], client_stream["msgs_sent"]) == (4, 1)
    assert (failed["code"], failed["level"]) == ("NOT_FOUND", "info")
    assert (failed["message"], failed["reason"]) == ("no such ping", "NOT_FOUND")
    assert failed["metadata"]["k-bin"] == "<2 bytes>"


async def test_level_threshold_and_context_variables(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("warning")
    structlog.contextvars.bind_contextvars(tenant="t-1", code="not overridden")
    try:
        async with serve_in_process(PingServicer(), interceptors=[logging()]) as server:
            await server.ping.Ping(ping_pb2.PingRequest())  # info: filtered out
            with pytest.raises(grpc.aio.AioRpcError):
                await server.ping.Ping(ping_pb2.PingRequest(error_code=13))
    finally:
        structlog.contextvars.clear_contextvars()
    [record] = records(capsys)
    assert (record["code"], record["level"]) == ("INTERNAL", "error")
    assert record["tenant"] == "t-1"


async def test_same_keys_as_through_structlog(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info")
    slow = logging(get_logger("grpckit.rpc"))  # a structlog logger: the structlog path
    for interceptor in (logging(), slow):
        async with serve_in_process(PingServicer(), interceptors=[interceptor]) as server:
            await server.ping.Ping(ping_pb2.PingRequest(), metadata=(("x-request-id", "r"),))
    fast, through_structlog = records(capsys)
    assert fast.keys() == through_structlog.keys()
    varying = {"timestamp", "duration_ms", "peer"}
    assert {k: v for k, v in fast.items() if k not in varying} == {
        k: v for k, v in through_structlog.items() if k not in varying
    }


async def test_trace_and_span_ids_of_the_current_span(capsys: pytest.CaptureFixture[str]) -> None:
    sdk = pytest.importorskip("opentelemetry.sdk.trace")
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from grpckit.interceptors._tracing import tracing

    exporter = InMemorySpanExporter()
    provider = sdk.TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    configure_logging("info")
    interceptors = [tracing(provider), logging()]
    async with serve_in_process(PingServicer(), interceptors=interceptors) as server:
        await server.ping.Ping(ping_pb2.PingRequest())
    [record] = records(capsys)
    [span] = exporter.get_finished_spans()
    assert record["trace_id"] == f"{span.context.trace_id:032x}"
    assert record["span_id"] == f"{span.context.span_id:016x}"


class Written:
    """A stream that tells when something was written."""

    def __init__(self) -> None:
        self.text = ""
        self.written = asyncio.Event()

    def write(self, text: str) -> int:
        self.text += text
        self.written.set()
        return len(text)

    def flush(self) -> None:
        pass


async def test_sink_batches_lines_until_its_timer() -> None:
    stream = Written()
    sink = LineSink(stream, flush_interval=0.01)  # type: ignore[arg-type]
    sink.write("a\n")
    sink.write("b\n")
    assert stream.text == ""  # buffered inside the loop
    await asyncio.wait_for(stream.written.wait(), timeout=5)
    assert stream.text == "a\nb\n"  # one write for the batch


def test_sink_writes_at_once_outside_an_event_loop() -> None:
    stream = Written()
    LineSink(stream).write("now\n")  # type: ignore[arg-type]
    assert stream.text == "now\n"


async def test_stdlib_records_and_rpc_lines_keep_their_order(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("info")
    async with serve_in_process(PingServicer(), interceptors=[logging()]) as server:
        await server.ping.Ping(ping_pb2.PingRequest())
        stdlib_logging.getLogger("plain").warning("after the call")
    flush_logs()
    events = [json.loads(line)["event"] for line in capsys.readouterr().err.splitlines()]
    assert events.index("rpc") < events.index("after the call")
