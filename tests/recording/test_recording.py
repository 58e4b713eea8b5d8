"""Recordings: records survive framing, compression and rotation exactly; an exchange recording
played back gives its frames in order and the true books they lead to."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from marketpipe.recording.exchange import ReplayExchange, meta_record
from marketpipe.recording.files import RecordWriter, read_records, recording_files
from marketpipe.recording.format import BadRecording, Decoder, Kind, Record, combined_data, encode
from tests.book.truth import SYMBOL, evolutions

RECORDS = st.builds(
    Record,
    st.integers(0, 2**63),
    st.sampled_from(list(Kind)),
    st.text(max_size=40),
    st.binary(max_size=300),
)


@given(st.lists(RECORDS, max_size=30), st.integers(1, 64))
def test_records_come_back_exactly_from_any_chunking(records, chunk) -> None:
    data = b"MPREC1\n" + b"".join(encode(r) for r in records)
    decoder = Decoder()
    got = []
    for at in range(0, len(data), chunk):
        got.extend(decoder.feed(data[at : at + chunk]))
    decoder.finish()
    assert got == records


def test_not_a_recording_and_truncated_ones_are_refused() -> None:
    with pytest.raises(BadRecording):
        Decoder().feed(b"something else entirely")
    decoder = Decoder()
    decoder.feed(b"MPREC1\n" + encode(Record(1, Kind.NATS, "a", b"xyz"))[:-1])
    with pytest.raises(BadRecording):
        decoder.finish()


@settings(max_examples=10, deadline=None)
@given(st.lists(RECORDS, min_size=1, max_size=200))
def test_files_rotate_by_size_and_read_back_in_order(tmp_path_factory, records) -> None:
    base = tmp_path_factory.mktemp("rec") / "day"
    writer = RecordWriter(base, max_bytes=2000)
    for record in records:
        writer.write(record)
    writer.close()
    assert recording_files(base) == writer.files
    assert list(read_records(base)) == records
    assert list(read_records(writer.files[0])) == list(read_records(writer.files[0]))


def test_combined_frames_split_without_reencoding() -> None:
    payload = b'{"e":"depthUpdate","E":1,"s":"BTCUSDT","U":1,"u":2,"b":[],"a":[]}'
    frame = b'{"stream":"btcusdt@depth@100ms","data":' + payload + b"}"
    assert combined_data(frame) == ("btcusdt@depth@100ms", payload)
    assert combined_data(b'{"result":null,"id":1}') is None


def frame_of(diff) -> bytes:
    data = {
        "e": "depthUpdate",
        "E": diff.event_time,
        "s": diff.symbol,
        "U": diff.first_update_id,
        "u": diff.final_update_id,
        "b": [list(level) for level in diff.bids],
        "a": [list(level) for level in diff.asks],
    }
    return orjson.dumps({"stream": f"{diff.symbol.lower()}@depth@100ms", "data": data})


@settings(max_examples=100, deadline=None)
@given(evolutions(), st.data())
def test_a_replayed_exchange_serves_the_true_book_the_frames_lead_to(evolution, data) -> None:
    taken = data.draw(st.integers(0, len(evolution.diffs) - 1), label="snapshot after diff")
    state = evolution.states[taken + 1]  # the book when the recorder asked, after that diff
    snapshot = {
        "lastUpdateId": state.update_id,
        "bids": sorted(([p, q] for p, q in state.bids.items()), key=lambda lv: -float(lv[0])),
        "asks": sorted(([p, q] for p, q in state.asks.items()), key=lambda lv: float(lv[0])),
    }
    records = [meta_record(0, [SYMBOL], [], 5000)]
    for i, diff in enumerate(evolution.diffs):
        records.append(Record(1000 * (i + 1), Kind.FRAME, "", frame_of(diff)))
        if i == taken:
            records.append(Record(1000 * (i + 1), Kind.SNAPSHOT, SYMBOL, orjson.dumps(snapshot)))
    replay = ReplayExchange(records, speed=0)
    events = []
    while not replay.finished:
        events.extend(replay.due(0.0))
    assert [payload for _, _, payload in events] == [
        orjson.dumps(orjson.loads(frame_of(d))["data"]) for d in evolution.diffs
    ]
    book = replay.book(SYMBOL)
    assert book is not None
    last = evolution.states[-1]
    depth = book.depth()
    assert depth["lastUpdateId"] == last.update_id
    assert depth["bids"] == sorted(
        ([p, q] for p, q in last.bids.items()), key=lambda lv: -float(lv[0])
    )
    assert depth["asks"] == sorted(
        ([p, q] for p, q in last.asks.items()), key=lambda lv: float(lv[0])
    )


def test_the_recorded_pace_is_kept() -> None:
    frames = [
        Record(10**9 * t, Kind.FRAME, "", b'{"stream":"x@trade","data":{}}') for t in (1, 2, 3)
    ]
    replay = ReplayExchange([meta_record(10**9, ["X"], [], 100), *frames], speed=2.0)
    assert len(replay.due(100.0)) == 1  # the first frame: offset 0
    assert replay.due(100.4) == []
    assert len(replay.due(100.5)) == 1  # 1 s recorded = 0.5 s at speed 2
    assert len(replay.due(101.0)) == 1
    assert replay.finished
