"""The ingestion pipeline: validate -> dedupe -> enrich -> aggregate -> alert, a batch at a time.

One ``Pipeline`` holds all of analytics' state (in memory: it is derived from events). The
gRPC service and the event-bus subscription feed the same instance.

Example::

    pipeline = Pipeline(FakeClock())
    outcome = pipeline.process(events)          # a Sequence[shop.events.v1.Event]
    outcome.accepted, outcome.rejected, outcome.duplicates, outcome.alerts
    snapshot = pipeline.snapshot(10)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from shop.analytics.alerts import AlertConfig, AlertRules
from shop.analytics.clock import Clock, SystemClock
from shop.analytics.domain import Alert, BatchOutcome, Snapshot
from shop.analytics.ingest import Deduper, Validator, enrich
from shop.analytics.windows import SlidingWindows
from shop.api.events.v1 import events_pb2

__all__ = ["Pipeline", "PipelineConfig", "Totals"]


@dataclass(frozen=True, slots=True)
class PipelineConfig:
    """Tunables: future skew allowed on ``occurred_at``, dedupe memory, alert thresholds."""

    max_future: float = 300.0
    dedupe_horizon: int = 60
    dedupe_max_ids: int = 1_000_000
    alerts: AlertConfig = field(default_factory=AlertConfig)


@dataclass(slots=True)
class Totals:
    """Events taken since start, by verdict, and accepted events too old for any window."""

    accepted: int = 0
    rejected: int = 0
    duplicates: int = 0
    too_old: int = 0


class Pipeline:
    """Runs each batch through the five stages; ``on_alert`` sees every alert fired."""

    def __init__(
        self,
        clock: Clock | None = None,
        config: PipelineConfig | None = None,
        *,
        on_alert: Callable[[Alert], None] | None = None,
    ) -> None:
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.config = config if config is not None else PipelineConfig()
        self.validator = Validator(self.config.max_future)
        self.deduper = Deduper(self.config.dedupe_horizon, self.config.dedupe_max_ids)
        self.windows = SlidingWindows()
        self.rules = AlertRules(self.config.alerts)
        self.totals = Totals()
        self._on_alert = on_alert

    def process(self, events: Sequence[events_pb2.Event]) -> BatchOutcome:
        """Take one batch; returns a verdict per event and the alerts it fired."""
        now = self.clock.now()
        checked = self.validator.validate(events, now)
        fresh, duplicates = self.deduper.fresh(checked.events, now)
        summary = self.windows.add(enrich(fresh, now), now)
        alerts = self.rules.evaluate(summary, self.windows, now)
        outcome = BatchOutcome(checked.event_ids, checked.rejections, duplicates, alerts)
        totals = self.totals
        totals.accepted += len(fresh)
        totals.rejected += len(checked.rejections)
        totals.duplicates += len(duplicates)
        totals.too_old += summary.too_old
        if self._on_alert is not None:
            for alert in alerts:
                self._on_alert(alert)
        return outcome

    def snapshot(self, window: int) -> Snapshot:
        """Aggregates over the last ``window`` seconds (1, 10 or 60), as of now."""
        return self.windows.snapshot(window, self.clock.now())
