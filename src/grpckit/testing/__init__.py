"""Test harness shipped with grpckit: the Ping service and an in-process server.

Example::

    from grpckit.testing import PingServicer, serve_in_process
    from grpckit.testing.api.v1 import ping_pb2

    async def test_ping() -> None:
        async with serve_in_process(PingServicer()) as server:
            reply = await server.ping.Ping(ping_pb2.PingRequest(message="hi"))
            assert reply.message == "hi"
"""

from grpckit.testing._assertions import expect_status
from grpckit.testing._fakes import FakeServicerContext, fake_call
from grpckit.testing._ping import PING_SERVICE, PingServicer
from grpckit.testing._server import Service, TestServer, ping_service, serve_in_process

__all__ = [
    "PING_SERVICE",
    "FakeServicerContext",
    "PingServicer",
    "Service",
    "TestServer",
    "expect_status",
    "fake_call",
    "ping_service",
    "serve_in_process",
]
