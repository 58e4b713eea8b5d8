"""Pure planning for a service's exchange stream connections: events in, actions out.

Streams are spread over *slots* (logical connections, at most ``per_connection`` streams each,
never rebalanced so that adding a pair disturbs nobody). Each slot has a *primary* WebSocket link
and, while it is being replaced, a *replacement* link. The shell (``streams.py``) reports what
happens on the wire (opened, a frame of stream X, a control reply, ``serverShutdown``, closed)
and executes what ``tick()`` returns: open a link, send a control message, close a link, tell
the consumer that streams went up or down.

Decisions made here:
- live SUBSCRIBE / UNSUBSCRIBE bring each link to its slot's wanted set, paced under the
  exchange's 5 messages/s per connection (pongs count too);
- a link older than the maximum age (less a little jitter, so links opened together do not age
  out together) or one that got ``serverShutdown`` is replaced make-before-break: the new link
  opens with the same streams, and the old one closes only once the new one has every stream
  subscribed, has delivered, and has delivered every stream the old one delivered meanwhile
  (or ``overlap_seconds`` have passed since its first frame). Nothing is lost; duplicates are;
- a link with no frame at all (data or ping) for ``silent_seconds`` is dropped: frames may be
  lost already, so its streams go down and a new link is opened;
- one stream the consumer finds dead on a link that is otherwise alive is *resubscribed*:
  UNSUBSCRIBE, then SUBSCRIBE once the exchange acknowledged it (paced like any control
  message); the stream is not reported down meanwhile (the consumer already knows);
- a link that drops without a live replacement takes its streams down; reconnection waits a
  full-jitter backoff that resets once a link delivers.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from marketpipe.config import Settings
from marketpipe.exchange.backoff import Backoff

EXCHANGE_MAX_STREAMS_PER_CONNECTION = 1024
# The exchange drops a connection sending more than 5 messages/s; stay clear of it.
CONTROL_MESSAGES_PER_SECOND = 4
STREAMS_PER_CONTROL_MESSAGE = 100
# Streams beyond this many URL characters are subscribed after connecting (request-line limits).
URL_STREAMS_MAX_CHARS = 6000
AGE_JITTER = 0.05


# Actions the shell executes.
@dataclass(frozen=True)
class OpenLink:
    link_id: int
    streams: tuple[str, ...]
    reason: str  # "initial" or why the previous link is being replaced / was lost


@dataclass(frozen=True)
class SendControl:
    link_id: int
    request_id: int
    method: str  # SUBSCRIBE or UNSUBSCRIBE
    streams: tuple[str, ...]


@dataclass(frozen=True)
class CloseLink:
    link_id: int
    reason: str


@dataclass(frozen=True)
class StreamsUp:
    streams: frozenset[str]


@dataclass(frozen=True)
class StreamsDown:
    streams: frozenset[str]
    reason: str


Action = OpenLink | SendControl | CloseLink | StreamsUp | StreamsDown


@dataclass
class ControlPacer:
    """At most ``rate`` messages in any one-second window."""

    rate: int = CONTROL_MESSAGES_PER_SECOND
    _sent: deque[float] = field(default_factory=deque)

    def wait(self, now: float) -> float:
        while self._sent and self._sent[0] <= now - 1.0:
            self._sent.popleft()
        if len(self._sent) < self.rate:
            return 0.0
        return self._sent[0] + 1.0 - now

    def sent(self, now: float) -> None:
        self._sent.append(now)


def url_streams(streams: Iterable[str]) -> tuple[str, ...]:
    """The streams that fit in a connection URL; the rest are subscribed once connected."""
    chosen, length = [], 0
    for stream in sorted(streams):
        length += len(stream) + 1
        if length > URL_STREAMS_MAX_CHARS:
            break
        chosen.append(stream)
    return tuple(chosen)


@dataclass
class LinkState:
    link_id: int
    created_at: float
    retire_after: float
    url: frozenset[str]
    connected_at: float | None = None
    last_frame_at: float = 0.0
    first_frame_at: float | None = None
    subscribed: set[str] = field(default_factory=set)
    pending: dict[int, tuple[str, frozenset[str]]] = field(default_factory=dict)
    rejected: set[str] = field(default_factory=set)
    seen: set[str] = field(default_factory=set)
    resubscribing: set[str] = field(default_factory=set)  # to unsubscribe, then subscribe again
    replace_reason: str | None = None
    pacer: ControlPacer = field(default_factory=ControlPacer)

    def in_flight(self, method: str) -> set[str]:
        return {s for m, streams in self.pending.values() if m == method for s in streams}

    def fully_subscribed(self, wanted: set[str]) -> bool:
        return wanted - self.rejected <= self.subscribed


@dataclass
class Slot:
    wanted: set[str] = field(default_factory=set)
    primary: LinkState | None = None
    replacement: LinkState | None = None
    up: set[str] = field(default_factory=set)
    next_connect_at: float = 0.0
    lost_reason: str = "initial"
    backoff: Backoff = field(default_factory=Backoff)

    def links(self) -> list[LinkState]:
        return [link for link in (self.primary, self.replacement) if link is not None]


@dataclass
class StreamPlan:
    per_connection: int = 200
    silent_seconds: float = 30.0
    max_age_seconds: float = 23 * 3600.0
    overlap_seconds: float = 5.0
    backoff_cap_seconds: float = 30.0
    rng: random.Random = field(default_factory=random.Random, repr=False)
    slots: list[Slot] = field(default_factory=list)
    _slot_of_stream: dict[str, Slot] = field(default_factory=dict, repr=False)
    _slot_of_link: dict[int, Slot] = field(default_factory=dict, repr=False)
    _links: dict[int, LinkState] = field(default_factory=dict, repr=False)
    _outbox: list[Action] = field(default_factory=list, repr=False)
    _next_id: int = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> StreamPlan:
        return cls(
            per_connection=settings.streams_per_connection,
            silent_seconds=settings.silent_connection_seconds,
            max_age_seconds=settings.max_connection_age_seconds,
            backoff_cap_seconds=settings.reconnect_backoff_max_seconds,
        )

    def __post_init__(self) -> None:
        if not 1 <= self.per_connection <= EXCHANGE_MAX_STREAMS_PER_CONNECTION:
            raise ValueError("streams per connection must be within 1..1024")

    # What the consumer wants.
    @property
    def streams(self) -> set[str]:
        return set(self._slot_of_stream)

    def set_streams(self, streams: Iterable[str]) -> None:
        wanted = set(streams)
        self.remove(self.streams - wanted)
        self.add(wanted)

    def add(self, streams: Iterable[str]) -> None:
        for stream in sorted(set(streams) - self._slot_of_stream.keys()):
            slot = next((s for s in self.slots if len(s.wanted) < self.per_connection), None)
            if slot is None:
                slot = Slot(backoff=Backoff(cap=self.backoff_cap_seconds, rng=self.rng))
                self.slots.append(slot)
            slot.wanted.add(stream)
            self._slot_of_stream[stream] = slot

    def remove(self, streams: Iterable[str]) -> None:
        for stream in streams:
            slot = self._slot_of_stream.pop(stream, None)
            if slot is not None:
                slot.wanted.discard(stream)
                slot.up.discard(stream)

    def resubscribe(self, stream: str) -> bool:
        """Subscribe ``stream`` afresh on the link that holds it (it delivers nothing although
        the link is alive). False when no connected link holds it (nothing to do: a link that
        subscribes it anew is on its way)."""
        slot = self._slot_of_stream.get(stream)
        link = None if slot is None else slot.primary
        if link is None or link.connected_at is None or stream not in link.subscribed:
            return False
        link.resubscribing.add(stream)
        return True

    # What happened on the wire.
    def link(self, link_id: int) -> LinkState | None:
        return self._links.get(link_id)

    def on_open(self, link_id: int, now: float) -> None:
        link = self._links.get(link_id)
        if link is None:
            return
        link.connected_at = link.last_frame_at = now
        link.subscribed = set(link.url)
        slot = self._slot_of_link[link_id]
        if link is slot.replacement and slot.primary is not None:
            slot.primary.seen.clear()  # from now on, what the old link delivers must be covered

    def on_frame(self, link_id: int, stream: str | None, now: float) -> None:
        """A data frame of ``stream``, or any other frame (ping, reply) when None. Hot path."""
        link = self._links.get(link_id)
        if link is None:
            return
        link.last_frame_at = now
        if stream is not None:
            link.seen.add(stream)
            if link.first_frame_at is None:
                link.first_frame_at = now
                self._slot_of_link[link_id].backoff.reset()

    def on_ping(self, link_id: int, now: float) -> None:
        """A ping arrived and the shell answered it (the pong counts against the rate)."""
        link = self._links.get(link_id)
        if link is not None:
            link.last_frame_at = now
            link.pacer.sent(now)

    def on_reply(self, link_id: int, request_id: int, error: str | None) -> bool:
        """A control reply; False when it matches no request of that link."""
        link = self._links.get(link_id)
        if link is None or request_id not in link.pending:
            return False
        method, streams = link.pending.pop(request_id)
        if error is not None:
            # a refused UNSUBSCRIBE of a resubscription leaves the stream subscribed: give up
            kept = streams & link.resubscribing if method == "UNSUBSCRIBE" else frozenset()
            link.resubscribing -= streams
            link.rejected |= streams - kept
        elif method == "SUBSCRIBE":
            link.subscribed |= streams
            link.resubscribing -= streams
        else:
            link.subscribed -= streams
        return True

    def on_shutdown_notice(self, link_id: int) -> None:
        link = self._links.get(link_id)
        if link is not None and link.replace_reason is None:
            link.replace_reason = "server_shutdown"

    def on_closed(self, link_id: int, now: float, reason: str = "closed") -> None:
        link = self._links.pop(link_id, None)
        slot = self._slot_of_link.pop(link_id, None)
        if link is None or slot is None:
            return
        if link is slot.replacement:
            slot.replacement = None
            slot.next_connect_at = now + slot.backoff.next_delay()
            return
        if link is not slot.primary:
            return
        slot.primary, slot.replacement = slot.replacement, None
        if slot.up:
            self._outbox.append(StreamsDown(frozenset(slot.up), reason))
            slot.up.clear()
        slot.lost_reason = reason
        if slot.primary is None:
            slot.next_connect_at = now + slot.backoff.next_delay()

    # Decisions.
    def tick(self, now: float) -> list[Action]:
        for slot in list(self.slots):
            self._tick_slot(slot, now)
        actions, self._outbox = self._outbox, []
        return actions

    def _tick_slot(self, slot: Slot, now: float) -> None:
        if not slot.wanted:
            for link in slot.links():
                self._close(link, now, "unused")
            self.slots.remove(slot)
            return
        primary = slot.primary
        if primary is None:
            if now >= slot.next_connect_at:
                slot.primary = self._open(slot, now, slot.lost_reason)
            return
        if primary.connected_at is not None and now - primary.last_frame_at >= self.silent_seconds:
            self._close(primary, now, "silent")
            return
        if primary.replace_reason is None and now - primary.created_at >= primary.retire_after:
            primary.replace_reason = "max_age"
        if primary.replace_reason and slot.replacement is None and now >= slot.next_connect_at:
            slot.replacement = self._open(slot, now, primary.replace_reason)
        replacement = slot.replacement
        if replacement is not None and replacement.connected_at is not None:
            if now - replacement.last_frame_at >= self.silent_seconds:
                self._close(replacement, now, "silent")
            elif self._covers(replacement, primary, slot, now):
                slot.primary, slot.replacement = replacement, None
                self._close(primary, now, "replaced")
        for link in slot.links():
            if link.connected_at is not None:
                self._sync(link, slot, now)
        self._note_up(slot)

    def _covers(self, new: LinkState, old: LinkState, slot: Slot, now: float) -> bool:
        if new.first_frame_at is None or not new.fully_subscribed(slot.wanted):
            return False
        return old.seen <= new.seen or now - new.first_frame_at >= self.overlap_seconds

    def _note_up(self, slot: Slot) -> None:
        primary = slot.primary
        if primary is None or primary.connected_at is None:
            return
        lost = slot.up - primary.subscribed - primary.resubscribing
        if lost:
            self._outbox.append(StreamsDown(frozenset(lost), "replaced"))
            slot.up -= lost
        newly = (primary.subscribed & slot.wanted) - slot.up
        if newly:
            slot.up |= newly
            self._outbox.append(StreamsUp(frozenset(newly)))

    def _sync(self, link: LinkState, slot: Slot, now: float) -> None:
        link.resubscribing &= slot.wanted
        subscribe = slot.wanted - link.subscribed - link.rejected - link.in_flight("SUBSCRIBE")
        unsubscribe = (
            (link.subscribed - slot.wanted) | (link.subscribed & link.resubscribing)
        ) - link.in_flight("UNSUBSCRIBE")
        for method, streams in (("UNSUBSCRIBE", unsubscribe), ("SUBSCRIBE", subscribe)):
            ordered = sorted(streams)
            while ordered and link.pacer.wait(now) == 0.0:
                chunk, ordered = (
                    ordered[:STREAMS_PER_CONTROL_MESSAGE],
                    ordered[STREAMS_PER_CONTROL_MESSAGE:],
                )
                self._next_id += 1
                link.pending[self._next_id] = (method, frozenset(chunk))
                link.pacer.sent(now)
                self._outbox.append(SendControl(link.link_id, self._next_id, method, tuple(chunk)))

    def _open(self, slot: Slot, now: float, reason: str) -> LinkState:
        self._next_id += 1
        streams = url_streams(slot.wanted)
        retire = self.max_age_seconds * (1.0 - self.rng.uniform(0.0, AGE_JITTER))
        link = LinkState(self._next_id, created_at=now, retire_after=retire, url=frozenset(streams))
        self._links[link.link_id] = link
        self._slot_of_link[link.link_id] = slot
        self._outbox.append(OpenLink(link.link_id, streams, reason))
        return link

    def _close(self, link: LinkState, now: float, reason: str) -> None:
        self._outbox.append(CloseLink(link.link_id, reason))
        self.on_closed(link.link_id, now, reason)
