"""Structured logging setup: structlog over stdlib, one JSON object per line on stderr.

Call :func:`configure_logging` once, in ``main``. Every record carries ``timestamp``
(ISO 8601, UTC), ``level``, ``event`` and ``logger``, plus bound fields.

Lines go through one small buffer (:class:`LineSink`): inside a running event loop they are
written together at most ``flush_interval`` seconds later (5 ms by default), outside a loop at
once, and always at exit (``atexit``, ``logging.shutdown``) or on :func:`flush_logs`. A crash
that kills the process outright loses at most the last ``flush_interval`` of lines. The
per-call ``rpc`` record of :func:`grpckit.interceptors.logging` is rendered straight into that
buffer (same fields, no structlog or stdlib machinery per call) while this configuration is
in force.

Example::

    from grpckit import configure_logging, get_logger

    configure_logging("info", service="orders")
    get_logger("orders").info("order.created", order_id="o-1")
    # {"order_id": "o-1", "event": "order.created", "service": "orders", "logger": "orders",
    #  "level": "info", "timestamp": "2026-01-01T00:00:00.000000Z"}
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import sys
import threading
import time
from typing import Any, TextIO

import structlog
from structlog.types import EventDict, Processor, WrappedLogger

__all__ = ["LineSink", "configure_logging", "flush_logs", "get_logger", "json_sink"]

#: Lines buffered before a write is forced, whatever the timer says.
MAX_BUFFERED_LINES = 512


class LineSink:
    """Buffers whole lines for ``stream``; written on a short timer inside an event loop.

    ``write`` never blocks on the stream inside a loop: the first line of a batch arms one
    ``call_later(flush_interval)`` timer and later lines just join the batch. Outside a loop
    (or with ``flush_interval=0``) every line is written at once. Thread-safe.

    Example::

        sink = LineSink(sys.stderr, flush_interval=0.005)
        sink.write('{"event": "x"}\\n')
        sink.flush()
    """

    __slots__ = ("_lines", "_lock", "_loop", "flush_interval", "stream")

    def __init__(self, stream: TextIO, flush_interval: float = 0.005) -> None:
        self.stream = stream
        self.flush_interval = flush_interval
        self._lines: list[str] = []
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop whose timer is armed
        self._lock = threading.Lock()

    def write(self, line: str) -> None:
        """Queue ``line`` (which ends with a newline)."""
        self._lines.append(line)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        if loop is self._loop and len(self._lines) < MAX_BUFFERED_LINES:
            return  # a flush is already scheduled on this loop
        if self._loop is not None or not self.flush_interval:
            self.flush()  # another loop armed the timer (it may never run), or no buffering
            if not self.flush_interval:
                return
        self._loop = loop
        loop.call_later(self.flush_interval, self._timer_flush, loop)

    def _timer_flush(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._loop is loop:
            self.flush()

    def flush(self) -> None:
        """Write every queued line now."""
        self._loop = None
        if not self._lines:
            return
        with self._lock:
            lines, self._lines = self._lines, []
            if not lines:
                return
            try:
                self.stream.write("".join(lines))
                self.stream.flush()
            except (OSError, ValueError):  # stream closed (interpreter exit, test capture)
                pass


class _SinkHandler(logging.Handler):
    """The stdlib handler: formats records and queues them in the shared :class:`LineSink`."""

    def __init__(self, sink: LineSink) -> None:
        super().__init__()
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.sink.write(self.format(record) + "\n")
        except Exception:
            self.handleError(record)

    def flush(self) -> None:
        self.sink.flush()


class _State:
    """What configure_logging installed: the JSON sink, valid while structlog still uses
    ``processors`` (capture_logs(), reset_defaults() or another configure() replace it)."""

    sink: LineSink | None = None
    processors: object = None


_STATE = _State()


def json_sink() -> LineSink | None:
    """The sink of the JSON configuration in force, or ``None`` (not configured, console
    output, or structlog reconfigured since, e.g. by ``structlog.testing.capture_logs``).

    Renderers of hot records (the per-call ``rpc`` line) write here directly.
    Example: ``sink = json_sink(); sink.write(line) if sink else log.info(...)``
    """
    if _STATE.sink is not None and structlog.get_config()["processors"] is _STATE.processors:
        return _STATE.sink
    return None


def flush_logs() -> None:
    """Write buffered log lines now (e.g. before reading captured stderr in a test).

    Example: ``flush_logs(); out = capsys.readouterr().err``
    """
    if _STATE.sink is not None:
        _STATE.sink.flush()


atexit.register(flush_logs)


class _Timestamps:
    """ISO 8601 UTC timestamps with microseconds; the date part is formatted once a second."""

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def now(self) -> str:
        """``2026-01-01T00:00:00.000000Z`` for the current time."""
        now = time.time()
        second = int(now)
        if second != self._second:
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        return f"{self._prefix}.{int((now - second) * 1e6):06d}Z"


#: ``timestamp()`` → ``"2026-01-01T00:00:00.000000Z"``, the format of every record.
timestamp = _Timestamps().now


def _add_timestamp(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    event_dict["timestamp"] = timestamp()
    return event_dict


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
    level: str = "info",
    *,
    json: bool = True,
    service: str | None = None,
    flush_interval: float = 0.005,
) -> None:
    """Route structlog and stdlib logging to stderr, one JSON object (or console line) each.

    ``service`` is added to every record. ``flush_interval`` bounds how long a line waits in
    the buffer inside an event loop (0 writes every line at once). Safe to call again (e.g. in
    tests): it replaces the previous configuration.

    Example: ``configure_logging("info", service="orders")`` in ``main``.
    """
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        _add_timestamp,
    ]
    if service:
        shared.append(_add_service(service))
    renderer: Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    processors: list[Processor] = [
        structlog.stdlib.filter_by_level,
        *shared,
        structlog.stdlib.PositionalArgumentsFormatter(),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
        renderer,
        _hand_to_stdlib,
    ]
    structlog.configure(
        processors=processors,
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    _install_handler(shared, renderer, LineSink(sys.stderr, flush_interval))
    root = logging.getLogger()
    root.setLevel(level.upper())
    _STATE.processors = structlog.get_config()["processors"] if json else None
    # The logging HOWTO's "Optimization" advice: no caller (file/line) lookup per record; the
    # JSON lines do not use it, and it costs a frame walk on every call.
    logging._srcfile = None


def _install_handler(shared: list[Processor], renderer: Processor, sink: LineSink) -> None:
    """Replace grpckit's root handler (flushing the old sink) with one writing to ``sink``."""
    formatter = _Formatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = _SinkHandler(sink)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_grpckit", False)]:
        old.flush()
        root.removeHandler(old)
    handler._grpckit = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    flush_logs()
    _STATE.sink = sink


def get_logger(name: str, **bound: Any) -> structlog.stdlib.BoundLogger:
    """A structlog logger named ``name`` (the ``logger`` key), with ``bound`` fields.

    Example: ``log = get_logger("orders.store", shard=3); log.info("opened")``
    """
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name, **bound)
    return logger
