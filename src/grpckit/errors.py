"""One root error type: a gRPC status code, a message and rich ``google.rpc`` details.

Handlers raise :class:`StatusError` (usually through a factory below); the server adapter turns
it into the wire status with the details packed into the ``grpc-status-details-bin`` trailer.
Clients read it back with :meth:`StatusError.from_rpc_error`.

Example::

    from grpckit import errors

    raise errors.not_found("order not found", resource_type="order", resource_name=order_id,
                           domain="shop")

    try:
        await stub.GetOrder(request)
    except grpc.RpcError as rpc_error:
        err = errors.StatusError.from_rpc_error(rpc_error)
        if err.reason == "NOT_FOUND": ...
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypeVar

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import DecodeError, Message
from google.rpc import (
    error_details_pb2,
    status_pb2,
)
from grpc_status import rpc_status

__all__ = [
    "DEFAULT_DOMAIN",
    "STATUS_DETAILS_KEY",
    "StatusError",
    "already_exists",
    "deadline_exceeded",
    "failed_precondition",
    "internal",
    "invalid_argument",
    "not_found",
    "permission_denied",
    "resource_exhausted",
    "unauthenticated",
    "unavailable",
]

M = TypeVar("M", bound=Message)

#: ``ErrorInfo.domain`` used when a factory is called without ``domain`` (empty: no domain).
DEFAULT_DOMAIN = ""
#: The trailer carrying the serialized ``google.rpc.Status``.
STATUS_DETAILS_KEY = "grpc-status-details-bin"

_CODES_BY_VALUE: dict[int, grpc.StatusCode] = {code.value[0]: code for code in grpc.StatusCode}


class StatusError(Exception):
    """A gRPC status with rich details (``google.rpc.*``), raised by handlers, read by clients.

    Example::

        err = StatusError(grpc.StatusCode.NOT_FOUND, "no such user",
                          error_details_pb2.ErrorInfo(reason="USER_NOT_FOUND", domain="shop"))
        assert err.reason == "USER_NOT_FOUND"
    """

    code: grpc.StatusCode
    message: str
    details: tuple[Message, ...]

    def __init__(self, code: grpc.StatusCode, message: str, *details: Message) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details

    def __repr__(self) -> str:
        return f"StatusError({self.code.name}, {self.message!r}, reason={self.reason!r})"

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"

    def detail(self, cls: type[M]) -> M | None:
        """Return the first detail of type ``cls``, or ``None``."""
        for item in self.details:
            if isinstance(item, cls):
                return item
        return None

    @property
    def error_info(self) -> error_details_pb2.ErrorInfo | None:
        """The ``google.rpc.ErrorInfo`` detail, if any."""
        return self.detail(error_details_pb2.ErrorInfo)

    @property
    def reason(self) -> str | None:
        """``ErrorInfo.reason``, the machine-readable cause, if an ErrorInfo is present."""
        info = self.error_info
        return info.reason if info is not None else None

    @property
    def field_violations(self) -> list[tuple[str, str]]:
        """``(field, description)`` pairs of the ``google.rpc.BadRequest`` detail."""
        bad_request = self.detail(error_details_pb2.BadRequest)
        if bad_request is None:
            return []
        return [(v.field, v.description) for v in bad_request.field_violations]

    def to_proto(self) -> status_pb2.Status:
        """The ``google.rpc.Status`` message of this error."""
        status = status_pb2.Status(code=self.code.value[0], message=self.message)
        for item in self.details:
            packed = any_pb2.Any()
            packed.Pack(item)
            status.details.append(packed)
        return status

    def to_status(self) -> grpc.Status:
        """The ``grpc.Status`` whose trailers carry ``grpc-status-details-bin``."""
        status: grpc.Status = rpc_status.to_status(self.to_proto())
        return status

    @classmethod
    def from_proto(cls, status: status_pb2.Status) -> StatusError:
        """Rebuild from a ``google.rpc.Status``; unknown detail types are kept as ``Any``."""
        code = _CODES_BY_VALUE.get(status.code, grpc.StatusCode.UNKNOWN)
        return cls(code, status.message, *(_unpack(item) for item in status.details))

    @classmethod
    def from_rpc_error(cls, err: grpc.RpcError) -> StatusError:
        """Read the status of a failed call (sync or ``grpc.aio``), with its rich details.

        The code and message always come from the call; details come from the
        ``grpc-status-details-bin`` trailer when present and decodable.
        """
        code_fn = getattr(err, "code", None)
        details_fn = getattr(err, "details", None)
        code = code_fn() if callable(code_fn) else grpc.StatusCode.UNKNOWN
        message = (details_fn() if callable(details_fn) else None) or ""
        details: tuple[Message, ...] = ()
        trailers_fn = getattr(err, "trailing_metadata", None)
        for key, value in (trailers_fn() if callable(trailers_fn) else None) or ():
            if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
                try:
                    status = status_pb2.Status.FromString(value)
                except DecodeError:
                    break
                details = tuple(_unpack(item) for item in status.details)
                break
        return cls(code, message, *details)


def _unpack(packed: any_pb2.Any) -> Message:
    for cls in _KNOWN_DETAILS:
        if packed.Is(cls.DESCRIPTOR):  # type: ignore[arg-type, unused-ignore]
            message = cls()
            packed.Unpack(message)
            return message
    return packed


_KNOWN_DETAILS: tuple[type[Message], ...] = (
    error_details_pb2.ErrorInfo,
    error_details_pb2.BadRequest,
    error_details_pb2.ResourceInfo,
    error_details_pb2.RetryInfo,
    error_details_pb2.QuotaFailure,
    error_details_pb2.PreconditionFailure,
    error_details_pb2.DebugInfo,
    error_details_pb2.RequestInfo,
    error_details_pb2.Help,
    error_details_pb2.LocalizedMessage,
)


def _error_info(
    reason: str, domain: str, metadata: Mapping[str, str] | None = None
) -> error_details_pb2.ErrorInfo:
    return error_details_pb2.ErrorInfo(
        reason=reason, domain=domain or DEFAULT_DOMAIN, metadata=dict(metadata or {})
    )


def _duration(seconds: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(round(seconds * 1e9))
    return duration


def invalid_argument(
    message: str, violations: Mapping[str, str] | Sequence[tuple[str, str]]
) -> StatusError:
    """INVALID_ARGUMENT with a ``BadRequest`` listing ``(field, description)`` violations.

    Example: ``raise invalid_argument("bad email", {"email": "must contain @"})``
    """
    pairs = violations.items() if isinstance(violations, Mapping) else violations
    bad_request = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=field, description=description)
            for field, description in pairs
        ]
    )
    return StatusError(grpc.StatusCode.INVALID_ARGUMENT, message, bad_request)


def not_found(
    message: str,
    *,
    resource_type: str = "",
    resource_name: str = "",
    reason: str = "NOT_FOUND",
    domain: str = "",
) -> StatusError:
    """NOT_FOUND with ``ErrorInfo`` and ``ResourceInfo``.

    Example: ``raise not_found("no such order", resource_type="order", resource_name=oid)``
    """
    resource = error_details_pb2.ResourceInfo(
        resource_type=resource_type, resource_name=resource_name
    )
    return StatusError(grpc.StatusCode.NOT_FOUND, message, _error_info(reason, domain), resource)


def already_exists(
    message: str,
    *,
    reason: str = "ALREADY_EXISTS",
    domain: str = "",
    metadata: Mapping[str, str] | None = None,
) -> StatusError:
    """ALREADY_EXISTS with ``ErrorInfo``. Example: ``raise already_exists("email taken")``"""
    return StatusError(
        grpc.StatusCode.ALREADY_EXISTS, message, _error_info(reason, domain, metadata)
    )


def failed_precondition(
    message: str,
    *,
    reason: str,
    domain: str = "",
    metadata: Mapping[str, str] | None = None,
    details: Sequence[Message] = (),
) -> StatusError:
    """FAILED_PRECONDITION with ``ErrorInfo`` first, then ``details`` (e.g. PreconditionFailure).

    Example: ``raise failed_precondition("out of stock", reason="OUT_OF_STOCK", domain="shop")``
    """
    return StatusError(
        grpc.StatusCode.FAILED_PRECONDITION,
        message,
        _error_info(reason, domain, metadata),
        *details,
    )


def unauthenticated(
    message: str, *, reason: str = "UNAUTHENTICATED", domain: str = ""
) -> StatusError:
    """UNAUTHENTICATED with ``ErrorInfo``. Example: ``raise unauthenticated("token expired")``"""
    return StatusError(grpc.StatusCode.UNAUTHENTICATED, message, _error_info(reason, domain))


def permission_denied(
    message: str, *, reason: str = "PERMISSION_DENIED", domain: str = ""
) -> StatusError:
    """PERMISSION_DENIED with ``ErrorInfo``. Example: ``raise permission_denied("admins only")``"""
    return StatusError(grpc.StatusCode.PERMISSION_DENIED, message, _error_info(reason, domain))


def unavailable(
    message: str, *, reason: str, domain: str = "", retry_after: float | None = None
) -> StatusError:
    """UNAVAILABLE with ``ErrorInfo`` and, when ``retry_after`` is set, ``RetryInfo``.

    Example: ``raise unavailable("db down", reason="DB_UNAVAILABLE", retry_after=1.5)``
    """
    details: list[Message] = [_error_info(reason, domain)]
    if retry_after is not None:
        details.append(error_details_pb2.RetryInfo(retry_delay=_duration(retry_after)))
    return StatusError(grpc.StatusCode.UNAVAILABLE, message, *details)


def resource_exhausted(
    message: str,
    *,
    retry_after: float | None,
    quota_violations: Sequence[tuple[str, str]] = (),
    reason: str = "RESOURCE_EXHAUSTED",
    domain: str = "",
) -> StatusError:
    """RESOURCE_EXHAUSTED with ``ErrorInfo``, ``RetryInfo`` and ``QuotaFailure``.

    ``quota_violations`` are ``(subject, description)`` pairs.

    Example: ``raise resource_exhausted("slow down", retry_after=0.5,
    quota_violations=[("user:42", "10 requests per second")])``
    """
    details: list[Message] = [_error_info(reason, domain)]
    if retry_after is not None:
        details.append(error_details_pb2.RetryInfo(retry_delay=_duration(retry_after)))
    if quota_violations:
        details.append(
            error_details_pb2.QuotaFailure(
                violations=[
                    error_details_pb2.QuotaFailure.Violation(subject=s, description=d)
                    for s, d in quota_violations
                ]
            )
        )
    return StatusError(grpc.StatusCode.RESOURCE_EXHAUSTED, message, *details)


def internal(message: str = "internal error", *, error_id: str, domain: str = "") -> StatusError:
    """INTERNAL with ``ErrorInfo(reason="INTERNAL", metadata={"error_id": ...})``.

    The message must not describe the failure; the error id points at the logged traceback.
    """
    return StatusError(
        grpc.StatusCode.INTERNAL,
        message,
        _error_info("INTERNAL", domain, {"error_id": error_id}),
    )


def deadline_exceeded(message: str = "deadline exceeded") -> StatusError:
    """DEADLINE_EXCEEDED. Example: ``raise deadline_exceeded("took longer than 30s")``"""
    return StatusError(grpc.StatusCode.DEADLINE_EXCEEDED, message)
