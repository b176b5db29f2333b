"""Rate limiting: two algorithms, an in-memory backend and a Redis backend.

A :class:`Rule` says how much is allowed (``limit`` per ``period`` seconds) and how it is
counted; a :class:`Limiter` spends ``cost`` units of a key's budget under a rule and answers
with a :class:`Decision`. The :func:`grpckit.interceptors.rate_limit` interceptor turns a
denial into RESOURCE_EXHAUSTED.

Algorithms:

* ``token_bucket``: a bucket of ``burst`` tokens (default ``limit``) refilled continuously at
  ``limit / period`` tokens per second; a call takes ``cost`` tokens. Allows short bursts and
  a steady average rate.
* ``sliding_window``: the *sliding window counter* approximation (as used by Cloudflare and
  most Redis limiters), not an exact log: two fixed-window counters (the current and the
  previous window) and the estimate ``previous * (1 - elapsed / period) + current``. O(1)
  memory per key; it assumes the previous window's calls were spread evenly, so it can be off
  by a fraction of the previous window's count, never by more than ``limit``. ``burst`` is not
  used.

Denied calls never spend budget. Both backends share the math (the Redis backend runs the same
formulas in a Lua script, on the Redis server's clock).

Example::

    limiter = MemoryLimiter()
    rule = Rule(limit=10, period=1.0, burst=20)
    decision = await limiter.acquire("ip:10.0.0.7", rule)
    if not decision.allowed:
        print("retry in", decision.retry_after)
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from grpckit.logs import get_logger

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = [
    "Algorithm",
    "Clock",
    "Decision",
    "Limiter",
    "MemoryLimiter",
    "RedisLimiter",
    "Rule",
]

Algorithm = Literal["token_bucket", "sliding_window"]
#: Seconds from an arbitrary origin, never going backwards (``time.monotonic``).
Clock = Callable[[], float]

_LOG = get_logger("grpckit.ratelimit")
#: Keys longer than this are stored as their SHA-256 (metadata values are caller-controlled).
_MAX_KEY_CHARS = 200


@dataclass(frozen=True, slots=True)
class Rule:
    """``limit`` units per ``period`` seconds, counted by ``algorithm``.

    ``burst`` is the token bucket's capacity (default ``limit``); the sliding window ignores
    it. Example: ``Rule(limit=5, period=60, algorithm="sliding_window")``
    """

    limit: int
    period: float
    algorithm: Algorithm = "token_bucket"
    burst: int | None = None

    def __post_init__(self) -> None:
        if self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit}")
        if not (self.period > 0 and math.isfinite(self.period)):
            raise ValueError(f"period must be a positive number of seconds, got {self.period}")
        if self.algorithm not in ("token_bucket", "sliding_window"):
            raise ValueError(f"unknown algorithm {self.algorithm!r}")
        if self.burst is not None and self.burst < 1:
            raise ValueError(f"burst must be >= 1, got {self.burst}")

    @property
    def capacity(self) -> int:
        """The most units one key can spend at once: ``burst`` (bucket) or ``limit`` (window)."""
        if self.algorithm == "token_bucket" and self.burst is not None:
            return self.burst
        return self.limit

    @property
    def id(self) -> str:
        """A short stable identity, part of storage keys: a changed rule starts fresh budgets."""
        algorithm = "tb" if self.algorithm == "token_bucket" else "sw"
        return f"{algorithm}:{self.limit}:{float(self.period)!r}:{self.capacity}"

    def describe(self) -> str:
        """Human-readable, used as the ``QuotaFailure`` description.

        Example: ``"10 requests per 1s (token_bucket, burst 20)"``
        """
        text = f"{self.limit} requests per {self.period:g}s ({self.algorithm}"
        if self.algorithm == "token_bucket" and self.burst is not None:
            text += f", burst {self.burst}"
        return text + ")"


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer to one :meth:`Limiter.acquire`.

    ``retry_after``: seconds until the same request could succeed (0 when allowed);
    ``remaining``: whole units left after this request.
    """

    allowed: bool
    retry_after: float
    remaining: int


@runtime_checkable
class Limiter(Protocol):
    """Spends budget: one method, safe to call concurrently from one event loop."""

    async def acquire(self, key: str, rule: Rule, cost: int = 1) -> Decision:
        """Spend ``cost`` units of ``key``'s budget under ``rule``, or say when to retry.

        Raises ``ValueError`` when ``cost`` is below 1 or above ``rule.capacity`` (it could
        never succeed).
        """
        ...


def _check_cost(rule: Rule, cost: int) -> None:
    if cost < 1 or cost > rule.capacity:
        raise ValueError(f"cost must be between 1 and {rule.capacity} for {rule}, got {cost}")


def _storage_key(key: str, rule: Rule) -> str:
    if len(key) > _MAX_KEY_CHARS:
        key = "sha256:" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{rule.id}:{key}"


# -- the algorithms, on plain floats (the Lua script below mirrors them) ----------------------


class _State:
    """One key's state. Token bucket: a = tokens, b = last refill time.

    Sliding window: a = window index, b = current count, c = previous count.
    ``expires``: when the state is indistinguishable from a fresh one (safe to drop).
    """

    __slots__ = ("a", "b", "c", "expires")

    def __init__(self) -> None:
        self.a = math.nan
        self.b = 0.0
        self.c = 0.0
        self.expires = 0.0


def _token_bucket(state: _State, rule: Rule, cost: int, now: float) -> Decision:
    rate = rule.limit / rule.period
    capacity = float(rule.capacity)
    if math.isnan(state.a):
        tokens = capacity
    else:
        tokens = min(capacity, state.a + max(0.0, now - state.b) * rate)
    if tokens >= cost:
        tokens -= cost
        decision = Decision(True, 0.0, math.floor(tokens))
    else:
        decision = Decision(False, (cost - tokens) / rate, math.floor(tokens))
    state.a, state.b = tokens, now
    state.expires = now + (capacity - tokens) / rate
    return decision


def _sliding_window(state: _State, rule: Rule, cost: int, now: float) -> Decision:
    period, limit = rule.period, rule.limit
    window = math.floor(now / period)
    current, previous = state.b, state.c
    if state.a == window - 1:
        current, previous = 0.0, current
    elif state.a != window:  # fresh, or idle for two windows or more
        current, previous = 0.0, 0.0
    elapsed = now - window * period
    estimate = previous * (1.0 - elapsed / period) + current
    if estimate + cost <= limit:
        current += cost
        decision = Decision(True, 0.0, max(0, math.floor(limit - estimate - cost)))
    else:
        decision = Decision(
            False,
            _window_retry(limit, period, cost, current, previous, elapsed),
            max(0, math.floor(limit - estimate)),
        )
    state.a, state.b, state.c = float(window), current, previous
    state.expires = (window + 2) * period
    return decision


def _window_retry(
    limit: int, period: float, cost: int, current: float, previous: float, elapsed: float
) -> float:
    """Seconds until ``estimate + cost <= limit`` if nothing else is spent meanwhile."""
    if current + cost > limit:
        # Not in this window: in the next one ``current`` becomes the previous count.
        into_next = max(0.0, period * (1.0 - (limit - cost) / current)) if current else 0.0
        return max(period - elapsed + into_next, 1e-3)
    # This window, once enough of the previous window has slid out.
    needed = period * (1.0 - (limit - current - cost) / previous)
    return max(needed - elapsed, 1e-3)


_ALGORITHMS = {"token_bucket": _token_bucket, "sliding_window": _sliding_window}


class MemoryLimiter:
    """A :class:`Limiter` in this process's memory: one process, exact, no I/O.

    ``clock`` is injectable (tests pass a fake). Memory is bounded: a key whose budget is full
    again is idle and dropped (a few on each call, all of them when ``max_keys`` is reached);
    if ``max_keys`` live keys remain, the least recently used is dropped, which forgets its
    spending (fails open for that key, never closed).

    Example::

        limiter = MemoryLimiter(clock=fake_clock)
        await limiter.acquire("ip:10.0.0.7", Rule(limit=1, period=1.0))
    """

    def __init__(self, *, clock: Clock = time.monotonic, max_keys: int = 100_000) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be >= 1")
        self._clock = clock
        self._max_keys = max_keys
        self._states: OrderedDict[str, _State] = OrderedDict()

    def __len__(self) -> int:
        """The number of keys held."""
        return len(self._states)

    async def acquire(self, key: str, rule: Rule, cost: int = 1) -> Decision:
        """Spend ``cost`` units of ``key``'s budget under ``rule`` (see :class:`Limiter`)."""
        return self.acquire_now(key, rule, cost)

    def acquire_now(self, key: str, rule: Rule, cost: int = 1) -> Decision:
        """The synchronous :meth:`acquire` (no await: atomic within the event loop)."""
        _check_cost(rule, cost)
        now = self._clock()
        states = self._states
        skey = _storage_key(key, rule)
        state = states.get(skey)
        if state is None:
            self._make_room(now)
            state = states[skey] = _State()
        else:
            states.move_to_end(skey)
        decision = _ALGORITHMS[rule.algorithm](state, rule, cost, now)
        self._sweep(now, 2)
        return decision

    def _sweep(self, now: float, budget: int) -> None:
        states = self._states
        for _ in range(budget):
            if not states:
                return
            skey, state = next(iter(states.items()))
            if state.expires > now:
                return
            del states[skey]

    def _make_room(self, now: float) -> None:
        states = self._states
        if len(states) < self._max_keys:
            return
        for skey in [k for k, s in states.items() if s.expires <= now]:
            del states[skey]
        while len(states) >= self._max_keys:
            states.popitem(last=False)

    def __repr__(self) -> str:
        return f"MemoryLimiter(keys={len(self._states)}, max_keys={self._max_keys})"


# -- Redis ------------------------------------------------------------------------------------

#: KEYS[1] the state hash; ARGV: algorithm ("tb" / "sw"), limit, period, capacity, cost.
#: Returns {allowed (0/1), retry_after (string), remaining}. Time is the Redis server's.
_SCRIPT = """
local key = KEYS[1]
local limit = tonumber(ARGV[2])
local period = tonumber(ARGV[3])
local capacity = tonumber(ARGV[4])
local cost = tonumber(ARGV[5])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
if ARGV[1] == 'tb' then
  local rate = limit / period
  local s = redis.call('HMGET', key, 'tokens', 'ts')
  local tokens = tonumber(s[1])
  if tokens == nil then
    tokens = capacity
  else
    tokens = math.min(capacity, tokens + math.max(0, now - tonumber(s[2])) * rate)
  end
  local allowed, retry = 0, 0
  if tokens >= cost then
    tokens = tokens - cost
    allowed = 1
  else
    retry = (cost - tokens) / rate
  end
  redis.call('HSET', key, 'tokens', string.format('%.17g', tokens), 'ts', string.format('%.17g', now))
  redis.call('PEXPIRE', key, math.ceil((capacity - tokens) / rate * 1000) + 1000)
  return {allowed, string.format('%.17g', retry), math.floor(tokens)}
end
local window = math.floor(now / period)
local s = redis.call('HMGET', key, 'w', 'cur', 'prev')
local w = tonumber(s[1])
local current, previous = tonumber(s[2]) or 0, tonumber(s[3]) or 0
if w == window - 1 then
  previous = current
  current = 0
elseif w ~= window then
  current, previous = 0, 0
end
local elapsed = now - window * period
local estimate = previous * (1 - elapsed / period) + current
local allowed, retry, remaining = 0, 0, 0
if estimate + cost <= limit then
  current = current + cost
  allowed = 1
  remaining = math.max(0, math.floor(limit - estimate - cost))
else
  remaining = math.max(0, math.floor(limit - estimate))
  if current + cost > limit then
    local into_next = 0
    if current > 0 then into_next = math.max(0, period * (1 - (limit - cost) / current)) end
    retry = math.max(period - elapsed + into_next, 0.001)
  else
    retry = math.max(period * (1 - (limit - current - cost) / previous) - elapsed, 0.001)
  end
end
redis.call('HSET', key, 'w', string.format('%.17g', window), 'cur', current, 'prev', previous)
redis.call('PEXPIRE', key, math.ceil(period * 2000) + 1000)
return {allowed, string.format('%.17g', retry), remaining}
"""
_SCRIPT_SHA = hashlib.sha1(_SCRIPT.encode()).hexdigest()


class RedisLimiter:
    """A :class:`Limiter` in Redis, shared by every process using the same ``prefix``.

    Each :meth:`acquire` is one atomic round trip: ``EVALSHA`` of a Lua script (``EVAL`` once
    if the server does not have it yet), timed by the Redis server's clock so processes agree.
    Keys are ``{prefix}{rule id}:{key}`` hashes with a TTL: they expire once their budget
    is full again (token bucket) or two periods after last use (sliding window).

    When Redis is unreachable (connection or timeout errors) calls are served by ``fallback``
    (default: a :class:`MemoryLimiter`, i.e. per-process budgets), ``fallbacks`` counts them,
    and ``ratelimit.redis_unavailable`` is logged once per outage; Redis is tried again after
    ``retry_interval`` seconds (no connection attempt per call meanwhile), and
    ``ratelimit.redis_recovered`` is logged when it answers. Other Redis errors propagate.

    Example::

        from redis.asyncio import Redis
        limiter = RedisLimiter(Redis.from_url("redis://127.0.0.1:6379/0"), prefix="orders:rl:")
    """

    def __init__(
        self,
        client: Redis,
        *,
        prefix: str = "grpckit:ratelimit:",
        fallback: Limiter | None = None,
        retry_interval: float = 5.0,
        clock: Clock = time.monotonic,
    ) -> None:
        from redis import exceptions

        self._client = client
        self.prefix = prefix
        self.fallback: Limiter = fallback if fallback is not None else MemoryLimiter(clock=clock)
        self.retry_interval = retry_interval
        self._clock = clock
        #: Calls served by ``fallback`` because Redis was unreachable; also exported as the
        #: ``grpckit_ratelimit_fallback_total`` counter when prometheus_client is installed.
        self.fallbacks = 0
        self._metric = _fallback_counter()
        self._down_until: float | None = None
        self._unreachable: tuple[type[BaseException], ...] = (
            exceptions.ConnectionError,
            exceptions.TimeoutError,
            OSError,
        )
        self._no_script = exceptions.NoScriptError

    @property
    def degraded(self) -> bool:
        """True while Redis is considered down and calls go to ``fallback``."""
        return self._down_until is not None

    async def acquire(self, key: str, rule: Rule, cost: int = 1) -> Decision:
        """Spend ``cost`` units of ``key``'s budget under ``rule`` (see :class:`Limiter`)."""
        _check_cost(rule, cost)
        if self._down_until is not None and self._clock() < self._down_until:
            return await self._fall_back(key, rule, cost)
        try:
            reply = await self._eval(_storage_key(key, rule), rule, cost)
        except self._unreachable as exc:
            if self._down_until is None:
                _LOG.warning(
                    "ratelimit.redis_unavailable",
                    error=f"{type(exc).__name__}: {exc}",
                    retry_interval=self.retry_interval,
                )
            self._down_until = self._clock() + self.retry_interval
            return await self._fall_back(key, rule, cost)
        if self._down_until is not None:
            self._down_until = None
            _LOG.info("ratelimit.redis_recovered", fallbacks=self.fallbacks)
        allowed, retry_after, remaining = reply
        return Decision(bool(int(allowed)), float(retry_after), int(remaining))

    async def _eval(self, skey: str, rule: Rule, cost: int) -> Any:
        args = (
            self.prefix + skey,
            "tb" if rule.algorithm == "token_bucket" else "sw",
            rule.limit,
            repr(float(rule.period)),
            rule.capacity,
            cost,
        )
        try:
            return await self._client.evalsha(_SCRIPT_SHA, 1, *args)
        except self._no_script:
            return await self._client.eval(_SCRIPT, 1, *args)

    async def _fall_back(self, key: str, rule: Rule, cost: int) -> Decision:
        self.fallbacks += 1
        if self._metric is not None:
            self._metric.labels(self.prefix).inc()
        return await self.fallback.acquire(key, rule, cost)

    def __repr__(self) -> str:
        return f"RedisLimiter(prefix={self.prefix!r}, degraded={self.degraded})"


_FALLBACK_COUNTER: Any = None


def _fallback_counter() -> Any:
    """The process-wide fallback counter (``None`` without prometheus_client)."""
    global _FALLBACK_COUNTER
    if _FALLBACK_COUNTER is None:
        try:
            from prometheus_client import Counter
        except ImportError:
            return None
        from grpckit.metrics import default_registry

        _FALLBACK_COUNTER = Counter(
            "grpckit_ratelimit_fallback",
            "Rate limit decisions taken by the local fallback because Redis was unreachable.",
            ["prefix"],
            registry=default_registry(),
        )
    return _FALLBACK_COUNTER
