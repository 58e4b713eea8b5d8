"""``marketpipe record`` and ``marketpipe replay`` end to end, at a small scale (the 60 s run at
200 pairs is ``bench/bench_record_replay.py``, the same procedure): the replayed NATS stream
equals the recorded one message for message, and the replayed exchange drives a fresh
``orderbook`` to the same books as the recorded one."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.bench_record_replay import record_and_replay

pytestmark = pytest.mark.timeout(240)


async def test_a_recorded_day_replays_exactly(tmp_path: Path) -> None:
    report = await record_and_replay(pairs=8, seconds=5, workdir=tmp_path, levels=200)
    assert report.nats_recorded > 8 * 5 * 5  # books and deltas of every pair, ~10/s each
    assert report.nats_equal, (report.nats_recorded, report.nats_replayed)
    assert report.exchange_frames > 8 * 5 * 5
    assert report.books_different == 0
    # the two services' throttles pick different states: on a loaded machine fewer in common
    assert report.books_compared > 8 * 5
    assert report.books_compared >= 0.3 * report.books_replayed
