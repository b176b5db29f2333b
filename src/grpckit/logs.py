"""Structured logging setup: structlog over stdlib, one JSON object per line on stderr.

Call :func:`configure_logging` once, in ``main``. Every record carries ``timestamp``
(ISO 8601, UTC), ``level``, ``event`` and ``logger``, plus bound fields.

Example::

    from grpckit import configure_logging, get_logger

    configure_logging("info", service="orders")
    get_logger("orders").info("order.created", order_id="o-1")
    # {"order_id": "o-1", "event": "order.created", "service": "orders", "logger": "orders",
    #  "level": "info", "timestamp": "2026-01-01T00:00:00.000000Z"}
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog
from structlog.types import EventDict, Processor, WrappedLogger

__all__ = ["configure_logging", "get_logger"]


def _add_service(service: str) -> Processor:
    def add(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
        event_dict.setdefault("service", service)
        return event_dict

    return add


_RENDERED = "_grpckit_rendered"


def _hand_to_stdlib(
    _: WrappedLogger, __: str, rendered: Any
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Pass the already rendered line to stdlib, marked so the formatter leaves it alone."""
    return (rendered,), {"extra": {_RENDERED: True}}


class _Formatter(structlog.stdlib.ProcessorFormatter):
    """Lines rendered by structlog pass through untouched (no second LogRecord, no re-render);
    records from plain stdlib loggers (grpc, sqlalchemy ...) are rendered the same way."""

    def format(self, record: logging.LogRecord) -> str:
        if getattr(record, _RENDERED, False):
            return str(record.msg)
        return super().format(record)


def configure_logging(
    level: str = "info", *, json: bool = True, service: str | None = None
) -> None:
    """Route structlog and stdlib logging to stderr, one JSON object (or console line) each.

    ``service`` is added to every record. Safe to call again (e.g. in tests): it replaces the
    previous configuration.
    """
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if service:
        shared.append(_add_service(service))
    renderer: Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
            _hand_to_stdlib,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = _Formatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_grpckit", False)]:
        root.removeHandler(old)
    handler._grpckit = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
    # The logging HOWTO's "Optimization" advice: no caller (file/line) lookup per record; the
    # JSON lines do not use it, and it costs a frame walk on every call.
    logging._srcfile = None


def get_logger(name: str, **bound: Any) -> structlog.stdlib.BoundLogger:
    """A structlog logger named ``name`` (the ``logger`` key), with ``bound`` fields.

    Example: ``log = get_logger("orders.store", shard=3); log.info("opened")``
    """
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name, **bound)
    return logger
