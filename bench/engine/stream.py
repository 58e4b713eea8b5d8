"""The engine benchmark's stream: Binance combined diff frames recorded from the simulator's pure
market model (``marketpipe.simulator.market``), the same model and encoder the simulated exchange
serves, so the frames have the project's realistic shape (changes concentrated at the top plus a
share anywhere in the book, trades sweeping the best levels, the mid drifting, books trimmed to
5000 levels a side). Deterministic: same seed, same bytes. 200 k frames take a few seconds.

Recording order follows the exchange: every 100 ms each pair steps once and emits its diff, if
it changed. Per pair, the first diff is buffered by the engine before the REST snapshot taken
right after it, as a real sync does.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from marketpipe.simulator.market import Market, SymbolMarket

START_MS = 1_765_432_100_000
INTERVAL_MS = 100  # @depth@100ms


@dataclass
class Recording:
    """Per pair: a first frame, the snapshot taken right after it; then the timed frames."""

    symbols: list[str]
    assets: list[tuple[str, str]]  # (base, quote) of each symbol
    first_frames: list[bytes]
    snapshots: list[bytes]
    frames: list[bytes]


def _frame(sym: SymbolMarket, now: int) -> bytes | None:
    diff = sym.step(now).diff
    if diff is None:
        return None
    stream = f"{sym.symbol.lower()}@depth@100ms".encode()
    return b'{"stream":"%s","data":%s}' % (stream, sym.encode_diff(diff, now))


def record(pairs: int = 50, frames: int = 200_000, levels: int = 5000, seed: int = 7) -> Recording:
    market = Market.create(pairs, seed=seed, levels=levels, now_ms=START_MS)
    symbols = list(market.symbols.values())
    now = START_MS
    first_frames, snapshots = [], []
    for sym in symbols:
        first = None
        while first is None:
            now += INTERVAL_MS
            first = _frame(sym, now)
        first_frames.append(first)
        snapshots.append(orjson.dumps(sym.depth(levels)))
    timed: list[bytes] = []
    while len(timed) < frames:
        now += INTERVAL_MS
        for sym in symbols:
            frame = _frame(sym, now)
            if frame is not None:
                timed.append(frame)
    return Recording(
        symbols=[s.symbol for s in symbols],
        assets=[(s.spec.base, s.spec.quote) for s in symbols],
        first_frames=first_frames,
        snapshots=snapshots,
        frames=timed[:frames],
    )
