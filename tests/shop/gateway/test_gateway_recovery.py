"""Recovery of journals left in every intermediate state by a process that died."""

from __future__ import annotations

from dataclasses import replace

import grpc
import pytest

from grpckit.errors import StatusError
from shop.api.orders.v1 import orders_pb2
from shop.api.payments.v1 import payments_pb2
from shop.common.money import Money
from shop.gateway.domain import RECOVERY_CANCEL_REASON, Saga, SagaState, Step
from shop.gateway.recovery import Recovery
from shop.gateway.saga import OrderSaga
from tests.shop.gateway.gateway_fakes import GOOD_CARD, Killed, World, unavailable


def killer() -> None:
    raise Killed


async def crash_after(world: World, step: Step) -> Saga:
    """Run the saga in a process that 'dies' right after ``step`` is journaled."""
    dying = world.restarted(kill_after=step, kill=killer)
    with pytest.raises(Killed):
        await dying.process(world.request())
    saga = await world.store.find(world.user_id, "key-1")
    assert saga is not None
    return saga


async def recover(world: World, *, startup: bool = True) -> OrderSaga:
    fresh = world.restarted()
    assert await Recovery(fresh).run_once(startup=startup) == 1
    return fresh


async def test_crash_after_validate_user_fails_the_saga_with_nothing_to_undo(world: World) -> None:
    saga = await crash_after(world, Step.VALIDATE_USER)
    assert (saga.state, saga.pending_step) == (SagaState.STARTED, None)
    fresh = await recover(world)
    assert world.peers.orders == {}
    with pytest.raises(StatusError) as caught:
        await fresh.process(world.request())
    assert (caught.value.code, caught.value.reason) == (grpc.StatusCode.ABORTED, "SAGA_ABORTED")


@pytest.mark.parametrize("step", [Step.CREATE_ORDER, Step.RESERVE_STOCK])
async def test_crash_before_payment_releases_and_cancels(world: World, step: Step) -> None:
    saga = await crash_after(world, step)
    assert saga.state is {Step.CREATE_ORDER: SagaState.ORDER_CREATED}.get(
        step, SagaState.STOCK_RESERVED
    )
    world.peers.calls.clear()
    await recover(world)
    order_id = saga.progress.order_id
    assert order_id is not None
    assert world.peers.calls == [
        ("list_payments", order_id),
        ("release_stock", order_id),
        ("cancel_order", order_id, RECOVERY_CANCEL_REASON),
        ("list_payments", order_id),
    ]
    assert world.peers.orders[order_id].status == orders_pb2.ORDER_STATUS_CANCELLED
    assert world.peers.stock[world.product_id] == 10
    recovered = await world.store.get(saga.id)
    assert recovered is not None and recovered.state is SagaState.COMPENSATED


async def test_crash_after_payment_rolls_forward_without_the_card(world: World) -> None:
    saga = await crash_after(world, Step.PROCESS_PAYMENT)
    assert saga.state is SagaState.PAYMENT_CAPTURED
    world.clock.advance(3600)  # restarted long after the saga's deadline
    fresh = await recover(world)
    order_id, payment_id = saga.progress.order_id, saga.progress.payment_id
    assert order_id and payment_id
    assert world.peers.orders[order_id].status == orders_pb2.ORDER_STATUS_PAID
    assert world.peers.stock[world.product_id] == 9
    reply = await fresh.process(world.request())  # the replay gets the recovered response
    assert (reply.order.id, reply.payment.id) == (order_id, payment_id)
    assert reply.order.status == orders_pb2.ORDER_STATUS_PAID


async def test_payment_captured_but_not_journaled_is_found_and_completed(world: World) -> None:
    saga = await crash_after(world, Step.RESERVE_STOCK)
    assert saga.progress.order_id is not None
    # the dead process had charged the card after journaling STOCK_RESERVED
    card = world.request().card
    assert card.number == GOOD_CARD
    await world.peers.process_payment(saga.progress.order_id, Money(1250), card, "lost")
    await recover(world)
    assert world.peers.orders[saga.progress.order_id].status == orders_pb2.ORDER_STATUS_PAID
    recovered = await world.store.get(saga.id)
    assert recovered is not None and recovered.state is SagaState.COMPLETED


async def test_crash_during_create_order_cancels_the_order_it_may_have_made(world: World) -> None:
    saga = await crash_after(world, Step.VALIDATE_USER)
    saga.pending_step = Step.CREATE_ORDER  # as journaled just before CreateOrder was sent
    await world.store.save(saga)
    made = await world.peers.create_order(world.user_id, saga.items, f"saga:{saga.id}")
    world.peers.calls.clear()
    await recover(world)
    assert world.peers.names() == ["create_order", "cancel_order"]
    assert world.peers.orders[made.id].status == orders_pb2.ORDER_STATUS_CANCELLED
    recovered = await world.store.get(saga.id)
    assert recovered is not None and recovered.state is SagaState.COMPENSATED
    assert recovered.progress.order_id == made.id


async def test_recovery_waits_for_unreachable_peers_and_finishes_later(world: World) -> None:
    saga = await crash_after(world, Step.RESERVE_STOCK)
    world.peers.fail_before["list_payments"].append(unavailable())
    fresh = await recover(world)
    postponed = await world.store.get(saga.id)
    assert postponed is not None and postponed.state is SagaState.STOCK_RESERVED
    assert await Recovery(fresh).run_once() == 1  # owned by this process now: retried
    done = await world.store.get(saga.id)
    assert done is not None and done.state is SagaState.COMPENSATED


async def test_a_live_owner_keeps_its_saga_until_the_lease_expires(world: World) -> None:
    saga = await crash_after(world, Step.CREATE_ORDER)
    other = world.restarted()
    recovery = Recovery(other, lease=30.0)
    assert await recovery.run_once() == 0  # updated moments ago by another owner
    world.clock.advance(31)
    assert await recovery.run_once() == 1
    done = await world.store.get(saga.id)
    assert done is not None and done.state is SagaState.COMPENSATED


async def test_two_recoverers_never_drive_one_saga(world: World) -> None:
    saga = await crash_after(world, Step.CREATE_ORDER)
    first, second = world.restarted(), world.restarted()
    stale = replace(saga)
    assert await world.store.claim(saga, first.owner, world.clock())
    assert not await world.store.claim(stale, second.owner, world.clock())


async def test_terminal_sagas_are_left_alone(world: World) -> None:
    await world.saga.process(world.request())
    assert await Recovery(world.restarted()).run_once(startup=True) == 0
    captured = [p for p in world.peers.payments.values()]
    assert [p.status for p in captured] == [payments_pb2.PAYMENT_STATUS_CAPTURED]
