"""The process supervisor behind ``shop up --distributed`` and ``shop serve --workers N``.

Each service process is a fresh interpreter running ``shop serve <service>`` (so servers,
channels and event loops are created after the fork, as grpc requires). The supervisor

* picks every process's port up front, so a restarted process comes back at the same address
  its peers were given;
* starts services in dependency order (users first: every service verifies tokens with its
  keys; the gateway last), replicas of one service in parallel;
* forwards the children's JSON log lines unchanged (their ``ready`` lines become
  ``process.ready``) and logs one ``ready`` line listing every process: service, replica, pid,
  address;
* restarts a process that dies, with a backoff (0.5 s doubling to 10 s, reset after 30 s up);
* on SIGHUP replaces every process, one at a time (a rolling restart: each drains before it
  goes, and the next is touched only once its replacement is ready);
* on SIGINT/SIGTERM forwards SIGTERM to every child (the gateway first, so no new saga starts
  while its peers drain), waits for them, and exits 0.

Replicas of one service get their own ports, and peers reach them with a static address list
(``ipv4:127.0.0.1:p1,127.0.0.1:p2``) balanced round robin by the client; workers
(``--workers``) share one port with SO_REUSEPORT and the kernel spreads connections.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from grpckit import get_logger

__all__ = ["DEPENDENCIES", "ProcessSpec", "Supervisor", "parse_replicas", "plan"]

_LOG = get_logger("shop.supervisor")

#: Who each service calls (users is implied for all: tokens are verified with its keys).
DEPENDENCIES: Mapping[str, tuple[str, ...]] = {
    "users": (),
    "catalog": ("users",),
    "payments": ("users",),
    "analytics": ("users",),
    "orders": ("users", "catalog"),
    "gateway": ("users", "catalog", "orders", "payments"),
}
START_ORDER = ("users", "catalog", "payments", "analytics", "orders", "gateway")
READY_TIMEOUT = 60.0
BACKOFF_MAX = 10.0
STABLE_AFTER = 30.0


def parse_replicas(text: str, services: Sequence[str] = START_ORDER) -> dict[str, int]:
    """``"orders=2,payments=2"`` → ``{"orders": 2, "payments": 2}`` (others 1).

    Example: ``parse_replicas("orders=2")["users"] == 1``
    """
    counts = dict.fromkeys(services, 1)
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep or name not in counts:
            raise ValueError(
                f"--replicas: expected SERVICE=N with SERVICE one of {', '.join(services)}, "
                f"got {part!r}"
            )
        try:
            count = int(value)
        except ValueError:
            raise ValueError(f"--replicas: {part!r}: N must be a whole number") from None
        if not 1 <= count <= 16:
            raise ValueError(f"--replicas: {part!r}: N must be between 1 and 16")
        counts[name] = count
    return counts


@dataclass
class ProcessSpec:
    """One supervised process: ``shop serve <service>`` on ``port``."""

    service: str
    replica: int
    port: int
    http_port: int | None
    args: list[str]
    reuse_port: bool = False
    proc: asyncio.subprocess.Process | None = None
    address: str = ""
    http_address: str | None = None
    restarts: int = 0
    #: Set while a rolling restart replaces this process: restart at once, not a crash.
    rolling: bool = False
    started_at: float = 0.0
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def name(self) -> str:
        return f"{self.service}#{self.replica}"


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (bind 0, read it, release it)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def plan(
    replicas: Mapping[str, int],
    *,
    host: str,
    gateway_port: int,
    http_port: int | None,
    passthrough: Sequence[str],
) -> list[ProcessSpec]:
    """Every process of a distributed shop, in start order, with ports and peer flags."""
    specs: list[ProcessSpec] = []
    ports: dict[str, list[int]] = {}
    for service in START_ORDER:
        count = replicas.get(service, 1)
        if service == "gateway" and gateway_port:
            ports[service] = [gateway_port] * count  # one public port, SO_REUSEPORT
        else:
            ports[service] = [free_port(host) for _ in range(count)]
    for service in START_ORDER:
        peer_flags: list[str] = []
        for peer in DEPENDENCIES[service]:
            targets = ",".join(f"127.0.0.1:{p}" for p in dict.fromkeys(ports[peer]))
            peer_flags += [f"--{peer}-addr", targets if "," not in targets else f"ipv4:{targets}"]
        shared = service == "gateway" and len(set(ports[service])) == 1 and replicas[service] > 1
        for replica, port in enumerate(ports[service]):
            gateway_http = http_port if service == "gateway" and replica == 0 else None
            specs.append(
                ProcessSpec(
                    service=service,
                    replica=replica,
                    port=port,
                    http_port=gateway_http if gateway_http is not None else 0,
                    args=[*peer_flags, *passthrough],
                    reuse_port=shared,
                )
            )
    return specs


def workers_plan(
    service: str, count: int, *, port: int, http_port: int | None, args: Sequence[str]
) -> list[ProcessSpec]:
    """``count`` processes of one service sharing ``port`` (SO_REUSEPORT)."""
    return [
        ProcessSpec(
            service=service,
            replica=n,
            port=port,
            http_port=(http_port if n == 0 else None),
            args=list(args),
            reuse_port=True,
        )
        for n in range(count)
    ]


class Supervisor:
    """Starts, watches and stops a set of ``shop serve`` processes (see the module docstring)."""

    def __init__(self, specs: Sequence[ProcessSpec], *, host: str, grace: float) -> None:
        self.specs = list(specs)
        self.host = host
        self.grace = grace
        self._stopping = asyncio.Event()
        self._watchers: list[asyncio.Task[None]] = []

    def _argv(self, spec: ProcessSpec) -> list[str]:
        argv = [
            sys.executable, "-m", "shop.cli", "serve", spec.service,
            "--host", self.host, "--port", str(spec.port),
        ]  # fmt: skip
        if spec.http_port is not None:
            argv += ["--http-port", str(spec.http_port)]
        if spec.reuse_port:
            argv.append("--reuse-port")
        return [*argv, *spec.args]

    async def _spawn(self, spec: ProcessSpec) -> None:
        spec.ready.clear()
        spec.proc = await asyncio.create_subprocess_exec(
            *self._argv(spec),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "SHOP_PROCESS": spec.name},
        )
        spec.started_at = time.monotonic()
        self._watchers.append(asyncio.create_task(self._pump(spec, spec.proc)))

    async def _pump(self, spec: ProcessSpec, proc: asyncio.subprocess.Process) -> None:
        """Forward the child's log; note its ready line; restart it when it dies."""
        assert proc.stderr is not None
        out = sys.stderr.buffer
        async for line in proc.stderr:
            if b'"ready"' in line:
                try:
                    record = json.loads(line)
                except ValueError:
                    record = {}
                if record.get("event") == "ready":
                    spec.address = str(record.get("grpc_address", ""))
                    spec.http_address = record.get("http_address")
                    record.update(event="process.ready", process=spec.name, pid=proc.pid)
                    line = (json.dumps(record) + "\n").encode()
                    spec.ready.set()
            out.write(line)
            out.flush()
        code = await proc.wait()
        if self._stopping.is_set():
            return
        if spec.rolling:
            spec.rolling = False
            await self._spawn(spec)
            return
        ran = time.monotonic() - spec.started_at
        spec.restarts = 0 if ran > STABLE_AFTER else spec.restarts + 1
        delay = min(0.5 * 2 ** max(spec.restarts - 1, 0), BACKOFF_MAX)
        _LOG.warning(
            "process.exited",
            process=spec.name,
            pid=proc.pid,
            exit_code=code,
            restart_in_s=round(delay, 2),
        )
        try:
            await asyncio.wait_for(self._stopping.wait(), delay)
            return
        except TimeoutError:
            pass
        await self._spawn(spec)
        _LOG.info("process.restarted", process=spec.name, pid=spec.proc.pid if spec.proc else None)

    async def start(self) -> None:
        """Start every process in dependency order; return when all are ready."""
        for service in dict.fromkeys(s.service for s in self.specs):
            group = [s for s in self.specs if s.service == service]
            for spec in group:
                await self._spawn(spec)
            try:
                await asyncio.wait_for(
                    asyncio.gather(*(s.ready.wait() for s in group)), READY_TIMEOUT
                )
            except TimeoutError:
                raise RuntimeError(
                    f"{service} did not become ready within {READY_TIMEOUT:.0f} s; "
                    "its log lines above say why"
                ) from None

    async def rolling_restart(self) -> None:
        """Replace every process, one at a time in start order: SIGTERM (it drains: in-flight
        calls finish, peers stop routing to it), start it again, wait until it is ready."""
        _LOG.info("rolling_restart.started", processes=len(self.specs))
        for spec in self.specs:
            if self._stopping.is_set():
                return
            proc = spec.proc
            if proc is None or proc.returncode is not None:
                continue
            spec.rolling = True
            spec.ready.clear()
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(spec.ready.wait(), self.grace + READY_TIMEOUT)
            except TimeoutError:
                _LOG.error("rolling_restart.stuck", process=spec.name)
                return
            _LOG.info(
                "rolling_restart.replaced", process=spec.name, pid=spec.proc and spec.proc.pid
            )
        _LOG.info("rolling_restart.finished", processes=len(self.specs))

    def processes(self) -> list[dict[str, object]]:
        """Every process: service, replica, pid, addresses, restarts (for the ready line)."""
        return [
            {
                "service": s.service,
                "replica": s.replica,
                "pid": s.proc.pid if s.proc else None,
                "address": s.address,
                "http_address": s.http_address,
                "restarts": s.restarts,
            }
            for s in self.specs
        ]

    async def stop(self) -> None:
        """SIGTERM every child, the gateway first; wait up to the grace period (+5 s)."""
        self._stopping.set()
        order = sorted(self.specs, key=lambda s: -START_ORDER.index(s.service))
        for spec in order:
            if spec.proc is not None and spec.proc.returncode is None:
                spec.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.grace + 5.0
        for spec in order:
            if spec.proc is None:
                continue
            try:
                await asyncio.wait_for(spec.proc.wait(), max(deadline - time.monotonic(), 0.1))
            except TimeoutError:
                _LOG.warning("process.killed", process=spec.name, pid=spec.proc.pid)
                spec.proc.kill()
                await spec.proc.wait()
        for task in self._watchers:
            task.cancel()

    async def run(self, ready_fields: Mapping[str, object]) -> int:
        """Start, log ``ready``, supervise until SIGINT/SIGTERM, stop; the exit code."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        rolling: set[asyncio.Task[None]] = set()

        def roll() -> None:
            if not rolling:  # one rolling restart at a time
                task = asyncio.ensure_future(self.rolling_restart())
                rolling.add(task)
                task.add_done_callback(rolling.discard)

        loop.add_signal_handler(signal.SIGHUP, roll)
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        fields = dict(ready_fields)
        if fields.get("http_address") is None:  # the front process's (gateway, worker 0)
            front = next(s for s in self.specs if s.service == self.specs[-1].service)
            fields["http_address"] = front.http_address
        _LOG.info("ready", **fields, processes=self.processes())
        await stop.wait()
        _LOG.info("stopping", processes=len(self.specs))
        await self.stop()
        _LOG.info("stopped")
        return 0
