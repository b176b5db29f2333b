"""One ProcessOrder is one trace: every shop service in-process on one grpckit App, traced.

The services are mounted as ``shop up`` mounts them (``shop.system``), on one App whose chain has
``tracing()``, and their peer channels carry the client tracing interceptors, so each call of
the saga shows up as a CLIENT span (in the caller) parent of a SERVER span (in the callee).
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

pytest.importorskip("opentelemetry.sdk.trace")

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from grpckit import App, ServerConfig, dial
from grpckit.client._tracing import client_tracing_interceptors
from grpckit.interceptors import deadlines, logging, recovery
from grpckit.interceptors._tracing import tracing
from grpckit.testing import TestServer, serve_in_process
from shop.api.orders.v1 import orders_pb2
from shop.common.bus import InMemoryEventBus
from shop.common.runtime import SERVICES, ServiceContext, Settings
from shop.system import MOUNT_ORDER
from tests.e2e.clients import Stubs, order_request

GATEWAY = "shop.gateway.v1.GatewayService/ProcessOrder"
#: Each downstream call of one ProcessOrder, and the span (by name) it is made under.
DOWNSTREAM = {
    "shop.users.v1.UserService/ValidateUser": GATEWAY,
    "shop.orders.v1.OrderService/CreateOrder": GATEWAY,
    "shop.catalog.v1.CatalogService/BatchGetProducts": "shop.orders.v1.OrderService/CreateOrder",
    "shop.catalog.v1.CatalogService/ReserveStock": GATEWAY,
    "shop.payments.v1.PaymentService/ProcessPayment": GATEWAY,
    "shop.orders.v1.OrderService/MarkOrderPaid": GATEWAY,
}


@dataclass
class TracedContext(ServiceContext):
    """A ServiceContext whose peer channels trace their calls (test-only subclass)."""

    tracer_provider: Any = None

    def channel(self, peer: str) -> grpc.aio.Channel:
        if peer not in self._channels:
            target = self.peers[peer]
            self._channels[peer] = dial(
                target,
                default_timeout=self.settings.call_timeout,
                interceptors=client_tracing_interceptors(self.tracer_provider, target=target),
            )
        return self._channels[peer]


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield tracer_provider
    tracer_provider.shutdown()


@pytest.fixture
async def shop(tmp_path: Path, provider: TracerProvider) -> AsyncIterator[TestServer]:
    """Every service on one App with the shop chain plus tracing; peers are the App itself."""
    app = App(
        ServerConfig(grace_period=1.0),
        name="shop",
        interceptors=[recovery(), tracing(provider), logging(), deadlines()],
    )
    local = f"127.0.0.1:{app.bind()}"
    ctx = TracedContext(
        settings=Settings(data_dir=tmp_path, saga_timeout=20.0, call_timeout=10.0),
        bus=InMemoryEventBus(),
        peers=dict.fromkeys(SERVICES, local),
        tracer_provider=provider,
    )
    app.on_stop(ctx.close)
    for service in MOUNT_ORDER:
        await importlib.import_module(f"shop.{service}.main").mount(app, ctx)
    async with serve_in_process(app=app, default_timeout=20.0) as server:
        yield server


def by_name(spans: list[ReadableSpan], kind: SpanKind) -> dict[str, ReadableSpan]:
    named: dict[str, ReadableSpan] = {}
    for span in spans:
        if span.kind is kind:
            assert span.name not in named, f"two {kind.name} spans named {span.name}"
            named[span.name] = span
    return named


async def test_one_process_order_is_one_trace_with_a_span_pair_per_call(
    shop: TestServer, exporter: InMemorySpanExporter
) -> None:
    stubs = Stubs.on(shop.channel)
    user_id, product = await stubs.customer(), await stubs.product()
    exporter.clear()

    reply = await stubs.gateway.ProcessOrder(order_request(user_id, product.id), timeout=20)

    assert reply.order.status == orders_pb2.ORDER_STATUS_PAID
    [root] = [s for s in exporter.get_finished_spans() if s.name == GATEWAY]
    assert root.kind is SpanKind.SERVER and root.parent is None
    trace = [
        s for s in exporter.get_finished_spans() if s.context.trace_id == root.context.trace_id
    ]
    servers, clients = by_name(trace, SpanKind.SERVER), by_name(trace, SpanKind.CLIENT)
    assert set(servers) == {GATEWAY, *DOWNSTREAM}
    assert set(clients) == set(DOWNSTREAM)
    assert len(trace) == 1 + 2 * len(DOWNSTREAM)
    for name, caller in DOWNSTREAM.items():
        client, server = clients[name], servers[name]
        assert (
            client.parent is not None and client.parent.span_id == servers[caller].context.span_id
        )
        assert server.parent is not None and server.parent.span_id == client.context.span_id
        assert server.parent.is_remote  # it came through the traceparent metadata
        for span in (client, server):
            assert span.attributes is not None
            assert span.attributes["rpc.system"] == "grpc"
            assert span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.OK.value[0]
            assert span.status.status_code is StatusCode.UNSET
    assert clients["shop.users.v1.UserService/ValidateUser"].attributes == {
        "rpc.system": "grpc",
        "rpc.service": "shop.users.v1.UserService",
        "rpc.method": "ValidateUser",
        "server.address": "127.0.0.1",
        "server.port": int(shop.address.rsplit(":", 1)[1]),
        "rpc.grpc.status_code": 0,
    }
