"""Rate limiting: the algorithms on a fake clock, the interceptor over a real server, Redis.

The Redis tests use the server at SHOP_TEST_REDIS_URL (default redis://127.0.0.1:6379/0), each
under its own key prefix, deleted afterwards. Under CI=true an unreachable Redis fails them;
elsewhere they are skipped with a message saying how to enable them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from google.rpc import error_details_pb2
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from structlog.testing import capture_logs

from grpckit.errors import StatusError
from grpckit.interceptors._ratelimit import by_metadata, by_method, by_peer_ip, rate_limit
from grpckit.ratelimit import Decision, Limiter, MemoryLimiter, RedisLimiter, Rule
from grpckit.testing import FakeServicerContext, PingServicer, fake_call, serve_in_process
from grpckit.testing.api.v1 import ping_pb2
from tests.conftest import REDIS_URL, redis_keyspace

PING = "/grpckit.testing.v1.PingService/Ping"


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def limiter(clock: FakeClock) -> MemoryLimiter:
    return MemoryLimiter(clock=clock)


async def spend(limiter: Limiter, rule: Rule, n: int, key: str = "k") -> list[bool]:
    return [(await limiter.acquire(key, rule)).allowed for _ in range(n)]


# -- Rule ----------------------------------------------------------------------------------------


def test_rule_validates_and_describes() -> None:
    with pytest.raises(ValueError, match="limit"):
        Rule(limit=0, period=1)
    with pytest.raises(ValueError, match="period"):
        Rule(limit=1, period=0)
    with pytest.raises(ValueError, match="algorithm"):
        Rule(limit=1, period=1, algorithm="leaky")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="burst"):
        Rule(limit=1, period=1, burst=0)
    assert Rule(10, 1.0, burst=20).describe() == "10 requests per 1s (token_bucket, burst 20)"
    assert Rule(5, 60, "sliding_window").describe() == "5 requests per 60s (sliding_window)"
    assert Rule(5, 60, "sliding_window", burst=9).capacity == 5


async def test_isinstance_limiter() -> None:
    assert isinstance(MemoryLimiter(), Limiter)


# -- token bucket --------------------------------------------------------------------------------


async def test_token_bucket_allows_limit_then_refills(
    limiter: MemoryLimiter, clock: FakeClock
) -> None:
    rule = Rule(limit=2, period=1.0)
    assert await limiter.acquire("k", rule) == Decision(True, 0.0, 1)
    assert await limiter.acquire("k", rule) == Decision(True, 0.0, 0)
    denied = await limiter.acquire("k", rule)
    assert not denied.allowed
    assert denied.retry_after == pytest.approx(0.5)
    clock.advance(0.49)
    assert not (await limiter.acquire("k", rule)).allowed
    clock.advance(0.01)
    assert (await limiter.acquire("k", rule)).allowed
    assert not (await limiter.acquire("k", rule)).allowed


async def test_token_bucket_burst(limiter: MemoryLimiter, clock: FakeClock) -> None:
    rule = Rule(limit=1, period=1.0, burst=5)
    assert await spend(limiter, rule, 6) == [True] * 5 + [False]
    clock.advance(2.0)  # refills at 1 per second, not back to the burst
    assert await spend(limiter, rule, 3) == [True, True, False]
    clock.advance(100.0)  # never more than the burst
    assert await spend(limiter, rule, 6) == [True] * 5 + [False]


async def test_token_bucket_cost_and_keys(limiter: MemoryLimiter) -> None:
    rule = Rule(limit=10, period=10.0)
    assert (await limiter.acquire("a", rule, cost=7)).remaining == 3
    denied = await limiter.acquire("a", rule, cost=4)
    assert not denied.allowed
    assert denied.retry_after == pytest.approx(1.0)
    assert (await limiter.acquire("b", rule, cost=10)).allowed  # another key, its own budget
    with pytest.raises(ValueError, match="cost"):
        await limiter.acquire("a", rule, cost=11)
    with pytest.raises(ValueError, match="cost"):
        await limiter.acquire("a", rule, cost=0)


async def test_different_rules_do_not_share_state(limiter: MemoryLimiter) -> None:
    assert await spend(limiter, Rule(1, 60.0), 2) == [True, False]
    assert await spend(limiter, Rule(2, 60.0), 3) == [True, True, False]


# -- sliding window ------------------------------------------------------------------------------


async def test_sliding_window_slides(clock: FakeClock) -> None:
    clock.now = 100.0  # the start of window 10 (period 10)
    limiter = MemoryLimiter(clock=clock)
    rule = Rule(limit=10, period=10.0, algorithm="sliding_window")
    assert await spend(limiter, rule, 10) == [True] * 10
    denied = await limiter.acquire("k", rule)
    assert (denied.allowed, denied.remaining) == (False, 0)
    # next window: 10 previous * 0.9 weight + 1 <= 10 only once 1s into it
    assert denied.retry_after == pytest.approx(11.0)
    clock.now = 110.0  # a fixed window would reset here; the sliding one does not
    assert not (await limiter.acquire("k", rule)).allowed
    clock.now = 110.9
    assert not (await limiter.acquire("k", rule)).allowed
    clock.now = 111.0
    assert (await limiter.acquire("k", rule)).allowed
    clock.now = 115.0  # half the previous window has slid out: 5 + 1 spent
    assert await spend(limiter, rule, 5) == [True] * 4 + [False]
    clock.now = 130.0  # two windows idle: a fresh budget
    assert await spend(limiter, rule, 11) == [True] * 10 + [False]


async def test_sliding_window_retry_after_is_exact(clock: FakeClock) -> None:
    clock.now = 200.0
    limiter = MemoryLimiter(clock=clock)
    rule = Rule(limit=4, period=10.0, algorithm="sliding_window")
    assert await spend(limiter, rule, 4) == [True] * 4
    clock.now = 212.0  # window 21, previous 4 at weight 0.8: estimate 3.2
    denied = await limiter.acquire("k", rule)
    assert not denied.allowed
    assert denied.retry_after == pytest.approx(0.5)  # estimate 3.0 at 212.5
    clock.advance(denied.retry_after - 0.01)
    assert not (await limiter.acquire("k", rule)).allowed
    clock.advance(0.01)
    assert (await limiter.acquire("k", rule)).allowed


async def test_fixed_window_boundary_burst_is_prevented(clock: FakeClock) -> None:
    clock.now = 9.9
    limiter = MemoryLimiter(clock=clock)
    rule = Rule(limit=5, period=10.0, algorithm="sliding_window")
    assert await spend(limiter, rule, 5) == [True] * 5
    clock.now = 10.1  # a fixed window would allow 5 more here
    assert await spend(limiter, rule, 2) == [False, False]


# -- bounded memory ------------------------------------------------------------------------------


async def test_idle_keys_are_evicted(clock: FakeClock) -> None:
    limiter = MemoryLimiter(clock=clock)
    rule = Rule(limit=1, period=1.0)
    for i in range(50):
        await limiter.acquire(f"k{i}", rule)
    assert len(limiter) == 50
    clock.advance(1.0)  # every bucket is full again
    for _ in range(30):
        await limiter.acquire("hot", rule)
    assert len(limiter) <= 2


async def test_max_keys_bounds_memory(clock: FakeClock) -> None:
    limiter = MemoryLimiter(clock=clock, max_keys=10)
    rule = Rule(limit=1, period=3600.0)
    for i in range(100):
        assert (await limiter.acquire(f"k{i}", rule)).allowed
    assert len(limiter) == 10
    assert not (await limiter.acquire("k99", rule)).allowed  # recent keys are kept
    long_key = "x" * 10_000
    await limiter.acquire(long_key, rule)
    assert not (await limiter.acquire(long_key, rule)).allowed


# -- key helpers ---------------------------------------------------------------------------------


def test_key_helpers() -> None:
    call = fake_call(context=FakeServicerContext(peer="ipv4:10.1.2.3:5555"))
    assert by_peer_ip(call) == "ip:10.1.2.3"
    assert by_peer_ip(fake_call(context=FakeServicerContext(peer="ipv6:[::1]:5555"))) == "ip:::1"
    assert (
        by_peer_ip(fake_call(context=FakeServicerContext(peer="ipv6:%5B::1%5D:5555"))) == "ip:::1"
    )
    assert by_peer_ip(fake_call(context=FakeServicerContext(peer="unix:/s"))) == "peer:unix:/s"
    assert by_method(call) == "method:" + PING
    user = by_metadata("X-User-Id")
    with_user = fake_call(
        context=FakeServicerContext(peer="ipv4:10.1.2.3:1", metadata=[("x-user-id", "42")])
    )
    assert user(with_user) == "x-user-id:42"
    assert user(call) == "ip:10.1.2.3"  # falls back to the peer


def test_rate_limit_rejects_bad_rule_keys() -> None:
    with pytest.raises(ValueError, match="rule key"):
        rate_limit(MemoryLimiter(), {"Ping": Rule(1, 1)})


# -- the interceptor over a real server ----------------------------------------------------------


async def ping(stub: object, metadata: tuple[tuple[str, str], ...] = ()) -> None:
    await stub.Ping(ping_pb2.PingRequest(message="hi"), metadata=metadata)  # type: ignore[attr-defined]


async def test_interceptor_rejects_the_n_plus_first_call() -> None:
    interceptor = rate_limit(MemoryLimiter(), {PING: Rule(limit=3, period=60.0)}, domain="test")
    async with serve_in_process(PingServicer(), interceptors=[interceptor]) as server:
        for _ in range(3):
            await ping(server.ping)
        with pytest.raises(grpc.RpcError) as caught:
            await ping(server.ping)
        # another method has no rule: not limited
        async for _ in server.ping.PingServerStream(ping_pb2.PingServerStreamRequest()):
            pass
    err = StatusError.from_rpc_error(caught.value)
    assert err.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert err.reason == "RATE_LIMITED"
    assert err.error_info is not None and err.error_info.domain == "test"
    retry = err.detail(error_details_pb2.RetryInfo)
    assert retry is not None
    assert 19.0 < retry.retry_delay.ToTimedelta().total_seconds() <= 20.0
    quota = err.detail(error_details_pb2.QuotaFailure)
    assert quota is not None
    assert [(v.subject, v.description) for v in quota.violations] == [
        ("ip:127.0.0.1", "3 requests per 60s (token_bucket)")
    ]


async def test_interceptor_default_rule_and_metadata_key() -> None:
    interceptor = rate_limit(
        MemoryLimiter(), {"*": Rule(limit=1, period=60.0)}, key=by_metadata("x-user")
    )
    async with serve_in_process(PingServicer(), interceptors=[interceptor]) as server:
        await ping(server.ping, (("x-user", "alice"),))
        await ping(server.ping, (("x-user", "bob"),))
        with pytest.raises(grpc.RpcError) as caught:
            await ping(server.ping, (("x-user", "alice"),))
        # health is never limited
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        health = health_pb2_grpc.HealthStub(server.channel)
        for _ in range(3):
            await health.Check(health_pb2.HealthCheckRequest())
    quota = StatusError.from_rpc_error(caught.value).detail(error_details_pb2.QuotaFailure)
    assert quota is not None and quota.violations[0].subject == "x-user:alice"


async def test_interceptor_with_rule_function() -> None:
    seen: list[str] = []

    def rules(call: object) -> Rule | None:
        seen.append(getattr(call, "method", ""))
        return Rule(limit=1, period=60.0, algorithm="sliding_window")

    interceptor = rate_limit(MemoryLimiter(), rules, key=by_method)
    async with serve_in_process(PingServicer(), interceptors=[interceptor]) as server:
        await ping(server.ping)
        with pytest.raises(grpc.RpcError) as caught:
            await ping(server.ping)
    err = StatusError.from_rpc_error(caught.value)
    assert err.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert seen == ["Ping", "Ping"]


# -- Redis ---------------------------------------------------------------------------------------


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    async with redis_keyspace("ratelimit") as value:
        yield value


@pytest.fixture
async def clients() -> AsyncIterator[tuple[Redis, Redis]]:
    """Two clients, as two processes would have."""
    first, second = Redis.from_url(REDIS_URL), Redis.from_url(REDIS_URL)
    yield first, second
    await first.aclose()
    await second.aclose()


async def test_redis_two_limiters_share_one_budget(
    prefix: str, clients: tuple[Redis, Redis]
) -> None:
    a, b = (RedisLimiter(client, prefix=prefix) for client in clients)
    rule = Rule(limit=3, period=60.0)
    assert [(await lim.acquire("ip:1", rule)).allowed for lim in (a, b, a)] == [True] * 3
    denied = await b.acquire("ip:1", rule)
    assert not denied.allowed
    assert 19.0 < denied.retry_after <= 20.0
    assert denied.remaining == 0
    assert (await a.acquire("ip:2", rule)).allowed  # another key
    assert a.fallbacks == b.fallbacks == 0
    keys = [key async for key in clients[0].scan_iter(match=prefix + "*")]
    assert len(keys) == 2
    ttl = await clients[0].pttl(keys[0])
    assert 0 < ttl <= 61_000  # idle keys expire


async def test_redis_concurrent_acquires_are_atomic(
    prefix: str, clients: tuple[Redis, Redis]
) -> None:
    a, b = (RedisLimiter(client, prefix=prefix) for client in clients)
    rule = Rule(limit=10, period=60.0, algorithm="sliding_window")
    results = await asyncio.gather(*(lim.acquire("k", rule) for lim in (a, b) * 15))
    assert sum(d.allowed for d in results) == 10


async def test_redis_sliding_window_and_burst(prefix: str, clients: tuple[Redis, Redis]) -> None:
    limiter = RedisLimiter(clients[0], prefix=prefix)
    window = Rule(limit=2, period=60.0, algorithm="sliding_window")
    assert await spend(limiter, window, 3) == [True, True, False]
    denied = await limiter.acquire("k", window)
    assert 0 < denied.retry_after <= 120.0
    bucket = Rule(limit=1, period=60.0, burst=4)
    assert await spend(limiter, bucket, 5) == [True] * 4 + [False]
    with pytest.raises(ValueError, match="cost"):
        await limiter.acquire("k", bucket, cost=5)


async def test_redis_unreachable_falls_back_and_logs_once(clock: FakeClock) -> None:
    # redis-py retries with backoff by default (seconds per call): not here
    client = Redis(
        host="127.0.0.1", port=1, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0)
    )
    limiter = RedisLimiter(client, retry_interval=5.0, clock=clock)
    rule = Rule(limit=2, period=60.0)
    try:
        with capture_logs() as logs:
            assert await spend(limiter, rule, 3) == [True, True, False]
            clock.advance(6.0)  # tries Redis again: still down, still no second log
            assert not (await limiter.acquire("k", rule)).allowed
    finally:
        await client.aclose()
    assert limiter.fallbacks == 4
    assert limiter.degraded
    events = [entry["event"] for entry in logs]
    assert events == ["ratelimit.redis_unavailable"]
    assert logs[0]["log_level"] == "warning"


async def test_redis_recovers_after_outage(
    prefix: str, clients: tuple[Redis, Redis], clock: FakeClock
) -> None:
    limiter = RedisLimiter(clients[0], prefix=prefix, retry_interval=5.0, clock=clock)
    limiter._down_until = clock() + 5.0  # as after a failed call
    rule = Rule(limit=5, period=60.0)
    await limiter.acquire("k", rule)
    assert limiter.fallbacks == 1
    clock.advance(5.0)
    with capture_logs() as logs:
        await limiter.acquire("k", rule)
    assert not limiter.degraded
    assert [entry["event"] for entry in logs] == ["ratelimit.redis_recovered"]


async def test_interceptor_over_redis(prefix: str, clients: tuple[Redis, Redis]) -> None:
    interceptor = rate_limit(RedisLimiter(clients[0], prefix=prefix), {PING: Rule(2, 60.0)})
    async with serve_in_process(PingServicer(), interceptors=[interceptor]) as server:
        await ping(server.ping)
        await ping(server.ping)
        with pytest.raises(grpc.RpcError) as caught:
            await ping(server.ping)
    err = StatusError.from_rpc_error(caught.value)
    assert err.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert err.reason == "RATE_LIMITED"


async def test_redis_loads_the_script_when_the_server_lacks_it() -> None:
    from redis.exceptions import NoScriptError

    class Client:
        def __init__(self) -> None:
            self.calls: list[str] = []

        async def evalsha(self, sha: str, numkeys: int, *args: object) -> list[object]:
            self.calls.append("evalsha")
            raise NoScriptError("NOSCRIPT No matching script")

        async def eval(self, script: str, numkeys: int, *args: object) -> list[object]:
            self.calls.append("eval")
            assert numkeys == 1 and str(args[0]).startswith("p:tb:1:60.0:1:")
            return [1, b"0", 0]

    client = Client()
    limiter = RedisLimiter(client, prefix="p:")  # type: ignore[arg-type]
    assert await limiter.acquire("k", Rule(1, 60.0)) == Decision(True, 0.0, 0)
    assert client.calls == ["evalsha", "eval"]
