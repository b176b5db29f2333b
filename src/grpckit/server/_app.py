"""App: the one lifecycle owner of a grpc.aio server.

Lifecycle: ``bind()`` (optional, to learn the port early) → ``start()`` (health and reflection
registered, start hooks, server started, every health entry SERVING) → ``stop()`` (health
NOT_SERVING, no new calls, in-flight calls drain for up to ``grace`` seconds and are then
cancelled, stop hooks in reverse order). ``serve()`` does all of it and handles SIGINT/SIGTERM.
"""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import socket
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any

import grpc
import structlog
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from grpckit.logs import flush_logs, get_logger
from grpckit.middleware import Interceptor
from grpckit.server._adapter import Adapter
from grpckit.server._config import ServerConfig
from grpckit.server._health import HealthCheck, HealthState
from grpckit.tls import server_credentials

__all__ = ["App"]

Hook = Callable[[], Awaitable[None]]
AddToServer = Callable[[Any, grpc.aio.Server], None]


class App:
    """Owns one grpc.aio server: services, interceptors, health, reflection, hooks, signals.

    Example::

        app = App(ServerConfig(port=50051), name="orders", interceptors=[recovery(), logging()])
        app.add_service(orders_pb2_grpc.add_OrderServiceServicer_to_server, OrderService(store),
                        orders_pb2.DESCRIPTOR.services_by_name["OrderService"])
        app.on_stop(store.close)
        await app.serve()          # returns after SIGTERM once drained

    In tests: ``async with App() as app: channel = grpckit.dial(app.address)``.
    """

    def __init__(
        self,
        config: ServerConfig = ServerConfig(),  # noqa: B008 - frozen, safe to share
        *,
        name: str = "grpckit",
        interceptors: Sequence[Interceptor] = (),
        logger: structlog.stdlib.BoundLogger | None = None,
        intercept_builtin: bool = False,
    ) -> None:
        self.config = config
        self.name = name
        self._interceptors = tuple(interceptors)
        self._log = logger if logger is not None else get_logger("grpckit.app", app=name)
        self._server: grpc.aio.Server | None = None
        self._port: int | None = None
        self._pending: list[tuple[AddToServer, object]] = []
        self._service_names: list[str] = []
        self._health = HealthState(self._log)
        self._start_hooks: list[Hook] = []
        self._stop_hooks: list[Hook] = []
        self._drain_hooks: list[Hook] = []
        self._adapter = Adapter(self._interceptors, include_builtin=intercept_builtin)
        self._started = False
        self._stop_task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._terminated = asyncio.Event()
        self._start_finished = asyncio.Event()
        self._starting = False

    # -- registration -------------------------------------------------------------------------

    def add_service(
        self, add_to_server: AddToServer, servicer: object, descriptor: ServiceDescriptor
    ) -> None:
        """Register ``servicer`` (through the interceptor chain), for reflection and health.

        Example: ``app.add_service(add_PingServiceServicer_to_server, PingServicer(), desc)``
        """
        if self._starting:
            raise RuntimeError("add_service() after start()")
        if self._server is not None:
            add_to_server(servicer, self._server)
        else:
            self._pending.append((add_to_server, servicer))
        self._service_names.append(descriptor.full_name)
        self._health.add_service(descriptor.full_name)

    def add_health_check(
        self, service: str, check: Callable[[], Awaitable[bool]], *, interval: float = 5.0
    ) -> None:
        """Make ``service`` (and ``""``) NOT_SERVING while ``check()`` fails.

        Example: ``app.add_health_check("shop.orders.v1.OrderService", db.ping, interval=2)``
        """
        if self._starting:
            raise RuntimeError("add_health_check() after start()")
        self._health.add_check(HealthCheck(service, check, interval))

    def on_start(self, hook: Hook) -> None:
        """Run ``hook`` during start(), before the server accepts calls."""
        self._start_hooks.append(hook)

    def on_drain(self, hook: Hook) -> None:
        """Run ``hook`` when stop() begins, right after health turns NOT_SERVING.

        For work that would otherwise hold the drain until the grace period ends, such as
        long-lived server streams that should finish now. Example:
        ``app.on_drain(metrics_streams.close_all)``
        """
        self._drain_hooks.append(hook)

    @property
    def in_flight(self) -> int:
        """Calls (outside health and reflection) running now."""
        return self._adapter.in_flight.count

    def on_stop(self, hook: Hook) -> None:
        """Run ``hook`` during stop(), after draining; hooks run in reverse order."""
        self._stop_hooks.append(hook)

    # -- addresses ----------------------------------------------------------------------------

    def bind(self) -> int:
        """Bind ``host:port`` and return the port (port 0 picks a free one). Idempotent.

        Inside a running event loop the grpc.aio server is created and bound now. Without one
        (e.g. before ``asyncio.run``) a free port is reserved and the server is created by
        ``start()`` in its loop: grpc.aio servers belong to the loop that creates them.
        """
        if self._port is not None:
            return self._port
        if not _loop_running():
            self._port = self.config.port or _free_port(self.config.host)
            return self._port
        return self._bind_server()

    def _bind_server(self) -> int:
        server = self._create_server()
        address = self.config.bind_address
        if self._port is not None:  # reserved before the loop ran
            address = dataclasses.replace(self.config, port=self._port).bind_address
        if self.config.tls is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, server_credentials(self.config.tls))
        if port == 0:
            raise OSError(f"could not bind {address}")
        self._port = port
        return port

    @property
    def port(self) -> int:
        """The bound port (binds if needed)."""
        return self.bind()

    @property
    def address(self) -> str:
        """``host:port`` to dial; wildcard hosts are reported as 127.0.0.1."""
        host = self.config.host
        if host in ("", "0.0.0.0", "::", "[::]"):
            host = "127.0.0.1"
        elif ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"{host}:{self.port}"

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind, register health and reflection, run start hooks, start, mark SERVING."""
        if self._started or self._starting:
            await self._start_finished.wait()
            return
        self._starting = True
        self._loop = asyncio.get_running_loop()
        try:
            await self._start()
        except BaseException:
            self._start_finished.set()
            self._log.exception("app.start_failed")
            await self.stop(grace=0)
            raise
        self._start_finished.set()

    async def wait_for_start(self) -> None:
        """Return once start() has finished (successfully or not)."""
        await self._start_finished.wait()

    async def _start(self) -> None:
        if self._server is None:
            self._bind_server()
        server = self._create_server()
        health_pb2_grpc.add_HealthServicer_to_server(self._health.servicer, server)
        reflection.enable_server_reflection(
            (*self._service_names, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        await self._health.prepare()
        for hook in self._start_hooks:
            await hook()
        await server.start()
        self._started = True
        await self._health.serve()
        self._log.info(
            "app.started",
            address=self.address,
            services=self._service_names,
            tls=_tls_mode(self.config),
        )

    async def stop(self, grace: float | None = None) -> None:
        """Drain and stop; safe to call many times and from many tasks."""
        if self._stop_task is None:
            self._stop_task = asyncio.ensure_future(self._stop(grace))
        await asyncio.shield(self._stop_task)

    async def _stop(self, grace: float | None) -> None:
        grace = self.config.grace_period if grace is None else grace
        if self._starting:
            await self._start_finished.wait()
        try:
            self._adapter.in_flight.draining = True  # refuse new top-level calls from now on
            await self._health.shutdown()
            if self._server is not None:
                await self._drain(grace)
            for hook in reversed(self._stop_hooks):
                try:
                    await hook()
                except Exception:
                    self._log.exception("app.stop_hook_failed", hook=repr(hook))
        finally:
            self._terminated.set()
            self._log.info("app.stopped")
            flush_logs()

    async def _drain(self, grace: float) -> None:
        """NOT_SERVING is set; let running calls finish, then stop.

        New top-level calls are refused at once (UNAVAILABLE ``DRAINING``); nested calls are
        still accepted, because running calls may call back into this server (``shop up``
        serves every service on one port). Whatever still runs when ``grace`` is over is
        cancelled by ``server.stop``.
        """
        assert self._server is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        self._log.info("app.stopping", grace=grace, in_flight=self.in_flight)
        for hook in self._drain_hooks:
            try:
                await hook()
            except Exception:
                self._log.exception("app.drain_hook_failed", hook=repr(hook))
        try:
            async with asyncio.timeout_at(deadline):
                await self._adapter.in_flight.wait_idle()
        except TimeoutError:
            self._log.warning("app.drain_timeout", cancelled=self.in_flight)
        await self._server.stop(max(0.0, deadline - loop.time()))

    async def wait_for_termination(self) -> None:
        """Return once stop() has finished."""
        await self._terminated.wait()

    def request_stop(self) -> None:
        """Ask the running app to stop; safe from signal handlers and other threads."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        loop.call_soon_threadsafe(self._schedule_stop)

    def _schedule_stop(self) -> None:
        if self._stop_task is None:
            self._stop_task = asyncio.ensure_future(self._stop(None))

    async def serve(self) -> None:
        """start(), stop on SIGINT/SIGTERM, return normally once drained."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        installed: list[signal.Signals] = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, self.request_stop)
                installed.append(sig)
            except (NotImplementedError, RuntimeError):  # not the main thread / platform
                pass
        try:
            await self.start()
            await self.wait_for_termination()
            if self._stop_task is not None:
                await self._stop_task
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)

    async def __aenter__(self) -> App:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- internals ----------------------------------------------------------------------------

    def _create_server(self) -> grpc.aio.Server:
        """The grpc.aio server, created (in the running loop) on first use."""
        if self._server is not None:
            return self._server
        server = grpc.aio.server(
            interceptors=[self._adapter],
            options=self.config.grpc_options(),
            maximum_concurrent_rpcs=self.config.max_concurrent_rpcs,
            compression=self.config.compression,
        )
        for add_to_server, servicer in self._pending:
            add_to_server(servicer, server)
        self._pending.clear()
        self._server = server
        return server


def _tls_mode(config: ServerConfig) -> str:
    if config.tls is None:
        return "off"
    return "mtls" if config.tls.require_client_cert else "tls"


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _free_port(host: str) -> int:
    """A port free right now on ``host`` (the OS picks it); grpc binds it in start()."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host.strip("[]"), 0))
        port: int = probe.getsockname()[1]
        return port
