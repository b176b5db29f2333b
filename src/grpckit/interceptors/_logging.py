"""logging: one structured record per finished call.

Fields: ``event="rpc"``, ``service``, ``method``, ``kind`` (unary, server_stream, client_stream,
bidi_stream), ``code`` (grpc code name), ``duration_ms``, ``peer``, ``request_id``; for
streams ``msgs_received`` and ``msgs_sent``; for errors ``message`` and ``reason``;
``trace_id`` and ``span_id`` when an OpenTelemetry span is current (put ``tracing()`` before
``logging()``); with ``log_metadata`` the invocation metadata, secrets redacted.

While :func:`grpckit.configure_logging` (JSON) is in force the record is rendered directly into
its line buffer: the same keys as a structlog record (``timestamp``, ``level``, ``logger``, and
structlog context variables), a few microseconds instead of the ~120 µs of structlog → stdlib →
JSON. Otherwise (console output, ``structlog.testing.capture_logs()``, a structlog logger passed
in) it goes through structlog as any other record.

The request id is taken from the ``x-request-id`` header or generated, stored in
``CallInfo.request_id`` (so :func:`grpckit.dial` forwards it) and returned to the caller as
``x-request-id`` initial metadata. Headers are sent late (just before the first response or
the status), so a handler's ``context.set_compression()`` keeps working.
Emits no status codes of its own.
"""

from __future__ import annotations

import json
import logging as stdlib_logging
import os
import sys
import time
from collections.abc import Callable, Collection
from json.encoder import encode_basestring_ascii as _json_str
from typing import Any, Literal

import grpc
import structlog

from grpckit.call import CallInfo, Outcome, RpcKind
from grpckit.logs import get_logger, json_sink, timestamp
from grpckit.middleware import Interceptor, Next

__all__ = ["DEFAULT_REDACTED", "level_for", "logging"]

REQUEST_ID_KEY = "x-request-id"
#: Longer incoming request ids are replaced by a generated one.
MAX_REQUEST_ID = 128
#: Where the logging interceptor returns the request id: initial or trailing metadata, or not.
EchoRequestId = Literal["initial", "trailing"] | None
#: Metadata keys whose values are never logged (substring match, lowercase).
DEFAULT_REDACTED = frozenset({"authorization", "cookie", "token", "secret", "password", "api-key"})
#: Distinct metadata keys / methods remembered by the renderer (beyond that: no caching).
_CACHE_LIMIT = 1024

_INFO = stdlib_logging.INFO
_WARNING = stdlib_logging.WARNING
_ERROR = stdlib_logging.ERROR
_LEVELS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: _INFO,
    grpc.StatusCode.CANCELLED: _INFO,
    grpc.StatusCode.INVALID_ARGUMENT: _INFO,
    grpc.StatusCode.NOT_FOUND: _INFO,
    grpc.StatusCode.ALREADY_EXISTS: _INFO,
    grpc.StatusCode.FAILED_PRECONDITION: _INFO,
    grpc.StatusCode.OUT_OF_RANGE: _INFO,
    grpc.StatusCode.UNAUTHENTICATED: _WARNING,
    grpc.StatusCode.PERMISSION_DENIED: _WARNING,
    grpc.StatusCode.RESOURCE_EXHAUSTED: _WARNING,
    grpc.StatusCode.ABORTED: _WARNING,
    grpc.StatusCode.UNIMPLEMENTED: _ERROR,
    grpc.StatusCode.INTERNAL: _ERROR,
    grpc.StatusCode.UNKNOWN: _ERROR,
    grpc.StatusCode.DATA_LOSS: _ERROR,
    grpc.StatusCode.UNAVAILABLE: _ERROR,
    grpc.StatusCode.DEADLINE_EXCEEDED: _ERROR,
}
_LEVEL_NAMES = {_INFO: "info", _WARNING: "warning", _ERROR: "error"}
_CODE_PARTS = {code: f',"code":"{code.name}"' for code in grpc.StatusCode}


def level_for(code: grpc.StatusCode) -> int:
    """The stdlib log level for a finished call with ``code``."""
    return _LEVELS.get(code, _ERROR)


class _SpanIds:
    """``(trace_id, span_id)`` in hex of the current OpenTelemetry span, or ``None``.

    Never imports OpenTelemetry: until something else (the tracing interceptor) has imported
    ``opentelemetry.trace`` there is no span to read. ~1 µs per call once it has.
    """

    __slots__ = ("_current_span",)

    def __init__(self) -> None:
        self._current_span: Callable[[], Any] | None = None

    def __call__(self) -> tuple[str, str] | None:
        current_span = self._current_span
        if current_span is None:
            module = sys.modules.get("opentelemetry.trace")
            if module is None:
                return None
            current_span = self._current_span = module.get_current_span
        context = current_span().get_span_context()
        if not context.is_valid:
            return None
        return f"{context.trace_id:032x}", f"{context.span_id:016x}"


class _Fields:
    """Builds the record's fields: a dict for structlog, or the JSON line itself."""

    __slots__ = ("_keys", "_log_metadata", "_logger_part", "_methods", "_redacted")

    def __init__(self, name: str, log_metadata: bool, redacted: Collection[str]) -> None:
        self._log_metadata = log_metadata
        self._redacted = tuple(k.lower() for k in redacted)
        self._logger_part = f',"event":"rpc","logger":{_json_str(name)}'
        self._methods: dict[str, str] = {}
        self._keys: dict[str, tuple[str, bool]] = {}  # key → ('"key":', redacted)

    def as_dict(
        self, call: CallInfo, outcome: Outcome, duration: float, ids: tuple[str, str] | None
    ) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "service": call.service,
            "method": call.method,
            "kind": call.kind.value,
            "code": outcome.code.name,
            "duration_ms": round(duration * 1000, 3),
            "peer": call.peer,
            "request_id": call.request_id,
        }
        if call.kind is not RpcKind.UNARY:
            fields["msgs_received"] = call.msgs_received if call.requests is not None else 1
            fields["msgs_sent"] = call.msgs_sent
        if outcome.code is not grpc.StatusCode.OK:
            fields["message"] = outcome.message
            reason = _reason(outcome)
            if reason:
                fields["reason"] = reason
        if ids is not None:
            fields["trace_id"], fields["span_id"] = ids
        if self._log_metadata:
            fields["metadata"] = self._metadata(call)
        return fields

    def _metadata(self, call: CallInfo) -> dict[str, str]:
        shown: dict[str, str] = {}
        for key, value in call.metadata:
            if any(secret in key for secret in self._redacted):
                shown[key] = "[redacted]"
            elif isinstance(value, bytes):
                shown[key] = f"<{len(value)} bytes>"
            else:
                shown[key] = value
        return shown

    def as_line(
        self,
        level: int,
        call: CallInfo,
        outcome: Outcome | None,
        duration: float,
        ids: tuple[str, str] | None,
        context: dict[str, Any],
    ) -> str:
        """The record as one JSON line, keys as structlog would write them.

        ``outcome`` is ``None`` for a call that ended OK (no need to build one).
        """
        code = grpc.StatusCode.OK if outcome is None else outcome.code
        line = (
            f'{{"timestamp":"{timestamp()}","level":"{_LEVEL_NAMES[level]}"{self._logger_part}'
            f'{self._method_part(call)}{_CODE_PARTS[code]},"duration_ms":{duration * 1000:.3f}'
            f',"peer":{_json_str(call.peer)},"request_id":{_json_str(call.request_id)}'
        )
        if call.kind is not RpcKind.UNARY:
            received = call.msgs_received if call.requests is not None else 1
            line += f',"msgs_received":{received},"msgs_sent":{call.msgs_sent}'
        if outcome is not None and code is not grpc.StatusCode.OK:
            line += f',"message":{_json_str(outcome.message)}'
            reason = _reason(outcome)
            if reason:
                line += f',"reason":{_json_str(reason)}'
        if ids is not None:
            line += f',"trace_id":"{ids[0]}","span_id":"{ids[1]}"'
        if self._log_metadata:
            line += self._metadata_part(call)
        for key, value in context.items():  # structlog context variables never override
            if key not in _RPC_KEYS:
                line += f",{_json_str(key)}:{_json_value(value)}"
        return line + "}\n"

    def _method_part(self, call: CallInfo) -> str:
        part = self._methods.get(call.full_method)
        if part is None:
            part = (
                f',"service":{_json_str(call.service)},"method":{_json_str(call.method)}'
                f',"kind":"{call.kind.value}"'
            )
            if len(self._methods) < _CACHE_LIMIT:
                self._methods[call.full_method] = part
        return part

    def _metadata_part(self, call: CallInfo) -> str:
        shown: dict[str, str] = {}  # a dict, so a repeated key shows its last value
        for key, value in call.metadata:
            prefix, redacted = self._keys.get(key) or self._key_entry(key)
            if redacted:
                shown[key] = prefix + '"[redacted]"'
            elif isinstance(value, bytes):
                shown[key] = f'{prefix}"<{len(value)} bytes>"'
            else:
                shown[key] = prefix + _json_str(value)
        return ',"metadata":{' + ",".join(shown.values()) + "}"

    def _key_entry(self, key: str) -> tuple[str, bool]:
        entry = (_json_str(key) + ":", any(secret in key for secret in self._redacted))
        if len(self._keys) < _CACHE_LIMIT:
            self._keys[key] = entry
        return entry


_RPC_KEYS = frozenset(
    {"timestamp", "level", "event", "logger", "service", "method", "kind", "code", "duration_ms"}
    | {"peer", "request_id", "msgs_received", "msgs_sent", "message", "reason", "metadata"}
    | {"trace_id", "span_id"}
)


def _json_value(value: Any) -> str:
    return json.dumps(value, default=repr)


def _reason(outcome: Outcome) -> str:
    for detail in outcome.details:
        reason = getattr(detail, "reason", None)
        if isinstance(reason, str):
            return reason
    return ""


class _Logging:
    __slots__ = ("_echo", "_fields", "_log", "_span_ids", "_stdlib")

    def __init__(
        self,
        logger: structlog.stdlib.BoundLogger | str | None,
        log_metadata: bool,
        redacted: Collection[str],
        echo: EchoRequestId,
    ) -> None:
        if logger is None or isinstance(logger, str):
            name = logger or "grpckit.rpc"
            self._log = get_logger(name)
            self._stdlib: stdlib_logging.Logger | None = stdlib_logging.getLogger(name)
        else:
            name, self._log, self._stdlib = "", logger, None
        self._fields = _Fields(name, log_metadata, redacted)
        self._echo = echo
        self._span_ids = _SpanIds()

    async def intercept(self, call: CallInfo, next_: Next) -> None:
        request_id = call.header(REQUEST_ID_KEY)
        if not isinstance(request_id, str) or not 0 < len(request_id) <= MAX_REQUEST_ID:
            request_id = os.urandom(16).hex()
        call.request_id = request_id
        if self._echo == "initial":
            call.add_response_header(REQUEST_ID_KEY, request_id)
        elif self._echo == "trailing":
            call.add_response_trailer(REQUEST_ID_KEY, request_id)
        started = time.perf_counter()
        error: BaseException | None = None
        try:
            await next_(call)
        except BaseException as exc:
            error = exc
            raise
        finally:
            self._emit(call, error, time.perf_counter() - started)

    def _emit(self, call: CallInfo, error: BaseException | None, duration: float) -> None:
        # A plain success needs no Outcome (a frozen dataclass costs ~1 µs to build).
        outcome = None if error is None and call.context.code() is None else Outcome.of(call, error)
        level = _INFO if outcome is None else _LEVELS.get(outcome.code, _ERROR)
        if self._stdlib is not None:
            sink = json_sink()
            if sink is not None:
                if self._stdlib.isEnabledFor(level):
                    context = structlog.contextvars.get_contextvars()
                    ids = self._span_ids()
                    sink.write(self._fields.as_line(level, call, outcome, duration, ids, context))
                return
        try:
            if not self._log.isEnabledFor(level):  # skip building fields nobody will see
                return
        except AttributeError:  # structlog not configured for stdlib (e.g. capture_logs)
            pass
        outcome = outcome or Outcome.of(call, error)
        fields = self._fields.as_dict(call, outcome, duration, self._span_ids())
        self._log.log(level, "rpc", **fields)


def logging(
    logger: structlog.stdlib.BoundLogger | str | None = None,
    *,
    log_metadata: bool = True,
    redacted: Collection[str] = DEFAULT_REDACTED,
    echo_request_id: EchoRequestId = "initial",
) -> Interceptor:
    """Log one ``event="rpc"`` record per finished call, at a level chosen by its code.

    OK and client errors (INVALID_ARGUMENT, NOT_FOUND, ...) log at info, auth failures and
    RESOURCE_EXHAUSTED at warning, server-side failures (INTERNAL, UNKNOWN, DATA_LOSS,
    UNAVAILABLE, DEADLINE_EXCEEDED, UNIMPLEMENTED) at error.

    ``logger`` is the logger name (the ``logger`` key; default ``"grpckit.rpc"``; rendered
    directly) or a structlog logger (its bound fields kept; every record goes through
    structlog, ~120 µs per call).
    ``echo_request_id`` chooses how the request id goes back to the caller: ``"initial"``
    (initial metadata; costs grpc.aio one extra batch per call, see docs/grpckit.md),
    ``"trailing"`` (rides in the status batch, nearly free) or ``None``.

    Example: ``App(interceptors=[recovery(), logging("orders.rpc")])``
    """
    return _Logging(logger, log_metadata, redacted, echo_request_id)
