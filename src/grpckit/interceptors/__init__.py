"""The interceptors grpckit ships; each is a factory returning an :class:`~grpckit.Interceptor`.

Recommended order: ``recovery() → tracing() → logging() → metrics() → deadlines()`` (what
:func:`grpckit.default_interceptors` builds), then the guards, ``validation()`` last, then the
handler.
"""

from grpckit.interceptors._deadlines import deadlines
from grpckit.interceptors._logging import logging
from grpckit.interceptors._metrics import metrics
from grpckit.interceptors._recovery import recovery
from grpckit.interceptors._tracing import tracing
from grpckit.interceptors._validation import validation

__all__ = ["deadlines", "logging", "metrics", "recovery", "tracing", "validation"]
