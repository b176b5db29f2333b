"""The composition root: builds a shop process from settings and runs it until a signal.

``shop up`` mounts every service on one gRPC server (peers reached over loopback gRPC, so deadlines
and status details behave as in production); ``shop serve <service>`` mounts one, its peers given
by address. Both expose the operations HTTP port and log one ``ready`` line once serving.
"""

from __future__ import annotations

import asyncio
import importlib
import signal
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from grpckit import App, ServerConfig, get_logger
from grpckit.client import client_metrics_interceptors, client_tracing_interceptors
from grpckit.defaults import default_interceptors
from grpckit.interceptors import validation
from grpckit.metrics import render
from grpckit.tracing import configure_from_env
from shop.common.bus import InMemoryEventBus
from shop.common.runtime import SERVICES, ServiceContext, Settings
from shop.ops_http import OpsServer, Route, json_response

# analytics first: it subscribes to the bus before the outbox relays of orders/payments start.
MOUNT_ORDER = ("analytics", "users", "catalog", "orders", "payments", "gateway")
FULL_NAMES = {
    "users": "shop.users.v1.UserService",
    "catalog": "shop.catalog.v1.CatalogService",
    "orders": "shop.orders.v1.OrderService",
    "payments": "shop.payments.v1.PaymentService",
    "analytics": "shop.analytics.v1.AnalyticsService",
    "gateway": "shop.gateway.v1.GatewayService",
}

Mount = Callable[[App, ServiceContext], Awaitable[None]]


@dataclass(frozen=True)
class ProcessConfig:
    """What one shop process serves and where."""

    services: Sequence[str]
    host: str
    grpc_port: int
    http_port: int | None
    peers: Mapping[str, str]  # explicit peer addresses; the rest default to this process


def _mount_fn(service: str) -> Mount:
    module = importlib.import_module(f"shop.{service}.main")
    mount: Mount = module.mount
    return mount


async def run(
    settings: Settings, config: ProcessConfig, env: Mapping[str, str] | None = None
) -> int:
    """Serve until SIGINT/SIGTERM; returns the process exit code.

    ``env`` carries the standard ``OTEL_*`` variables; tracing is off unless they configure it.
    """
    log = get_logger("shop")
    name = "shop" if len(config.services) > 1 else f"shop-{config.services[0]}"
    provider = configure_from_env(name, env or {})
    chain = default_interceptors(
        tracing=provider is not None, tracer_provider=provider, metrics=True
    )
    app = App(
        ServerConfig(host=config.host, port=config.grpc_port, grace_period=settings.grace_period),
        name="shop",
        interceptors=[*chain, validation()],
    )
    if provider is not None:
        app.on_stop(lambda: asyncio.to_thread(provider.shutdown))  # runs last: flushes spans
    port = app.bind()
    local = f"127.0.0.1:{port}"
    peers = {s: config.peers.get(s, local) for s in SERVICES}
    ctx = ServiceContext(
        settings=settings,
        bus=InMemoryEventBus(),
        peers=peers,
        logger=log,
        client_interceptors=[
            *client_metrics_interceptors(),
            *(client_tracing_interceptors(provider) if provider is not None else []),
        ],
    )
    app.on_stop(ctx.close)
    for service in (s for s in MOUNT_ORDER if s in config.services):
        await _mount_fn(service)(app, ctx)

    ops: OpsServer | None = None
    if config.http_port is not None:
        names = ["", *(FULL_NAMES[s] for s in config.services)]
        routes = {"/healthz": _healthz(local, names), "/metrics": _metrics}
        ops = OpsServer(config.host, config.http_port, routes)
    await app.start()
    if ops is not None:
        await ops.start()
        app.on_stop(ops.stop)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, app.request_stop)
    log.info(
        "ready",
        grpc_address=f"{config.host}:{port}",
        http_address=f"{config.host}:{ops.port}" if ops else None,
        services=[FULL_NAMES[s] for s in config.services],
        data_dir=str(settings.data_dir),
        database="postgresql"
        if (settings.database_url or "").startswith("postgresql")
        else "sqlite",
    )
    await app.wait_for_termination()
    log.info("stopped")
    return 0


async def _metrics(headers: Mapping[str, str]) -> tuple[int, str, bytes]:
    content_type, body = render(accept=headers.get("accept", ""))
    return 200, content_type, body


def _healthz(target: str, names: Sequence[str]) -> Route:
    async def route(_headers: Mapping[str, str]) -> tuple[int, str, bytes]:
        statuses: dict[str, str] = {}
        async with grpc.aio.insecure_channel(target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            for name in names:
                try:
                    reply = await stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=2)
                    statuses[name or "overall"] = health_pb2.HealthCheckResponse.ServingStatus.Name(
                        reply.status
                    )
                except grpc.aio.AioRpcError as err:
                    statuses[name or "overall"] = f"UNREACHABLE ({err.code().name})"
        ok = all(v == "SERVING" for v in statuses.values())
        return json_response(
            200 if ok else 503, {"status": "ok" if ok else "unavailable", **statuses}
        )

    return route
