"""Composition root of analytics: one in-memory pipeline fed by gRPC and by the event bus.

Analytics' state is derived from events, so it keeps no database: after a restart the windows
refill from the live stream within a minute. Health is always SERVING (no check registered).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import structlog

from grpckit import App
from shop.analytics.clock import SystemClock
from shop.analytics.domain import Alert
from shop.analytics.pipeline import Pipeline
from shop.analytics.service import AnalyticsService
from shop.api.analytics.v1 import analytics_pb2, analytics_pb2_grpc
from shop.api.events.v1 import events_pb2
from shop.common.runtime import ServiceContext

__all__ = ["SERVICE_NAME", "mount"]

SERVICE_NAME = "shop.analytics.v1.AnalyticsService"
BUS_GROUP = "analytics"


async def mount(app: App, ctx: ServiceContext) -> None:
    """Add AnalyticsService to ``app`` and subscribe the pipeline to the event bus."""
    log = ctx.logger.bind(component="analytics")
    pipeline = Pipeline(SystemClock(), on_alert=_alert_logger(log))
    service = AnalyticsService(pipeline)
    app.add_service(
        analytics_pb2_grpc.add_AnalyticsServiceServicer_to_server,
        service,
        analytics_pb2.DESCRIPTOR.services_by_name["AnalyticsService"],
    )
    app.on_drain(service.close_streams)  # live streams must not hold a graceful stop

    async def on_events(events: Sequence[events_pb2.Event]) -> None:
        outcome = pipeline.process(events)
        if outcome.rejections:
            log.warning(
                "analytics.events_rejected",
                rejected=outcome.rejected,
                first_reason=outcome.rejections[0][1],
            )

    subscription = await ctx.bus.subscribe(BUS_GROUP, on_events)
    app.on_stop(subscription.close)


def _alert_logger(log: structlog.stdlib.BoundLogger) -> Callable[[Alert], None]:
    def log_alert(alert: Alert) -> None:
        log.warning(
            "analytics.alert",
            rule=alert.rule,
            message=alert.message,
            value=alert.value,
            threshold=alert.threshold,
        )

    return log_alert
