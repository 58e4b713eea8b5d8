"""The ``depth@SYMBOL`` channel (DESIGN §10), pure: a snapshot, then chained deltas.

The gateway keeps each wanted symbol's book with the client library's
:class:`~marketpipe.client.book.BookKeeper`, fed by ``delta.orderbook.<SYMBOL>`` and, while it
waits for one, the full views of ``orderbook.<SYMBOL>`` (or Redis). A delta that extends the
chain goes to every subscriber as it came; anything else (a gap, a broken chain, a bad checksum,
a new leader) makes the keeper wait for a full view, and then every subscriber gets one fresh
snapshot. A new subscriber, or a backlogged one (``SendQueue``), gets a snapshot rendered from
the book at the head of the chain, so what each client receives always chains.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from marketpipe.client.book import BookKeeper, Outcome, Updated


class BadDepthMessage(ValueError):
    """A book message from NATS or Redis that is not one; the topic's chain starts again."""


class DepthTopic:
    __slots__ = ("_prefix", "_shard", "_snapshot", "keeper", "topic")

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.keeper = BookKeeper(topic.partition("@")[2])
        self._prefix = b'{"topic":' + orjson.dumps(topic) + b',"type":"delta","data":'
        self._snapshot: bytes | None = None
        self._shard: int | None = None  # DESIGN §9: the publisher's shard, as its messages say

    @property
    def waiting(self) -> bool:
        return self.keeper.waiting

    def on_view(self, payload: bytes) -> bytes | None:
        """A full view: the snapshot frame for every subscriber if it restarts the chain."""
        if not self.keeper.waiting:
            return None  # the chain goes on through the deltas
        self._feed(self.keeper.on_view, payload)
        if self.keeper.waiting:
            return None
        self._snapshot = None
        return self.snapshot()

    def on_delta(self, payload: bytes) -> bytes | None:
        """A delta: the frame for every subscriber if it extends the chain."""
        waiting = self.keeper.waiting
        outcomes = self._feed(self.keeper.on_delta, payload)
        if waiting:
            return None  # kept by the keeper until a full view arrives
        if not any(isinstance(outcome, Updated) for outcome in outcomes):
            return None  # stale, or a resync: subscribers get a snapshot after the next view
        self._snapshot = None
        return self._prefix + payload + b"}"

    def _feed(self, take: Callable[[Any], list[Outcome]], payload: bytes) -> list[Outcome]:
        try:
            message = orjson.loads(payload)
            self._shard = message.get("shard", self._shard)
            return take(message)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            self.keeper.reset("bad_message")
            raise BadDepthMessage(f"{self.topic}: {exc!r}") from None

    def snapshot(self) -> bytes | None:
        """The snapshot frame of the book at the head of the chain (None: no book yet)."""
        book = self.keeper.book
        if book is None:
            return None
        if self._snapshot is None:
            self._snapshot = orjson.dumps(
                {
                    "topic": self.topic,
                    "type": "snapshot",
                    "data": {
                        "symbol": book.symbol,
                        "lastUpdateId": book.last_update_id,
                        "E": book.event_time,
                        "seq": book.seq,
                        "epoch": book.epoch,
                        "bids": book.bids,
                        "asks": book.asks,
                        "checksum": book.checksum,
                        **({} if self._shard is None else {"shard": self._shard}),
                    },
                }
            )
        return self._snapshot
