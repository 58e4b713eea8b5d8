"""The client over marketpipe's WebSocket gateway (asyncio shell; the logic is in ``book.py``).

One connection carries every stream the user iterates over; it is reconnected with backoff and
every topic subscribed again (books then start from the gateway's fresh snapshot). Books use the
``depth@SYMBOL`` channel: a snapshot, then chained deltas; after a resync the client subscribes
to the topic again, which brings a new snapshot.

    async with GatewayClient("ws://127.0.0.1:8080/ws") as client:
        async for book in client.books("BTCUSDT"):
            print(book.best_bid, book.best_ask, book.mid)
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator

import aiohttp
import orjson

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


def request(action: str, topics: list[str], request_id: int) -> bytes:
    return orjson.dumps({"action": action, "topics": topics, "id": request_id})


class GatewayClient:
    """Books, trades, tickers and market summaries from a marketpipe gateway."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        on_resync: ResyncCallback | None = None,
        on_connection: ConnectionCallback | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        self.url = url
        self.stats = ClientStats()
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._on_resync, self._on_connection = on_resync, on_connection
        self._backoff = backoff or Backoff(base=0.2, cap=5.0)
        self._books: dict[str, BookStream] = {}  # by topic
        self._asked: set[str] = set()  # book topics subscribed again for a fresh snapshot
        self._channels: dict[str, list[Channel[Message]]] = {}  # by topic
        self._epochs = EpochFilter()
        self._ids = itertools.count(1)
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._session: aiohttp.ClientSession | None = None
        self._runner: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()

    async def __aenter__(self) -> GatewayClient:
        self._session = aiohttp.ClientSession()
        self._runner = asyncio.create_task(self._run(), name="marketpipe-gateway-client")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._runner is not None:
            self._runner.cancel()
            await asyncio.gather(self._runner, return_exceptions=True)
        for stream in self._books.values():
            stream.channel.close()
        for channels in self._channels.values():
            for channel in channels:
                channel.close()
        if self._session is not None:
            await self._session.close()

    # --- streams ---

    async def books(self, symbol: str) -> AsyncIterator[Book]:
        """Every new state of ``symbol``'s book (the newest, if the reader falls behind)."""
        topic = f"depth@{symbol.upper()}"
        if topic in self._books:
            raise RuntimeError(f"{symbol} is already being iterated on this client")
        stream = self._books[topic] = BookStream(symbol.upper(), self.stats, self._on_resync)
        await self._send("subscribe", [topic])
        try:
            async for book in stream.channel:
                yield book
        finally:
            del self._books[topic]
            await self._send("unsubscribe", [topic])

    def trades(self, symbol: str) -> AsyncIterator[Message]:
        """Every trade of ``symbol``, in order (``trades@SYMBOL``)."""
        return self._messages(f"trades@{symbol.upper()}", latest=False)

    def tickers(self, symbol: str) -> AsyncIterator[Message]:
        """``symbol``'s 24-hour ticker (the newest, if the reader falls behind)."""
        return self._messages(f"tickers@{symbol.upper()}", latest=True)

    def markets(self, view: str = "SNAPSHOT") -> AsyncIterator[Message]:
        """``markets@SNAPSHOT`` (every pair each second) or ``markets@DATA`` (what changed)."""
        return self._messages(f"markets@{view}", latest=view == "SNAPSHOT")

    def orderbooks(self, symbol: str) -> AsyncIterator[Message]:
        """The full views of ``orderbook@SYMBOL`` as they come (no local book)."""
        return self._messages(f"orderbook@{symbol.upper()}", latest=True)

    async def _messages(self, topic: str, latest: bool) -> AsyncIterator[Message]:
        channel: Channel[Message] = Channel(self.stats, latest=latest)
        self._channels.setdefault(topic, []).append(channel)
        await self._send("subscribe", [topic])
        try:
            async for message in channel:
                yield message
        finally:
            self._channels[topic].remove(channel)
            if not self._channels[topic]:
                del self._channels[topic]
                await self._send("unsubscribe", [topic])

    def _topics(self) -> list[str]:
        return [*self._books, *self._channels]

    # --- the connection ---

    async def _send(self, action: str, topics: list[str]) -> None:
        """Send a request if connected; when not, the next connection subscribes anyway."""
        ws = self._ws
        if ws is None or ws.closed:
            return
        with contextlib.suppress(ConnectionError, aiohttp.ClientError):
            await ws.send_bytes(request(action, topics, next(self._ids)))

    async def _run(self) -> None:
        assert self._session is not None
        while True:
            try:
                async with self._session.ws_connect(
                    self.url, headers=self._headers, heartbeat=30, max_msg_size=0
                ) as ws:
                    self._ws = ws
                    self._asked.clear()  # subscribing below brings every book a snapshot
                    self.stats.connects += 1
                    self._backoff.reset()
                    if self._on_connection is not None:
                        self._on_connection(True, self.url)
                    if topics := self._topics():
                        await ws.send_bytes(request("subscribe", topics, next(self._ids)))
                    async for msg in ws:
                        if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                            await self._on_frame(msg.data)
                    detail = f"closed with code {ws.close_code}"
            except (aiohttp.ClientError, ConnectionError, TimeoutError) as exc:
                detail = repr(exc)
            self._ws = None
            self.stats.disconnects += 1
            for stream in self._books.values():
                stream.reset("reconnect")
            if self._on_connection is not None:
                self._on_connection(False, detail)
            delay = self._backoff.next_delay()
            log.info("client_disconnected", url=self.url, detail=detail, retry_in=round(delay, 2))
            await asyncio.sleep(delay)

    async def _on_frame(self, data: str | bytes) -> None:
        try:
            frame = orjson.loads(data)
            topic = frame.get("topic")
        except (orjson.JSONDecodeError, AttributeError):
            self.stats.bad_messages += 1
            return
        if topic is None:
            if "error" in frame:
                log.warning("gateway_error", error=frame["error"], id=frame.get("id"))
            return  # a reply to a request
        self.stats.messages += 1
        message = frame.get("data")
        stream = self._books.get(topic)
        if stream is not None:
            kind = frame.get("type")
            if kind == "snapshot":
                stream.view(message)
            elif kind == "delta":
                stream.delta(message)
            else:
                self.stats.bad_messages += 1
            if not stream.keeper.waiting:
                self._asked.discard(topic)
            elif topic not in self._asked:  # a resync: subscribing again brings a snapshot
                self._asked.add(topic)
                await self._send("unsubscribe", [topic])
                await self._send("subscribe", [topic])
            return
        if not self._epochs.accept(topic, message):
            self.stats.ignored["older_epoch"] += 1
            return
        for channel in self._channels.get(topic, ()):
            channel.put(message)
