"""Pure parts of the orderbook service: publish throttle, status board, audit comparison."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from marketpipe.services.book_audit import AuditBook, AuditSnapshot, Verdict, compare
from marketpipe.services.book_status import StatusBoard, status_subject
from marketpipe.services.publish_throttle import PublishThrottle
from marketpipe.services.sync_admission import SyncAdmission

INTERVAL = 0.1

# A change of some symbol at some time offset after the previous event.
changes = st.lists(
    st.tuples(st.sampled_from(["A", "B", "C"]), st.floats(min_value=0, max_value=0.3)),
    max_size=200,
)
# How long a change may wait for its slot (None: always, the throttle never defers).
max_waits = st.sampled_from([None, 0.0, 0.01, 0.05])


def _drive(
    events: list[tuple[str, float]], max_wait: float | None
) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """Feed changes to a throttle, publishing every symbol exactly when it becomes due."""
    throttle = PublishThrottle(INTERVAL, max_wait)
    now = 0.0
    sent: list[tuple[str, float]] = []
    noted: list[tuple[str, float]] = []

    def flush_until(t: float) -> None:
        while (due := throttle.next_due()) is not None and due <= t:
            for sym in throttle.pop_due(due):
                throttle.sent(sym, due)
                sent.append((sym, due))

    for symbol, step in events:
        flush_until(now + step)
        now += step
        noted.append((symbol, now))
        if throttle.changed(symbol, now):
            for sym in throttle.pop_due(now):
                throttle.sent(sym, now)
                sent.append((sym, now))
    flush_until(float("inf"))
    return noted, sent


@given(changes, max_waits)
def test_throttle_at_most_one_per_interval_per_symbol(
    events: list[tuple[str, float]], max_wait: float | None
) -> None:
    _, sent = _drive(events, max_wait)
    last: dict[str, float] = {}
    for sym, t in sent:
        if sym in last:
            assert t - last[sym] >= INTERVAL - 1e-9
        last[sym] = t


@given(changes, max_waits)
def test_throttle_every_change_goes_out_in_time(
    events: list[tuple[str, float]], max_wait: float | None
) -> None:
    noted, sent = _drive(events, max_wait)
    for sym, t in noted:
        later = [s for s_sym, s in sent if s_sym == sym and s >= t]
        assert later, "a change was never published"
        earlier = [s for s_sym, s in sent if s_sym == sym and s < t]
        slot = earlier[-1] + INTERVAL if earlier else t
        if t >= slot:
            deadline = t  # its interval is over: at once
        elif max_wait is None or slot - t <= max_wait:
            deadline = slot  # close to its slot: waits for it
        else:
            deadline = t + INTERVAL + max_wait  # or sooner, with a newer change
        # (a later change may share the message)
        assert later[0] <= deadline + 1e-9


@given(changes, max_waits)
def test_throttle_a_message_waits_for_its_slot_at_most_max_wait(
    events: list[tuple[str, float]], max_wait: float | None
) -> None:
    """Unless every change it carries came more than ``max_wait`` before the slot (and none
    came at or after it): a late message does not set the pace for the next ones."""
    noted, sent = _drive(events, max_wait)
    previous: dict[str, float] = {}
    for sym, t in sent:
        slot = previous.get(sym, -INTERVAL) + INTERVAL
        newest = max(c for c_sym, c in noted if c_sym == sym and c <= t + 1e-12)
        if max_wait is not None and t > max(newest, slot) + max_wait + 1e-9:
            assert newest < slot - max_wait + 1e-9
        previous[sym] = t


def _regular_changes(throttle: PublishThrottle, late: float) -> list[float]:
    """A pair changing every interval, whose message at 0.0 went out ``late``; when each of its
    next ten changes reaches subscribers, counted from the change."""
    assert throttle.changed("A", 0.0)
    throttle.pop_due(0.0)
    throttle.sent("A", late)
    ages = []
    for step in range(1, 11):
        now = step * INTERVAL
        while (due := throttle.next_due()) is not None and due < now:
            for _ in throttle.pop_due(due):
                throttle.sent("A", due)
                ages.append(due - (now - INTERVAL))
        if throttle.changed("A", now):
            for _ in throttle.pop_due(now):
                throttle.sent("A", now)
                ages.append(0.0)
    return ages


def test_throttle_one_late_message_does_not_age_the_later_books() -> None:
    # always waiting for the slot, every later book is as old as the first one was late
    assert _regular_changes(PublishThrottle(INTERVAL), late=0.05) == [pytest.approx(0.05)] * 9
    # deferring to the newer change: one change is skipped, then each goes out as it comes
    ages = _regular_changes(PublishThrottle(INTERVAL, 0.01), late=0.05)
    assert ages == [0.0] * 9


def test_throttle_quiet_symbol_is_due_at_once_and_busy_one_waits() -> None:
    throttle = PublishThrottle(INTERVAL, 0.01)
    assert throttle.changed("A", 10.0)
    assert throttle.pop_due(10.0) == ["A"]
    throttle.sent("A", 10.0)
    assert not throttle.changed("A", 10.095)  # 5 ms before its slot: waits for it
    assert not throttle.changed("A", 10.097)  # newer state: still one pending message
    assert throttle.next_due() == 10.0 + INTERVAL
    assert throttle.pop_due(10.099) == []
    assert throttle.pop_due(10.1) == ["A"]
    assert throttle.changed("B", 10.1)  # another symbol is not held back by A


def test_throttle_early_change_waits_for_a_newer_one_or_its_deadline() -> None:
    throttle = PublishThrottle(INTERVAL, 0.01)
    throttle.sent("A", 10.0)
    assert not throttle.changed("A", 10.03)  # 70 ms before its slot
    assert throttle.next_due() == pytest.approx(10.03 + INTERVAL + 0.01)
    assert not throttle.changed("A", 10.095)  # newer, 5 ms before the slot: the slot it is
    assert throttle.next_due() == pytest.approx(10.1)
    throttle.pop_due(10.1)
    throttle.sent("A", 10.1)
    assert not throttle.changed("A", 10.12)
    assert throttle.changed("A", 10.2)  # a newer change at the slot goes out at once
    assert throttle.pop_due(10.2) == ["A"]


def test_throttle_discard_and_forget() -> None:
    throttle = PublishThrottle(INTERVAL)
    throttle.sent("A", 0.0)
    throttle.changed("A", 0.05)
    throttle.discard("A")
    assert not throttle.pending("A")
    assert throttle.next_due() is None
    assert throttle.pop_due(1.0) == []
    throttle.forget("A")
    assert throttle.changed("A", 0.06)  # forgotten: no interval left to wait


def test_status_board_reports_changes_and_counts_live() -> None:
    board = StatusBoard()
    assert board.update("A", "syncing", None, 1) is not None
    assert board.update("A", "syncing", None, 2) is None
    live = board.update("A", "live", None, 3)
    assert live is not None and board.live_count == 1
    assert orjson.loads(live.encode()) == {
        "symbol": "A",
        "state": "live",
        "reason": None,
        "since": 3,
    }
    board.update("B", "live", None, 3)
    assert board.live_count == 2
    board.update("A", "resyncing", "gap", 4)
    assert board.live_count == 1
    board.remove("B")
    assert board.live_count == 0 and len(board) == 1
    assert status_subject("A") == "status.orderbook.A"


SNAP = AuditSnapshot(
    last_update_id=10,
    limit=2,
    bids=[("100.00", "1.0"), ("99.00", "2.0")],
    asks=[("101.00", "1.0"), ("102.00", "3.0")],
)


def test_audit_compares_only_the_snapshot_window() -> None:
    live_bids = [("100.00", "1.0"), ("99.00", "2.0"), ("98.00", "5.0")]
    live_asks = [("101.00", "1.0"), ("102.00", "3.0"), ("103.00", "1.0")]
    result = compare("X", SNAP, live_bids, live_asks)
    assert (result.compared, result.matching, result.ratio) == (4, 4, 1.0)


def test_audit_counts_missing_extra_and_different_levels() -> None:
    live_bids = [("100.00", "1.5"), ("99.50", "1.0")]  # qty differs, extra level, 99 missing
    live_asks = [("101.00", "1.0"), ("102.00", "3.0")]
    result = compare("X", SNAP, live_bids, live_asks)
    assert (result.compared, result.matching) == (5, 2)


def test_audit_short_snapshot_covers_the_whole_side() -> None:
    snap = AuditSnapshot(10, 5, [("100.00", "1.0")], [])
    result = compare("X", snap, [("100.00", "1.0"), ("1.00", "1.0")], [("200.00", "1.0")])
    assert (result.compared, result.matching) == (3, 1)


def test_audit_waits_for_the_exact_update_id() -> None:
    audits = AuditBook()
    assert audits.offer("X", SNAP, 10) is Verdict.COMPARE
    assert audits.offer("X", SNAP, 11) is Verdict.MISSED
    assert audits.offer("X", SNAP, 7) is Verdict.WAIT
    assert audits.advanced("X", 9) == (Verdict.WAIT, SNAP)
    assert audits.advanced("X", 10) == (Verdict.COMPARE, SNAP)
    assert not audits.waiting("X")
    audits.offer("X", SNAP, 7)
    assert audits.advanced("X", 12) == (Verdict.MISSED, SNAP)
    audits.offer("X", SNAP, 7)
    audits.cancel("X")
    assert audits.advanced("X", 10) == (Verdict.WAIT, None)


def test_admission_priority_first_within_the_window() -> None:
    gate = SyncAdmission(window=2, grace_seconds=5)
    for symbol in ("A", "B", "C"):
        gate.add(symbol, priority=False)
    gate.add("P", priority=True)
    assert gate.admit(0.0, queued=0) == ["P", "A"]
    assert gate.admit(0.1, queued=0) == []  # P and A have not asked for snapshots yet
    gate.requested("P")
    assert gate.admit(0.2, queued=1) == []  # P's snapshot is queued: still two waiting
    assert gate.admit(0.3, queued=0) == ["B"]  # P's snapshot is being fetched
    assert gate.admitted == {"P", "A", "B"} and gate.waiting == 1


def test_admission_quiet_pairs_stop_counting_and_removal() -> None:
    gate = SyncAdmission(window=1, grace_seconds=5)
    gate.add("A", priority=False)
    gate.add("B", priority=False)
    assert gate.admit(0.0, queued=0) == ["A"]
    assert gate.admit(4.9, queued=0) == []
    assert gate.admit(5.0, queued=0) == ["B"]  # A stayed silent: it no longer blocks B
    gate.remove("A")
    gate.add("C", priority=False)
    gate.remove("C")
    assert gate.admit(20.0, queued=0) == [] and gate.admitted == {"B"}


def test_admission_promotion_to_priority() -> None:
    gate = SyncAdmission(window=1)
    gate.add("A", priority=False)
    gate.add("B", priority=False)
    gate.add("B", priority=True)
    gate.add("B", priority=False)  # no demotion
    assert gate.admit(0.0, queued=0) == ["B"]
    gate.add("B", priority=True)  # already admitted: nothing changes
    gate.requested("B")
    assert gate.admit(0.1, queued=0) == ["A"]
    assert gate.admit(0.2, queued=0) == []
