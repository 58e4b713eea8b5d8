"""Fault injection plans, with no I/O: what to do to the next diff event or REST request.

A fault is a JSON object with a ``type`` (see docs/simulator.md). Standing faults (drop, duplicate,
reorder, stale/slow snapshots, REST errors) live here; actions on connections (close, malformed
frames, silence, muting a stream, serverShutdown) are carried out by the server at once.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from marketpipe.simulator.protocol import InvalidStream, canonical_stream

DIFF_FAULTS = ("drop", "duplicate", "reorder")
CONNECTION_FAULTS = ("close", "malformed", "silent", "mute_stream", "server_shutdown")
MALFORMED_KINDS = ("not_json", "wrong_types", "bad_sequence")
REST_STATUSES = (429, 418, 500, 502, 503, 504)
REST_FAULTS = ("rest_error", "rest_malformed")  # rest_malformed: HTTP 200, unreadable body
REST_MALFORMED_KINDS = ("not_json", "wrong_types")


class FaultError(ValueError):
    """A fault description that cannot be carried out."""


@dataclass
class Fault:
    type: str
    symbol: str | None = None  # None: every symbol
    probability: float = 1.0
    count: int | None = None  # None: until cleared
    status: int = 503
    retry_after: int = 5
    path: str = "/api/"
    seconds: float = 0.0
    code: int = 1000
    abrupt: bool = False
    kind: str = "not_json"
    stream: str | None = None  # mute_stream: this stream (None: every stream of the symbol)

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def parse_fault(data: Any) -> Fault:
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise FaultError("a fault is an object with a string 'type'")
    known = DIFF_FAULTS + CONNECTION_FAULTS + REST_FAULTS + ("stale_snapshot", "slow_snapshot")
    if data["type"] not in known:
        raise FaultError(f"unknown fault type {data['type']!r}; expected one of {', '.join(known)}")
    fields = set(Fault.__dataclass_fields__)
    unknown = set(data) - fields
    if unknown:
        raise FaultError(f"unknown fault keys: {', '.join(sorted(unknown))}")
    try:
        fault = Fault(**data)
    except TypeError as exc:
        raise FaultError(str(exc)) from None
    if fault.symbol is not None:
        fault.symbol = str(fault.symbol).upper()
    if not 0.0 <= float(fault.probability) <= 1.0:
        raise FaultError("probability must be within 0..1")
    if fault.count is not None and (not isinstance(fault.count, int) or fault.count < 1):
        raise FaultError("count must be a positive integer")
    if fault.type == "rest_error" and fault.status not in REST_STATUSES:
        raise FaultError(f"status must be one of {REST_STATUSES}")
    if fault.type == "malformed" and fault.kind not in MALFORMED_KINDS:
        raise FaultError(f"kind must be one of {', '.join(MALFORMED_KINDS)}")
    if fault.type == "rest_malformed" and fault.kind not in REST_MALFORMED_KINDS:
        raise FaultError(f"kind must be one of {', '.join(REST_MALFORMED_KINDS)}")
    if fault.type == "mute_stream":
        _check_mute(fault)
    if fault.type == "stale_snapshot" and fault.count is None:
        fault.count = 1
    return fault


def _check_mute(fault: Fault) -> None:
    """A muted stream is a valid stream name; its symbol is the fault's (or taken from it)."""
    if fault.stream is None:
        if fault.symbol is None:
            raise FaultError("mute_stream needs a symbol or a stream")
        return
    try:
        stream = canonical_stream(str(fault.stream))
    except InvalidStream:
        raise FaultError(f"invalid stream {fault.stream!r}") from None
    symbol = stream.partition("@")[0].upper()
    if fault.symbol is not None and fault.symbol != symbol:
        raise FaultError(f"stream {fault.stream!r} is not a stream of {fault.symbol}")
    fault.symbol = symbol


@dataclass
class FaultPlan:
    """Standing faults, consulted for each diff event and each REST request."""

    seed: int = 0
    faults: list[Fault] = field(default_factory=list)
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def add(self, fault: Fault) -> None:
        self.faults.append(fault)

    def clear(self) -> None:
        self.faults.clear()

    def _take(self, types: tuple[str, ...], symbol: str | None, path: str = "") -> Fault | None:
        for fault in self.faults:
            if fault.type not in types:
                continue
            if fault.symbol is not None and symbol is not None and fault.symbol != symbol:
                continue
            if fault.symbol is not None and symbol is None:
                continue
            if path and not path.startswith(fault.path):
                continue
            if fault.probability < 1.0 and self.rng.random() >= fault.probability:
                continue
            if fault.count is not None:
                fault.count -= 1
                if fault.count == 0:
                    self.faults.remove(fault)
            return fault
        return None

    def on_diff(self, symbol: str) -> str | None:
        """'drop', 'duplicate', 'reorder' or None for this symbol's next diff event."""
        if not self.faults:
            return None
        fault = self._take(DIFF_FAULTS, symbol)
        return fault.type if fault else None

    def on_rest(self, path: str) -> Fault | None:
        if not self.faults:
            return None
        return self._take(REST_FAULTS, None, path)

    def on_snapshot(self, symbol: str) -> tuple[Fault | None, Fault | None]:
        """(stale fault, slow fault) for this depth request."""
        if not self.faults:
            return None, None
        return self._take(("stale_snapshot",), symbol), self._take(("slow_snapshot",), symbol)
