"""``marketpipe record``: NATS subjects, or the exchange's raw frames, to a compressed file.

    marketpipe record nats --out day/books [--subjects 'orderbook.*,delta.orderbook.*']
    marketpipe record exchange --out day/exchange [--symbols BTCUSDT,ETHUSDT] [--streams ...]

Every record keeps its receive time (ns). Files rotate by size (``--max-mb``); ``--seconds``
stops after that long, else SIGINT/SIGTERM stops it (the files are then complete). An exchange
recording subscribes the combined streams (``BINANCE_WS_URL``) of each symbol, then takes each
symbol's REST depth snapshot (``BINANCE_REST_URL``) once its first diff arrived, so that the
recording holds everything a client needs to build the books (``marketpipe replay --to
exchange``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import time
from typing import Any

import msgspec
import nats

from marketpipe.config import Settings
from marketpipe.exchange.rest import ExchangeError, ExchangeRest, ExchangeUnavailable
from marketpipe.exchange.streams import StreamHub, stream_name
from marketpipe.exchange.weights import WeightGate
from marketpipe.logs import get_logger
from marketpipe.recording.exchange import meta_record
from marketpipe.recording.files import DEFAULT_MAX_BYTES, RecordWriter
from marketpipe.recording.format import Kind, Record

log = get_logger(__name__)

DEFAULT_SUBJECTS = "orderbook.*,delta.orderbook.*,status.orderbook.*,trades.*,tickers.*,markets.*"
DEFAULT_STREAMS = "depth@100ms"
SNAPSHOT_WAIT_SECONDS = 10.0  # a symbol without a first diff by then is snapshotted anyway


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Record NATS subjects, or the exchange's raw stream frames and a REST snapshot of each "
        "pair, with receive times, to zstandard files rotated by size. See docs/recording.md."
    )
    add = parser.add_argument
    add("source", choices=["nats", "exchange"], help="what to record")
    add("--out", required=True, help="recording base path (files BASE.NNNNN.mprec.zst)")
    add("--max-mb", type=float, default=DEFAULT_MAX_BYTES / 2**20, help="rotate at this size")
    add("--seconds", type=float, default=0.0, help="stop after this long (0: on a signal)")
    add("--subjects", default=DEFAULT_SUBJECTS, help="nats: subjects (SUBJECT_PREFIX added)")
    add(
        "--symbols",
        default="",
        help="exchange: symbols (default: every TRADING pair in QUOTE_ASSETS)",
    )
    add("--streams", default=DEFAULT_STREAMS, help="exchange: stream kinds per symbol")
    add("--snapshot-limit", type=int, default=5000, help="exchange: REST depth snapshot limit")


def run(args: argparse.Namespace, settings: Settings) -> int:
    writer = RecordWriter(args.out, int(args.max_mb * 2**20))
    record = record_nats if args.source == "nats" else record_exchange
    try:
        asyncio.run(_until_stopped(record(args, settings, writer), args.seconds))
    finally:
        writer.close()
        log.info("recorded", records=writer.records, files=[str(p) for p in writer.files])
    return 0


async def _until_stopped(work: Any, seconds: float) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    task = asyncio.ensure_future(work)
    waiter = asyncio.ensure_future(stop.wait())
    await asyncio.wait({task, waiter}, timeout=seconds or None, return_when=asyncio.FIRST_COMPLETED)
    for pending in (task, waiter):
        pending.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task  # raises what the recorder raised, if it failed


async def record_nats(args: argparse.Namespace, settings: Settings, writer: RecordWriter) -> None:
    nc = await nats.connect(servers=settings.nats_urls, pending_size=1024 * 1024 * 1024)

    async def on_message(msg: Any) -> None:
        writer.write(Record(time.time_ns(), Kind.NATS, msg.subject, msg.data))

    try:
        for subject in filter(None, (s.strip() for s in args.subjects.split(","))):
            await nc.subscribe(
                settings.subject_prefix + subject, cb=on_message, pending_msgs_limit=10_000_000
            )
        await nc.flush()
        log.info("recording_nats", subjects=args.subjects, out=args.out)
        await asyncio.Event().wait()
    finally:
        await nc.close()


async def record_exchange(
    args: argparse.Namespace, settings: Settings, writer: RecordWriter
) -> None:
    gate = WeightGate(limit=settings.rest_weight_limit, share=settings.rest_weight_share)
    rest = ExchangeRest(settings.binance_rest_url, gate=gate)
    try:
        symbols = [s.strip().upper() for s in args.symbols.split(",") if s.strip()]
        if not symbols:
            symbols = (await rest.exchange_info()).trading_symbols(settings.quote_assets)
            if settings.max_symbols:
                symbols = symbols[: settings.max_symbols]
        kinds = [k.strip() for k in args.streams.split(",") if k.strip()]
        streams = [f"{s.lower()}@{kind}" for s in symbols for kind in kinds]
        writer.write(meta_record(time.time_ns(), symbols, streams, args.snapshot_limit))
        flowing: dict[str, asyncio.Event] = {s: asyncio.Event() for s in symbols}

        def on_frame(raw: bytes) -> None:
            stream = stream_name(raw)
            if stream is None:
                return
            writer.write(Record(time.time_ns(), Kind.FRAME, stream, raw))
            event = flowing.get(stream.partition("@")[0].upper())
            if event is not None:
                event.set()

        hub = StreamHub(settings.binance_ws_url, on_frame)
        hub.set_streams(streams)
        runner = asyncio.create_task(hub.run(), name="record-streams")
        try:
            log.info("recording_exchange", symbols=len(symbols), streams=len(streams))
            await asyncio.gather(
                *(_snapshot(rest, writer, s, flowing[s], args.snapshot_limit) for s in symbols)
            )
            log.info("recording_exchange_snapshots_taken", symbols=len(symbols))
            await runner
        finally:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
    finally:
        await rest.close()


async def _snapshot(
    rest: ExchangeRest, writer: RecordWriter, symbol: str, flowing: asyncio.Event, limit: int
) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(flowing.wait(), SNAPSHOT_WAIT_SECONDS)
    while True:
        try:
            snapshot = await rest.depth(symbol, limit)
            break
        except (ExchangeError, ExchangeUnavailable) as exc:
            log.warning("record_snapshot_failed", symbol=symbol, error=str(exc))
            await asyncio.sleep(1.0)
    writer.write(Record(time.time_ns(), Kind.SNAPSHOT, symbol, msgspec.json.encode(snapshot)))
