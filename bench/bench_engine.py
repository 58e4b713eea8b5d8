"""Benchmark a: the order book engine on a recorded stream of Binance combined diff frames
(recorded once from the simulator's market model, ``bench/engine/stream.py``).

    .venv/bin/python -m bench.bench_engine [--frames 200000] [--repeat 3] [--no-cryptofeed]

Raw JSON text in (decode + checks + apply), side by side in one run with cryptofeed 3.x's own
Binance book path (in its own Python 3.13 environment, created under bench/.envs/ if missing)
and a bare sortedcontainers loop (orjson + SortedDict). Also: msgspec vs orjson decoding, the
cost of rendering a published view, and resident memory per book level (tracemalloc).
CPU time (process_time), best of --repeat runs: the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import msgspec
import orjson
from sortedcontainers import SortedDict

from bench.engine.stream import Recording, record
from marketpipe.book.sync import BookSync
from marketpipe.book.view import render_view
from marketpipe.exchange.messages import decode_combined_depth
from marketpipe.exchange.rest import DepthSnapshot

ROOT = Path(__file__).resolve().parent
CACHE = ROOT / "results" / "engine-stream-sim"
CRYPTOFEED_ENV = ROOT / ".envs" / "cryptofeed"
PYTHON_313 = "/root/.pyenv/versions/3.13.0/bin/python"
SNAPSHOT_LIMIT = 5000

_snapshot = msgspec.json.Decoder(DepthSnapshot)


def load_recording(frames: int) -> Recording:
    """Recorded once from the simulator's market model (deterministic), then read back."""
    folder = CACHE / str(frames)
    if not (folder / "frames.jsonl").exists():
        folder.mkdir(parents=True, exist_ok=True)
        rec = record(frames=frames)
        pairs = [
            {"symbol": symbol, "base": base, "quote": quote}
            for symbol, (base, quote) in zip(rec.symbols, rec.assets, strict=True)
        ]
        (folder / "symbols.json").write_bytes(orjson.dumps(pairs))
        for name, items in (
            ("first", rec.first_frames),
            ("snapshots", rec.snapshots),
            ("frames", rec.frames),
        ):
            (folder / f"{name}.jsonl").write_bytes(b"\n".join(items))
    lines = lambda name: (folder / f"{name}.jsonl").read_bytes().split(b"\n")  # noqa: E731
    pairs = orjson.loads((folder / "symbols.json").read_bytes())
    return Recording(
        [p["symbol"] for p in pairs],
        [(p["base"], p["quote"]) for p in pairs],
        lines("first"),
        lines("snapshots"),
        lines("frames"),
    )


def level_count(rec: Recording) -> int:
    return sum(len(d["b"]) + len(d["a"]) for d in (orjson.loads(f)["data"] for f in rec.frames))


def synced_books(rec: Recording) -> dict[str, BookSync]:
    books = {}
    for symbol, first, snapshot in zip(rec.symbols, rec.first_frames, rec.snapshots, strict=True):
        sync = BookSync(symbol, buffer_size=1000)
        sync.on_diff(decode_combined_depth(first).data)
        sync.on_snapshot(_snapshot.decode(snapshot), SNAPSHOT_LIMIT)
        assert sync.is_live, symbol
        books[symbol] = sync
    return books


def run_ours(rec: Recording) -> float:
    books = synced_books(rec)
    start = time.process_time()
    for frame in rec.frames:
        update = decode_combined_depth(frame).data
        books[update.symbol].on_diff(update)
    elapsed = time.process_time() - start
    assert all(s.is_live for s in books.values())
    return elapsed


def run_sortedcontainers(rec: Recording) -> float:
    books = {}
    for symbol, snapshot in zip(rec.symbols, rec.snapshots, strict=True):
        body = orjson.loads(snapshot)
        books[symbol] = (
            SortedDict({float(p): q for p, q in body["bids"]}),
            SortedDict({float(p): q for p, q in body["asks"]}),
        )
    start = time.process_time()
    for frame in rec.frames:
        data = orjson.loads(frame)["data"]
        bids, asks = books[data["s"]]
        for side, levels in ((bids, data["b"]), (asks, data["a"])):
            for price, quantity in levels:
                if float(quantity) == 0.0:
                    side.pop(float(price), None)
                else:
                    side[float(price)] = quantity
    return time.process_time() - start


def best_of(repeat: int, run: Callable[[Recording], float], rec: Recording) -> float:
    return min(run(rec) for _ in range(repeat))


def decode_rates(rec: Recording) -> dict[str, float]:
    frames = rec.frames[:50_000]
    rates = {}
    for name, decode in (("msgspec", decode_combined_depth), ("orjson", orjson.loads)):
        start = time.process_time()
        for frame in frames:
            decode(frame)
        rates[name] = len(frames) / (time.process_time() - start)
    return rates


def view_rate(rec: Recording, depth: int = 250) -> tuple[float, int]:
    books = list(synced_books(rec).values())

    class Settings:
        max_spread_pct = 35.0

    Settings.depth = depth  # type: ignore[attr-defined]
    count, size = 20_000, 0
    start = time.process_time()
    for i in range(count):
        size = len(render_view(books[i % len(books)], Settings(), seq=i, epoch=1))  # type: ignore[arg-type]
    return count / (time.process_time() - start), size


def memory_per_level(rec: Recording) -> float:
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    books = synced_books(rec)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return (after - before) / sum(len(s.book) for s in books.values())


def run_cryptofeed(rec: Recording, frames: int, repeat: int) -> dict[str, float] | None:
    python = CRYPTOFEED_ENV / "bin" / "python"
    if not python.exists():
        print("creating the cryptofeed 3.x environment (Python 3.13) ...", flush=True)
        subprocess.run([PYTHON_313, "-m", "venv", str(CRYPTOFEED_ENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "cryptofeed>=3"], check=True)
    out = subprocess.run(
        [
            str(python),
            str(ROOT / "engine" / "cryptofeed_run.py"),
            str(CACHE / str(frames)),
            str(repeat),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-cryptofeed", action="store_true")
    args = parser.parse_args()

    rec = load_recording(args.frames)
    levels = level_count(rec)
    print(
        f"stream: {len(rec.frames)} frames, {len(rec.symbols)} pairs, {levels} level updates, "
        f"books of ~{SNAPSHOT_LIMIT} levels a side"
    )
    ours = levels / best_of(args.repeat, run_ours, rec)
    bare = levels / best_of(args.repeat, run_sortedcontainers, rec)
    cf = None if args.no_cryptofeed else run_cryptofeed(rec, args.frames, args.repeat)
    ours_mem = memory_per_level(rec)

    print("\nlevel updates/s (raw JSON in: decode + checks + apply)")
    print(f"  marketpipe BookSync           {ours / 1e6:6.2f} M/s")
    print(f"  bare sortedcontainers loop    {bare / 1e6:6.2f} M/s   ours/bare {ours / bare:.2f}x")
    if cf:
        rate = cf["level_updates_per_s"]
        print(
            f"  cryptofeed 3 Binance (py{cf['python']}) {rate / 1e6:6.2f} M/s   "
            f"ours/cryptofeed {ours / rate:.2f}x (target >= 3x)"
        )
    print("\nmemory per resident book level (tracemalloc, 50 books x ~5000 levels a side)")
    print(f"  marketpipe                    {ours_mem:6.0f} B")
    if cf:
        print(
            f"  cryptofeed 3                  {cf['bytes_per_level']:6.0f} B   "
            f"ours/cryptofeed {ours_mem / cf['bytes_per_level']:.2f}x (target <= 0.5x)"
        )
    rates = decode_rates(rec)
    print("\ndecoding combined diff frames")
    print(
        f"  msgspec typed (+escape check) {rates['msgspec'] / 1e3:6.0f} k frames/s   "
        f"vs orjson dicts {rates['orjson'] / 1e3:.0f} k/s "
        f"({rates['msgspec'] / rates['orjson']:.2f}x)"
    )
    views, size = view_rate(rec)
    print("\npublished view (spread filter 35%, depth 250, JSON bytes)")
    print(
        f"  render_view                   {views / 1e3:6.1f} k views/s ({1e6 / views:.1f} us, "
        f"{size} B each); 20 k views/s needs {20_000 / views:.0%} of a core"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
