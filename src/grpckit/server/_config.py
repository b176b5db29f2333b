"""Typed, frozen server configuration, mapped to grpc channel arguments in one place."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc

from grpckit.tls import ServerTls

__all__ = ["ServerConfig"]

_MIB = 1024 * 1024


@dataclass(frozen=True)
class ServerConfig:
    """How the gRPC server listens and behaves. Read from env/files in ``main``, not here.

    Keepalive defaults: the server pings an idle connection every 60 s and drops it when no ack
    comes within 20 s; clients may ping without active calls, but not more often than every
    10 s (gRPC's own default of 5 minutes makes typical client keepalive settings fail with
    ``too_many_pings``).

    ``tls`` serves TLS (mTLS when it requires client certificates) instead of plaintext.

    Example::

        App(ServerConfig(host="0.0.0.0", port=50051, grace_period=5.0))
        App(ServerConfig(port=50051, tls=ServerTls.from_dir(Path(".shop/certs"), mtls=True)))
    """

    host: str = "127.0.0.1"
    port: int = 0
    grace_period: float = 10.0
    max_receive_message_length: int = 8 * _MIB
    max_send_message_length: int = 8 * _MIB
    max_concurrent_rpcs: int | None = None
    compression: grpc.Compression | None = None
    keepalive_time_ms: int = 60_000
    keepalive_timeout_ms: int = 20_000
    keepalive_permit_without_calls: bool = True
    http2_min_recv_ping_interval_without_data_ms: int = 10_000
    reuse_port: bool = False
    tls: ServerTls | None = None

    def grpc_options(self) -> list[tuple[str, Any]]:
        """The channel arguments passed to ``grpc.aio.server``."""
        return [
            ("grpc.max_receive_message_length", self.max_receive_message_length),
            ("grpc.max_send_message_length", self.max_send_message_length),
            ("grpc.keepalive_time_ms", self.keepalive_time_ms),
            ("grpc.keepalive_timeout_ms", self.keepalive_timeout_ms),
            ("grpc.keepalive_permit_without_calls", int(self.keepalive_permit_without_calls)),
            (
                "grpc.http2.min_recv_ping_interval_without_data_ms",
                self.http2_min_recv_ping_interval_without_data_ms,
            ),
            ("grpc.http2.max_ping_strikes", 2),
            ("grpc.so_reuseport", int(self.reuse_port)),
        ]

    @property
    def bind_address(self) -> str:
        """``host:port`` to bind (IPv6 hosts get brackets)."""
        host = self.host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"{host}:{self.port}"
