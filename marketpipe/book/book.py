"""An exact price-level order book: the exchange's strings in, the same bytes out.

Structure (chosen by measurement, ``bench/bench_engine.py`` and ``bench/bench_orderbook.py``):
each side is ordered by a float key with the **best level last**: the key is ``float(price)`` for
bids and ``-float(price)`` for asks, so both sides ascend towards the best price and share one code
path. A side is split into chunks of about ``CHUNK`` levels: ``key_chunks`` (``array('d')``,
contiguous doubles), ``maxes`` (each chunk's best key), and per chunk a *blob*: the JSON of its
levels, best first, each followed by a comma (``b'["61234.01000000","0.51200000"],'``), encoded
once when the level is set, with the length of each in ``len_chunks`` (``array('H')``). Publishing
a view copies a few contiguous slices, and the strings are byte-identical to the exchange's. A
change finds its chunk by bisecting ``maxes`` and its place by bisecting the chunk; an insert or
delete moves at most a chunk, wherever it lands in a 5000-level side.

A diff's numbers are checked and converted in one C-level pass (:func:`checked_numbers`), not by
``float()`` per level.

Keys are exact: ``float()`` is correctly rounded and monotonic, and distinct decimals of at most
15 significant digits never share a float (Binance prices have at most 7 + 8 digits). A longer
price is refused rather than risk two prices merging into one level. Equal prices written
differently (``"1.0"``, ``"1.00"``) are one level.

Window (levels beyond the snapshot cannot rot): a side is *truncated* when its snapshot returned as
many levels as asked for (or the limit is unknown). Then the side's ``floor`` is the worst key of
the snapshot, and the side is exact for every price at or better than the floor: updates beyond it
are ignored, because the book never knew that region. A side also holds at most ``cap`` levels
(the snapshot limit): when inserts push it past ``cap + cap // 4``, the worst levels are dropped
back to ``cap`` and the floor moves in to the worst level kept. The book is therefore the true book
restricted to ``[floor, best]`` on each side, and memory is bounded.

The exchange's diffs only report changes within the top ``DIFF_HORIZON`` levels of a side, so the
window must stay inside them: after a diff a side holds fewer than ``DIFF_HORIZON`` levels (more,
and the deepest could change unseen; exactly that many on a complete side, and a new level just
beyond would go unseen). ``cap`` and its margin are clipped to fit.
"""

from __future__ import annotations

import sys
from array import array
from bisect import bisect_left
from collections.abc import Sequence
from decimal import Decimal
from typing import Annotated
from zlib import adler32

import msgspec

INF = float("inf")
MAX_EXACT_DIGITS = 15
# A price of at most 16 characters has at most 15 digits: the common case needs no counting.
_SHORT_PRICE = MAX_EXACT_DIGITS + 1
# Levels per chunk: a chunk is split past 2 * CHUNK and merged into a neighbour at CHUNK / 4.
# At most 128: half a chunk's lengths must sum exactly in one Adler-32 (see _sum).
CHUNK = 128
# Diffs report changes within the top 5000 levels of a side only (the simulator does exactly this;
# 5000 is also the deepest snapshot): a window must end above that.
DIFF_HORIZON = 5000


class BadLevel(ValueError):
    """A level no exchange can send (``kind``: ``price``, ``quantity``, ``precision``)."""

    def __init__(self, kind: str, level: Sequence[str]) -> None:
        super().__init__(f"impossible level ({kind}): {list(level)!r}")
        self.kind = kind


def encode_level(price: str, quantity: str) -> bytes:
    """The JSON of one level exactly as published."""
    return f'["{price}","{quantity}"]'.encode()


def decode_fragment(fragment: bytes) -> tuple[str, str]:
    """Back from a fragment to ``(price, quantity)`` (tests, audits; not the hot path)."""
    split = fragment.index(b'"', 2)
    return fragment[2:split].decode(), fragment[split + 3 : -2].decode()


def price_of(fragment: bytes | bytearray) -> str:
    """The price of the level whose JSON starts ``fragment``."""
    return fragment[2 : fragment.index(b'"', 2)].decode()


Piece = bytearray | memoryview


def release(pieces: Sequence[Piece]) -> None:
    """Let the book change again after :meth:`BookSide.best_json` (a viewed blob cannot grow)."""
    for piece in pieces:
        if type(piece) is memoryview:
            piece.release()


# Each level's JSON length is one byte of its chunk's ``bytearray`` of lengths, and a run of them
# is summed in C: Adler-32's low half is 1 + the sum of the bytes mod 65521, exact for up to 256
# bytes (256 * 255 < 65521). ``apply`` sums at most half a chunk (<= CHUNK lengths), the rest at
# most a whole chunk (<= 2 * CHUNK), through ``_sum``.
_EXACT_SUM = 256


def _sum(lengths: bytearray) -> int:
    if len(lengths) <= _EXACT_SUM:
        return (adler32(lengths) & 0xFFFF) - 1
    return sum(lengths)


def _start_of(lengths: bytearray, blob: bytearray, at: int) -> int:
    """Where level ``at`` of a chunk starts in its blob (after the better levels, whose lengths
    are summed from whichever end of the chunk is nearer)."""
    if at >= len(lengths) >> 1:
        return _sum(lengths[at + 1 :])
    return len(blob) - _sum(lengths[: at + 1])


def _fragment(price: str, quantity: str) -> bytes:
    """A level's JSON as a blob holds it: followed by a comma."""
    return f'["{price}","{quantity}"],'.encode()


def _check_precision(price: str, quantity: str) -> None:
    """A price too precise to keep its own float key (callers skip prices of <= 16 chars)."""
    if len(Decimal(price).normalize().as_tuple().digits) > MAX_EXACT_DIGITS:
        raise BadLevel("precision", (price, quantity))


_MAX = sys.float_info.max
_Price = Annotated[float, msgspec.Meta(gt=0.0, le=_MAX)]
_Quantity = Annotated[float, msgspec.Meta(ge=0.0, le=_MAX)]
Numbers = list[tuple[float, float]]


class _Sides(msgspec.Struct, array_like=True, gc=False):
    # A Struct keeps its converted types cached (a bare list[...] type is rebuilt on every call).
    bids: list[tuple[_Price, _Quantity]]
    asks: list[tuple[_Price, _Quantity]]


def checked_numbers(
    bids: Sequence[Sequence[str]], asks: Sequence[Sequence[str]]
) -> tuple[Numbers, Numbers]:
    """``(price, quantity)`` of each level as floats; raises BadLevel for an impossible one.

    One C-level pass for the whole diff: msgspec's lax str -> float is correctly rounded (Clinger
    fast path, Eisel-Lemire, then a high-precision fallback), so it yields exactly ``float(s)``;
    its grammar is JSON's, a subset of what ``float()`` takes; the constraints check the ranges
    (price positive and finite, quantity finite and >= 0).
    """
    try:
        sides = msgspec.convert((bids, asks), _Sides, strict=False)
    except msgspec.ValidationError:
        # Rare: find the bad level and say what is wrong with it, or accept a spelling that
        # float() takes and JSON does not (" 1", "1.", "+1").
        return [_checked(*level) for level in bids], [_checked(*level) for level in asks]
    return sides.bids, sides.asks


def _checked(price: str, quantity: str) -> tuple[float, float]:
    try:
        key = float(price)
        size = float(quantity)
    except ValueError:
        raise BadLevel("number", (price, quantity)) from None
    if not (0.0 < key < INF and 0.0 <= size < INF):
        raise BadLevel("price" if not 0.0 < key < INF else "quantity", (price, quantity))
    return key, size


class BookSide:
    """One side, best level last: ``key_chunks`` of ascending keys (``array('d')``), the parallel
    ``len_chunks`` (each level's JSON length, ``array('H')``) and ``blobs``: each chunk's levels'
    JSON, best first, each followed by a comma. ``maxes`` holds each key chunk's last (best) key.

    A level's place in its blob is the sum of the lengths of the better levels of its chunk
    (summed from whichever end of the chunk is nearer), so the JSON of the best levels is a few
    contiguous slices: rendering a view copies memory instead of visiting a Python object per
    level, which mattered at 2000 books, where those objects are never in the CPU caches.
    """

    __slots__ = (
        "blobs",
        "cap",
        "count",
        "floor",
        "is_ask",
        "key_chunks",
        "len_chunks",
        "maxes",
        "most",
    )

    def __init__(self, is_ask: bool) -> None:
        self.is_ask = is_ask
        self.key_chunks: list[array[float]] = []
        self.len_chunks: list[bytearray] = []
        self.blobs: list[bytearray] = []
        self.maxes: list[float] = []
        self.count = 0
        self.floor = -INF
        self.cap = 0
        self.most = 0  # more levels than this after a diff: prune back to cap

    def __len__(self) -> int:
        return self.count

    def load(self, levels: Sequence[Sequence[str]], numbers: Numbers, limit: int | None) -> None:
        """Replace the side by a snapshot's levels (``numbers``: from :func:`checked_numbers`)."""
        merged: dict[float, bytes] = {}
        sign = -1.0 if self.is_ask else 1.0
        for (price, quantity), (key, size) in zip(levels, numbers, strict=True):
            if len(price) > _SHORT_PRICE:
                _check_precision(price, quantity)
            if size:
                merged[key * sign] = _fragment(price, quantity)
            else:
                merged.pop(key * sign, None)
        keys = sorted(merged)
        self.key_chunks = [array("d", keys[i : i + CHUNK]) for i in range(0, len(keys), CHUNK)]
        self.len_chunks = []
        self.blobs = []
        for chunk in self.key_chunks:
            fragments = [merged[k] for k in chunk]
            try:
                self.len_chunks.append(bytearray(map(len, fragments)))
            except ValueError:  # a level's JSON longer than 255 bytes
                raise BadLevel("quantity", ("?", "?")) from None
            self.blobs.append(bytearray().join(reversed(fragments)))
        self.maxes = [chunk[-1] for chunk in self.key_chunks]
        self.count = received = len(keys)
        # the exchange never sends more than DIFF_HORIZON levels, whatever the limit asked for
        truncated = received > 0 and (limit is None or received >= min(limit, DIFF_HORIZON))
        self.floor = keys[0] if truncated else -INF
        within = DIFF_HORIZON - 1
        self.cap = min(limit if limit is not None else max(received, 1), within)
        self.most = min(self.cap + (self.cap >> 2), within)

    def apply(self, levels: Sequence[Sequence[str]], numbers: Numbers) -> None:
        """Set the levels of a diff (``numbers``: from :func:`checked_numbers`)."""
        # The hot path: the numbers were checked in C; the loop does the fewest operations.
        key_chunks, len_chunks, blobs, maxes = (
            self.key_chunks,
            self.len_chunks,
            self.blobs,
            self.maxes,
        )
        floor, is_ask, count = self.floor, self.is_ask, self.count
        try:
            for (price, quantity), (key, size) in zip(levels, numbers, strict=True):
                if len(price) > _SHORT_PRICE:
                    _check_precision(price, quantity)
                if is_ask:
                    key = -key
                if key < floor:
                    continue
                at_chunk = bisect_left(maxes, key)
                if at_chunk == len(maxes):  # better than the best level: a new best (or absent)
                    if not size:
                        continue
                    if not maxes:
                        self._start(key, f'["{price}","{quantity}"],'.encode())
                        count = 1
                        continue
                    at_chunk -= 1
                keys = key_chunks[at_chunk]
                lengths = len_chunks[at_chunk]
                blob = blobs[at_chunk]
                at = bisect_left(keys, key)
                half = len(keys) >> 1
                if at < len(keys) and keys[at] == key:
                    # the levels better than this one come before it in the blob
                    if at >= half:  # (adler32: see _sum)
                        start = (adler32(lengths[at + 1 :]) & 0xFFFF) - 1
                    else:
                        start = len(blob) - (adler32(lengths[: at + 1]) & 0xFFFF) + 1
                    end = start + lengths[at]
                    if size:
                        fragment = f'["{price}","{quantity}"],'.encode()
                        lengths[at] = len(fragment)
                        blob[start:end] = fragment
                        continue
                    del keys[at], lengths[at], blob[start:end]
                    count -= 1
                    if at == len(keys) and keys:
                        maxes[at_chunk] = keys[-1]
                    if len(keys) <= CHUNK >> 2:
                        self._merge(at_chunk)
                elif size:
                    if at >= half:
                        start = (adler32(lengths[at:]) & 0xFFFF) - 1
                    else:
                        start = len(blob) - (adler32(lengths[:at]) & 0xFFFF) + 1
                    fragment = f'["{price}","{quantity}"],'.encode()
                    lengths.insert(at, len(fragment))
                    keys.insert(at, key)
                    blob[start:start] = fragment
                    count += 1
                    if at == len(keys) - 1:
                        maxes[at_chunk] = key
                    if len(keys) > CHUNK << 1:
                        self._split(at_chunk)
        except BadLevel:
            raise
        except ValueError:  # a level's JSON longer than 255 bytes: no exchange sends that
            raise BadLevel("quantity", (price, quantity[:40] + "...")) from None
        self.count = count
        if count > self.most:
            self._prune()

    def _start(self, key: float, fragment: bytes) -> None:
        self.key_chunks.append(array("d", (key,)))
        self.len_chunks.append(bytearray((len(fragment),)))
        self.blobs.append(bytearray(fragment))
        self.maxes.append(key)

    def _split(self, at_chunk: int) -> None:
        keys, lengths, blob = (
            self.key_chunks[at_chunk],
            self.len_chunks[at_chunk],
            self.blobs[at_chunk],
        )
        better = _sum(lengths[CHUNK:])  # the better half leads the blob
        self.key_chunks.insert(at_chunk + 1, keys[CHUNK:])
        self.len_chunks.insert(at_chunk + 1, lengths[CHUNK:])
        self.blobs.insert(at_chunk + 1, blob[:better])
        del keys[CHUNK:], lengths[CHUNK:], blob[:better]
        self.maxes.insert(at_chunk, keys[-1])

    def _merge(self, at_chunk: int) -> None:
        """Fold a small (or empty) chunk into its neighbour so chunks stay few."""
        key_chunks, len_chunks, blobs, maxes = (
            self.key_chunks,
            self.len_chunks,
            self.blobs,
            self.maxes,
        )
        if len(key_chunks) == 1:
            if not key_chunks[0]:
                key_chunks.clear()
                len_chunks.clear()
                blobs.clear()
                maxes.clear()
            return
        into = at_chunk - 1 if at_chunk else 1
        low, high = min(into, at_chunk), max(into, at_chunk)
        key_chunks[low].extend(key_chunks.pop(high))
        len_chunks[low].extend(len_chunks.pop(high))
        blobs[low][:0] = blobs.pop(high)  # the better chunk's levels go first
        del maxes[high]
        maxes[low] = key_chunks[low][-1]
        if len(key_chunks[low]) > CHUNK << 1:
            self._split(low)

    def _prune(self) -> None:
        """Drop the worst levels back to ``cap``; the floor moves in to the worst level kept."""
        excess = self.count - self.cap
        self.count = self.cap
        key_chunks, len_chunks, blobs = self.key_chunks, self.len_chunks, self.blobs
        while excess >= len(key_chunks[0]):
            excess -= len(key_chunks.pop(0))
            len_chunks.pop(0)
            blobs.pop(0)
            self.maxes.pop(0)
        worst = _sum(len_chunks[0][:excess])  # the worst levels end the blob
        del key_chunks[0][:excess], len_chunks[0][:excess], blobs[0][len(blobs[0]) - worst :]
        self.floor = key_chunks[0][0]

    def best_key(self) -> float | None:
        return self.maxes[-1] if self.maxes else None

    def best_price(self) -> str:
        """The best level's price string (the side must not be empty)."""
        return price_of(self.blobs[-1])

    def best_json(self, count: int) -> list[Piece]:
        """The JSON of the best ``count`` levels, best first, comma-separated, as consecutive
        pieces: ``b"".join(pieces)`` is the body of the side's array. The pieces are views of
        the side's blobs: join them, then :func:`release` them, before the side changes."""
        pieces: list[Piece] = []
        blobs, len_chunks = self.blobs, self.len_chunks
        for at_chunk in range(len(blobs) - 1, -1, -1):
            if count <= 0:
                break
            lengths = len_chunks[at_chunk]
            size = len(lengths)
            if count < size:
                end = _start_of(lengths, blobs[at_chunk], size - count - 1) - 1
                pieces.append(memoryview(blobs[at_chunk])[:end])
                break
            count -= size
            pieces.append(
                memoryview(blobs[at_chunk])[:-1] if count == 0 or not at_chunk else blobs[at_chunk]
            )
        return pieces

    def levels_from(self, key: float) -> tuple[int, bytes | None]:
        """(how many levels have a key >= ``key``, the fragment whose key is ``key`` or None)."""
        at_chunk = bisect_left(self.maxes, key)
        if at_chunk == len(self.maxes):
            return 0, None
        keys = self.key_chunks[at_chunk]
        at = bisect_left(keys, key)
        later = sum(map(len, self.key_chunks[at_chunk + 1 :]))
        tie = None
        if keys[at] == key:
            lengths = self.len_chunks[at_chunk]
            start = _start_of(lengths, self.blobs[at_chunk], at)
            tie = bytes(self.blobs[at_chunk][start : start + lengths[at] - 1])
        return len(keys) - at + later, tie

    @property
    def fragments(self) -> list[bytes]:
        """Every level's JSON, worst first (tests, audits; not the hot path)."""
        return list(reversed(self._best_first(self.count)))

    def _best_first(self, count: int) -> list[bytes]:
        chosen: list[bytes] = []
        for lengths, blob in zip(reversed(self.len_chunks), reversed(self.blobs), strict=True):
            start = 0
            for length in reversed(lengths):
                if len(chosen) == count:
                    return chosen
                chosen.append(bytes(blob[start : start + length - 1]))
                start += length
        return chosen

    def levels(self, count: int | None = None) -> list[tuple[str, str]]:
        """Best first: ``[(price, quantity), ...]`` (not the hot path)."""
        return [
            decode_fragment(f) for f in self._best_first(self.count if count is None else count)
        ]

    def covers(self, price: str) -> bool:
        """Whether the side knows the truth at this price (inside its window)."""
        key = -float(price) if self.is_ask else float(price)
        return key >= self.floor


class OrderBook:
    """Bids and asks of one symbol. ``apply`` raises :class:`BadLevel` part-way through a diff;
    the caller must then discard the book (the sync engine does)."""

    __slots__ = ("asks", "bids")

    def __init__(self) -> None:
        self.bids = BookSide(is_ask=False)
        self.asks = BookSide(is_ask=True)

    def load(
        self,
        bids: Sequence[Sequence[str]],
        asks: Sequence[Sequence[str]],
        limit: int | None,
    ) -> None:
        """Replace the whole book by a snapshot that was asked for ``limit`` levels a side."""
        bid_numbers, ask_numbers = checked_numbers(bids, asks)
        self.bids.load(bids, bid_numbers, limit)
        self.asks.load(asks, ask_numbers, limit)

    def apply(self, bids: Sequence[Sequence[str]], asks: Sequence[Sequence[str]]) -> None:
        """Set (not add) each level's quantity; a zero quantity removes the level."""
        bid_numbers, ask_numbers = checked_numbers(bids, asks)
        if bids:  # diffs are often one-sided
            self.bids.apply(bids, bid_numbers)
        if asks:
            self.asks.apply(asks, ask_numbers)

    def clear(self) -> None:
        self.bids = BookSide(is_ask=False)
        self.asks = BookSide(is_ask=True)

    def is_crossed(self) -> bool:
        bid_maxes, ask_maxes = self.bids.maxes, self.asks.maxes
        return bool(bid_maxes and ask_maxes and bid_maxes[-1] >= -ask_maxes[-1])

    def __len__(self) -> int:
        return len(self.bids) + len(self.asks)
