"""The interceptors grpckit ships; each is a factory returning an :class:`~grpckit.Interceptor`.

Recommended order: ``recovery() → tracing() → logging() → metrics() → deadlines() → guards →
handler`` (``grpckit.defaults.default_interceptors()`` builds it).
"""

from grpckit.interceptors._deadlines import deadlines
from grpckit.interceptors._logging import logging
from grpckit.interceptors._metrics import metrics
from grpckit.interceptors._recovery import recovery

__all__ = ["deadlines", "logging", "metrics", "recovery"]
