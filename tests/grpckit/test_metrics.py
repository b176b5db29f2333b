"""metrics: go-grpc-middleware's server and client Prometheus series, over a real server."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator

import grpc
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.openmetrics.parser import text_string_to_metric_families

import grpckit.metrics as grpckit_metrics
from grpckit.call import CallInfo
from grpckit.client import dial
from grpckit.client._metrics import client_metrics_interceptors
from grpckit.interceptors import recovery
from grpckit.interceptors._metrics import metrics
from grpckit.metrics import (
    OPENMETRICS_CONTENT_TYPE,
    TEXT_CONTENT_TYPE,
    code_label,
    render,
    trace_exemplar,
)
from grpckit.middleware import Next
from grpckit.testing import PingServicer, TestServer, expect_status, serve_in_process
from grpckit.testing.api.v1 import ping_pb2, ping_pb2_grpc

SERVICE = "grpckit.testing.v1.PingService"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


def value(registry: CollectorRegistry, name: str, method: str, kind: str, **extra: str) -> float:
    labels = {"grpc_type": kind, "grpc_service": SERVICE, "grpc_method": method, **extra}
    return registry.get_sample_value(name, labels) or 0.0


class Finished:
    """Sets ``event`` once a call has left the interceptors inside it (metrics recorded)."""

    def __init__(self) -> None:
        self.event = asyncio.Event()

    async def intercept(self, call: CallInfo, next_: Next) -> None:
        try:
            await next_(call)
        finally:
            self.event.set()


class Boom:
    async def intercept(self, call: CallInfo, next_: Next) -> None:
        raise RuntimeError("bug inside the chain")


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def finished() -> Finished:
    return Finished()


@pytest.fixture
async def server(
    registry: CollectorRegistry, servicer: PingServicer, finished: Finished
) -> AsyncIterator[TestServer]:
    chain = [recovery(), finished, metrics(registry, exemplar=lambda: {"trace_id": TRACE_ID})]
    async with serve_in_process(servicer, interceptors=chain) as running:
        yield running


@pytest.fixture
async def client(
    server: TestServer, registry: CollectorRegistry
) -> AsyncIterator[ping_pb2_grpc.PingServiceAsyncStub]:
    async with dial(server.address, interceptors=client_metrics_interceptors(registry)) as channel:
        yield ping_pb2_grpc.PingServiceStub(channel)


async def test_unary_counts_once_with_code_only_on_handled(
    server: TestServer, registry: CollectorRegistry
) -> None:
    await server.ping.Ping(ping_pb2.PingRequest(message="hi"))

    assert value(registry, "grpc_server_started_total", "Ping", "unary") == 1
    assert value(registry, "grpc_server_handled_total", "Ping", "unary", grpc_code="OK") == 1
    assert value(registry, "grpc_server_msg_received_total", "Ping", "unary") == 1
    assert value(registry, "grpc_server_msg_sent_total", "Ping", "unary") == 1
    assert value(registry, "grpc_server_handling_seconds_count", "Ping", "unary") == 1
    inf = value(registry, "grpc_server_handling_seconds_bucket", "Ping", "unary", le="+Inf")
    assert inf == 1
    # go-grpc-middleware v2: grpc_code is on handled_total only, not on the histogram
    histogram = next(f for f in registry.collect() if f.name == "grpc_server_handling_seconds")
    assert all("grpc_code" not in sample.labels for sample in histogram.samples)


async def test_unary_error_is_handled_with_go_code_name_and_sends_nothing(
    server: TestServer, registry: CollectorRegistry
) -> None:
    await expect_status(
        server.ping.Ping(ping_pb2.PingRequest(error_code=5)), grpc.StatusCode.NOT_FOUND
    )

    assert value(registry, "grpc_server_handled_total", "Ping", "unary", grpc_code="NotFound") == 1
    assert value(registry, "grpc_server_handled_total", "Ping", "unary", grpc_code="OK") == 0
    assert value(registry, "grpc_server_msg_received_total", "Ping", "unary") == 1
    assert value(registry, "grpc_server_msg_sent_total", "Ping", "unary") == 0
    assert value(registry, "grpc_server_handling_seconds_count", "Ping", "unary") == 1


async def test_server_stream_counts_each_message_sent(
    server: TestServer, registry: CollectorRegistry
) -> None:
    replies = [
        r async for r in server.ping.PingServerStream(ping_pb2.PingServerStreamRequest(count=3))
    ]
    assert len(replies) == 3
    failing = server.ping.PingServerStream(ping_pb2.PingServerStreamRequest(count=2, error_code=9))
    with pytest.raises(grpc.aio.AioRpcError):
        async for _ in failing:
            pass

    kind, method = "server_stream", "PingServerStream"
    assert value(registry, "grpc_server_started_total", method, kind) == 2
    assert value(registry, "grpc_server_msg_received_total", method, kind) == 2
    assert value(registry, "grpc_server_msg_sent_total", method, kind) == 5
    assert value(registry, "grpc_server_handled_total", method, kind, grpc_code="OK") == 1
    failed = value(
        registry, "grpc_server_handled_total", method, kind, grpc_code="FailedPrecondition"
    )
    assert failed == 1


async def test_client_stream_counts_each_message_received(
    server: TestServer, registry: CollectorRegistry
) -> None:
    requests = [ping_pb2.PingClientStreamRequest(message=str(i)) for i in range(4)]
    reply = await server.ping.PingClientStream(iter(requests))
    assert reply.index == 4

    kind, method = "client_stream", "PingClientStream"
    assert value(registry, "grpc_server_msg_received_total", method, kind) == 4
    assert value(registry, "grpc_server_msg_sent_total", method, kind) == 1
    assert value(registry, "grpc_server_handled_total", method, kind, grpc_code="OK") == 1


async def test_bidi_counts_messages_as_they_pass(
    server: TestServer, registry: CollectorRegistry
) -> None:
    kind, method = "bidi_stream", "PingBidi"
    call = server.ping.PingBidi()
    for i in range(1, 4):
        await call.write(ping_pb2.PingBidiRequest(message=str(i)))
        assert (await call.read()).message == str(i)
        # counted while the stream is still open, not only when it ends
        assert value(registry, "grpc_server_msg_received_total", method, kind) == i
        assert value(registry, "grpc_server_msg_sent_total", method, kind) == i
    assert value(registry, "grpc_server_handled_total", method, kind, grpc_code="OK") == 0
    await call.done_writing()
    assert await call.code() == grpc.StatusCode.OK
    assert value(registry, "grpc_server_handled_total", method, kind, grpc_code="OK") == 1


async def test_cancelled_call_is_handled_as_canceled(
    server: TestServer, servicer: PingServicer, registry: CollectorRegistry, finished: Finished
) -> None:
    call = server.ping.Ping(ping_pb2.PingRequest(sleep_ms=30_000))
    await servicer.started.wait()
    call.cancel()
    await finished.event.wait()

    assert value(registry, "grpc_server_handled_total", "Ping", "unary", grpc_code="Canceled") == 1
    assert value(registry, "grpc_server_msg_sent_total", "Ping", "unary") == 0


async def test_unexpected_exception_is_counted_as_internal(registry: CollectorRegistry) -> None:
    async with serve_in_process(PingServicer(), interceptors=[metrics(registry), Boom()]) as srv:
        await expect_status(srv.ping.Ping(ping_pb2.PingRequest()), grpc.StatusCode.INTERNAL)

    assert value(registry, "grpc_server_handled_total", "Ping", "unary", grpc_code="Internal") == 1


async def test_client_metrics_for_all_four_kinds(
    client: ping_pb2_grpc.PingServiceAsyncStub, registry: CollectorRegistry
) -> None:
    await client.Ping(ping_pb2.PingRequest(message="a"))
    await expect_status(
        client.Ping(ping_pb2.PingRequest(error_code=7)), grpc.StatusCode.PERMISSION_DENIED
    )
    stream = client.PingServerStream(ping_pb2.PingServerStreamRequest(count=3))
    assert [r.index async for r in stream] == [0, 1, 2]
    requests = [ping_pb2.PingClientStreamRequest(message=m) for m in "xy"]
    assert (await client.PingClientStream(iter(requests))).message == "x,y"
    bidi = client.PingBidi()
    for m in "pq":
        await bidi.write(ping_pb2.PingBidiRequest(message=m))
        assert (await bidi.read()).message == m
    await bidi.done_writing()
    assert await bidi.code() == grpc.StatusCode.OK

    def client_value(name: str, method: str, kind: str, **extra: str) -> float:
        return value(registry, f"grpc_client_{name}", method, kind, **extra)

    assert client_value("started_total", "Ping", "unary") == 2
    assert client_value("handled_total", "Ping", "unary", grpc_code="OK") == 1
    assert client_value("handled_total", "Ping", "unary", grpc_code="PermissionDenied") == 1
    assert client_value("msg_sent_total", "Ping", "unary") == 2
    assert client_value("msg_received_total", "Ping", "unary") == 1
    assert client_value("handling_seconds_count", "Ping", "unary") == 2
    expected = {
        ("PingServerStream", "server_stream"): (1, 3),
        ("PingClientStream", "client_stream"): (2, 1),
        ("PingBidi", "bidi_stream"): (2, 2),
    }
    for (method, kind), (sent, received) in expected.items():
        assert client_value("handled_total", method, kind, grpc_code="OK") == 1, method
        assert client_value("msg_sent_total", method, kind) == sent, method
        assert client_value("msg_received_total", method, kind) == received, method
        assert client_value("handling_seconds_count", method, kind) == 1, method


async def test_client_metrics_keep_the_call_transparent(
    client: ping_pb2_grpc.PingServiceAsyncStub, registry: CollectorRegistry
) -> None:
    metadata = (("x-trace-me", "yes"), ("x-blob-bin", b"\x00\x01"))
    call = client.Ping(ping_pb2.PingRequest(message="m", echo_metadata=True), metadata=metadata)
    assert (await call).message == "m"
    assert ("x-trace-me", "yes") in tuple(await call.initial_metadata())
    assert ("x-blob-bin", b"\x00\x01") in tuple(await call.trailing_metadata())

    stream = client.PingServerStream(
        ping_pb2.PingServerStreamRequest(count=2, echo_metadata=True), metadata=metadata
    )
    assert (await stream.read()).index == 0  # read() works through the counting wrapper
    assert (await stream.read()).index == 1
    assert await stream.read() is grpc.aio.EOF
    assert ("x-blob-bin", b"\x00\x01") in tuple(await stream.trailing_metadata())

    writer = client.PingClientStream()  # the write() API
    for m in "abc":
        await writer.write(ping_pb2.PingClientStreamRequest(message=m))
    await writer.done_writing()
    assert (await writer).message == "a,b,c"
    assert value(registry, "grpc_client_msg_sent_total", "PingClientStream", "client_stream") == 3


async def test_client_cancel_is_canceled(
    client: ping_pb2_grpc.PingServiceAsyncStub, servicer: PingServicer, registry: CollectorRegistry
) -> None:
    call = client.Ping(ping_pb2.PingRequest(sleep_ms=30_000))
    await servicer.started.wait()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    canceled = value(registry, "grpc_client_handled_total", "Ping", "unary", grpc_code="Canceled")
    assert canceled == 1


async def test_exemplar_carries_the_trace_id_in_openmetrics_only(
    server: TestServer, registry: CollectorRegistry
) -> None:
    await server.ping.Ping(ping_pb2.PingRequest())

    content_type, body = render(registry, accept="application/openmetrics-text; version=1.0.0")
    assert content_type == OPENMETRICS_CONTENT_TYPE
    assert f'# {{trace_id="{TRACE_ID}"}}' in body.decode()
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    buckets = [s for s in families["grpc_server_handling_seconds"].samples if s.exemplar]
    assert [s.exemplar.labels for s in buckets] == [{"trace_id": TRACE_ID}]

    content_type, body = render(registry)
    assert content_type == TEXT_CONTENT_TYPE
    assert b"trace_id" not in body


async def test_exemplars_are_rate_limited_per_bucket(registry: CollectorRegistry) -> None:
    taken: list[int] = []

    def exemplar() -> dict[str, str]:
        taken.append(1)
        return {"trace_id": TRACE_ID}

    async with serve_in_process(
        PingServicer(), interceptors=[metrics(registry, exemplar=exemplar)]
    ) as srv:
        for _ in range(5):
            await srv.ping.Ping(ping_pb2.PingRequest())
    assert value(registry, "grpc_server_handled_total", "Ping", "unary", grpc_code="OK") == 5
    assert 1 <= len(taken) < 5


def test_trace_exemplar_is_none_without_opentelemetry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    monkeypatch.setattr(grpckit_metrics, "_otel_trace", None)
    assert trace_exemplar() is None


def test_trace_exemplar_reads_the_current_span(monkeypatch: pytest.MonkeyPatch) -> None:
    sdk = pytest.importorskip("opentelemetry.sdk.trace")
    monkeypatch.setattr(grpckit_metrics, "_otel_trace", None)
    assert trace_exemplar() is None  # no span current
    tracer = sdk.TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("rpc") as span:
        trace_id = format(span.get_span_context().trace_id, "032x")
        assert trace_exemplar() == {"trace_id": trace_id}


@pytest.mark.parametrize(
    ("accept", "openmetrics"),
    [
        ("", False),
        ("text/plain; version=0.0.4", False),
        ("*/*", False),
        ("application/openmetrics-text; version=1.0.0", True),
        (
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
            "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
            True,
        ),
        ("text/plain, application/openmetrics-text; q=0", False),
    ],
)
def test_render_negotiates_the_format(accept: str, openmetrics: bool) -> None:
    registry = CollectorRegistry()
    content_type, body = render(registry, accept=accept)
    assert content_type == (OPENMETRICS_CONTENT_TYPE if openmetrics else TEXT_CONTENT_TYPE)
    assert body.endswith(b"# EOF\n") is openmetrics


def test_every_status_code_has_its_go_name() -> None:
    labels = {code: code_label(code) for code in grpc.StatusCode}
    assert labels[grpc.StatusCode.CANCELLED] == "Canceled"
    assert labels[grpc.StatusCode.DEADLINE_EXCEEDED] == "DeadlineExceeded"
    assert len(set(labels.values())) == len(grpc.StatusCode)


def test_interceptors_on_one_registry_share_series(registry: CollectorRegistry) -> None:
    metrics(registry)
    metrics(registry)  # no "Duplicated timeseries"
    client_metrics_interceptors(registry)
    with pytest.raises(ValueError, match="buckets"):
        metrics(registry, buckets=(0.1, 1.0))


def test_grpckit_imports_without_prometheus_client() -> None:
    code = (
        "import sys; sys.modules['prometheus_client'] = None\n"
        "import grpckit, grpckit.interceptors, grpckit.metrics, grpckit.client\n"
        "from grpckit.interceptors._metrics import metrics\n"
        "try:\n    metrics()\nexcept ImportError as exc:\n    print(exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert "grpckit-shop[metrics]" in result.stdout


async def test_promtool_accepts_the_exposition(
    client: ping_pb2_grpc.PingServiceAsyncStub, registry: CollectorRegistry
) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI") == "true":
            pytest.fail("promtool is missing: CI must `apt-get install -y prometheus`")
        pytest.skip("promtool not installed (Debian: apt-get install -y prometheus)")
    await client.Ping(ping_pb2.PingRequest())
    await expect_status(
        client.Ping(ping_pb2.PingRequest(error_code=14)), grpc.StatusCode.UNAVAILABLE
    )
    _ = [r async for r in client.PingServerStream(ping_pb2.PingServerStreamRequest(count=2))]
    await client.PingClientStream(iter([ping_pb2.PingClientStreamRequest()]))
    bidi = client.PingBidi(iter([ping_pb2.PingBidiRequest()]))
    _ = [r async for r in bidi]

    _, body = render(registry)
    assert b'grpc_server_handled_total{grpc_code="Unavailable"' in body
    process = await asyncio.create_subprocess_exec(
        promtool,
        "check",
        "metrics",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(body), 60)
    assert process.returncode == 0, output.decode()
