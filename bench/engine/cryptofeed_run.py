"""Runs inside the cryptofeed 3.x environment (Python 3.13): cryptofeed's own Binance book path fed
the recorded frames offline. Prints one JSON object of figures. Not importable from marketpipe."""

import asyncio
import json
import sys
import time
import tracemalloc
from pathlib import Path

from cryptofeed.defines import L2_BOOK
from cryptofeed.exchanges import Binance
from cryptofeed.symbols import Symbols


async def _noop(book, receipt_timestamp):  # the feed needs a callback to run its book path
    return None


def _feed(pairs: list[dict[str, str]]) -> Binance:
    info = {
        "symbols": [
            {
                "symbol": p["symbol"],
                "status": "TRADING",
                "baseAsset": p["base"],
                "quoteAsset": p["quote"],
                "filters": [{"tickSize": "0.00000001"}],
            }
            for p in pairs
        ]
    }
    mapping, extra = Binance._parse_symbol_data(info)
    Symbols.set(Binance.id, mapping, extra)
    return Binance(
        symbols=[f"{p['base']}-{p['quote']}" for p in pairs],
        channels=[L2_BOOK],
        callbacks={L2_BOOK: _noop},
    )


def _seed(feed: Binance, symbols: list[str], snapshots: list[str]) -> None:
    for symbol, snapshot in zip(symbols, snapshots, strict=True):
        std = feed.exchange_symbol_to_std_symbol(symbol)
        book = feed._parse_snapshot(std, snapshot)
        feed._l2_book[std] = book
        feed.last_update_id[std] = book.sequence_number


async def main(data: Path) -> None:
    pairs = json.loads((data / "symbols.json").read_text())
    symbols = [p["symbol"] for p in pairs]
    snapshots = (data / "snapshots.jsonl").read_text().splitlines()
    frames = (data / "frames.jsonl").read_text().splitlines()
    level_updates = sum(len(d["b"]) + len(d["a"]) for d in (json.loads(f)["data"] for f in frames))

    feed = _feed(pairs)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    _seed(feed, symbols, snapshots)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    levels = sum(len(b.book.bids) + len(b.book.asks) for b in feed._l2_book.values())
    bytes_per_level = (after - before) / levels

    best = float("inf")
    for _ in range(int(sys.argv[2]) if len(sys.argv) > 2 else 1):
        feed = _feed(pairs)
        _seed(feed, symbols, snapshots)
        start = time.process_time()
        for frame in frames:
            await feed.message_handler(frame, None, 0.0)
        best = min(best, time.process_time() - start)
    print(
        json.dumps(
            {
                "level_updates": level_updates,
                "seconds": best,
                "level_updates_per_s": level_updates / best,
                "bytes_per_level": bytes_per_level,
                "python": sys.version.split()[0],
            }
        )
    )


asyncio.run(main(Path(sys.argv[1])))
