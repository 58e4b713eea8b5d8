import random

from hypothesis import given
from hypothesis import strategies as st

from marketpipe.exchange.stream_plan import (
    Action,
    CloseLink,
    ControlPacer,
    OpenLink,
    SendControl,
    StreamPlan,
    StreamsDown,
    StreamsUp,
    url_streams,
)

names = [f"s{i}usdt@trade" for i in range(60)]


def of(actions: list[Action], kind: type) -> list:
    return [a for a in actions if isinstance(a, kind)]


def connect_all(plan: StreamPlan, now: float) -> list[Action]:
    """Tick, pretend every opened link connects at once, tick again."""
    actions = plan.tick(now)
    for open_ in of(actions, OpenLink):
        plan.on_open(open_.link_id, now)
    return actions + plan.tick(now)


@given(
    per=st.integers(1, 20),
    batches=st.lists(st.tuples(st.booleans(), st.sets(st.sampled_from(names))), max_size=20),
)
def test_no_slot_ever_holds_more_than_its_share(
    per: int, batches: list[tuple[bool, set[str]]]
) -> None:
    plan = StreamPlan(per_connection=per)
    for adding, streams in batches:
        (plan.add if adding else plan.remove)(streams)
        assert all(len(slot.wanted) <= per for slot in plan.slots)
        assert set().union(*(s.wanted for s in plan.slots)) == plan.streams
        plan.tick(0.0)
    assert all(slot.wanted for slot in plan.slots)  # emptied slots are dropped


@given(
    moves=st.lists(
        st.tuples(
            st.floats(0, 0.7), st.sets(st.sampled_from(names)), st.sets(st.sampled_from(names))
        ),
        max_size=40,
    ),
)
def test_control_messages_stay_under_five_per_second_per_link(
    moves: list[tuple[float, set[str], set[str]]],
) -> None:
    plan = StreamPlan(per_connection=1024)
    now = 0.0
    sent: dict[int, list[float]] = {}
    connect_all(plan, now)
    for gap, streams, dead in moves:
        now += gap
        plan.set_streams(streams)
        for stream in dead:  # resubscriptions are paced with the rest
            plan.resubscribe(stream)
        for action in connect_all(plan, now):
            if isinstance(action, SendControl):
                sent.setdefault(action.link_id, []).append(now)
                plan.on_reply(action.link_id, action.request_id, None)
    for times in sent.values():
        for t in times:
            assert sum(1 for u in times if t <= u < t + 1.0) < 5


def test_pacer_window() -> None:
    pacer = ControlPacer(rate=4)
    for i in range(4):
        assert pacer.wait(0.1 * i) == 0
        pacer.sent(0.1 * i)
    assert pacer.wait(0.5) == 0.5
    assert pacer.wait(1.0) == 0


def test_url_streams_fit_a_request_line() -> None:
    many = [f"symbol{i:04d}usdt@depth@100ms" for i in range(1024)]
    chosen = url_streams(many)
    assert 100 < len(chosen) < 1024
    assert len("/".join(chosen)) <= 6000


def test_live_changes_are_subscribed_and_acknowledged_before_going_up() -> None:
    plan = StreamPlan(per_connection=10)
    plan.set_streams(["a@trade", "b@trade"])
    actions = connect_all(plan, 0.0)
    assert of(actions, OpenLink)[0].streams == ("a@trade", "b@trade")
    assert of(actions, StreamsUp) == [StreamsUp(frozenset({"a@trade", "b@trade"}))]
    plan.set_streams(["b@trade", "c@trade"])
    actions = plan.tick(1.0)
    controls = of(actions, SendControl)
    assert [(c.method, c.streams) for c in controls] == [
        ("UNSUBSCRIBE", ("a@trade",)),
        ("SUBSCRIBE", ("c@trade",)),
    ]
    assert not of(actions, StreamsUp)
    for c in controls:
        plan.on_reply(c.link_id, c.request_id, None)
    assert of(plan.tick(1.1), StreamsUp) == [StreamsUp(frozenset({"c@trade"}))]
    assert not plan.on_reply(controls[0].link_id, 999, None)


def test_a_resubscribed_stream_is_unsubscribed_then_subscribed_and_stays_up() -> None:
    plan = StreamPlan(per_connection=10)
    plan.set_streams(["a@trade", "b@trade"])
    connect_all(plan, 0.0)
    assert not plan.resubscribe("c@trade")  # not a stream of the plan
    assert plan.resubscribe("a@trade")
    actions = plan.tick(1.0)
    (unsubscribe,) = of(actions, SendControl)
    assert (unsubscribe.method, unsubscribe.streams) == ("UNSUBSCRIBE", ("a@trade",))
    assert not of(plan.tick(1.1), SendControl)  # SUBSCRIBE only once the exchange acknowledged
    plan.on_reply(unsubscribe.link_id, unsubscribe.request_id, None)
    actions = plan.tick(1.2)
    (subscribe,) = of(actions, SendControl)
    assert (subscribe.method, subscribe.streams) == ("SUBSCRIBE", ("a@trade",))
    plan.on_reply(subscribe.link_id, subscribe.request_id, None)
    actions += plan.tick(1.3) + plan.tick(2.0)
    assert not of(actions, StreamsDown) and not of(actions, StreamsUp)  # up all along
    assert not of(actions, SendControl)[1:]


def test_a_refused_resubscription_leaves_the_stream_as_it_was() -> None:
    plan = StreamPlan(per_connection=10)
    plan.set_streams(["a@trade"])
    connect_all(plan, 0.0)
    plan.resubscribe("a@trade")
    (unsubscribe,) = of(plan.tick(1.0), SendControl)
    plan.on_reply(unsubscribe.link_id, unsubscribe.request_id, "no")
    actions = plan.tick(1.1) + plan.tick(2.1)
    assert not of(actions, SendControl) and not of(actions, StreamsDown)
    assert plan.resubscribe("a@trade")  # and it may be tried again later


def test_a_resubscription_of_a_stream_removed_meanwhile_ends_unsubscribed() -> None:
    plan = StreamPlan(per_connection=10)
    plan.set_streams(["a@trade", "b@trade"])
    connect_all(plan, 0.0)
    plan.resubscribe("a@trade")
    (unsubscribe,) = of(plan.tick(1.0), SendControl)
    plan.remove(["a@trade"])
    plan.on_reply(unsubscribe.link_id, unsubscribe.request_id, None)
    assert not of(plan.tick(1.1) + plan.tick(2.1), SendControl)


def test_a_rejected_subscription_is_not_retried_on_that_link() -> None:
    plan = StreamPlan()
    plan.set_streams(["a@trade"])
    connect_all(plan, 0.0)
    plan.add(["bad@stream"])
    (control,) = of(plan.tick(1.0), SendControl)
    plan.on_reply(control.link_id, control.request_id, "invalid stream")
    assert not of(plan.tick(2.0), SendControl)


def test_drop_takes_streams_down_and_reconnects_with_backoff() -> None:
    plan = StreamPlan(backoff_cap_seconds=8, rng=random.Random(3))
    plan.set_streams(["a@trade"])
    (open_,) = of(connect_all(plan, 0.0), OpenLink)
    plan.on_closed(open_.link_id, 5.0, "closed_1006")
    actions = plan.tick(5.0)
    assert of(actions, StreamsDown) == [StreamsDown(frozenset({"a@trade"}), "closed_1006")]
    reopen_at = plan.slots[0].next_connect_at
    assert 5.0 <= reopen_at <= 5.5
    assert not of(plan.tick(reopen_at - 0.001), OpenLink)
    (again,) = of(plan.tick(reopen_at), OpenLink)
    assert again.reason == "closed_1006"


def test_failed_attempts_back_off_further_and_a_delivering_link_resets() -> None:
    plan = StreamPlan(backoff_cap_seconds=100, rng=random.Random(1))
    plan.set_streams(["a@trade"])
    now = 0.0
    for _ in range(6):
        now = max(now, plan.slots[0].next_connect_at)
        (open_,) = of(plan.tick(now), OpenLink)
        plan.on_closed(open_.link_id, now, "connect_failed")
    assert plan.slots[0].backoff.ceiling() == 32
    now = plan.slots[0].next_connect_at
    (open_,) = of(plan.tick(now), OpenLink)
    plan.on_open(open_.link_id, now)
    plan.on_frame(open_.link_id, "a@trade", now)
    assert plan.slots[0].backoff.attempts == 0


def test_silent_link_is_dropped_and_replaced() -> None:
    plan = StreamPlan(silent_seconds=3)
    plan.set_streams(["a@trade"])
    (open_,) = of(connect_all(plan, 0.0), OpenLink)
    plan.on_ping(open_.link_id, 2.0)  # a ping is a sign of life
    assert not plan.tick(4.9)
    actions = plan.tick(5.0)
    assert of(actions, CloseLink) == [CloseLink(open_.link_id, "silent")]
    assert of(actions, StreamsDown) == [StreamsDown(frozenset({"a@trade"}), "silent")]


def make_before_break(reason_event: str) -> None:
    plan = StreamPlan(
        max_age_seconds=100, silent_seconds=1000, overlap_seconds=5, rng=random.Random(0)
    )
    plan.set_streams(["a@trade", "b@trade"])
    (old,) = of(connect_all(plan, 0.0), OpenLink)
    plan.on_frame(old.link_id, "a@trade", 1.0)
    now = 2.0
    if reason_event == "server_shutdown":
        plan.on_shutdown_notice(old.link_id)
    else:
        now = 100.0
    actions = plan.tick(now)
    (new,) = of(actions, OpenLink)
    assert new.reason == reason_event and set(new.streams) == {"a@trade", "b@trade"}
    assert not of(actions, CloseLink)
    plan.on_open(new.link_id, now)
    plan.on_frame(old.link_id, "b@trade", now + 0.1)
    plan.on_frame(new.link_id, "a@trade", now + 0.2)
    assert not of(plan.tick(now + 0.3), CloseLink)  # old delivered b since; new has not yet
    plan.on_frame(new.link_id, "b@trade", now + 0.4)
    actions = plan.tick(now + 0.5)
    assert actions == [CloseLink(old.link_id, "replaced")]  # no streams went down
    plan.on_closed(old.link_id, now + 0.6)
    assert not plan.tick(now + 0.7)


def test_max_age_replaces_make_before_break() -> None:
    make_before_break("max_age")


def test_server_shutdown_replaces_make_before_break() -> None:
    make_before_break("server_shutdown")


def test_overlap_ends_after_overlap_seconds_even_for_quiet_streams() -> None:
    plan = StreamPlan(overlap_seconds=5)
    plan.set_streams(["a@trade", "quiet@trade"])
    (old,) = of(connect_all(plan, 0.0), OpenLink)
    plan.on_shutdown_notice(old.link_id)
    (new,) = of(plan.tick(1.0), OpenLink)
    plan.on_open(new.link_id, 1.0)
    plan.on_frame(old.link_id, "quiet@trade", 1.2)  # new may never see quiet@trade again
    plan.on_frame(new.link_id, "a@trade", 1.5)
    assert not of(plan.tick(6.0), CloseLink)
    assert of(plan.tick(6.5), CloseLink) == [CloseLink(old.link_id, "replaced")]


def test_old_link_dying_before_the_replacement_delivers_takes_streams_down() -> None:
    plan = StreamPlan()
    plan.set_streams(["a@trade"])
    (old,) = of(connect_all(plan, 0.0), OpenLink)
    plan.on_shutdown_notice(old.link_id)
    (new,) = of(plan.tick(1.0), OpenLink)
    plan.on_closed(old.link_id, 2.0, "closed_1001")
    assert of(plan.tick(2.0), StreamsDown) == [StreamsDown(frozenset({"a@trade"}), "closed_1001")]
    plan.on_open(new.link_id, 2.5)
    assert of(plan.tick(2.5), StreamsUp) == [StreamsUp(frozenset({"a@trade"}))]
