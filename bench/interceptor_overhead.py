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
     (grpc.aio sends explicit initial metadata as one more batch per call);
   * ``chain+sec`` — the full chain, then the security interceptors in the shop's order:
     ``rate_limit`` (``MemoryLimiter``, ``{"*": Rule(1_000_000, 1.0)}`` by peer address: never
     rejects) → ``authentication`` (a real ``TokenVerifier`` over ``StaticKeys`` with an
     Ed25519 key; the client sends an EdDSA token signed by ``TokenSigner``) →
     ``authorization`` (an explicit policy table: the Ping methods need any signed-in caller);
   * ``notr+sec`` — the chain without tracing, then the same security interceptors: what
     ``shop up`` runs by default (tracing is on only when ``OTEL_*`` variables configure it;
     the shop adds the audit trail and validation on top, not measured here);
   * ``sec-nocache`` — ``chain+sec`` with the verifier's cache off (``cache_size=0``): every call
     checks the signature, which is what the cache saves;
   * ``auth-only`` — ``authentication`` + ``authorization`` alone (cached verifier), no other
     interceptor.

   Every config, ``bare`` included, receives the same ``authorization: Bearer`` header, so the
   bytes on the wire are the same for all of them.

   Besides throughput, the server process's CPU time per call (``psutil``) is printed: on a
   shared, busy machine it is the steadier figure (the server core's capacity is 1 / CPU per
   call), and its ratio is what the throughput ratio would be on an idle machine.

   Workloads: small unary Ping (``CONCURRENCY`` callers) and server streaming
   (``STREAMS`` concurrent PingServerStream calls of ``STREAM_LEN`` small messages).

2. **Per interceptor, no sockets.** The adapter-wrapped Ping handler is awaited with a fake
   ServicerContext: the pure-Python CPU cost per call of each interceptor alone (the security
   interceptors included), then ``TokenVerifier.verify`` alone, cached and uncached, and
   ``TokenSigner.issue``.

Run: ``.venv/bin/python bench/interceptor_overhead.py [seconds_per_round] [rounds] [configs]``
(``configs``: a comma-separated subset of the names above, ``bare`` always included).
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
from grpckit.auth import (
    AccessPolicy,
    KeySet,
    SigningKey,
    StaticKeys,
    TokenSigner,
    TokenVerifier,
    authentication,
    authorization,
)
from grpckit.defaults import default_interceptors
from grpckit.interceptors import by_peer_ip, deadlines, logging, rate_limit, recovery
from grpckit.interceptors._logging import EchoRequestId
from grpckit.ratelimit import MemoryLimiter, Rule
from grpckit.server import Adapter
from grpckit.testing import FakeServicerContext, PingServicer, ping_service
from grpckit.testing.api.v1 import ping_pb2, ping_pb2_grpc

CONCURRENCY = 8
STREAMS = 4
STREAM_LEN = 1000
SERVER_CORE, CLIENT_CORE = 0, 1
ISSUER, AUDIENCE = "bench.users", "bench"
#: Call metadata (the client's ``authorization`` header).
Md = tuple[tuple[str, str], ...]
PING = "/grpckit.testing.v1.PingService/Ping"
POLICIES = {
    PING: AccessPolicy(authenticated=True),
    "/grpckit.testing.v1.PingService/PingServerStream": AccessPolicy(authenticated=True),
}


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


def verifier(key: SigningKey, cache_size: int = 10_000) -> TokenVerifier:
    """A verifier of ``key``'s tokens, as a shop process builds it (``cache_size=0``: no cache)."""
    return TokenVerifier(
        StaticKeys(KeySet.of(key)), issuers=[ISSUER], audience=AUDIENCE, cache_size=cache_size
    )


def security(key: SigningKey, cache_size: int = 10_000) -> list[Interceptor]:
    """rate_limit (never rejects) → authentication → authorization, as the shop orders them."""
    return [
        rate_limit(MemoryLimiter(), {"*": Rule(1_000_000, 1.0)}, by_peer_ip),
        *auth(key, cache_size),
    ]


def auth(key: SigningKey, cache_size: int = 10_000) -> list[Interceptor]:
    """authentication (a real EdDSA verifier) → authorization (explicit policies for Ping)."""
    return [authentication(verifier(key, cache_size)), authorization(POLICIES)]


def bearer(key: SigningKey) -> Md:
    """Call metadata with an hour-long EdDSA token signed by ``key``."""
    token = TokenSigner(key, issuer=ISSUER, audience=AUDIENCE, ttl=3600).issue("u-1")
    return (("authorization", f"Bearer {token.value}"),)


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


def server_main(config: str, pem: bytes, conn: Connection) -> None:
    """Child process: serve ``config`` on a free port, send the port, stop when told."""
    pin(SERVER_CORE)
    log_to_devnull()
    asyncio.run(_serve(config, SigningKey.from_pem(pem), conn))


def chain_of(config: str, key: SigningKey) -> list[Interceptor]:
    """The server interceptors of one config (see the module docstring)."""
    if config == "adapter":
        return []
    if config == "no-tracing":
        return full_chain(traced=False)
    if config == "no-tr-trl":
        return full_chain(traced=False, echo="trailing")
    if config == "chain+sec":
        return [*full_chain(), *security(key)]
    if config == "notr+sec":
        return [*full_chain(traced=False), *security(key)]
    if config == "sec-nocache":
        return [*full_chain(), *security(key, cache_size=0)]
    if config == "auth-only":
        return auth(key)
    return full_chain()


async def _serve(config: str, key: SigningKey, conn: Connection) -> None:
    if config == "bare":
        server = grpc.aio.server()
        ping_pb2_grpc.add_PingServiceServicer_to_server(PingServicer(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        stop: Callable[[], Any] = lambda: server.stop(None)  # noqa: E731
    else:
        app = App(ServerConfig(grace_period=0), interceptors=chain_of(config, key))
        service = ping_service()
        app.add_service(service.add_to_server, service.servicer, service.descriptor)
        await app.start()
        port, stop = app.port, app.stop
    conn.send(port)
    await asyncio.get_running_loop().run_in_executor(None, conn.recv)
    await stop()


class Server:
    """A server process for one config."""

    def __init__(self, config: str, key: SigningKey) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(
            target=server_main, args=(config, key.private_pem(), child), daemon=True
        )

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


async def unary_rate(address: str, seconds: float, server: psutil.Process, md: Md) -> Sample:
    """Unary calls per second, CONCURRENCY callers on one channel."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = ping_pb2_grpc.PingServiceStub(channel)
        request = ping_pb2.PingRequest(message="x")
        for _ in range(200):  # warm up (connection, caches)
            await stub.Ping(request, metadata=md)
        done = 0
        end = time.perf_counter() + seconds

        async def caller() -> None:
            nonlocal done
            while time.perf_counter() < end:
                await stub.Ping(request, metadata=md)
                done += 1

        with Sample(server) as sample:
            await asyncio.gather(*(caller() for _ in range(CONCURRENCY)))
        return sample.done(done)


async def stream_rate(address: str, seconds: float, server: psutil.Process, md: Md) -> Sample:
    """Server-streamed messages per second, STREAMS concurrent streams of STREAM_LEN."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = ping_pb2_grpc.PingServiceStub(channel)
        request = ping_pb2.PingServerStreamRequest(message="x", count=STREAM_LEN)
        async for _ in stub.PingServerStream(request, metadata=md):  # warm up
            pass
        received = 0
        end = time.perf_counter() + seconds

        async def reader() -> None:
            nonlocal received
            while time.perf_counter() < end:
                async for _ in stub.PingServerStream(request, metadata=md):
                    received += 1

        with Sample(server) as sample:
            await asyncio.gather(*(reader() for _ in range(STREAMS)))
        return sample.done(received)


CONFIGS = (
    "bare",
    "chain",
    "adapter",
    "no-tracing",
    "no-tr-trl",
    "chain+sec",
    "notr+sec",
    "sec-nocache",
    "auth-only",
)


def over_sockets(seconds: float, rounds: int, configs: Sequence[str], key: SigningKey) -> None:
    workloads = {"unary": unary_rate, "stream": stream_rate}
    samples: dict[tuple[str, str], list[Sample]] = {}
    md = bearer(key)
    for _ in range(rounds):
        for config in configs:
            with Server(config, key) as (address, process):
                for workload, measure in workloads.items():
                    sample = asyncio.run(measure(address, seconds, process, md))
                    samples.setdefault((workload, config), []).append(sample)
    print(
        f"server pinned to core {SERVER_CORE}, grpc.aio client pinned to core {CLIENT_CORE}; "
        f"{rounds} rounds x {seconds:g} s, median"
    )
    labels = {
        "unary": f"unary Ping, {CONCURRENCY} callers (calls/s)",
        "stream": f"server stream, {STREAMS}x{STREAM_LEN} (msgs/s)",
    }
    print(f"{'workload':<36}" + "".join(f"{c:>12}" for c in configs))
    for workload, label in labels.items():
        rates = [statistics.median(s.rate for s in samples[(workload, c)]) for c in configs]
        cpus = [statistics.median(s.cpu_per_item for s in samples[(workload, c)]) for c in configs]
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


async def adapter_cost(interceptors: Sequence[Interceptor] | None, calls: int, md: Md) -> float:
    """CPU seconds per call of the Ping handler (wrapped by the adapter unless ``None``)."""
    servicer = PingServicer()
    behavior: Any = servicer.Ping
    if interceptors is not None:
        bare = grpc.unary_unary_rpc_method_handler(servicer.Ping)

        async def continuation(_: object) -> grpc.RpcMethodHandler:  # type: ignore[type-arg]
            return bare

        details = CallDetails(PING, ())
        adapter = Adapter(interceptors)
        behavior = (await adapter.intercept_service(continuation, details)).unary_unary  # type: ignore[arg-type]
    request = ping_pb2.PingRequest(message="x")
    metadata = (("user-agent", "grpc-python-asyncio/1.85.3 grpc-c/58.0.0 (linux; chttp2)"), *md)
    started = time.process_time()
    for _ in range(calls):
        await behavior(request, FakeServicerContext(metadata=metadata))
    return (time.process_time() - started) / calls


def per_interceptor(calls: int, rounds: int, key: SigningKey) -> None:
    chain = full_chain()
    names = [type(i).__name__.strip("_").lower() for i in chain]
    chains: dict[str, Sequence[Interceptor] | None] = {"handler": None, "adapter": []}
    chains.update({name: [interceptor] for name, interceptor in zip(names, chain, strict=True)})
    chains["full chain"] = chain
    chains["old chain (r,l,d)"] = [recovery(), logging(), deadlines()]
    limit, authn, authz = security(key)
    chains["rate_limit"] = [limit]
    chains["authentication"] = [authn]
    chains["authn, no cache"] = [authentication(verifier(key, cache_size=0))]
    chains["authorization"] = [authn, authz]  # needs a principal: reported minus authn below
    chains["security (3)"] = [limit, authn, authz]
    chains["full + security"] = [*chain, limit, authn, authz]
    md = bearer(key)
    costs: dict[str, list[float]] = {name: [] for name in chains}
    for _ in range(rounds):
        for name, interceptors in chains.items():
            costs[name].append(asyncio.run(adapter_cost(interceptors, calls, md)))
    adapter = min(costs["adapter"])
    print(f"\nper call, no sockets (fake context, CPU time, best of {rounds} x {calls} calls)")
    print(f"{'chain':<20}{'us/call':>10}{'+us over adapter':>18}")
    for name, samples in costs.items():
        best = min(samples)
        base = min(costs["authentication"]) if name == "authorization" else adapter
        over = "  (over authentication)" if name == "authorization" else ""
        print(f"{name:<20}{best * 1e6:>10.1f}{(best - base) * 1e6:>18.1f}{over}")


async def verify_cost(key: SigningKey, cache_size: int, calls: int) -> float:
    """CPU seconds per ``TokenVerifier.verify`` of one token (after one warm-up call)."""
    check = verifier(key, cache_size)
    token = TokenSigner(key, issuer=ISSUER, audience=AUDIENCE, ttl=3600).issue("u-1").value
    await check.verify(token)
    started = time.process_time()
    for _ in range(calls):
        await check.verify(token)
    return (time.process_time() - started) / calls


def token_costs(calls: int, rounds: int, key: SigningKey) -> None:
    cached = min(asyncio.run(verify_cost(key, 10_000, calls)) for _ in range(rounds))
    uncached = min(asyncio.run(verify_cost(key, 0, calls)) for _ in range(rounds))
    signer = TokenSigner(key, issuer=ISSUER, audience=AUDIENCE, ttl=3600)
    issue = []
    for _ in range(rounds):
        started = time.process_time()
        for _ in range(calls):
            signer.issue("u-1", roles=["customer"])
        issue.append((time.process_time() - started) / calls)
    print(f"\ntokens (EdDSA, CPU time, best of {rounds} x {calls} calls)")
    print(f"  TokenVerifier.verify cached   {cached * 1e6:8.1f} us/call")
    print(f"  TokenVerifier.verify uncached {uncached * 1e6:8.1f} us/call (cache_size=0)")
    print(f"  TokenSigner.issue             {min(issue) * 1e6:8.1f} us/call")


if __name__ == "__main__":
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 3.0
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    chosen = sys.argv[3].split(",") if len(sys.argv) > 3 else list(CONFIGS)
    unknown = set(chosen) - set(CONFIGS)
    if unknown:
        raise SystemExit(f"unknown configs {sorted(unknown)}; choose from {', '.join(CONFIGS)}")
    signing_key = SigningKey.generate()
    pin(CLIENT_CORE)
    log_to_devnull()
    over_sockets(seconds, rounds, ["bare", *(c for c in chosen if c != "bare")], signing_key)
    per_interceptor(5000, 2 * rounds + 1, signing_key)
    token_costs(2000, 2 * rounds + 1, signing_key)
