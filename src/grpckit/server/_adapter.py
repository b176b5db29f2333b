"""The one adapter between grpc.aio method handlers and grpckit interceptors.

``grpc.aio.ServerInterceptor`` only sees the method name and metadata. :class:`Adapter` wraps the
``RpcMethodHandler`` of each method so that the interceptor chain sees a :class:`CallInfo`, the
request (or each streamed message through listeners), each response and the outcome.

Wire behaviour:

* ``StatusError`` (from a handler or an interceptor) becomes ``context.abort`` with the code,
  the message and ``grpc-status-details-bin`` in the trailers (merged with trailers the handler
  already set). Any other exception becomes INTERNAL "internal error" with an error id; never
  UNKNOWN, never the exception text.
* Response headers added with ``CallInfo.add_response_header`` are sent just before the first
  response message (or the error status), never before the handler runs, so a handler's
  ``context.set_compression()`` still applies.
* Streams are not buffered: each request is handed on as it arrives and each response written
  with ``context.write`` as the handler yields it. Cancellation reaches the handler as
  ``asyncio.CancelledError``.
"""

from __future__ import annotations

import asyncio
import inspect
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import grpc
import structlog

from grpckit.call import NESTED_KEY, CallInfo, RpcKind, set_current_call
from grpckit.errors import STATUS_DETAILS_KEY, StatusError, internal, unavailable
from grpckit.middleware import BUILTIN_SERVICES, Interceptor, Next, chain

__all__ = ["Adapter", "InFlight"]

_log = structlog.stdlib.get_logger("grpckit.server")

if TYPE_CHECKING:
    Continuation = Callable[
        [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
    ]


class InFlight:
    """Counts the intercepted calls running now; ``wait_idle`` returns when there are none.

    The App drains with it: health goes NOT_SERVING and ``draining`` is set. While draining,
    the server still accepts *nested* calls (made through :func:`grpckit.dial` from inside a
    handler, here or in another process: they carry ``NESTED_KEY``), because running calls
    may depend on them (``shop up`` serves every service on one port); new top-level calls get
    UNAVAILABLE ``DRAINING`` before any handler runs, so a client can retry them elsewhere.
    ``stop()`` waits here for the running calls before the server refuses everything.
    """

    def __init__(self) -> None:
        self.count = 0
        self.draining = False
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        self.count += 1
        if self.count == 1:
            self._idle.clear()

    def leave(self) -> None:
        self.count -= 1
        if self.count == 0:
            self._idle.set()

    async def wait_idle(self) -> None:
        """Return once no call is running (bound it with ``asyncio.timeout``)."""
        await self._idle.wait()


class Adapter(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """A ``grpc.aio.ServerInterceptor`` running grpckit ``interceptors`` around each handler.

    Example: ``grpc.aio.server(interceptors=[Adapter([recovery(), logging()])])``
    (:class:`grpckit.App` does this for you).
    """

    def __init__(
        self, interceptors: Sequence[Interceptor], *, include_builtin: bool = False
    ) -> None:
        self._interceptors = tuple(interceptors)
        self._include_builtin = include_builtin
        self._cache: dict[str, tuple[Any, grpc.RpcMethodHandler[Any, Any]]] = {}
        self.in_flight = InFlight()

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any]:  # None when the method is unknown
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler  # type: ignore[return-value]
        full_method: str = handler_call_details.method
        if self.in_flight.draining and _refused(full_method, handler_call_details):
            return _refusal(handler)
        cached = self._cache.get(full_method)
        if cached is not None and cached[0] is _behavior(handler):
            return cached[1]
        service, method = _split(full_method)
        if service in BUILTIN_SERVICES and not self._include_builtin:
            return handler
        wrapped = _wrap(handler, full_method, service, method, self._interceptors, self.in_flight)
        self._cache[full_method] = (_behavior(handler), wrapped)
        return wrapped


def _refused(full_method: str, details: grpc.HandlerCallDetails) -> bool:
    """While draining: a new top-level call to an application service (health and reflection
    keep answering; nested calls still get in)."""
    if _split(full_method)[0] in BUILTIN_SERVICES:
        return False
    return not any(key == NESTED_KEY for key, _ in details.invocation_metadata or ())


def _refusal(handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler of the same kind that answers UNAVAILABLE DRAINING without running anything."""
    status = unavailable(
        "the server is shutting down: retry the call (on another replica)", reason="DRAINING"
    ).to_status()

    async def refuse(_request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.abort(status.code, status.details, status.trailing_metadata)

    kind = RpcKind.of(handler.request_streaming, handler.response_streaming)
    return _FACTORIES[kind](
        refuse,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def _split(full_method: str) -> tuple[str, str]:
    service, _, method = full_method.lstrip("/").rpartition("/")
    return service, method


def _behavior(handler: grpc.RpcMethodHandler[Any, Any]) -> Any:
    return (
        handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
    )


def _wrap(
    handler: grpc.RpcMethodHandler[Any, Any],
    full_method: str,
    service: str,
    method: str,
    interceptors: Sequence[Interceptor],
    in_flight: InFlight,
) -> grpc.RpcMethodHandler[Any, Any]:
    kind = RpcKind.of(handler.request_streaming, handler.response_streaming)
    original = _behavior(handler)
    innermost = _INNERMOST[kind](original)
    run = chain(interceptors, innermost)

    async def serve(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        call = CallInfo(full_method, service, method, kind, context)
        if handler.request_streaming:
            call.requests = _receive(call, request)
        else:
            call.request = request
        set_current_call(call)
        in_flight.enter()
        try:
            try:
                await run(call)
            except BaseException as exc:
                await _fail(call, exc)
            if call.response_headers:
                await flush_headers(call)
            if call.response_trailers:
                context.set_trailing_metadata(_trailers(call))
        finally:
            in_flight.leave()
        return None if handler.response_streaming else call.response

    factory = _FACTORIES[kind]
    return factory(
        serve,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


_FACTORIES: dict[RpcKind, Callable[..., grpc.RpcMethodHandler[Any, Any]]] = {
    RpcKind.UNARY: grpc.unary_unary_rpc_method_handler,
    RpcKind.SERVER_STREAM: grpc.unary_stream_rpc_method_handler,
    RpcKind.CLIENT_STREAM: grpc.stream_unary_rpc_method_handler,
    RpcKind.BIDI_STREAM: grpc.stream_stream_rpc_method_handler,
}


def _unary_response(original: Any) -> Next:
    is_async = inspect.iscoroutinefunction(original)

    async def invoke(call: CallInfo) -> None:
        arg = call.requests if call.requests is not None else call.request
        response = original(arg, call.context)
        if is_async or inspect.isawaitable(response):
            response = await response
        call.response = response
        call.msgs_sent += 1
        for listener in call.listeners:
            listener.on_send(call, response)

    return invoke


def _stream_response(original: Any) -> Next:
    async def invoke(call: CallInfo) -> None:
        arg = call.requests if call.requests is not None else call.request
        responses = original(arg, call.context)
        if inspect.isawaitable(responses):  # reader/writer API: the handler writes itself
            await responses
            return
        context = call.context
        try:
            async for response in responses:
                if call.msgs_sent == 0 and call.response_headers:
                    await flush_headers(call)
                call.msgs_sent += 1
                call.response = response
                for listener in call.listeners:
                    listener.on_send(call, response)
                await context.write(response)
        finally:
            # A write that fails (client gone, cancellation) leaves the handler suspended at a
            # yield: close it now so its ``finally`` blocks run promptly, not at GC time.
            aclose = getattr(responses, "aclose", None)
            if aclose is not None:
                await aclose()

    return invoke


_INNERMOST: dict[RpcKind, Callable[[Any], Next]] = {
    RpcKind.UNARY: _unary_response,
    RpcKind.CLIENT_STREAM: _unary_response,
    RpcKind.SERVER_STREAM: _stream_response,
    RpcKind.BIDI_STREAM: _stream_response,
}


async def _receive(call: CallInfo, requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for message in requests:
        call.msgs_received += 1
        for listener in call.listeners:
            listener.on_receive(call, message)
        yield message


async def flush_headers(call: CallInfo) -> None:
    """Send the headers interceptors added, once; a no-op when there are none."""
    if not call.response_headers:
        return
    headers, call.response_headers = tuple(call.response_headers), []
    try:
        await call.context.send_initial_metadata(headers)
    except grpc.aio.UsageError:  # the handler sent its own headers: fall back to trailers
        call.response_trailers.extend(headers)


async def _fail(call: CallInfo, exc: BaseException) -> None:
    """Map ``exc`` to the wire status; always raises."""
    if not isinstance(exc, Exception) or isinstance(exc, grpc.aio.AbortError):
        raise exc  # cancellation, or a handler that called context.abort itself
    if not isinstance(exc, StatusError):
        error_id = uuid.uuid4().hex
        _log.error(
            "rpc.unhandled_exception",
            error_id=error_id,
            method=call.full_method,
            exc_info=exc,
        )
        exc = internal(error_id=error_id)
    await flush_headers(call)
    status = exc.to_status()
    await call.context.abort(status.code, status.details, _trailers(call, status))


def _trailers(
    call: CallInfo, status: grpc.Status | None = None
) -> tuple[tuple[str, str | bytes], ...]:
    """The handler's trailers + the interceptors' + the status details (replacing any)."""
    existing = tuple(call.context.trailing_metadata() or ())
    merged = existing + tuple(call.response_trailers)
    call.response_trailers = []
    if status is None:
        return merged
    kept = tuple((k, v) for k, v in merged if k != STATUS_DETAILS_KEY)
    return kept + tuple(status.trailing_metadata)
