"""A ``grpc.aio.Channel`` that stands for other channels (a pool, a re-dialled channel).

Generated stubs call ``channel.unary_unary(...)`` (and the three other kinds) once, when the
stub is made; a proxy answers with its own multicallable, which picks the real channel per
call. Subclasses say how, in :meth:`ChannelProxy._method`, plus the connectivity methods.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any, Self

import grpc

__all__ = ["ChannelProxy"]


class ChannelProxy(grpc.aio.Channel):
    """The stub-facing half of a proxy channel: the four kinds and ``async with``."""

    def _method(self, kind: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """A multicallable of ``kind`` (``"unary_unary"`` ...) made with the stub's arguments."""
        raise NotImplementedError

    def unary_unary(self, *args: Any, **kwargs: Any) -> Any:
        return self._method("unary_unary", args, kwargs)

    def unary_stream(self, *args: Any, **kwargs: Any) -> Any:
        return self._method("unary_stream", args, kwargs)

    def stream_unary(self, *args: Any, **kwargs: Any) -> Any:
        return self._method("stream_unary", args, kwargs)

    def stream_stream(self, *args: Any, **kwargs: Any) -> Any:
        return self._method("stream_stream", args, kwargs)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close(None)
