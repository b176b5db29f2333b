"""Analytics ingestion throughput: the pipeline alone, then IngestEvents over real grpc.aio.

Run: ``.venv/bin/python bench/analytics_ingest.py [--events 200000] [--rounds 7]``

1. Pipeline alone: batches of 1,000 events are parsed from bytes (as the server receives them;
   not timed) and run through ``Pipeline.process`` (timed: proto field reads, validate, dedupe,
   enrich, aggregate, alert). Also timed: the proto field reads alone (the floor) and the
   stages after them. Best and median of ``--rounds``.
2. Over gRPC: a grpckit ``App`` with the analytics servicer in a child process (its own GIL),
   a grpc.aio client in this process streaming pre-built ``IngestEventsRequest`` messages with
   batch sizes 1, 10, 100 and 1,000; events/s from the first write to the reply, and the ratio
   against batch size 1, all in the same run. Client: grpc.aio stub, one stream per size.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import time
import uuid
from collections.abc import Callable
from multiprocessing.connection import Connection

import grpc

from shop.analytics.ingest import _READ, Validator, enrich
from shop.analytics.pipeline import Pipeline
from shop.api.analytics.v1 import analytics_pb2, analytics_pb2_grpc
from shop.api.events.v1 import events_pb2

BATCH = 1_000
KINDS = [1, 4, 2, 1, 4, 2, 3, 5, 6, 1]  # a plausible mix: orders, payments, a few failures


def make_events(count: int, prefix: str) -> list[events_pb2.Event]:
    now = int(time.time())
    events = []
    for i in range(count):
        event = events_pb2.Event(
            id=f"{prefix}-{uuid.uuid4()}",
            type=KINDS[i % len(KINDS)],  # type: ignore[arg-type]
            source="bench",
            order_id=str(uuid.uuid4()),
            user_id=str(uuid.uuid4()),
            item_count=2,
        )
        event.occurred_at.seconds = now
        event.amount.currency_code = "USD"
        event.amount.units = 10 + i % 90
        event.amount.nanos = 990_000_000
        events.append(event)
    return events


def serialized_batches(count: int, prefix: str) -> list[bytes]:
    events = make_events(count, prefix)
    return [
        analytics_pb2.IngestEventsRequest(events=events[i : i + BATCH]).SerializeToString()
        for i in range(0, count, BATCH)
    ]


def time_batches(raw: list[bytes], work: Callable[[list[events_pb2.Event]], object]) -> float:
    """Seconds spent in ``work`` over freshly parsed batches (parsing not timed)."""
    spent = 0.0
    for data in raw:
        events = list(analytics_pb2.IngestEventsRequest.FromString(data).events)
        start = time.perf_counter()
        work(events)
        spent += time.perf_counter() - start
    return spent


def bench_pipeline(count: int, rounds: int) -> None:
    raw = serialized_batches(count, "p")
    results: dict[str, list[float]] = {"pipeline": [], "field reads": [], "after reads": []}
    for _ in range(rounds):
        pipeline = Pipeline()
        results["pipeline"].append(count / time_batches(raw, pipeline.process))
        results["field reads"].append(
            count / time_batches(raw, lambda events: list(map(_READ, events)))
        )
        validator, rest = Validator(), Pipeline()
        parsed = [
            validator.validate(
                analytics_pb2.IngestEventsRequest.FromString(data).events, time.time()
            )
            for data in raw
        ]
        start = time.perf_counter()
        for checked in parsed:
            now = rest.clock.now()
            fresh, _ = rest.deduper.fresh(checked.events, now)
            summary = rest.windows.add(enrich(fresh, now), now)
            rest.rules.evaluate(summary, rest.windows, now)
        results["after reads"].append(count / (time.perf_counter() - start))
    print(f"pipeline alone, {count:,} events in batches of {BATCH:,}, {rounds} rounds:")
    labels = {
        "pipeline": "Pipeline.process (reads + 5 stages)",
        "field reads": "proto field reads only (floor)",
        "after reads": "dedupe+enrich+aggregate+alert only",
    }
    for key, label in labels.items():
        values = results[key]
        print(
            f"  {label:<38} best {max(values):>12,.0f} ev/s   median "
            f"{statistics.median(values):>12,.0f} ev/s"
        )


def serve(conn: Connection) -> None:
    """Child process: the analytics servicer on a grpckit App; sends its port, runs until told."""
    from grpckit import App, ServerConfig
    from shop.analytics.service import AnalyticsService

    async def main() -> None:
        app = App(ServerConfig(grace_period=0.5), name="bench")
        app.add_service(
            analytics_pb2_grpc.add_AnalyticsServiceServicer_to_server,
            AnalyticsService(Pipeline()),
            analytics_pb2.DESCRIPTOR.services_by_name["AnalyticsService"],
        )
        async with app:
            conn.send(app.port)
            await asyncio.get_running_loop().run_in_executor(None, conn.recv)

    asyncio.run(main())


async def stream_once(
    stub: analytics_pb2_grpc.AnalyticsServiceAsyncStub, batch: int, count: int
) -> float:
    events = make_events(count, f"g{batch}-{uuid.uuid4().hex[:6]}")
    requests = [
        analytics_pb2.IngestEventsRequest(events=events[i : i + batch])
        for i in range(0, count, batch)
    ]
    start = time.perf_counter()
    reply = await stub.IngestEvents(iter(requests))
    elapsed = time.perf_counter() - start
    if reply.accepted != count:
        raise SystemExit(f"batch {batch}: {reply.accepted} of {count} accepted: {reply}")
    return count / elapsed


async def bench_grpc(address: str, count: int, rounds: int) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = analytics_pb2_grpc.AnalyticsServiceStub(channel)
        await stream_once(stub, 100, 1_000)  # warm up the connection
        rates: dict[int, float] = {}
        for batch in (1, 10, 100, 1_000):
            size = min(count, 20_000) if batch == 1 else count
            rates[batch] = max([await stream_once(stub, batch, size) for _ in range(rounds)])
    print(f"IngestEvents over grpc.aio (server in a child process), best of {rounds}:")
    for batch, rate in rates.items():
        print(f"  batch {batch:>5,}: {rate:>12,.0f} ev/s   x{rate / rates[1]:.1f} vs batch 1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--grpc-rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"cpus={os.cpu_count()} load={os.getloadavg()[0]:.2f} grpcio={grpc.__version__}")
    bench_pipeline(args.events, args.rounds)
    parent, child = multiprocessing.get_context("spawn").Pipe()
    server = multiprocessing.get_context("spawn").Process(target=serve, args=(child,))
    server.start()
    try:
        port = parent.recv()
        asyncio.run(bench_grpc(f"127.0.0.1:{port}", args.events // 2, args.grpc_rounds))
    finally:
        parent.send("stop")
        server.join(timeout=10)
        if server.is_alive():
            server.terminate()


if __name__ == "__main__":
    main()
