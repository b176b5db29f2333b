"""validation(): protovalidate rules enforced over a real server, all four RPC kinds.

The Ping service declares no rules, so these tests build a small schema of their own at import
time (a FileDescriptorProto with ``buf.validate`` options, added to the default pool) and serve
it through generic handlers on a grpckit App.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import grpc
import protovalidate
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message
from structlog.testing import capture_logs

from buf.validate import validate_pb2
from grpckit.errors import StatusError
from grpckit.interceptors import deadlines, logging, recovery
from grpckit.interceptors._validation import declares_rules, field_path, validation
from grpckit.testing import PingServicer, Service, TestServer, expect_status, serve_in_process
from grpckit.testing.api.v1 import ping_pb2

PACKAGE = "grpckit.test.validation.v1"
SERVICE = f"{PACKAGE}.OrderService"
F = descriptor_pb2.FieldDescriptorProto


def _field(message: Any, name: str, number: int, kind: int, **extra: Any) -> Any:
    label = extra.pop("label", F.LABEL_OPTIONAL)
    return message.field.add(name=name, number=number, type=kind, label=label, **extra)


def _schema() -> descriptor_pb2.FileDescriptorProto:
    """Item{quantity>=1}, Order{email, items 1.., counts values>=0}, Note (no rules), Broken."""
    file = descriptor_pb2.FileDescriptorProto(
        name="grpckit/test/validation/v1/validation_test.proto",
        package=PACKAGE,
        syntax="proto3",
        dependency=["buf/validate/validate.proto"],
    )
    item = file.message_type.add(name="Item")
    rules = _field(item, "quantity", 1, F.TYPE_INT32).options.Extensions[validate_pb2.field]
    rules.int32.gte = 1
    _add_order(file.message_type.add(name="Order"))
    _field(file.message_type.add(name="Note"), "text", 1, F.TYPE_STRING)
    broken = _field(file.message_type.add(name="Broken"), "text", 1, F.TYPE_STRING)
    broken.options.Extensions[validate_pb2.field].int32.gte = 1  # int rules on a string: a bug
    _add_service(file.service.add(name="OrderService"))
    return file


def _add_order(order: descriptor_pb2.DescriptorProto) -> None:
    email = _field(order, "email", 1, F.TYPE_STRING)
    email.options.Extensions[validate_pb2.field].string.email = True
    items = _field(
        order, "items", 2, F.TYPE_MESSAGE, type_name=f".{PACKAGE}.Item", label=F.LABEL_REPEATED
    )
    items.options.Extensions[validate_pb2.field].repeated.min_items = 1
    entry = order.nested_type.add(name="CountsEntry")
    entry.options.map_entry = True
    _field(entry, "key", 1, F.TYPE_STRING)
    _field(entry, "value", 2, F.TYPE_INT32)
    counts = _field(
        order,
        "counts",
        3,
        F.TYPE_MESSAGE,
        type_name=f".{PACKAGE}.Order.CountsEntry",
        label=F.LABEL_REPEATED,
    )
    counts.options.Extensions[validate_pb2.field].map.values.int32.gte = 0


def _add_service(service: descriptor_pb2.ServiceDescriptorProto) -> None:
    for name, request, client_streaming, server_streaming in [
        ("Place", "Order", False, False),
        ("Watch", "Order", False, True),
        ("Upload", "Order", True, False),
        ("Chat", "Order", True, True),
        ("Free", "Note", False, False),
        ("Break", "Broken", False, False),
    ]:
        service.method.add(
            name=name,
            input_type=f".{PACKAGE}.{request}",
            output_type=f".{PACKAGE}.Note",
            client_streaming=client_streaming,
            server_streaming=server_streaming,
        )


_POOL = descriptor_pool.Default()
_POOL.Add(_schema())
Order: Any = message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"{PACKAGE}.Order"))
Item: Any = message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"{PACKAGE}.Item"))
Note: Any = message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"{PACKAGE}.Note"))
Broken: Any = message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"{PACKAGE}.Broken"))
VALID = {"email": "ada@example.com", "items": [{"quantity": 1}]}


def order(**fields: Any) -> Any:
    values = {**VALID, **fields}
    return Order(
        email=values["email"],
        items=[Item(**i) for i in values["items"]],
        counts=values.get("counts", {}),
    )


class OrderServicer:
    """Records every request it sees; answers with the request's email."""

    def __init__(self) -> None:
        self.seen: list[Message] = []

    async def Place(self, request: Any, context: Any) -> Any:
        self.seen.append(request)
        return Note(text=request.email)

    async def Free(self, request: Any, context: Any) -> Any:
        self.seen.append(request)
        return Note(text=request.text)

    async def Break(self, request: Any, context: Any) -> Any:
        self.seen.append(request)
        return Note()

    async def Watch(self, request: Any, context: Any) -> AsyncIterator[Any]:
        self.seen.append(request)
        yield Note(text=request.email)

    async def Upload(self, requests: AsyncIterator[Any], context: Any) -> Any:
        async for request in requests:
            self.seen.append(request)
        return Note(text=str(len(self.seen)))

    async def Chat(self, requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        async for request in requests:
            self.seen.append(request)
            yield Note(text=request.email)


def _add_to_server(servicer: OrderServicer, server: grpc.aio.Server) -> None:
    descriptor = _POOL.FindServiceByName(SERVICE)
    factories = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    handlers = {}
    for method in descriptor.methods:
        request_cls = message_factory.GetMessageClass(method.input_type)
        factory = factories[(method.client_streaming, method.server_streaming)]
        handlers[method.name] = factory(
            getattr(servicer, method.name),
            request_deserializer=request_cls.FromString,
            response_serializer=Note.SerializeToString,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))


def stub(server: TestServer, method: str, shape: str = "unary_unary") -> Any:
    return getattr(server.channel, shape)(
        f"/{SERVICE}/{method}",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=Note.FromString,
    )


@pytest.fixture
def orders() -> OrderServicer:
    return OrderServicer()


@pytest.fixture
async def server(orders: OrderServicer) -> AsyncIterator[TestServer]:
    service = Service(_add_to_server, orders, _POOL.FindServiceByName(SERVICE))
    async with serve_in_process(service, PingServicer(), interceptors=[validation()]) as running:
        yield running


def fields(error: StatusError) -> list[str]:
    return [field for field, _ in error.field_violations]


async def test_valid_unary_request_reaches_the_handler(
    server: TestServer, orders: OrderServicer
) -> None:
    reply = await stub(server, "Place")(order())
    assert reply.text == "ada@example.com"
    assert len(orders.seen) == 1


async def test_invalid_unary_request_lists_every_violation(
    server: TestServer, orders: OrderServicer
) -> None:
    bad = order(email="nope", items=[{"quantity": 0}, {"quantity": 2}, {"quantity": -1}])
    bad.counts["a b"] = -5
    err = await expect_status(stub(server, "Place")(bad), grpc.StatusCode.INVALID_ARGUMENT)
    assert fields(err) == ["email", "items[0].quantity", "items[2].quantity", 'counts["a b"]']
    assert err.message.startswith("invalid Order: email: ")
    assert err.message.endswith("(and 3 more)")
    assert dict(err.field_violations)["items[0].quantity"] == "must be greater than or equal to 1"
    assert orders.seen == []


async def test_empty_repeated_field_is_named(server: TestServer) -> None:
    err = await expect_status(
        stub(server, "Place")(order(items=[])), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert fields(err) == ["items"]


async def test_server_stream_request_is_checked_before_the_handler(
    server: TestServer, orders: OrderServicer
) -> None:
    call = stub(server, "Watch", "unary_stream")(order(email=""))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in call:
            pass
    err = StatusError.from_rpc_error(caught.value)
    assert err.code is grpc.StatusCode.INVALID_ARGUMENT
    assert fields(err) == ["email"]
    assert orders.seen == []


async def test_client_stream_stops_at_the_first_invalid_message(
    server: TestServer, orders: OrderServicer
) -> None:
    requests = [order(), order(items=[]), order()]
    err = await expect_status(
        stub(server, "Upload", "stream_unary")(iter(requests)), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert fields(err) == ["items"]
    assert [m.email for m in orders.seen] == ["ada@example.com"]


async def test_bidi_stream_answers_valid_messages_one_by_one_then_rejects(
    server: TestServer, orders: OrderServicer
) -> None:
    call = stub(server, "Chat", "stream_stream")()
    await call.write(order(email="first@example.com"))
    reply = await call.read()  # answered before the next message is sent: nothing is buffered
    assert reply.text == "first@example.com"
    await call.write(order(email="bad", items=[{"quantity": 0}]))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()
    err = StatusError.from_rpc_error(caught.value)
    assert err.code is grpc.StatusCode.INVALID_ARGUMENT
    assert fields(err) == ["email", "items[0].quantity"]
    assert len(orders.seen) == 1


class CountingChecker:
    def __init__(self) -> None:
        self.validator = protovalidate.Validator()
        self.checked: list[str] = []

    def collect_violations(self, message: Message, /) -> list[protovalidate.Violation]:
        self.checked.append(message.DESCRIPTOR.name)
        return self.validator.collect_violations(message)


async def test_messages_without_rules_skip_the_validator(orders: OrderServicer) -> None:
    checker = CountingChecker()
    service = Service(_add_to_server, orders, _POOL.FindServiceByName(SERVICE))
    async with serve_in_process(
        service, PingServicer(), interceptors=[validation(checker)]
    ) as server:
        assert (await stub(server, "Free")(Note(text="x"))).text == "x"
        assert (await server.ping.Ping(ping_pb2.PingRequest(message="hi"))).message == "hi"
        await stub(server, "Place")(order())
    assert checker.checked == ["Order"]


async def test_broken_rules_are_internal_and_logged_once(server: TestServer) -> None:
    with capture_logs() as logs:
        err = await expect_status(stub(server, "Break")(Broken(text="x")), grpc.StatusCode.INTERNAL)
    assert err.message == "internal error"
    [record] = [r for r in logs if r["event"] == "validation.rules_error"]
    assert record["error_id"] == err.error_info.metadata["error_id"]
    assert record["message_type"] == f"{PACKAGE}.Broken"
    assert "CompilationError" in record["error"]


async def test_full_chain_keeps_invalid_argument(orders: OrderServicer) -> None:
    service = Service(_add_to_server, orders, _POOL.FindServiceByName(SERVICE))
    chain = [recovery(), logging(), deadlines(default=5), validation()]
    async with serve_in_process(service, interceptors=chain) as server:
        err = await expect_status(
            stub(server, "Place")(order(email="x")), grpc.StatusCode.INVALID_ARGUMENT
        )
        assert fields(err) == ["email"]
        assert (await stub(server, "Place")(order())).text == "ada@example.com"


async def test_concurrent_calls_get_their_own_verdicts(server: TestServer) -> None:
    place = stub(server, "Place")
    good, bad = order(), order(email="bad")
    results = await asyncio.gather(
        *(place(good if i % 2 else bad) for i in range(20)), return_exceptions=True
    )
    assert [isinstance(r, grpc.aio.AioRpcError) for r in results] == [i % 2 == 0 for i in range(20)]


def test_declares_rules_follows_nested_messages() -> None:
    assert declares_rules(Order.DESCRIPTOR)
    assert declares_rules(Item.DESCRIPTOR)
    assert not declares_rules(Note.DESCRIPTOR)
    assert not declares_rules(ping_pb2.PingRequest.DESCRIPTOR)


@pytest.mark.parametrize(
    ("subscript", "expected"),
    [
        (None, "a.b"),
        (SimpleNamespace(field="index", value=3), "a[3].b"),
        (SimpleNamespace(field="int_key", value=-2), "a[-2].b"),
        (SimpleNamespace(field="uint_key", value=7), "a[7].b"),
        (SimpleNamespace(field="bool_key", value=True), "a[true].b"),
        (SimpleNamespace(field="string_key", value='say "hi"'), 'a["say \\"hi\\""].b'),
    ],
)
def test_field_path_formats_subscripts(subscript: Any, expected: str) -> None:
    elements = [
        SimpleNamespace(field_name="a", subscript=subscript),
        SimpleNamespace(field_name="b", subscript=None),
    ]
    assert field_path(elements) == expected
