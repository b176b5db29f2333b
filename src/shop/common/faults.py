"""Run-time fault injection for tests and drills: knobs read from a JSON file.

``shop up --fault-file PATH`` (every process of a distributed shop gets the same path) makes the
simulated payment provider read its knobs from PATH while running, so a test can slow payments
down or break them and heal them again without restarting anything::

    {"payment_latency_ms": 8000, "payment_failure_rate": 0.0}

Missing keys (or a missing file) fall back to the static ``--payment-*`` flags. The file is
looked at no more than every ``interval`` seconds (one ``stat``); a file that does not parse
keeps the previous values. Not for production: the flag says "testing" in its help.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from grpckit import get_logger

__all__ = ["FaultFile"]

_LOG = get_logger("shop.faults")


class FaultFile:
    """The current knobs of a fault file; ``get(name, default)`` is cheap enough per call.

    Example: ``FaultFile(path).get("payment_latency_ms", 0)``
    """

    def __init__(
        self,
        path: Path,
        *,
        interval: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._path, self._interval, self._clock = path, interval, clock
        self._checked = float("-inf")
        self._signature: tuple[int, int] | None = None
        self._values: Mapping[str, Any] = {}

    def get(self, name: str, default: float) -> float:
        """The knob ``name`` (a number), or ``default`` when the file does not set it."""
        self._refresh()
        value = self._values.get(name, default)
        return float(value) if isinstance(value, int | float) else default

    def _refresh(self) -> None:
        now = self._clock()
        if now - self._checked < self._interval:
            return
        self._checked = now
        try:
            stat = os.stat(self._path)
        except FileNotFoundError:
            self._signature, self._values = None, {}
            return
        signature = (stat.st_mtime_ns, stat.st_size)
        if signature == self._signature:
            return
        try:
            values = json.loads(self._path.read_text())
        except (OSError, ValueError) as exc:
            _LOG.warning("faults.unreadable", path=str(self._path), error=str(exc))
            return
        if not isinstance(values, dict):
            _LOG.warning("faults.unreadable", path=str(self._path), error="not a JSON object")
            return
        self._signature, self._values = signature, values
        _LOG.warning("faults.applied", path=str(self._path), **values)
