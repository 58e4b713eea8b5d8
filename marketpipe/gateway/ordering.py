"""Ordering guard: a client never gets an older book (or ticker) after a newer one.

Messages of one topic reach the gateway from two places that race: live NATS messages and
the Redis value read on subscribe. Both pass one guard per topic. A book's version is
(``lastUpdateId``, ``epoch``, ``seq``): the exchange's update id says which state is newer;
for the same state, the publisher's (``epoch``, ``seq``) orders repeats. A ticker's version is
its event time ``E``. Versions are read with a regex over the raw bytes: payloads are spliced
into frames, never parsed.
"""

from __future__ import annotations

import re
from collections.abc import Callable

Version = tuple[int, ...]

_INT_FIELD: dict[str, re.Pattern[bytes]] = {
    name: re.compile(rb'"' + name.encode() + rb'"\s*:\s*(\d+)')
    for name in ("lastUpdateId", "epoch", "seq", "E")
}

# a stream that stays "older" this many times in a row has been reset (an exchange or
# simulator restart renumbers update ids): follow it rather than go silent forever
RESET_AFTER_STALE = 20


def _read_ints(payload: bytes, names: tuple[str, ...]) -> Version | None:
    values = []
    for name in names:
        match = _INT_FIELD[name].search(payload)
        if match is None:
            return None
        values.append(int(match.group(1)))
    return tuple(values)


def book_version(payload: bytes) -> Version | None:
    return _read_ints(payload, ("lastUpdateId", "epoch", "seq"))


def ticker_version(payload: bytes) -> Version | None:
    return _read_ints(payload, ("E",))


VersionOf = Callable[[bytes], Version | None]


def version_reader(topic: str) -> VersionOf | None:
    channel = topic.partition("@")[0]
    if channel == "orderbook":
        return book_version
    if channel == "tickers":
        return ticker_version
    return None


class OrderGuard:
    """Per topic: accept a message only if it is newer than every one accepted before."""

    __slots__ = ("_last", "_stale_run")

    def __init__(self) -> None:
        self._last: Version | None = None
        self._stale_run = 0

    @property
    def last(self) -> Version | None:
        return self._last

    def accept(self, version: Version | None) -> bool:
        # an unversioned message cannot be ordered; let it through rather than lose it
        if version is None:
            return True
        if self._last is not None and version <= self._last:
            self._stale_run += 1
            if self._stale_run < RESET_AFTER_STALE:
                return False
        self._last = version
        self._stale_run = 0
        return True
