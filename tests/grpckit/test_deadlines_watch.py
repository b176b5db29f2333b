"""The deadlines interceptor's shared timer: bounds, cancellation bookkeeping, client cancels."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from grpckit import CallInfo, StatusError
from grpckit.interceptors import deadlines
from grpckit.interceptors._deadlines import _Watch
from grpckit.testing import FakeServicerContext, fake_call


async def hang(call: CallInfo) -> None:
    await asyncio.Event().wait()


async def test_a_shorter_bound_added_later_still_fires_first() -> None:
    loop = asyncio.get_running_loop()
    watch = _Watch(loop)
    slow = asyncio.create_task(asyncio.Event().wait())
    fast = asyncio.create_task(asyncio.Event().wait())
    slow_call, fast_call = fake_call(), fake_call()
    watch.add(slow_call, loop.time() + 60, slow)  # type: ignore[arg-type]
    watch.add(fast_call, loop.time() + 0.01, fast)  # type: ignore[arg-type]
    with pytest.raises(asyncio.CancelledError):
        await fast
    assert watch.finish(fast_call) is True
    assert not slow.done()
    assert watch.finish(slow_call) is False
    slow.cancel()


async def test_many_bounded_calls_leave_nothing_behind() -> None:
    interceptor = deadlines(default=30)

    async def ok(call: CallInfo) -> None:
        await asyncio.sleep(0)

    await asyncio.gather(*(interceptor.intercept(fake_call(), ok) for _ in range(50)))
    watch = interceptor._watch  # type: ignore[attr-defined]
    assert watch._calls == {} and watch._expired == set()
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0


async def test_expiry_becomes_deadline_exceeded_and_uncancels_the_task() -> None:
    async def run() -> int:
        with pytest.raises(StatusError) as caught:
            await deadlines(default=0.01).intercept(fake_call(), hang)
        assert caught.value.code is grpc.StatusCode.DEADLINE_EXCEEDED
        task = asyncio.current_task()
        assert task is not None
        return task.cancelling()

    assert await asyncio.create_task(run()) == 0  # the task can still be awaited normally


async def test_a_handler_swallowing_the_cancellation_is_uncancelled_too() -> None:
    async def stubborn(call: CallInfo) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            call.response = "swallowed"

    async def run() -> int:
        call = fake_call()
        await deadlines(default=0.01).intercept(call, stubborn)
        assert call.response == "swallowed"
        task = asyncio.current_task()
        assert task is not None
        return task.cancelling()

    assert await asyncio.create_task(run()) == 0


async def test_client_cancellation_stays_a_cancellation() -> None:
    started = asyncio.Event()

    async def waits(call: CallInfo) -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(deadlines(default=30).intercept(fake_call(), waits))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_client_deadline_within_the_maximum_arms_nothing() -> None:
    interceptor = deadlines(default=0.01, maximum=10)
    call = fake_call(context=FakeServicerContext(timeout=5))

    async def ok(call: CallInfo) -> None:
        pass

    await interceptor.intercept(call, ok)
    assert call.deadline is None
    assert interceptor._watch is None  # type: ignore[attr-defined]
