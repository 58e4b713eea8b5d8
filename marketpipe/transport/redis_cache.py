"""The Redis last-value cache (DESIGN §3), written so that Redis can never slow the caller.

Writers (synchronous, never block, never raise)::

    cache = RedisCache(settings.redis_url, prefix=settings.redis_prefix, writer="trades")
    await cache.start()
    cache.set_value(orderbook_key("BTCUSDT"), payload)      # marketpipe:orderbook:BTCUSDT
    cache.push_recent(trades_key("BTCUSDT"), payload)       # LPUSH + LTRIM to the last 10
    cache.hset(MARKETS_HASH, "BTCUSDT", payload)            # or hset_many(MARKETS_HASH, {...})
    cache.hdel(MARKETS_HASH, ["OLDUSDT"])                   # a pair that left the hash
    await cache.close()                                     # best-effort final flush

Readers (the gateway) ``await get_value(key)``, ``get_recent(key)``, ``hgetall(hash)``; on a
Redis error they log, count and return an empty answer.

How: every write lands in an in-memory mirror of last values (bounded by ``max_keys``) and marks
its key dirty; one background task flushes the dirty keys every ``flush_interval`` seconds (so a
key written 1000 times between flushes is sent once: a key is written at most once per interval
and its last value always lands). A flush is sent as pipelines of about
:data:`PIPELINE_BYTES` each, so that thousands of 16 KB books never make one reply wait longer
than the socket timeout, and the event loop gets a turn between them. On an error it counts
``marketpipe_redis_errors_total``, backs off and, once Redis answers again, rewrites everything
from the mirror. Each flush also checks a per-writer sentinel key, so a Redis that came back
empty (restart, FLUSHALL, eviction) is refilled without waiting for an error.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import cast

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from marketpipe.logs import get_logger
from marketpipe.ops.metrics import REDIS_ERRORS, REDIS_PENDING_KEYS, REDIS_REFILLS

log = get_logger("marketpipe.transport.redis")

RECENT_KEEP = 10
# Bytes of values per pipeline: ~64 books of 16 KB, a few milliseconds of Redis work each.
PIPELINE_BYTES = 1 << 20
# KEYS[1]: a list, newest first; ARGV: the order field, how many to keep, then items oldest first.
# Pushes the items newer than the head (all of them on an empty list or an unreadable head).
_CATCH_UP_SCRIPT = """
local field = ARGV[1]
local newest = nil
local head = redis.call('LINDEX', KEYS[1], 0)
if head then
  local ok, decoded = pcall(cjson.decode, head)
  if ok and type(decoded) == 'table' then newest = tonumber(decoded[field]) end
end
for i = 3, #ARGV do
  local ok, item = pcall(cjson.decode, ARGV[i])
  local order = ok and type(item) == 'table' and tonumber(item[field]) or nil
  if newest == nil or (order ~= nil and order > newest) then
    redis.call('LPUSH', KEYS[1], ARGV[i])
    if order ~= nil then newest = order end
  end
end
redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[2]) - 1)
return 1
"""
MARKETS_HASH = "markets"
CACHE_ERRORS = (RedisError, OSError, TimeoutError)


def orderbook_key(symbol: str) -> str:
    return f"orderbook:{symbol}"


def trades_key(symbol: str) -> str:
    return f"trades:{symbol}"


def ticker_key(symbol: str) -> str:
    return f"ticker:{symbol}"


class RedisCache:
    def __init__(
        self,
        url: str,
        prefix: str = "marketpipe:",
        writer: str = "marketpipe",
        flush_interval: float = 0.05,
        max_keys: int = 1_000_000,
        timeout: float = 1.0,
        max_backoff: float = 5.0,
        close_seconds: float = 1.0,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self._sentinel = f"{prefix}writers:{writer}"
        self._flush_interval = flush_interval
        self._max_keys = max_keys
        self._max_backoff = max_backoff
        self.close_seconds = close_seconds
        # a whole read: connect + reply (the client's pool lock has no timeout of its own)
        self._read_seconds = 2 * timeout
        self._redis = aioredis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),  # we own retrying: a hidden retry would stall the flush
        )
        # the mirror: last values as Redis should hold them
        self._values: dict[str, bytes] = {}
        self._lists: dict[str, deque[bytes]] = {}  # newest first
        self._hashes: dict[str, dict[str, bytes]] = {}
        self._size = 0
        # what changed since the last flush
        self._dirty_values: set[str] = set()
        self._new_items: dict[str, deque[bytes]] = {}  # oldest first
        self._catch_ups: dict[str, tuple[list[bytes], str, int]] = {}
        self._dirty_fields: dict[str, set[str]] = {}
        self._deleted_fields: dict[str, set[str]] = {}
        self._refill_needed = False
        self._healthy = False
        self._overflow_logged = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def healthy(self) -> bool:
        """True when the last flush (or ping) reached Redis."""
        return self._healthy

    @property
    def pending_keys(self) -> int:
        return (
            len(self._dirty_values)
            + len(self._new_items)
            + len(self._dirty_fields)
            + len(self._deleted_fields)
        )

    # --- writers: synchronous, O(1), never touch the network ---

    def set_value(self, key: str, value: bytes) -> None:
        if key not in self._values and not self._admit():
            return
        self._values[key] = value
        self._dirty_values.add(key)
        self._wake.set()

    def push_recent(self, key: str, value: bytes, keep: int = RECENT_KEEP) -> None:
        items = self._lists.get(key)
        if items is None:
            if not self._admit():
                return
            items = self._lists[key] = deque(maxlen=keep)
        items.appendleft(value)
        new = self._new_items.get(key)
        if new is None:
            new = self._new_items[key] = deque(maxlen=keep)
        new.append(value)
        self._wake.set()

    def catch_up_recent(
        self, key: str, items: list[bytes], order_field: str, keep: int = RECENT_KEEP
    ) -> None:
        """Push, before anything pushed later, those of ``items`` (JSON objects, oldest first, with
        an increasing integer ``order_field``) that are newer than the list's head in Redis: a new
        leader's catch-up of what the previous one published but had not yet written."""
        if not items:
            return
        self._catch_ups[key] = (items, order_field, keep)
        if key not in self._lists and self._admit():
            self._lists[key] = deque(reversed(items), maxlen=keep)
        self._wake.set()

    def hset(self, name: str, field: str, value: bytes) -> None:
        self.hset_many(name, {field: value})

    def hset_many(self, name: str, mapping: dict[str, bytes]) -> None:
        fields = self._hashes.setdefault(name, {})
        dirty = self._dirty_fields.setdefault(name, set())
        deleted = self._deleted_fields.get(name)
        if deleted:
            deleted.difference_update(mapping)
        for field, value in mapping.items():
            if field not in fields and not self._admit():
                continue
            fields[field] = value
            dirty.add(field)
        self._wake.set()

    def hdel(self, name: str, fields: list[str]) -> None:
        mirrored = self._hashes.get(name, {})
        deleted = self._deleted_fields.setdefault(name, set())
        for field in fields:
            if mirrored.pop(field, None) is not None:
                self._size -= 1
            self._dirty_fields.get(name, set()).discard(field)
            deleted.add(field)
        self._wake.set()

    def _admit(self) -> bool:
        if self._size < self._max_keys:
            self._size += 1
            return True
        if not self._overflow_logged:
            log.error("cache key limit reached; new keys are not cached", max_keys=self._max_keys)
            self._overflow_logged = True
        return False

    # --- readers ---

    async def get_value(self, key: str) -> bytes | None:
        try:
            async with asyncio.timeout(self._read_seconds):
                value = cast("bytes | None", await self._redis.get(self.prefix + key))
        except CACHE_ERRORS as exc:
            self._read_failed(key, exc)
            return None
        return value

    async def get_recent(self, key: str, count: int = RECENT_KEEP) -> list[bytes]:
        try:
            async with asyncio.timeout(self._read_seconds):
                items = cast(
                    "list[bytes]", await self._redis.lrange(self.prefix + key, 0, count - 1)
                )
        except CACHE_ERRORS as exc:
            self._read_failed(key, exc)
            return []
        return items

    async def hgetall(self, name: str) -> dict[str, bytes]:
        try:
            async with asyncio.timeout(self._read_seconds):
                raw = cast("dict[bytes, bytes]", await self._redis.hgetall(self.prefix + name))
        except CACHE_ERRORS as exc:
            self._read_failed(name, exc)
            return {}
        return {k.decode(): v for k, v in raw.items()}

    def _read_failed(self, key: str, exc: BaseException) -> None:
        REDIS_ERRORS.inc()
        log.warning("redis read failed", key=key, error=repr(exc))

    # --- lifecycle ---

    async def start(self) -> None:
        """Start the flusher; does not wait for Redis (it may be down: that is fine)."""
        self._task = asyncio.create_task(self._flush_forever(), name="redis-cache-flush")

    async def close(self) -> None:
        """Flush what is pending (best effort, within ``close_seconds``), then disconnect."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            # Bounded, like every step here: shutdown must not hang on a cancellation that got
            # lost inside the client library (seen once in CI: close() waited with no timer).
            await asyncio.wait([task], timeout=self.close_seconds)
        # even if the last attempt failed (or none was made yet): Redis may answer now
        if self.pending_keys or self._refill_needed:
            try:
                async with asyncio.timeout(self.close_seconds):
                    await self.flush()
            except (*CACHE_ERRORS, asyncio.CancelledError) as exc:
                log.warning("final redis flush incomplete", error=repr(exc))
        with contextlib.suppress(*CACHE_ERRORS):
            async with asyncio.timeout(self.close_seconds):
                await self._redis.aclose()

    async def flush(self) -> None:
        """Write pending changes now (a full refill if Redis lost them); raises on Redis errors."""
        if self._refill_needed:
            await self._refill()
            return
        chunks = _Chunks(self._redis, transaction=False)
        chunks.pipe.exists(self._sentinel)
        self._queue_pending(chunks)
        first, *rest = chunks.pipes
        results = await first.execute()
        self._healthy = True
        for pipe in rest:
            await pipe.execute()
        if not results[0] and self._size:  # a reader-only user never plants the sentinel
            log.info("redis lost its data (restart or flush); refilling from memory")
            await self._refill()

    def _queue_pending(self, chunks: _Chunks) -> None:
        # Built in one synchronous pass: writes made while the pipelines are sent are pending
        # for the next flush.
        prefix = self.prefix
        values = self._values
        for key in self._dirty_values:
            chunks.set_value(prefix + key, values[key])
        for key, (older, field, keep) in self._catch_ups.items():
            pipe = chunks.take(sum(map(len, older)))
            pipe.eval(_CATCH_UP_SCRIPT, 1, prefix + key, field, keep, *older)
        for key, items in self._new_items.items():
            pipe = chunks.take(sum(map(len, items)))
            pipe.lpush(prefix + key, *items)
            pipe.ltrim(prefix + key, 0, (self._lists[key].maxlen or RECENT_KEEP) - 1)
        for name, fields in self._dirty_fields.items():
            if fields:
                values = self._hashes[name]
                pipe = chunks.take(sum(len(values[f]) for f in fields))
                pipe.hset(prefix + name, mapping={f: values[f] for f in fields})
        for name, fields in self._deleted_fields.items():
            if fields:
                chunks.pipe.hdel(prefix + name, *fields)
        chunks.finish()
        self._clear_pending()

    def _clear_pending(self) -> None:
        self._dirty_values = set()
        self._new_items = {}
        self._catch_ups = {}
        self._dirty_fields = {}
        self._deleted_fields = {}

    async def _refill(self) -> None:
        # Built in one synchronous pass so that no write can slip between the rebuild and the
        # pending set (which would push a trade twice). Each key's rebuild sits whole inside
        # one transaction: readers never see a list or a hash half rebuilt.
        prefix = self.prefix
        chunks = _Chunks(self._redis, transaction=True)
        for key, value in self._values.items():
            chunks.set_value(prefix + key, value)
        for key, items in self._lists.items():
            pipe = chunks.take(sum(map(len, items)))
            pipe.delete(prefix + key)
            if items:
                pipe.rpush(prefix + key, *items)
        for name, fields in self._hashes.items():
            pipe = chunks.take(sum(map(len, fields.values())))
            pipe.delete(prefix + name)  # fields deleted while Redis was away go too
            if fields:
                pipe.hset(prefix + name, mapping={f: v for f, v in fields.items()})
        chunks.finish()
        chunks.pipe.set(self._sentinel, b"1")  # last: only a complete refill plants it
        self._clear_pending()
        self._refill_needed = True  # until every pipeline is known to have landed
        for pipe in chunks.pipes:
            await pipe.execute()
        self._refill_needed = False
        self._healthy = True
        REDIS_REFILLS.inc()
        log.info(
            "redis refilled",
            values=len(self._values),
            lists=len(self._lists),
            hashes=len(self._hashes),
        )

    async def _flush_forever(self) -> None:
        backoff = self._flush_interval
        self._wake.set()  # a first pass learns whether Redis answers
        while True:
            await self._wake.wait()
            self._wake.clear()
            REDIS_PENDING_KEYS.set(self.pending_keys)
            try:
                await self.flush()
            except CACHE_ERRORS as exc:
                REDIS_ERRORS.inc()
                if self._healthy or backoff >= self._max_backoff:
                    log.warning("redis write failed; values kept in memory", error=repr(exc))
                self._healthy = False
                # partial pipelines may have landed: rewrite everything from the mirror later
                self._refill_needed = True
                self._clear_pending()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._max_backoff)
                self._wake.set()
                continue
            backoff = self._flush_interval
            await asyncio.sleep(self._flush_interval)


class _Chunks:
    """Pipelines of about :data:`PIPELINE_BYTES` each, filled in order.

    Plain values go into one MSET per pipeline (:meth:`set_value`): a flush of 2000 books as
    2000 SETs took ~8 ms of the event loop to queue, as ~30 MSETs well under 1 ms.
    """

    def __init__(self, redis: aioredis.Redis, transaction: bool) -> None:
        self._redis = redis
        self._transaction = transaction
        self.pipe: Pipeline = redis.pipeline(transaction=transaction)
        self.pipes = [self.pipe]
        self._bytes = 0
        self._values: dict[str, bytes] = {}  # this pipeline's MSET, sent when it is full

    def take(self, size: int) -> Pipeline:
        """The pipeline for the next command of ``size`` bytes (a new one when this one is full)."""
        if self._bytes and self._bytes + size > PIPELINE_BYTES:
            self.finish()
            self.pipe = self._redis.pipeline(transaction=self._transaction)
            self.pipes.append(self.pipe)
            self._bytes = 0
        self._bytes += size
        return self.pipe

    def set_value(self, key: str, value: bytes) -> None:
        self.take(len(value))
        self._values[key] = value

    def finish(self) -> None:
        """Queue the current pipeline's MSET (call once every value is in)."""
        if self._values:
            self.pipe.mset(self._values)
            self._values = {}
