"""PingServicer: the reference implementation of grpckit.testing.v1.PingService."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc

from grpckit.errors import StatusError
from grpckit.testing.api.v1 import ping_pb2, ping_pb2_grpc

__all__ = ["PING_SERVICE", "PingServicer"]

#: The descriptor to pass to ``App.add_service``.
PING_SERVICE = ping_pb2.DESCRIPTOR.services_by_name["PingService"]

_CODES = {code.value[0]: code for code in grpc.StatusCode}
if TYPE_CHECKING:
    Context = grpc.aio.ServicerContext[Any, Any]


class PingServicer(ping_pb2_grpc.PingServiceServicer):
    """Echo service for tests. Records what happened so tests can assert on it.

    ``error_code`` fails with that code (message ``"ping failed: <message>"``), ``sleep_ms``
    sleeps, ``echo_metadata`` echoes request metadata (initial metadata for text keys,
    trailing metadata for all keys). ``cancelled`` is set when a call is cancelled;
    ``started`` when a handler begins.

    Example::

        async with serve_in_process(PingServicer()) as server:
            reply = await server.ping.Ping(ping_pb2.PingRequest(message="hi"))
    """

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.calls = 0

    async def _before(self, request: Any, context: Context) -> None:
        self.calls += 1
        self.started.set()
        if request.echo_metadata:
            await _echo(context)
        if request.sleep_ms:
            try:
                await asyncio.sleep(request.sleep_ms / 1000)
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        if request.error_code:
            raise StatusError(_CODES[request.error_code], f"ping failed: {request.message}")

    async def Ping(self, request: ping_pb2.PingRequest, context: Context) -> ping_pb2.PingResponse:
        await self._before(request, context)
        return ping_pb2.PingResponse(message=request.message, index=0)

    async def PingServerStream(
        self, request: ping_pb2.PingServerStreamRequest, context: Context
    ) -> AsyncIterator[ping_pb2.PingServerStreamResponse]:
        error_code, request.error_code = request.error_code, 0
        for index in range(request.count):
            await self._before(request, context)
            request.echo_metadata = False
            yield ping_pb2.PingServerStreamResponse(message=request.message, index=index)
        if error_code:
            raise StatusError(_CODES[error_code], f"ping failed: {request.message}")

    async def PingClientStream(
        self, request_iterator: AsyncIterator[ping_pb2.PingClientStreamRequest], context: Context
    ) -> ping_pb2.PingClientStreamResponse:
        messages: list[str] = []
        try:
            async for request in request_iterator:
                await self._before(request, context)
                messages.append(request.message)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return ping_pb2.PingClientStreamResponse(message=",".join(messages), index=len(messages))

    async def PingBidi(
        self, request_iterator: AsyncIterator[ping_pb2.PingBidiRequest], context: Context
    ) -> AsyncIterator[ping_pb2.PingBidiResponse]:
        index = 0
        try:
            async for request in request_iterator:
                await self._before(request, context)
                yield ping_pb2.PingBidiResponse(message=request.message, index=index)
                index += 1
        except asyncio.CancelledError:
            self.cancelled.set()
            raise


async def _echo(context: Context) -> None:
    metadata = tuple(context.invocation_metadata() or ())
    echoed = tuple((k, v) for k, v in metadata if k.startswith("x-"))
    text = tuple((k, v) for k, v in echoed if not k.endswith("-bin"))
    await context.send_initial_metadata(text)
    context.set_trailing_metadata(echoed)
