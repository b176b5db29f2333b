"""The interceptors grpckit ships; each is a factory returning an :class:`~grpckit.Interceptor`.

Recommended order: ``recovery() → tracing() → logging() → metrics() → deadlines()`` (what
:func:`grpckit.default_interceptors` builds), then the guards, ``validation()`` last, then the
handler.
"""

from grpckit.interceptors._audit import (
    AuditRecord,
    AuditSink,
    audit,
    default_resource,
    state_changing,
)
from grpckit.interceptors._deadlines import deadlines
from grpckit.interceptors._logging import logging
from grpckit.interceptors._metrics import metrics
from grpckit.interceptors._ratelimit import by_metadata, by_method, by_peer_ip, rate_limit
from grpckit.interceptors._recovery import recovery
from grpckit.interceptors._tracing import tracing
from grpckit.interceptors._validation import validation

__all__ = [
    "AuditRecord",
    "AuditSink",
    "audit",
    "by_metadata",
    "by_method",
    "by_peer_ip",
    "deadlines",
    "default_resource",
    "logging",
    "metrics",
    "rate_limit",
    "recovery",
    "state_changing",
    "tracing",
    "validation",
]
