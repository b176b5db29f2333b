"""The ``shop`` command: run the system, place an order, watch live metrics.

shop up                       every service on one gRPC port (default 50051)
shop up --distributed         every service its own supervised process (--replicas orders=2)
shop serve orders --port 0    one service; peers by --<peer>-addr or SHOP_<PEER>_ADDR
shop order                    place an order through the gateway and print the outcome
shop watch                    print the live metrics stream
shop token                    log in and print an access token
shop certs --out DIR          create a development CA and TLS certificates
shop audit [--verify]         print the audit trail; check its hash chains
shop verify                   check the invariants across services (orders, payments, stock)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from grpckit import configure_logging, get_logger
from shop.common.runtime import SAGA_STEPS, SERVICES, Settings
from shop.system import ProcessConfig, run


def _settings_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-dir",
        type=Path,
        default=Path("./.shop"),
        help="where SQLite files and keys live (default ./.shop)",
    )
    p.add_argument(
        "--database-url",
        default=None,
        help="e.g. postgresql+asyncpg://postgres@127.0.0.1:5432/shop (default: SQLite files in the data dir)",
    )
    p.add_argument(
        "--no-demo", action="store_true", help="do not seed the demo catalog into an empty store"
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1; 0.0.0.0 for all interfaces)",
    )
    p.add_argument(
        "--grace",
        type=float,
        default=10.0,
        help="seconds in-flight calls get to finish on SIGTERM (default 10)",
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument(
        "--call-timeout",
        type=float,
        default=5.0,
        help="default deadline of internal calls, seconds",
    )
    p.add_argument(
        "--fault-kill-after",
        choices=SAGA_STEPS,
        default=None,
        help="testing: SIGKILL the process right after this saga step is journaled",
    )
    p.add_argument(
        "--tls-dir",
        type=Path,
        default=None,
        help="serve TLS only, with the certificates `shop certs --out DIR` made (peers too)",
    )
    p.add_argument(
        "--mtls",
        action="store_true",
        help="with --tls-dir: require client certificates signed by DIR/ca.pem",
    )
    p.add_argument(
        "--redis-url",
        default=None,
        help="e.g. redis://127.0.0.1:6379/0: rate limits shared by every process (or SHOP_REDIS_URL)",
    )
    p.add_argument(
        "--nats-url",
        default=None,
        help="e.g. nats://127.0.0.1:4222: events between processes on NATS JetStream "
        "(or SHOP_NATS_URL; default: in-process bus)",
    )
    p.add_argument(
        "--service-key-file",
        type=Path,
        default=None,
        help="key signing service tokens, the same for every process "
        "(default DATA_DIR/keys/service-ed25519.pem; or SHOP_SERVICE_KEY_FILE)",
    )
    p.add_argument(
        "--no-rate-limits", action="store_true", help="turn rate limiting off (benchmarks)"
    )
    p.add_argument(
        "--login-limit-per-email",
        type=int,
        default=5,
        help="Login attempts per minute for one email (default 5)",
    )
    p.add_argument(
        "--login-limit-per-address",
        type=int,
        default=100,
        help="Login attempts per minute from one client address (default 100)",
    )
    p.add_argument(
        "--payment-latency-ms", type=int, default=0, help="simulated payment provider latency"
    )
    p.add_argument(
        "--fault-file",
        type=Path,
        default=None,
        help='testing: JSON knobs read while running, e.g. {"payment_latency_ms": 8000}',
    )
    p.add_argument(
        "--payment-failure-rate",
        type=float,
        default=0.0,
        help="share of provider calls failing with UNAVAILABLE (0..1)",
    )


def _settings(ns: argparse.Namespace, env: Mapping[str, str]) -> Settings:
    return Settings(
        data_dir=ns.data_dir,
        database_url=ns.database_url or env.get("SHOP_DATABASE_URL") or None,
        demo=not ns.no_demo,
        fault_kill_after=ns.fault_kill_after or env.get("SHOP_FAULT_KILL_AFTER") or None,
        fault_file=ns.fault_file,
        payment_latency_ms=ns.payment_latency_ms,
        payment_failure_rate=ns.payment_failure_rate,
        call_timeout=ns.call_timeout,
        grace_period=ns.grace,
        admin_email=env.get("SHOP_ADMIN_EMAIL") or None,
        admin_password=env.get("SHOP_ADMIN_PASSWORD") or None,
        tls_dir=ns.tls_dir,
        mtls=ns.mtls,
        redis_url=ns.redis_url or env.get("SHOP_REDIS_URL") or None,
        nats_url=ns.nats_url or env.get("SHOP_NATS_URL") or None,
        service_key_file=ns.service_key_file
        or (Path(env["SHOP_SERVICE_KEY_FILE"]) if env.get("SHOP_SERVICE_KEY_FILE") else None),
        rate_limits=not ns.no_rate_limits,
        login_limit_per_email=ns.login_limit_per_email,
        login_limit_per_address=ns.login_limit_per_address,
    )


def _client_args(p: argparse.ArgumentParser, *, what: str) -> None:
    p.add_argument(
        "--addr", default="localhost:50051", help=f"{what} address (default localhost:50051)"
    )
    p.add_argument(
        "--tls-dir",
        type=Path,
        default=None,
        help="connect with TLS: DIR/ca.pem, and DIR/client.pem as the client certificate",
    )
    p.add_argument("--token", default=None, help="an access token (or SHOP_TOKEN; default: log in)")
    p.add_argument("--email", default=None, help="log in as this user (or SHOP_EMAIL)")
    p.add_argument("--password", default=None, help="their password (or SHOP_PASSWORD)")


#: Settings flags passed on to the processes a supervisor starts: (flag, attribute).
_PASSED_ON = (
    ("--data-dir", "data_dir"),
    ("--database-url", "database_url"),
    ("--log-level", "log_level"),
    ("--grace", "grace"),
    ("--call-timeout", "call_timeout"),
    ("--fault-kill-after", "fault_kill_after"),
    ("--fault-file", "fault_file"),
    ("--payment-latency-ms", "payment_latency_ms"),
    ("--payment-failure-rate", "payment_failure_rate"),
    ("--tls-dir", "tls_dir"),
    ("--redis-url", "redis_url"),
    ("--nats-url", "nats_url"),
    ("--service-key-file", "service_key_file"),
    ("--login-limit-per-email", "login_limit_per_email"),
    ("--login-limit-per-address", "login_limit_per_address"),
)
_SWITCHES = (("--no-demo", "no_demo"), ("--mtls", "mtls"), ("--no-rate-limits", "no_rate_limits"))


def _passed_on(ns: argparse.Namespace) -> list[str]:
    """The settings flags of ``ns`` as arguments for a child ``shop serve``."""
    argv: list[str] = []
    for flag, attr in _PASSED_ON:
        value = getattr(ns, attr, None)
        if value is not None:
            argv += [flag, str(value)]
    argv += [flag for flag, attr in _SWITCHES if getattr(ns, attr, False)]
    return argv


async def _distributed(ns: argparse.Namespace, settings: Settings) -> int:
    from shop.supervisor import Supervisor, parse_replicas, plan

    replicas = parse_replicas(ns.replicas)
    if not settings.nats_url:
        get_logger("shop").warning(
            "supervisor.no_event_bus",
            hint="without --nats-url events stay inside each process: analytics sees none",
        )
    specs = plan(
        replicas,
        host=ns.host,
        gateway_port=ns.grpc_port,
        http_port=ns.http_port,
        passthrough=_passed_on(ns),
    )
    supervisor = Supervisor(specs, host=ns.host, grace=settings.grace_period)
    gateways = [s for s in specs if s.service == "gateway"]
    return await supervisor.run(
        {
            "mode": "distributed",
            "grpc_address": f"{ns.host}:{gateways[0].port}",
            "http_address": f"{ns.host}:{ns.http_port}" if ns.http_port else None,
            "replicas": replicas,
        }
    )


async def _workers(ns: argparse.Namespace, settings: Settings) -> int:
    from shop.supervisor import Supervisor, free_port, workers_plan

    port = ns.port or free_port(ns.host)
    peers = [
        arg for p in SERVICES if (addr := getattr(ns, f"{p}_addr")) for arg in (f"--{p}-addr", addr)
    ]
    specs = workers_plan(
        ns.service, ns.workers, port=port, http_port=ns.http_port, args=[*peers, *_passed_on(ns)]
    )
    supervisor = Supervisor(specs, host=ns.host, grace=settings.grace_period)
    return await supervisor.run(
        {
            "mode": "workers",
            "grpc_address": f"{ns.host}:{port}",
            "http_address": f"{ns.host}:{ns.http_port}" if ns.http_port else None,
            "workers": ns.workers,
        }
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shop", description="The shop reference system built on grpckit."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run every service in this process")
    up.add_argument(
        "--grpc-port",
        type=int,
        default=50051,
        help="gRPC port for all services (default 50051; 0 picks one)",
    )
    up.add_argument(
        "--http-port",
        type=int,
        default=8080,
        help="HTTP port for /healthz (default 8080; 0 picks one)",
    )
    up.add_argument(
        "--distributed",
        action="store_true",
        help="every service in its own process (a supervisor restarts those that die)",
    )
    up.add_argument(
        "--replicas",
        default="",
        metavar="SERVICE=N,...",
        help="with --distributed: processes per service, e.g. orders=2,payments=2",
    )
    _settings_args(up)

    serve = sub.add_parser("serve", help="run one service")
    serve.add_argument("service", choices=SERVICES)
    serve.add_argument("--port", type=int, default=0, help="gRPC port (default 0: pick a free one)")
    serve.add_argument(
        "--http-port", type=int, default=None, help="HTTP port for /healthz (default: none)"
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes serving this service on one port (SO_REUSEPORT; default 1)",
    )
    serve.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    for peer in SERVICES:
        serve.add_argument(
            f"--{peer}-addr",
            default=None,
            help=f"address of the {peer} service (or SHOP_{peer.upper()}_ADDR)",
        )
    _settings_args(serve)

    order = sub.add_parser("order", help="place an order through the gateway and print the outcome")
    _client_args(order, what="gateway")
    order.add_argument(
        "--users-addr", default=None, help="users service, when not at --addr (distributed mode)"
    )
    order.add_argument(
        "--catalog-addr",
        default=None,
        help="catalog service, when not at --addr (distributed mode)",
    )
    order.add_argument(
        "--user-id",
        default=None,
        help="order for this user (default: the logged-in user, or a new demo user)",
    )
    order.add_argument(
        "--item",
        action="append",
        default=[],
        metavar="PRODUCT[:QTY]",
        help="product id or sku, repeatable (default: the first catalog product)",
    )
    order.add_argument(
        "--card", default="4242424242424242", help="card number (4000000000000002 declines)"
    )
    order.add_argument("--idempotency-key", default="", help="reuse to retry safely")
    order.add_argument("--json", action="store_true", help="print the response as JSON")

    watch = sub.add_parser("watch", help="print the live metrics stream")
    _client_args(watch, what="analytics")
    watch.add_argument(
        "--users-addr", default=None, help="users service, when not at --addr (distributed mode)"
    )
    watch.add_argument("--window", type=float, default=10.0, help="window in seconds: 1, 10 or 60")
    watch.add_argument("--interval", type=float, default=1.0, help="seconds between snapshots")
    watch.add_argument(
        "--count", type=int, default=0, help="stop after this many snapshots (0: until Ctrl-C)"
    )
    watch.add_argument("--json", action="store_true", help="one JSON object per snapshot")

    token = sub.add_parser("token", help="log in and print an access token")
    _client_args(token, what="users service")
    token.add_argument("--json", action="store_true", help="print the whole Login response")

    certs = sub.add_parser("certs", help="create a development CA and TLS certificates")
    certs.add_argument("--out", type=Path, required=True, help="directory to write into")
    certs.add_argument(
        "--host",
        action="append",
        default=None,
        help="a name or IP the server certificate is valid for (repeatable; "
        "default localhost, 127.0.0.1, ::1)",
    )
    certs.add_argument("--force", action="store_true", help="overwrite existing files")

    verify = sub.add_parser(
        "verify", help="check the invariants across services; violations as JSON lines"
    )
    verify.add_argument("--data-dir", type=Path, default=Path("./.shop"))
    verify.add_argument("--database-url", default=None, help="as given to `shop up`")
    verify.add_argument(
        "--saga-timeout",
        type=float,
        default=Settings().saga_timeout,
        help="seconds an order may stay PENDING (default 30)",
    )

    audit = sub.add_parser("audit", help="print the audit trail as JSON lines; --verify checks it")
    audit.add_argument("--data-dir", type=Path, default=Path("./.shop"))
    audit.add_argument("--database-url", default=None, help="as given to `shop up`")
    audit.add_argument("--verify", action="store_true", help="check every hash chain")
    audit.add_argument(
        "--service", action="append", choices=SERVICES, default=None, help="only this service"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    env = os.environ
    try:
        if ns.command in ("up", "serve"):
            configure_logging(ns.log_level, json=True, service="shop")
            settings = _settings(ns, env)
            if ns.command == "up" and ns.distributed:
                return asyncio.run(_distributed(ns, settings))
            if ns.command == "up":
                if ns.replicas:
                    raise ValueError("--replicas needs --distributed")
                config = ProcessConfig(SERVICES, ns.host, ns.grpc_port, ns.http_port, {})
            else:
                peers = {
                    p: addr
                    for p in SERVICES
                    if (addr := getattr(ns, f"{p}_addr") or env.get(f"SHOP_{p.upper()}_ADDR"))
                }
                if ns.workers > 1:
                    return asyncio.run(_workers(ns, settings))
                config = ProcessConfig(
                    (ns.service,), ns.host, ns.port, ns.http_port, peers, reuse_port=ns.reuse_port
                )
            return asyncio.run(run(settings, config, env=env))
        if ns.command == "certs":
            from shop.certs import write_dev_certs

            hosts = tuple(ns.host) if ns.host else ("localhost", "127.0.0.1", "::1")
            for path in write_dev_certs(ns.out, hosts=hosts, force=ns.force):
                print(path)
            return 0
        if ns.command == "verify":
            from shop import verify

            return verify.run(
                ns.data_dir,
                ns.database_url or env.get("SHOP_DATABASE_URL") or None,
                saga_timeout=ns.saga_timeout,
            )
        if ns.command == "audit":
            from shop import audit_cli

            return audit_cli.run(
                ns.data_dir,
                ns.database_url or env.get("SHOP_DATABASE_URL") or None,
                verify=ns.verify,
                services=ns.service,
            )
        from shop import terminal

        if ns.command == "order":
            return asyncio.run(terminal.order(ns, env))
        if ns.command == "token":
            return asyncio.run(terminal.token(ns, env))
        return asyncio.run(terminal.watch(ns, env))
    except (ValueError, FileExistsError, FileNotFoundError, ConnectionError) as exc:
        print(f"shop: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
