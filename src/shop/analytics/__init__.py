"""Analytics: live sliding-window metrics and alerts over the order and payment event stream.

Public surface: the ``Pipeline`` (validate -> dedupe -> enrich -> aggregate -> alert), the gRPC
``AnalyticsService`` and ``mount`` (in ``shop.analytics.main``) for the composition root.
"""

from shop.analytics.alerts import AlertConfig
from shop.analytics.clock import Clock, FakeClock, SystemClock
from shop.analytics.domain import Alert, BatchOutcome, Snapshot
from shop.analytics.pipeline import Pipeline, PipelineConfig

__all__ = [
    "Alert",
    "AlertConfig",
    "BatchOutcome",
    "Clock",
    "FakeClock",
    "Pipeline",
    "PipelineConfig",
    "Snapshot",
    "SystemClock",
]
