"""ProcessOrder on PostgreSQL: all-in-one vs distributed with 1 and with 2 gateway processes.

One run measures three configurations in turn, each on its own fresh PostgreSQL database
(created before, dropped after), so the ratios compare like with like on a noisy machine:

* (a) ``shop up --database-url ...``: every service in one process;
* (b) ``shop up --distributed``: every service its own supervised process, one gateway;
* (c) the same with ``--replicas gateway=2`` on a fixed free port: both gateway processes
  listen on it with SO_REUSEPORT and the kernel spreads *connections* between them.

For each: register ``--customers`` customers at the users service (the users process's address
from the supervisor's ``ready`` line in distributed mode), create one product with stock for
any run (as the harness's admin, at the catalog process), warm up, then drive ProcessOrder from
``--concurrency`` workers for ``--duration`` seconds. Every worker has its own channel with a
local subchannel pool, hence its own TCP connection, the same in all three configurations: with
one shared channel every call would land on one gateway process. Orders take the customers in
turn (one customer is limited to 20 ProcessOrder calls/s, burst 40).

Reported: orders/s, p50, p99, failed calls by status code, the peak RSS of every shop process
(psutil, sampled every 0.5 s during the load; in distributed mode the pids of the supervisor's
``ready`` line and the supervisor itself) and where the CPU went during the load (``cpu_times``
and context-switch deltas per process: the shop's processes, this database's PostgreSQL
backends, PostgreSQL's own background processes, this load generator; then the machine's
interrupts and everything else on it, with its busiest processes), and a ceiling: the orders/s
the run could reach with every core to itself. Then the ratios (c)/(b), the gateway scaling,
and (b)/(a); ``--rounds`` repeats the three in turn and prints the range of the ratios. Without
a reachable PostgreSQL it prints "skipped" and exits 0.

    .venv/bin/python bench/distributed.py [--duration 10] [--concurrency 16] [--customers 16] \
        [--warmup 3] [--rounds 1] [--postgres-url postgresql+asyncpg://postgres@127.0.0.1:5432/postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import psutil
import sqlalchemy as sa
from shop_login import Customer, bench_products, customers
from sqlalchemy.ext.asyncio import create_async_engine

from shop.api.gateway.v1 import gateway_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.e2e import clients
from tests.e2e.clients import order_request
from tests.e2e.harness import ShopProcess

POSTGRES_URL = os.environ.get(
    "SHOP_BENCH_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)
#: Every worker's channel gets its own TCP connection (SO_REUSEPORT spreads connections).
CHANNEL_OPTIONS = (("grpc.use_local_subchannel_pool", 1),)
SAMPLE_EVERY = 0.5
PROGRESS_EVERY = 5.0


@dataclass(frozen=True)
class Config:
    """One way of running the shop: ``shop <command...> --database-url URL``."""

    key: str
    title: str
    distributed: bool
    gateways: int = 1

    def command(self) -> tuple[str, ...]:
        if not self.distributed:
            return ("up", "--grpc-port", "0", "--http-port", "0")
        if self.gateways == 1:
            return ("up", "--distributed", "--grpc-port", "0", "--http-port", "0")
        port = str(free_port())  # fixed and non-zero: the gateways share it (SO_REUSEPORT)
        return ("up", "--distributed", "--grpc-port", port, "--http-port", "0",
                "--replicas", f"gateway={self.gateways}")  # fmt: skip


CONFIGS = (
    Config("a", "all-in-one", distributed=False),
    Config("b", "distributed, 1 gateway", distributed=True),
    Config("c", "distributed, 2 gateways", distributed=True, gateways=2),
)


@dataclass
class Result:
    """What one configuration measured."""

    config: Config
    duration: float
    latencies: list[float]
    errors: dict[str, int]
    #: process label -> peak RSS in bytes (shop processes only)
    rss: dict[str, int]
    #: label -> CPU seconds (user + system) spent during the load
    cpu: dict[str, float]
    #: label -> of which user seconds
    cpu_user: dict[str, float]
    #: label -> context switches (voluntary + involuntary) during the load
    switches: dict[str, int]
    machine: MachineCpu
    elapsed: float

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.duration

    def pct(self, q: int) -> float:
        if len(self.latencies) < 2:
            return float("nan")
        return statistics.quantiles(self.latencies, n=100)[q - 1] * 1000


@dataclass
class Watched:
    """The processes whose RSS and CPU one configuration reports."""

    shop: dict[str, psutil.Process]
    database: str
    rss: dict[str, int] = field(default_factory=dict)

    def sample_rss(self) -> None:
        for label, proc in self.shop.items():
            with suppress(psutil.Error):
                self.rss[label] = max(self.rss.get(label, 0), proc.memory_info().rss)


@dataclass(frozen=True)
class MachineCpu:
    """The whole machine's CPU between two moments, and the busiest processes not watched."""

    busy: float
    #: interrupts and softirqs (loopback TCP is processed there), part of ``busy``
    irq: float
    steal: float
    #: (seconds, "name pid") of the busiest other processes, most first
    others: tuple[tuple[float, str], ...]

    @staticmethod
    def snapshot() -> tuple[object, dict[int, tuple[str, float]]]:
        procs: dict[int, tuple[str, float]] = {}
        for proc in psutil.process_iter(["name", "cpu_times"]):
            times = proc.info["cpu_times"]
            if times is not None:
                procs[proc.pid] = (proc.info["name"] or "?", times.user + times.system)
        return psutil.cpu_times(), procs

    @classmethod
    def between(
        cls,
        before: tuple[object, dict[int, tuple[str, float]]],
        after: tuple[object, dict[int, tuple[str, float]]],
        watched: set[int],
    ) -> MachineCpu:
        (t0, procs0), (t1, procs1) = before, after

        def spent(*fields: str) -> float:
            return sum(getattr(t1, f, 0.0) - getattr(t0, f, 0.0) for f in fields)

        others = sorted(
            (
                (total - procs0.get(pid, (name, 0.0))[1], f"{name} {pid}")
                for pid, (name, total) in procs1.items()
                if pid not in watched
            ),
            reverse=True,
        )
        return cls(
            busy=spent("user", "nice", "system", "irq", "softirq"),
            irq=spent("irq", "softirq"),
            steal=spent("steal"),
            others=tuple(o for o in others[:4] if o[0] >= 0.05),
        )


def free_port() -> int:
    """A port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def shop_processes(shop: ShopProcess, config: Config) -> dict[str, psutil.Process]:
    """Label -> process: ``shop up`` alone, or the supervisor and every child from ``ready``."""
    assert shop.proc is not None
    if not config.distributed:
        return {"shop up": psutil.Process(shop.proc.pid)}
    ready = shop.wait_for(lambda r: r.get("event") == "ready")
    found = {"supervisor": psutil.Process(shop.proc.pid)}
    for p in ready["processes"]:
        found[f"{p['service']}#{p['replica']}"] = psutil.Process(p["pid"])
    return found


def address_of(shop: ShopProcess, service: str) -> str:
    ready = shop.wait_for(lambda r: r.get("event") == "ready")
    return next(str(p["address"]) for p in ready["processes"] if p["service"] == service)


def postgres_processes(database: str) -> dict[str, list[psutil.Process]]:
    """This database's backends and PostgreSQL's own background processes."""
    found: dict[str, list[psutil.Process]] = {"postgres backends": [], "postgres background": []}
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmdline = proc.info["cmdline"] or []
        title = cmdline[0] if cmdline else ""
        if not title.startswith("postgres:"):
            continue
        words = title.split()
        if database in words:
            found["postgres backends"].append(proc)
        elif len(words) <= 5 and not any("(" in w for w in words):  # no client connection
            found["postgres background"].append(proc)
    return found


#: label -> pid -> (user seconds, system seconds, context switches) so far
Snapshot = dict[str, dict[int, tuple[float, float, int]]]


def cpu_snapshot(watched: Watched) -> Snapshot:
    """CPU and context switches so far of every process one configuration reports."""
    groups: dict[str, list[psutil.Process]] = {k: [v] for k, v in watched.shop.items()}
    groups.update(postgres_processes(watched.database))
    groups["load generator (this script)"] = [psutil.Process()]
    snap: Snapshot = {}
    for label, procs in groups.items():
        snap[label] = {}
        for proc in procs:
            try:
                with proc.oneshot():
                    t, ctx = proc.cpu_times(), proc.num_ctx_switches()
            except psutil.Error:
                continue
            snap[label][proc.pid] = (t.user, t.system, ctx.voluntary + ctx.involuntary)
    return snap


def cpu_delta(before: Snapshot, after: Snapshot) -> dict[str, tuple[float, float, int]]:
    """Label -> (user + system seconds, user seconds, context switches) between two snapshots
    (a pid that appeared in between counts whole)."""
    spent: dict[str, tuple[float, float, int]] = {}
    for label, pids in after.items():
        for pid, (u, s, c) in pids.items():
            u0, s0, c0 = before.get(label, {}).get(pid, (0.0, 0.0, 0))
            total, user, switches = spent.get(label, (0.0, 0.0, 0))
            spent[label] = (total + u - u0 + s - s0, user + u - u0, switches + c - c0)
    return spent


async def postgres(base_url: str, statement: str) -> None:
    """Run one statement outside a transaction (CREATE/DROP DATABASE)."""
    engine = create_async_engine(base_url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(sa.text(statement))
    finally:
        await engine.dispose()


@contextmanager
def fresh_database(base_url: str) -> Iterator[tuple[str, str]]:
    """A new PostgreSQL database: (its name, its URL); dropped afterwards."""
    name = f"shop_bench_{uuid.uuid4().hex[:12]}"
    asyncio.run(postgres(base_url, f'CREATE DATABASE "{name}"'))
    try:
        yield name, base_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        asyncio.run(postgres(base_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def drive(
    make_call: Callable[[grpc.aio.Channel], Callable[[], Awaitable[object]]],
    address: str,
    concurrency: int,
    duration: float,
    label: str,
) -> tuple[list[float], dict[str, int]]:
    """Every worker on its own channel, calling in a loop for ``duration`` seconds."""
    latencies: list[float] = []
    errors: dict[str, int] = {}
    start = time.perf_counter()
    stop = start + duration

    async def worker() -> None:
        async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
            call = make_call(channel)
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                try:
                    await call()
                except grpc.aio.AioRpcError as err:
                    errors[err.code().name] = errors.get(err.code().name, 0) + 1
                    continue
                latencies.append(time.perf_counter() - t0)

    async def progress() -> None:
        while True:
            await asyncio.sleep(PROGRESS_EVERY)
            spent = time.perf_counter() - start
            print(
                f"      {label} {spent:4.0f}/{duration:.0f} s: {len(latencies)} orders "
                f"({len(latencies) / spent:.0f}/s), failed {error_text(errors)}",
                flush=True,
            )

    reporter = asyncio.create_task(progress())
    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        reporter.cancel()
    return latencies, errors


def error_text(errors: dict[str, int]) -> str:
    return ", ".join(f"{code} {n}" for code, n in sorted(errors.items())) or "0"


async def measure(
    shop: ShopProcess, config: Config, database: str, args: argparse.Namespace
) -> Result:
    users = address_of(shop, "users") if config.distributed else shop.grpc_address
    catalog = address_of(shop, "catalog") if config.distributed else shop.grpc_address
    print(f"    {args.customers} customers at {users}, a product at {catalog}", flush=True)
    buyers = await customers(users, args.customers)
    (product,) = await bench_products(catalog, 1, "DIST", users=users)
    counter = 0

    def make_call(channel: grpc.aio.Channel) -> Callable[[], Awaitable[object]]:
        gateway = gateway_pb2_grpc.GatewayServiceStub(channel)

        async def one() -> object:
            nonlocal counter
            counter += 1
            buyer: Customer = buyers[counter % len(buyers)]
            return await gateway.ProcessOrder(
                order_request(buyer.user_id, product.id),
                timeout=30,
                metadata=await buyer.metadata(),
            )

        return one

    if args.warmup > 0:
        print(f"    warm-up {args.warmup:.0f} s", flush=True)
        _, warm_errors = await drive(
            make_call, shop.grpc_address, args.concurrency, args.warmup, "warm-up"
        )
        if warm_errors:
            print(f"    warm-up failed calls: {error_text(warm_errors)}", flush=True)
    watched = Watched(shop_processes(shop, config), database)

    async def sample() -> None:
        while True:
            watched.sample_rss()
            await asyncio.sleep(SAMPLE_EVERY)

    print(f"    load {args.duration:.0f} s at concurrency {args.concurrency}", flush=True)
    sampler = asyncio.create_task(sample())
    machine0, cpu0, t0 = MachineCpu.snapshot(), cpu_snapshot(watched), time.perf_counter()
    latencies, errors = await drive(
        make_call, shop.grpc_address, args.concurrency, args.duration, f"({config.key})"
    )
    machine1, cpu1, elapsed = MachineCpu.snapshot(), cpu_snapshot(watched), time.perf_counter() - t0
    sampler.cancel()
    watched.sample_rss()
    spent = cpu_delta(cpu0, cpu1)
    cpu = {label: v[0] for label, v in spent.items()}
    cpu_user = {label: v[1] for label, v in spent.items()}
    switches = {label: v[2] for label, v in spent.items()}
    pids = {pid for snap in (cpu0, cpu1) for group in snap.values() for pid in group}
    machine = MachineCpu.between(machine0, machine1, pids)
    return Result(
        config,
        args.duration,
        latencies,
        errors,
        dict(watched.rss),
        cpu,
        cpu_user,
        switches,
        machine,
        elapsed,
    )


async def run_config(config: Config, url: str, database: str, args: argparse.Namespace) -> Result:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        shop = ShopProcess(
            Path(tmp) / "data",
            ["--database-url", url],
            follow=False,
            command=config.command(),
        )
        await asyncio.to_thread(shop.start)
        # The admin's token is remembered per address: a new shop may reuse an old port.
        clients._ADMIN_TOKENS.clear()
        print(f"    started in {time.perf_counter() - t0:.1f} s at {shop.grpc_address}", flush=True)
        try:
            return await measure(shop, config, database, args)
        finally:
            await asyncio.to_thread(shop.stop)


def report(result: Result) -> None:
    r = result
    rss = sum(r.rss.values())
    print(
        f"  ({r.config.key}) {r.config.title}: {r.rate:.1f} orders/s, p50 {r.pct(50):.0f} ms, "
        f"p99 {r.pct(99):.0f} ms, failed {error_text(r.errors)}; "
        f"RSS {rss / 2**20:.0f} MiB in {len(r.rss)} process(es)",
        flush=True,
    )
    print("      peak RSS: " + ", ".join(f"{k} {v / 2**20:.0f} MiB" for k, v in r.rss.items()))
    orders = max(len(r.latencies), 1)
    print(
        f"      CPU during the load ({r.elapsed:.1f} s; machine busy {r.machine.busy:.1f} s "
        f"= {r.machine.busy / r.elapsed:.2f} of {os.cpu_count()} cores, "
        f"stolen by the hypervisor {r.machine.steal:.1f} s):"
    )
    measured = 0.0
    for label, seconds in sorted(r.cpu.items(), key=lambda kv: -kv[1]):
        measured += seconds
        print(
            f"        {label:<30} {seconds:6.2f} s  {seconds / r.elapsed:5.2f} cores  "
            f"{seconds / orders * 1000:6.1f} ms/order  (user {r.cpu_user[label]:.2f} s)  "
            f"{r.switches[label] / orders:5.0f} context switches/order"
        )
    irq = r.machine.irq
    print(
        f"        {'interrupts, softirqs (kernel)':<30} {irq:6.2f} s  {irq / r.elapsed:5.2f} cores"
    )
    other = r.machine.busy - measured - irq
    busiest = ", ".join(f"{name} {t:.1f} s" for t, name in r.machine.others)
    print(
        f"        {'everything else on the machine':<30} {other:6.2f} s  {other / r.elapsed:5.2f} cores"
        + (f" (busiest: {busiest})" if busiest else "")
    )


def ceiling(r: Result) -> float:
    """Orders/s if the run had every core to itself: all the CPU an order costs (shop,
    PostgreSQL, load generator) spread over the cores, and no shop process above one core
    (its Python runs on one event-loop thread)."""
    orders = max(len(r.latencies), 1)
    whole = sum(r.cpu.values()) / orders
    busiest = max(r.cpu[label] for label in r.rss) / orders
    return min((os.cpu_count() or 1) / whole, 1 / busiest) if whole and busiest else float("nan")


def table(results: Sequence[Result]) -> None:
    print(
        "\n| config | orders/s | p50 | p99 | failed | shop CPU/order | + PostgreSQL + client "
        "| shop context switches/order | cores: bench / irq / rest | ceiling |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        orders = max(len(r.latencies), 1)
        shop = sum(r.cpu[label] for label in r.rss)
        ours = sum(r.cpu.values())
        switches = sum(r.switches[label] for label in r.rss)
        print(
            f"| ({r.config.key}) {r.config.title} | {r.rate:.1f} | {r.pct(50):.0f} ms | "
            f"{r.pct(99):.0f} ms | {error_text(r.errors)} | {shop / orders * 1000:.1f} ms | "
            f"{ours / orders * 1000:.1f} ms | {switches / orders:.0f} | {ours / r.elapsed:.2f} / "
            f"{r.machine.irq / r.elapsed:.2f} / "
            f"{(r.machine.busy - ours - r.machine.irq) / r.elapsed:.2f} | {ceiling(r):.0f}/s |"
        )
    print("\n| config | peak RSS per process | total |")
    print("|---|---|---|")
    for r in results:
        per_process = ", ".join(f"{k} {v / 2**20:.0f}" for k, v in r.rss.items())
        print(f"| ({r.config.key}) | {per_process} MiB | {sum(r.rss.values()) / 2**20:.0f} MiB |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of measured load")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent callers")
    parser.add_argument("--customers", type=int, default=16, help="buyers the calls take in turn")
    parser.add_argument(
        "--warmup", type=float, default=3.0, help="seconds of load before measuring"
    )
    parser.add_argument("--rounds", type=int, default=1, help="repeat the three configurations")
    parser.add_argument("--postgres-url", default=POSTGRES_URL, help="any database on the server")
    args = parser.parse_args()
    try:
        asyncio.run(postgres(args.postgres_url, "SELECT 1"))
    except (OSError, sa.exc.SQLAlchemyError) as exc:
        print(
            f"skipped: PostgreSQL unreachable at {args.postgres_url} ({type(exc).__name__}: "
            f"{exc}); start it, or pass --postgres-url / set SHOP_BENCH_POSTGRES_URL"
        )
        return
    load = os.getloadavg()
    print(
        f"python {sys.version.split()[0]}, grpcio {grpc.__version__}, {os.cpu_count()} cores, "
        f"load average {load[0]:.1f}; ProcessOrder {args.duration:.0f} s at concurrency "
        f"{args.concurrency}, {args.customers} customers, one channel per caller",
        flush=True,
    )
    started = time.perf_counter()
    rounds: list[list[Result]] = []
    for n in range(args.rounds):
        results: list[Result] = []
        for config in CONFIGS:
            print(f"round {n + 1}/{args.rounds}: ({config.key}) {config.title}", flush=True)
            with fresh_database(args.postgres_url) as (database, url):
                result = asyncio.run(run_config(config, url, database, args))
            report(result)
            results.append(result)
        rounds.append(results)
        table(results)
        a, b, c = (r.rate for r in results)
        print(
            f"\ngateway scaling (c)/(b) = {c / b:.2f}   distributed/all-in-one (b)/(a) = {b / a:.2f}"
            f"   (c)/(a) = {c / a:.2f}",
            flush=True,
        )
    if args.rounds > 1:
        cb = [r[2].rate / r[1].rate for r in rounds]
        ba = [r[1].rate / r[0].rate for r in rounds]
        print(
            f"\nover {args.rounds} rounds: (c)/(b) {min(cb):.2f}–{max(cb):.2f} (median "
            f"{statistics.median(cb):.2f}), (b)/(a) {min(ba):.2f}–{max(ba):.2f} (median "
            f"{statistics.median(ba):.2f})"
        )
    print(
        f"\ntook {time.perf_counter() - started:.0f} s; load average now {os.getloadavg()[0]:.1f}"
    )


if __name__ == "__main__":
    main()
