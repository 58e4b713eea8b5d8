"""What both clients share: counters, callbacks, the epoch filter (pure) and the per-stream
channels that the asyncio shells fill and the user's ``async for`` drains."""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from marketpipe.client.book import BookKeeper, Ignored, Outcome, Resync, Updated

T = TypeVar("T")

Message = dict[str, Any]
ResyncCallback = Callable[[str, str, str], None]  # (symbol, reason, detail)
ConnectionCallback = Callable[[bool, str], None]  # (connected, detail)


@dataclass
class ClientStats:
    """What a client has done since it started (all counts)."""

    connects: int = 0
    disconnects: int = 0
    messages: int = 0  # data messages received
    bad_messages: int = 0  # undecodable or malformed, dropped
    book_updates: int = 0
    checksums_verified: int = 0
    resyncs: Counter[str] = field(default_factory=Counter)  # by reason
    ignored: Counter[str] = field(default_factory=Counter)  # by reason (older_epoch, stale, ...)
    conflated: int = 0  # values replaced by newer ones before the user read them


class EpochFilter:
    """DESIGN §8: drop a message whose ``epoch`` is older than one already seen for its key."""

    def __init__(self) -> None:
        self._newest: dict[str, int] = {}

    def accept(self, key: str, message: Mapping[str, Any]) -> bool:
        epoch = message.get("epoch") if isinstance(message, Mapping) else None
        if not isinstance(epoch, int):
            return True  # a message without an epoch (trades, tickers today) is not fenced
        newest = self._newest.get(key, epoch)
        if epoch < newest:
            return False
        self._newest[key] = epoch
        return True


class Channel(Generic[T]):
    """One stream's values between the shell and the user: in order, or (``latest``) only the
    newest unread one, so a slow reader of books never holds old books."""

    def __init__(self, stats: ClientStats, latest: bool, bound: int = 10_000) -> None:
        self._stats = stats
        self._values: deque[T] = deque(maxlen=1 if latest else bound)
        self._ready = asyncio.Event()
        self.closed = False

    def put(self, value: T) -> None:
        if len(self._values) == self._values.maxlen:
            self._stats.conflated += 1
        self._values.append(value)
        self._ready.set()

    def close(self) -> None:
        self.closed = True
        self._ready.set()

    async def __aiter__(self) -> AsyncIterator[T]:
        while True:
            while not self._values:
                if self.closed:
                    return
                self._ready.clear()
                await self._ready.wait()
            yield self._values.popleft()


class BookStream:
    """One symbol's keeper and channel; the shell feeds it messages and asks it whether it
    needs a full view."""

    def __init__(self, symbol: str, stats: ClientStats, on_resync: ResyncCallback | None) -> None:
        self.keeper = BookKeeper(symbol)
        self.channel: Channel[Any] = Channel(stats, latest=True)
        self._stats = stats
        self._on_resync = on_resync

    def view(self, message: Mapping[str, Any]) -> None:
        try:
            outcomes = self.keeper.on_view(message)
        except (KeyError, TypeError, ValueError):  # not a book message: count it, start again
            self._bad()
            return
        self._handle(outcomes)

    def delta(self, message: Mapping[str, Any]) -> None:
        try:
            outcomes = self.keeper.on_delta(message)
        except (KeyError, TypeError, ValueError):
            self._bad()
            return
        self._handle(outcomes)

    def _bad(self) -> None:
        self._stats.bad_messages += 1
        self.reset("bad_message")

    def reset(self, reason: str) -> None:
        """The link was lost (``reason``): whatever comes next starts from a full view."""
        resync = self.keeper.reset(reason)
        if resync is not None:
            self._handle([resync])

    def _handle(self, outcomes: list[Outcome]) -> None:
        stats = self._stats
        for outcome in outcomes:
            if isinstance(outcome, Updated):
                stats.book_updates += 1
                stats.checksums_verified += 1
                self.channel.put(outcome.book)
            elif isinstance(outcome, Resync):
                if outcome.reason == "checksum":
                    stats.checksums_verified += 1
                stats.resyncs[outcome.reason] += 1
                if self._on_resync is not None:
                    self._on_resync(self.keeper.symbol, outcome.reason, outcome.detail)
            elif isinstance(outcome, Ignored):
                stats.ignored[outcome.reason] += 1
