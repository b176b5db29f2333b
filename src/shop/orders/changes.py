"""In-process change notification for WatchOrder.

The store calls ``notify(order_id)`` after a transition has committed; each watcher of that order
holds an ``asyncio.Event`` from ``watch(order_id)`` and re-reads the order when it is set.
Changes made by another process are not signalled here: watchers also re-read periodically.

>>> changes = ChangeNotifier()
>>> with changes.watch("order-1") as changed:
...     changes.notify("order-1")
...     changed.is_set()
True
>>> changes.watcher_count()
0
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager


class ChangeNotifier:
    """Per-order waiters, each an ``asyncio.Event`` set when the order changes."""

    def __init__(self) -> None:
        self._waiters: dict[str, set[asyncio.Event]] = {}

    @contextmanager
    def watch(self, order_id: str) -> Iterator[asyncio.Event]:
        """Register a waiter for ``order_id`` for the duration of the ``with`` block."""
        event = asyncio.Event()
        self._waiters.setdefault(order_id, set()).add(event)
        try:
            yield event
        finally:
            self._forget(order_id, event)

    def notify(self, order_id: str) -> None:
        """Wake every waiter of ``order_id``."""
        for event in self._waiters.get(order_id, ()):
            event.set()

    def watcher_count(self, order_id: str | None = None) -> int:
        """How many waiters are registered (for one order, or in all)."""
        if order_id is not None:
            return len(self._waiters.get(order_id, ()))
        return sum(len(waiters) for waiters in self._waiters.values())

    def _forget(self, order_id: str, event: asyncio.Event) -> None:
        waiters = self._waiters.get(order_id)
        if waiters is None:
            return
        waiters.discard(event)
        if not waiters:
            del self._waiters[order_id]
