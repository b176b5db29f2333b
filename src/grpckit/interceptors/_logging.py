"""logging: one structured record per finished call.

Fields: ``event="rpc"``, ``service``, ``method``, ``kind`` (unary, server_stream, client_stream,
bidi_stream), ``code`` (grpc code name), ``duration_ms``, ``peer``, ``request_id``; for
streams ``msgs_received`` and ``msgs_sent``; for errors ``message`` and ``reason``; with
``log_metadata`` the invocation metadata, secrets redacted.

The request id is taken from the ``x-request-id`` header or generated, stored in
``CallInfo.request_id`` (so :func:`grpckit.dial` forwards it) and returned to the caller as
``x-request-id`` initial metadata. Headers are sent late (just before the first response or
the status), so a handler's ``context.set_compression()`` keeps working.
Emits no status codes of its own.
"""

from __future__ import annotations

import logging as stdlib_logging
import time
import uuid
from collections.abc import Collection
from typing import Any, Literal

import grpc
import structlog

from grpckit.call import CallInfo, Outcome, RpcKind
from grpckit.logs import get_logger
from grpckit.middleware import Interceptor, Next

__all__ = ["DEFAULT_REDACTED", "level_for", "logging"]

REQUEST_ID_KEY = "x-request-id"
#: Longer incoming request ids are replaced by a generated one.
MAX_REQUEST_ID = 128
#: Where the logging interceptor returns the request id: initial or trailing metadata, or not.
EchoRequestId = Literal["initial", "trailing"] | None
#: Metadata keys whose values are never logged (substring match, lowercase).
DEFAULT_REDACTED = frozenset({"authorization", "cookie", "token", "secret", "password", "api-key"})

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


def level_for(code: grpc.StatusCode) -> int:
    """The stdlib log level for a finished call with ``code``."""
    return _LEVELS.get(code, _ERROR)


class _Logging:
    __slots__ = ("_echo", "_log", "_log_metadata", "_redacted")

    def __init__(
        self,
        logger: structlog.stdlib.BoundLogger,
        log_metadata: bool,
        redacted: Collection[str],
        echo: EchoRequestId,
    ) -> None:
        self._log = logger
        self._log_metadata = log_metadata
        self._redacted = tuple(k.lower() for k in redacted)
        self._echo = echo

    async def intercept(self, call: CallInfo, next_: Next) -> None:
        request_id = call.header(REQUEST_ID_KEY)
        if not isinstance(request_id, str) or not 0 < len(request_id) <= MAX_REQUEST_ID:
            request_id = uuid.uuid4().hex
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
            self._emit(call, Outcome.of(call, error), time.perf_counter() - started)

    def _emit(self, call: CallInfo, outcome: Outcome, duration: float) -> None:
        level = level_for(outcome.code)
        try:
            if not self._log.isEnabledFor(level):  # skip building fields nobody will see
                return
        except AttributeError:  # structlog not configured for stdlib (e.g. capture_logs)
            pass
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
        if self._log_metadata:
            fields["metadata"] = self._metadata(call)
        self._log.log(level, "rpc", **fields)

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


def _reason(outcome: Outcome) -> str:
    for detail in outcome.details:
        reason = getattr(detail, "reason", None)
        if isinstance(reason, str):
            return reason
    return ""


def logging(
    logger: structlog.stdlib.BoundLogger | None = None,
    *,
    log_metadata: bool = True,
    redacted: Collection[str] = DEFAULT_REDACTED,
    echo_request_id: EchoRequestId = "initial",
) -> Interceptor:
    """Log one ``event="rpc"`` record per finished call, at a level chosen by its code.

    OK and client errors (INVALID_ARGUMENT, NOT_FOUND, ...) log at info, auth failures and
    RESOURCE_EXHAUSTED at warning, server-side failures (INTERNAL, UNKNOWN, DATA_LOSS,
    UNAVAILABLE, DEADLINE_EXCEEDED, UNIMPLEMENTED) at error.

    ``echo_request_id`` chooses how the request id goes back to the caller: ``"initial"``
    (initial metadata; costs grpc.aio one extra batch per call, see docs/grpckit.md),
    ``"trailing"`` (rides in the status batch, nearly free) or ``None``.

    Example: ``App(interceptors=[recovery(), logging(get_logger("orders.rpc"))])``
    """
    return _Logging(
        logger if logger is not None else get_logger("grpckit.rpc"),
        log_metadata,
        redacted,
        echo_request_id,
    )
