"""App lifecycle: health, reflection, graceful stop, hooks, signals."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from grpckit import App, ServerConfig, dial
from grpckit.call import NESTED_KEY
from grpckit.errors import StatusError
from grpckit.testing import PING_SERVICE, PingServicer, ping_service, serve_in_process
from grpckit.testing.api.v1 import ping_pb2, ping_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
PING = PING_SERVICE.full_name


class Gated(PingServicer):
    """Ping waits until ``release`` is set; records cancellation."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.arrived: dict[str, asyncio.Event] = {}

    def arrival(self, message: str) -> asyncio.Event:
        return self.arrived.setdefault(message, asyncio.Event())

    async def Ping(self, request: ping_pb2.PingRequest, context: Any) -> ping_pb2.PingResponse:
        self.started.set()
        self.arrival(request.message).set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return ping_pb2.PingResponse(message=request.message)


def add_ping(app: App, servicer: PingServicer) -> None:
    service = ping_service(servicer)
    app.add_service(service.add_to_server, service.servicer, service.descriptor)


async def test_graceful_stop_drains_in_flight_calls_and_reports_not_serving() -> None:
    servicer = Gated()
    async with serve_in_process(servicer) as server:
        health = health_pb2_grpc.HealthStub(server.channel)
        watch = health.Watch(health_pb2.HealthCheckRequest(service=PING), timeout=10)
        assert (await watch.read()).status == SERVING
        in_flight = server.ping.Ping(ping_pb2.PingRequest(message="drain me"))
        await servicer.started.wait()

        stopping = asyncio.create_task(server.app.stop(grace=10))
        assert (await watch.read()).status == NOT_SERVING
        watch.cancel()
        # While draining, new top-level calls are refused before any handler runs ...
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await server.ping.Ping(ping_pb2.PingRequest(message="new"), timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert StatusError.from_rpc_error(refused.value).reason == "DRAINING"
        assert "new" not in servicer.arrived
        # ... but nested calls (dial() marks them) still get in: running calls may need them.
        nested = server.ping.Ping(
            ping_pb2.PingRequest(message="nested"), timeout=10, metadata=((NESTED_KEY, "1"),)
        )
        await servicer.arrival("nested").wait()
        servicer.release.set()
        assert (await in_flight).message == "drain me"
        assert (await nested).message == "nested"
        await stopping
        with pytest.raises(grpc.aio.AioRpcError):  # stopped: no new calls
            await server.ping.Ping(ping_pb2.PingRequest(), wait_for_ready=False, timeout=2)
    assert not servicer.cancelled.is_set()


async def test_stop_cancels_calls_still_running_after_the_grace_period() -> None:
    servicer = Gated()
    async with serve_in_process(servicer) as server:
        in_flight = server.ping.Ping(ping_pb2.PingRequest())
        await servicer.started.wait()
        await server.app.stop(grace=0.05)
        await servicer.cancelled.wait()
        with pytest.raises(grpc.aio.AioRpcError):
            await in_flight


async def test_failing_health_check_makes_service_and_server_not_serving() -> None:
    app = App(ServerConfig(grace_period=1))
    healthy = {"db": True}

    async def db_ok() -> bool:
        return healthy["db"]

    async def broken() -> bool:
        raise ConnectionError("db down")

    app.add_health_check(PING, db_ok, interval=0.02)
    app.add_health_check("other.v1.Service", broken)
    async with serve_in_process(PingServicer(), app=app) as server:
        health = health_pb2_grpc.HealthStub(server.channel)

        async def check(service: str) -> Any:
            return (await health.Check(health_pb2.HealthCheckRequest(service=service))).status

        assert await check(PING) == SERVING
        assert await check("other.v1.Service") == NOT_SERVING
        assert await check("") == NOT_SERVING

        watch = health.Watch(health_pb2.HealthCheckRequest(service=PING))
        assert (await watch.read()).status == SERVING
        healthy["db"] = False
        assert (await watch.read()).status == NOT_SERVING
        assert await check(PING) == NOT_SERVING
        healthy["db"] = True
        assert (await watch.read()).status == SERVING
        watch.cancel()


async def test_reflection_lists_every_service(server: Any) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(server.channel)
    call = stub.ServerReflectionInfo()
    await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
    response = await call.read()
    names = {s.name for s in response.list_services_response.service}
    assert names == {
        PING,
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }
    await call.write(reflection_pb2.ServerReflectionRequest(file_containing_symbol=PING))
    assert (await call.read()).file_descriptor_response.file_descriptor_proto
    await call.done_writing()


async def test_bind_before_add_service_hooks_and_idempotent_stop() -> None:
    events: list[str] = []
    app = App(ServerConfig(grace_period=1), name="t")
    port = app.bind()
    assert app.bind() == port == app.port
    assert app.address == f"127.0.0.1:{port}"
    add_ping(app, PingServicer())

    def hook(name: str) -> Any:
        async def run() -> None:
            events.append(name)

        return run

    app.on_start(hook("start"))
    app.on_stop(hook("stop-1"))
    app.on_stop(hook("stop-2"))
    async with app, dial(app.address) as channel:
        reply = await ping_pb2_grpc.PingServiceStub(channel).Ping(ping_pb2.PingRequest(message="x"))
        assert reply.message == "x"
    await app.stop()
    assert events == ["start", "stop-2", "stop-1"]
    with pytest.raises(RuntimeError):
        add_ping(app, PingServicer())


async def test_serve_returns_after_sigterm() -> None:
    app = App(ServerConfig(grace_period=1))
    add_ping(app, PingServicer())
    serving = asyncio.create_task(app.serve())
    await app.wait_for_start()
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.wait_for(serving, 5)
    await app.wait_for_termination()


async def test_request_stop_is_thread_safe() -> None:
    app = App(ServerConfig(grace_period=1))
    add_ping(app, PingServicer())
    serving = asyncio.create_task(app.serve())
    await app.wait_for_start()
    thread = threading.Thread(target=app.request_stop)
    thread.start()
    thread.join()
    await asyncio.wait_for(serving, 5)


def test_bind_before_the_event_loop_runs() -> None:
    app = App(ServerConfig(grace_period=1))
    port = app.bind()
    add_ping(app, PingServicer())

    async def run() -> str:
        async with app, dial(app.address) as channel:
            stub = ping_pb2_grpc.PingServiceStub(channel)
            return (await stub.Ping(ping_pb2.PingRequest(message="early"))).message

    assert asyncio.run(run()) == "early"
    assert app.port == port


async def test_failing_start_hook_stops_the_app_and_raises() -> None:
    app = App(ServerConfig(grace_period=1))
    add_ping(app, PingServicer())
    stopped: list[str] = []

    async def broken() -> None:
        raise RuntimeError("migrations failed")

    async def cleanup() -> None:
        stopped.append("cleanup")

    app.on_start(broken)
    app.on_stop(cleanup)
    with pytest.raises(RuntimeError, match="migrations failed"):
        await app.start()
    await asyncio.wait_for(app.wait_for_termination(), 5)
    assert stopped == ["cleanup"]
