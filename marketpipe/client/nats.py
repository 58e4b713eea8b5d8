"""The client over NATS directly (asyncio shell; the logic is in ``book.py``).

Books: ``delta.orderbook.<SYMBOL>`` all the time; ``orderbook.<SYMBOL>`` (and, with
``redis_url``, the cached book in Redis, which answers at once for a quiet pair) only while the
local book waits for a full view: at the start and after each resync.

    async with NatsMarketClient(["nats://127.0.0.1:4222"]) as client:
        async for book in client.books("BTCUSDT"):
            print(book.best_bid, book.best_ask, book.mid)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import nats
import orjson
import redis.asyncio as aioredis
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from marketpipe.client.book import Book
from marketpipe.client.streams import (
    BookStream,
    Channel,
    ClientStats,
    ConnectionCallback,
    EpochFilter,
    Message,
    ResyncCallback,
)
from marketpipe.exchange.backoff import Backoff
from marketpipe.logs import get_logger

log = get_logger(__name__)


class NatsMarketClient:
    """Books, trades, tickers and market summaries straight from marketpipe's NATS subjects."""

    def __init__(
        self,
        urls: Sequence[str],
        *,
        subject_prefix: str = "",
        redis_url: str | None = None,
        redis_prefix: str = "marketpipe:",
        on_resync: ResyncCallback | None = None,
        on_connection: ConnectionCallback | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        self.urls = list(urls)
        self.prefix = subject_prefix
        self.stats = ClientStats()
        self._redis_url, self._redis_prefix = redis_url, redis_prefix
        self._redis: aioredis.Redis | None = None
        self._on_resync, self._on_connection = on_resync, on_connection
        self._backoff = backoff or Backoff(base=0.2, cap=5.0)
        self._nc: Client | None = None
        self._epochs = EpochFilter()

    async def __aenter__(self) -> NatsMarketClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> None:
        """Connect, retrying with backoff until a server answers; nats-py then reconnects by
        itself (to any node of the cluster)."""
        while True:
            try:
                self._nc = await nats.connect(
                    servers=self.urls,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.2,
                    disconnected_cb=self._disconnected,
                    reconnected_cb=self._reconnected,
                )
                break
            except Exception as exc:  # nats-py raises several kinds; all mean "not yet"
                delay = self._backoff.next_delay()
                log.info("client_connect_failed", error=repr(exc), retry_in=round(delay, 2))
                await asyncio.sleep(delay)
        self._backoff.reset()
        self.stats.connects += 1
        if self._redis_url is not None:
            self._redis = aioredis.from_url(self._redis_url)

    async def close(self) -> None:
        if self._nc is not None:
            await self._nc.close()
        if self._redis is not None:
            await self._redis.aclose()

    async def _disconnected(self) -> None:
        self.stats.disconnects += 1
        if self._on_connection is not None:
            self._on_connection(False, "nats disconnected")

    async def _reconnected(self) -> None:
        self.stats.connects += 1
        if self._on_connection is not None:
            self._on_connection(True, "nats reconnected")

    @property
    def _client(self) -> Client:
        if self._nc is None:
            raise RuntimeError("not connected: use `async with` or await connect() first")
        return self._nc

    # --- books ---

    async def books(self, symbol: str) -> AsyncIterator[Book]:
        """Every new state of ``symbol``'s book (the newest, if the reader falls behind)."""
        stream = BookStream(symbol, self.stats, self._on_resync)
        full: Subscription | None = None

        async def follow() -> None:
            """Keep the full-view subscription open exactly while the book waits for one."""
            nonlocal full
            if stream.keeper.waiting and full is None:
                full = await self._client.subscribe(self._subject("orderbook", symbol), cb=on_view)
                await self._cached_view(symbol, stream)
            elif not stream.keeper.waiting and full is not None:
                old, full = full, None
                await old.unsubscribe()

        async def on_view(msg: Msg) -> None:
            if (message := self._decode(msg)) is not None:
                stream.view(message)
            await follow()

        async def on_delta(msg: Msg) -> None:
            if (message := self._decode(msg)) is not None:
                stream.delta(message)
            await follow()

        deltas = await self._client.subscribe(self._subject("delta.orderbook", symbol), cb=on_delta)
        await follow()
        try:
            async for book in stream.channel:
                yield book
        finally:
            await deltas.unsubscribe()
            if full is not None:
                await full.unsubscribe()

    async def _cached_view(self, symbol: str, stream: BookStream) -> None:
        if self._redis is None:
            return
        try:
            raw = await self._redis.get(f"{self._redis_prefix}orderbook:{symbol}")
        except Exception as exc:  # Redis is a cache: without it, NATS brings a view soon
            log.info("client_cache_unavailable", error=repr(exc))
            return
        if raw:
            try:
                stream.view(orjson.loads(raw))
            except (orjson.JSONDecodeError, KeyError, TypeError):
                self.stats.bad_messages += 1

    # --- trades, tickers, markets ---

    def trades(self, symbol: str) -> AsyncIterator[Message]:
        """Every trade of ``symbol``, in order (``trades.<SYMBOL>``)."""
        return self._messages(self._subject("trades", symbol), latest=False)

    def tickers(self, symbol: str) -> AsyncIterator[Message]:
        """``symbol``'s 24-hour ticker (the newest, if the reader falls behind)."""
        return self._messages(self._subject("tickers", symbol), latest=True)

    def markets(self, view: str = "SNAPSHOT") -> AsyncIterator[Message]:
        """``markets.SNAPSHOT`` (every pair each second) or ``markets.DATA`` (what changed)."""
        return self._messages(f"{self.prefix}markets.{view}", latest=view == "SNAPSHOT")

    async def _messages(self, subject: str, latest: bool) -> AsyncIterator[Message]:
        channel: Channel[Message] = Channel(self.stats, latest=latest)

        async def on_message(msg: Msg) -> None:
            message = self._decode(msg)
            if message is None:
                return
            if self._epochs.accept(subject, message):
                channel.put(message)
            else:
                self.stats.ignored["older_epoch"] += 1

        subscription = await self._client.subscribe(subject, cb=on_message)
        try:
            async for message in channel:
                yield message
        finally:
            await subscription.unsubscribe()

    def _subject(self, channel: str, symbol: str) -> str:
        return f"{self.prefix}{channel}.{symbol.upper()}"

    def _decode(self, msg: Msg) -> Any:
        try:
            message = orjson.loads(msg.data)
        except orjson.JSONDecodeError:
            self.stats.bad_messages += 1
            return None
        self.stats.messages += 1
        return message
