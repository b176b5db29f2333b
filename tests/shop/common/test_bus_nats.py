"""The NATS JetStream bus against a real server.

The tests use the server at SHOP_TEST_NATS_URL (default nats://127.0.0.1:4222, JetStream on),
each with its own stream and subjects, deleted afterwards. Under CI=true an unreachable NATS fails
them; elsewhere they are skipped with a message saying how to enable them. The restart test
starts its own ``nats-server`` and is skipped when the binary is not on PATH.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import nats
import pytest
import sqlalchemy as sa
from nats.aio.client import Client
from structlog.testing import capture_logs

from shop.api.events.v1 import events_pb2
from shop.common.bus import InMemoryEventBus, open_bus
from shop.common.bus_nats import NatsBusOptions, NatsEventBus, NatsUnavailableError
from shop.common.db import Database, Migration
from shop.common.outbox import OutboxRelay, add_events, outbox_table
from tests.conftest import unavailable

NATS_URL = os.environ.get("SHOP_TEST_NATS_URL", "nats://127.0.0.1:4222")
FAST = NatsBusOptions(fetch_wait=1.0, retry_delay=0.05, publish_timeout=2.0)
_NATS_PROBLEM: str | bool | None = False


async def _nats_problem() -> str | None:
    try:
        async with asyncio.timeout(2):  # nats-py retries a refused connection for minutes
            client = await nats.connect(NATS_URL, connect_timeout=1, allow_reconnect=False)
    except TimeoutError:
        return "no answer within 2s"
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    try:
        await client.jetstream().account_info()
        return None
    except Exception as exc:
        return f"JetStream unavailable: {type(exc).__name__}: {exc}"
    finally:
        await client.close()


async def require_nats() -> None:
    """Skip (or fail under CI) when NATS with JetStream is unreachable."""
    global _NATS_PROBLEM
    if _NATS_PROBLEM is False:
        _NATS_PROBLEM = await _nats_problem()
    if _NATS_PROBLEM:
        unavailable(
            f"NATS unreachable at {NATS_URL} ({_NATS_PROBLEM}); start it with `nats-server -js` "
            "or set SHOP_TEST_NATS_URL to a nats:// URL to run these tests"
        )


OpenBus = Callable[..., Awaitable[NatsEventBus]]


@pytest.fixture
async def admin() -> AsyncIterator[Client]:
    await require_nats()
    client = await nats.connect(NATS_URL)
    yield client
    await client.close()


@pytest.fixture
async def open_test_bus(admin: Client) -> AsyncIterator[OpenBus]:
    """Opens buses on this test's own stream; closes them and deletes the stream afterwards."""
    tag = uuid.uuid4().hex[:12]
    buses: list[NatsEventBus] = []

    async def open_one(options: NatsBusOptions = FAST, url: str = NATS_URL) -> NatsEventBus:
        bus = await NatsEventBus.connect(
            url, stream=f"T_{tag}", subject_prefix=f"t{tag}.events", name="test", options=options
        )
        buses.append(bus)
        return bus

    yield open_one
    for bus in buses:
        await bus.close()
    with contextlib.suppress(nats.js.errors.NotFoundError):
        await admin.jetstream().delete_stream(f"T_{tag}")


class Inbox:
    """Collects the batches a handler gets."""

    def __init__(self) -> None:
        self.batches: list[list[events_pb2.Event]] = []
        self._changed = asyncio.Condition()

    @property
    def ids(self) -> list[str]:
        return [e.id for batch in self.batches for e in batch]

    async def handler(self, batch: Sequence[events_pb2.Event]) -> None:
        async with self._changed:
            self.batches.append(list(batch))
            self._changed.notify_all()

    async def wait(self, count: int = 0, *, including: str = "") -> None:
        """Return once ``count`` events (and the one with id ``including``) arrived."""

        def arrived() -> bool:
            ids = self.ids
            return len(ids) >= count and (not including or including in ids)

        async with asyncio.timeout(5), self._changed:
            await self._changed.wait_for(arrived)


def _event(name: str, **fields: Any) -> events_pb2.Event:
    fields.setdefault("type", events_pb2.EVENT_TYPE_ORDER_CREATED)
    fields.setdefault("source", "orders")
    return events_pb2.Event(id=f"{name}-{uuid.uuid4().hex[:8]}", order_id=name, **fields)


async def test_publish_then_subscribe_round_trip(open_test_bus: OpenBus, admin: Client) -> None:
    bus = await open_test_bus()
    inbox = Inbox()
    await bus.subscribe("analytics", inbox.handler)
    events = [
        _event("a"),
        _event("b", type=events_pb2.EVENT_TYPE_PAYMENT_CAPTURED, source="payments"),
        _event("c", source="odd source.x"),
    ]
    await bus.publish(events)
    await inbox.wait(3)
    assert [e for batch in inbox.batches for e in batch] == events
    stored = [await admin.jetstream().get_msg(bus.stream, seq) for seq in (1, 2, 3)]
    prefix = bus.subject_prefix
    assert [m.subject for m in stored] == [
        f"{prefix}.orders.order_created",
        f"{prefix}.payments.payment_captured",
        f"{prefix}.odd_source_x.order_created",
    ]
    assert stored[0].headers is not None
    assert stored[0].headers["Nats-Msg-Id"] == events[0].id


async def test_durable_consumer_resumes_where_it_stopped(
    open_test_bus: OpenBus, admin: Client
) -> None:
    bus = await open_test_bus()
    first, second = Inbox(), Inbox()
    before, meanwhile = _event("before"), _event("meanwhile")
    subscription = await bus.subscribe("analytics", first.handler)
    await bus.publish([before])
    await first.wait(1)
    await subscription.close()

    await bus.publish([meanwhile])  # nobody is listening
    subscription = await bus.subscribe("analytics", second.handler)
    await second.wait(1)
    await subscription.close()
    assert first.ids == [before.id]
    assert second.ids == [meanwhile.id]
    info = await admin.jetstream().consumer_info(bus.stream, "analytics")
    assert (info.num_pending, info.num_ack_pending) == (0, 0)  # both acked


async def test_a_failed_batch_is_delivered_again(open_test_bus: OpenBus) -> None:
    bus = await open_test_bus()
    inbox = Inbox()
    failed: list[str] = []

    async def flaky(batch: Sequence[events_pb2.Event]) -> None:
        if not failed:
            failed.extend(e.id for e in batch)
            raise RuntimeError("analytics is busy")
        await inbox.handler(batch)

    events = [_event("a"), _event("b")]
    with capture_logs() as logs:
        await bus.subscribe("analytics", flaky)
        await bus.publish(events)
        await inbox.wait(2)
    assert failed and set(failed) <= set(inbox.ids)
    assert sorted(inbox.ids) == sorted(e.id for e in events)
    assert [entry["event"] for entry in logs].count("bus.handler_failed") == 1


async def test_the_same_event_id_is_stored_once(open_test_bus: OpenBus, admin: Client) -> None:
    bus = await open_test_bus()
    event, after = _event("once"), _event("after")
    replay = events_pb2.Event()
    replay.CopyFrom(event)
    replay.reason = "a replay with the same id"
    await bus.publish([event])
    await bus.publish([replay])  # the outbox relay replaying an unmarked row
    await bus.publish([after])
    inbox = Inbox()
    await bus.subscribe("analytics", inbox.handler)
    await inbox.wait(2)
    assert inbox.ids == [event.id, after.id]
    assert inbox.batches[0][0] == event
    info = await admin.jetstream().stream_info(bus.stream)
    assert info.state.messages == 2


async def test_members_of_one_group_share_the_events(open_test_bus: OpenBus) -> None:
    bus = await open_test_bus()
    inbox = Inbox()
    got: dict[str, list[str]] = {"one": [], "two": []}
    holder: list[str] = []
    held, released = asyncio.Event(), asyncio.Event()

    def member(name: str) -> Callable[[Sequence[events_pb2.Event]], Awaitable[None]]:
        async def handle(batch: Sequence[events_pb2.Event]) -> None:
            got[name].extend(e.id for e in batch)
            if not holder:  # the first to get an event holds it until the other gets some
                holder.append(name)
                held.set()
                async with asyncio.timeout(5):
                    await released.wait()
            elif name != holder[0]:
                released.set()
            await inbox.handler(batch)

        return handle

    await bus.subscribe("analytics", member("one"))
    await bus.subscribe("analytics", member("two"))
    first = _event("first")
    await bus.publish([first])
    async with asyncio.timeout(5):
        await held.wait()
    rest = [_event(f"e{i}") for i in range(5)]
    await bus.publish(rest)
    await inbox.wait(6)
    assert got["one"] and got["two"]
    assert sorted(inbox.ids) == sorted(e.id for e in [first, *rest])  # none twice, none lost


async def test_publish_raises_when_the_stream_is_gone_and_recovers(
    open_test_bus: OpenBus, admin: Client
) -> None:
    bus = await open_test_bus(NatsBusOptions(fetch_wait=0.3, retry_delay=0.05))
    inbox = Inbox()
    await bus.subscribe("analytics", inbox.handler)
    await admin.jetstream().delete_stream(bus.stream)  # e.g. a server that lost its store
    with capture_logs() as logs, pytest.raises(NatsUnavailableError, match="did not store 1 of 1"):
        await bus.publish([_event("lost")])
    assert "bus.nats_stream_recreated" in [entry["event"] for entry in logs]
    await bus.publish([kept := _event("kept")])  # the outbox's replay: the stream is back
    await inbox.wait(1)  # and so is the consumer
    assert inbox.ids == [kept.id]
    info = await admin.jetstream().stream_info(bus.stream)
    assert info.state.messages == 1


async def test_the_outbox_replays_what_nats_did_not_store(
    open_test_bus: OpenBus, admin: Client, tmp_path: Path
) -> None:
    metadata = sa.MetaData()
    table = outbox_table(metadata)
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'orders.db'}", schema="orders")
    try:
        await db.migrate([Migration(1, "outbox", metadata.create_all)])
        bus = await open_test_bus(NatsBusOptions(fetch_wait=0.3, retry_delay=0.05))
        relay = OutboxRelay(db, table, bus)
        events = [_event("a"), _event("b")]
        async with db.transaction() as session:
            await add_events(session, table, events)
        await admin.jetstream().delete_stream(bus.stream)
        with pytest.raises(NatsUnavailableError):
            await relay.drain()  # not acked: the rows stay unpublished
        assert await relay.drain() == 2
        assert await relay.drain() == 0
        inbox = Inbox()
        await bus.subscribe("analytics", inbox.handler)
        await inbox.wait(2)
        assert inbox.ids == [e.id for e in events]
    finally:
        await db.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_connect_failure_names_the_url_and_how_to_start_nats() -> None:
    url = f"nats://app:s3cret@127.0.0.1:{_free_port()}"
    with pytest.raises(NatsUnavailableError) as caught:
        await NatsEventBus.connect(url, options=NatsBusOptions(connect_timeout=0.3))
    message = str(caught.value)
    assert "nats://***@127.0.0.1:" in message
    assert "nats-server -js" in message
    assert "s3cret" not in message


async def test_open_bus_without_url_is_in_process() -> None:
    bus = await open_bus(None)
    assert isinstance(bus, InMemoryEventBus)
    await bus.close()


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        NatsBusOptions(batch_size=0)
    with pytest.raises(ValueError, match="duplicate_window"):
        NatsBusOptions(duplicate_window=60, max_age=30)


async def _start_nats(port: int, store: Path) -> asyncio.subprocess.Process:
    """A JetStream server of our own; returns once it accepts clients."""
    args = ["-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(store)]
    binary = shutil.which("nats-server")
    assert binary is not None
    process = await asyncio.create_subprocess_exec(
        binary, *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    assert process.stderr is not None
    async with asyncio.timeout(10):
        while b"Server is ready" not in (line := await process.stderr.readline()):
            if not line:
                raise RuntimeError(f"nats-server exited with {await process.wait()}")
    return process


async def _stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.terminate()
        await process.wait()


@pytest.mark.skipif(shutil.which("nats-server") is None, reason="nats-server is not on PATH")
async def test_reconnects_after_a_nats_restart(tmp_path: Path) -> None:
    port = _free_port()
    url = f"nats://127.0.0.1:{port}"
    options = NatsBusOptions(
        reconnect_wait=0.1, fetch_wait=0.5, publish_timeout=1.0, retry_delay=0.05
    )
    server = await _start_nats(port, tmp_path)
    try:
        bus = await NatsEventBus.connect(url, name="test", options=options)
        inbox = Inbox()
        await bus.subscribe("analytics", inbox.handler)
        with capture_logs() as logs:
            await bus.publish([before := _event("before")])
            await inbox.wait(1)
            await _stop(server)
            with pytest.raises(NatsUnavailableError):
                await bus.publish([during := _event("during")])  # the outbox keeps it
            assert not bus.connected
            server = await _start_nats(port, tmp_path)
            async with asyncio.timeout(5):
                await bus.wait_connected()
            await bus.publish([after := _event("after")])
            await inbox.wait(including=after.id)
        # "during" too, when the client had not yet seen the outage (buffered, sent later)
        assert inbox.ids in ([before.id, after.id], [before.id, during.id, after.id])
        events = [entry["event"] for entry in logs]
        assert events.count("bus.nats_disconnected") == 1
        assert events.count("bus.nats_reconnected") == 1
        await bus.close()
    finally:
        await _stop(server)
