"""Client side: :func:`dial`, the propagation interceptors it installs, client metrics and
tracing interceptors, the service config helper and the circuit breaker."""

from grpckit.client._breaker import (
    CIRCUIT_OPEN,
    DEFAULT_FAILURE_CODES,
    BreakerPolicy,
    BreakerState,
    CircuitBreaker,
    circuit_breaker_interceptors,
)
from grpckit.client._deadline import REQUEST_ID_KEY, propagation_interceptors
from grpckit.client._dial import dial
from grpckit.client._metrics import client_metrics_interceptors
from grpckit.client._reloading import ReloadingChannel
from grpckit.client._service_config import (
    MethodPolicy,
    RetryPolicy,
    service_config,
    service_config_options,
)
from grpckit.client._tracing import client_tracing_interceptors

__all__ = [
    "CIRCUIT_OPEN",
    "DEFAULT_FAILURE_CODES",
    "REQUEST_ID_KEY",
    "BreakerPolicy",
    "BreakerState",
    "CircuitBreaker",
    "MethodPolicy",
    "ReloadingChannel",
    "RetryPolicy",
    "circuit_breaker_interceptors",
    "client_metrics_interceptors",
    "client_tracing_interceptors",
    "dial",
    "propagation_interceptors",
    "service_config",
    "service_config_options",
]
