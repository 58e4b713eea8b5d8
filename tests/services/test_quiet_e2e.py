"""A quiet book is verified, not trusted: ``marketpipe orderbook`` against the simulator, NATS and
Redis, with one pair's diff stream muted on a connection that stays alive (pings answered, the
other pairs flowing): the service finds the pair stale by a small snapshot, resubscribes its
stream and resyncs its book, within 30 s. A pair that is genuinely quiet (halted: nothing changes
at all) is checked ever more rarely and never resynced. Every book published is the truth at its
update id (the market is stepped by the test, see ``test_orderbook_e2e``).
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from test_orderbook_e2e import LEVELS, Rig, running_rig

from marketpipe.infra.local import NatsCluster, RedisServer
from marketpipe.infra.simulator import SimulatorProcess

SYMBOLS = 12
DETECTED_WITHIN = 30.0  # the bound; the default QUIET_BOOK_SECONDS (10) + grace (2)
# Two links of 6 streams: the muted pair's link carries 5 other pairs that keep flowing. The
# market moves every 0.15 s, so every link carries frames all the time: silence of a whole link
# is judged over 10 s, not the rig's 1.5 s, which a loaded machine (a stalled test or service)
# can exceed, closing every link at once (a disconnect of every book, not what is tested here).
ENV = {"MARKETPIPE_STREAMS_PER_CONNECTION": "6", "MARKETPIPE_SILENT_CONNECTION_SECONDS": "10"}


@pytest.fixture
def quiet_sim() -> Iterator[SimulatorProcess]:
    sim = SimulatorProcess(
        symbols=SYMBOLS,
        seed=5,
        extra_args=["--levels", str(LEVELS), "--paused", "--weight-limit", "1000000"],
    ).start()
    # every pair, halted ones too (the assets derived from the listing leave those out)
    names = [s["symbol"] for s in sim.admin("GET", "symbols")]
    sim.admin("PUT", "assets", {"priority": names[:2], "others": names[2:]})
    yield sim
    log = (sim.workdir / "exchange-sim.log").read_text(errors="replace")
    sim.stop()
    assert "Traceback" not in log, "a simulator task failed (see its log above)\n" + log[-4000:]


@pytest.fixture
async def rig(
    request: pytest.FixtureRequest,
    quiet_sim: SimulatorProcess,
    nats_cluster: NatsCluster,
    redis_server: RedisServer,
    tmp_path: Path,
) -> AsyncIterator[Rig]:
    env = {**ENV, **getattr(request, "param", {})}
    async with running_rig(quiet_sim, nats_cluster, redis_server, tmp_path, env) as rig:
        yield rig


def changes(rig: Rig, symbol: str, since_ms: float) -> list[tuple[str, str | None]]:
    """The states the pair entered since then, in order (its periodic repeats left out)."""
    seen: list[tuple[str, str | None]] = []
    for _, message in rig.recorder.status_history:
        if message["symbol"] == symbol and message["since"] >= since_ms:
            state = (message["state"], message["reason"])
            if not seen or seen[-1] != state:
                seen.append(state)
    return seen


def quiet_checks(rig: Rig, symbol: str) -> list[dict[str, Any]]:
    """The 100-level depth requests the service made for the pair (audits' and quiet checks')."""
    return [
        r
        for r in rig.sim.admin("GET", "requests")
        if r["path"] == "/api/v3/depth"
        and urllib.parse.parse_qs(r["query"]) == {"symbol": [symbol], "limit": ["100"]}
    ]


def others_stayed_live(rig: Rig, victim: str, since_ms: float) -> bool:
    return all(
        changes(rig, s, since_ms) in ([], [("live", None)]) for s in rig.symbols if s != victim
    )


async def test_a_muted_stream_is_found_stale_resubscribed_and_resynced_within_30s(
    rig: Rig,
) -> None:
    everyone = set(rig.symbols)
    await rig.drive_until(lambda: rig.recorder.live() == everyone, within=60)
    victim = rig.symbols[3]
    stream = f"{victim.lower()}@depth@100ms"
    muted_ms = time.time() * 1000
    muted_at = time.monotonic()
    rig.sim.fault(type="mute_stream", stream=stream)
    assert [c["muted"] for c in rig.sim.admin("GET", "connections") if c["muted"]] == [[stream]]

    def resynced() -> bool:
        seen = changes(rig, victim, muted_ms)
        return ("resyncing", "stale") in seen and seen[-1] == ("live", None)

    await rig.drive_until(resynced, within=DETECTED_WITHIN + 30)
    took = time.monotonic() - muted_at
    assert took < DETECTED_WITHIN, f"stale, resynced and live again after {took:.1f}s"
    assert changes(rig, victim, muted_ms) == [("resyncing", "stale"), ("live", None)]
    # the resubscription lifted the mute (the simulator drops it on UNSUBSCRIBE)
    assert not any(c["muted"] for c in rig.sim.admin("GET", "connections"))
    await rig.drive_until(rig.caught_up, within=30)
    await rig.check_quiescent()
    assert rig.check_every_book() > 10 * len(everyone)
    rig.check_sequences()
    assert others_stayed_live(rig, victim, muted_ms)  # one pair's trouble stayed its own
    assert 'marketpipe_book_resyncs_total{reason="stale"} 1.0' in await rig.metrics()
    print(f"muted {victim}: stale, resynced and live again after {took:.1f}s")


# no audits (their snapshots are 100 levels too): every such request is a quiet check
@pytest.mark.parametrize(
    "rig",
    [{"MARKETPIPE_QUIET_BOOK_SECONDS": "2", "MARKETPIPE_AUDIT_INTERVAL_SECONDS": "0"}],
    indirect=True,
)
async def test_a_halted_pair_is_checked_ever_more_rarely_and_never_resynced(rig: Rig) -> None:
    everyone = set(rig.symbols)
    await rig.drive_until(lambda: rig.recorder.live() == everyone, within=60)
    halted = rig.symbols[4]
    rig.sim.admin("POST", "symbols/status", {"symbol": halted, "status": "HALT"})
    halted_ms = time.time() * 1000
    before = len(quiet_checks(rig, halted))
    await rig.step_for(25.0)
    # quiet for 2 s, then 4, 8 s after each check: three checks in 25 s (at 2, 6, 14), not twelve
    checks = quiet_checks(rig, halted)[before:]
    times = [c["time"] for c in checks]
    assert 2 <= len(checks) <= 5, times
    gaps = [b - a for a, b in pairwise(times)]
    assert all(b > 1.5 * a for a, b in pairwise(gaps)), gaps
    assert changes(rig, halted, halted_ms) in ([], [("live", None)])
    assert others_stayed_live(rig, halted, halted_ms)
    assert "stale" not in await rig.metrics()
    await rig.drive_until(rig.caught_up, within=30)
    await rig.check_quiescent()
    assert rig.check_every_book() > 10 * len(everyone)
    print(f"halted {halted}: {len(checks)} checks in 25 s, gaps {[round(g, 1) for g in gaps]}")
