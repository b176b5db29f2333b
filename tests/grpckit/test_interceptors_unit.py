"""Interceptors driven directly with fakes: no server, no sockets."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from structlog.testing import capture_logs

from grpckit import CallInfo, StatusError
from grpckit.interceptors import deadlines, logging, recovery
from grpckit.testing import FakeServicerContext, fake_call


async def ok(call: CallInfo) -> None:
    call.response = "done"


async def hang(call: CallInfo) -> None:
    await asyncio.Event().wait()


async def test_deadlines_bound_calls_without_client_deadline() -> None:
    call = fake_call()
    with pytest.raises(StatusError) as caught:
        await deadlines(default=0.01).intercept(call, hang)
    assert caught.value.code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert call.deadline is not None


async def test_deadlines_leave_client_deadlines_alone_below_the_maximum() -> None:
    call = fake_call(context=FakeServicerContext(timeout=5))
    await deadlines(default=0.01, maximum=10).intercept(call, ok)
    assert call.deadline is None
    remaining = call.time_remaining()
    assert remaining is not None and 4 < remaining <= 5


async def test_recovery_keeps_status_errors() -> None:
    async def not_found(call: CallInfo) -> None:
        raise StatusError(grpc.StatusCode.NOT_FOUND, "nope")

    with pytest.raises(StatusError) as caught:
        await recovery().intercept(fake_call(), not_found)
    assert caught.value.code is grpc.StatusCode.NOT_FOUND


async def test_logging_replaces_oversized_request_ids() -> None:
    context = FakeServicerContext(metadata=[("x-request-id", "x" * 500)])
    call = fake_call(context=context)
    with capture_logs() as logs:
        await logging().intercept(call, ok)
    assert len(call.request_id) == 32
    assert logs[0]["request_id"] == call.request_id
    assert call.response_headers == [("x-request-id", call.request_id)]
