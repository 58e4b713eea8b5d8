"""The gateway's client protocol (DESIGN §4), without I/O: topics, requests, replies, frames.

Client to server::

    {"action": "subscribe" | "unsubscribe", "topics": "trades@BTCUSDT,orderbook@ETHUSDT", "id": 7}

``topics`` may also be a JSON list of the same strings. Channels are lower case, symbols are
normalised to upper case. ``all@SYMBOL`` stands for every per-pair channel of that pair.
Server to client: data frames ``{"topic": ..., "data": ...}``, replies ``{"result": ...}`` and
errors ``{"error": {"code": 400, "message": ...}, "id": ...}``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Container, Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import orjson

PER_PAIR_CHANNELS = ("orderbook", "trades", "tickers", "snapshot_trades")
# books as a snapshot then chained deltas (DESIGN §10); not part of all@SYMBOL
DEPTH_CHANNEL = "depth"
MARKET_VIEWS = ("DATA", "SNAPSHOT")
# channels answered once from the cache, never subscribed to
ONE_SHOT_CHANNELS = frozenset({"snapshot_trades"})
# channels whose newest value is sent at once on subscribing
LATEST_VALUE_TOPICS_CHANNELS = frozenset({"orderbook", "tickers"})
MARKETS_SNAPSHOT = "markets@SNAPSHOT"
MARKETS_DATA = "markets@DATA"

_SYMBOL = re.compile(r"^[A-Z0-9]{2,30}$")

SymbolCheck = Callable[[str], bool]


class Conflation(Enum):
    """What a newer unsent frame of the same topic does to an older one in a client's queue."""

    NONE = "none"  # every frame is kept (trades, replies)
    REPLACE = "replace"  # the newer one replaces it (books, tickers, market snapshots)
    MERGE = "merge"  # deltas are merged, newer keys win (markets@DATA)
    SNAPSHOT = "snapshot"  # unsent depth@ frames become one fresh snapshot (DESIGN §10)


def conflation_of(topic: str) -> Conflation:
    channel = topic.partition("@")[0]
    if channel in LATEST_VALUE_TOPICS_CHANNELS or topic == MARKETS_SNAPSHOT:
        return Conflation.REPLACE
    if topic == MARKETS_DATA:
        return Conflation.MERGE
    if channel == DEPTH_CHANNEL:
        return Conflation.SNAPSHOT
    return Conflation.NONE


def sends_latest_on_subscribe(topic: str) -> bool:
    return conflation_of(topic) is Conflation.REPLACE


class ProtocolError(Exception):
    """A client message that cannot be served; becomes a 400 error reply."""

    def __init__(self, message: str, kind: str, request_id: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind  # label for marketpipe_bad_input_total
        self.request_id = request_id


@dataclass(frozen=True, slots=True)
class Request:
    action: str  # "subscribe" | "unsubscribe"
    topics: tuple[str, ...]  # as the client named them, normalised
    expanded: tuple[str, ...]  # concrete topics (all@X unfolded), in order, no repeats
    request_id: Any = None


def parse_topic(text: str, known_symbol: SymbolCheck) -> tuple[str, tuple[str, ...]]:
    """``"Trades@btcusdt"`` -> (``"trades@BTCUSDT"``, its concrete topics). Raises ProtocolError."""
    channel, at, symbol = text.strip().partition("@")
    channel = channel.lower()
    symbol = symbol.upper()
    if not at or not symbol:
        raise ProtocolError(f"topic {text!r} is not channel@SYMBOL", "bad_topic")
    if channel == "markets":
        if symbol not in MARKET_VIEWS:
            raise ProtocolError(
                f"unknown markets view {symbol!r}; use markets@DATA or markets@SNAPSHOT",
                "unknown_channel",
            )
        topic = f"markets@{symbol}"
        return topic, (topic,)
    if channel != "all" and channel != DEPTH_CHANNEL and channel not in PER_PAIR_CHANNELS:
        raise ProtocolError(
            f"unknown channel {channel!r}; channels: "
            + ", ".join((*PER_PAIR_CHANNELS, DEPTH_CHANNEL, "markets", "all")),
            "unknown_channel",
        )
    if not _SYMBOL.match(symbol) or not known_symbol(symbol):
        raise ProtocolError(f"unknown symbol {symbol!r}", "unknown_symbol")
    topic = f"{channel}@{symbol}"
    if channel == "all":
        return topic, tuple(f"{c}@{symbol}" for c in PER_PAIR_CHANNELS)
    return topic, (topic,)


def parse_request(
    raw: bytes | str,
    *,
    max_bytes: int,
    max_topics: int,
    known_symbol: SymbolCheck,
) -> Request:
    """One client message -> Request, or ProtocolError naming what is wrong."""
    if len(raw) > max_bytes:
        raise ProtocolError(f"message of {len(raw)} bytes exceeds {max_bytes}", "oversize")
    try:
        message = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ProtocolError("malformed JSON", "malformed_json") from None
    if not isinstance(message, dict):
        raise ProtocolError("expected a JSON object", "bad_request")
    request_id = message.get("id")
    if isinstance(request_id, dict | list):
        raise ProtocolError("id must be a number or a string", "bad_request")
    action = message.get("action")
    if action not in ("subscribe", "unsubscribe"):
        raise ProtocolError(
            "action must be 'subscribe' or 'unsubscribe'", "bad_request", request_id
        )
    names = _topic_names(message.get("topics"), request_id)
    if len(names) > max_topics:
        raise ProtocolError(
            f"too many topics: {len(names)} > {max_topics}", "too_many_topics", request_id
        )
    topics: list[str] = []
    expanded: dict[str, None] = {}
    for name in names:
        try:
            topic, concrete = parse_topic(name, known_symbol)
        except ProtocolError as exc:
            exc.request_id = request_id
            raise
        topics.append(topic)
        expanded.update(dict.fromkeys(concrete))
    return Request(action, tuple(topics), tuple(expanded), request_id)


def _topic_names(value: object, request_id: Any) -> list[str]:
    if isinstance(value, str):
        names = [part for part in value.split(",") if part.strip()]
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        names = [v for v in value if v.strip()]
    else:
        raise ProtocolError(
            "topics must be a comma-separated string or a list of strings",
            "bad_request",
            request_id,
        )
    if not names:
        raise ProtocolError("no topics given", "bad_request", request_id)
    return names


def reply(action: str, topics: tuple[str, ...], request_id: Any) -> bytes:
    result = "subscribed" if action == "subscribe" else "unsubscribed"
    return orjson.dumps({"result": result, "topics": list(topics), "id": request_id})


def error_reply(message: str, request_id: Any = None, code: int = 400) -> bytes:
    return orjson.dumps({"error": {"code": code, "message": message}, "id": request_id})


def frame_prefix(topic: str) -> bytes:
    """The bytes before the payload; the payload is spliced in as is, never re-parsed."""
    return b'{"topic":' + orjson.dumps(topic) + b',"data":'


def data_frame(prefix: bytes, payload: bytes) -> bytes:
    return prefix + payload + b"}"


def merge_data_frames(frames: Sequence[bytes]) -> bytes:
    """Unsent markets@DATA frames, oldest first, as one: the union of pairs, newer tickers
    winning."""
    merged: dict[str, Any] = {}
    topic = None
    for frame in frames:
        message = orjson.loads(frame)
        topic = message["topic"]
        merged.update(message["data"])
    return orjson.dumps({"topic": topic, "data": merged})


def json_object_from_pairs(pairs: dict[str, bytes]) -> bytes:
    """Cached ``{symbol: ticker JSON}`` hash -> one JSON object, splicing the values as is."""
    return b"{" + b",".join(orjson.dumps(k) + b":" + v for k, v in sorted(pairs.items())) + b"}"


def json_array(items: list[bytes]) -> bytes:
    return b"[" + b",".join(items) + b"]"


class KnownSymbols:
    """The symbols clients may name, replaced whole when a new assets list arrives.

    Until the first list arrives any well-formed symbol passes: refusing every client while
    the assets API is slow to answer would be worse than serving a topic that stays silent.
    """

    def __init__(self) -> None:
        self._symbols: frozenset[str] = frozenset()

    def replace(self, symbols: Iterable[str]) -> None:
        self._symbols = frozenset(symbols)

    def __len__(self) -> int:
        return len(self._symbols)

    def __call__(self, symbol: str) -> bool:
        return not self._symbols or symbol in self._symbols


def symbols_in(symbols: Container[str]) -> SymbolCheck:
    return symbols.__contains__
