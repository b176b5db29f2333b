"""The recommended server chain, in its one right order.

``recovery → tracing → logging → metrics → deadlines``: recovery outermost so that everything
inside is covered; tracing before logging so each ``rpc`` record carries the span's
``trace_id`` / ``span_id``; metrics after tracing so its exemplars find the span; deadlines
innermost of the observers so that observers see DEADLINE_EXCEEDED like any other outcome.
Guards (auth, rbac, rate limit, validation) go after it.

Tracing and metrics are optional extras. By default each is included when its package imports
(``opentelemetry-api`` / ``prometheus-client``) and silently left out otherwise; pass ``True``
to require it (``ImportError`` when missing) or ``False`` to leave it out.

Example::

    from grpckit.defaults import default_interceptors

    app = App(ServerConfig(port=50051), name="orders",
              interceptors=[*default_interceptors(default_deadline=10), auth(...)])
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from grpckit.interceptors import deadlines, logging, recovery
from grpckit.interceptors._logging import EchoRequestId
from grpckit.middleware import Interceptor

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider
    from prometheus_client import CollectorRegistry

__all__ = ["default_interceptors"]


def default_interceptors(
    *,
    tracing: bool | None = None,
    tracer_provider: TracerProvider | None = None,
    metrics: bool | None = None,
    registry: CollectorRegistry | None = None,
    logger: str = "grpckit.rpc",
    log_metadata: bool = True,
    echo_request_id: EchoRequestId = "initial",
    default_deadline: float | None = 30.0,
    max_deadline: float | None = None,
) -> list[Interceptor]:
    """``[recovery(), tracing(), logging(), metrics(), deadlines()]``, configured.

    ``tracing`` / ``metrics``: ``None`` includes the interceptor when its extra is installed,
    ``True`` requires it, ``False`` leaves it out. ``tracer_provider`` and ``registry`` default
    to the global provider and :func:`grpckit.metrics.default_registry`. ``logger``,
    ``log_metadata`` and ``echo_request_id`` go to :func:`~grpckit.interceptors.logging`;
    ``default_deadline`` / ``max_deadline`` to :func:`~grpckit.interceptors.deadlines`.

    Example: ``App(interceptors=default_interceptors(metrics=False))``
    """
    chain: list[Interceptor] = [recovery()]
    traced = _optional(tracing, "grpckit.interceptors._tracing", "tracing", tracer_provider)
    if traced is not None:
        chain.append(traced)
    chain.append(logging(logger, log_metadata=log_metadata, echo_request_id=echo_request_id))
    counted = _optional(metrics, "grpckit.interceptors._metrics", "metrics", registry)
    if counted is not None:
        chain.append(counted)
    chain.append(deadlines(default=default_deadline, maximum=max_deadline))
    return chain


def _optional(wanted: bool | None, module: str, factory: str, arg: Any) -> Interceptor | None:
    """``module.factory(arg)``; ``None`` when not wanted, or missing and not required."""
    if wanted is False:
        return None
    try:
        make: Callable[[Any], Interceptor] = getattr(importlib.import_module(module), factory)
        return make(arg)
    except ImportError:
        if wanted:
            raise
        return None
