"""Transparency: the gRPC interop test cases, over the full default chain.

Every case of doc/interop-test-descriptions.md that applies to a plaintext server, adapted to
the Ping service (sizes travel in ``count`` / ``message``): the chain
``recovery → tracing → logging → metrics → deadlines`` must not change what a call means.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging as stdlib_logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
import structlog

from grpckit import configure_logging
from grpckit.defaults import default_interceptors
from grpckit.logs import flush_logs
from grpckit.testing import PingServicer, TestServer, serve_in_process
from grpckit.testing.api.v1 import ping_pb2, ping_pb2_grpc

#: The status message of the interop case special_status_message.
SPECIAL_MESSAGE = "\t\ntest with whitespace\r\nand Unicode BMP ☺ and non-BMP 😈\t\n"
ECHO_INITIAL = "x-grpc-test-echo-initial"
ECHO_TRAILING = "x-grpc-test-echo-trailing-bin"
CODES = {code.value[0]: code for code in grpc.StatusCode}


class InteropServicer(PingServicer):
    """The interop server features on the Ping service.

    Ping: ``count`` is the response size, ``error_code`` + ``message`` the status to echo
    (through ``context.abort``), ``message == "gzip"`` compresses the response.
    PingServerStream: ``message`` lists the response sizes (``"31415,9"``).
    PingClientStream: answers with the summed request sizes in ``index``.
    PingBidi: one response of ``count`` bytes per request, then ``sleep_ms`` of work;
    ``error_code`` echoes a status.
    Echo Metadata (``x-grpc-test-echo-initial`` / ``x-grpc-test-echo-trailing-bin``) everywhere.
    """

    async def Ping(self, request: ping_pb2.PingRequest, context: Any) -> ping_pb2.PingResponse:
        await echo_metadata(context)
        if request.message == "gzip":
            context.set_compression(grpc.Compression.Gzip)
        if request.error_code:
            await context.abort(CODES[request.error_code], request.message)
        if request.sleep_ms:
            await self._before(request, context)
        return ping_pb2.PingResponse(message="x" * request.count)

    async def PingServerStream(
        self, request: ping_pb2.PingServerStreamRequest, context: Any
    ) -> AsyncIterator[ping_pb2.PingServerStreamResponse]:
        sizes = [int(size) for size in request.message.split(",") if size]
        for index, size in enumerate(sizes):
            yield ping_pb2.PingServerStreamResponse(message="x" * size, index=index)

    async def PingClientStream(
        self, request_iterator: AsyncIterator[ping_pb2.PingClientStreamRequest], context: Any
    ) -> ping_pb2.PingClientStreamResponse:
        self.started.set()
        total = 0
        try:
            async for request in request_iterator:
                total += len(request.message)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return ping_pb2.PingClientStreamResponse(index=total)

    async def PingBidi(
        self, request_iterator: AsyncIterator[ping_pb2.PingBidiRequest], context: Any
    ) -> AsyncIterator[ping_pb2.PingBidiResponse]:
        await echo_metadata(context)
        index = 0
        try:
            async for request in request_iterator:
                self.started.set()
                if request.error_code:
                    await context.abort(CODES[request.error_code], request.message)
                yield ping_pb2.PingBidiResponse(message="x" * request.count, index=index)
                index += 1
                if request.sleep_ms:  # busy after answering, e.g. preparing the next answer
                    await asyncio.sleep(request.sleep_ms / 1000)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise


async def echo_metadata(context: Any) -> None:
    metadata = dict(context.invocation_metadata() or ())
    if ECHO_INITIAL in metadata:
        await context.send_initial_metadata(((ECHO_INITIAL, metadata[ECHO_INITIAL]),))
    if ECHO_TRAILING in metadata:
        context.set_trailing_metadata(((ECHO_TRAILING, metadata[ECHO_TRAILING]),))


def full_chain() -> list[Any]:
    """The default chain with tracing recording into memory and a private metrics registry."""
    provider: Any = None
    try:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
    except ImportError:
        pass
    registry: Any = None
    try:
        import prometheus_client

        registry = prometheus_client.CollectorRegistry()
    except ImportError:
        pass
    return default_interceptors(tracer_provider=provider, registry=registry)


@pytest.fixture
def json_logging() -> Iterator[None]:
    """The production logging setup (JSON lines on stderr), undone afterwards."""
    root = stdlib_logging.getLogger()
    handlers, level = list(root.handlers), root.level
    configure_logging("info", service="interop")
    yield
    flush_logs()
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()


@pytest.fixture
def interop() -> InteropServicer:
    return InteropServicer()


@pytest.fixture
async def server(interop: InteropServicer, json_logging: None) -> AsyncIterator[TestServer]:
    async with serve_in_process(interop, interceptors=full_chain()) as running:
        yield running


def zeros(size: int) -> str:
    return "\0" * size


async def test_the_chain_under_test_is_complete() -> None:
    names = [type(i).__name__ for i in full_chain()]
    expected = ["_Recovery", "_Tracing", "_Logging", "_Metrics", "_Deadlines"]
    if importlib.util.find_spec("opentelemetry") is None:
        expected.remove("_Tracing")
    if importlib.util.find_spec("prometheus_client") is None:
        expected.remove("_Metrics")
    assert names == expected


async def test_empty_unary(server: TestServer) -> None:
    reply = await server.ping.Ping(ping_pb2.PingRequest())
    assert reply == ping_pb2.PingResponse()
    assert reply.ByteSize() == 0


async def test_large_unary(server: TestServer) -> None:
    reply = await server.ping.Ping(ping_pb2.PingRequest(message=zeros(271828), count=314159))
    assert len(reply.message) == 314159


async def test_client_streaming(server: TestServer) -> None:
    async def requests() -> AsyncIterator[ping_pb2.PingClientStreamRequest]:
        for size in (27182, 8, 1828, 45904):
            yield ping_pb2.PingClientStreamRequest(message=zeros(size))

    reply = await server.ping.PingClientStream(requests())
    assert reply.index == 74922


async def test_server_streaming(server: TestServer) -> None:
    call = server.ping.PingServerStream(
        ping_pb2.PingServerStreamRequest(message="31415,9,2653,58979")
    )
    sizes = [len(reply.message) async for reply in call]
    assert sizes == [31415, 9, 2653, 58979]
    assert await call.code() is grpc.StatusCode.OK


async def test_ping_pong(server: TestServer) -> None:
    call = server.ping.PingBidi()
    sizes = []
    for response_size, payload_size in ((31415, 27182), (9, 8), (2653, 1828), (58979, 45904)):
        await call.write(ping_pb2.PingBidiRequest(message=zeros(payload_size), count=response_size))
        reply = await call.read()  # the answer arrives before the next request is sent
        assert reply is not grpc.aio.EOF
        sizes.append(len(reply.message))
    await call.done_writing()
    assert await call.read() is grpc.aio.EOF
    assert sizes == [31415, 9, 2653, 58979]
    assert await call.code() is grpc.StatusCode.OK


async def test_empty_stream(server: TestServer) -> None:
    call = server.ping.PingBidi()
    await call.done_writing()
    assert [reply async for reply in call] == []
    assert await call.code() is grpc.StatusCode.OK


async def test_cancel_after_begin(server: TestServer, interop: InteropServicer) -> None:
    call = server.ping.PingClientStream()
    await call.wait_for_connection()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert await call.code() is grpc.StatusCode.CANCELLED


async def test_cancel_after_first_response(server: TestServer, interop: InteropServicer) -> None:
    # grpc.aio (bare too) hands a handler blocked on reading the request stream an EOF, not a
    # cancellation; so the handler is kept busy after its first answer.
    call = server.ping.PingBidi()
    request = ping_pb2.PingBidiRequest(message=zeros(27182), count=31415, sleep_ms=60_000)
    await call.write(request)
    reply = await call.read()
    assert reply is not grpc.aio.EOF and len(reply.message) == 31415
    call.cancel()
    assert await call.code() is grpc.StatusCode.CANCELLED
    await asyncio.wait_for(interop.cancelled.wait(), timeout=5)  # the handler saw it


async def test_timeout_on_sleeping_server(server: TestServer) -> None:
    call = server.ping.PingBidi(timeout=0.001)
    # the call may be over before the write: grpc.aio then refuses it
    with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
        await call.write(ping_pb2.PingBidiRequest(message=zeros(27182)))
    assert await call.code() is grpc.StatusCode.DEADLINE_EXCEEDED


async def test_deadline_cancels_the_sleeping_handler(
    server: TestServer, interop: InteropServicer
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await server.ping.Ping(ping_pb2.PingRequest(sleep_ms=60_000), timeout=0.5)
    assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    await asyncio.wait_for(interop.cancelled.wait(), timeout=5)


ECHOED = ((ECHO_INITIAL, "test_initial_metadata_value"), (ECHO_TRAILING, b"\xab\xab\xab"))


async def test_custom_metadata_unary(server: TestServer) -> None:
    call = server.ping.Ping(
        ping_pb2.PingRequest(message=zeros(271828), count=314159), metadata=ECHOED
    )
    assert len((await call).message) == 314159
    assert (ECHO_INITIAL, "test_initial_metadata_value") in tuple(await call.initial_metadata())
    assert (ECHO_TRAILING, b"\xab\xab\xab") in tuple(await call.trailing_metadata())


async def test_custom_metadata_bidi(server: TestServer) -> None:
    call = server.ping.PingBidi(metadata=ECHOED)
    await call.write(ping_pb2.PingBidiRequest(message=zeros(271828), count=314159))
    await call.done_writing()
    assert [len(r.message) async for r in call] == [314159]
    assert (ECHO_INITIAL, "test_initial_metadata_value") in tuple(await call.initial_metadata())
    assert (ECHO_TRAILING, b"\xab\xab\xab") in tuple(await call.trailing_metadata())


@pytest.mark.parametrize("message", ["test status message", SPECIAL_MESSAGE])
async def test_status_code_and_message_unary(server: TestServer, message: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await server.ping.Ping(ping_pb2.PingRequest(error_code=2, message=message))
    assert caught.value.code() is grpc.StatusCode.UNKNOWN
    assert caught.value.details() == message


@pytest.mark.parametrize("message", ["test status message", SPECIAL_MESSAGE])
async def test_status_code_and_message_bidi(server: TestServer, message: str) -> None:
    call = server.ping.PingBidi()
    await call.write(ping_pb2.PingBidiRequest(error_code=2, message=message))
    await call.done_writing()
    assert await call.code() is grpc.StatusCode.UNKNOWN
    assert await call.details() == message


async def test_special_status_message_from_a_status_error(json_logging: None) -> None:
    class Raising(PingServicer):
        async def Ping(self, request: ping_pb2.PingRequest, context: Any) -> Any:
            from grpckit import StatusError

            raise StatusError(grpc.StatusCode.UNKNOWN, SPECIAL_MESSAGE)

    async with serve_in_process(Raising(), interceptors=full_chain()) as server:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await server.ping.Ping(ping_pb2.PingRequest())
    assert caught.value.code() is grpc.StatusCode.UNKNOWN
    assert caught.value.details() == SPECIAL_MESSAGE


@pytest.mark.parametrize(
    "method",
    [
        "/grpckit.testing.v1.PingService/UnimplementedCall",  # unimplemented_method
        "/grpc.testing.UnimplementedService/UnimplementedCall",  # unimplemented_service
    ],
)
async def test_unimplemented(server: TestServer, method: str) -> None:
    call = server.channel.unary_unary(
        method, request_serializer=lambda b: b, response_deserializer=lambda b: b
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(b"")
    assert caught.value.code() is grpc.StatusCode.UNIMPLEMENTED


class WireTap:
    """A TCP proxy in front of a server noting, per HTTP/2 stream, the compressed-flag byte
    of the first gRPC message the server sends (1 = compressed)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.first_flag: dict[int, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> str:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self.port)
        for coro in (self._pipe(client_r, server_w, None), self._pipe(server_r, client_w, b"")):
            task = asyncio.create_task(coro)
            self._tasks.add(task)

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, frames: bytes | None
    ) -> None:
        try:
            while chunk := await reader.read(65536):
                writer.write(chunk)
                if frames is not None:
                    frames = self._parse(frames + chunk)
        finally:
            writer.close()

    def _parse(self, buffer: bytes) -> bytes:
        while len(buffer) >= 9:
            length = int.from_bytes(buffer[:3], "big")
            if len(buffer) < 9 + length:
                break
            kind, flags = buffer[3], buffer[4]
            stream = int.from_bytes(buffer[5:9], "big") & 0x7FFFFFFF
            payload = buffer[9 : 9 + length]
            if flags & 0x8:  # PADDED
                payload = payload[1 : len(payload) - payload[0]]
            if kind == 0 and payload and stream not in self.first_flag:  # DATA
                self.first_flag[stream] = payload[0]
            buffer = buffer[9 + length :]
        return buffer


async def test_response_compression_set_by_the_handler(server: TestServer) -> None:
    tap = WireTap(server.app.port)
    async with tap as address, grpc.aio.insecure_channel(address) as channel:
        stub = ping_pb2_grpc.PingServiceStub(channel)
        plain = await stub.Ping(ping_pb2.PingRequest(count=314159), timeout=5)
        gzipped = await stub.Ping(ping_pb2.PingRequest(message="gzip", count=314159), timeout=5)
    assert len(plain.message) == len(gzipped.message) == 314159
    assert tap.first_flag == {1: 0, 3: 1}  # stream 1 plain, stream 3 compressed on the wire
