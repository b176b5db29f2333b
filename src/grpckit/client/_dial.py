"""dial: a grpc.aio channel (plaintext or TLS) with deadline and request-id propagation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc

from grpckit.client._deadline import propagation_interceptors
from grpckit.tls import ClientTls, channel_credentials, channel_options

__all__ = ["dial"]


def dial(
    target: str,
    *,
    default_timeout: float | None = 5.0,
    options: Sequence[tuple[str, Any]] = (),
    interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
    compression: grpc.Compression | None = None,
    tls: ClientTls | None = None,
    reload_tls: bool = True,
) -> grpc.aio.Channel:
    """Open a channel to ``target`` (``host:port``, ``dns:///name:port`` ...).

    Plaintext by default; with ``tls`` a TLS channel (mTLS when it carries a client
    certificate). With ``reload_tls`` (the default) the channel re-dials when the TLS files are
    replaced on disk (see :class:`grpckit.client.ReloadingChannel`); otherwise the files are
    read once, now.

    Calls without a timeout get ``default_timeout`` (``None``: no default); calls made inside a
    grpckit handler never outlive the incoming call and forward its ``x-request-id``.
    ``interceptors`` run after (inside) grpckit's own. Create channels after fork.

    Example::

        async with dial("127.0.0.1:50051", default_timeout=2.0) as channel:
            stub = ping_pb2_grpc.PingServiceStub(channel)
            reply = await stub.Ping(ping_pb2.PingRequest(message="hi"))

        channel = dial("localhost:50051", tls=ClientTls.from_dir(Path(".shop/certs")))
    """
    chain = [*propagation_interceptors(default_timeout), *interceptors]
    if tls is None:
        return grpc.aio.insecure_channel(
            target, options=list(options), compression=compression, interceptors=chain
        )

    def secure() -> grpc.aio.Channel:
        return grpc.aio.secure_channel(
            target,
            channel_credentials(tls),
            options=[*channel_options(tls), *options],
            compression=compression,
            interceptors=chain,
        )

    if not reload_tls:
        return secure()
    from grpckit.client._reloading import ReloadingChannel

    return ReloadingChannel(secure, tls)
