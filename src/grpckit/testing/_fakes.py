"""Fakes for unit-testing interceptors without a server."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, NoReturn

import grpc

from grpckit.call import CallInfo, RpcKind

__all__ = ["FakeServicerContext", "fake_call"]


class FakeServicerContext:
    """Just enough of ``grpc.aio.ServicerContext`` for grpckit's adapter and interceptors.

    Records what the code under test did: ``initial_metadata``, ``trailers``, ``code``,
    ``details``, ``compression``, ``aborted``.

    Example: ``ctx = FakeServicerContext(metadata=[("authorization", "Bearer t")], timeout=1)``
    """

    def __init__(
        self,
        *,
        metadata: Sequence[tuple[str, str | bytes]] = (),
        peer: str = "ipv4:127.0.0.1:50000",
        timeout: float | None = None,
    ) -> None:
        self._metadata = tuple(metadata)
        self._peer = peer
        self._deadline = None if timeout is None else time.time() + timeout
        self.initial_metadata: tuple[tuple[str, str | bytes], ...] | None = None
        self.trailers: tuple[tuple[str, str | bytes], ...] = ()
        self._code: grpc.StatusCode | None = None
        self._details = ""
        self.compression: grpc.Compression | None = None
        self.aborted = False

    def invocation_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return self._metadata

    def peer(self) -> str:
        return self._peer

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(self._deadline - time.time(), 0.0)

    async def send_initial_metadata(self, metadata: Sequence[tuple[str, str | bytes]]) -> None:
        if self.initial_metadata is not None:
            raise grpc.aio.UsageError("Send initial metadata failed: already sent")
        self.initial_metadata = tuple(metadata)

    def set_trailing_metadata(self, metadata: Sequence[tuple[str, str | bytes]]) -> None:
        self.trailers = tuple(metadata)

    def trailing_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return self.trailers

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def set_details(self, details: str) -> None:
        self._details = details

    def details(self) -> str:
        return self._details

    def set_compression(self, compression: grpc.Compression) -> None:
        self.compression = compression

    async def abort(
        self,
        code: grpc.StatusCode,
        details: str = "",
        trailing_metadata: Sequence[tuple[str, str | bytes]] = (),
    ) -> NoReturn:
        self.aborted = True
        self._code, self._details = code, details
        self.trailers = tuple(trailing_metadata) or self.trailers
        raise grpc.aio.AbortError("Locally aborted.")


def fake_call(
    full_method: str = "/grpckit.testing.v1.PingService/Ping",
    *,
    request: Any = None,
    kind: RpcKind = RpcKind.UNARY,
    context: FakeServicerContext | None = None,
) -> CallInfo:
    """A :class:`CallInfo` over a :class:`FakeServicerContext`, to drive an interceptor.

    Example::

        call = fake_call(context=FakeServicerContext(metadata=[("x-request-id", "r1")]))
        await logging().intercept(call, handler)
    """
    service, _, method = full_method.lstrip("/").rpartition("/")
    ctx: Any = context if context is not None else FakeServicerContext()
    return CallInfo(full_method, service, method, kind, ctx, request=request)
