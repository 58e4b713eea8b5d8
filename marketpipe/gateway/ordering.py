"""Ordering guard: a client never gets an older book (or ticker) after a newer one, nor a
message of a leader whose term has ended (DESIGN §8).

Messages of one topic reach the gateway from two places that race: live NATS messages and
the Redis value read on subscribe. Both pass one guard per topic. Each message has a stamp:

- its ``epoch``, where the channel's messages carry one (books, trades, tickers): once a
  message of a newer epoch was seen, a message of an older one is dropped, whatever else it
  says. An old leader that was partitioned still holds books with higher update ids than the
  new leader's first ones; they are history from a term that ended.
- its version, for latest-value channels: a book's is (``lastUpdateId``, ``epoch``, ``seq``)
  (the exchange's update id says which state is newer; for the same state the publisher's
  (``epoch``, ``seq``) orders repeats), a ticker's is its event time ``E``.

Stamps are read with a regex over the raw bytes: payloads are spliced into frames, never
parsed. ``markets@*`` messages are objects keyed by symbol, with no stamp of their own.
"""

from __future__ import annotations

import re
from collections.abc import Callable

Version = tuple[int, ...]
Stamp = tuple[int | None, Version | None]  # (epoch, version)
StampOf = Callable[[bytes], Stamp]

_INT_FIELD: dict[str, re.Pattern[bytes]] = {
    name: re.compile(rb'"' + name.encode() + rb'"\s*:\s*(\d+)')
    for name in ("lastUpdateId", "epoch", "seq", "E")
}

# a stream that stays "older" this many times in a row has been reset (an exchange or
# simulator restart renumbers update ids): follow it rather than go silent forever. Only
# messages of the newest epoch count: an old leader's stream never resets the guard.
RESET_AFTER_STALE = 20


def _read_int(payload: bytes, name: str) -> int | None:
    match = _INT_FIELD[name].search(payload)
    return int(match.group(1)) if match is not None else None


def book_stamp(payload: bytes) -> Stamp:
    epoch = _read_int(payload, "epoch")
    update_id, seq = _read_int(payload, "lastUpdateId"), _read_int(payload, "seq")
    if update_id is None or epoch is None or seq is None:
        return epoch, None
    return epoch, (update_id, epoch, seq)


def ticker_stamp(payload: bytes) -> Stamp:
    event_time = _read_int(payload, "E")
    return _read_int(payload, "epoch"), (event_time,) if event_time is not None else None


def epoch_stamp(payload: bytes) -> Stamp:
    return _read_int(payload, "epoch"), None


def stamp_reader(topic: str) -> StampOf | None:
    channel = topic.partition("@")[0]
    if channel == "orderbook":
        return book_stamp
    if channel == "tickers":
        return ticker_stamp
    if channel == "trades":
        return epoch_stamp
    return None


class OrderGuard:
    """Per topic: accept a message only if its epoch is not older than any seen, and its
    version is newer than every one accepted before."""

    __slots__ = ("_epoch", "_last", "_stale_run")

    def __init__(self) -> None:
        self._epoch = -1
        self._last: Version | None = None
        self._stale_run = 0

    def accept(self, epoch: int | None, version: Version | None, repeat_ok: bool = False) -> bool:
        """``repeat_ok``: a version equal to the last accepted one passes (nobody holds it)."""
        if epoch is not None:
            if epoch < self._epoch:
                return False
            # seen, even if its version is dropped below: the old term is over either way
            self._epoch = epoch
        # an unversioned message cannot be ordered; let it through rather than lose it
        if version is None:
            return True
        last = self._last
        if last is not None and (version < last or (version == last and not repeat_ok)):
            self._stale_run += 1
            if self._stale_run < RESET_AFTER_STALE:
                return False
        self._last = version
        self._stale_run = 0
        return True
