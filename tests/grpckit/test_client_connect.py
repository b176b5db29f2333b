"""connect(): targets, service config merging, round_robin, client-side health checking, pools."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from grpckit import App, ServerConfig
from grpckit.client import ChannelPool, MethodPolicy, connect, dial, service_config
from grpckit.client._connect import _merged_config, channel_target, keepalive_options
from grpckit.testing import PING_SERVICE, PingServicer, ping_service, serve_in_process
from grpckit.testing.api.v1 import ping_pb2, ping_pb2_grpc

PING = PING_SERVICE.full_name
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Named(PingServicer):
    """Answers with its name; records the peers (client connections) it saw."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.peers: set[str] = set()

    async def Ping(self, request: ping_pb2.PingRequest, context: Any) -> ping_pb2.PingResponse:
        self.calls += 1
        self.peers.add(context.peer())
        return ping_pb2.PingResponse(message=self.name)


class Backend:
    """An App serving a :class:`Named` Ping whose health follows ``healthy``."""

    def __init__(self, name: str, healthy: bool = True) -> None:
        self.servicer = Named(name)
        self.healthy = healthy
        self.app = App(ServerConfig(grace_period=0.1), name=name)
        service = ping_service(self.servicer)
        self.app.add_service(service.add_to_server, service.servicer, service.descriptor)
        self.app.add_health_check(PING, self._check, interval=0.02)

    async def _check(self) -> bool:
        return self.healthy


@contextlib.asynccontextmanager
async def backends(*healthy: bool) -> AsyncIterator[list[Backend]]:
    started = [Backend(f"backend-{i}", ok) for i, ok in enumerate(healthy)]
    for backend in started:
        await backend.app.start()
    try:
        yield started
    finally:
        for backend in started:
            await backend.app.stop(grace=0)


async def landed(stub: Any, calls: int) -> Counter[str]:
    """Which backend answered each of ``calls`` calls."""
    seen: Counter[str] = Counter()
    for _ in range(calls):
        seen[(await stub.Ping(ping_pb2.PingRequest())).message] += 1
    return seen


async def until_only(stub: Any, name: str, window: int = 6) -> None:
    """Call until ``window`` calls in a row land on ``name`` (the client saw a health change)."""
    async with asyncio.timeout(5):
        while (await landed(stub, window)) != Counter({name: window}):
            pass


# -- targets and options ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("10.0.0.1:50051,10.0.0.2:50052", "ipv4:10.0.0.1:50051,10.0.0.2:50052"),
        (["10.0.0.1:1", "10.0.0.2:2"], "ipv4:10.0.0.1:1,10.0.0.2:2"),
        (" [::1]:1 , [::2]:2 ", "ipv6:[::1]:1,[::2]:2"),
        ("dns:///catalog:50051", "dns:///catalog:50051"),
        ("ipv4:10.0.0.1:1,10.0.0.2:2", "ipv4:10.0.0.1:1,10.0.0.2:2"),
        ("localhost:50051", "localhost:50051"),
        (["catalog:50051"], "catalog:50051"),
        ("unix:/run/catalog.sock", "unix:/run/catalog.sock"),
    ],
)
def test_channel_target(target: str | list[str], expected: str) -> None:
    assert channel_target(target) == expected


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("catalog:1,orders:2", "dns:///catalog:1"),
        ("10.0.0.1:1,[::1]:2", "mix"),
        ("10.0.0.1,10.0.0.2:2", "host:port"),
        ("10.0.0.1:1,::1:2", "brackets"),
        ([], "empty"),
    ],
)
def test_bad_static_lists(target: str | list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        channel_target(target)


def test_config_gets_round_robin_and_health_checking() -> None:
    config = service_config(default=MethodPolicy(timeout=2.0))
    merged = json.loads(_merged_config(config, None, "pkg.Service"))
    assert merged["methodConfig"] == json.loads(config)["methodConfig"]
    assert merged["loadBalancingConfig"] == [{"round_robin": {}}]
    assert merged["healthCheckConfig"] == {"serviceName": "pkg.Service"}
    assert json.loads(_merged_config(None, "pick_first", None)) == {
        "loadBalancingConfig": [{"pick_first": {}}]
    }
    own = service_config(load_balancing="round_robin")
    assert json.loads(_merged_config(own, None, "")) == {
        "loadBalancingConfig": [{"round_robin": {}}],
        "healthCheckConfig": {"serviceName": ""},
    }


@pytest.mark.parametrize(
    ("config", "load_balancing", "health", "message"),
    [
        (None, "pick_first", "", "round_robin"),
        (service_config(load_balancing="pick_first"), None, "", "round_robin"),
        (service_config(load_balancing="round_robin"), "round_robin", None, "twice"),
        (
            service_config(load_balancing="round_robin", health_check_service="a"),
            None,
            "b",
            "twice",
        ),
        ("[]", None, None, "JSON object"),
        (None, "random", None, "load_balancing"),
    ],
)
def test_conflicting_configs_are_rejected(
    config: str | None, load_balancing: str | None, health: str | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        _merged_config(config, load_balancing, health)


def test_keepalive_matches_the_server_permit() -> None:
    assert dict(keepalive_options(30.0)) == {
        "grpc.keepalive_time_ms": 30_000,
        "grpc.keepalive_timeout_ms": 20_000,
        "grpc.keepalive_permit_without_calls": 1,
        "grpc.http2.max_pings_without_data": 0,
    }
    assert keepalive_options(None) == []
    with pytest.raises(ValueError, match="refuse"):
        keepalive_options(5.0)
    with pytest.raises(ValueError, match="pool_size"):
        connect("127.0.0.1:1", pool_size=0)


# -- real servers -----------------------------------------------------------------------------


async def test_round_robin_spreads_calls_over_a_static_list() -> None:
    async with (
        backends(True, True) as (a, b),
        connect(f"{a.app.address},{b.app.address}") as channel,
    ):
        stub = ping_pb2_grpc.PingServiceStub(channel)
        async with asyncio.timeout(5):  # until both connections are up
            while len(await landed(stub, 2)) < 2:
                pass
        assert await landed(stub, 10) == Counter({"backend-0": 5, "backend-1": 5})


async def test_health_checking_sends_nothing_to_a_not_serving_backend() -> None:
    async with backends(False, True) as (a, b):
        target = [a.app.address, b.app.address]
        async with connect(target, health_check_service=PING) as channel:
            stub = ping_pb2_grpc.PingServiceStub(channel)
            assert await landed(stub, 10) == Counter({"backend-1": 10})
            assert a.servicer.calls == 0  # reachable, but NOT_SERVING: never picked

            # the health of both flips: traffic follows, with no call to the sick one
            a.healthy, b.healthy = True, False
            async with dial(b.app.address) as direct:
                watch = health_pb2_grpc.HealthStub(direct).Watch(
                    health_pb2.HealthCheckRequest(service=PING), timeout=5
                )
                while (await watch.read()).status != NOT_SERVING:
                    pass
                watch.cancel()
            await until_only(stub, "backend-0")
            before = b.servicer.calls
            assert await landed(stub, 10) == Counter({"backend-0": 10})
            assert b.servicer.calls == before


async def test_without_health_checking_not_serving_backends_still_get_calls() -> None:
    async with (
        backends(False, True) as (a, b),
        connect([a.app.address, b.app.address]) as channel,
    ):
        stub = ping_pb2_grpc.PingServiceStub(channel)
        async with asyncio.timeout(5):
            while a.servicer.calls == 0:
                await landed(stub, 2)


async def test_pool_spreads_calls_over_its_own_connections() -> None:
    servicer = Named("only")
    async with serve_in_process(servicer) as server:
        channel = connect(server.address, pool_size=3, compression=grpc.Compression.Gzip)
        assert isinstance(channel, ChannelPool)
        async with channel:
            stub = ping_pb2_grpc.PingServiceStub(channel)  # made once, used for every call
            assert await landed(stub, 6) == Counter({"only": 6})
            assert len(servicer.peers) == 3
            await channel.channel_ready()
            assert channel.get_state() == grpc.ChannelConnectivity.READY
            stream = stub.PingServerStream(ping_pb2.PingServerStreamRequest(message="s", count=2))
            assert [r.index async for r in stream] == [0, 1]


async def test_a_single_channel_shares_one_connection() -> None:
    servicer = Named("only")
    async with serve_in_process(servicer) as server:
        async with connect(server.address, keepalive_time=10.0) as channel:
            assert not isinstance(channel, ChannelPool)
            assert await landed(ping_pb2_grpc.PingServiceStub(channel), 4) == Counter(only=4)
        assert len(servicer.peers) == 1
