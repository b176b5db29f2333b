"""The audit interceptor: which calls are recorded, what a record holds, sink failures."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from grpckit import CallInfo, RpcKind, StatusError
from grpckit.auth._principal import Principal
from grpckit.errors import permission_denied
from grpckit.interceptors import (
    AuditRecord,
    audit,
    default_resource,
    logging,
    state_changing,
)
from grpckit.middleware import Next
from grpckit.testing import (
    FakeServicerContext,
    PingServicer,
    expect_status,
    fake_call,
    serve_in_process,
)
from grpckit.testing.api.v1 import ping_pb2

NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
PING = "/grpckit.testing.v1.PingService/Ping"


# --- a test-only proto: a state-changing and a NO_SIDE_EFFECTS method, messages with ids -----

_PACKAGE = "grpckit.testing.audittest"
_FIELD = descriptor_pb2.FieldDescriptorProto


def _thing_file() -> descriptor_pb2.FileDescriptorProto:
    f = descriptor_pb2.FileDescriptorProto(
        name="grpckit/testing/audittest.proto", package=_PACKAGE, syntax="proto3"
    )
    thing = f.message_type.add(name="Thing")
    thing.field.add(name="id", number=1, type=_FIELD.TYPE_STRING, label=_FIELD.LABEL_OPTIONAL)
    request = f.message_type.add(name="ThingRequest")
    for number, (name, kind) in enumerate(
        [
            ("thing_id", _FIELD.TYPE_STRING),
            ("owner_id", _FIELD.TYPE_STRING),
            ("note", _FIELD.TYPE_STRING),
            ("count_id", _FIELD.TYPE_INT32),
        ],
        start=1,
    ):
        request.field.add(name=name, number=number, type=kind, label=_FIELD.LABEL_OPTIONAL)
    request.field.add(
        name="tag_ids", number=5, type=_FIELD.TYPE_STRING, label=_FIELD.LABEL_REPEATED
    )
    response = f.message_type.add(name="ThingResponse")
    response.field.add(
        name="thing",
        number=1,
        type=_FIELD.TYPE_MESSAGE,
        type_name=f".{_PACKAGE}.Thing",
        label=_FIELD.LABEL_OPTIONAL,
    )
    service = f.service.add(name="ThingService")
    types = {"input_type": f".{_PACKAGE}.ThingRequest", "output_type": f".{_PACKAGE}.ThingResponse"}
    service.method.add(name="CreateThing", **types)
    read = service.method.add(name="GetThing", **types)
    read.options.idempotency_level = descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS
    return f


def _message_class(name: str) -> Any:
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName("grpckit/testing/audittest.proto")
    except KeyError:
        pool.AddSerializedFile(_thing_file().SerializeToString())
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.{name}"))


Thing = _message_class("Thing")
ThingRequest = _message_class("ThingRequest")
ThingResponse = _message_class("ThingResponse")
CREATE = f"/{_PACKAGE}.ThingService/CreateThing"
GET = f"/{_PACKAGE}.ThingService/GetThing"


# --- fakes ----------------------------------------------------------------------------------


class ListSink:
    def __init__(self, order: list[str] | None = None) -> None:
        self.records: list[AuditRecord] = []
        self.order = order if order is not None else []

    async def append(self, record: AuditRecord) -> None:
        await asyncio.sleep(0)  # a sink that is not awaited would lose the race below
        self.records.append(record)
        self.order.append("stored")


class FailingSink:
    def __init__(self) -> None:
        self.fail = True
        self.records: list[AuditRecord] = []

    async def append(self, record: AuditRecord) -> None:
        if self.fail:
            raise ConnectionError("audit database down")
        self.records.append(record)


class SetPrincipal:
    """Stands in for authentication (and authorization, with ``deny``)."""

    def __init__(self, principal: Principal, *, deny: bool = False) -> None:
        self.principal, self.deny = principal, deny

    async def intercept(self, call: CallInfo, next_: Next) -> None:
        call.principal = self.principal
        if self.deny:
            raise permission_denied("admins only")
        await next_(call)


async def respond(call: CallInfo) -> None:
    call.response = ThingResponse(thing=Thing(id="t-9"))


def clock() -> datetime:
    return NOW


# --- in-process -----------------------------------------------------------------------------


async def test_records_a_successful_call_after_it_ran() -> None:
    order: list[str] = []
    sink = ListSink(order)

    class Outermost:
        async def intercept(self, call: CallInfo, next_: Next) -> None:
            await next_(call)
            order.append("returned")

    chain = [Outermost(), logging(), audit(sink, clock=clock)]
    async with serve_in_process(PingServicer(), interceptors=chain) as server:
        reply = await server.ping.Ping(
            ping_pb2.PingRequest(message="hi"), metadata=[("x-request-id", "req-1")]
        )
    assert reply.message == "hi"
    assert order == ["stored", "returned"]  # stored before the status goes back
    assert sink.records == [
        AuditRecord(
            time=NOW,
            actor="anonymous",
            roles=(),
            service_identity=None,
            method=PING,
            resource="",
            code="OK",
            request_id="req-1",
            peer="127.0.0.1",
        )
    ]


async def test_records_handler_failures_with_their_code() -> None:
    sink = ListSink()
    async with serve_in_process(PingServicer(), interceptors=[audit(sink)]) as server:
        await expect_status(
            server.ping.Ping(ping_pb2.PingRequest(error_code=grpc.StatusCode.NOT_FOUND.value[0])),
            grpc.StatusCode.NOT_FOUND,
        )
    assert [r.code for r in sink.records] == ["NOT_FOUND"]
    assert sink.records[0].time.tzinfo is not None


async def test_records_rejections_by_later_interceptors_with_the_principal() -> None:
    sink = ListSink()
    user = Principal(subject="u-1", roles=frozenset({"user", "admin"}), service="gateway")
    chain = [audit(sink), SetPrincipal(user, deny=True)]
    async with serve_in_process(PingServicer(), interceptors=chain) as server:
        await expect_status(
            server.ping.Ping(ping_pb2.PingRequest()), grpc.StatusCode.PERMISSION_DENIED
        )
    [record] = sink.records
    assert (record.actor, record.roles, record.service_identity, record.code) == (
        "u-1",
        ("admin", "user"),
        "gateway",
        "PERMISSION_DENIED",
    )


async def test_a_failing_sink_does_not_fail_the_call() -> None:
    sink = FailingSink()
    registry = CollectorRegistry()
    async with serve_in_process(
        PingServicer(), interceptors=[audit(sink, registry=registry)]
    ) as server:
        with capture_logs() as logs:
            for _ in range(2):
                reply = await server.ping.Ping(ping_pb2.PingRequest(message="still works"))
                assert reply.message == "still works"
            sink.fail = False
            await server.ping.Ping(ping_pb2.PingRequest())
    assert registry.get_sample_value("grpckit_audit_failures_total") == 2
    events = [(e["event"], e["log_level"]) for e in logs if e["event"].startswith("audit.")]
    assert events == [("audit.append_failed", "error"), ("audit.recovered", "warning")]
    failed = next(e for e in logs if e["event"] == "audit.append_failed")
    assert failed["method"] == PING and "audit database down" in failed["error"]
    assert next(e for e in logs if e["event"] == "audit.recovered")["lost"] == 2
    assert len(sink.records) == 1


# --- unit: which calls ----------------------------------------------------------------------


def test_state_changing_reads_the_idempotency_level() -> None:
    assert state_changing(fake_call(CREATE))
    assert not state_changing(fake_call(GET))
    assert state_changing(fake_call("/unknown.v1.Nothing/Do"))  # no descriptor: audited
    assert state_changing(fake_call(PING))


async def test_reads_health_and_unmatched_calls_are_not_recorded() -> None:
    sink = ListSink()
    await audit(sink).intercept(fake_call(GET, request=ThingRequest(thing_id="t-1")), respond)
    everything = audit(sink, match=lambda call: True)
    await everything.intercept(fake_call("/grpc.health.v1.Health/Check"), respond)
    await audit(sink, match=lambda call: False).intercept(fake_call(CREATE), respond)
    assert sink.records == []
    await everything.intercept(fake_call(GET), respond)
    assert [r.method for r in sink.records] == [GET]


async def test_service_only_principal_is_the_actor() -> None:
    sink = ListSink()
    service = Principal(roles=frozenset({"service"}), service="gateway")
    await audit(sink).intercept(
        fake_call(CREATE), lambda c: SetPrincipal(service).intercept(c, respond)
    )
    [record] = sink.records
    assert (record.actor, record.roles, record.service_identity) == (
        "service:gateway",
        ("service",),
        "gateway",
    )


# --- unit: resource -------------------------------------------------------------------------


async def _resource_of(call: CallInfo, handler: Next = respond, **kwargs: Any) -> str:
    sink = ListSink()
    with contextlib.suppress(StatusError):
        await audit(sink, **kwargs).intercept(call, handler)
    [record] = sink.records
    return record.resource


async def test_resource_lists_request_ids_and_the_created_id() -> None:
    request = ThingRequest(owner_id="u-1", note="n", count_id=3, tag_ids=["a"])
    assert await _resource_of(fake_call(CREATE, request=request)) == "owner_id=u-1,thing.id=t-9"


async def test_resource_skips_a_response_id_already_in_the_request() -> None:
    request = ThingRequest(thing_id="t-9", owner_id="u-1")
    assert await _resource_of(fake_call(CREATE, request=request)) == "thing_id=t-9,owner_id=u-1"


async def test_resource_of_a_failed_call_is_the_request_part() -> None:
    async def fail(call: CallInfo) -> None:
        raise permission_denied("no")

    call = fake_call(CREATE, request=ThingRequest(thing_id="t-1"))
    assert await _resource_of(call, fail) == "thing_id=t-1"


async def test_resource_of_a_client_stream_is_the_response_part() -> None:
    call = fake_call(CREATE, kind=RpcKind.CLIENT_STREAM)
    assert await _resource_of(call) == "thing.id=t-9"


def test_resource_cuts_long_values() -> None:
    call = fake_call(CREATE, request=ThingRequest(thing_id="x" * 1000))
    assert default_resource(call) == "thing_id=" + "x" * 128 + "…"


async def test_a_custom_resource_function_replaces_the_default() -> None:
    call = fake_call(CREATE, request=ThingRequest(thing_id="t-1"))
    assert await _resource_of(call, resource=lambda c: "custom:" + c.method) == "custom:CreateThing"


async def test_a_failing_resource_function_does_not_fail_the_call() -> None:
    def broken(call: CallInfo) -> str:
        raise ValueError("bug")

    with capture_logs() as logs:
        await audit(ListSink(), resource=broken, registry=CollectorRegistry()).intercept(
            fake_call(CREATE), respond
        )
    assert [e["event"] for e in logs] == ["audit.append_failed"]


@pytest.mark.parametrize(
    ("peer", "ip"),
    [
        ("ipv4:10.1.2.3:5555", "10.1.2.3"),
        ("ipv6:[::1]:5555", "::1"),
        ("ipv6:%5B2001:db8::1%5D:443", "2001:db8::1"),
        ("unix:/run/shop.sock", "/run/shop.sock"),
    ],
)
async def test_peer_is_the_address_without_port(peer: str, ip: str) -> None:
    sink = ListSink()
    await audit(sink).intercept(fake_call(CREATE, context=FakeServicerContext(peer=peer)), respond)
    assert sink.records[0].peer == ip
