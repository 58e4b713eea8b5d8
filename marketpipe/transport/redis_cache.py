"""The Redis last-value cache (DESIGN §3), written so that Redis can never slow the caller.

Writers (synchronous, never block, never raise)::

    cache = RedisCache(settings.redis_url, prefix=settings.redis_prefix, writer="trades")
    await cache.start()
    cache.set_value(orderbook_key("BTCUSDT"), payload)      # marketpipe:orderbook:BTCUSDT
    cache.push_recent(trades_key("BTCUSDT"), payload)       # LPUSH + LTRIM to the last 10
    cache.hset(MARKETS_HASH, "BTCUSDT", payload)            # or hset_many(MARKETS_HASH, {...})
    cache.hdel(MARKETS_HASH, ["OLDUSDT"])                   # a pair that left the hash
    await cache.close()                                     # best-effort final flush

Every write may name the leadership term it was made under (``term=``, DESIGN §8): it then
reaches Redis only while that term lasts (pending writes of a term that ended are dropped, and
a refill never rewrites them), and conditionally: a Lua script compares the writer's epoch with
the epoch stored beside the key (in the hash ``<prefix>epochs``) and refuses an older one, so a
paused or partitioned old leader cannot overwrite what a newer one wrote. A write without a
term has epoch 0 (tools and tests).

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
import os
from collections import deque
from dataclasses import dataclass
from typing import cast

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from marketpipe.exchange.backoff import Backoff
from marketpipe.ha.term import Fence
from marketpipe.logs import get_logger
from marketpipe.ops.metrics import REDIS_ERRORS, REDIS_FENCED, REDIS_PENDING_KEYS, REDIS_REFILLS
from marketpipe.supervision import Supervised, Supervisor

log = get_logger("marketpipe.transport.redis")

RECENT_KEEP = 10
# Bytes of values per pipeline: ~64 books of 16 KB, a few milliseconds of Redis work each.
PIPELINE_BYTES = 1 << 20
EPOCHS_HASH = "epochs"
# KEYS[1]: the epochs hash; KEYS[2..n+1]: keys; ARGV[1..n]: their writers' epochs; ARGV[n+1..2n]:
# their values. SETs each key whose stored epoch is not newer; returns how many were refused.
_SET_IF_CURRENT = """
local n = #KEYS - 1
local refused = 0
for i = 1, n do
  local key = KEYS[i + 1]
  local epoch = tonumber(ARGV[i])
  local stored = tonumber(redis.call('HGET', KEYS[1], key) or '0')
  if epoch < stored then
    refused = refused + 1
  else
    redis.call('SET', key, ARGV[n + i])
    if epoch > stored then redis.call('HSET', KEYS[1], key, ARGV[i]) end
  end
end
return refused
"""
# KEYS[1]: the epochs hash; KEYS[2]: the key; ARGV[1]: the writer's epoch; then commands on
# KEYS[2], each as: name, argument count, arguments. Runs them unless the stored epoch is newer;
# returns 1 if it ran them, 0 if refused.
_COMMANDS_IF_CURRENT = """
local epoch = tonumber(ARGV[1])
local stored = tonumber(redis.call('HGET', KEYS[1], KEYS[2]) or '0')
if epoch < stored then return 0 end
if epoch > stored then redis.call('HSET', KEYS[1], KEYS[2], ARGV[1]) end
local i = 2
while i <= #ARGV do
  local name, count = ARGV[i], tonumber(ARGV[i + 1])
  redis.call(name, KEYS[2], unpack(ARGV, i + 2, i + 1 + count))
  i = i + 2 + count
end
return 1
"""
# KEYS[1]: the epochs hash; KEYS[2]: a list, newest first; ARGV: the writer's epoch, the order
# field, how many to keep, then items oldest first. Pushes the items newer than the head (all of
# them on an empty list or an unreadable head), unless the stored epoch is newer.
_CATCH_UP_IF_CURRENT = """
local epoch = tonumber(ARGV[1])
local stored = tonumber(redis.call('HGET', KEYS[1], KEYS[2]) or '0')
if epoch < stored then return 0 end
if epoch > stored then redis.call('HSET', KEYS[1], KEYS[2], ARGV[1]) end
local field = ARGV[2]
local newest = nil
local head = redis.call('LINDEX', KEYS[2], 0)
if head then
  local ok, decoded = pcall(cjson.decode, head)
  if ok and type(decoded) == 'table' then newest = tonumber(decoded[field]) end
end
for i = 4, #ARGV do
  local ok, item = pcall(cjson.decode, ARGV[i])
  local order = ok and type(item) == 'table' and tonumber(item[field]) or nil
  if newest == nil or (order ~= nil and order > newest) then
    redis.call('LPUSH', KEYS[2], ARGV[i])
    if order ~= nil then newest = order end
  end
end
redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[3]) - 1)
return 1
"""
# Lua's unpack() takes at most a few thousand values: hash writes go in pieces of this many fields
HASH_FIELDS_PER_COMMAND = 1000
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
        self._epochs = prefix + EPOCHS_HASH
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
        self._scripts: _Scripts | None = None  # loaded at the first flush after an error
        # the mirror: last values as Redis should hold them, and the term each was written in
        self._values: dict[str, bytes] = {}
        self._lists: dict[str, deque[bytes]] = {}  # newest first
        self._list_heads: dict[str, int] = {}  # the order of each list's newest item, if given
        self._hashes: dict[str, dict[str, bytes]] = {}
        self._terms: dict[str, Fence | None] = {}
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
        self._task: Supervised | None = None

    @property
    def healthy(self) -> bool:
        """True when the last flush (or ping) reached Redis."""
        return self._healthy

    @property
    def pending_keys(self) -> int:
        return (
            len(self._dirty_values)
            + len(self._new_items)
            + len(self._catch_ups)
            + len(self._dirty_fields)
            + len(self._deleted_fields)
        )

    # --- writers: synchronous, O(1), never touch the network ---

    def set_value(self, key: str, value: bytes, term: Fence | None = None) -> None:
        if key not in self._values and not self._admit():
            return
        self._values[key] = value
        self._terms[key] = term
        self._dirty_values.add(key)
        self._wake.set()

    def push_recent(
        self,
        key: str,
        value: bytes,
        keep: int = RECENT_KEEP,
        term: Fence | None = None,
        order: int | None = None,
    ) -> None:
        """Push ``value`` onto the list; with an ``order`` (an increasing id), one that is not
        newer than the list's newest is there already (a publish repeated after a reconnect)."""
        if order is not None and order <= self._list_heads.get(key, -1):
            return
        items = self._lists.get(key)
        if items is None:
            if not self._admit():
                return
            items = self._lists[key] = deque(maxlen=keep)
        if order is not None:
            self._list_heads[key] = order
        items.appendleft(value)
        self._terms[key] = term
        new = self._new_items.get(key)
        if new is None:
            new = self._new_items[key] = deque(maxlen=keep)
        new.append(value)
        self._wake.set()

    def catch_up_recent(
        self,
        key: str,
        items: list[bytes],
        order_field: str,
        keep: int = RECENT_KEEP,
        term: Fence | None = None,
    ) -> None:
        """Push, before anything pushed later, those of ``items`` (JSON objects, oldest first, with
        an increasing integer ``order_field``) that are newer than the list's head in Redis: a new
        leader's catch-up of what the previous one published but had not yet written."""
        if not items:
            return
        self._catch_ups[key] = (items, order_field, keep)
        if key not in self._lists and self._admit():
            self._lists[key] = deque(reversed(items), maxlen=keep)
        self._terms[key] = term
        self._wake.set()

    def hset(self, name: str, field: str, value: bytes, term: Fence | None = None) -> None:
        self.hset_many(name, {field: value}, term)

    def hset_many(self, name: str, mapping: dict[str, bytes], term: Fence | None = None) -> None:
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
        self._terms[name] = term
        self._wake.set()

    def hdel(self, name: str, fields: list[str], term: Fence | None = None) -> None:
        mirrored = self._hashes.get(name, {})
        deleted = self._deleted_fields.setdefault(name, set())
        for field in fields:
            if mirrored.pop(field, None) is not None:
                self._size -= 1
            self._dirty_fields.get(name, set()).discard(field)
            deleted.add(field)
        self._terms[name] = term
        self._wake.set()

    def discard(self, term: Fence) -> int:
        """Forget the pending writes of ``term`` (it ended): they never reach Redis, and the
        mirror's values of that term are never used for a refill. Returns how many keys."""
        ended = {key for key, owner in self._terms.items() if owner is term}
        dropped = 0
        for pending in (
            self._dirty_values,
            self._new_items,
            self._catch_ups,
            self._dirty_fields,
            self._deleted_fields,
        ):
            for key in ended.intersection(pending):
                if isinstance(pending, set):
                    pending.discard(key)
                else:
                    del pending[key]
                dropped += 1
        if dropped:
            REDIS_FENCED.labels("term_ended").inc(dropped)
            log.info("redis writes discarded", keys=dropped, reason="term ended")
        return dropped

    def _admit(self) -> bool:
        if self._size < self._max_keys:
            self._size += 1
            return True
        if not self._overflow_logged:
            log.error("cache key limit reached; new keys are not cached", max_keys=self._max_keys)
            self._overflow_logged = True
        return False

    def _epoch(self, key: str) -> int | None:
        """The epoch to write ``key`` with; None: its term ended (never write it again)."""
        term = self._terms.get(key)
        if term is None:
            return 0
        return term.epoch if term.valid() else None

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

    async def heads(self, keys: list[str]) -> dict[str, bytes]:
        """The newest item of each list in ``keys`` (those that have one), in one round trip;
        on a Redis error, logged and counted, an empty answer."""
        try:
            async with asyncio.timeout(self._read_seconds):
                pipe = self._redis.pipeline(transaction=False)
                for key in keys:
                    pipe.lindex(self.prefix + key, 0)
                found = await pipe.execute()
        except CACHE_ERRORS as exc:
            self._read_failed(f"{len(keys)} lists", exc)
            return {}
        return {key: head for key, head in zip(keys, found, strict=True) if head is not None}

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

    async def start(self, tasks: Supervisor | None = None) -> None:
        """Start the flusher (supervised by ``tasks``, or by a supervisor of its own); does
        not wait for Redis (it may be down: that is fine)."""
        tasks = tasks or Supervisor("redis-cache")
        self._task = tasks.spawn("redis-cache-flush", self._flush_forever)

    async def close(self) -> None:
        """Flush what is pending (best effort, within ``close_seconds``), then disconnect."""
        task, self._task = self._task, None
        if task is not None:
            # Bounded, like every step here: shutdown must not hang on a cancellation that got
            # lost inside the client library (seen once in CI: close() waited with no timer).
            await task.stop(self.close_seconds)
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
        if self._scripts is None:
            self._scripts = await _Scripts.load(self._redis)
        if self._refill_needed:
            await self._refill()
            return
        chunks = self._chunks(transaction=False)
        chunks.pipe.exists(self._sentinel)
        self._queue_pending(chunks)
        refused = 0
        for index, pipe in enumerate(chunks.pipes):
            results = await pipe.execute()
            if index == 0:
                self._healthy = True
                sentinel_found = bool(results[0])
            refused += chunks.refusals(index, results)
        if refused:
            REDIS_FENCED.labels("older_epoch").inc(refused)
            log.warning("redis refused writes of an older epoch", keys=refused)
        if not sentinel_found and self._size:  # a reader-only user never plants the sentinel
            log.info("redis lost its data (restart or flush); refilling from memory")
            await self._refill()

    def _chunks(self, transaction: bool) -> _Chunks:
        assert self._scripts is not None
        return _Chunks(self._redis, transaction, self._epochs, self._scripts)

    def _queue_pending(self, chunks: _Chunks) -> None:
        # Built in one synchronous pass: writes made while the pipelines are sent are pending
        # for the next flush.
        prefix = self.prefix
        values = self._values
        epoch_of = self._epoch
        for key in self._dirty_values:
            epoch = epoch_of(key)
            if epoch is not None:
                chunks.set_value(prefix + key, epoch, values[key])
        for key, (older, field, keep) in self._catch_ups.items():
            epoch = epoch_of(key)
            if epoch is not None:
                chunks.catch_up(prefix + key, epoch, field, keep, older)
        for key, items in self._new_items.items():
            epoch = epoch_of(key)
            if epoch is not None:
                keep = self._lists[key].maxlen or RECENT_KEEP
                chunks.commands(
                    prefix + key,
                    epoch,
                    sum(map(len, items)),
                    ("LPUSH", *items),
                    ("LTRIM", 0, keep - 1),
                )
        for name, fields in self._dirty_fields.items():
            epoch = epoch_of(name)
            if fields and epoch is not None:
                values = self._hashes[name]
                chunks.hash_fields(prefix + name, epoch, {f: values[f] for f in fields})
        for name, fields in self._deleted_fields.items():
            epoch = epoch_of(name)
            if fields and epoch is not None:
                chunks.commands(prefix + name, epoch, 0, ("HDEL", *fields))
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
        # pending set (which would push a trade twice). Each key's rebuild is one script call:
        # readers never see a list or a hash half rebuilt. Keys of terms that ended stay out.
        prefix = self.prefix
        epoch_of = self._epoch
        chunks = self._chunks(transaction=True)
        # A token first and read back last: a Redis that lost its data again meanwhile (a
        # restart, FLUSHALL) no longer holds it, and is refilled once more.
        token = os.urandom(8).hex().encode()
        chunks.pipe.set(self._sentinel, token)
        for key, value in self._values.items():
            epoch = epoch_of(key)
            if epoch is not None:
                chunks.set_value(prefix + key, epoch, value)
        for key, items in self._lists.items():
            epoch = epoch_of(key)
            if epoch is not None:
                rebuild = [("DEL",), ("RPUSH", *items)] if items else [("DEL",)]
                chunks.commands(prefix + key, epoch, sum(map(len, items)), *rebuild)
        for name, fields in self._hashes.items():
            epoch = epoch_of(name)
            if epoch is not None:  # fields deleted while Redis was away go too
                chunks.hash_fields(prefix + name, epoch, fields, replace=True)
        chunks.finish()
        chunks.pipe.get(self._sentinel)
        self._clear_pending()
        self._refill_needed = True  # until every pipeline is known to have landed
        for pipe in chunks.pipes:
            results = await pipe.execute()
        if results[-1] != token:
            log.warning("redis lost its data during the refill; refilling again")
            self._wake.set()
            return
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
        backoff = Backoff(base=self._flush_interval, cap=self._max_backoff)
        self._wake.set()  # a first pass learns whether Redis answers
        while True:
            await self._wake.wait()
            self._wake.clear()
            REDIS_PENDING_KEYS.set(self.pending_keys)
            try:
                await self.flush()
            except CACHE_ERRORS as exc:
                REDIS_ERRORS.inc()
                self._scripts = None  # a restarted Redis has forgotten them
                if self._healthy or backoff.ceiling() >= self._max_backoff:
                    log.warning("redis write failed; values kept in memory", error=repr(exc))
                self._healthy = False
                # partial pipelines may have landed: rewrite everything from the mirror later
                self._refill_needed = True
                self._clear_pending()
                await asyncio.sleep(backoff.next_delay())
                self._wake.set()
                continue
            backoff.reset()
            await asyncio.sleep(self._flush_interval)


@dataclass(frozen=True)
class _Scripts:
    """The fenced writes' Lua scripts, by SHA, as loaded into the Redis in use."""

    set_if_current: str
    commands_if_current: str
    catch_up_if_current: str

    @classmethod
    async def load(cls, redis: aioredis.Redis) -> _Scripts:
        return cls(
            *[
                str(await redis.script_load(text))
                for text in (_SET_IF_CURRENT, _COMMANDS_IF_CURRENT, _CATCH_UP_IF_CURRENT)
            ]
        )


class _Chunks:
    """Pipelines of about :data:`PIPELINE_BYTES` each, filled in order, every write fenced by
    its writer's epoch.

    Plain values go into one script call per pipeline (:meth:`set_value`): a flush of 2000 books
    as 2000 commands took ~8 ms of the event loop to queue, as ~30 calls well under 1 ms.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        transaction: bool,
        epochs_key: str,
        scripts: _Scripts,
    ) -> None:
        self._redis = redis
        self._transaction = transaction
        self._epochs = epochs_key
        self._scripts = scripts
        self.pipe: Pipeline = redis.pipeline(transaction=transaction)
        self.pipes = [self.pipe]
        self._bytes = 0
        self._values: list[tuple[str, int, bytes]] = []  # this pipeline's batch, sent when full
        # per pipeline, the replies that tell refusals: (index, True: a count, False: 0 = refused)
        self._verdicts: list[list[tuple[int, bool]]] = [[]]

    def take(self, size: int) -> Pipeline:
        """The pipeline for the next command of ``size`` bytes (a new one when this one is full)."""
        if self._bytes and self._bytes + size > PIPELINE_BYTES:
            self.finish()
            self.pipe = self._redis.pipeline(transaction=self._transaction)
            self.pipes.append(self.pipe)
            self._verdicts.append([])
            self._bytes = 0
        self._bytes += size
        return self.pipe

    def set_value(self, key: str, epoch: int, value: bytes) -> None:
        self.take(len(value))
        self._values.append((key, epoch, value))

    def commands(
        self, key: str, epoch: int, size: int, *commands: tuple[str | int | bytes, ...]
    ) -> None:
        """Run ``commands`` (name, arguments...) on ``key`` unless a newer epoch wrote it."""
        pipe = self.take(size)
        args: list[str | int | bytes] = [epoch]
        for name, *arguments in commands:
            args += (name, len(arguments), *arguments)
        self._verdicts[-1].append((len(pipe.command_stack), False))
        pipe.evalsha(self._scripts.commands_if_current, 2, self._epochs, key, *args)

    def catch_up(self, key: str, epoch: int, field: str, keep: int, items: list[bytes]) -> None:
        pipe = self.take(sum(map(len, items)))
        self._verdicts[-1].append((len(pipe.command_stack), False))
        args: list[str | int | bytes] = [epoch, field, keep, *items]
        pipe.evalsha(self._scripts.catch_up_if_current, 2, self._epochs, key, *args)

    def hash_fields(
        self, key: str, epoch: int, fields: dict[str, bytes], replace: bool = False
    ) -> None:
        items = list(fields.items())
        size = sum(len(v) for _, v in items)
        pieces = [
            ("HSET", *(x for pair in items[i : i + HASH_FIELDS_PER_COMMAND] for x in pair))
            for i in range(0, len(items), HASH_FIELDS_PER_COMMAND)
        ]
        self.commands(key, epoch, size, *([("DEL",)] if replace else []), *pieces)

    def finish(self) -> None:
        """Queue the current pipeline's batch of values (call once every value is in)."""
        if self._values:
            keys = [self._epochs, *(key for key, _, _ in self._values)]
            args = [epoch for _, epoch, _ in self._values] + [v for _, _, v in self._values]
            self._verdicts[-1].append((len(self.pipe.command_stack), True))
            self.pipe.evalsha(self._scripts.set_if_current, len(keys), *keys, *args)
            self._values = []

    def refusals(self, pipeline: int, results: list[object]) -> int:
        """How many writes a newer epoch refused, from the replies of ``pipes[pipeline]``."""
        return sum(
            int(cast(int, results[i])) if is_count else int(not results[i])
            for i, is_count in self._verdicts[pipeline]
        )
