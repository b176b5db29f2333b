"""What interceptors and handlers know about the call being served.

:class:`CallInfo` is built once per call by the server adapter and published through a context
variable, so code running inside a handler (including outgoing client calls made by
:func:`grpckit.dial` channels) can read it with :func:`current_call`.

Example::

    from grpckit import current_call

    async def GetOrder(self, request, context):
        call = current_call()
        assert call is not None and call.method == "GetOrder"
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import enum
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc
from google.protobuf.message import Message

from grpckit.errors import StatusError

__all__ = [
    "CallInfo",
    "MessageListener",
    "Metadata",
    "Outcome",
    "RpcKind",
    "current_call",
    "set_current_call",
]

#: Invocation metadata as grpc hands it over: ``(key, str | bytes)`` pairs.
Metadata = tuple[tuple[str, str | bytes], ...]


class RpcKind(enum.Enum):
    """The four RPC shapes; the value is the name used in logs and metrics."""

    UNARY = "unary"
    SERVER_STREAM = "server_stream"
    CLIENT_STREAM = "client_stream"
    BIDI_STREAM = "bidi_stream"

    @classmethod
    def of(cls, request_streaming: bool, response_streaming: bool) -> RpcKind:
        """The kind of a method from its streaming flags."""
        if request_streaming:
            return cls.BIDI_STREAM if response_streaming else cls.CLIENT_STREAM
        return cls.SERVER_STREAM if response_streaming else cls.UNARY


class MessageListener(Protocol):
    """Sees every message of a call as it passes, without buffering.

    Register with :meth:`CallInfo.listen`. Raising :class:`~grpckit.StatusError` from
    ``on_receive`` rejects the call (the handler sees it from its request iterator).
    """

    def on_receive(self, call: CallInfo, message: Any) -> None:
        """Called for each request message before the handler sees it."""

    def on_send(self, call: CallInfo, message: Any) -> None:
        """Called for each response message before it is written."""


#: Metadata key :func:`grpckit.dial` adds to calls made from inside a handler: a draining
#: server still accepts these (running calls may depend on them), not new top-level calls.
NESTED_KEY = "grpckit-nested"


@dataclass(eq=False)
class CallInfo:
    """One call being served. Built by the adapter; interceptors may annotate it.

    ``request`` is the request message of unary-request calls (``None`` for client streams),
    ``requests`` the (counted, listened) request iterator of client streams, and ``response``
    the last response message produced so far;
    ``deadline`` is an absolute ``time.monotonic()`` value set by the deadline interceptor
    when it bounds a call the client sent without a deadline.
    """

    full_method: str
    service: str
    method: str
    kind: RpcKind
    context: grpc.aio.ServicerContext[Any, Any]
    request: Any = None
    requests: AsyncIterator[Any] | None = None
    response: Any = None
    start_time: float = field(default_factory=time.monotonic)
    request_id: str = ""
    deadline: float | None = None
    #: False once :func:`detach_deadline` ran: outgoing calls keep the request id (and the
    #: trace) but no longer inherit this call's remaining time.
    propagate_deadline: bool = True
    #: The OpenTelemetry span context of this call's server span, set by ``tracing()``, so that
    #: interceptors outside it (``recovery()``) can still log the trace and span ids.
    span_context: Any = None
    #: Who is calling (a :class:`grpckit.auth.Principal`), set by ``authentication()``.
    principal: Any = None
    msgs_received: int = 0
    msgs_sent: int = 0
    listeners: list[MessageListener] = field(default_factory=list)
    response_headers: list[tuple[str, str | bytes]] = field(default_factory=list)
    response_trailers: list[tuple[str, str | bytes]] = field(default_factory=list)
    _metadata: Metadata | None = None

    @property
    def peer(self) -> str:
        """The caller's address as grpc reports it (``ipv4:127.0.0.1:5555``)."""
        return str(self.context.peer())

    @property
    def metadata(self) -> Metadata:
        """Invocation metadata sent by the client."""
        if self._metadata is None:
            self._metadata = tuple(self.context.invocation_metadata() or ())
        return self._metadata

    def header(self, key: str) -> str | bytes | None:
        """The first invocation metadata value for ``key`` (lowercase), or ``None``."""
        for k, v in self.metadata:
            if k == key:
                return v
        return None

    def listen(self, listener: MessageListener) -> None:
        """Register a :class:`MessageListener` for the rest of this call."""
        self.listeners.append(listener)

    def add_response_header(self, key: str, value: str | bytes) -> None:
        """Add initial (header) metadata, sent just before the first response or the status.

        Headers are flushed late on purpose: ``context.set_compression()`` called by a
        handler still applies, which an early ``send_initial_metadata`` would break.
        """
        self.response_headers.append((key, value))

    def add_response_trailer(self, key: str, value: str | bytes) -> None:
        """Add trailing metadata, merged with the handler's own trailers when the call ends.

        Cheaper than :meth:`add_response_header`: it rides in the final status batch.
        """
        self.response_trailers.append((key, value))

    def time_remaining(self) -> float | None:
        """Seconds left before the tighter of the client deadline and :attr:`deadline`."""
        remaining: float | None = self.context.time_remaining()
        if self.deadline is not None:
            local = self.deadline - time.monotonic()
            remaining = local if remaining is None else min(remaining, local)
        return remaining

    def elapsed(self) -> float:
        """Seconds since the call started."""
        return time.monotonic() - self.start_time


@dataclass(frozen=True)
class Outcome:
    """How a call ended, as the caller sees it.

    Example::

        try:
            await next_(call)
        except BaseException as exc:
            outcome = Outcome.of(call, exc)
            raise
    """

    code: grpc.StatusCode
    message: str = ""
    details: tuple[Message, ...] = ()
    exception: BaseException | None = None

    @classmethod
    def of(cls, call: CallInfo, exc: BaseException | None) -> Outcome:
        """Classify the end of a call: ``exc`` is what the chain raised (``None`` if it returned).

        ``StatusError`` keeps its code; cancellation is CANCELLED; ``context.abort`` and
        ``context.set_code`` are read back from the context; any other exception is INTERNAL
        (the adapter never lets UNKNOWN out).
        """
        if exc is None:
            code = _context_code(call)
            return cls(code or grpc.StatusCode.OK, _context_details(call))
        if isinstance(exc, StatusError):
            return cls(exc.code, exc.message, exc.details, exc)
        if isinstance(exc, asyncio.CancelledError):
            return cls(grpc.StatusCode.CANCELLED, "cancelled", (), exc)
        if isinstance(exc, grpc.aio.AbortError):
            code = _context_code(call) or grpc.StatusCode.UNKNOWN
            return cls(code, _context_details(call), (), exc)
        return cls(grpc.StatusCode.INTERNAL, "internal error", (), exc)


def _context_code(call: CallInfo) -> grpc.StatusCode | None:
    code = call.context.code()
    if code is None or isinstance(code, grpc.StatusCode):
        return code
    return grpc.StatusCode.UNKNOWN


def _context_details(call: CallInfo) -> str:
    details = call.context.details()
    if isinstance(details, bytes):
        return details.decode("utf-8", "replace")
    return str(details or "")


_CURRENT: contextvars.ContextVar[CallInfo | None] = contextvars.ContextVar(
    "grpckit_current_call", default=None
)


def set_current_call(call: CallInfo | None) -> contextvars.Token[CallInfo | None]:
    """Set what :func:`current_call` returns in this context; the adapter does it per call.

    ``set_current_call(None)`` inside a new task detaches work from the incoming call, so
    outgoing calls get their own timeouts (e.g. compensation that must outlive the caller).

    Example::

        async def detached(work):
            set_current_call(None)  # only this task's copy of the context
            return await work
        await asyncio.create_task(detached(compensate()))
    """
    return _CURRENT.set(call)


def detach_deadline() -> None:
    """In the current task's context, stop capping outgoing calls by the incoming deadline.

    For work that must finish although the caller may give up (an undo after money moved):
    the outgoing calls get their own timeouts but still carry the request id and trace.
    Call it at the start of a task (``asyncio.create_task`` copies the context).

    Example::

        async def undo() -> None:
            detach_deadline()
            await payments.RefundPayment(request, timeout=5)
    """
    call = _CURRENT.get()
    if call is not None and call.propagate_deadline:
        _CURRENT.set(dataclasses.replace(call, propagate_deadline=False))


def current_call() -> CallInfo | None:
    """The :class:`CallInfo` of the grpckit-served handler running now, or ``None``.

    Example: ``call = current_call(); rid = call.request_id if call else ""``
    """
    return _CURRENT.get()
