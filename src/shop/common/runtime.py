"""What the composition root hands each service: settings, the bus, databases and peer channels.

Every service exposes ``async def mount(app, ctx)``; ``shop up`` mounts all six on one server,
``shop serve <service>`` mounts one. Configuration is read once by the CLI and flows in here as
frozen values; services never read the environment.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import sqlalchemy as sa
import structlog

from grpckit import get_logger
from grpckit.auth import credential_interceptors
from grpckit.client import (
    BreakerPolicy,
    Bulkhead,
    CircuitBreaker,
    MethodPolicy,
    RetryPolicy,
    connect,
    retry_info_interceptors,
    service_config,
)
from grpckit.tls import ClientTls
from shop.common.bus import EventBus
from shop.common.db import Database, database_url
from shop.common.outbox import OutboxRelay

SERVICES = ("users", "catalog", "orders", "payments", "analytics", "gateway")
SAGA_STEPS = ("validate_user", "create_order", "reserve_stock", "process_payment")


_PEER_RETRY = RetryPolicy(
    max_attempts=3,
    initial_backoff=0.05,
    max_backoff=0.5,
    retryable_codes=(grpc.StatusCode.UNAVAILABLE,),
)
#: How services call each other: round robin over the replicas that report SERVING (a draining
#: or unhealthy replica gets no new calls), waiting for a ready replica up to the deadline
#: instead of failing while one restarts, and grpc's transparent retries of UNAVAILABLE
#: (throttled so retries cannot snowball). Every saga step is idempotent, so a retried call
#: cannot act twice.
PEER_SERVICE_CONFIG = service_config(
    default=MethodPolicy(wait_for_ready=True, retry=_PEER_RETRY),
    load_balancing="round_robin",
    health_check_service="",
    retry_throttling=(20, 0.1),
)
#: For peers served by this very process: no health checking, since a draining process still
#: serves the nested calls its in-flight calls make (a NOT_SERVING check would block them).
LOCAL_SERVICE_CONFIG = service_config(
    default=MethodPolicy(wait_for_ready=True, retry=_PEER_RETRY), retry_throttling=(20, 0.1)
)
#: Opens when half of at least 10 calls in 30 s failed (UNAVAILABLE, DEADLINE_EXCEEDED ...);
#: calls then fail at once with UNAVAILABLE/CIRCUIT_OPEN for 5 s, then one probe decides.
PEER_BREAKER = BreakerPolicy(
    failure_ratio=0.5, minimum_calls=10, window_calls=100, window_seconds=30.0, cooldown=5.0
)
#: At most this many calls in flight to one peer (and this many waiting) per process.
PEER_BULKHEAD = (128, 512)


@dataclass(frozen=True)
class Settings:
    """Typed, frozen configuration of a shop process."""

    data_dir: Path = Path(".shop")
    database_url: str | None = None
    demo: bool = True
    fault_kill_after: str | None = None
    #: Testing: a JSON file of knobs read while running (see shop.common.faults).
    fault_file: Path | None = None
    payment_latency_ms: int = 0
    payment_failure_rate: float = 0.0
    saga_timeout: float = 30.0
    call_timeout: float = 5.0
    grace_period: float = 10.0
    #: The first admin, created at start when both are set (SHOP_ADMIN_EMAIL/PASSWORD).
    admin_email: str | None = None
    admin_password: str | None = field(default=None, repr=False)
    #: Directory from ``shop certs``: serve TLS only, and dial peers with TLS.
    tls_dir: Path | None = None
    #: Require client certificates signed by the CA in ``tls_dir``.
    mtls: bool = False
    #: Redis for shared rate limits (and, later, the shared cache); None: per process.
    redis_url: str | None = None
    #: NATS with JetStream for events between processes; None: the in-process bus.
    nats_url: str | None = None
    #: The key that signs service tokens; every process of a deployment needs the same one.
    #: Default: ``<data_dir>/keys/service-ed25519.pem``.
    service_key_file: Path | None = None
    #: Rate limiting on (Login per email and address, per-user budgets).
    rate_limits: bool = True
    #: Login attempts per minute for one email (password guessing on one account).
    login_limit_per_email: int = 5
    #: Login attempts per minute from one client address (guessing across accounts).
    login_limit_per_address: int = 100

    def __post_init__(self) -> None:
        if self.fault_kill_after is not None and self.fault_kill_after not in SAGA_STEPS:
            raise ValueError(
                f"fault_kill_after must be one of {', '.join(SAGA_STEPS)}, "
                f"not {self.fault_kill_after!r}"
            )
        if not 0.0 <= self.payment_failure_rate <= 1.0:
            raise ValueError("payment_failure_rate must be between 0 and 1")
        if self.mtls and self.tls_dir is None:
            raise ValueError("--mtls needs --tls-dir (create one with `shop certs --out DIR`)")
        if self.payment_latency_ms < 0:
            raise ValueError("payment_latency_ms must not be negative")


@dataclass
class ServiceContext:
    """Shared resources of one process. Owns what it opens; ``close()`` releases all of it."""

    settings: Settings
    bus: EventBus
    peers: Mapping[str, str]
    logger: structlog.stdlib.BoundLogger = field(default_factory=lambda: get_logger("shop"))
    #: Added to every peer channel (client metrics, tracing), after dial's own propagation.
    client_interceptors: Sequence[grpc.aio.ClientInterceptor] = ()
    #: TLS for peer channels (``None``: plaintext).
    client_tls: ClientTls | None = None
    #: This process's service token (``None`` when mTLS certificates identify services).
    service_token: Callable[[], str] | None = None
    #: This process's own gRPC address (peers served here are dialled without health checks).
    local_address: str = ""
    #: Set by the users service where it runs: is an account active (read from its store)?
    account_check: Callable[[str], Awaitable[bool]] | None = None
    _channels: dict[str, grpc.aio.Channel] = field(default_factory=dict)
    _breakers: dict[str, tuple[Bulkhead, CircuitBreaker]] = field(default_factory=dict)
    _databases: dict[str, Database] = field(default_factory=dict)
    _relays: list[OutboxRelay] = field(default_factory=list)
    _revocation_listeners: list[Callable[[str], None]] = field(default_factory=list)

    def on_subject_revoked(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(user_id)`` when a user is disabled or deleted in this process."""
        self._revocation_listeners.append(listener)

    def subject_revoked(self, user_id: str) -> None:
        """Tell this process's verifiers that ``user_id``'s tokens must stop working now."""
        for listener in self._revocation_listeners:
            listener(user_id)

    def database(self, service: str) -> Database:
        """The service's database (one per service and process; opened lazily)."""
        if service not in self._databases:
            url = database_url(
                service, data_dir=self.settings.data_dir, url=self.settings.database_url
            )
            self._databases[service] = Database(url, schema=service)
        return self._databases[service]

    def channel(self, peer: str) -> grpc.aio.Channel:
        """A channel to a peer service, with the default call timeout.

        Calls made inside a served call forward the caller's access token, so the peer's
        policies apply to that user, and carry this service's identity (its mTLS certificate,
        or a short-lived service token).
        """
        return self._dial(peer, forward_user=True)

    def internal_channel(self, peer: str) -> grpc.aio.Channel:
        """Like :meth:`channel`, but calls carry only the service identity (never a user's
        token): for the process's own checks such as account status and key fetches."""
        return self._dial(peer, forward_user=False)

    def _dial(self, peer: str, *, forward_user: bool) -> grpc.aio.Channel:
        key = f"{peer}|{'user' if forward_user else 'service'}"
        if key not in self._channels:
            try:
                target = self.peers[peer]
            except KeyError:
                raise LookupError(
                    f"no address for peer {peer!r}: pass --{peer}-addr or SHOP_{peer.upper()}_ADDR"
                ) from None
            local = target == self.local_address
            # with TLS, the channel re-dials when the certificate files are replaced on disk
            self._channels[key] = connect(
                target,
                default_timeout=self.settings.call_timeout,
                config=LOCAL_SERVICE_CONFIG if local else PEER_SERVICE_CONFIG,
                tls=self.client_tls,
                interceptors=[
                    *self.client_interceptors,
                    *credential_interceptors(
                        service_token=self.service_token, forward_user=forward_user
                    ),
                    *self._protection(peer),
                    *retry_info_interceptors(max_attempts=3, max_delay=2.0),
                ],
            )
        return self._channels[key]

    def _protection(self, peer: str) -> list[grpc.aio.ClientInterceptor]:
        """The peer's bulkhead (outside) and circuit breaker, shared by its channels."""
        if peer not in self._breakers:
            limit, queue = PEER_BULKHEAD
            self._breakers[peer] = (
                Bulkhead(limit, max_queue=queue, name=peer),
                CircuitBreaker(PEER_BREAKER, target=peer),
            )
        bulkhead, breaker = self._breakers[peer]
        return [*bulkhead.interceptors(), *breaker.interceptors()]

    def breaker(self, peer: str) -> CircuitBreaker | None:
        """The circuit breaker of calls to ``peer`` (None before the first channel to it)."""
        found = self._breakers.get(peer)
        return found[1] if found is not None else None

    def start_outbox_relay(self, db: Database, table: sa.Table) -> OutboxRelay:
        """Start publishing a service's outbox to the bus; stopped by ``close()``."""
        relay = OutboxRelay(db, table, self.bus)
        relay.start()
        relay.notify()  # publish what a previous run left behind
        self._relays.append(relay)
        return relay

    async def close(self) -> None:
        for relay in self._relays:
            await relay.stop()
        for channel in self._channels.values():
            await channel.close(None)

        for db in self._databases.values():
            await db.close()
        self._relays.clear()
        self._channels.clear()
        self._databases.clear()
