"""A recording of exchange frames played back as an exchange, pure (``ExchangeSource``).

The recording holds every frame of the combined streams with its receive time, each symbol's
REST snapshot (taken once the symbol's diffs were flowing), and a first ``META`` record naming
the symbols. Played back, each frame is due at its recorded offset from the first record
(divided by ``speed``; ``speed`` 0: as fast as the loop takes them), and each symbol's true book
is rebuilt the way a client builds its own (the snapshot, then the diffs that follow it, with
:class:`~marketpipe.book.sync.BookSync`), so a REST depth request gets the book at the point the
stream has reached: a client syncing from the replay gets the books the recording saw.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import msgspec
import orjson

from marketpipe.book.sync import BookSync
from marketpipe.exchange.messages import BadFrame, DepthUpdate, decode_combined_depth
from marketpipe.exchange.rest import DepthSnapshot
from marketpipe.recording.format import Kind, Record, combined_data

# frames handed out per call at full speed, so the loop serves clients in between
BATCH = 2000
META_NAME = "start"


def meta_record(at_ns: int, symbols: list[str], streams: list[str], limit: int) -> Record:
    body = {"symbols": symbols, "streams": streams, "snapshot_limit": limit}
    return Record(at_ns, Kind.META, META_NAME, orjson.dumps(body))


class ReplayBook:
    __slots__ = ("sync",)

    def __init__(self, sync: BookSync) -> None:
        self.sync = sync

    def depth(self, limit: int | None = None) -> dict[str, Any]:
        book = self.sync.book
        return {
            "lastUpdateId": self.sync.last_update_id,
            "bids": [list(level) for level in book.bids.levels(limit)],
            "asks": [list(level) for level in book.asks.levels(limit)],
        }


class ReplayExchange:
    """Frames due by time, and the books they lead to."""

    def __init__(self, records: Iterable[Record], speed: float = 1.0) -> None:
        if speed < 0:
            raise ValueError("speed must be >= 0 (0: as fast as possible)")
        self.speed = speed
        self._records: Iterator[Record] = iter(records)
        first = next(self._records, None)
        if first is None or first.kind is not Kind.META:
            raise ValueError("not an exchange recording (no META record first)")
        meta = orjson.loads(first.payload)
        self._symbols: list[str] = meta["symbols"]
        self._limit: int = meta["snapshot_limit"]
        self._first_ns = first.at_ns
        self._started: float | None = None
        self._next: Record | None = next(self._records, None)
        self.books = {s: BookSync(s, buffer_size=100_000) for s in self._symbols}
        self.frames = 0
        self.finished = self._next is None

    def symbols(self) -> list[str]:
        return list(self._symbols)

    def due(self, now: float) -> list[tuple[str, str, bytes]]:
        if self._started is None:
            self._started = now
        out: list[tuple[str, str, bytes]] = []
        elapsed = now - self._started
        while self._next is not None and len(out) < BATCH:
            record = self._next
            if self.speed and (record.at_ns - self._first_ns) / 1e9 / self.speed > elapsed:
                break
            self._next = next(self._records, None)
            if record.kind is Kind.FRAME:
                event = self._frame(record.payload)
                if event is not None:
                    out.append(event)
            elif record.kind is Kind.SNAPSHOT:
                self._snapshot(record.name, record.payload)
        self.finished = self._next is None
        self.frames += len(out)
        return out

    def book(self, symbol: str) -> ReplayBook | None:
        sync = self.books.get(symbol)
        return ReplayBook(sync) if sync is not None and sync.is_live else None

    def _frame(self, frame: bytes) -> tuple[str, str, bytes] | None:
        split = combined_data(frame)
        if split is None:
            return None
        stream, payload = split
        symbol = stream.partition("@")[0].upper()
        if stream.endswith("@depth@100ms") and symbol in self.books:
            try:
                update = decode_combined_depth(frame).data
            except BadFrame:
                return symbol, stream, payload  # replayed as recorded, as the exchange sent it
            if isinstance(update, DepthUpdate):
                self.books[symbol].on_diff(update)
        return symbol, stream, payload

    def _snapshot(self, symbol: str, payload: bytes) -> None:
        sync = self.books.get(symbol)
        if sync is not None:
            sync.on_snapshot(msgspec.json.decode(payload, type=DepthSnapshot), self._limit)
