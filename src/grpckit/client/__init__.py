"""Client side: :func:`dial`, the propagation interceptors it installs, client metrics and
tracing interceptors."""

from grpckit.client._deadline import REQUEST_ID_KEY, propagation_interceptors
from grpckit.client._dial import dial
from grpckit.client._metrics import client_metrics_interceptors
from grpckit.client._tracing import client_tracing_interceptors

__all__ = [
    "REQUEST_ID_KEY",
    "client_metrics_interceptors",
    "client_tracing_interceptors",
    "dial",
    "propagation_interceptors",
]
