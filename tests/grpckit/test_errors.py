from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2

from grpckit import CallInfo, Next, StatusError, errors
from grpckit.testing import PingServicer, serve_in_process
from grpckit.testing.api.v1 import ping_pb2


class RichPing(PingServicer):
    """Raises the error named by the request message."""

    async def Ping(self, request: ping_pb2.PingRequest, context: Any) -> ping_pb2.PingResponse:
        raise ERRORS[request.message]


ERRORS: dict[str, StatusError] = {
    "not_found": errors.not_found(
        "order o-1 not found", resource_type="order", resource_name="o-1", domain="shop"
    ),
    "invalid": errors.invalid_argument(
        "bad request", {"email": "must contain @", "name": "required"}
    ),
    "precondition": errors.failed_precondition(
        "stock too low: naïve café ☕",
        reason="OUT_OF_STOCK",
        domain="shop",
        metadata={"product_id": "p-1"},
        details=[error_details_pb2.ResourceInfo(resource_type="product", resource_name="p-1")],
    ),
    "exhausted": errors.resource_exhausted(
        "slow down", retry_after=1.5, quota_violations=[("user:1", "10/s")]
    ),
}


async def call_failing(name: str) -> tuple[StatusError, grpc.aio.AioRpcError]:
    async with serve_in_process(RichPing()) as server:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await server.ping.Ping(ping_pb2.PingRequest(message=name))
    return StatusError.from_rpc_error(caught.value), caught.value


async def test_not_found_round_trip_keeps_error_info_and_resource_info() -> None:
    err, rpc_error = await call_failing("not_found")
    assert err.code is grpc.StatusCode.NOT_FOUND
    assert err.message == "order o-1 not found"
    assert err.reason == "NOT_FOUND"
    assert err.error_info is not None and err.error_info.domain == "shop"
    resource = err.detail(error_details_pb2.ResourceInfo)
    assert resource is not None
    assert (resource.resource_type, resource.resource_name) == ("order", "o-1")
    keys = [key for key, _ in rpc_error.trailing_metadata() or ()]
    assert errors.STATUS_DETAILS_KEY in keys


async def test_invalid_argument_round_trip_keeps_field_violations() -> None:
    err, _ = await call_failing("invalid")
    assert err.code is grpc.StatusCode.INVALID_ARGUMENT
    assert err.field_violations == [("email", "must contain @"), ("name", "required")]
    assert err.reason is None


async def test_non_ascii_message_and_extra_details_survive() -> None:
    err, rpc_error = await call_failing("precondition")
    assert rpc_error.details() == "stock too low: naïve café ☕"
    assert err.message == "stock too low: naïve café ☕"
    assert err.reason == "OUT_OF_STOCK"
    assert err.error_info is not None and dict(err.error_info.metadata) == {"product_id": "p-1"}
    assert [type(d).__name__ for d in err.details] == ["ErrorInfo", "ResourceInfo"]


async def test_resource_exhausted_carries_retry_and_quota() -> None:
    err, _ = await call_failing("exhausted")
    retry = err.detail(error_details_pb2.RetryInfo)
    quota = err.detail(error_details_pb2.QuotaFailure)
    assert retry is not None and retry.retry_delay.ToNanoseconds() == 1_500_000_000
    assert quota is not None and quota.violations[0].subject == "user:1"


class Reject:
    async def intercept(self, call: CallInfo, next_: Next) -> None:
        raise errors.permission_denied("no entry", reason="BLOCKED", domain="test")


async def test_status_error_raised_by_an_interceptor_reaches_the_client() -> None:
    async with serve_in_process(PingServicer(), interceptors=[Reject()]) as server:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await server.ping.Ping(ping_pb2.PingRequest(message="x"))
    err = StatusError.from_rpc_error(caught.value)
    assert err.code is grpc.StatusCode.PERMISSION_DENIED
    assert err.reason == "BLOCKED"


def test_factories_default_domain_is_empty_and_to_status_packs_details() -> None:
    err = errors.unauthenticated("who are you")
    assert err.error_info is not None and err.error_info.domain == ""
    status = err.to_status()
    assert status.code is grpc.StatusCode.UNAUTHENTICATED
    assert status.details == "who are you"
    assert status.trailing_metadata[0][0] == errors.STATUS_DETAILS_KEY
    assert StatusError.from_proto(err.to_proto()).reason == "UNAUTHENTICATED"


def test_factory_codes() -> None:
    assert errors.already_exists("x").code is grpc.StatusCode.ALREADY_EXISTS
    assert errors.permission_denied("x").reason == "PERMISSION_DENIED"
    unavailable = errors.unavailable("x", reason="DB_DOWN", retry_after=2)
    assert unavailable.detail(error_details_pb2.RetryInfo) is not None
    assert errors.internal(error_id="e1").error_info.metadata["error_id"] == "e1"  # type: ignore[union-attr]
    assert errors.deadline_exceeded("late").code is grpc.StatusCode.DEADLINE_EXCEEDED


async def test_expect_status_helper() -> None:
    from grpckit.testing import expect_status

    async with serve_in_process(RichPing()) as server:
        err = await expect_status(
            server.ping.Ping(ping_pb2.PingRequest(message="not_found")),
            grpc.StatusCode.NOT_FOUND,
            reason="NOT_FOUND",
        )
        assert err.error_info is not None and err.error_info.domain == "shop"
        with pytest.raises(AssertionError, match="expected ALREADY_EXISTS"):
            await expect_status(
                server.ping.Ping(ping_pb2.PingRequest(message="not_found")),
                grpc.StatusCode.ALREADY_EXISTS,
            )
