"""Stage 5, alert: rules evaluated after each batch, each firing at most once per cooldown.

Rules:

- ``HIGH_DECLINE_RATE``: over the last 10 s, declined / (captured + declined) is above 0.5 with
  at least 10 payments.
- ``LARGE_ORDER``: an order was created for more than 5,000.00 (in its own currency's units).
- ``REFUND_SPIKE``: at least 5 refunds in the last 10 s, and more than 3x the refunds of an
  average 10 s of the 50 s before (evaluated when a batch brings refunds: a spike starts with
  one).

Example::

    rules = AlertRules(AlertConfig(cooldown=30.0))
    alerts = rules.evaluate(summary, windows, now)
"""

from __future__ import annotations

from dataclasses import dataclass

from shop.analytics.domain import SPAN, Alert, Kind
from shop.analytics.windows import BatchSummary, SlidingWindows
from shop.common.money import Money, minor_digits

__all__ = ["HIGH_DECLINE_RATE", "LARGE_ORDER", "REFUND_SPIKE", "AlertConfig", "AlertRules"]

HIGH_DECLINE_RATE = "HIGH_DECLINE_RATE"
LARGE_ORDER = "LARGE_ORDER"
REFUND_SPIKE = "REFUND_SPIKE"


@dataclass(frozen=True, slots=True)
class AlertConfig:
    """Thresholds of the rules; ``cooldown`` seconds must pass before a rule fires again."""

    cooldown: float = 60.0
    decline_window: int = 10
    decline_rate: float = 0.5
    decline_min_payments: int = 10
    large_order_units: int = 5_000
    refund_window: int = 10
    refund_spike_min: int = 5
    refund_spike_factor: float = 3.0

    def __post_init__(self) -> None:
        if not 1 <= self.decline_window <= SPAN or not 1 <= self.refund_window < SPAN:
            raise ValueError(f"rule windows must be between 1 and {SPAN} seconds")
        if self.cooldown < 0:
            raise ValueError("cooldown must not be negative")


class AlertRules:
    """Evaluates the rules for one batch and remembers when each last fired."""

    def __init__(self, config: AlertConfig = AlertConfig()) -> None:
        self.config = config
        self._fired_at: dict[str, float] = {}

    def evaluate(self, summary: BatchSummary, windows: SlidingWindows, now: float) -> list[Alert]:
        alerts: list[Alert] = []
        if self._ready(HIGH_DECLINE_RATE, now):
            self._fire(alerts, self._decline(windows, now))
        if summary.largest_order and self._ready(LARGE_ORDER, now):
            self._fire(alerts, self._large_order(summary, now))
        if summary.counts[Kind.PAYMENT_REFUNDED] and self._ready(REFUND_SPIKE, now):
            self._fire(alerts, self._refund_spike(windows, now))
        return alerts

    def _ready(self, rule: str, now: float) -> bool:
        fired = self._fired_at.get(rule)
        return fired is None or now - fired >= self.config.cooldown

    def _fire(self, alerts: list[Alert], alert: Alert | None) -> None:
        if alert is not None:
            self._fired_at[alert.rule] = alert.at
            alerts.append(alert)

    def _decline(self, windows: SlidingWindows, now: float) -> Alert | None:
        config = self.config
        counts = windows.counts(config.decline_window, now)
        declined = counts[Kind.PAYMENT_DECLINED]
        payments = counts[Kind.PAYMENT_CAPTURED] + declined
        if payments < config.decline_min_payments or declined / payments <= config.decline_rate:
            return None
        rate = declined / payments
        message = (
            f"{declined} of {payments} payments declined in the last {config.decline_window}s "
            f"({rate:.0%} > {config.decline_rate:.0%})"
        )
        return Alert(HIGH_DECLINE_RATE, message, rate, config.decline_rate, now)

    def _large_order(self, summary: BatchSummary, now: float) -> Alert | None:
        units = self.config.large_order_units
        for currency, minor in sorted(summary.largest_order.items()):
            scale = 10 ** minor_digits(currency)
            if minor > units * scale:
                message = f"order created for {Money(minor, currency)} (> {units} {currency})"
                return Alert(LARGE_ORDER, message, minor / scale, float(units), now)
        return None

    def _refund_spike(self, windows: SlidingWindows, now: float) -> Alert | None:
        config = self.config
        recent = windows.counts(config.refund_window, now)[Kind.PAYMENT_REFUNDED]
        before = windows.counts(SPAN, now)[Kind.PAYMENT_REFUNDED] - recent
        baseline = before * config.refund_window / (SPAN - config.refund_window)
        threshold = max(float(config.refund_spike_min), config.refund_spike_factor * baseline)
        if recent < config.refund_spike_min or recent <= config.refund_spike_factor * baseline:
            return None
        message = (
            f"{recent} refunds in the last {config.refund_window}s "
            f"(usual {baseline:.1f}, threshold {threshold:.1f})"
        )
        return Alert(REFUND_SPIKE, message, float(recent), threshold, now)
