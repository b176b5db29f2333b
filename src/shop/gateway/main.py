"""Composition root of the gateway: journal, peers, saga, recovery loop, servicer."""

from __future__ import annotations

from typing import TYPE_CHECKING

from shop.api.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from shop.gateway.domain import Step
from shop.gateway.peers import GrpcPeers
from shop.gateway.recovery import Recovery
from shop.gateway.saga import OrderSaga, SagaConfig
from shop.gateway.service import GatewayServicer
from shop.gateway.store import MIGRATIONS, SagaStore

if TYPE_CHECKING:
    from grpckit import App
    from shop.common.runtime import ServiceContext

SERVICE = gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"]
#: Seconds between two recovery passes.
RECOVERY_INTERVAL = 5.0


#: Seconds the saga waits for a step beyond the call's own deadline.
STEP_TIMEOUT_MARGIN = 0.5


async def mount(app: App, ctx: ServiceContext) -> None:
    """Open the journal, wire the saga to the peers and register the service and its hooks."""
    settings = ctx.settings
    db = ctx.database("gateway")
    await db.migrate(MIGRATIONS)
    peers = GrpcPeers(
        users=ctx.channel("users"),
        catalog=ctx.channel("catalog"),
        orders=ctx.channel("orders"),
        payments=ctx.channel("payments"),
        timeout=settings.call_timeout,
    )
    config = SagaConfig(
        saga_timeout=settings.saga_timeout,
        # a backstop: each call's own gRPC deadline (call_timeout) fires first, so the client
        # sees DEADLINE_EXCEEDED (which the circuit breaker counts), not a cancellation
        step_timeout=settings.call_timeout + STEP_TIMEOUT_MARGIN,
        kill_after=Step(settings.fault_kill_after) if settings.fault_kill_after else None,
    )
    saga = OrderSaga(SagaStore(db), peers, config)
    recovery = Recovery(saga, interval=RECOVERY_INTERVAL, lease=settings.saga_timeout)
    servicer = GatewayServicer(saga, peers)
    app.add_service(gateway_pb2_grpc.add_GatewayServiceServicer_to_server, servicer, SERVICE)
    app.add_health_check(SERVICE.full_name, db.ping)

    async def start() -> None:
        recovery.start()

    async def stop() -> None:
        await recovery.stop()
        await saga.drain(settings.grace_period)

    app.on_start(start)
    app.on_stop(stop)
