"""``marketpipe orderbook``: an exact local book for every pair, on ``orderbook.<SYMBOL>``.

A wiring of pure rooms (see docs/orderbook.md):

- frames: :class:`~marketpipe.services.feed.PairFeed` keeps ``<pair>@depth@100ms`` for every pair
  of the universe (assets API, polled: pairs start and stop at runtime) and decodes each frame;
- sync: one :class:`~marketpipe.book.sync.BookSync` per pair (buffering, snapshot, gap and
  overflow checks); a gap, an overflow or the pair's connection dropping resyncs that pair alone;
- snapshots: one :class:`~marketpipe.exchange.snapshots.SnapshotScheduler` for all pairs,
  priority pairs (and their resyncs) first, within the REST weight budget;
- publishing: :class:`~marketpipe.services.publish_throttle.PublishThrottle` says which pairs are
  due; the view (spread filter, ``Depth``) is rendered at that moment, so the newest state wins;
  only a live book is ever published; the latest message also goes to Redis; beside it, its
  delta from the pair's previous published view on ``delta.orderbook.<SYMBOL>`` (a
  :class:`~marketpipe.book.delta.ViewPublisher` per pair, DESIGN §10);
- status: ``status.orderbook.<SYMBOL>`` tells syncing / live / resyncing (+ reason);
- quiet books: :class:`~marketpipe.services.quiet_books.QuietBooks` says which pairs without a
  diff for a while to check with a small snapshot, and which it found stale (the exchange moved
  on, no diff came): that book resyncs and its stream is resubscribed;
- audit (optional): a live book against a fresh small REST snapshot at the same update id.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import math
import time
from collections import Counter, deque
from collections.abc import Sequence
from typing import Any

from marketpipe.book.delta import ViewPublisher
from marketpipe.book.sync import (
    Action,
    BookChanged,
    BookSync,
    FetchSnapshot,
    Rejected,
    Resync,
    StateChanged,
)
from marketpipe.config import Settings
from marketpipe.exchange.messages import DepthUpdate, MarketEvent, decode_combined_depth
from marketpipe.exchange.rest import DepthSnapshot, ExchangeError, ExchangeUnavailable
from marketpipe.exchange.snapshot_plan import SnapshotPlanner, snapshot_limit
from marketpipe.exchange.snapshots import SnapshotScheduler
from marketpipe.ha.term import Term
from marketpipe.logs import get_logger
from marketpipe.ops.metrics import (
    BAD_INPUT,
    BOOK_AUDIT_MATCH,
    BOOK_RESYNCS,
    BOOKS_LIVE,
    BOOKS_SYNCED,
    BOOKS_TRACKED,
    PUBLISH_LATENCY,
    SHARD_PAIRS,
)
from marketpipe.services.book_audit import AuditBook, AuditSnapshot, Verdict, compare
from marketpipe.services.book_status import LIVE, StatusBoard, status_subject
from marketpipe.services.feed import PairFeed, make_rest
from marketpipe.services.feed_messages import stamp
from marketpipe.services.publish_throttle import PublishThrottle
from marketpipe.services.quiet_books import CHECK_LIMIT, QuietBooks
from marketpipe.services.runtime import ServiceContext, run_service
from marketpipe.services.sync_admission import SyncAdmission
from marketpipe.sources.assets import Universe
from marketpipe.sources.settings import SettingsSource, SettingsTable
from marketpipe.transport.nats import PayloadTooLargeError
from marketpipe.transport.redis_cache import orderbook_key

log = get_logger(__name__)

STREAM_KIND = "depth@100ms"
# Snapshots take this share of the REST budget; the rest is left for audits and other calls.
SNAPSHOT_BUDGET_SHARE = 0.8
AUDIT_LIMIT = 100  # weight 5: an audit costs next to nothing
STATUS_REPUBLISH_SECONDS = 10.0
# Every status goes out again each STATUS_REPUBLISH_SECONDS, a slice at a time: all 2000 at once
# held the publisher (and every book due meanwhile) for about 10 ms.
STATUS_REPUBLISH_SLICES = 40
# New books that may wait for a snapshot at once (see sync_admission.py): enough to keep the
# snapshot queue busy, few enough that their buffers stay small.
ADMISSION_WINDOW = 32
ADMISSION_TICK_SECONDS = 0.25
# Redis holds the latest published book of each pair, written at most this often per pair (the
# last one always lands): at one 16 KB book per pair every 100 ms, writing each to Redis cost
# about as much as publishing it on NATS. Readers that need every book take NATS.
CACHE_FLUSH_SECONDS = 0.5
QUIET_TICK_SECONDS = 0.5


def _decode(raw: bytes) -> MarketEvent:
    return decode_combined_depth(raw).data


class OrderbookService:
    def __init__(self, ctx: ServiceContext) -> None:
        settings = ctx.settings
        self.ctx = ctx
        self.settings = settings
        self.publish_deltas = settings.publish_deltas
        self.rest = make_rest(ctx)
        self.planner = SnapshotPlanner(
            weight_per_minute=self.rest.gate.budget * SNAPSHOT_BUDGET_SHARE, ip_gate=self.rest.gate
        )
        self.snapshots = SnapshotScheduler(
            self.rest,
            self.planner,
            self._on_snapshot,
            self._on_snapshot_failed,
            on_fetch_started=self._on_fetch_started,
        )
        self.feed = PairFeed(
            ctx,
            STREAM_KIND,
            self._on_event,
            self.rest,
            on_universe=self._on_universe,
            on_pairs_down=self._on_pairs_down,
            on_pairs_up=self._on_pairs_up,
            decode=_decode,
        )
        self.book_settings = SettingsSource(settings, self._on_settings)
        self.books: dict[str, BookSync] = {}
        self.priority: frozenset[str] = frozenset()
        self.throttle = PublishThrottle(
            settings.publish_interval_ms / 1000, settings.publish_max_wait_ms / 1000
        )
        self.status = StatusBoard()
        self.audits = AuditBook()
        self.admission = SyncAdmission(ADMISSION_WINDOW)
        self.quiet = QuietBooks(settings.quiet_book_seconds, self.planner.weight_per_minute)
        self._checks: set[asyncio.Task[None]] = set()
        self._seq: dict[str, int] = {}
        self._views: dict[str, ViewPublisher] = {}
        self._asked_limit: dict[str, int] = {}
        self._ever_live: set[str] = set()
        self._status_out: deque[tuple[str, bytes]] = deque()  # (symbol, payload)
        self._shard: dict[str, int] = {}  # of every book kept
        self._wake = asyncio.Event()
        self._publisher_sleeps_until = -math.inf
        self._latency: Any = PUBLISH_LATENCY.labels("orderbook")
        self._resync_counters: dict[str, Any] = {}

    # --- lifecycle ---

    async def start(self) -> None:
        tasks = self.ctx.tasks
        tasks.spawn("orderbook-snapshots", self.snapshots.run)
        if self.book_settings.polls:
            tasks.spawn("orderbook-settings", self.book_settings.run)
        tasks.spawn("orderbook-publish", self._publish_forever)
        tasks.spawn("orderbook-status", self._republish_status_forever)
        tasks.spawn("orderbook-admission", self._admit_forever)
        tasks.spawn("orderbook-quiet", self._verify_quiet_forever)
        if self.settings.audit_interval_seconds > 0:
            tasks.spawn("orderbook-audit", self._audit_forever)
        await self.feed.start()

    async def stop(self) -> None:
        await self.feed.stop()

    def ready(self) -> bool:
        """Streams connected and, for a leader, every book synced at least once (a later resync
        of one pair does not make the whole instance unready)."""
        if not self.feed.ready():
            return False
        return not self.ctx.leading or len(self._ever_live) >= len(self.books)

    # --- shards (DESIGN §9) ---

    def on_ingest(self, shards: frozenset[int]) -> None:
        self.feed.on_ingest()

    def shard_hot(self, shard: int) -> bool:
        return self.feed.knows_pairs and all(self.books[s].is_live for s in self._symbols_of(shard))

    def shard_pairs(self) -> dict[int, int]:
        return dict(Counter(self._shard.values()))

    def _symbols_of(self, shard: int) -> list[str]:
        return [s for s, k in self._shard.items() if k == shard]

    def on_term(self, term: Term) -> None:
        # A new term restarts seq at 1 and sends every live book and status of its shard at
        # once; its deltas chain only from views it published itself.
        symbols = self._symbols_of(term.shard)
        for symbol in symbols:
            self._seq.pop(symbol, None)
            self._views.pop(symbol, None)
        if not term.ended:
            now = time.monotonic()
            for symbol in symbols:
                if self.books[symbol].is_live:
                    self.throttle.forget(symbol)
                    self.throttle.changed(symbol, now)
            self._queue_status(symbols)
            self._wake.set()
        self._report_shards()

    def _report_shards(self) -> None:
        live: Counter[int] = Counter(k for s, k in self._shard.items() if self.books[s].is_live)
        for shard, pairs in Counter(self._shard.values()).items():
            role, other = (
                ("leader", "standby") if self.ctx.term_for(shard) else ("standby", "leader")
            )
            BOOKS_LIVE.labels(str(shard), role).set(live[shard])
            BOOKS_LIVE.labels(str(shard), other).set(0)
            SHARD_PAIRS.labels(str(shard)).set(pairs)

    # --- the universe and settings ---

    def _on_universe(self, universe: Universe) -> None:
        wanted = set(universe.symbols)
        self.priority = frozenset(universe.priority)
        for symbol in self.books.keys() - wanted:
            self._drop(symbol)
        now_ms = int(time.time() * 1000)
        for symbol in universe.symbols:  # priority pairs first: their streams come first too
            if symbol not in self.books:
                self.books[symbol] = BookSync(symbol, self.settings.diff_buffer_size)
                self._shard[symbol] = self.ctx.shard_of(symbol)
                self._set_status(symbol, "syncing", None, now_ms)
            self.admission.add(symbol, symbol in self.priority)
        BOOKS_TRACKED.set(len(self.books))
        self._report_shards()
        self.feed.set_pairs(universe.symbols)
        self._admit_more()
        log.info("universe", pairs=len(wanted), priority=len(self.priority))

    def _drop(self, symbol: str) -> None:
        del self.books[symbol]
        self.admission.remove(symbol)
        self.snapshots.cancel(symbol)
        self.throttle.forget(symbol)
        self.audits.cancel(symbol)
        self._seq.pop(symbol, None)
        self._views.pop(symbol, None)
        self._asked_limit.pop(symbol, None)
        self._ever_live.discard(symbol)
        self.quiet.remove(symbol)
        self._set_status(symbol, "stopped", "removed", int(time.time() * 1000))
        self.status.remove(symbol)
        del self._shard[symbol]

    def _on_settings(self, _table: SettingsTable) -> None:
        # The view of every live book may change: republish them as their intervals allow.
        now = time.monotonic()
        for symbol, sync in self.books.items():
            if sync.is_live:
                self.throttle.changed(symbol, now)
        self._wake.set()

    # --- frames and snapshots in ---

    def _on_event(self, event: MarketEvent) -> None:
        if not isinstance(event, DepthUpdate):
            BAD_INPUT.labels(source="exchange_ws", kind="unexpected_event").inc()
            return
        symbol = event.symbol
        self.quiet.diff(symbol, event.final_update_id, time.monotonic())
        if symbol not in self.admission.admitted:
            return  # not building this book yet, or a pair just removed from the universe
        sync = self.books[symbol]
        self._act(symbol, sync, sync.on_diff(event))

    def _on_pairs_down(self, symbols: set[str]) -> None:
        for symbol in symbols:
            self.quiet.pause(symbol)
            sync = self.books.get(symbol)
            if sync is not None:
                self._act(symbol, sync, sync.on_disconnect())

    def _on_pairs_up(self, symbols: set[str]) -> None:
        now = time.monotonic()
        for symbol in symbols:
            if symbol in self.books:
                self.quiet.watch(symbol, now)

    def _request_snapshot(self, symbol: str, resync: bool) -> None:
        priority = symbol in self.priority
        settings = self.settings
        configured = settings.snapshot_limit if priority else settings.snapshot_limit_others
        limit = snapshot_limit(configured, self.book_settings.settings_for(symbol).depth)
        # The book must not believe a snapshot deeper than it is (it would take a cut-off side
        # for a complete one): remember the smallest limit asked for until the answer comes.
        self._asked_limit[symbol] = min(limit, self._asked_limit.get(symbol, limit))
        self.snapshots.request(symbol, priority=priority, resync=resync, limit=limit)

    def _on_snapshot(self, symbol: str, snapshot: DepthSnapshot) -> None:
        limit = self._asked_limit.pop(symbol, None)
        sync = self.books.get(symbol)
        if sync is not None:
            self._act(symbol, sync, sync.on_snapshot(snapshot, limit))
        self._admit_more()

    def _admit_more(self) -> None:
        self.admission.admit(time.monotonic(), self.planner.pending)

    async def _admit_forever(self) -> None:
        while True:
            await asyncio.sleep(ADMISSION_TICK_SECONDS)
            self._admit_more()

    def _on_fetch_started(self, symbol: str) -> None:
        sync = self.books.get(symbol)
        if sync is not None:
            sync.on_fetch_started()

    def _on_snapshot_failed(self, symbol: str, error: Exception) -> None:
        sync = self.books.get(symbol)
        if sync is not None:  # the book still waits for it: ask again, paced by the planner
            sync.on_fetch_failed()
            self._request_snapshot(symbol, resync=True)

    def _act(self, symbol: str, sync: BookSync, actions: Sequence[Action]) -> None:
        for action in actions:
            if isinstance(action, BookChanged):
                self._changed(symbol)
                if self.audits.waiting(symbol):
                    self._audit_advanced(symbol, sync)
            elif isinstance(action, FetchSnapshot):
                self.admission.requested(symbol)
                self._request_snapshot(symbol, resync=symbol in self._ever_live)
            elif isinstance(action, Resync):
                counter = self._resync_counters.get(action.reason)
                if counter is None:
                    counter = self._resync_counters[action.reason] = BOOK_RESYNCS.labels(
                        action.reason
                    )
                counter.inc()
                log.info("book_resync", symbol=symbol, reason=action.reason, detail=action.detail)
            elif isinstance(action, StateChanged):
                self._on_state(symbol, str(action.state), action.reason)
            elif isinstance(action, Rejected):
                BAD_INPUT.labels(source="depth", kind=action.kind).inc()
                log.warning("depth_rejected", symbol=symbol, kind=action.kind, detail=action.detail)

    def _on_state(self, symbol: str, state: str, reason: str | None) -> None:
        if state == LIVE:
            self._ever_live.add(symbol)
            self._changed(symbol)
        else:
            self.throttle.discard(symbol)  # that state must never go out
            self.audits.cancel(symbol)
        self._set_status(symbol, state, reason, int(time.time() * 1000))

    def _set_status(self, symbol: str, state: str, reason: str | None, now_ms: int) -> None:
        status = self.status.update(symbol, state, reason, now_ms)
        if status is not None:
            BOOKS_SYNCED.set(self.status.live_count)
            self._status_out.append((symbol, status.encode()))
            self._wake.set()

    def _queue_all_status(self, part: int = 0, parts: int = 1) -> None:
        """Queue every status, or every ``parts``-th one from the ``part``-th."""
        statuses = self.status.all()[part::parts]
        self._status_out.extend((s.symbol, s.encode()) for s in statuses)
        self._wake.set()
        if part == 0:
            self._report_shards()

    def _queue_status(self, symbols: list[str]) -> None:
        statuses = {s.symbol: s for s in self.status.all()}
        self._status_out.extend(
            (symbol, statuses[symbol].encode()) for symbol in symbols if symbol in statuses
        )

    # --- publishing ---

    def _changed(self, symbol: str) -> None:
        # Wake the publisher if this change is due before the time it sleeps until: a change
        # due one interval from now must not wait for an unrelated wake-up (with no other
        # pending pair, the publisher sleeps with no deadline at all).
        throttle = self.throttle
        throttle.changed(symbol, time.monotonic())
        due = throttle.next_due()
        if due is not None and due < self._publisher_sleeps_until:
            self._wake.set()

    async def _publish_forever(self) -> None:
        throttle = self.throttle
        loop = asyncio.get_running_loop()
        while True:
            while self._status_out:
                symbol, payload = self._status_out.popleft()
                term = self.ctx.term_for(self.ctx.shard_of(symbol))
                if term is not None:
                    with contextlib.suppress(PayloadTooLargeError):
                        payload = stamp(payload, term.epoch, term.shard)
                        self.ctx.publish(status_subject(symbol), payload, term)
            now = time.monotonic()
            due = throttle.next_due()
            if due is None or due > now:
                self._wake.clear()
                self._publisher_sleeps_until = math.inf if due is None else due
                # One timer for the earliest due pair (not a timeout context per sleep: that
                # costs a raised TimeoutError each time, ~1000 times a second under load).
                timer = None if due is None else loop.call_later(due - now, self._wake.set)
                try:
                    await self._wake.wait()
                finally:
                    if timer is not None:
                        timer.cancel()
                self._publisher_sleeps_until = -math.inf  # awake: it looks at the throttle
                continue
            for symbol in throttle.pop_due(now):
                self._publish_book(symbol)
            self.ctx.nats.send_queued()

    def _publish_book(self, symbol: str) -> None:
        sync = self.books.get(symbol)
        if sync is None or not sync.is_live:
            return
        seq = self._seq.get(symbol, 0) + 1
        shard = self._shard[symbol]
        term = self.ctx.term_for(shard)  # the epoch in the book and the right to send it
        views = self._views.get(symbol)
        if views is None:
            views = self._views[symbol] = ViewPublisher()
        rendered = views.render(
            sync,
            self.book_settings.settings_for(symbol),
            seq=seq,
            epoch=term.epoch if term is not None else 0,
            shard=shard,
        )
        if rendered is None:  # the market walked beyond the book's window: never publish it short
            self._act(symbol, sync, sync.on_window_lost())
            return
        payload, delta = rendered
        self.throttle.sent(symbol, time.monotonic())
        try:
            sent = term is not None and self.ctx.publish(f"orderbook.{symbol}", payload, term)
        except PayloadTooLargeError:
            return  # logged and counted by the publisher
        if sent and term is not None:
            self._seq[symbol] = seq
            self._latency.observe(max(0.0, time.time() - sync.last_event_time / 1000))
            self.ctx.cache_value(orderbook_key(symbol), payload, term=term)
            self._publish_delta(symbol, views, delta, term)

    def _publish_delta(
        self, symbol: str, views: ViewPublisher, delta: bytes | None, term: Term
    ) -> None:
        """The full view went out: its delta follows, in the same term (none for the first view
        of a term), and the next delta chains from this view. With deltas off no view is chained
        from, so none is computed."""
        if not self.publish_deltas:
            return
        views.published()
        if delta is not None:
            with contextlib.suppress(PayloadTooLargeError):  # consumers see the gap in seq
                self.ctx.publish(f"delta.orderbook.{symbol}", delta, term)

    async def _republish_status_forever(self) -> None:
        for part in itertools.cycle(range(STATUS_REPUBLISH_SLICES)):
            await asyncio.sleep(STATUS_REPUBLISH_SECONDS / STATUS_REPUBLISH_SLICES)
            self._queue_all_status(part, STATUS_REPUBLISH_SLICES)

    # --- quiet books ---

    async def _verify_quiet_forever(self) -> None:
        try:
            while True:
                await asyncio.sleep(QUIET_TICK_SECONDS)
                decisions = self.quiet.tick(time.monotonic())
                for symbol, exchange_id in decisions.stale:
                    self._on_stale(symbol, exchange_id)
                for symbol in decisions.check:
                    task = asyncio.create_task(self._check_quiet(symbol), name=f"quiet-{symbol}")
                    self._checks.add(task)
                    task.add_done_callback(self._checks.discard)
        finally:
            for task in self._checks:
                task.cancel()

    async def _check_quiet(self, symbol: str) -> None:
        try:
            reply = await self.rest.depth(symbol, CHECK_LIMIT)
        except (ExchangeError, ExchangeUnavailable) as exc:
            log.warning("quiet_check_failed", symbol=symbol, error=str(exc))
            self.quiet.check_failed(symbol, time.monotonic())
            return
        self.quiet.checked(symbol, reply.last_update_id, time.monotonic())

    def _on_stale(self, symbol: str, exchange_id: int) -> None:
        """The exchange moved past what the pair's stream delivered, and nothing came since."""
        sync = self.books.get(symbol)
        if sync is None:
            return
        log.warning(
            "stream_stale", symbol=symbol, exchange_id=exchange_id, book_id=sync.last_update_id
        )
        self._act(symbol, sync, sync.on_stale(exchange_id))
        self.feed.resubscribe([symbol])

    # --- audit ---

    async def _audit_forever(self) -> None:
        order: itertools.cycle[str] | None = None
        known: frozenset[str] = frozenset()
        while True:
            await asyncio.sleep(self.settings.audit_interval_seconds)
            if self.planner.pending:
                continue  # syncing books come first
            if known != self.books.keys():
                known = frozenset(self.books)
                order = itertools.cycle(sorted(known))
            if order is None or not known:
                continue
            for symbol in itertools.islice(order, len(known)):
                sync = self.books.get(symbol)
                if sync is not None and sync.is_live:
                    await self._audit(symbol)
                    break

    async def _audit(self, symbol: str) -> None:
        try:
            reply = await self.rest.depth(symbol, AUDIT_LIMIT)
        except (ExchangeError, ExchangeUnavailable) as exc:
            log.warning("audit_snapshot_failed", symbol=symbol, error=str(exc))
            return
        sync = self.books.get(symbol)
        if sync is None or not sync.is_live:
            return
        snapshot = AuditSnapshot(reply.last_update_id, AUDIT_LIMIT, reply.bids, reply.asks)
        verdict = self.audits.offer(symbol, snapshot, sync.last_update_id)
        if verdict is Verdict.COMPARE:
            self._audit_compare(symbol, sync, snapshot)
        elif verdict is Verdict.MISSED:
            log.info("audit_missed", symbol=symbol, snapshot_id=reply.last_update_id)

    def _audit_advanced(self, symbol: str, sync: BookSync) -> None:
        verdict, snapshot = self.audits.advanced(symbol, sync.last_update_id)
        if verdict is Verdict.COMPARE and snapshot is not None:
            self._audit_compare(symbol, sync, snapshot)
        elif verdict is Verdict.MISSED:
            log.info("audit_missed", symbol=symbol, book_id=sync.last_update_id)

    def _audit_compare(self, symbol: str, sync: BookSync, snapshot: AuditSnapshot) -> None:
        book = sync.book
        result = compare(symbol, snapshot, book.bids.levels(), book.asks.levels())
        BOOK_AUDIT_MATCH.labels(symbol).set(result.ratio)
        log.info(
            "audit",
            symbol=symbol,
            update_id=result.last_update_id,
            compared=result.compared,
            matching=result.matching,
        )


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Keep an exact local order book for every pair (REST snapshots + <pair>@depth@100ms "
        "diffs), publish a filtered view on orderbook.<SYMBOL> (at most one message per pair "
        "per PUBLISH_INTERVAL_MS), each book's state on status.orderbook.<SYMBOL>, and the "
        "latest book in Redis (marketpipe:orderbook:<SYMBOL>)."
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    return run_service(
        "orderbook",
        args,
        settings,
        OrderbookService,
        sharded=True,
        cache_flush_seconds=CACHE_FLUSH_SECONDS,
    )
