"""dial: an insecure grpc.aio channel with deadline and request-id propagation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc

from grpckit.client._deadline import propagation_interceptors

__all__ = ["dial"]


def dial(
    target: str,
    *,
    default_timeout: float | None = 5.0,
    options: Sequence[tuple[str, Any]] = (),
    interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
    compression: grpc.Compression | None = None,
) -> grpc.aio.Channel:
    """Open an insecure channel to ``target`` (``host:port``, ``dns:///name:port`` ...).

    Calls without a timeout get ``default_timeout`` (``None``: no default); calls made inside a
    grpckit handler never outlive the incoming call and forward its ``x-request-id``.
    ``interceptors`` run after (inside) grpckit's own. Create channels after fork.

    Example::

        async with dial("127.0.0.1:50051", default_timeout=2.0) as channel:
            stub = ping_pb2_grpc.PingServiceStub(channel)
            reply = await stub.Ping(ping_pb2.PingRequest(message="hi"))
    """
    return grpc.aio.insecure_channel(
        target,
        options=list(options),
        compression=compression,
        interceptors=[*propagation_interceptors(default_timeout), *interceptors],
    )
