"""The catalog's product cache: in-process (level 1) over Redis (level 2), shared by replicas.

Level 1 is a bounded LRU with a short TTL in this process; level 2 holds serialized product
protos in Redis (``shop:catalog:product:<id>``) with a longer TTL, shared by every replica.
Every write that changes a product invalidates it: the Redis entry is deleted and the ids are
published on ``shop:catalog:invalidate``, where every replica drops them from its level 1.

Races. A read that loaded a product before a write committed must not put the old value back
after the write invalidated it. Timestamps cannot tell (two writes can share ``updated_at``,
and replicas' clocks differ), so both levels use invalidation counters:

* Redis: each invalidation increments ``shop:catalog:version:<id>``; a read notes the version
  with its lookup and stores what it loaded only if the version is still the same (one Lua
  script, atomic on the server). ``invalidate_all`` (writes whose ids are unknown) increments
  ``shop:catalog:epoch`` instead; entries carry the epoch they were stored under.
* Level 1: the same check against a local invalidation sequence, which also counts the
  invalidations other replicas publish.

Published invalidations that are missed (a dropped subscription) leave level 1 stale for at
most its TTL; the level 1 is cleared whenever the subscription is (re)established.

Redis unreachable: reads use level 1 and the loader only, never fail because of the cache;
``catalog.cache.redis_unavailable`` is logged once per outage and Redis is tried again after
``retry_interval``. Invalidations that could not reach Redis are made good on recovery by
one ``invalidate_all``. ``shop_catalog_cache_requests_total{level, result}`` counts lookups
per level (``l1``, ``l2``) and result (``hit``, ``miss``) when prometheus_client is installed.

Example::

    cache = ProductCache(Redis.from_url("redis://127.0.0.1:6379/0"))
    await cache.start()
    products = await cache.get_many(["p-1", "p-2"], load_from_database)
    await cache.invalidate(["p-1"])  # after the write committed
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from google.protobuf.message import DecodeError

from grpckit import get_logger
from shop.api.catalog.v1 import catalog_pb2

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["CacheConfig", "Loader", "ProductCache"]

Product = catalog_pb2.Product
#: Loads the products that exist among the ids (missing ids are simply absent).
Loader = Callable[[Sequence[str]], Awaitable[Mapping[str, Product]]]
#: Called with the ids another replica invalidated (``None``: all of them), once applied.
RemoteListener = Callable[[frozenset[str] | None], None]
Level = Literal["l1", "l2"]

_LOG = get_logger("shop.catalog.cache")
#: Lifetime of a version counter: far longer than any read between lookup and store.
_VERSION_TTL_MS = 3_600_000

#: KEYS: epoch, then (value, version) per product; ARGV: epoch seen, ttl in ms, then
#: (version seen, payload) per product. Stores a payload only if nothing was invalidated since.
_FILL = """
if (redis.call('GET', KEYS[1]) or '') ~= ARGV[1] then return 0 end
local stored = 0
for i = 2, #KEYS, 2 do
  if (redis.call('GET', KEYS[i + 1]) or '') == ARGV[i + 1] then
    redis.call('SET', KEYS[i], ARGV[i + 2], 'PX', ARGV[2])
    stored = stored + 1
  end
end
return stored
"""


@dataclass(frozen=True)
class CacheConfig:
    """TTLs and bounds of the two levels. Example: ``CacheConfig(local_ttl=1.0)``"""

    local_ttl: float = 5.0
    local_size: int = 10_000
    redis_ttl: float = 60.0
    #: Seconds without Redis calls after a failure (reads use level 1 and the loader).
    retry_interval: float = 5.0
    prefix: str = "shop:catalog:"

    def __post_init__(self) -> None:
        if self.local_ttl <= 0 or self.redis_ttl <= 0:
            raise ValueError("cache TTLs must be positive")
        if self.local_size < 0:
            raise ValueError("local_size must not be negative")


@dataclass(frozen=True)
class _Snapshot:
    """One Redis lookup: the epoch, the products found and every id's version."""

    epoch: bytes
    cached: dict[str, Product]
    versions: dict[str, bytes]


class _Local:
    """Level 1: a TTL + LRU map that refuses values read before their id was invalidated."""

    def __init__(self, ttl: float, size: int, clock: Callable[[], float]) -> None:
        self._ttl, self._size, self._clock = ttl, size, clock
        self._entries: OrderedDict[str, tuple[float, Product]] = OrderedDict()
        self.seq = 0  # invalidations so far
        self._touched: OrderedDict[str, int] = OrderedDict()  # id -> seq of its last one
        self._floor = 0  # an invalidation forgotten (or a clear) at this seq touched every id

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, product_id: str) -> Product | None:
        entry = self._entries.get(product_id)
        if entry is None:
            return None
        if entry[0] <= self._clock():
            del self._entries[product_id]
            return None
        self._entries.move_to_end(product_id)
        return entry[1]

    def put(self, product_id: str, product: Product, since: int) -> None:
        """Keep ``product`` unless its id was invalidated after ``since`` (a :attr:`seq`)."""
        if self._size == 0 or self._floor > since or self._touched.get(product_id, 0) > since:
            return
        self._entries[product_id] = (self._clock() + self._ttl, product)
        self._entries.move_to_end(product_id)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)

    def drop(self, product_ids: Iterable[str]) -> None:
        self.seq += 1
        for product_id in product_ids:
            self._entries.pop(product_id, None)
            self._touched[product_id] = self.seq
            self._touched.move_to_end(product_id)
        while len(self._touched) > max(self._size, 1):
            self._floor = max(self._floor, self._touched.popitem(last=False)[1])

    def clear(self) -> None:
        self.seq += 1
        self._entries.clear()
        self._touched.clear()
        self._floor = self.seq


class ProductCache:
    """Catalog products in two levels; ``redis=None`` keeps level 1 only (one process).

    Call :meth:`start` to follow other replicas' invalidations and :meth:`close` at the end.
    Returned protos are shared with the cache: read them, never modify them.

    Example::

        cache = ProductCache(redis, config=CacheConfig(local_ttl=5, redis_ttl=60))
        found = await cache.get_many(ids, load)  # {id: Product} for the ids that exist
    """

    def __init__(
        self,
        redis: Redis | None = None,
        *,
        config: CacheConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_remote_invalidation: RemoteListener | None = None,
    ) -> None:
        if redis is not None and redis.connection_pool.connection_kwargs.get("decode_responses"):
            raise ValueError("ProductCache needs a Redis client without decode_responses")
        self.config = config or CacheConfig()
        self._redis = redis
        self._clock = clock
        self._local = _Local(self.config.local_ttl, self.config.local_size, clock)
        self._on_remote = on_remote_invalidation
        self._origin = uuid.uuid4().hex
        self._channel = self.config.prefix + "invalidate"
        self._epoch_key = self.config.prefix + "epoch"
        self._fill = redis.register_script(_FILL) if redis is not None else None
        self._down_until: float | None = None
        self._unsynced = False  # an invalidation did not reach Redis
        self._listener: asyncio.Task[None] | None = None
        self._first_attempt = asyncio.Event()
        #: Lookups by ``(level, result)``, as in ``shop_catalog_cache_requests_total``.
        self.requests: Counter[tuple[Level, str]] = Counter()
        self._metric = _requests_counter()

    def __len__(self) -> int:
        """Products held in level 1."""
        return len(self._local)

    async def get_many(self, product_ids: Sequence[str], load: Loader) -> dict[str, Product]:
        """The products that exist among ``product_ids``, by id; ``load`` reads what is missed."""
        since = self._local.seq
        unique = list(dict.fromkeys(product_ids))
        found: dict[str, Product] = {}
        for product_id in unique:
            product = self._local.get(product_id)
            if product is not None:
                found[product_id] = product
        wanted = [pid for pid in unique if pid not in found]
        self._count("l1", len(found), len(wanted))
        if not wanted:
            return found
        snapshot = await self._remote_get(wanted)
        fetched = dict(snapshot.cached) if snapshot is not None else {}
        if snapshot is not None:
            self._count("l2", len(fetched), len(wanted) - len(fetched))
        missing = [pid for pid in wanted if pid not in fetched]
        loaded = await load(missing) if missing else {}
        loaded = {pid: loaded[pid] for pid in missing if pid in loaded}
        fetched.update(loaded)
        for product_id, product in fetched.items():
            self._local.put(product_id, product, since)
        if snapshot is not None and loaded:
            await self._remote_fill(snapshot, loaded)
        found.update(fetched)
        return found

    async def invalidate(self, product_ids: Iterable[str]) -> None:
        """Forget these products here, in Redis and in every replica. Never raises."""
        ids = sorted(set(product_ids))
        if not ids:
            return
        self._local.drop(ids)
        redis = await self._usable()
        if redis is None:
            self._unsynced = self._redis is not None
            return
        key = self._key
        try:
            async with redis.pipeline(transaction=True) as pipe:
                for product_id in ids:
                    pipe.incr(key("version", product_id))
                    pipe.pexpire(key("version", product_id), _VERSION_TTL_MS)
                    pipe.delete(key("product", product_id))
                pipe.publish(self._channel, " ".join([self._origin, *ids]))
                await pipe.execute()
        except Exception as exc:
            self._unsynced = True
            self._failed(exc)

    async def invalidate_all(self) -> None:
        """Forget every product here, in Redis and in every replica (writes by sku, releases)."""
        self._local.clear()
        redis = await self._usable()
        if redis is None:
            self._unsynced = self._redis is not None
            return
        try:
            await self._bump_epoch(redis)
        except Exception as exc:
            self._unsynced = True
            self._failed(exc)

    async def start(self) -> None:
        """Follow other replicas' invalidations; returns once subscribed, or Redis failed."""
        if self._redis is None or self._listener is not None:
            return
        self._listener = asyncio.create_task(self._listen(self._redis))
        with contextlib.suppress(TimeoutError):  # a Redis that accepts but never answers
            await asyncio.wait_for(self._first_attempt.wait(), self.config.retry_interval)

    async def close(self) -> None:
        """Stop following invalidations and close the Redis client."""
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        if self._redis is not None:
            await self._redis.aclose()

    # -- Redis --------------------------------------------------------------------------------

    def _key(self, kind: str, product_id: str) -> str:
        return f"{self.config.prefix}{kind}:{product_id}"

    async def _remote_get(self, ids: list[str]) -> _Snapshot | None:
        """The epoch, the cached products and the versions of ``ids`` in one round trip."""
        redis = await self._usable()
        if redis is None:
            return None
        keys = [self._epoch_key]
        keys += [self._key("product", pid) for pid in ids]
        keys += [self._key("version", pid) for pid in ids]
        try:
            values: list[Any] = await redis.mget(keys)
        except Exception as exc:
            self._failed(exc)
            return None
        epoch = values[0] or b""
        cached: dict[str, Product] = {}
        for product_id, value in zip(ids, values[1 : len(ids) + 1], strict=True):
            head, sep, body = (value or b"").partition(b":")
            if sep and head == epoch:
                with contextlib.suppress(DecodeError):
                    cached[product_id] = Product.FromString(body)
        versions = [v or b"" for v in values[len(ids) + 1 :]]
        return _Snapshot(epoch, cached, dict(zip(ids, versions, strict=True)))

    async def _remote_fill(self, snapshot: _Snapshot, loaded: Mapping[str, Product]) -> None:
        """Store what was loaded, for the ids not invalidated since the lookup."""
        if self._fill is None:
            return
        epoch = snapshot.epoch
        keys: list[str] = [self._epoch_key]
        args: list[bytes | int] = [epoch, round(self.config.redis_ttl * 1000)]
        for product_id, product in loaded.items():
            keys += [self._key("product", product_id), self._key("version", product_id)]
            args += [snapshot.versions[product_id], epoch + b":" + product.SerializeToString()]
        try:
            await self._fill(keys=keys, args=args)
        except Exception as exc:
            self._failed(exc)

    async def _bump_epoch(self, redis: Redis) -> None:
        async with redis.pipeline(transaction=True) as pipe:
            pipe.incr(self._epoch_key)
            pipe.publish(self._channel, f"{self._origin} *")
            await pipe.execute()

    async def _usable(self) -> Redis | None:
        """The Redis client unless absent or resting after a failure; catches up if needed."""
        redis = self._redis
        if redis is None or (self._down_until is not None and self._clock() < self._down_until):
            return None
        if self._unsynced:
            try:
                await self._bump_epoch(redis)
            except Exception as exc:
                self._failed(exc)
                return None
            self._unsynced = False
        if self._down_until is not None:
            self._down_until = None
            _LOG.info("catalog.cache.redis_recovered")
        return redis

    def _failed(self, exc: BaseException) -> None:
        if self._down_until is None:
            _LOG.warning(
                "catalog.cache.redis_unavailable",
                error=f"{type(exc).__name__}: {exc}",
                retry_interval=self.config.retry_interval,
            )
        self._down_until = self._clock() + self.config.retry_interval

    async def _listen(self, redis: Redis) -> None:
        """Apply other replicas' invalidations; re-subscribe after failures."""
        while True:
            try:
                async with redis.pubsub() as pubsub:
                    await pubsub.subscribe(self._channel)
                    while not _is(await pubsub.get_message(timeout=None), "subscribe"):
                        pass
                    self._local.clear()  # whatever was published before is unknown
                    self._first_attempt.set()
                    while True:
                        message = await pubsub.get_message(timeout=None)
                        if _is(message, "message"):
                            self._apply(message["data"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._failed(exc)
                self._first_attempt.set()
                await asyncio.sleep(self.config.retry_interval)

    def _apply(self, data: bytes) -> None:
        """``<origin> <id> <id>...`` or ``<origin> *``, from another replica (not this one)."""
        origin, *ids = data.decode("utf-8", "replace").split() or [self._origin]
        if origin == self._origin:
            return
        if ids == ["*"]:
            self._local.clear()
            dropped: frozenset[str] | None = None
        else:
            self._local.drop(ids)
            dropped = frozenset(ids)
        if self._on_remote is not None:
            self._on_remote(dropped)

    def _count(self, level: Level, hits: int, misses: int) -> None:
        for result, n in (("hit", hits), ("miss", misses)):
            if n:
                self.requests[level, result] += n
                if self._metric is not None:
                    self._metric.labels(level=level, result=result).inc(n)


def _is(message: Any, kind: str) -> bool:
    return isinstance(message, dict) and message.get("type") == kind


_REQUESTS_COUNTER: Any = None


def _requests_counter() -> Any:
    """The process-wide lookup counter (``None`` without prometheus_client)."""
    global _REQUESTS_COUNTER
    if _REQUESTS_COUNTER is None:
        try:
            from prometheus_client import Counter as PromCounter
        except ImportError:
            return None
        from grpckit.metrics import default_registry

        _REQUESTS_COUNTER = PromCounter(
            "shop_catalog_cache_requests",
            "Catalog product cache lookups by level (l1 in-process, l2 Redis) and result.",
            ["level", "result"],
            registry=default_registry(),
        )
    return _REQUESTS_COUNTER
