"""``marketpipe trades``: ``<pair>@trade`` -> ``trades.<SYMBOL>``, and the last 10 in Redis.

Wiring only: :class:`~marketpipe.services.feed.PairFeed` brings the decoded trades,
one :class:`~marketpipe.services.trade_gaps.TradeSequencer` per pair keeps the ids continuous
(holes filled from REST ``/api/v3/trades``, duplicates dropped, live trades of a pair held while
its hole is filled), :class:`~marketpipe.services.feed.Outbox` publishes in order and pushes each
published trade onto ``marketpipe:trades:<SYMBOL>``.

Failover without a hole or a duplicate: every replica listens to ``trades.*`` on NATS and keeps the
last trade id published per pair, and keeps the trades it released itself over the last
``LEADER_TTL_SECONDS`` + :data:`RECENT_MARGIN_SECONDS`. On becoming leader it publishes, per pair,
the trades after the previous leader's last one (from REST when they are no longer kept). A
replica that started listening, or whose own NATS connection dropped, within that window has not
seen everything published: it first takes the newest trade per pair from Redis (where the
previous leader wrote it after NATS), holding its outbox meanwhile. A leader whose own NATS
connection dropped asks the other replicas how far they saw each pair on NATS (trades handed to
a socket that then reset never arrived), and publishes what is missing the same way; Redis's
lists take each id once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections import Counter, deque
from typing import Any

import msgspec

from marketpipe.config import Settings
from marketpipe.exchange.messages import MarketEvent, Trade
from marketpipe.exchange.rest import ExchangeError, ExchangeUnavailable
from marketpipe.ha.term import Term
from marketpipe.logs import get_logger
from marketpipe.ops.metrics import BAD_INPUT, TRADE_CONTINUITY
from marketpipe.services.feed import Outbox, PairFeed, make_rest
from marketpipe.services.feed_messages import BadRow, stamp, trade_message, trades_from_rest
from marketpipe.services.runtime import ServiceContext, run_service
from marketpipe.services.trade_gaps import FetchMissing, FetchQueue, Step, TradeSequencer
from marketpipe.sources.assets import Universe
from marketpipe.supervision import Supervised
from marketpipe.transport.redis_cache import RECENT_KEEP, trades_key

log = get_logger(__name__)

FETCH_WORKERS = 4
RETRY_DELAY_SECONDS = 0.5  # times the attempt: a fetch that keeps failing is retried ever slower
RETRY_MAX_DELAY_SECONDS = 10.0
# A follower keeps what it released for the lease's TTL plus this: a kill -9 of the leader is
# noticed within the TTL, so the trades the dead leader never sent are still here.
RECENT_MARGIN_SECONDS = 5.0
RECENT_MAX_PER_PAIR = 20_000
# Asked of every replica when the leader's own NATS connection is back: per pair of a shard, the
# last trade id it saw on NATS. Not a contract subject (DESIGN §2): no consumer listens to it.
SEEN_SUBJECT = "_marketpipe.trades.seen"
SEEN_ANSWER_SECONDS = 0.3  # replies come within milliseconds; trades of the shard wait meanwhile


class _PublishedTrade(msgspec.Struct):
    t: int
    E: int = 0


class _SeenRequest(msgspec.Struct):
    shard: int


_decode_published = msgspec.json.Decoder(_PublishedTrade).decode
_decode_seen_request = msgspec.json.Decoder(_SeenRequest).decode
_decode_seen = msgspec.json.Decoder(dict[str, int]).decode


class TradesService:
    def __init__(self, ctx: ServiceContext) -> None:
        self._ctx = ctx
        self._rest = make_rest(ctx)
        self._feed = PairFeed(
            ctx,
            "trade",
            self._on_event,
            self._rest,
            on_universe=self._on_universe,
            on_pairs_down=self._on_pairs_down,
            on_pairs_up=self._on_pairs_up,
        )
        self._outbox = Outbox(ctx, "trades", self._cache_trade)
        self._sequencers: dict[str, TradeSequencer[Trade]] = {}
        self._fetches = FetchQueue()
        self._fetch_wanted = asyncio.Event()
        self._workers: list[Supervised] = []
        self._published: dict[str, int] = {}  # last trade id on NATS per pair, from any replica
        self._recent: dict[str, deque[tuple[float, int, Trade]]] = {}  # (released at, id, trade)
        self._keep_seconds = ctx.settings.leader_ttl_seconds + RECENT_MARGIN_SECONDS
        self._listening_since = time.monotonic()  # since when trades on NATS are seen here
        self._counters: dict[str, Any] = {
            event: TRADE_CONTINUITY.labels(event)
            for event in ("duplicate", "gap", "check", "recovered", "skipped", "rejected")
        }

    async def start(self) -> None:
        # before any trade is taken: every trade released from now on is either seen here
        # once published, or still unpublished when this replica takes over
        self._listening_since = time.monotonic()
        await self._ctx.nats.subscribe("trades.*", self._on_published)
        await self._ctx.nats.answer(SEEN_SUBJECT, self._answer_seen)
        self._ctx.nats.on_reconnect(self._on_nats_back)
        await self._ctx.nats.flush()
        await self._outbox.start()
        await self._feed.start()
        self._workers = [
            self._ctx.tasks.spawn(f"trades-fetch-{i}", self._fetch_forever)
            for i in range(FETCH_WORKERS)
        ]

    async def stop(self) -> None:
        for task in self._workers:
            await task.stop()
        await self._feed.stop()
        await self._outbox.stop()

    def ready(self) -> bool:
        return self._feed.ready()

    # --- shards (DESIGN §9) ---

    def on_ingest(self, shards: frozenset[int]) -> None:
        self._feed.on_ingest()

    def shard_hot(self, shard: int) -> bool:
        return self._feed.knows_pairs and all(
            not seq.down for seq in self._of_shard(shard).values()
        )

    def shard_pairs(self) -> dict[int, int]:
        return dict(Counter(self._ctx.shard_of(s) for s in self._sequencers))

    def _of_shard(self, shard: int) -> dict[str, TradeSequencer[Trade]]:
        shard_of = self._ctx.shard_of
        return {s: seq for s, seq in self._sequencers.items() if shard_of(s) == shard}

    def on_term(self, term: Term) -> None:
        if term.ended:
            return
        blind = max(self._ctx.nats.last_disconnect or 0.0, self._listening_since)
        if time.monotonic() - blind < self._keep_seconds:
            # We started listening (or our NATS connection dropped) lately: what the previous
            # leader published before is missing from what we saw. Redis (written after NATS)
            # fills that in, before anything goes out.
            self._outbox.hold()
            task = asyncio.get_running_loop().create_task(self._resume_after_redis(term))
            task.add_done_callback(self._resumed)
            return
        self._resume(term)

    def _on_nats_back(self) -> None:
        """Our own connection dropped while leading: trades handed to the old socket may never
        have reached the server (or did, with their echo lost). The other replicas say how far
        they saw each pair; what is missing is published again, once, in order."""
        for term in list(self._ctx.terms.values()):
            if term.valid():
                self._outbox.hold()
                task = asyncio.get_running_loop().create_task(self._resume_after_asking(term))
                task.add_done_callback(self._resumed)

    async def _resume_after_asking(self, term: Term) -> None:
        try:
            request = msgspec.json.encode(_SeenRequest(term.shard))
            answers = await self._ctx.nats.ask_all(SEEN_SUBJECT, request, SEEN_ANSWER_SECONDS)
            for answer in answers:
                try:
                    seen = _decode_seen(answer)
                except msgspec.DecodeError:
                    BAD_INPUT.labels(source="nats", kind="trades_seen").inc()
                    continue
                for symbol, trade_id in seen.items():
                    self._note_published(symbol, trade_id)
            log.info("trades_checked_after_reconnect", shard=term.shard, answers=len(answers))
            if term.valid():
                self._resume(term)
        finally:
            self._outbox.release()

    def _answer_seen(self, request: bytes) -> bytes | None:
        try:
            shard = _decode_seen_request(request).shard
        except msgspec.DecodeError:
            BAD_INPUT.labels(source="nats", kind="trades_seen").inc()
            return None
        shard_of = self._ctx.shard_of
        seen = {s: t for s, t in self._published.items() if shard_of(s) == shard}
        return msgspec.json.encode(seen)

    async def _resume_after_redis(self, term: Term) -> None:
        try:
            if self._ctx.cache is not None:
                symbols = list(self._of_shard(term.shard))
                heads = await self._ctx.cache.heads([trades_key(s) for s in symbols])
                # a head older than the window is no previous leader's lately: after a whole
                # outage the trades in between are not this replica's to recover
                oldest_ms = (time.time() - self._keep_seconds) * 1000
                for symbol in symbols:
                    head = heads.get(trades_key(symbol))
                    if head is not None:
                        with contextlib.suppress(msgspec.DecodeError):
                            trade = _decode_published(head)
                            if oldest_ms <= trade.E:
                                self._note_published(symbol, trade.t)
            if term.valid():
                self._resume(term)
        finally:
            self._outbox.release()

    @staticmethod
    def _resumed(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("trades_resume_failed", error=repr(task.exception()))

    def _resume(self, term: Term) -> None:
        """Publish, per pair of the term's shard, what the previous leader had not (this
        replica's kept trades, or REST), then the live trades: in order, nothing twice."""
        # queued while following: the catch-up below covers it, in order
        self._outbox.discard_shard(term.shard)
        for symbol, seq in self._of_shard(term.shard).items():
            recent = self._recent.get(symbol, ())
            published = self._published.get(symbol)
            if published is not None:
                # the previous leader's last trades may be on NATS but not yet in Redis
                sent = [trade for _, trade_id, trade in recent if trade_id <= published]
                messages = [
                    stamp(trade_message(t), term.epoch, term.shard) for t in sent[-RECENT_KEEP:]
                ]
                self._ctx.cache_catch_up_recent(trades_key(symbol), messages, "t", term=term)
            step = seq.resume_after(published, [(t, p) for _, t, p in recent])
            if step.publish or step.fetch is not None:
                log.info(
                    "trades_resumed",
                    symbol=symbol,
                    after=self._published.get(symbol),
                    republished=len(step.publish),
                    fetch=step.fetch is not None,
                )
            # kept trades, not recovered from REST: their latency sample includes the hand-over
            self._apply(seq, step, live=True)

    def _cache_trade(self, key: str, payload: bytes, *, term: Term) -> None:
        # by trade id: a trade published again after a reconnect is in the list already
        self._ctx.cache_recent(key, payload, term=term, order=_decode_published(payload).t)

    async def _on_published(self, subject: str, data: bytes) -> None:
        symbol = subject.partition(".")[2]
        try:
            trade_id = _decode_published(data).t
        except msgspec.DecodeError:
            return  # not a trade message: nothing to learn from it
        self._note_published(symbol, trade_id)

    def _note_published(self, symbol: str, trade_id: int) -> None:
        if trade_id > self._published.get(symbol, -1):
            self._published[symbol] = trade_id

    # --- pairs ---

    def _on_universe(self, universe: Universe) -> None:
        pairs = set(universe.symbols)
        for symbol in set(self._sequencers) - pairs:
            del self._sequencers[symbol]
            self._recent.pop(symbol, None)
            self._fetches.discard(symbol)
        for symbol in pairs - set(self._sequencers):
            self._sequencers[symbol] = TradeSequencer(symbol)
        self._feed.set_pairs(pairs)

    def _on_pairs_down(self, symbols: set[str]) -> None:
        for symbol in symbols:
            seq = self._sequencers.get(symbol)
            if seq is not None:
                seq.on_streams_down()

    def _on_pairs_up(self, symbols: set[str]) -> None:
        for symbol in symbols:
            seq = self._sequencers.get(symbol)
            fetch = None if seq is None else seq.on_streams_up()
            if fetch is not None:
                self._want(fetch)

    # --- live trades ---

    def _on_event(self, event: MarketEvent) -> None:
        if not isinstance(event, Trade):
            BAD_INPUT.labels(source="exchange_ws", kind="unexpected_event").inc()
            return
        seq = self._sequencers.get(event.symbol)
        if seq is None:
            return  # a pair just removed from the universe
        self._apply(seq, seq.on_live(event.trade_id, event), live=True)

    def _apply(self, seq: TradeSequencer[Trade], step: Step[Trade], live: bool) -> None:
        if step.publish:
            self._remember(seq.symbol, step.publish)
        for trade in step.publish:
            payload = trade_message(trade)
            self._outbox.put(
                f"trades.{trade.symbol}",
                payload,
                trade.event_time if live else 0,
                trades_key(trade.symbol),
                self._ctx.shard_of(trade.symbol),
            )
        counts = {
            "recovered": 0 if live else len(step.publish),
            "duplicate": step.duplicates,
            "skipped": step.skipped,
            "rejected": step.rejected,
        }
        for event, count in counts.items():
            if count:
                self._counters[event].inc(count)
        if step.skipped or step.rejected:
            log.warning(
                "trade_ids_lost",
                symbol=seq.symbol,
                skipped=step.skipped,
                rejected=step.rejected,
                last_id=seq.last_id,
            )
        if step.fetch is not None:
            self._want(step.fetch)

    def _remember(self, symbol: str, trades: list[Trade]) -> None:
        recent = self._recent.get(symbol)
        if recent is None:
            recent = self._recent[symbol] = deque(maxlen=RECENT_MAX_PER_PAIR)
        now = time.monotonic()
        newest = recent[-1][1] if recent else -1  # a catch-up re-releases what is kept already
        recent.extend((now, trade.trade_id, trade) for trade in trades if trade.trade_id > newest)
        too_old = now - self._keep_seconds
        while recent and recent[0][0] < too_old:
            recent.popleft()

    # --- fetching missed trades ---

    def _want(self, fetch: FetchMissing) -> None:
        if fetch.attempt:
            loop = asyncio.get_running_loop()
            delay = min(RETRY_MAX_DELAY_SECONDS, RETRY_DELAY_SECONDS * fetch.attempt)
            loop.call_later(delay, self._queue, fetch)
        else:
            self._queue(fetch)

    def _queue(self, fetch: FetchMissing) -> None:
        if fetch.symbol in self._sequencers:
            self._fetches.add(fetch)
            self._fetch_wanted.set()

    async def _fetch_forever(self) -> None:
        while True:
            fetch = self._fetches.take()
            if fetch is None:
                self._fetch_wanted.clear()
                await self._fetch_wanted.wait()
                continue
            try:
                await self._fetch(fetch)
            finally:
                self._fetches.done(fetch.symbol)

    async def _fetch(self, fetch: FetchMissing) -> None:
        seq = self._sequencers.get(fetch.symbol)
        if seq is None or (fetch.reason == "check" and not seq.suspect):
            return  # gone, or a live trade already settled the check
        self._counters[fetch.reason].inc()
        limit = seq.fetch_limit()
        try:
            rows = await self._rest.trades(fetch.symbol, limit)
            trades = trades_from_rest(fetch.symbol, rows)
        except (ExchangeError, ExchangeUnavailable, BadRow) as exc:
            if isinstance(exc, BadRow):
                BAD_INPUT.labels(source="rest", kind="trades_row").inc()
            log.warning("trades_fetch_failed", symbol=fetch.symbol, error=str(exc))
            if self._sequencers.get(fetch.symbol) is seq:
                self._apply(seq, seq.on_fetch_failed(), live=False)
            return
        if self._sequencers.get(fetch.symbol) is not seq:
            return  # removed (or re-added) while the request was out
        step = seq.on_fetched([(t.trade_id, t) for t in trades], limit)
        self._apply(seq, step, live=False)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Publish every pair's trades on trades.<SYMBOL> (no hole, no duplicate, in order) "
        "and keep the last 10 per pair in Redis."
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    return run_service("trades", args, settings, TradesService, sharded=True)
