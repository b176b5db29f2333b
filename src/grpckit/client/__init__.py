"""Client side: :func:`connect` and :func:`dial`, the propagation interceptors they install,
client metrics and tracing interceptors, the service config helper, and the resilience
interceptors grpcio lacks (circuit breaker, bulkhead, hedging, ``RetryInfo``) plus
:func:`with_fallback`. See docs/resilience.md."""

from grpckit.client._breaker import (
    CIRCUIT_OPEN,
    DEFAULT_FAILURE_CODES,
    BreakerPolicy,
    BreakerState,
    CircuitBreaker,
    circuit_breaker_interceptors,
)
from grpckit.client._bulkhead import BULKHEAD_FULL, Bulkhead, bulkhead_interceptors
from grpckit.client._connect import connect
from grpckit.client._deadline import REQUEST_ID_KEY, propagation_interceptors
from grpckit.client._dial import dial
from grpckit.client._fallback import DEFAULT_FALLBACK_CODES, with_fallback
from grpckit.client._hedging import hedging_interceptors, idempotent_reads
from grpckit.client._kinds import every_kind
from grpckit.client._metrics import client_metrics_interceptors
from grpckit.client._pool import ChannelPool
from grpckit.client._reloading import ReloadingChannel
from grpckit.client._retry_info import retry_info_interceptors
from grpckit.client._service_config import (
    MethodPolicy,
    RetryPolicy,
    service_config,
    service_config_options,
)
from grpckit.client._tracing import client_tracing_interceptors

__all__ = [
    "BULKHEAD_FULL",
    "CIRCUIT_OPEN",
    "DEFAULT_FAILURE_CODES",
    "DEFAULT_FALLBACK_CODES",
    "REQUEST_ID_KEY",
    "BreakerPolicy",
    "BreakerState",
    "Bulkhead",
    "ChannelPool",
    "CircuitBreaker",
    "MethodPolicy",
    "ReloadingChannel",
    "RetryPolicy",
    "bulkhead_interceptors",
    "circuit_breaker_interceptors",
    "client_metrics_interceptors",
    "client_tracing_interceptors",
    "connect",
    "dial",
    "every_kind",
    "hedging_interceptors",
    "idempotent_reads",
    "propagation_interceptors",
    "retry_info_interceptors",
    "service_config",
    "service_config_options",
    "with_fallback",
]
