"""The composition root: builds a shop process from settings and runs it until a signal.

``shop up`` mounts every service on one gRPC server (peers reached over loopback gRPC, so deadlines
and status details behave as in production); ``shop serve <service>`` mounts one, its peers given
by address. Both expose the operations HTTP port and log one ``ready`` line once serving.
"""

from __future__ import annotations

import asyncio
import importlib
import signal
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from grpckit import App, ServerConfig, dial, get_logger
from grpckit.auth import missing_policies
from grpckit.client import client_metrics_interceptors, client_tracing_interceptors
from grpckit.defaults import default_interceptors
from grpckit.interceptors import audit, validation
from grpckit.metrics import render
from grpckit.tracing import configure_from_env
from shop.common.audit import AuditLog, ServiceAuditSink
from shop.common.bus import open_bus
from shop.common.runtime import SERVICES, ServiceContext, Settings
from shop.ops_http import OpsServer, Route, json_response
from shop.security import Security

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
    #: Share the port with sibling processes (SO_REUSEPORT): ``shop serve --workers``.
    reuse_port: bool = False


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
    if "users" not in config.services and "users" not in config.peers:
        raise ValueError(
            "pass --users-addr (or SHOP_USERS_ADDR): every service verifies access tokens with "
            "the users service's public keys and checks that accounts are still active"
        )
    name = "shop" if len(config.services) > 1 else f"shop-{config.services[0]}"
    provider = configure_from_env(name, env or {})
    chain = default_interceptors(
        tracing=provider is not None, tracer_provider=provider, metrics=True
    )
    security = Security(
        settings,
        serves_users="users" in config.services,
        service_name="shop" if len(config.services) > 1 else config.services[0],
    )
    ctx_ref: list[ServiceContext] = []
    security.connect(
        lambda: ctx_ref[0].internal_channel("users"), local=lambda: ctx_ref[0].account_check
    )
    audit_logs: dict[str, AuditLog] = {}
    app = App(
        ServerConfig(
            host=config.host,
            port=config.grpc_port,
            grace_period=settings.grace_period,
            tls=security.server_tls,
            reuse_port=config.reuse_port,
        ),
        name="shop",
        interceptors=[
            *chain,
            *security.interceptors(audit(ServiceAuditSink(audit_logs))),
            validation(),
        ],
    )
    if provider is not None:
        app.on_stop(lambda: asyncio.to_thread(provider.shutdown))  # runs last: flushes spans
    port = app.bind()
    local = f"127.0.0.1:{port}"
    peers = {s: config.peers.get(s, local) for s in SERVICES}
    bus = await open_bus(settings.nats_url, name=name)
    app.on_stop(bus.close)  # after ctx.close (hooks run in reverse): relays stop first
    ctx = ServiceContext(
        settings=settings,
        bus=bus,
        peers=peers,
        logger=log,
        client_interceptors=[
            *client_metrics_interceptors(),
            *(client_tracing_interceptors(provider) if provider is not None else []),
        ],
        client_tls=security.client_tls,
        service_token=security.service_token(),
        local_address=local,
    )
    ctx_ref.append(ctx)
    assert security.active_users is not None
    ctx.on_subject_revoked(security.active_users.forget)
    app.on_stop(ctx.close)
    for service in (s for s in MOUNT_ORDER if s in config.services):
        await _mount_fn(service)(app, ctx)
    missing = missing_policies(FULL_NAMES[s] for s in config.services)
    if missing:
        raise RuntimeError(f"methods without an access policy: {', '.join(missing)}")
    for service in config.services:
        audit_logs[FULL_NAMES[service]] = AuditLog(ctx.database(service), service)
    app.on_stop(_close_all(audit_logs.values()))  # before ctx.close: hooks run in reverse

    ops: OpsServer | None = None
    if config.http_port is not None:
        names = ["", *(FULL_NAMES[s] for s in config.services)]
        routes = {
            "/healthz": _healthz(local, names, security),
            "/metrics": _metrics,
            "/.well-known/jwks.json": _jwks(security),
        }
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
        tls="mtls" if settings.mtls else ("tls" if settings.tls_dir else "off"),
        get_a_token=_token_hint(config.host, port, settings),
    )
    await app.wait_for_termination()
    log.info("stopped")
    return 0


def _token_hint(host: str, port: int, settings: Settings) -> str:
    tls = f" --tls-dir {settings.tls_dir}" if settings.tls_dir else ""
    who = (
        f"--email {settings.admin_email} --password $SHOP_ADMIN_PASSWORD"
        if settings.admin_email and settings.admin_password
        else "--email YOU@example.com --password ... (create the account with "
        "shop.users.v1.UserService/CreateUser; SHOP_ADMIN_EMAIL/SHOP_ADMIN_PASSWORD make an admin)"
    )
    return f"shop token --addr {host}:{port}{tls} {who}; send it as 'authorization: Bearer <token>'"


async def _metrics(headers: Mapping[str, str]) -> tuple[int, str, bytes]:
    content_type, body = render(accept=headers.get("accept", ""))
    return 200, content_type, body


def _close_all(logs: Iterable[AuditLog]) -> Callable[[], Awaitable[None]]:
    async def close() -> None:
        for log in logs:
            await log.close()

    return close


def _jwks(security: Security) -> Route:
    async def route(_headers: Mapping[str, str]) -> tuple[int, str, bytes]:
        try:
            document = await security.jwks_document()
        except grpc.aio.AioRpcError as err:
            return json_response(503, {"error": f"users service unreachable: {err.code().name}"})
        return json_response(200, dict(document))

    return route


def _healthz(target: str, names: Sequence[str], security: Security) -> Route:
    async def route(_headers: Mapping[str, str]) -> tuple[int, str, bytes]:
        statuses: dict[str, str] = {}
        async with dial(target, tls=security.client_tls, default_timeout=2.0) as channel:
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
