"""Local rejections: a ``grpc.aio.AioRpcError`` raised by a client interceptor, not the server.

The circuit breaker and the bulkhead fail calls before any network I/O; the caller must not be
able to tell their rejection from a server's answer except by its ``ErrorInfo``: the same
exception type, code, message and ``grpc-status-details-bin`` trailer that
:meth:`grpckit.errors.StatusError.from_rpc_error` reads.

Example::

    raise local_rejection(grpc.StatusCode.UNAVAILABLE, "circuit open", info, source="breaker")
"""

from __future__ import annotations

import grpc
from google.protobuf.message import Message
from google.rpc import error_details_pb2

from grpckit.errors import STATUS_DETAILS_KEY, StatusError

__all__ = ["DOMAIN", "is_local_rejection", "local_rejection"]

#: ``ErrorInfo.domain`` of grpckit's own rejections.
DOMAIN = "grpckit"
# reasons of rejections made on the client, never by the dependency: not worth a retry
_LOCAL_REASONS = frozenset({"CIRCUIT_OPEN", "BULKHEAD_FULL"})


def local_rejection(
    code: grpc.StatusCode, message: str, *details: Message, source: str
) -> grpc.aio.AioRpcError:
    """An ``AioRpcError`` with ``code``, ``message`` and ``details`` in its trailers.

    ``source`` names the interceptor in ``debug_error_string()``.
    """
    status = StatusError(code, message, *details)
    trailers = grpc.aio.Metadata((STATUS_DETAILS_KEY, status.to_proto().SerializeToString()))
    return grpc.aio.AioRpcError(
        code,
        grpc.aio.Metadata(),
        trailers,
        details=message,
        debug_error_string=f"grpckit {source}",
    )


def is_local_rejection(error: StatusError) -> bool:
    """Whether ``error`` is a grpckit client-side rejection (``CIRCUIT_OPEN``, ``BULKHEAD_FULL``)."""
    info = error.detail(error_details_pb2.ErrorInfo)
    return info is not None and info.domain == DOMAIN and info.reason in _LOCAL_REASONS
