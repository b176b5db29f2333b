"""Start ``shop up`` as a real process on free ports and follow its JSON log."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

READY_TIMEOUT = 60.0
#: Every shop the tests start has this first admin (see tests/e2e/clients.py).
DEFAULT_ENV = {"SHOP_ADMIN_EMAIL": "admin@shop.test", "SHOP_ADMIN_PASSWORD": "e2e-admin-password"}


@dataclass
class ShopProcess:
    """One ``shop up`` process. Lines of its log are parsed as JSON and kept."""

    data_dir: Path
    extra_args: Sequence[str] = ()
    env: dict[str, str] = field(default_factory=dict)
    #: Keep parsing the log after "ready" (benchmarks turn it off: it costs client CPU).
    follow: bool = True
    #: The subcommand and its port flags; ``serve`` runs one service.
    command: Sequence[str] = ("up", "--grpc-port", "0", "--http-port", "0")
    proc: subprocess.Popen[bytes] | None = None
    records: list[dict[str, Any]] = field(default_factory=list)
    grpc_address: str = ""
    http_port: int = 0
    _lines: queue.Queue[dict[str, Any] | None] = field(default_factory=queue.Queue)
    _cond: threading.Condition = field(default_factory=threading.Condition)

    def start(self) -> ShopProcess:
        args = [
            sys.executable, "-m", "shop.cli", *self.command,
            "--data-dir", str(self.data_dir), *self.extra_args,
        ]  # fmt: skip
        self.records = []
        self.proc = subprocess.Popen(
            args,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env={**os.environ, **DEFAULT_ENV, **self.env},
        )
        threading.Thread(target=self._pump, args=(self.proc,), daemon=True).start()
        try:
            ready = self.wait_for(lambda r: r.get("event") == "ready", READY_TIMEOUT)
        except BaseException:
            self.proc.kill()
            self.proc.wait()
            raise
        port = ready["grpc_address"].rpartition(":")[2]
        self.grpc_address = f"127.0.0.1:{port}"
        if ready.get("http_address"):
            self.http_port = int(ready["http_address"].rpartition(":")[2])
        return self

    def _pump(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            if not self.follow and self.grpc_address:
                continue  # drain the pipe only
            line = raw.decode("utf-8", "replace").strip()
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = {"event": "non-json", "line": line}
            with self._cond:
                self.records.append(record)
                self._cond.notify_all()
        with self._cond:
            self.records.append({"event": "process-exited"})
            self._cond.notify_all()

    def wait_for(
        self, pred: Callable[[dict[str, Any]], bool], timeout: float = 20.0
    ) -> dict[str, Any]:
        """Block until a log record matches (or fail with the tail of the log)."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for record in self.records[seen:]:
                    if pred(record):
                        return record
                    if record.get("event") == "process-exited" and not pred(record):
                        raise AssertionError(f"shop exited early; log tail:\n{self.tail()}")
                seen = len(self.records)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"no matching log record in {timeout}s; tail:\n{self.tail()}"
                    )
                self._cond.wait(left)

    def tail(self, n: int = 30) -> str:
        return "\n".join(json.dumps(r) for r in self.records[-n:])

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.signal(signal.SIGTERM)
        try:
            return self.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
