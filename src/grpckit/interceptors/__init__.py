"""The interceptors grpckit ships; each is a factory returning an :class:`~grpckit.Interceptor`.

Recommended order: ``recovery() → logging() → deadlines() → guards → handler``.
"""

from grpckit.interceptors._deadlines import deadlines
from grpckit.interceptors._logging import logging
from grpckit.interceptors._recovery import recovery

__all__ = ["deadlines", "logging", "recovery"]
