"""Graceful degradation: answer from a fallback when a dependency cannot.

Not an interceptor: a fallback is specific to the call site (a cached product, an empty list of
recommendations, "price unavailable"), so it is written there, around the awaited call.

Example::

    product = await with_fallback(
        catalog.GetProduct(GetProductRequest(product_id=pid)),
        lambda error: cache.get(pid) or Product(product_id=pid, name="(unavailable)"),
    )
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Collection
from typing import TypeVar, cast

import grpc

from grpckit.errors import StatusError
from grpckit.logs import get_logger

__all__ = ["DEFAULT_FALLBACK_CODES", "with_fallback"]

T = TypeVar("T")

#: The statuses that mean "the dependency could not answer now", the default of ``on``.
DEFAULT_FALLBACK_CODES: frozenset[grpc.StatusCode] = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)
_LOG = get_logger("grpckit.client")


async def with_fallback(
    call: Awaitable[T],
    fallback: Callable[[grpc.aio.AioRpcError], T | Awaitable[T]],
    *,
    on: Collection[grpc.StatusCode] = DEFAULT_FALLBACK_CODES,
) -> T:
    """``await call``; if it fails with a status in ``on``, the (awaited) ``fallback(error)``.

    Other statuses (caller mistakes such as INVALID_ARGUMENT or NOT_FOUND, which a fallback
    would hide) propagate, as do exceptions raised by ``fallback``. Each fallback is logged
    (``client.fallback``, info, with the code and ``ErrorInfo`` reason).

    Example::

        async def from_cache(error: grpc.aio.AioRpcError) -> Product:
            return await cache.product(pid)

        product = await with_fallback(stub.GetProduct(request), from_cache)
        names = await with_fallback(stub.ListNames(request), lambda _: ListNamesResponse())
    """
    try:
        return await call
    except grpc.aio.AioRpcError as error:
        if error.code() not in on:
            raise
        _LOG.info(
            "client.fallback",
            code=error.code().name,
            reason=StatusError.from_rpc_error(error).reason,
        )
        result = fallback(error)
        if inspect.isawaitable(result):
            return cast(T, await result)
        return result
