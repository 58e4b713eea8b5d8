"""One client's protocol state: its topics and limits. Messages in, an Outcome out; no I/O.

The shell feeds every inbound message with the time it arrived and carries out the Outcome:
send the reply, join or leave the topics, answer one-shot topics, or close the connection.
A malformed message costs the client an error reply only; a client sending faster than its
rate allows is flooding and is closed with 1008 (policy violation).
"""

from __future__ import annotations

from dataclasses import dataclass

from marketpipe.gateway.protocol import (
    ONE_SHOT_CHANNELS,
    ProtocolError,
    SymbolCheck,
    error_reply,
    parse_request,
    reply,
)

CLOSE_POLICY = 1008
CLOSE_TRY_AGAIN_LATER = 1013


@dataclass(frozen=True, slots=True)
class Limits:
    max_topics: int
    max_message_bytes: int
    messages_per_second: float

    @property
    def burst(self) -> float:
        # room for a page that subscribes to a few things at once on connecting
        return max(1.0, 2.0 * self.messages_per_second)


@dataclass(frozen=True, slots=True)
class Outcome:
    reply: bytes | None = None
    joined: tuple[str, ...] = ()  # topics newly subscribed
    left: tuple[str, ...] = ()  # topics no longer subscribed
    once: tuple[str, ...] = ()  # one-shot topics to answer now (snapshot_trades)
    bad_input: str | None = None  # kind, for marketpipe_bad_input_total
    close_code: int | None = None
    close_reason: str = ""


class TokenBucket:
    __slots__ = ("_last", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._last = now

    def take(self, now: float) -> bool:
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = max(self._last, now)
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


class ClientSession:
    def __init__(self, limits: Limits, known_symbol: SymbolCheck, now: float) -> None:
        self.limits = limits
        self.known_symbol = known_symbol
        self.topics: dict[str, None] = {}  # insertion-ordered set
        self._bucket = TokenBucket(limits.messages_per_second, limits.burst, now)

    def receive(self, raw: bytes | str, now: float) -> Outcome:
        if not self._bucket.take(now):
            return Outcome(
                bad_input="flood",
                close_code=CLOSE_POLICY,
                close_reason="message rate limit exceeded",
            )
        try:
            request = parse_request(
                raw,
                max_bytes=self.limits.max_message_bytes,
                max_topics=self.limits.max_topics,
                known_symbol=self.known_symbol,
            )
        except ProtocolError as exc:
            return Outcome(reply=error_reply(exc.message, exc.request_id), bad_input=exc.kind)
        once = tuple(t for t in request.expanded if t.partition("@")[0] in ONE_SHOT_CHANNELS)
        lasting = [t for t in request.expanded if t not in once]
        if request.action == "unsubscribe":
            left = tuple(t for t in lasting if t in self.topics)
            for topic in left:
                del self.topics[topic]
            return Outcome(
                reply=reply("unsubscribe", request.topics, request.request_id), left=left
            )
        joined = tuple(t for t in lasting if t not in self.topics)
        if len(self.topics) + len(joined) > self.limits.max_topics:
            return Outcome(
                reply=error_reply(
                    f"too many topics: a connection may hold {self.limits.max_topics}",
                    request.request_id,
                ),
                bad_input="too_many_topics",
            )
        self.topics.update(dict.fromkeys(joined))
        return Outcome(
            reply=reply("subscribe", request.topics, request.request_id),
            joined=joined,
            once=once,
        )
