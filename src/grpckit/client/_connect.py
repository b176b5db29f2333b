"""connect: a resilient channel to any target, on grpcio's native machinery.

:func:`connect` is :func:`grpckit.client.dial` plus what a production client wants on every
channel: a service config (per-method timeouts, ``retryPolicy``, ``retryThrottling``,
``waitForReady`` from :func:`service_config`), ``round_robin`` over every address of the target,
client-side health checking (grpc watches ``grpc.health.v1.Health/Watch`` on every backend and
sends nothing to a NOT_SERVING one), HTTP/2 keepalive, compression and, optionally, a pool of
channels with a connection each. grpckit's interceptors (breaker, bulkhead, hedging,
``RetryInfo``) go in ``interceptors``.

Targets: ``host:port`` and ``dns:///host:port`` (every A/AAAA record), grpc's own
``ipv4:a:p,b:p``, ``ipv6:[a]:p,[b]:p`` and ``unix:path``, or a static list of IP addresses,
``"10.0.0.1:50051,10.0.0.2:50051"`` or ``["10.0.0.1:50051", "10.0.0.2:50051"]``, turned into
the ``ipv4:`` / ``ipv6:`` form.

Example::

    config = service_config(default=MethodPolicy(timeout=2.0, retry=RetryPolicy()))
    channel = connect(
        "dns:///catalog:50051",
        config=config,
        health_check_service="shop.catalog.v1.CatalogService",
        pool_size=2,
        interceptors=[*breaker.interceptors(), *hedging_interceptors(0.05)],
    )
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Sequence
from typing import Any

import grpc

from grpckit.client._dial import dial
from grpckit.client._pool import ChannelPool
from grpckit.client._service_config import service_config, service_config_options
from grpckit.tls import ClientTls

__all__ = ["MIN_KEEPALIVE_TIME", "channel_target", "connect", "keepalive_options"]

#: The shortest client keepalive a grpckit server accepts: ``ServerConfig``'s
#: ``http2_min_recv_ping_interval_without_data_ms`` (10 s); pinging more often gets the
#: connection closed with ``too_many_pings``.
MIN_KEEPALIVE_TIME = 10.0
_POOL_INDEX = "grpckit.channel_pool_index"
_SCHEMES = ("dns:", "ipv4:", "ipv6:", "unix:", "unix-abstract:", "vsock:", "xds:")


def connect(
    target: str | Sequence[str],
    *,
    tls: ClientTls | None = None,
    config: str | None = None,
    load_balancing: str | None = None,
    health_check_service: str | None = None,
    keepalive_time: float | None = 30.0,
    keepalive_timeout: float = 20.0,
    compression: grpc.Compression | None = None,
    pool_size: int = 1,
    interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
    default_timeout: float | None = 5.0,
    options: Sequence[tuple[str, Any]] = (),
    reload_tls: bool = True,
) -> grpc.aio.Channel:
    """Open a resilient channel to ``target`` (see the module docs for the target forms).

    * ``config``: a service config JSON (:func:`service_config`); applied with retries on and
      DNS TXT configs ignored (:func:`service_config_options`).
    * ``load_balancing``: ``"round_robin"`` (the default unless ``config`` names a policy) or
      ``"pick_first"``.
    * ``health_check_service``: turns on client-side health checking of that service (``""``:
      the server's overall health); needs ``round_robin``.
    * ``keepalive_time`` / ``keepalive_timeout`` (seconds): ping the server after that long
      without activity, even without calls, and drop the connection when no ack comes in
      time. ``None`` turns keepalive off; at least :data:`MIN_KEEPALIVE_TIME`.
    * ``pool_size > 1``: a :class:`ChannelPool` of that many channels, each with its own
      connection(s); the ``interceptors`` (and the bulkhead or breaker behind them) are shared.
    * ``tls``, ``default_timeout``, ``compression``, ``reload_tls``: as for :func:`dial`;
      ``options`` are extra channel arguments (they win over the ones built here).

    Raises ``ValueError`` for a malformed static list, a conflicting ``config``, a short
    keepalive or ``pool_size < 1``.

    Example::

        channel = connect("10.0.0.1:50051,10.0.0.2:50051", health_check_service="")
        stub = catalog_pb2_grpc.CatalogServiceStub(channel)
    """
    if pool_size < 1:
        raise ValueError(f"pool_size must be >= 1: {pool_size}")
    resolved = channel_target(target)
    merged = _merged_config(config, load_balancing, health_check_service)
    base = [
        *service_config_options(merged),
        *keepalive_options(keepalive_time, keepalive_timeout),
        *options,
    ]

    def one(extra: Sequence[tuple[str, Any]]) -> grpc.aio.Channel:
        return dial(
            resolved,
            default_timeout=default_timeout,
            options=[*base, *extra],
            interceptors=interceptors,
            compression=compression,
            tls=tls,
            reload_tls=reload_tls,
        )

    if pool_size == 1:
        return one(())
    return ChannelPool(
        [one([("grpc.use_local_subchannel_pool", 1), (_POOL_INDEX, i)]) for i in range(pool_size)]
    )


def channel_target(target: str | Sequence[str]) -> str:
    """The grpc target for ``target``: a static IP list becomes ``ipv4:``/``ipv6:``.

    Anything with a scheme grpc knows, and a single ``host:port``, is returned as is. Raises
    ``ValueError`` for a list with a host name (use ``dns:///name:port``), a missing port or
    IPv4 and IPv6 addresses mixed.

    Example: ``channel_target("10.0.0.1:1,10.0.0.2:1") == "ipv4:10.0.0.1:1,10.0.0.2:1"``
    """
    items = [target] if isinstance(target, str) else list(target)
    if len(items) == 1 and (items[0].startswith(_SCHEMES) or "," not in items[0]):
        return items[0].strip()
    addresses = [part.strip() for item in items for part in item.split(",") if part.strip()]
    if not addresses:
        raise ValueError("empty target")
    families = {_family(address) for address in addresses}
    if len(families) > 1:
        raise ValueError(f"a static list cannot mix IPv4 and IPv6 addresses: {target!r}")
    return f"{families.pop()}:{','.join(addresses)}"


def _family(address: str) -> str:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"a static list entry needs host:port: {address!r}")
    bracketed = host.startswith("[") and host.endswith("]")
    try:
        ip = ipaddress.ip_address(host[1:-1] if bracketed else host)
    except ValueError:
        raise ValueError(
            f"a static list takes IP addresses, not {host!r}: use 'dns:///{address}'"
        ) from None
    if ip.version == 6 and not bracketed:
        raise ValueError(f"write IPv6 addresses in brackets: [{host}]:{port}")
    return f"ipv{ip.version}"


def keepalive_options(
    keepalive_time: float | None, keepalive_timeout: float = 20.0
) -> list[tuple[str, Any]]:
    """Client keepalive channel arguments matching grpckit's ``ServerConfig`` permits.

    The server allows pings without calls (``keepalive_permit_without_calls``) every 10 s at
    most; ``keepalive_time`` below :data:`MIN_KEEPALIVE_TIME` is a ``ValueError``.

    Example: ``dial(target, options=keepalive_options(30.0))``
    """
    if keepalive_time is None:
        return []
    if not keepalive_time >= MIN_KEEPALIVE_TIME:
        raise ValueError(
            f"keepalive_time must be >= {MIN_KEEPALIVE_TIME} s (grpckit servers refuse faster "
            f"pings): {keepalive_time}"
        )
    if not keepalive_timeout > 0:
        raise ValueError(f"keepalive_timeout must be positive: {keepalive_timeout}")
    return [
        ("grpc.keepalive_time_ms", round(keepalive_time * 1000)),
        ("grpc.keepalive_timeout_ms", round(keepalive_timeout * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]


def _merged_config(
    config: str | None, load_balancing: str | None, health_check_service: str | None
) -> str:
    """``config`` plus the balancing policy and health checking (conflicts rejected)."""
    merged: Any = json.loads(config) if config else {}
    if not isinstance(merged, dict):
        raise ValueError("config must be a JSON object (see service_config)")
    named = "loadBalancingConfig" in merged or "loadBalancingPolicy" in merged
    if load_balancing is not None and named:
        raise ValueError("load balancing set twice: in config and as load_balancing")
    policy = load_balancing if load_balancing is not None or named else "round_robin"
    if health_check_service is not None:
        if "healthCheckConfig" in merged:
            raise ValueError("health checking set twice: in config and as health_check_service")
        if policy is None and not _round_robin(merged):
            raise ValueError("client-side health checking needs round_robin load balancing")
    # service_config validates the policy name and the health check / round_robin pairing
    added = json.loads(
        service_config(
            load_balancing=policy if policy is not None else "round_robin",
            health_check_service=health_check_service,
        )
    )
    if policy is None:  # config's own policy stays
        del added["loadBalancingConfig"]
    return json.dumps({**merged, **added}, separators=(",", ":"))


def _round_robin(config: dict[str, Any]) -> bool:
    policies = config.get("loadBalancingConfig") or []
    if policies:
        return isinstance(policies[0], dict) and "round_robin" in policies[0]
    return str(config.get("loadBalancingPolicy", "")).lower() == "round_robin"
