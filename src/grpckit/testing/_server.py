"""serve_in_process: an App on 127.0.0.1:0 plus a channel to it, for tests."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor

from grpckit.client import dial
from grpckit.middleware import Interceptor
from grpckit.server import App, ServerConfig
from grpckit.testing._ping import PING_SERVICE, PingServicer
from grpckit.testing.api.v1 import ping_pb2_grpc

__all__ = ["Service", "TestServer", "ping_service", "serve_in_process"]


@dataclass(frozen=True)
class Service:
    """What ``App.add_service`` needs: the generated ``add_..._to_server``, servicer, descriptor."""

    add_to_server: Any
    servicer: object
    descriptor: ServiceDescriptor


def ping_service(servicer: PingServicer | None = None) -> Service:
    """The Ping service as a :class:`Service` (a fresh :class:`PingServicer` by default)."""
    return Service(
        ping_pb2_grpc.add_PingServiceServicer_to_server,
        servicer if servicer is not None else PingServicer(),
        PING_SERVICE,
    )


@dataclass
class TestServer:
    """A running in-process App and a channel to it."""

    __test__ = False  # not a pytest test class

    app: App
    channel: grpc.aio.Channel

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``."""
        return self.app.address

    @property
    def ping(self) -> ping_pb2_grpc.PingServiceAsyncStub:
        """A PingService stub on :attr:`channel`."""
        return ping_pb2_grpc.PingServiceStub(self.channel)


@contextlib.asynccontextmanager
async def serve_in_process(
    *services: Service | PingServicer,
    interceptors: Sequence[Interceptor] = (),
    config: ServerConfig | None = None,
    default_timeout: float | None = 5.0,
    app: App | None = None,
) -> AsyncIterator[TestServer]:
    """Start an App with ``services`` on a free port and yield it with a channel.

    A bare :class:`PingServicer` is accepted as a service. Pass ``app`` to configure it first
    (health checks, hooks); the App is stopped on exit with a short grace period.

    Example::

        async with serve_in_process(PingServicer(), interceptors=[recovery()]) as server:
            reply = await server.ping.Ping(ping_pb2.PingRequest(message="hi"))
    """
    if app is not None and (interceptors or config is not None):
        raise TypeError("pass interceptors and config to the App, not with app=")
    if app is None:
        app = App(config or ServerConfig(grace_period=1.0), interceptors=interceptors)
    for service in services:
        if isinstance(service, PingServicer):
            service = ping_service(service)
        app.add_service(service.add_to_server, service.servicer, service.descriptor)
    await app.start()
    channel = dial(app.address, default_timeout=default_timeout)
    try:
        yield TestServer(app, channel)
    finally:
        await channel.close(None)
        await app.stop()
