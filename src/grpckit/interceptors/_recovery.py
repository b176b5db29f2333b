"""recovery: unexpected exceptions become INTERNAL once, logged with an error id.

Emits: INTERNAL "internal error" with ``ErrorInfo(reason="INTERNAL",
metadata={"error_id": ...})``. ``StatusError``, ``context.abort`` and cancellation pass through.
Place it first (outermost) so that everything inside is covered. Its log line carries the
trace and span ids when ``tracing()`` runs inside it.
"""

from __future__ import annotations

import uuid

import grpc
import structlog

from grpckit.call import CallInfo
from grpckit.errors import StatusError, internal
from grpckit.logs import get_logger
from grpckit.middleware import Interceptor, Next

__all__ = ["recovery"]


class _Recovery:
    __slots__ = ("_log",)

    def __init__(self, logger: structlog.stdlib.BoundLogger) -> None:
        self._log = logger

    async def intercept(self, call: CallInfo, next_: Next) -> None:
        try:
            await next_(call)
        except (StatusError, grpc.aio.AbortError):
            raise
        except Exception as exc:
            error_id = uuid.uuid4().hex
            self._log.error(
                "rpc.unexpected_error",
                error_id=error_id,
                service=call.service,
                method=call.method,
                request_id=call.request_id,
                **_trace_fields(call),
                exc_info=exc,
            )
            raise internal(error_id=error_id) from None


def _trace_fields(call: CallInfo) -> dict[str, str]:
    """The trace and span ids of the call's server span (``tracing()`` runs inside recovery,
    so its span has ended by the time recovery logs)."""
    ctx = call.span_context
    if ctx is None or not ctx.is_valid:
        return {}
    return {"trace_id": format(ctx.trace_id, "032x"), "span_id": format(ctx.span_id, "016x")}


def recovery(logger: structlog.stdlib.BoundLogger | None = None) -> Interceptor:
    """Turn unexpected handler exceptions into INTERNAL with an ``error_id``; log the traceback.

    Example: ``App(interceptors=[recovery(), logging()])``
    """
    return _Recovery(logger if logger is not None else get_logger("grpckit.recovery"))
