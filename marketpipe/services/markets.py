"""``marketpipe markets``: every pair's 24 h ticker in one view, published once a second.

Wiring only. The pairs are the assets universe restricted to what the exchange says is
``TRADING`` (``exchangeInfo``, polled every ``ASSETS_POLL_SECONDS``), so delisted or halted pairs
leave and new listings join without a restart. Their tickers come first from REST
``ticker/24hr`` (the initial snapshot, and any pair that joins later), then from the per-pair
``@ticker`` streams; :class:`~marketpipe.services.markets_model.MarketsModel` holds them.
Every ticker taken is written to the ``marketpipe:markets`` hash at once; every second
``markets.SNAPSHOT`` (all pairs) and ``markets.DATA`` (changed or new pairs, only when there are
any) are published. A payload larger than the NATS ``max_payload`` is refused by the publisher,
which logs and counts it.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from marketpipe.config import Settings
from marketpipe.exchange.backoff import Backoff
from marketpipe.exchange.messages import MarketEvent, Ticker
from marketpipe.exchange.rest import ExchangeError, ExchangeInfo, ExchangeUnavailable
from marketpipe.logs import get_logger
from marketpipe.ops.metrics import BAD_INPUT, MARKETS_PAIRS
from marketpipe.services.feed import Outbox, PairFeed, make_rest
from marketpipe.services.feed_messages import tickers_from_rest
from marketpipe.services.markets_model import MarketsModel
from marketpipe.services.runtime import ServiceContext, run_service
from marketpipe.sources.assets import Universe
from marketpipe.sources.polling import Poller
from marketpipe.supervision import Supervised
from marketpipe.transport.redis_cache import MARKETS_HASH

log = get_logger(__name__)

TICK_SECONDS = 1.0
ALL_PAIRS_AT = 100  # above this many pairs one all-pairs request costs the same weight (80)


class MarketsService:
    def __init__(self, ctx: ServiceContext) -> None:
        self._ctx = ctx
        self._rest = make_rest(ctx)
        self._feed = PairFeed(
            ctx, "ticker", self._on_event, self._rest, on_universe=self._on_assets
        )
        self._trading_poller: Poller[frozenset[str]] = Poller(
            "exchange_info",
            self._exchange_info,
            _trading,
            self._on_trading,
            ctx.settings.assets_poll_seconds,
        )
        # keyed by symbol: an "epoch" key among them would read as a pair
        self._outbox = Outbox(ctx, "markets", stamp_epoch=False)
        self._model = MarketsModel()
        self._assets: Universe | None = None
        self._trading: frozenset[str] | None = None
        self._loaded = False  # the first REST snapshot has been taken
        self._load_wanted = asyncio.Event()
        self._tasks: list[Supervised] = []

    async def start(self) -> None:
        await self._outbox.start()
        await self._feed.start()
        spawn = self._ctx.tasks.spawn
        self._tasks = [
            spawn("markets-exchange-info", self._trading_poller.run),
            spawn("markets-rest-load", self._load_forever),
            spawn("markets-tick", self._tick_forever),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            await task.stop()
        await self._feed.stop()
        await self._outbox.stop()

    def ready(self) -> bool:
        return self._loaded and self._feed.ready()

    # --- which pairs ---

    async def _exchange_info(self) -> ExchangeInfo:
        try:
            return await self._rest.exchange_info()
        except (ExchangeError, ExchangeUnavailable) as exc:
            raise OSError(f"exchangeInfo: {exc}") from exc  # the poller logs and tries later

    def _on_assets(self, universe: Universe) -> None:
        self._assets = universe
        self._update_pairs()

    def _on_trading(self, trading: frozenset[str]) -> None:
        self._trading = trading
        self._update_pairs()

    def _update_pairs(self) -> None:
        if self._assets is None or self._trading is None:
            return
        pairs = [s for s in self._assets.symbols if s in self._trading]
        gone = self._model.set_universe(pairs)
        if gone:
            log.info("markets_pairs_left", symbols=gone)
            self._ctx.cache_delete_fields(MARKETS_HASH, gone)
        self._feed.set_pairs(pairs)
        self._load_wanted.set()

    # --- tickers in ---

    def _on_event(self, event: MarketEvent) -> None:
        if not isinstance(event, Ticker):
            BAD_INPUT.labels(source="exchange_ws", kind="unexpected_event").inc()
            return
        self._take(event)

    def _take(self, ticker: Ticker) -> None:
        message = self._model.apply(ticker)
        if message is not None:
            self._ctx.cache_fields(MARKETS_HASH, {ticker.s: message})

    async def _load_forever(self) -> None:
        """Fetch from REST the tickers of pairs that have none yet (all of them at first)."""
        backoff = Backoff(base=1.0, cap=self._ctx.settings.reconnect_backoff_max_seconds)
        while True:
            await self._load_wanted.wait()
            self._load_wanted.clear()
            missing = self._model.missing()
            if not missing:
                self._loaded = self._trading is not None
                continue
            try:
                rows = await self._rest.ticker_24hr(
                    None if len(missing) > ALL_PAIRS_AT else missing
                )
            except (ExchangeError, ExchangeUnavailable) as exc:
                log.warning("markets_rest_load_failed", pairs=len(missing), error=str(exc))
                await asyncio.sleep(backoff.next_delay())
                self._load_wanted.set()
                continue
            backoff.reset()
            tickers, bad = tickers_from_rest(rows)
            if bad:
                BAD_INPUT.labels(source="rest", kind="ticker_row").inc(bad)
            for ticker in tickers:
                self._take(ticker)
            self._loaded = True
            log.info("markets_rest_loaded", asked=len(missing), got=len(tickers))

    # --- once a second out ---

    async def _tick_forever(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            next_at += TICK_SECONDS
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            tick = self._model.tick()
            MARKETS_PAIRS.set(len(self._model))
            if tick.snapshot is not None:
                self._outbox.put("markets.SNAPSHOT", tick.snapshot)
            if tick.data is not None:
                self._outbox.put("markets.DATA", tick.data)


def _trading(info: Any) -> frozenset[str]:
    assert isinstance(info, ExchangeInfo)
    return frozenset(s.symbol for s in info.symbols if s.status == "TRADING")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Publish the whole market every second: markets.SNAPSHOT (all pairs) and "
        "markets.DATA (pairs whose last price changed), and keep the marketpipe:markets hash."
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    return run_service("markets", args, settings, MarketsService)
