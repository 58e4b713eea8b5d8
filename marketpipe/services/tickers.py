"""``marketpipe tickers``: ``<pair>@ticker`` -> ``tickers.<SYMBOL>`` and the Redis ticker key.

Each 24 h ticker is republished with the exchange's own keys (see
:func:`~marketpipe.services.feed_messages.ticker_message`). A ticker no newer than the last one
of its pair (the overlap of a make-before-break connection swap) is not published twice.
"""

from __future__ import annotations

import argparse
from collections import Counter

from marketpipe.config import Settings
from marketpipe.exchange.messages import MarketEvent, Ticker
from marketpipe.ops.metrics import BAD_INPUT
from marketpipe.services.feed import Outbox, PairFeed, make_rest
from marketpipe.services.feed_messages import ticker_message
from marketpipe.services.runtime import ServiceContext, run_service
from marketpipe.transport.redis_cache import ticker_key


class TickersService:
    def __init__(self, ctx: ServiceContext) -> None:
        self._ctx = ctx
        self._feed = PairFeed(
            ctx,
            "ticker",
            self._on_event,
            make_rest(ctx),
            on_pairs_up=self._up,
            on_pairs_down=self._down,
        )
        self._outbox = Outbox(ctx, "tickers", ctx.cache_value)
        self._event_times: dict[str, int] = {}
        self._up_pairs: set[str] = set()

    async def start(self) -> None:
        await self._outbox.start()
        await self._feed.start()

    async def stop(self) -> None:
        await self._feed.stop()
        await self._outbox.stop()

    def ready(self) -> bool:
        return self._feed.ready()

    # --- shards (DESIGN §9) ---

    def on_ingest(self, shards: frozenset[int]) -> None:
        self._feed.on_ingest()

    def shard_hot(self, shard: int) -> bool:
        shard_of = self._ctx.shard_of
        return self._feed.knows_pairs and all(
            p in self._up_pairs for p in self._feed.pairs if shard_of(p) == shard
        )

    def shard_pairs(self) -> dict[int, int]:
        return dict(Counter(self._ctx.shard_of(p) for p in self._feed.pairs))

    def _up(self, symbols: set[str]) -> None:
        self._up_pairs |= symbols

    def _down(self, symbols: set[str]) -> None:
        self._up_pairs -= symbols

    def _on_event(self, event: MarketEvent) -> None:
        if not isinstance(event, Ticker):
            BAD_INPUT.labels(source="exchange_ws", kind="unexpected_event").inc()
            return
        symbol, event_time = event.s, event.E
        if event_time <= self._event_times.get(symbol, -1):
            return
        self._event_times[symbol] = event_time
        self._outbox.put(
            f"tickers.{symbol}",
            ticker_message(event),
            event_time,
            ticker_key(symbol),
            self._ctx.shard_of(symbol),
        )


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Publish every pair's 24 h ticker on tickers.<SYMBOL> and keep the latest in Redis."
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    return run_service("tickers", args, settings, TickersService, sharded=True)
