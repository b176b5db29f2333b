"""Assertions for tests of gRPC services."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import grpc

from grpckit.errors import StatusError

__all__ = ["expect_status"]


async def expect_status(
    call: Awaitable[Any], code: grpc.StatusCode, *, reason: str | None = None
) -> StatusError:
    """Await ``call``, require it to fail with ``code`` (and ``reason``); return the error.

    Example::

        err = await expect_status(stub.GetOrder(req), grpc.StatusCode.NOT_FOUND,
                                  reason="ORDER_NOT_FOUND")
        assert err.error_info.domain == "shop"
    """
    try:
        result = await call
    except grpc.RpcError as rpc_error:
        err = StatusError.from_rpc_error(rpc_error)
    else:
        raise AssertionError(f"expected {code.name}, the call succeeded with {result!r}")
    if err.code is not code:
        raise AssertionError(f"expected {code.name}, got {err.code.name}: {err.message}")
    if reason is not None and err.reason != reason:
        raise AssertionError(f"expected reason {reason!r}, got {err.reason!r}: {err.message}")
    return err
