"""Tracing: server and client spans over a real server, propagation, configuration from env."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest

pytest.importorskip("opentelemetry.sdk.trace")

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from grpckit import CallInfo, Next, dial
from grpckit.client._tracing import client_tracing_interceptors
from grpckit.interceptors import recovery
from grpckit.interceptors._tracing import tracing
from grpckit.testing import PingServicer, TestServer, serve_in_process
from grpckit.testing.api.v1 import ping_pb2, ping_pb2_grpc
from grpckit.tracing import (
    INSTALL_HINT,
    configure_from_env,
    peer_attributes,
    target_attributes,
    trace_ids,
)

TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
PARENT_ID = 0x00F067AA0BA902B7
TRACEPARENT = f"00-{TRACE_ID:032x}-{PARENT_ID:016x}-01"
PING = "grpckit.testing.v1.PingService"


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield tracer_provider
    tracer_provider.shutdown()


@pytest.fixture
async def traced(servicer: PingServicer, provider: TracerProvider) -> AsyncIterator[TestServer]:
    async with serve_in_process(servicer, interceptors=[recovery(), tracing(provider)]) as srv:
        yield srv


@pytest.fixture
async def client(
    traced: TestServer, provider: TracerProvider
) -> AsyncIterator[ping_pb2_grpc.PingServiceAsyncStub]:
    interceptors = client_tracing_interceptors(provider, target=traced.address)
    async with dial(traced.address, interceptors=interceptors) as channel:
        yield ping_pb2_grpc.PingServiceStub(channel)


def spans(exporter: InMemorySpanExporter, kind: SpanKind | None = None) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if kind is None or s.kind is kind]


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


# --- server spans ------------------------------------------------------------------------------


async def test_server_span_carries_the_rpc_attributes(
    traced: TestServer, exporter: InMemorySpanExporter
) -> None:
    await traced.ping.Ping(ping_pb2.PingRequest(message="hi"))
    [span] = spans(exporter)
    assert span.name == f"{PING}/Ping"
    assert span.kind is SpanKind.SERVER
    assert span.status.status_code is StatusCode.UNSET
    attributes = attrs(span)
    assert attributes["rpc.system"] == "grpc"
    assert attributes["rpc.service"] == PING
    assert attributes["rpc.method"] == "Ping"
    assert attributes["rpc.grpc.status_code"] == 0
    assert attributes["network.peer.address"] == "127.0.0.1"
    assert isinstance(attributes["network.peer.port"], int)
    assert attributes["network.transport"] == "tcp"
    assert span.parent is None  # no traceparent: a new trace


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, False),
        (grpc.StatusCode.NOT_FOUND, False),
        (grpc.StatusCode.PERMISSION_DENIED, False),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, False),
        (grpc.StatusCode.UNKNOWN, True),
        (grpc.StatusCode.DEADLINE_EXCEEDED, True),
        (grpc.StatusCode.UNIMPLEMENTED, True),
        (grpc.StatusCode.INTERNAL, True),
        (grpc.StatusCode.UNAVAILABLE, True),
        (grpc.StatusCode.DATA_LOSS, True),
    ],
)
async def test_server_span_status_follows_the_server_side_error_codes(
    traced: TestServer, exporter: InMemorySpanExporter, code: grpc.StatusCode, error: bool
) -> None:
    with pytest.raises(grpc.RpcError):
        await traced.ping.Ping(ping_pb2.PingRequest(message="x", error_code=code.value[0]))
    [span] = spans(exporter)
    assert attrs(span)["rpc.grpc.status_code"] == code.value[0]
    assert span.status.status_code is (StatusCode.ERROR if error else StatusCode.UNSET)
    if error:
        assert span.status.description == f"{code.name}: ping failed: x"


class Crashing(PingServicer):
    async def Ping(self, request: ping_pb2.PingRequest, context: Any) -> ping_pb2.PingResponse:
        raise RuntimeError("secret detail")


async def test_unexpected_exception_is_recorded_on_the_span(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    async with serve_in_process(Crashing(), interceptors=[recovery(), tracing(provider)]) as srv:
        with pytest.raises(grpc.RpcError) as failure:
            await srv.ping.Ping(ping_pb2.PingRequest())
    assert failure.value.code() is grpc.StatusCode.INTERNAL
    [span] = spans(exporter)
    assert span.status.status_code is StatusCode.ERROR
    assert attrs(span)["rpc.grpc.status_code"] == grpc.StatusCode.INTERNAL.value[0]
    [event] = span.events
    assert event.name == "exception"
    assert dict(event.attributes or {})["exception.type"] == "RuntimeError"


async def test_incoming_traceparent_becomes_the_parent(
    traced: TestServer, exporter: InMemorySpanExporter
) -> None:
    await traced.ping.Ping(ping_pb2.PingRequest(), metadata=(("traceparent", TRACEPARENT),))
    [span] = spans(exporter)
    assert span.context.trace_id == TRACE_ID
    assert span.parent is not None
    assert span.parent.span_id == PARENT_ID
    assert span.parent.is_remote


class Recording:
    """An interceptor placed after tracing: records the span current while it runs."""

    def __init__(self) -> None:
        self.seen: list[Any] = []

    async def intercept(self, call: CallInfo, next_: Next) -> None:
        self.seen.append(trace.get_current_span().get_span_context())
        await next_(call)


class SeeingHandler(PingServicer):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, str] | None] = []

    async def Ping(self, request: ping_pb2.PingRequest, context: Any) -> ping_pb2.PingResponse:
        self.seen.append(trace_ids())
        return ping_pb2.PingResponse(message=request.message)


async def test_span_is_current_for_inner_interceptors_and_the_handler(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    inner, handler = Recording(), SeeingHandler()
    async with serve_in_process(handler, interceptors=[tracing(provider), inner]) as srv:
        await srv.ping.Ping(ping_pb2.PingRequest())
    [span] = spans(exporter)
    [inner_seen] = inner.seen
    assert inner_seen.span_id == span.context.span_id
    assert handler.seen == [(f"{span.context.trace_id:032x}", f"{span.context.span_id:016x}")]
    assert trace_ids() is None  # detached again outside the call


async def test_message_events_count_streamed_messages(
    servicer: PingServicer, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    chain = [tracing(provider, message_events=True)]
    async with serve_in_process(servicer, interceptors=chain) as srv:
        replies = [
            r async for r in srv.ping.PingServerStream(ping_pb2.PingServerStreamRequest(count=3))
        ]
        requests = (ping_pb2.PingClientStreamRequest(message=m) for m in "ab")
        await srv.ping.PingClientStream(requests)
    assert len(replies) == 3
    stream, client_stream = spans(exporter)
    assert [dict(e.attributes or {}) for e in stream.events] == [
        {"message.type": "SENT", "message.id": i} for i in (1, 2, 3)
    ]
    received = [dict(e.attributes or {})["message.type"] for e in client_stream.events]
    assert received == ["RECEIVED", "RECEIVED", "SENT"]


async def test_message_events_are_off_by_default(
    traced: TestServer, exporter: InMemorySpanExporter
) -> None:
    _ = [r async for r in traced.ping.PingServerStream(ping_pb2.PingServerStreamRequest(count=2))]
    [span] = spans(exporter)
    assert span.events == ()


# --- client spans and propagation --------------------------------------------------------------


def assert_pair(client: ReadableSpan, server: ReadableSpan, method: str) -> None:
    """``client`` is the CLIENT span of ``method`` and the direct parent of ``server``."""
    assert client.kind is SpanKind.CLIENT and server.kind is SpanKind.SERVER
    assert client.name == server.name == f"{PING}/{method}"
    assert attrs(client)["rpc.method"] == attrs(server)["rpc.method"] == method
    assert server.context.trace_id == client.context.trace_id
    assert server.parent is not None and server.parent.span_id == client.context.span_id


async def test_all_four_kinds_get_a_client_span_parent_of_the_server_span(
    traced: TestServer, client: ping_pb2_grpc.PingServiceAsyncStub, exporter: InMemorySpanExporter
) -> None:
    await client.Ping(ping_pb2.PingRequest(message="u"))
    _ = [r async for r in client.PingServerStream(ping_pb2.PingServerStreamRequest(count=2))]
    await client.PingClientStream(ping_pb2.PingClientStreamRequest(message=m) for m in "ab")
    bidi = client.PingBidi()
    await bidi.write(ping_pb2.PingBidiRequest(message="ping"))
    assert (await bidi.read()).message == "ping"
    await bidi.done_writing()
    assert await bidi.read() is grpc.aio.EOF
    assert await bidi.code() is grpc.StatusCode.OK
    clients, servers = spans(exporter, SpanKind.CLIENT), spans(exporter, SpanKind.SERVER)
    methods = ["Ping", "PingServerStream", "PingClientStream", "PingBidi"]
    assert [attrs(s)["rpc.method"] for s in clients] == methods
    for method, client_span, server_span in zip(methods, clients, servers, strict=True):
        assert_pair(client_span, server_span, method)
        assert attrs(client_span)["rpc.grpc.status_code"] == 0
        assert attrs(client_span)["server.address"] == "127.0.0.1"
        assert attrs(client_span)["server.port"] == int(traced.address.rsplit(":", 1)[1])
        assert client_span.status.status_code is StatusCode.UNSET
    assert len({s.context.trace_id for s in clients}) == 4  # no current span: one trace each


async def test_client_span_is_an_error_for_every_non_ok_code(
    client: ping_pb2_grpc.PingServiceAsyncStub, exporter: InMemorySpanExporter
) -> None:
    with pytest.raises(grpc.RpcError):
        await client.Ping(ping_pb2.PingRequest(message="x", error_code=5))  # NOT_FOUND
    [client_span] = spans(exporter, SpanKind.CLIENT)
    [server_span] = spans(exporter, SpanKind.SERVER)
    assert attrs(client_span)["rpc.grpc.status_code"] == 5
    assert client_span.status.status_code is StatusCode.ERROR
    assert client_span.status.description == "NOT_FOUND: ping failed: x"
    assert server_span.status.status_code is StatusCode.UNSET  # a client error, for the server


async def test_cancelled_stream_ends_both_spans_as_cancelled(
    servicer: PingServicer,
    client: ping_pb2_grpc.PingServiceAsyncStub,
    exporter: InMemorySpanExporter,
) -> None:
    call = client.PingBidi()
    await call.write(ping_pb2.PingBidiRequest(message="a", sleep_ms=10_000))
    await servicer.started.wait()
    call.cancel()
    await servicer.cancelled.wait()
    [client_span] = spans(exporter, SpanKind.CLIENT)
    assert attrs(client_span)["rpc.grpc.status_code"] == grpc.StatusCode.CANCELLED.value[0]
    assert client_span.status.status_code is StatusCode.ERROR


class Relay(PingServicer):
    """``outer`` calls ``inner`` on ``downstream`` (a traced channel back to this server)."""

    downstream: ping_pb2_grpc.PingServiceAsyncStub

    async def Ping(self, request: ping_pb2.PingRequest, context: Any) -> ping_pb2.PingResponse:
        if request.message == "outer":
            return await self.downstream.Ping(ping_pb2.PingRequest(message="inner"))
        return ping_pb2.PingResponse(message=request.message)


async def test_nested_call_continues_the_trace(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    relay = Relay()
    async with serve_in_process(relay, interceptors=[recovery(), tracing(provider)]) as srv:
        interceptors = client_tracing_interceptors(provider)
        async with dial(srv.address, interceptors=interceptors) as channel:
            relay.downstream = ping_pb2_grpc.PingServiceStub(channel)
            stub = ping_pb2_grpc.PingServiceStub(channel)
            tracer = provider.get_tracer("test")
            with tracer.start_as_current_span("request") as root:
                reply = await stub.Ping(ping_pb2.PingRequest(message="outer"))
    assert reply.message == "inner"
    finished = spans(exporter)
    assert {s.context.trace_id for s in finished} == {root.get_span_context().trace_id}
    outer_client, inner_client = spans(exporter, SpanKind.CLIENT)[::-1]  # inner ends first
    inner_server, outer_server = spans(exporter, SpanKind.SERVER)
    assert outer_client.parent is not None
    assert outer_client.parent.span_id == root.get_span_context().span_id
    assert_pair(outer_client, outer_server, "Ping")
    assert_pair(inner_client, inner_server, "Ping")
    assert inner_client.parent is not None
    assert inner_client.parent.span_id == outer_server.context.span_id


async def test_metadata_passes_untouched_beside_the_trace_context(
    client: ping_pb2_grpc.PingServiceAsyncStub,
) -> None:
    call = client.Ping(
        ping_pb2.PingRequest(echo_metadata=True),
        metadata=(("x-custom", "1"), ("x-data-bin", b"\x00\x01")),
    )
    await call
    assert ("x-custom", "1") in tuple(await call.initial_metadata())
    trailers = tuple(await call.trailing_metadata())
    assert ("x-custom", "1") in trailers and ("x-data-bin", b"\x00\x01") in trailers


class MetadataSeen(PingServicer):
    def __init__(self) -> None:
        super().__init__()
        self.keys: list[str] = []

    async def Ping(self, request: ping_pb2.PingRequest, context: Any) -> ping_pb2.PingResponse:
        self.keys = [k for k, _ in context.invocation_metadata() or ()]
        return ping_pb2.PingResponse()


async def test_without_a_recording_provider_nothing_is_added() -> None:
    servicer = MetadataSeen()
    noop = trace.NoOpTracerProvider()
    async with (
        serve_in_process(servicer, interceptors=[tracing(noop)]) as srv,
        dial(srv.address, interceptors=client_tracing_interceptors(noop)) as channel,
    ):
        await ping_pb2_grpc.PingServiceStub(channel).Ping(ping_pb2.PingRequest())
    assert "traceparent" not in servicer.keys


# --- attributes from addresses -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("peer", "expected"),
    [
        ("ipv4:10.0.0.1:5555", {"network.peer.address": "10.0.0.1", "network.peer.port": 5555}),
        ("ipv6:[::1]:5555", {"network.peer.address": "::1", "network.peer.port": 5555}),
        ("ipv6:%5B::1%5D:5555", {"network.peer.address": "::1", "network.peer.port": 5555}),
        ("unix:/tmp/s.sock", {"network.peer.address": "/tmp/s.sock"}),
        ("weird", {}),
    ],
)
def test_peer_attributes(peer: str, expected: dict[str, Any]) -> None:
    got = dict(peer_attributes(peer))
    got.pop("network.transport", None)
    assert got == expected


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("127.0.0.1:50051", {"server.address": "127.0.0.1", "server.port": 50051}),
        ("localhost:80", {"server.address": "localhost", "server.port": 80}),
        ("dns:///orders:443", {"server.address": "orders", "server.port": 443}),
        ("dns://8.8.8.8/orders:443", {"server.address": "orders", "server.port": 443}),
        ("ipv4:10.0.0.2:1", {"server.address": "10.0.0.2", "server.port": 1}),
        ("[::1]:7", {"server.address": "::1", "server.port": 7}),
        ("unix:///tmp/s.sock", {"server.address": "/tmp/s.sock"}),
        ("orders", {"server.address": "orders"}),
    ],
)
def test_target_attributes(target: str, expected: dict[str, Any]) -> None:
    assert dict(target_attributes(target)) == expected


# --- configuration from the environment --------------------------------------------------------


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"OTEL_SERVICE_NAME": "x"},
        {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"},
        {"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "console"},
    ],
)
def test_tracing_is_off_unless_configured(env: dict[str, str]) -> None:
    assert configure_from_env("shop", env, install=False) is None


def test_console_exporter_with_resource_and_sampler() -> None:
    env = {
        "OTEL_TRACES_EXPORTER": "console",
        "OTEL_SERVICE_NAME": "shop-eu",
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=test,team=a%20b",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.25",
    }
    provider = configure_from_env("shop", env, install=False)
    assert provider is not None
    try:
        resource = dict(provider.resource.attributes)
        assert resource["service.name"] == "shop-eu"
        assert resource["deployment.environment"] == "test"
        assert resource["team"] == "a b"
        assert resource["telemetry.sdk.language"] == "python"
        assert "0.25" in provider.sampler.get_description()
        assert provider.sampler.get_description().startswith("ParentBased")
    finally:
        provider.shutdown()


def test_an_otlp_endpoint_alone_turns_tracing_on() -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1", "OTEL_BSP_SCHEDULE_DELAY": "50"}
    provider = configure_from_env("orders", env, install=False)
    assert provider is not None
    try:
        assert dict(provider.resource.attributes)["service.name"] == "orders"
        assert provider.sampler.get_description().startswith("ParentBased{root:AlwaysOnSampler")
    finally:
        provider.shutdown()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER"),
        ({"OTEL_TRACES_EXPORTER": "console", "OTEL_TRACES_SAMPLER": "x"}, "OTEL_TRACES_SAMPLER"),
        (
            {"OTEL_TRACES_EXPORTER": "console", "OTEL_TRACES_SAMPLER_ARG": "2"},
            "OTEL_TRACES_SAMPLER_ARG",
        ),
        ({"OTEL_TRACES_EXPORTER": "console", "OTEL_BSP_MAX_QUEUE_SIZE": "-1"}, "OTEL_BSP"),
        ({"OTEL_TRACES_EXPORTER": "console", "OTEL_PROPAGATORS": "b3"}, "OTEL_PROPAGATORS"),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "PROTOCOL"),
        ({"OTEL_TRACES_EXPORTER": "console", "OTEL_RESOURCE_ATTRIBUTES": "novalue"}, "RESOURCE"),
    ],
)
def test_bad_configuration_fails_loudly(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        configure_from_env("shop", env, install=False)


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )


def test_install_sets_the_global_provider_and_propagators() -> None:
    result = run_python(
        "from opentelemetry import propagate, trace\n"
        "from grpckit.tracing import configure_from_env\n"
        "env = {'OTEL_TRACES_EXPORTER': 'console', 'OTEL_PROPAGATORS': 'tracecontext'}\n"
        "provider = configure_from_env('shop', env)\n"
        "assert trace.get_tracer_provider() is provider\n"
        "print(sorted(propagate.get_global_textmap().fields))\n"
        "provider.shutdown()\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['traceparent', 'tracestate']"


def test_grpckit_imports_without_opentelemetry() -> None:
    result = run_python(
        "import sys\n"
        "sys.modules['opentelemetry'] = None\n"
        "import grpckit, grpckit.tracing\n"
        "from grpckit.interceptors._tracing import tracing\n"
        "from grpckit.client._tracing import client_tracing_interceptors\n"
        "assert grpckit.tracing.trace_ids() is None\n"
        "assert grpckit.tracing.configure_from_env('x', {}) is None\n"
        "for make in (tracing, client_tracing_interceptors):\n"
        "    try:\n"
        "        make()\n"
        "    except ImportError as exc:\n"
        "        print(exc)\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [INSTALL_HINT, INSTALL_HINT]


def test_trace_ids_outside_a_span_is_none() -> None:
    assert trace_ids() is None


async def test_the_client_span_ends_by_the_time_the_call_returns(
    client: ping_pb2_grpc.PingServiceAsyncStub, exporter: InMemorySpanExporter
) -> None:
    """The span ends in grpc's done callback; callers (and these tests) may rely on it."""
    for count in range(1, 21):
        await client.Ping(ping_pb2.PingRequest())
        assert len(spans(exporter, SpanKind.CLIENT)) == count


async def test_server_address_fills_the_server_attributes(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    chain = [tracing(provider, server_address="dns:///shop.internal:50051")]
    async with serve_in_process(PingServicer(), interceptors=chain) as srv:
        await srv.ping.Ping(ping_pb2.PingRequest())
    [span] = spans(exporter)
    assert attrs(span)["server.address"] == "shop.internal"
    assert attrs(span)["server.port"] == 50051
