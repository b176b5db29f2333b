"""Prometheus gauges of the client's resilience state, read live at scrape time.

* ``grpckit_client_circuit_state{target,method}``: 0 closed, 1 half-open, 2 open (one series
  per method a :class:`~grpckit.client.CircuitBreaker` has seen; an open circuit whose
  cool-down has passed reads 1).
* ``grpckit_client_bulkhead_in_flight{name}`` / ``grpckit_client_bulkhead_queued{name}``: calls
  holding / waiting for a slot of a :class:`~grpckit.client.Bulkhead`;
  ``grpckit_client_bulkhead_rejected_total{name}``: calls it turned away.

Breakers and bulkheads register themselves (weakly: a discarded one leaves the metrics) in one
collector per registry. prometheus-client is optional: without it, and without an explicit
registry, nothing is registered. Two live breakers reporting the same ``target, method`` show
the worse state; bulkheads sharing a name add up.

Example::

    breaker = CircuitBreaker(target="payments:50051", registry=registry)
    registry.get_sample_value("grpckit_client_circuit_state",
                              {"target": "payments:50051", "method": "/pkg.S/M"})  # 0.0
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric

__all__ = ["CIRCUIT_STATE_VALUES", "watch_breaker", "watch_bulkhead"]

#: The gauge value of each circuit state.
CIRCUIT_STATE_VALUES: Mapping[str, int] = {"closed": 0, "half_open": 1, "open": 2}


class _Breaker(Protocol):
    @property
    def target(self) -> str: ...

    def states(self) -> Mapping[str, str]: ...


class _Bulkhead(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def in_flight(self) -> int: ...

    @property
    def queued(self) -> int: ...

    @property
    def rejected(self) -> int: ...


class _Collector:
    """One per registry: the breakers and bulkheads to report, held weakly."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._breakers: weakref.WeakSet[Any] = weakref.WeakSet()
        self._bulkheads: weakref.WeakSet[Any] = weakref.WeakSet()

    def add_breaker(self, breaker: _Breaker) -> None:
        with self._lock:
            self._breakers.add(breaker)

    def add_bulkhead(self, bulkhead: _Bulkhead) -> None:
        with self._lock:
            self._bulkheads.add(bulkhead)

    def describe(self) -> list[Metric]:
        return list(self._families())

    def collect(self) -> list[Metric]:
        with self._lock:
            breakers: list[_Breaker] = list(self._breakers)
            bulkheads: list[_Bulkhead] = list(self._bulkheads)
        circuit, in_flight, queued, rejected = self._families()
        worst: dict[tuple[str, str], int] = {}
        for breaker in breakers:
            for method, state in breaker.states().items():
                key = (breaker.target, method)
                worst[key] = max(worst.get(key, 0), CIRCUIT_STATE_VALUES[state])
        for labels, value in worst.items():
            circuit.add_metric(labels, value)
        totals: dict[str, list[int]] = {}
        for bulkhead in bulkheads:
            row = totals.setdefault(bulkhead.name, [0, 0, 0])
            row[0] += bulkhead.in_flight
            row[1] += bulkhead.queued
            row[2] += bulkhead.rejected
        for name, (flying, waiting, refused) in totals.items():
            in_flight.add_metric((name,), flying)
            queued.add_metric((name,), waiting)
            rejected.add_metric((name,), refused)
        return [circuit, in_flight, queued, rejected]

    def _families(self) -> tuple[Any, Any, Any, Any]:
        from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily

        return (
            GaugeMetricFamily(
                "grpckit_client_circuit_state",
                "Circuit breaker state per target and method: 0 closed, 1 half-open, 2 open.",
                labels=("target", "method"),
            ),
            GaugeMetricFamily(
                "grpckit_client_bulkhead_in_flight",
                "Calls holding a slot of the client bulkhead.",
                labels=("name",),
            ),
            GaugeMetricFamily(
                "grpckit_client_bulkhead_queued",
                "Calls waiting for a slot of the client bulkhead.",
                labels=("name",),
            ),
            CounterMetricFamily(
                "grpckit_client_bulkhead_rejected_total",
                "Calls the client bulkhead rejected with RESOURCE_EXHAUSTED (BULKHEAD_FULL).",
                labels=("name",),
            ),
        )


_COLLECTORS: weakref.WeakKeyDictionary[CollectorRegistry, _Collector] = weakref.WeakKeyDictionary()
_COLLECTORS_LOCK = threading.Lock()


def watch_breaker(breaker: _Breaker, registry: CollectorRegistry | None) -> None:
    """Report ``breaker``'s states in ``registry`` (default registry if prometheus is there)."""
    collector = _collector(registry)
    if collector is not None:
        collector.add_breaker(breaker)


def watch_bulkhead(bulkhead: _Bulkhead, registry: CollectorRegistry | None) -> None:
    """Report ``bulkhead``'s counts in ``registry`` (default registry if prometheus is there)."""
    collector = _collector(registry)
    if collector is not None:
        collector.add_bulkhead(bulkhead)


def _collector(registry: CollectorRegistry | None) -> _Collector | None:
    if registry is None:
        try:
            from grpckit.metrics import default_registry

            registry = default_registry()
        except ImportError:  # prometheus-client is optional
            return None
    with _COLLECTORS_LOCK:
        collector = _COLLECTORS.get(registry)
        if collector is None:
            collector = _COLLECTORS[registry] = _Collector()
            registry.register(collector)
    return collector
