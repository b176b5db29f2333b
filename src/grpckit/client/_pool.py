"""ChannelPool: one ``grpc.aio.Channel`` over several channels, calls spread round-robin.

One HTTP/2 connection carries at most ``MAX_CONCURRENT_STREAMS`` calls at a time (often 100)
over one socket; a busy client opens a few. Each pooled channel must own its
connections: :func:`grpckit.client.connect` builds them with ``grpc.use_local_subchannel_pool``
and a distinct ``grpckit.channel_pool_index`` argument (grpc would otherwise share one
subchannel, one connection, between channels with equal arguments).

Stubs made once keep working: their multicallables pick a channel per call.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from typing import Any

import grpc

from grpckit.client._proxy import ChannelProxy

__all__ = ["ChannelPool"]

_READINESS = (
    grpc.ChannelConnectivity.READY,
    grpc.ChannelConnectivity.CONNECTING,
    grpc.ChannelConnectivity.IDLE,
    grpc.ChannelConnectivity.TRANSIENT_FAILURE,
    grpc.ChannelConnectivity.SHUTDOWN,
)


class _Method:
    """A multicallable over one multicallable per pooled channel, chosen per call."""

    __slots__ = ("_callables", "_pool")

    def __init__(self, pool: ChannelPool, kind: str, args: Any, kwargs: Any) -> None:
        self._pool = pool
        self._callables = [getattr(channel, kind)(*args, **kwargs) for channel in pool.channels]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._callables[self._pool._pick()](*args, **kwargs)


class ChannelPool(ChannelProxy):
    """A ``grpc.aio.Channel`` spreading calls over ``channels`` (round-robin, per call).

    Usually built by :func:`grpckit.client.connect` with ``pool_size > 1``. Closing the pool
    closes every channel. Its connectivity state is the best of its channels' (READY if any is).

    Example::

        pool = ChannelPool([dial(target, options=[("grpc.use_local_subchannel_pool", 1),
                                                  ("grpckit.channel_pool_index", i)])
                            for i in range(4)])
        stub = catalog_pb2_grpc.CatalogServiceStub(pool)
    """

    def __init__(self, channels: Sequence[grpc.aio.Channel]) -> None:
        if not channels:
            raise ValueError("a channel pool needs at least one channel")
        self._channels = tuple(channels)
        self._counter = itertools.count()

    @property
    def channels(self) -> tuple[grpc.aio.Channel, ...]:
        """The pooled channels."""
        return self._channels

    def _pick(self) -> int:
        return next(self._counter) % len(self._channels)

    # -- grpc.aio.Channel ------------------------------------------------------------------

    def _method(self, kind: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return _Method(self, kind, args, kwargs)

    async def close(self, grace: float | None = None) -> None:
        await asyncio.gather(*(channel.close(grace) for channel in self._channels))

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        states = {channel.get_state(try_to_connect) for channel in self._channels}
        return next(state for state in _READINESS if state in states)

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        while self.get_state() == last_observed_state:
            waits = [
                asyncio.ensure_future(channel.wait_for_state_change(channel.get_state()))
                for channel in self._channels
            ]
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for wait in waits:
                    wait.cancel()

    async def channel_ready(self) -> None:
        await asyncio.gather(*(channel.channel_ready() for channel in self._channels))
