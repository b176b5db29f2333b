"""The event bus on NATS JetStream: events between processes, at-least-once, deduplicated by id.

``publish`` stores each event (a serialized ``shop.events.v1.Event``) in one stream under
``<subject_prefix>.<source>.<type>`` with ``Nats-Msg-Id`` set to the event id, and returns only
when JetStream acknowledged every one: an outbox relay that sees it raise keeps its rows and
publishes them again, and JetStream drops the repeats that arrive within the duplicate window.
``subscribe`` reads through a durable pull consumer named after the group: processes in one
group share the events, a group that comes back resumes where it stopped, and a batch is acked
only after the handler returned (a handler that raises gets the batch again after
``retry_delay``). Consumers still drop duplicates by event id (analytics does).

The connection reconnects forever after an outage; ``bus.nats_disconnected`` and
``bus.nats_reconnected`` are logged once per outage, and ``publish`` raises while it lasts.

Example::

    bus = await NatsEventBus.connect("nats://127.0.0.1:4222", name="orders")
    await bus.publish(events)                  # returns once JetStream stored every event
    subscription = await bus.subscribe("analytics", handle_batch)
    ...
    await bus.close()                          # closes the subscriptions, drains the connection
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import nats.errors
import nats.js.errors
from google.protobuf.message import DecodeError
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from grpckit import get_logger
from shop.api.events.v1 import events_pb2
from shop.common.bus import Handler

__all__ = ["NatsBusOptions", "NatsEventBus", "NatsSubscription", "NatsUnavailableError"]

_LOG = get_logger("shop.bus")
_NAME = re.compile(r"[A-Za-z0-9_-]+")
_TOKEN = re.compile(r"[^A-Za-z0-9_-]")
_HOW_TO_START = (
    "run NATS with JetStream on (`nats-server -js`, or `docker run -p 4222:4222 nats -js`), "
    "or leave --nats-url/SHOP_NATS_URL unset for the in-process bus"
)


class NatsUnavailableError(ConnectionError):
    """NATS (or its JetStream) could not be reached, or did not acknowledge a publish."""


@dataclass(frozen=True)
class NatsBusOptions:
    """Tunables of a :class:`NatsEventBus`; times in seconds.

    Example: ``NatsBusOptions(batch_size=100, retry_delay=0.5)``
    """

    #: JetStream drops an event id it stored within this window.
    duplicate_window: float = 120.0
    #: Events older than this leave the stream.
    max_age: float = 86_400.0
    #: Every event of a published batch must be acknowledged within this.
    publish_timeout: float = 5.0
    #: The first connection, at start (after it: reconnection attempts forever).
    connect_timeout: float = 5.0
    #: Between reconnection attempts during an outage.
    reconnect_wait: float = 1.0
    #: Events per handler call, at most.
    batch_size: int = 256
    #: After the first event of a batch, how long to wait for more to fill it.
    batch_wait: float = 0.05
    #: How long one pull request waits for the first event.
    fetch_wait: float = 5.0
    #: A delivered event not acknowledged within this is delivered again.
    ack_wait: float = 30.0
    #: A batch whose handler raised is delivered again after this.
    retry_delay: float = 1.0
    #: Deliveries of one event at most (-1: unlimited).
    max_deliver: int = -1

    def __post_init__(self) -> None:
        times = (self.publish_timeout, self.connect_timeout, self.reconnect_wait)
        if min(*times, self.batch_wait, self.fetch_wait, self.ack_wait, self.retry_delay) <= 0:
            raise ValueError("NatsBusOptions: times must be positive")
        if self.batch_size < 1:
            raise ValueError("NatsBusOptions: batch_size must be at least 1")
        if not 0 < self.duplicate_window <= self.max_age:
            raise ValueError("NatsBusOptions: need 0 < duplicate_window <= max_age")


class NatsEventBus:
    """An :class:`~shop.common.bus.EventBus` on one JetStream stream; build it with ``connect``.

    Example::

        bus = await NatsEventBus.connect(url, stream="SHOP_EVENTS", subject_prefix="shop.events")
    """

    def __init__(
        self, client: Client, link: _Link, stream: str, subject_prefix: str, options: NatsBusOptions
    ) -> None:
        self._nc, self._link = client, link
        self._js: JetStreamContext = client.jetstream(timeout=options.publish_timeout)
        self.stream, self.subject_prefix, self.options = stream, subject_prefix, options
        self._subscriptions: list[NatsSubscription] = []

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        stream: str = "SHOP_EVENTS",
        subject_prefix: str = "shop.events",
        name: str = "shop",
        options: NatsBusOptions | None = None,
    ) -> NatsEventBus:
        """Connect to ``url`` and create (or update) the stream; raise if either fails.

        ``url`` may list several servers of a cluster, separated by commas.
        """
        options = options if options is not None else NatsBusOptions()
        if not _NAME.fullmatch(stream):
            raise ValueError(f"stream name {stream!r}: letters, digits, '_' and '-' only")
        if not all(_NAME.fullmatch(token) for token in subject_prefix.split(".")):
            raise ValueError(f"subject prefix {subject_prefix!r}: dot-separated plain tokens")
        servers = [part.strip() for part in url.split(",") if part.strip()]
        link = _Link(",".join(_redact(server) for server in servers))
        client = await link.open(servers, name, options)
        bus = cls(client, link, stream, subject_prefix, options)
        try:
            await bus._ensure_stream()
        except (nats.errors.Error, TimeoutError) as exc:
            link.closing = True
            await client.close()
            unanswered = (nats.js.errors.ServiceUnavailableError, nats.errors.NoRespondersError)
            if isinstance(exc, (*unanswered, TimeoutError)):
                problem = "does not answer JetStream requests (is JetStream on?)"
            else:
                problem = f"refused stream {stream!r} ({type(exc).__name__}: {exc})"
            raise NatsUnavailableError(f"NATS at {link.url} {problem}; {_HOW_TO_START}") from exc
        return bus

    @property
    def connected(self) -> bool:
        """True while the connection to NATS is up."""
        return self._nc.is_connected

    async def wait_connected(self) -> None:
        """Return once the connection is up (at once when it is): for readiness and tests."""
        await self._link.up.wait()

    async def publish(self, events: Sequence[events_pb2.Event]) -> None:
        """Store every event; raise :class:`NatsUnavailableError` unless all were acked."""
        if not events:
            return
        if not self._nc.is_connected:
            raise NatsUnavailableError(f"NATS at {self._link.url} is unreachable (reconnecting)")
        acks: list[asyncio.Future[api.PubAck]] = []
        try:
            for event in events:
                acks.append(
                    await self._js.publish_async(
                        self._subject(event),
                        event.SerializeToString(deterministic=True),
                        wait_stall=self.options.publish_timeout,
                        headers={api.Header.MSG_ID: event.id} if event.id else None,
                    )
                )
            async with asyncio.timeout(self.options.publish_timeout):
                results = await asyncio.gather(*acks, return_exceptions=True)
        except (nats.errors.Error, TimeoutError) as exc:
            for ack in acks:
                ack.cancel()
            raise NatsUnavailableError(
                f"publishing {len(events)} events to NATS at {self._link.url} failed "
                f"({type(exc).__name__}: {exc})"
            ) from exc
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            if any(isinstance(f, nats.js.errors.NoStreamResponseError) for f in failures):
                await self._recreate_stream()  # deleted, or a server that lost its store
            raise NatsUnavailableError(
                f"JetStream stream {self.stream!r} did not store {len(failures)} of "
                f"{len(events)} events ({type(failures[0]).__name__}: {failures[0]})"
            )

    async def subscribe(self, group: str, handler: Handler) -> NatsSubscription:
        """Deliver the stream's events to ``handler`` through the durable consumer ``group``."""
        if not _NAME.fullmatch(group):
            raise ValueError(f"group {group!r}: letters, digits, '_' and '-' only")
        await self._ensure_consumer(group)
        pull = await self._js.pull_subscribe_bind(durable=group, stream=self.stream)
        subscription = NatsSubscription(self, pull, group, handler)
        self._subscriptions.append(subscription)
        return subscription

    async def close(self) -> None:
        """Close the subscriptions (their last batch is acked), then drain the connection."""
        for subscription in list(self._subscriptions):
            await subscription.close()
        self._link.closing = True
        try:
            async with asyncio.timeout(self.options.publish_timeout):
                await self._nc.drain()
        except (nats.errors.Error, TimeoutError):
            await self._nc.close()

    def _subject(self, event: events_pb2.Event) -> str:
        kind = events_pb2.EventType.Name(event.type) if event.type in _TYPES else str(event.type)
        source = _TOKEN.sub("_", event.source) or "unknown"
        return f"{self.subject_prefix}.{source}.{kind.removeprefix('EVENT_TYPE_').lower()}"

    async def _ensure_stream(self) -> None:
        config = api.StreamConfig(
            name=self.stream,
            subjects=[f"{self.subject_prefix}.>"],
            retention=api.RetentionPolicy.LIMITS,
            storage=api.StorageType.FILE,
            duplicate_window=self.options.duplicate_window,
            max_age=self.options.max_age,
        )
        try:
            await self._js.stream_info(self.stream)
        except nats.js.errors.NotFoundError:
            await self._js.add_stream(config)
        else:
            await self._js.update_stream(config)

    async def _recreate_stream(self) -> None:
        with contextlib.suppress(nats.errors.Error, TimeoutError):
            await self._ensure_stream()
            for subscription in self._subscriptions:
                await self._ensure_consumer(subscription.group)
            _LOG.warning("bus.nats_stream_recreated", stream=self.stream)

    async def _ensure_consumer(self, group: str) -> None:
        config = api.ConsumerConfig(
            name=group,
            durable_name=group,
            deliver_policy=api.DeliverPolicy.ALL,
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=self.options.ack_wait,
            max_deliver=self.options.max_deliver,
            filter_subject=f"{self.subject_prefix}.>",
        )
        try:
            await self._js.add_consumer(self.stream, config)
        except nats.js.errors.BadRequestError as exc:  # exists with settings it cannot change
            await self._js.consumer_info(self.stream, group)
            _LOG.warning("bus.nats_consumer_kept", stream=self.stream, group=group, reason=str(exc))

    def _forget(self, subscription: NatsSubscription) -> None:
        if subscription in self._subscriptions:
            self._subscriptions.remove(subscription)


class NatsSubscription:
    """One puller of a durable consumer: fetch a batch, run the handler, ack (or nak) it."""

    def __init__(
        self,
        bus: NatsEventBus,
        pull: JetStreamContext.PullSubscription,
        group: str,
        handler: Handler,
    ) -> None:
        self._bus, self._pull, self.group, self._handler = bus, pull, group, handler
        self._options = bus.options
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name=f"nats-consumer-{group}")

    async def close(self) -> None:
        """Stop fetching; a batch being handled is finished and acked first."""
        self._stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._bus._forget(self)
        with contextlib.suppress(nats.errors.Error, TimeoutError):
            await self._bus._nc.flush(timeout=max(1, round(self._options.publish_timeout)))
            await self._pull.unsubscribe()  # the server drops our waiting pull request

    async def _run(self) -> None:
        stopped = asyncio.create_task(self._stop.wait())
        failing = False
        try:
            while not self._stop.is_set():
                fetch = asyncio.create_task(self._fetch())
                await asyncio.wait({fetch, stopped}, return_when=asyncio.FIRST_COMPLETED)
                await _cancel(fetch)  # stopping: what it got regardless is still handled
                if fetch.cancelled():
                    return
                try:
                    messages = fetch.result()
                except (nats.errors.Error, TimeoutError) as exc:
                    if not isinstance(exc, TimeoutError):
                        failing = await self._fetch_failed(exc, failing)
                    continue
                failing = False
                await self._deliver(messages)
        finally:
            stopped.cancel()

    async def _fetch(self) -> list[Msg]:
        options = self._options
        messages = await self._pull.fetch(1, timeout=options.fetch_wait)
        if options.batch_size > 1:
            with contextlib.suppress(TimeoutError, nats.errors.Error):  # what came is enough
                messages += await self._pull.fetch(options.batch_size - 1, options.batch_wait)
        return messages

    async def _fetch_failed(self, exc: BaseException, failing: bool) -> bool:
        if not failing:
            _LOG.warning("bus.nats_fetch_failed", group=self.group, error=f"{exc!r}")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._options.retry_delay):
                await self._stop.wait()
        if self._bus.connected:  # the stream or the consumer may be gone: put them back
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                await self._bus._ensure_stream()
                await self._bus._ensure_consumer(self.group)
        return True

    async def _deliver(self, messages: list[Msg]) -> None:
        events: list[events_pb2.Event] = []
        kept: list[Msg] = []
        for msg in messages:
            try:
                events.append(events_pb2.Event.FromString(msg.data))
                kept.append(msg)
            except DecodeError:
                _LOG.error("bus.undecodable_event", group=self.group, subject=msg.subject)
                with contextlib.suppress(nats.errors.Error):
                    await msg.term()  # never deliverable: redelivering would loop forever
        if not events:
            return
        try:
            await self._handler(events)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            _LOG.warning(
                "bus.handler_failed",
                group=self.group,
                events=len(events),
                retry_in=self._options.retry_delay,
                error=f"{type(exc).__name__}: {exc}",
            )
            await _settle(kept, retry_delay=self._options.retry_delay)
            return
        await _settle(kept)


class _Link:
    """The connection's callbacks: one log line per outage, and ``up`` while connected."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.up = asyncio.Event()
        self.closing = False
        self._down_since: float | None = None
        self._last_error: BaseException | None = None

    async def open(self, servers: list[str], name: str, options: NatsBusOptions) -> Client:
        client = Client()
        # nats-py annotates these as int, but takes seconds as float
        timing: dict[str, Any] = {
            "connect_timeout": min(options.connect_timeout, 2.0),
            "reconnect_time_wait": options.reconnect_wait,
            "drain_timeout": options.publish_timeout,
        }
        try:
            async with asyncio.timeout(options.connect_timeout):
                await client.connect(
                    servers,
                    name=name,
                    max_reconnect_attempts=-1,
                    error_cb=self._on_error,
                    disconnected_cb=self._on_disconnected,
                    reconnected_cb=self._on_reconnected,
                    **timing,
                )
        except (OSError, nats.errors.Error, TimeoutError) as exc:
            self.closing = True
            with contextlib.suppress(Exception):
                await client.close()
            cause = self._last_error or exc
            raise NatsUnavailableError(
                f"cannot connect to NATS at {self.url} within {options.connect_timeout:g}s "
                f"({type(cause).__name__}: {cause}); {_HOW_TO_START}"
            ) from exc
        self.up.set()
        return client

    async def _on_error(self, exc: Exception) -> None:
        if not self.up.is_set() or self._down_since is not None:
            self._last_error = exc  # an attempt that failed: the outage is already logged
            return
        _LOG.warning("bus.nats_error", url=self.url, error=f"{type(exc).__name__}: {exc}")

    async def _on_disconnected(self) -> None:
        self.up.clear()
        if self.closing or self._down_since is not None:
            return
        self._down_since = time.monotonic()
        _LOG.warning("bus.nats_disconnected", url=self.url, action="reconnecting")

    async def _on_reconnected(self) -> None:
        self.up.set()
        if self._down_since is not None:
            outage = round(time.monotonic() - self._down_since, 3)
            self._down_since = None
            _LOG.info("bus.nats_reconnected", url=self.url, outage_seconds=outage)


_TYPES = frozenset(events_pb2.EventType.values())


async def _cancel(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` until it ends (at once when it has).

    Python 3.11's ``asyncio.wait_for`` (under nats-py's ``next_msg``) swallows a cancellation
    that arrives as its inner future completes, and the fetch then waits out its full timeout.
    """
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.05)


async def _settle(messages: list[Msg], *, retry_delay: float | None = None) -> None:
    """Ack ``messages`` (or nak them for redelivery after ``retry_delay``).

    Best effort: a message whose ack is lost is delivered again after ``ack_wait``.
    """
    with contextlib.suppress(nats.errors.Error):
        for msg in messages:
            await (msg.ack() if retry_delay is None else msg.nak(delay=retry_delay))


def _redact(url: str) -> str:
    """``url`` without its password or token (it goes into logs and error messages)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))
