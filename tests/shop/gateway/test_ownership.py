"""The saga records the customer with the payment; GetOrderDetails shows a customer their own
orders only, refusing another's before it fetches anything else about it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from grpckit import StatusError
from grpckit.interceptors import recovery
from grpckit.testing import Service, serve_in_process
from shop.api.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from shop.common.ids import new_id
from shop.gateway.main import SERVICE
from shop.gateway.service import GatewayServicer
from shop.orders.domain import OrderNotFoundError
from shop.orders.errors import to_status_error as orders_status_error
from tests.shop.gateway.gateway_fakes import World
from tests.shop.orders.fake_auth import HeaderAuth, Metadata, caller

OTHER = new_id()
FETCHED_AFTER_THE_ORDER = {"get_payment", "list_payments", "get_user"}


def allowed(world: World) -> dict[str, Metadata]:
    return {
        "owner": caller(world.user_id, roles=("customer",)),
        "admin": caller(OTHER, roles=("admin",)),
        "service": caller(roles=("service",)),
    }


REFUSED = {
    "another customer": caller(OTHER, roles=("customer",)),
    "anonymous": caller(),
}


@pytest.fixture
async def details(world: World) -> AsyncIterator[gateway_pb2_grpc.GatewayServiceAsyncStub]:
    servicer = GatewayServicer(world.saga, world.peers)
    added = Service(gateway_pb2_grpc.add_GatewayServiceServicer_to_server, servicer, SERVICE)
    async with serve_in_process(added, interceptors=[recovery(), HeaderAuth()]) as server:
        yield gateway_pb2_grpc.GatewayServiceStub(server.channel)


def request(order_id: str) -> gateway_pb2.GetOrderDetailsRequest:
    return gateway_pb2.GetOrderDetailsRequest(order_id=order_id)


async def test_the_saga_sends_the_orders_user_id_with_the_payment(world: World) -> None:
    response = await world.saga.process(world.request())
    assert response.payment.user_id == response.order.user_id == world.user_id
    [payment] = world.peers.payments.values()
    assert payment.user_id == world.user_id


@pytest.mark.parametrize("who", ["owner", "admin", "service"])
async def test_the_owner_admins_and_services_get_the_details(
    world: World, details: Any, who: str
) -> None:
    processed = await world.saga.process(world.request())
    reply = await details.GetOrderDetails(request(processed.order.id), metadata=allowed(world)[who])
    assert (reply.order, reply.payment) == (processed.order, processed.payment)
    assert reply.user.id == world.user_id


@pytest.mark.parametrize("who", REFUSED)
async def test_anyone_else_gets_not_found_as_for_an_unknown_id(
    world: World, details: Any, who: str
) -> None:
    processed = await world.saga.process(world.request())
    order_id = processed.order.id
    world.peers.calls.clear()
    with pytest.raises(grpc.RpcError) as caught:
        await details.GetOrderDetails(request(order_id), metadata=REFUSED[who])
    refused = StatusError.from_rpc_error(caught.value)
    unknown = orders_status_error(OrderNotFoundError(order_id))  # what orders says of an unknown id
    assert refused.to_proto() == unknown.to_proto()
    assert set(world.peers.names()).isdisjoint(FETCHED_AFTER_THE_ORDER)
    wire = refused.to_proto().SerializeToString()
    assert world.user_id.encode() not in wire and processed.payment.id.encode() not in wire
