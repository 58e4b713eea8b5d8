"""The recording format, pure: records framed in a byte stream (compression is ``files.py``'s).

A recording file is a zstandard stream that starts with :data:`MAGIC`, then records, each a
header (``<QBHI``: receive time in ns since the epoch, kind, name length, payload length), the
name (UTF-8) and the payload, exactly as received:

- ``NATS``: a NATS message; name: its subject.
- ``FRAME``: an exchange WebSocket frame of the combined stream endpoint; name: its stream.
- ``SNAPSHOT``: an exchange REST depth snapshot (``{"lastUpdateId", "bids", "asks"}``); name:
  its symbol.
- ``META``: what the recording holds, JSON (an exchange recording starts with one).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

MAGIC = b"MPREC1\n"
_HEADER = struct.Struct("<QBHI")


class Kind(IntEnum):
    NATS = 1
    FRAME = 2
    SNAPSHOT = 3
    META = 4  # what the recording holds (JSON); name: what it is about


class BadRecording(ValueError):
    """Bytes that are not a recording (or a truncated one)."""


@dataclass(frozen=True, slots=True)
class Record:
    at_ns: int  # when it was received
    kind: Kind
    name: str
    payload: bytes


def encode(record: Record) -> bytes:
    name = record.name.encode()
    header = _HEADER.pack(record.at_ns, record.kind, len(name), len(record.payload))
    return b"".join((header, name, record.payload))


class Decoder:
    """Bytes in (any chunks), records out."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._started = False

    def feed(self, data: bytes) -> list[Record]:
        buffer = self._buffer
        buffer += data
        if not self._started:
            if len(buffer) < len(MAGIC):
                return []
            if not buffer.startswith(MAGIC):
                raise BadRecording("not a marketpipe recording")
            del buffer[: len(MAGIC)]
            self._started = True
        records: list[Record] = []
        at = 0
        size = _HEADER.size
        while len(buffer) - at >= size:
            at_ns, kind, name_len, payload_len = _HEADER.unpack_from(buffer, at)
            end = at + size + name_len + payload_len
            if end > len(buffer):
                break
            name = bytes(buffer[at + size : at + size + name_len]).decode()
            try:
                records.append(
                    Record(at_ns, Kind(kind), name, bytes(buffer[end - payload_len : end]))
                )
            except ValueError:
                raise BadRecording(f"unknown record kind {kind}") from None
            at = end
        del buffer[:at]
        return records

    def finish(self) -> None:
        """The stream ended: anything left over is a truncated record."""
        if self._buffer:
            raise BadRecording(f"{len(self._buffer)} bytes of a truncated record at the end")


def combined_data(frame: bytes) -> tuple[str, bytes] | None:
    """``{"stream":"<name>","data":<payload>}`` -> (name, payload), the payload's bytes as they
    are (the exchange writes this layout; None for anything else)."""
    head = b'{"stream":"'
    if not frame.startswith(head) or not frame.endswith(b"}"):
        return None
    end = frame.find(b'"', len(head))
    middle = b'","data":'
    if end < 0 or frame[end : end + len(middle)] != middle:
        return None
    return frame[len(head) : end].decode(), frame[end + len(middle) : -1]
