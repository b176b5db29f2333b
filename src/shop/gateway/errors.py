"""Every status the gateway itself produces, and how peer errors reach the caller.

Peer errors pass through unchanged (with their details) unless the peer was unreachable or too
slow: that becomes UNAVAILABLE ``DEPENDENCY_UNAVAILABLE`` naming the step. Reasons (domain
``shop``): USER_NOT_FOUND, USER_DISABLED, DEPENDENCY_UNAVAILABLE, IDEMPOTENCY_KEY_REUSED,
SAGA_IN_PROGRESS, SAGA_ABORTED.
"""

from __future__ import annotations

import grpc
from google.rpc import (
    error_details_pb2,
    status_pb2,
)

from grpckit.errors import StatusError, failed_precondition, not_found
from shop.api.gateway.v1 import gateway_pb2
from shop.gateway.domain import (
    IdempotencyKeyReusedError,
    Saga,
    SagaError,
    SagaInProgressError,
    Step,
    StepFailure,
    is_transient,
)

DOMAIN = "shop"


class StepFailedError(Exception):
    """A forward step failed; carries the rule-level failure and the peer's error."""

    def __init__(self, failure: StepFailure, error: StatusError) -> None:
        super().__init__(str(error))
        self.failure = failure
        self.error = error


def step_failure(step: Step, error: StatusError) -> StepFailure:
    info = error.error_info
    resource = error.detail(error_details_pb2.ResourceInfo)
    return StepFailure(
        step=step,
        code=error.code.name,
        reason=info.reason if info else "",
        message=error.message,
        metadata=dict(info.metadata) if info else {},
        resource_name=resource.resource_name if resource else "",
    )


def dependency_unavailable(step: str, cause: StatusError) -> StatusError:
    """UNAVAILABLE DEPENDENCY_UNAVAILABLE naming the step whose peer did not answer."""
    info = error_details_pb2.ErrorInfo(
        reason="DEPENDENCY_UNAVAILABLE", domain=DOMAIN, metadata={"step": step}
    )
    message = f"{step} failed: {cause.code.name}: {cause.message}"
    return StatusError(grpc.StatusCode.UNAVAILABLE, message, info)


def caller_error(step: Step, cause: StatusError) -> StatusError:
    """What the caller gets for a failed step: the peer's error as-is, unless it was transient."""
    return dependency_unavailable(step.value, cause) if is_transient(cause.code.name) else cause


def user_error(user_id: str, reason: str) -> StatusError:
    if reason == "USER_DISABLED":
        return failed_precondition(
            "the user is disabled", reason="USER_DISABLED", domain=DOMAIN,
            metadata={"user_id": user_id},
        )  # fmt: skip
    return not_found(
        "no such user", resource_type="user", resource_name=user_id,
        reason="USER_NOT_FOUND", domain=DOMAIN,
    )  # fmt: skip


def stored_error(error: StatusError) -> SagaError:
    return SagaError(error.code.name, error.message, error.to_proto().SerializeToString())


def outcome_of(saga: Saga) -> gateway_pb2.ProcessOrderResponse:
    """The stored response, or raise the stored error with its details."""
    if saga.result is not None:
        return gateway_pb2.ProcessOrderResponse.FromString(saga.result)
    if saga.error is not None:
        raise StatusError.from_proto(status_pb2.Status.FromString(saga.error.status))
    raise SagaInProgressError(saga.id)


def saga_aborted(saga_id: str) -> StatusError:
    """The outcome stored for a saga that recovery had to undo."""
    info = error_details_pb2.ErrorInfo(
        reason="SAGA_ABORTED", domain=DOMAIN, metadata={"saga_id": saga_id}
    )
    message = (
        "the order was cancelled: the gateway stopped before it completed; "
        "retry with a new idempotency key"
    )
    return StatusError(grpc.StatusCode.ABORTED, message, info)


def to_status_error(exc: IdempotencyKeyReusedError | SagaInProgressError) -> StatusError:
    """Map a gateway domain error to the status the caller sees."""
    if isinstance(exc, IdempotencyKeyReusedError):
        return failed_precondition(
            "the idempotency key was already used for a different request",
            reason="IDEMPOTENCY_KEY_REUSED",
            domain=DOMAIN,
            metadata={"idempotency_key": exc.key},
        )
    info = error_details_pb2.ErrorInfo(
        reason="SAGA_IN_PROGRESS", domain=DOMAIN, metadata={"saga_id": exc.saga_id}
    )
    return StatusError(grpc.StatusCode.ABORTED, str(exc), info)
