"""Leader election against a real etcd: one leader, fast hand-over, no split brain."""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from marketpipe.config import Settings
from marketpipe.ha.election import EtcdElection, StaticLeader, make_election
from marketpipe.ha.term import Term
from marketpipe.infra.local import EtcdServer
from marketpipe.supervision import Supervisor
from tests.eventually import eventually

TTL = 2
CANDIDATE = Path(__file__).with_name("candidate.py")


@dataclass
class Timeline:
    """Leadership terms per candidate, on the monotonic clock, as the callbacks saw them."""

    terms: dict[int, list[list[float]]] = field(default_factory=dict)
    epochs: list[int] = field(default_factory=list)

    def callback(self, who: int) -> Callable[[Term], None]:
        def on_change(term: Term) -> None:
            now = time.monotonic()
            if not term.ended:
                self.terms.setdefault(who, []).append([now, float("inf")])
                self.epochs.append(term.epoch)
            else:
                self.terms[who][-1][1] = now

        return on_change

    def leaders_now(self) -> list[int]:
        return [who for who, terms in self.terms.items() if terms and terms[-1][1] == float("inf")]

    def assert_no_overlap(self) -> None:
        flat = sorted((s, e, who) for who, terms in self.terms.items() for s, e in terms)
        for (_s1, e1, a), (s2, _e2, b) in itertools.pairwise(flat):
            assert a == b or e1 <= s2, f"candidates {a} and {b} led at the same time"


async def _until(condition: Callable[[], bool], within: float = 15.0) -> float:
    """When ``condition()`` first held."""
    await eventually(condition, within)
    return time.monotonic()


@pytest.fixture
async def trio(
    request: pytest.FixtureRequest,
) -> AsyncIterator[tuple[list[EtcdElection], Timeline]]:
    server: EtcdServer = request.getfixturevalue(request.param)
    timeline = Timeline()
    service = f"svc-{request.node.name}".replace("[", "-").replace("]", "")
    candidates = [
        EtcdElection([server.url], service, TTL, timeline.callback(i), identity=f"c{i}")
        for i in range(3)
    ]
    for candidate in candidates:
        await candidate.start(Supervisor("test"))
    yield candidates, timeline
    for candidate in candidates:
        await candidate.resign()


@pytest.mark.parametrize("trio", ["etcd_server"], indirect=True)
async def test_one_leader_and_resign_hands_over_at_once(
    trio: tuple[list[EtcdElection], Timeline],
) -> None:
    candidates, timeline = trio
    await _until(lambda: len(timeline.leaders_now()) == 1)
    await asyncio.sleep(TTL * 1.5)  # several keep-alive rounds: still exactly one
    assert sum(c.is_leader for c in candidates) == 1
    leader = next(c for c in candidates if c.is_leader)
    first_epoch = leader.epoch

    resigned_at = time.monotonic()
    await leader.resign()
    assert not leader.is_leader
    took_over = await _until(lambda: any(c.is_leader for c in candidates))
    assert took_over - resigned_at < 1.0
    successor = next(c for c in candidates if c.is_leader)
    assert successor.epoch > first_epoch
    timeline.assert_no_overlap()


@pytest.mark.parametrize("trio", ["fresh_etcd"], indirect=True)
async def test_paused_etcd_old_leader_stops_before_a_new_one_starts(
    trio: tuple[list[EtcdElection], Timeline], fresh_etcd: EtcdServer
) -> None:
    assert fresh_etcd.process is not None
    candidates, timeline = trio
    await _until(lambda: len(timeline.leaders_now()) == 1)
    old = timeline.leaders_now()[0]
    old_epoch = candidates[old].epoch

    paused_at = time.monotonic()
    fresh_etcd.process.pause()
    try:
        # the leader cannot renew: it must stop publishing by itself, within its TTL
        stepped_down = await _until(lambda: not candidates[old].is_leader, within=TTL + 1)
        assert stepped_down - paused_at <= TTL + 0.2
        await asyncio.sleep(TTL)  # time for a candidate to lead without etcd, were it to
        assert not any(c.is_leader for c in candidates)
    finally:
        fresh_etcd.process.resume()
    await _until(lambda: any(c.is_leader for c in candidates))
    assert max(c.epoch for c in candidates if c.is_leader) > old_epoch
    await asyncio.sleep(TTL)  # time for a second leader to appear, were it to
    assert sum(c.is_leader for c in candidates) == 1
    timeline.assert_no_overlap()


@pytest.mark.parametrize("trio", ["fresh_etcd"], indirect=True)
async def test_etcd_restart_is_survived(
    trio: tuple[list[EtcdElection], Timeline], fresh_etcd: EtcdServer
) -> None:
    assert fresh_etcd.process is not None
    candidates, timeline = trio
    await _until(lambda: len(timeline.leaders_now()) == 1)
    fresh_etcd.process.kill()
    await _until(lambda: not any(c.is_leader for c in candidates), within=TTL + 1)
    fresh_etcd.process.start()
    await _until(lambda: sum(c.is_leader for c in candidates) == 1, within=20)
    timeline.assert_no_overlap()


async def _spawn(url: str, service: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, str(CANDIDATE), url, service, str(TTL), stdout=asyncio.subprocess.PIPE
    )


async def _next_report(proc: asyncio.subprocess.Process) -> dict[str, object]:
    assert proc.stdout is not None
    line = await proc.stdout.readline()
    assert line, "candidate exited"
    report: dict[str, object] = json.loads(line)
    return report


async def test_kill_9_of_the_leader_process_a_follower_leads_within_ttl_plus_1s(
    etcd_server: EtcdServer,
) -> None:
    procs = [await _spawn(etcd_server.url, "svc-kill9") for _ in range(3)]
    try:
        reports = [asyncio.ensure_future(_next_report(p)) for p in procs]
        done, _ = await asyncio.wait(reports, timeout=20, return_when="FIRST_COMPLETED")
        assert done, "nobody became leader"
        first = next(iter(done))
        leader = reports.index(first)
        assert first.result()["leader"] is True
        await asyncio.sleep(0.5)  # followers are campaigning too
        procs[leader].send_signal(signal.SIGKILL)
        killed_at = time.time()
        others = [r for i, r in enumerate(reports) if i != leader]
        done, _ = await asyncio.wait(others, timeout=TTL + 5, return_when="FIRST_COMPLETED")
        assert done, "no follower took over"
        report = next(iter(done)).result()
        assert report["leader"] is True
        assert float(report["at"]) - killed_at <= TTL + 1  # type: ignore[arg-type]
        assert int(report["epoch"]) > int(first.result()["epoch"])  # type: ignore[call-overload]
        for r in reports:
            r.cancel()
    finally:
        for p in procs:
            if p.returncode is None:
                p.kill()
            await p.wait()


async def test_without_etcd_the_instance_always_leads_with_a_growing_epoch() -> None:
    seen: list[tuple[bool, int]] = []
    election = make_election(
        Settings(etcd_endpoints=[]), "svc", lambda t: seen.append((not t.ended, t.epoch))
    )
    assert isinstance(election, StaticLeader)
    await election.start(Supervisor("test"))
    assert election.is_leader and seen == [(True, election.epoch)]
    assert abs(election.epoch - time.time() * 1000) < 5000
    term = election.term
    await election.resign()
    assert not election.is_leader
    assert term is not None and term.ended and not term.valid()
    assert seen[-1] == (False, term.epoch)
