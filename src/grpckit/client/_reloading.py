"""A client channel that re-dials when its TLS files are replaced on disk.

grpc channels read their credentials once: after a certificate rotation an open channel keeps
presenting (and trusting) the old files on every reconnect. :class:`ReloadingChannel` looks at
the files' fingerprint (one ``stat`` per file, at most every ``check_interval`` seconds) when a
call starts; when they changed it opens a new channel for new calls and closes the old one
after ``retire_grace`` seconds, so calls in flight finish on it. Stubs made once at start keep
working: their methods resolve the current channel per call.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import grpc

from grpckit.client._proxy import ChannelProxy
from grpckit.logs import get_logger
from grpckit.tls import ClientTls

__all__ = ["ReloadingChannel"]

_LOG = get_logger("grpckit.client")


class _Method:
    """A multicallable that binds to the channel current when each call starts."""

    __slots__ = ("_args", "_bound", "_kind", "_kwargs", "_owner")

    def __init__(
        self, owner: ReloadingChannel, kind: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        self._owner, self._kind, self._args, self._kwargs = owner, kind, args, kwargs
        self._bound: tuple[int, Any] | None = None

    def _target(self) -> Any:
        generation, channel = self._owner._current()
        bound = self._bound
        if bound is None or bound[0] != generation:
            bound = (generation, getattr(channel, self._kind)(*self._args, **self._kwargs))
            self._bound = bound
        return bound[1]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._target()(*args, **kwargs)


class ReloadingChannel(ChannelProxy):
    """A ``grpc.aio.Channel`` over ``make()``, re-made when ``tls``'s files change.

    Example::

        tls = ClientTls.from_dir(Path("certs"))
        channel = ReloadingChannel(lambda: dial(target, tls=tls), tls)
        stub = orders_pb2_grpc.OrderServiceStub(channel)   # survives certificate rotation
    """

    def __init__(
        self,
        make: Callable[[], grpc.aio.Channel],
        tls: ClientTls,
        *,
        check_interval: float = 2.0,
        retire_grace: float = 10.0,
    ) -> None:
        self._make, self._tls = make, tls
        self._check_interval, self._retire_grace = check_interval, retire_grace
        self._signature = tls.files_signature()
        self._checked = time.monotonic()
        self._channel = make()
        self._generation = 0
        self._retiring: dict[asyncio.Task[None], grpc.aio.Channel] = {}

    @property
    def generation(self) -> int:
        """How many times the channel was re-made (0 until the first rotation)."""
        return self._generation

    def _current(self) -> tuple[int, grpc.aio.Channel]:
        now = time.monotonic()
        if now - self._checked >= self._check_interval:
            self._checked = now
            signature = self._tls.files_signature()
            if signature and signature != self._signature:
                self._rotate(signature)
        return self._generation, self._channel

    def _rotate(self, signature: tuple[tuple[int, int, int, int], ...]) -> None:
        try:
            fresh = self._make()
        except (OSError, ValueError) as exc:  # half-written files: keep the old channel
            _LOG.warning("tls.client_reload_skipped", error=str(exc))
            return
        old, self._channel = self._channel, fresh
        self._signature = signature
        self._generation += 1
        _LOG.info("tls.client_reloaded", generation=self._generation)
        task = asyncio.get_running_loop().create_task(old.close(self._retire_grace))
        self._retiring[task] = old
        task.add_done_callback(lambda done: self._retiring.pop(done, None))

    # -- grpc.aio.Channel ------------------------------------------------------------------

    def _method(self, kind: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return _Method(self, kind, args, kwargs)

    async def close(self, grace: float | None = None) -> None:
        await self._channel.close(grace)
        retiring, self._retiring = self._retiring, {}
        for task, old in retiring.items():
            task.cancel()
            await old.close(None)

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return self._current()[1].get_state(try_to_connect)

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        await self._current()[1].wait_for_state_change(last_observed_state)

    async def channel_ready(self) -> None:
        await self._current()[1].channel_ready()
