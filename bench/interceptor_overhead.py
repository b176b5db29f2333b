"""Throughput of bare grpc.aio vs a grpckit App with the full default chain, in the same run.

Two tables:

1. **Over sockets.** The server runs in its own process pinned to core 0 (``sched_setaffinity``),
   the load generator (grpc.aio client, one channel) in this process pinned to core 1. Configs,
   measured in interleaved rounds (median reported):

   * ``bare``  — ``grpc.aio.server`` with the Ping servicer, no interceptor;
   * ``chain`` — ``App`` with ``default_interceptors()``: recovery → tracing (SDK provider,
     BatchSpanProcessor, an exporter that drops spans) → logging (JSON lines, stderr sent to
     /dev/null) → metrics (a private Prometheus registry) → deadlines (30 s default: the client
     sends no deadline, so every call is bounded);
   * ``adapter`` — ``App`` with an empty chain (the handler-wrapping adapter alone);
   * ``no-tracing`` — the default chain without tracing;
   * ``no-tr-trl`` — the same, the request id echoed in trailing instead of initial metadata
     (grpc.aio sends explicit initial metadata as one more batch per call).

   Besides throughput, the server process's CPU time per call (``psutil``) is printed: on a
   shared, busy machine it is the steadier figure (the server core's capacity is 1 / CPU per
   call), and its ratio is what the throughput ratio would be on an idle machine.

   Workloads: small unary Ping (``CONCURRENCY`` callers) and server streaming
   (``STREAMS`` concurrent PingServerStream calls of ``STREAM_LEN`` small messages).

2. **Per interceptor, no sockets.** The adapter-wrapped Ping handler is awaited with a fake
   ServicerContext: the pure-Python CPU cost per call of each interceptor alone.

Run: ``.venv/bin/python bench/interceptor_overhead.py [seconds_per_round] [rounds]``
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any, NamedTuple

import grpc
import psutil

from grpckit import App, Interceptor, ServerConfig, configure_logging
from grpckit.defaults import default_interceptors
from grpckit.interceptors import deadlines, logging, recovery
from grpckit.interceptors._logging import EchoRequestId
from grpckit.server import Adapter
from grpckit.testing import FakeServicerContext, PingServicer, ping_service
from grpckit.testing.api.v1 import ping_pb2, ping_pb2_grpc

CONCURRENCY = 8
STREAMS = 4
STREAM_LEN = 1000
SERVER_CORE, CLIENT_CORE = 0, 1


# -- the chain under test ----------------------------------------------------------------------


def full_chain(traced: bool = True, echo: EchoRequestId = "initial") -> list[Interceptor]:
    """default_interceptors() with tracing on (spans dropped) and a private registry."""
    provider: Any = None
    registry: Any = None
    try:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            SpanExporter,
            SpanExportResult,
        )

        class Drop(SpanExporter):
            def export(self, spans: Any) -> SpanExportResult:
                return SpanExportResult.SUCCESS

        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(Drop()))
    except ImportError:
        print("(opentelemetry-sdk missing: no tracing in the chain)", file=sys.stderr)
    try:
        import prometheus_client

        registry = prometheus_client.CollectorRegistry()
    except ImportError:
        print("(prometheus-client missing: no metrics in the chain)", file=sys.stderr)
    if not traced:
        return default_interceptors(tracing=False, registry=registry, echo_request_id=echo)
    return default_interceptors(tracer_provider=provider, registry=registry, echo_request_id=echo)


def log_to_devnull() -> None:
    """Real JSON rendering and writes, to /dev/null."""
    devnull = open(os.devnull, "w")  # noqa: SIM115 - lives for the whole run
    real_stderr, sys.stderr = sys.stderr, devnull
    configure_logging("info")
    sys.stderr = real_stderr


# -- server process ----------------------------------------------------------------------------


def pin(core: int) -> None:
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > core:
        os.sched_setaffinity(0, {core})


def server_main(config: str, conn: Connection) -> None:
    """Child process: serve ``config`` on a free port, send the port, stop when told."""
    pin(SERVER_CORE)
    log_to_devnull()
    asyncio.run(_serve(config, conn))


async def _serve(config: str, conn: Connection) -> None:
    if config == "bare":
        server = grpc.aio.server()
        ping_pb2_grpc.add_PingServiceServicer_to_server(PingServicer(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        stop: Callable[[], Any] = lambda: server.stop(None)  # noqa: E731
    else:
        interceptors = {
            "adapter": [],
            "no-tracing": full_chain(traced=False),
            "no-tr-trl": full_chain(traced=False, echo="trailing"),
        }.get(config)
        chain = full_chain() if interceptors is None else interceptors
        app = App(ServerConfig(grace_period=0), interceptors=chain)
        service = ping_service()
        app.add_service(service.add_to_server, service.servicer, service.descriptor)
        await app.start()
        port, stop = app.port, app.stop
    conn.send(port)
    await asyncio.get_running_loop().run_in_executor(None, conn.recv)
    await stop()


class Server:
    """A server process for one config."""

    def __init__(self, config: str) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(target=server_main, args=(config, child), daemon=True)

    def __enter__(self) -> tuple[str, psutil.Process]:
        self._process.start()
        address = f"127.0.0.1:{self._conn.recv()}"
        return address, psutil.Process(self._process.pid)

    def __exit__(self, *exc: object) -> None:
        self._conn.send("stop")
        self._process.join(10)


# -- load generator ----------------------------------------------------------------------------


class Sample:
    """Wall time and server CPU time around a timed section; ``done(n)`` makes the rates."""

    def __init__(self, server: psutil.Process) -> None:
        self._server = server
        self.wall = self.cpu = 0.0
        self.rate = self.cpu_per_item = 0.0

    def __enter__(self) -> Sample:
        self.wall, self.cpu = time.perf_counter(), _cpu(self._server)
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = _cpu(self._server) - self.cpu

    def done(self, items: int) -> Sample:
        self.rate, self.cpu_per_item = items / self.wall, self.cpu / max(items, 1)
        return self


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


async def unary_rate(address: str, seconds: float, server: psutil.Process) -> Sample:
    """Unary calls per second, CONCURRENCY callers on one channel."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = ping_pb2_grpc.PingServiceStub(channel)
        request = ping_pb2.PingRequest(message="x")
        for _ in range(200):  # warm up (connection, caches)
            await stub.Ping(request)
        done = 0
        end = time.perf_counter() + seconds

        async def caller() -> None:
            nonlocal done
            while time.perf_counter() < end:
                await stub.Ping(request)
                done += 1

        with Sample(server) as sample:
            await asyncio.gather(*(caller() for _ in range(CONCURRENCY)))
        return sample.done(done)


async def stream_rate(address: str, seconds: float, server: psutil.Process) -> Sample:
    """Server-streamed messages per second, STREAMS concurrent streams of STREAM_LEN."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = ping_pb2_grpc.PingServiceStub(channel)
        request = ping_pb2.PingServerStreamRequest(message="x", count=STREAM_LEN)
        async for _ in stub.PingServerStream(request):  # warm up
            pass
        received = 0
        end = time.perf_counter() + seconds

        async def reader() -> None:
            nonlocal received
            while time.perf_counter() < end:
                async for _ in stub.PingServerStream(request):
                    received += 1

        with Sample(server) as sample:
            await asyncio.gather(*(reader() for _ in range(STREAMS)))
        return sample.done(received)


CONFIGS = ("bare", "chain", "adapter", "no-tracing", "no-tr-trl")


def over_sockets(seconds: float, rounds: int) -> None:
    workloads = {"unary": unary_rate, "stream": stream_rate}
    samples: dict[tuple[str, str], list[Sample]] = {}
    for _ in range(rounds):
        for config in CONFIGS:
            with Server(config) as (address, process):
                for workload, measure in workloads.items():
                    sample = asyncio.run(measure(address, seconds, process))
                    samples.setdefault((workload, config), []).append(sample)
    print(
        f"server pinned to core {SERVER_CORE}, grpc.aio client pinned to core {CLIENT_CORE}; "
        f"{rounds} rounds x {seconds:g} s, median"
    )
    labels = {
        "unary": f"unary Ping, {CONCURRENCY} callers (calls/s)",
        "stream": f"server stream, {STREAMS}x{STREAM_LEN} (msgs/s)",
    }
    print(f"{'workload':<36}" + "".join(f"{c:>12}" for c in CONFIGS))
    for workload, label in labels.items():
        rates = [statistics.median(s.rate for s in samples[(workload, c)]) for c in CONFIGS]
        cpus = [statistics.median(s.cpu_per_item for s in samples[(workload, c)]) for c in CONFIGS]
        print(f"{label:<36}" + "".join(f"{r:>12.0f}" for r in rates))
        print(f"{'  ratio to bare':<36}" + "".join(f"{r / rates[0]:>12.2f}" for r in rates))
        print(f"{'  server CPU us per item':<36}" + "".join(f"{c * 1e6:>12.1f}" for c in cpus))
        print(
            f"{'  CPU ratio (bare cpu / cpu)':<36}" + "".join(f"{cpus[0] / c:>12.2f}" for c in cpus)
        )


# -- per-interceptor CPU cost ------------------------------------------------------------------


class CallDetails(NamedTuple):
    method: str
    invocation_metadata: tuple[tuple[str, str], ...]


async def adapter_cost(interceptors: Sequence[Interceptor] | None, calls: int) -> float:
    """CPU seconds per call of the Ping handler (wrapped by the adapter unless ``None``)."""
    servicer = PingServicer()
    behavior: Any = servicer.Ping
    if interceptors is not None:
        bare = grpc.unary_unary_rpc_method_handler(servicer.Ping)

        async def continuation(_: object) -> grpc.RpcMethodHandler:  # type: ignore[type-arg]
            return bare

        details = CallDetails("/grpckit.testing.v1.PingService/Ping", ())
        adapter = Adapter(interceptors)
        behavior = (await adapter.intercept_service(continuation, details)).unary_unary  # type: ignore[arg-type]
    request = ping_pb2.PingRequest(message="x")
    metadata = (("user-agent", "grpc-python-asyncio/1.85.3 grpc-c/58.0.0 (linux; chttp2)"),)
    started = time.process_time()
    for _ in range(calls):
        await behavior(request, FakeServicerContext(metadata=metadata))
    return (time.process_time() - started) / calls


def per_interceptor(calls: int, rounds: int) -> None:
    chain = full_chain()
    names = [type(i).__name__.strip("_").lower() for i in chain]
    chains: dict[str, Sequence[Interceptor] | None] = {"handler": None, "adapter": []}
    chains.update({name: [interceptor] for name, interceptor in zip(names, chain, strict=True)})
    chains["full chain"] = chain
    chains["old chain (r,l,d)"] = [recovery(), logging(), deadlines()]
    costs: dict[str, list[float]] = {name: [] for name in chains}
    for _ in range(rounds):
        for name, interceptors in chains.items():
            costs[name].append(asyncio.run(adapter_cost(interceptors, calls)))
    adapter = min(costs["adapter"])
    print(f"\nper call, no sockets (fake context, CPU time, best of {rounds} x {calls} calls)")
    print(f"{'chain':<20}{'us/call':>10}{'+us over adapter':>18}")
    for name, samples in costs.items():
        best = min(samples)
        print(f"{name:<20}{best * 1e6:>10.1f}{(best - adapter) * 1e6:>18.1f}")


if __name__ == "__main__":
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 3.0
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    pin(CLIENT_CORE)
    log_to_devnull()
    over_sockets(seconds, rounds)
    per_interceptor(5000, 2 * rounds + 1)
