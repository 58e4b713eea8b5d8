"""What the simulator's surfaces (REST routes, stream connections, admin API) share: its
configuration and the exchange itself -- the market, the standing faults, the weight limits."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from marketpipe.simulator.faults import Fault, FaultPlan
from marketpipe.simulator.market import FrozenBook, Market, SymbolSpec
from marketpipe.simulator.protocol import MAX_STREAMS, WeightLimiter
from marketpipe.simulator.source import ExchangeSource
from marketpipe.simulator.units import SCALE


@dataclass
class SimConfig:
    symbols: int = 20
    seed: int = 1
    rate: float = 10.0  # diffs per second per symbol
    levels: int = 2000  # target levels per side
    weight_limit: int = 6000
    ban_seconds: float = 120.0
    ping_seconds: float = 20.0
    pong_timeout_seconds: float = 60.0
    max_connection_age_seconds: float = 86_400.0
    max_streams: int = MAX_STREAMS
    max_messages_per_second: int = 5
    paused: bool = False
    faults: list[Fault] = field(default_factory=list)
    source: ExchangeSource | None = None  # serve this market instead of the model (a replay)


def now_ms() -> int:
    return int(time.time() * 1000)


class Exchange:
    """The market and what stands between it and clients: standing faults (with the books
    frozen for stale snapshots), per-client weight limits, and a log of recent REST requests."""

    def __init__(self, config: SimConfig) -> None:
        self.source = config.source
        self.market = Market.create(
            config.symbols if self.source is None else 0, config.seed, config.levels, now_ms()
        )
        if self.source is not None:
            for symbol in self.source.symbols():
                self.market.add(source_spec(symbol), now_ms())
        self.faults = FaultPlan(seed=config.seed)
        self.frozen: dict[str | None, FrozenBook | None] = {}  # stale snapshots by symbol
        for fault in config.faults:
            self.add_fault(fault)
        self.limiter = WeightLimiter(config.weight_limit, config.ban_seconds)
        # Recent REST requests (time, path, query, status), so tests can see what a client sent.
        self.rest_log: deque[dict[str, Any]] = deque(maxlen=1000)

    def add_fault(self, fault: Fault) -> None:
        """A standing fault; a stale snapshot freezes its symbol's book now."""
        if fault.type == "stale_snapshot":
            sym = self.market.symbols.get(fault.symbol or "")
            self.frozen[fault.symbol] = sym.freeze() if sym else None
        self.faults.add(fault)

    def clear_faults(self) -> None:
        self.faults.clear()
        self.frozen.clear()


def source_spec(symbol: str) -> SymbolSpec:
    """A listing for a symbol another source serves (its model is never stepped)."""
    quote = next(
        (q for q in ("USDT", "USDC", "FDUSD", "BTC", "ETH", "BNB") if symbol.endswith(q)), ""
    )
    return SymbolSpec(
        symbol, symbol.removesuffix(quote) or symbol, quote or "USDT", SCALE, 1000, 1000
    )
