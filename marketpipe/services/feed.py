"""What the trades, tickers and markets services share: per-pair streams in, NATS/Redis out.

:class:`PairFeed` keeps one ``<pair>@<kind>`` stream per pair of the universe on the service's
:class:`~marketpipe.exchange.streams.StreamHub`, decodes each combined frame, counts and skips bad
ones (``marketpipe_bad_input_total{source="exchange_ws"}``) and hands the decoded event to the
service, synchronously, in stream order.

:class:`Outbox` is the way out: messages wait in a bounded, ordered buffer drained by one task
at the loop's next turn (publish on NATS, then the Redis cache write, both under the current
leadership term of its pair's shard; a follower of that shard publishes nothing). Each message
gets the term's ``epoch`` and its ``shard`` as it leaves (``stamp_epoch``: a JSON object gains
``"epoch"`` and ``"shard"``, DESIGN §8, §9). A message NATS
refuses (its buffer is full while a server stalls) stays first in line and is tried again: it is
neither lost nor counted as published. Live messages carry their exchange event time, which
feeds ``marketpipe_publish_latency_seconds``.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from marketpipe.exchange.messages import BadFrame, MarketEvent, decode_combined
from marketpipe.exchange.rest import ExchangeRest
from marketpipe.exchange.stream_plan import StreamPlan
from marketpipe.exchange.streams import StreamHub
from marketpipe.exchange.weights import WeightGate
from marketpipe.ha.term import Term
from marketpipe.logs import get_logger
from marketpipe.ops.metrics import BAD_INPUT, PUBLISH_ERRORS, PUBLISH_LATENCY
from marketpipe.services.feed_messages import stamp
from marketpipe.services.runtime import ServiceContext
from marketpipe.sources.assets import AssetsSource, Universe
from marketpipe.supervision import Supervised
from marketpipe.transport.nats import PayloadTooLargeError

log = get_logger(__name__)

OUTBOX_LIMIT = 200_000


class CacheWriter(Protocol):
    def __call__(self, key: str, payload: bytes, *, term: Term) -> None: ...


REFUSED_RETRY_SECONDS = 0.05


def stream_symbol(stream: str) -> str:
    """``btcusdt@trade`` -> ``BTCUSDT``."""
    return stream.partition("@")[0].upper()


def decode_event_frame(raw: bytes) -> MarketEvent:
    return decode_combined(raw).data


def make_rest(ctx: ServiceContext) -> ExchangeRest:
    settings = ctx.settings
    gate = WeightGate(limit=settings.rest_weight_limit, share=settings.rest_weight_share)
    return ExchangeRest(settings.binance_rest_url, gate=gate, session=ctx.http)


class PairFeed:
    """``<pair>@<kind>`` for each pair given to :meth:`set_pairs`; events go to ``on_event``."""

    def __init__(
        self,
        ctx: ServiceContext,
        kind: str,
        on_event: Callable[[MarketEvent], None],
        rest: ExchangeRest,
        *,
        on_universe: Callable[[Universe], None] | None = None,
        on_pairs_down: Callable[[set[str]], None] | None = None,
        on_pairs_up: Callable[[set[str]], None] | None = None,
        decode: Callable[[bytes], MarketEvent] = decode_event_frame,
    ) -> None:
        self.kind = kind
        self._ctx = ctx
        self._universe: Universe | None = None
        self._decode = decode
        self.pairs: set[str] = set()
        self._on_event = on_event
        self._on_universe = on_universe
        self._on_pairs_down = on_pairs_down
        self._on_pairs_up = on_pairs_up
        self.hub = StreamHub(
            ctx.settings.binance_ws_url,
            self._on_frame,
            on_streams_down=self._down,
            on_streams_up=self._up,
            plan=StreamPlan.from_settings(ctx.settings),
            session=ctx.http,
        )
        # its own HTTP session: the assets source closes the one it uses when it stops
        self.assets = AssetsSource(ctx.settings, rest, self._universe_changed)
        self._tasks = ctx.tasks
        self._running: list[Supervised] = []

    def set_pairs(self, symbols: Iterable[str]) -> None:
        self.pairs = set(symbols)
        self.hub.set_streams(f"{s.lower()}@{self.kind}" for s in self.pairs)

    def resubscribe(self, symbols: Iterable[str]) -> None:
        """Subscribe these pairs' streams afresh: they deliver nothing on a live link."""
        self.hub.resubscribe(f"{s.lower()}@{self.kind}" for s in symbols)

    async def start(self) -> None:
        self._running = [
            # the hub's links and plan cannot be rebuilt in place: a failure ends the instance
            self._tasks.spawn(f"{self.kind}-streams", self.hub.run, restart=False),
            self._tasks.spawn(f"{self.kind}-assets", self.assets.run),
        ]

    async def stop(self) -> None:
        for task in self._running:
            await task.stop()
        self._running = []

    @property
    def knows_pairs(self) -> bool:
        """Whether the pair universe arrived: until then a shard's pairs are not known, and no
        shard can be hot (its emptiness would say nothing)."""
        return self._universe is not None

    def ready(self) -> bool:
        """The pair universe is known and, if it has pairs, streams are connected."""
        if self.assets.universe is None:
            return False
        return not self.pairs or self.hub.connected_links > 0

    def on_ingest(self) -> None:
        """The instance's shards changed: take up the pairs of the new ones, drop the others."""
        if self._universe is not None:
            self._deliver(self._universe)

    def _universe_changed(self, universe: Universe) -> None:
        self._universe = universe
        self._deliver(universe)

    def _deliver(self, universe: Universe) -> None:
        """The universe as this instance keeps it: only the pairs of the shards it ingests."""
        ingests = self._ctx.ingests
        mine = Universe(
            tuple(s for s in universe.priority if ingests(s)),
            tuple(s for s in universe.others if ingests(s)),
        )
        if self._on_universe is None:
            self.set_pairs(mine.symbols)
        else:
            self._on_universe(mine)

    def _on_frame(self, raw: bytes) -> None:
        try:
            event = self._decode(raw)
        except BadFrame as exc:
            BAD_INPUT.labels(source="exchange_ws", kind=exc.kind).inc()
            log.warning("bad_frame", kind=exc.kind, detail=exc.detail[:200], head=raw[:200])
            return
        self._on_event(event)

    def _down(self, streams: frozenset[str]) -> None:
        if self._on_pairs_down is not None:
            self._on_pairs_down({stream_symbol(s) for s in streams})

    def _up(self, streams: frozenset[str]) -> None:
        if self._on_pairs_up is not None:
            self._on_pairs_up({stream_symbol(s) for s in streams})


@dataclass(frozen=True, slots=True)
class Outgoing:
    subject: str
    payload: bytes
    event_time_ms: int  # 0: not a live event (no latency sample)
    cache_key: str | None  # written to Redis with the outbox's cache writer once published
    shard: int  # published under that shard's term


class Outbox:
    """Ordered, bounded buffer of messages to publish; one task drains it."""

    def __init__(
        self,
        ctx: ServiceContext,
        channel: str,
        cache: CacheWriter | None = None,
        limit: int = OUTBOX_LIMIT,
        stamp_epoch: bool = True,
    ) -> None:
        self._ctx = ctx
        self._channel = channel
        self._cache = cache
        self._limit = limit
        self._stamp_epoch = stamp_epoch
        self._holds = 0  # publish nothing while anyone holds
        self._items: deque[Outgoing] = deque()
        self._wake = asyncio.Event()
        self._task: Supervised | None = None
        self._latency: Any = PUBLISH_LATENCY.labels(channel)
        self._overflow: Any = PUBLISH_ERRORS.labels(channel, "outbox_full")

    def __len__(self) -> int:
        return len(self._items)

    def discard_shard(self, shard: int) -> None:
        """Forget every message of ``shard`` not yet published."""
        self._items = deque(item for item in self._items if item.shard != shard)

    def hold(self) -> None:
        """Publish nothing until as many :meth:`release` (messages keep queueing)."""
        self._holds += 1

    def release(self) -> None:
        self._holds -= 1
        self._wake.set()

    def put(
        self,
        subject: str,
        payload: bytes,
        event_time_ms: int = 0,
        cache_key: str | None = None,
        shard: int = 0,
    ) -> None:
        if len(self._items) >= self._limit:
            self._items.popleft()  # the oldest is the least useful; counted, never silent
            self._overflow.inc()
        self._items.append(Outgoing(subject, payload, event_time_ms, cache_key, shard))
        self._wake.set()

    async def start(self) -> None:
        self._task = self._ctx.tasks.spawn(f"{self._channel}-outbox", self._drain_forever)

    async def stop(self) -> None:
        """Publish what is queued (the runtime bounds the time), then stop."""
        if self._task is not None:
            await self._task.stop()
            self._task = None
        self._send_all()

    async def _drain_forever(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            self._send_all()

    def _send_all(self) -> None:
        if self._holds:
            return
        ctx, items, cache = self._ctx, self._items, self._cache
        while items:
            item = items[0]
            term = ctx.term_for(item.shard)
            if term is None or not term.valid():
                # a follower of this shard publishes nothing (a new leader catches up itself)
                items.popleft()
                continue
            payload = (
                stamp(item.payload, term.epoch, item.shard) if self._stamp_epoch else item.payload
            )
            try:
                sent = ctx.publish(item.subject, payload, term)
            except PayloadTooLargeError:
                items.popleft()
                continue  # logged and counted by the publisher
            if not sent:  # refused by the NATS client: first in line, again shortly
                asyncio.get_running_loop().call_later(REFUSED_RETRY_SECONDS, self._wake.set)
                return
            items.popleft()
            if item.event_time_ms:
                self._latency.observe(max(0.0, time.time() - item.event_time_ms / 1000))
            if cache is not None and item.cache_key is not None:
                cache(item.cache_key, payload, term=term)
