"""The saga with in-memory peers: every failure point, the compensations that follow, replays."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.rpc import error_details_pb2

from grpckit.errors import StatusError, failed_precondition
from shop.api.orders.v1 import orders_pb2
from shop.api.payments.v1 import payments_pb2
from shop.gateway.domain import IdempotencyKeyReusedError, Saga, SagaState
from shop.gateway.recovery import Recovery
from tests.shop.gateway.gateway_fakes import DECLINED_CARD, World, unavailable

FORWARD = ["validate_user", "create_order", "reserve_stock", "process_payment", "mark_order_paid"]


async def failure(world: World, **request: object) -> StatusError:
    with pytest.raises(StatusError) as caught:
        await world.saga.process(world.request(**request))  # type: ignore[arg-type]
    return caught.value


async def saga_state(world: World, key: str = "key-1") -> SagaState:
    saga = await world.store.find(world.user_id, key)
    assert saga is not None
    return saga.state


def only_order(world: World) -> orders_pb2.Order:
    assert len(world.peers.orders) == 1
    return next(iter(world.peers.orders.values()))


async def test_happy_path_runs_every_step_once_and_journals_the_response(world: World) -> None:
    reply = await world.saga.process(world.request(quantity=2))
    assert world.peers.names() == FORWARD
    assert reply.order.status == orders_pb2.ORDER_STATUS_PAID
    assert reply.payment.status == payments_pb2.PAYMENT_STATUS_CAPTURED
    assert reply.order.payment_id == reply.payment.id
    assert (reply.payment.amount.units, reply.payment.amount.nanos) == (25, 0)
    assert world.peers.stock[world.product_id] == 8
    saga = await world.store.find(world.user_id, "key-1")
    assert saga is not None
    assert saga.state is SagaState.COMPLETED
    assert (saga.progress.order_id, saga.progress.payment_id) == (reply.order.id, reply.payment.id)
    assert saga.amount is not None and saga.amount.minor == 2500
    create_key = world.peers.calls[1][2]
    payment_key = world.peers.calls[3][2]
    assert (create_key, payment_key) == (f"saga:{saga.id}", f"saga:{saga.id}:payment")


@pytest.mark.parametrize(
    ("reason", "code"),
    [
        ("USER_NOT_FOUND", grpc.StatusCode.NOT_FOUND),
        ("USER_DISABLED", grpc.StatusCode.FAILED_PRECONDITION),
    ],
)
async def test_invalid_user_fails_before_any_side_effect(
    world: World, reason: str, code: grpc.StatusCode
) -> None:
    world.user_id = world.peers.add_user(reason) if reason == "USER_DISABLED" else "unknown"
    error = await failure(world)
    assert (error.code, error.reason) == (code, reason)
    assert world.peers.names() == ["validate_user"]
    assert await saga_state(world) is SagaState.FAILED


async def test_create_order_refused_is_returned_as_is_with_nothing_to_undo(world: World) -> None:
    refused = failed_precondition("no such product", reason="PRODUCT_NOT_FOUND", domain="shop")
    world.peers.fail_before["create_order"].append(refused)
    error = await failure(world)
    assert (error.code, error.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "PRODUCT_NOT_FOUND")
    assert world.peers.names() == ["validate_user", "create_order"]
    assert await saga_state(world) is SagaState.FAILED


async def test_create_order_lost_reply_finds_the_order_by_its_key_and_cancels_it(
    world: World,
) -> None:
    world.peers.fail_after["create_order"].append(unavailable())
    error = await failure(world)
    assert (error.code, error.reason) == (grpc.StatusCode.UNAVAILABLE, "DEPENDENCY_UNAVAILABLE")
    assert error.error_info is not None and error.error_info.metadata["step"] == "create_order"
    assert world.peers.names() == ["validate_user", "create_order", "create_order", "cancel_order"]
    assert world.peers.calls[1][2] == world.peers.calls[2][2]  # the same idempotency key
    assert only_order(world).status == orders_pb2.ORDER_STATUS_CANCELLED
    assert await saga_state(world) is SagaState.COMPENSATED


async def test_out_of_stock_cancels_the_order_and_keeps_the_resource_info(world: World) -> None:
    error = await failure(world, quantity=11)
    assert (error.code, error.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "OUT_OF_STOCK")
    resource = error.detail(error_details_pb2.ResourceInfo)
    assert resource is not None and resource.resource_name == world.product_id
    assert world.peers.names() == ["validate_user", "create_order", "reserve_stock", "cancel_order"]
    order = only_order(world)
    assert order.status == orders_pb2.ORDER_STATUS_CANCELLED
    assert order.cancel_reason == f"out of stock: {world.product_id}"
    assert world.peers.stock[world.product_id] == 10


async def test_reserve_stock_lost_reply_releases_and_cancels(world: World) -> None:
    world.peers.fail_after["reserve_stock"].append(
        StatusError(grpc.StatusCode.DEADLINE_EXCEEDED, "slow")
    )
    error = await failure(world)
    assert (error.code, error.reason) == (grpc.StatusCode.UNAVAILABLE, "DEPENDENCY_UNAVAILABLE")
    assert world.peers.names()[3:] == ["release_stock", "cancel_order"]
    assert world.peers.stock[world.product_id] == 10
    assert await saga_state(world) is SagaState.COMPENSATED


async def test_declined_payment_releases_cancels_and_returns_the_decline(world: World) -> None:
    error = await failure(world, card=DECLINED_CARD)
    assert (error.code, error.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "PAYMENT_DECLINED")
    assert error.error_info is not None
    assert error.error_info.metadata["decline_code"] == "card_declined"
    assert world.peers.names() == [*FORWARD[:4], "release_stock", "cancel_order"]
    order = only_order(world)
    assert order.cancel_reason == "payment declined: card_declined"
    assert world.peers.stock[world.product_id] == 10
    assert world.peers.captured() == []


async def test_payment_lost_reply_refunds_the_capture_found_after_cancelling(world: World) -> None:
    world.peers.fail_after["process_payment"].append(unavailable())
    error = await failure(world)
    assert error.error_info is not None and error.error_info.metadata["step"] == "process_payment"
    assert world.peers.names()[4:] == [
        "release_stock",
        "cancel_order",
        "list_payments",
        "refund_payment",
    ]
    assert world.peers.captured() == []
    assert only_order(world).status == orders_pb2.ORDER_STATUS_CANCELLED


async def test_a_payment_still_processing_is_waited_for_then_refunded(world: World) -> None:
    """The payment outlived the saga's deadline: it is PROCESSING when compensation looks, and
    captured a moment later. Compensation must not miss it (no charge for a cancelled order)."""
    world.peers.fail_after["process_payment"].append(unavailable("deadline exceeded"))
    listed = world.peers.list_payments
    looks = 0

    async def list_payments(order_id: str) -> list[payments_pb2.Payment]:
        nonlocal looks
        looks += 1
        payments = list(await listed(order_id))
        for payment in payments:  # settles on the third look
            payment.status = (
                payments_pb2.PAYMENT_STATUS_PROCESSING
                if looks < 3
                else payments_pb2.PAYMENT_STATUS_CAPTURED
            )
        return payments

    world.peers.list_payments = list_payments  # type: ignore[method-assign]
    await failure(world)
    assert looks == 3
    assert world.peers.names()[-1] == "refund_payment"
    assert world.peers.captured() == []
    assert await saga_state(world) is SagaState.COMPENSATED


async def test_mark_paid_refused_refunds_releases_and_cancels_in_reverse(world: World) -> None:
    refused = failed_precondition("cancelled", reason="ORDER_NOT_PENDING", domain="shop")
    world.peers.fail_before["mark_order_paid"].append(refused)
    error = await failure(world)
    assert error.reason == "ORDER_NOT_PENDING"
    assert world.peers.names()[5:] == ["refund_payment", "release_stock", "cancel_order"]
    assert world.peers.captured() == []
    assert await saga_state(world) is SagaState.COMPENSATED


async def test_compensation_is_retried_on_transient_errors(world: World) -> None:
    world.peers.fail_before["release_stock"].extend([unavailable(), unavailable()])
    error = await failure(world, card=DECLINED_CARD)
    assert error.reason == "PAYMENT_DECLINED"
    assert world.peers.names()[4:] == ["release_stock"] * 3 + ["cancel_order"]
    assert world.peers.stock[world.product_id] == 10
    assert await saga_state(world) is SagaState.COMPENSATED


async def test_stalled_compensation_stays_compensating_until_recovery(world: World) -> None:
    world.peers.fail_before["cancel_order"].extend([unavailable()] * 3)
    error = await failure(world, card=DECLINED_CARD)
    assert error.reason == "PAYMENT_DECLINED"  # the caller still gets the original error
    assert await saga_state(world) is SagaState.COMPENSATING
    assert only_order(world).status == orders_pb2.ORDER_STATUS_PENDING

    assert await Recovery(world.saga).run_once() == 1
    assert await saga_state(world) is SagaState.COMPENSATED
    assert only_order(world).status == orders_pb2.ORDER_STATUS_CANCELLED
    replay = await failure(world, card=DECLINED_CARD)
    assert replay.reason == "PAYMENT_DECLINED"


async def test_mark_paid_unreachable_is_rolled_forward_by_recovery(world: World) -> None:
    world.peers.fail_before["mark_order_paid"].extend([unavailable()] * 3)
    error = await failure(world)
    assert (error.code, error.reason) == (grpc.StatusCode.UNAVAILABLE, "DEPENDENCY_UNAVAILABLE")
    assert error.error_info is not None and error.error_info.metadata["step"] == "mark_order_paid"
    assert await saga_state(world) is SagaState.PAYMENT_CAPTURED
    assert world.peers.names().count("refund_payment") == 0

    assert await Recovery(world.saga).run_once() == 1
    assert await saga_state(world) is SagaState.COMPLETED
    reply = await world.saga.process(world.request())
    assert reply.order.status == orders_pb2.ORDER_STATUS_PAID
    assert len(world.peers.captured()) == 1


async def test_replay_returns_the_stored_response_without_calling_peers(world: World) -> None:
    first = await world.saga.process(world.request())
    calls = len(world.peers.calls)
    again = await world.saga.process(world.request())
    assert again == first
    assert len(world.peers.calls) == calls


async def test_replay_of_a_failure_returns_the_same_error_and_details(world: World) -> None:
    first = await failure(world, card=DECLINED_CARD)
    calls = len(world.peers.calls)
    again = await failure(world, card=DECLINED_CARD)
    assert (again.code, again.message, again.details) == (first.code, first.message, first.details)
    assert len(world.peers.calls) == calls


async def test_same_key_with_a_different_request_is_refused(world: World) -> None:
    await world.saga.process(world.request())
    with pytest.raises(IdempotencyKeyReusedError):
        await world.saga.process(world.request(quantity=2))


async def test_card_secrets_do_not_change_the_fingerprint_but_are_never_stored(
    world: World,
) -> None:
    await world.saga.process(world.request())
    saga = await world.store.find(world.user_id, "key-1")
    assert saga is not None
    stored = repr(saga)
    assert "4242424242424242" not in stored
    assert "'123'" not in stored


async def test_eight_concurrent_calls_with_one_key_make_one_order_and_one_charge(
    world: World,
) -> None:
    world.peers.gate = asyncio.Event()
    conflicts, all_waiting = 0, asyncio.Event()
    find = world.store.find

    async def counting_find(user_id: str, key: str) -> Saga | None:
        nonlocal conflicts
        found = await find(user_id, key)
        conflicts += 1
        if conflicts == 7:
            all_waiting.set()
        return found

    world.store.find = counting_find  # type: ignore[method-assign]
    calls = [asyncio.create_task(world.saga.process(world.request())) for _ in range(8)]
    await world.peers.create_entered.wait()
    await all_waiting.wait()  # the seven others lost the insert and wait for the first
    world.peers.gate.set()
    replies = await asyncio.gather(*calls)
    assert {r.order.id for r in replies} == {only_order(world).id}
    assert len({r.payment.id for r in replies}) == 1
    assert world.peers.names().count("create_order") == 1
    assert world.peers.names().count("process_payment") == 1
    assert len(world.peers.payments) == 1
    assert world.peers.stock[world.product_id] == 9
