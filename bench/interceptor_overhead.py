"""Per-call cost of grpckit's adapter and interceptors against bare grpc.aio, in the same run.

Client and server share one process and event loop; unary Ping calls, CONCURRENCY at a time.
Configurations, measured in interleaved rounds (median reported):

* bare      — grpc.aio.server, the Ping servicer, no interceptor at all
* adapter   — grpckit App with an empty chain (the handler-wrapping adapter only)
* chain     — App with recovery(), logging() (JSON to /dev/null) and deadlines()
* chain-trl — the same, request id echoed in trailing instead of initial metadata

A second table times the adapter alone, without sockets: the wrapped handler is awaited with a
fake ServicerContext, so it shows the pure-Python cost per call of each chain, free of the
scheduling noise of a shared machine (and without the extra C-core batch that sending the
request id in initial metadata costs on the wire).

Run: .venv/bin/python bench/interceptor_overhead.py [calls_per_round] [rounds]
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import NamedTuple

import grpc

from grpckit import App, Interceptor, ServerConfig, configure_logging
from grpckit.interceptors import deadlines, logging, recovery
from grpckit.server import Adapter
from grpckit.testing import FakeServicerContext, PingServicer, ping_service
from grpckit.testing.api.v1 import ping_pb2, ping_pb2_grpc

CONCURRENCY = 8


async def bare_server() -> tuple[str, Callable[[], Awaitable[None]]]:
    server = grpc.aio.server()
    ping_pb2_grpc.add_PingServiceServicer_to_server(PingServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return f"127.0.0.1:{port}", lambda: server.stop(None)


def app_server(
    interceptors: Sequence[Interceptor],
) -> Callable[[], Awaitable[tuple[str, Callable[[], Awaitable[None]]]]]:
    async def start() -> tuple[str, Callable[[], Awaitable[None]]]:
        app = App(ServerConfig(grace_period=0), interceptors=interceptors)
        service = ping_service()
        app.add_service(service.add_to_server, service.servicer, service.descriptor)
        await app.start()
        return app.address, app.stop

    return start


async def measure(address: str, calls: int) -> float:
    """Seconds per call (wall clock) for ``calls`` unary calls, CONCURRENCY in flight."""
    async with grpc.aio.insecure_channel(address) as channel:  # bare client for all configs
        stub = ping_pb2_grpc.PingServiceStub(channel)
        request = ping_pb2.PingRequest(message="x")
        for _ in range(200):  # warm up
            await stub.Ping(request)

        async def worker(n: int) -> None:
            for _ in range(n):
                await stub.Ping(request)

        started = time.perf_counter()
        await asyncio.gather(*(worker(calls // CONCURRENCY) for _ in range(CONCURRENCY)))
        return (time.perf_counter() - started) / (calls // CONCURRENCY * CONCURRENCY)


def log_to_devnull() -> None:
    """Real JSON rendering, written to /dev/null."""
    devnull = open(os.devnull, "w")  # noqa: SIM115 - lives for the whole run
    real_stderr, sys.stderr = sys.stderr, devnull
    configure_logging("info")
    sys.stderr = real_stderr


class CallDetails(NamedTuple):
    method: str
    invocation_metadata: tuple[tuple[str, str], ...]


async def adapter_cost(interceptors: Sequence[Interceptor], calls: int) -> float:
    """Seconds per call of the adapter-wrapped Ping handler with a fake context."""
    servicer = PingServicer()
    bare = grpc.unary_unary_rpc_method_handler(servicer.Ping)

    async def continuation(_: object) -> grpc.RpcMethodHandler:  # type: ignore[type-arg]
        return bare

    details = CallDetails("/grpckit.testing.v1.PingService/Ping", ())
    handler = await Adapter(interceptors).intercept_service(continuation, details)  # type: ignore[arg-type]
    behavior = handler.unary_unary
    request = ping_pb2.PingRequest(message="x")
    started = time.process_time()
    for _ in range(calls):
        await behavior(request, FakeServicerContext())
    return (time.process_time() - started) / calls


async def handler_cost(calls: int) -> float:
    """Seconds per call of the bare Ping handler, awaited directly."""
    servicer = PingServicer()
    request = ping_pb2.PingRequest(message="x")
    started = time.process_time()
    for _ in range(calls):
        await servicer.Ping(request, FakeServicerContext())  # type: ignore[arg-type]
    return (time.process_time() - started) / calls


async def main(calls: int, rounds: int) -> None:
    configs = {
        "bare": bare_server,
        "adapter": app_server([]),
        "chain": app_server([recovery(), logging(), deadlines()]),
        "chain-trl": app_server([recovery(), logging(echo_request_id="trailing"), deadlines()]),
    }
    results: dict[str, list[float]] = {name: [] for name in configs}
    for _ in range(rounds):
        for name, start in configs.items():
            address, stop = await start()
            try:
                results[name].append(await measure(address, calls))
            finally:
                await stop()
    base = statistics.median(results["bare"])
    print(f"unary Ping, {calls} calls x {rounds} rounds, concurrency {CONCURRENCY}, same process")
    print(f"{'config':<10}{'us/call':>10}{'calls/s':>10}{'ratio':>8}{'+us/call':>10}")
    for name, samples in results.items():
        per_call = statistics.median(samples)
        print(
            f"{name:<10}{per_call * 1e6:>10.1f}{1 / per_call:>10.0f}"
            f"{per_call / base:>8.2f}{(per_call - base) * 1e6:>10.1f}"
        )
    chains: dict[str, Sequence[Interceptor] | None] = {
        "handler": None,
        "adapter": [],
        "recovery": [recovery()],
        "logging": [logging()],
        "deadlines": [deadlines()],
        "chain": [recovery(), logging(), deadlines()],
    }
    costs: dict[str, list[float]] = {name: [] for name in chains}
    for _ in range(rounds):
        for name, chain in chains.items():
            costs[name].append(
                await adapter_cost(chain or [], calls)
                if chain is not None
                else await handler_cost(calls)
            )
    direct = statistics.median(costs["handler"])
    print(f"\nadapter alone (fake context, no sockets, CPU time), {calls} calls x {rounds} rounds")
    print(f"{'chain':<10}{'us/call':>10}{'+us/call':>10}")
    for name, samples in costs.items():
        per_call = statistics.median(samples)
        print(f"{name:<10}{per_call * 1e6:>10.1f}{(per_call - direct) * 1e6:>10.1f}")


if __name__ == "__main__":
    log_to_devnull()
    asyncio.run(
        main(
            int(sys.argv[1]) if len(sys.argv) > 1 else 4000,
            int(sys.argv[2]) if len(sys.argv) > 2 else 3,
        )
    )
