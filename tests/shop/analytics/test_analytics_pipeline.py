"""The whole pipeline with a fake clock: verdicts, windows over time, alerts and cooldowns."""

from __future__ import annotations

import pytest

from shop.analytics.alerts import HIGH_DECLINE_RATE, LARGE_ORDER, REFUND_SPIKE, AlertConfig
from shop.analytics.clock import FakeClock
from shop.analytics.domain import Alert, Kind, Verdict
from shop.analytics.pipeline import Pipeline, PipelineConfig
from shop.common.money import Money

from .conftest import EventType, MakeEvent

CAPTURED = EventType.EVENT_TYPE_PAYMENT_CAPTURED
DECLINED = EventType.EVENT_TYPE_PAYMENT_DECLINED
REFUNDED = EventType.EVENT_TYPE_PAYMENT_REFUNDED
CREATED = EventType.EVENT_TYPE_ORDER_CREATED


def test_each_event_gets_a_verdict_in_batch_order(clock: FakeClock, make_event: MakeEvent) -> None:
    pipeline = Pipeline(clock)
    first = make_event(id="a")
    bad = make_event(id="")
    outcome = pipeline.process([first, bad, make_event(id="a"), make_event(id="b")])
    assert outcome.acks() == [
        ("a", Verdict.ACCEPTED, ""),
        ("", Verdict.REJECTED, "id: required"),
        ("a", Verdict.DUPLICATE, ""),
        ("b", Verdict.ACCEPTED, ""),
    ]
    assert (outcome.accepted, outcome.rejected, len(outcome.duplicates)) == (2, 1, 1)
    assert pipeline.process([first]).verdicts() == [Verdict.DUPLICATE]
    assert (pipeline.totals.accepted, pipeline.totals.duplicates) == (2, 2)


def test_events_move_out_of_the_short_windows_as_the_clock_runs(
    clock: FakeClock, make_event: MakeEvent
) -> None:
    pipeline = Pipeline(clock)
    pipeline.process([make_event(CAPTURED, 1_000), make_event(CAPTURED, Money(700, "EUR"))])
    clock.advance(1)
    pipeline.process([make_event(REFUNDED, 400)])
    assert pipeline.snapshot(1).count(Kind.PAYMENT_CAPTURED) == 0
    assert pipeline.snapshot(1).revenue == {"USD": -400}
    assert pipeline.snapshot(10).revenue == {"USD": 600, "EUR": 700}
    clock.advance(30)
    assert pipeline.snapshot(10).events_total == 0
    assert pipeline.snapshot(60).events_total == 3
    clock.advance(30)
    assert pipeline.snapshot(60).events_total == 0


def _payments(make_event: MakeEvent, captured: int, declined: int) -> list:  # type: ignore[type-arg]
    return [make_event(CAPTURED, 100) for _ in range(captured)] + [
        make_event(DECLINED) for _ in range(declined)
    ]


def test_high_decline_rate_fires_once_per_cooldown(clock: FakeClock, make_event: MakeEvent) -> None:
    fired: list[Alert] = []
    config = PipelineConfig(alerts=AlertConfig(cooldown=30.0))
    pipeline = Pipeline(clock, config, on_alert=fired.append)
    assert pipeline.process(_payments(make_event, 2, 7)).alerts == []  # 9 payments: too few
    alerts = pipeline.process(_payments(make_event, 0, 1)).alerts  # 8 of 10 declined
    assert [a.rule for a in alerts] == [HIGH_DECLINE_RATE]
    assert alerts[0].value == 0.8
    assert alerts[0].threshold == 0.5
    assert alerts[0].at == clock.now()
    assert fired == alerts
    clock.advance(29)
    assert pipeline.process(_payments(make_event, 0, 20)).alerts == []  # cooling down
    clock.advance(1)
    assert [a.rule for a in pipeline.process(_payments(make_event, 0, 1)).alerts] == [
        HIGH_DECLINE_RATE
    ]


def test_half_declined_is_not_a_high_decline_rate(clock: FakeClock, make_event: MakeEvent) -> None:
    pipeline = Pipeline(clock)
    assert pipeline.process(_payments(make_event, 10, 10)).alerts == []


def test_old_declines_leave_the_decline_window(clock: FakeClock, make_event: MakeEvent) -> None:
    pipeline = Pipeline(clock)
    pipeline.process(_payments(make_event, 0, 9))
    clock.advance(10)
    assert pipeline.process(_payments(make_event, 0, 1)).alerts == []


def test_large_order_above_5000_in_its_currency(clock: FakeClock, make_event: MakeEvent) -> None:
    config = PipelineConfig(alerts=AlertConfig(cooldown=10.0))
    pipeline = Pipeline(clock, config)
    assert pipeline.process([make_event(CREATED, 500_000)]).alerts == []  # exactly 5,000.00
    assert pipeline.process([make_event(CAPTURED, 900_000)]).alerts == []  # not an order
    assert pipeline.process([make_event(CREATED, Money(6_000, "JPY"))]).alerts != []
    clock.advance(10)
    alerts = pipeline.process([make_event(CREATED, 100), make_event(CREATED, 500_001)]).alerts
    assert [(a.rule, a.value, a.threshold) for a in alerts] == [(LARGE_ORDER, 5000.01, 5000.0)]
    assert pipeline.process([make_event(CREATED, 900_000)]).alerts == []  # cooling down


def test_refund_spike_against_the_usual_rate(clock: FakeClock, make_event: MakeEvent) -> None:
    pipeline = Pipeline(clock, PipelineConfig(alerts=AlertConfig(cooldown=0.0)))
    for _ in range(5):  # a steady 1 refund per second, 50 s long
        for _ in range(10):
            pipeline.process([make_event(REFUNDED, 100)])
            clock.advance(1)
    # last 10 s: 9 steady refunds; the 50 s before: 41, i.e. 8.2 per 10 s; 3x = 24.6
    assert pipeline.process([make_event(REFUNDED, 100) for _ in range(15)]).alerts == []
    alerts = pipeline.process([make_event(REFUNDED, 100)]).alerts
    assert [a.rule for a in alerts] == [REFUND_SPIKE]
    assert alerts[0].value == 25.0
    assert alerts[0].threshold == pytest.approx(24.6)


def test_a_few_refunds_are_no_spike(clock: FakeClock, make_event: MakeEvent) -> None:
    pipeline = Pipeline(clock)
    assert pipeline.process([make_event(REFUNDED, 100) for _ in range(4)]).alerts == []
    assert [a.rule for a in pipeline.process([make_event(REFUNDED, 1)]).alerts] == [REFUND_SPIKE]
