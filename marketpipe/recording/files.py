"""Recording files: zstandard streams of records, rotated by size (the I/O of ``format.py``).

``RecordWriter("day/books")`` writes ``day/books.00000.mprec.zst``, then ``.00001`` once the
compressed bytes of a file reach ``max_bytes``, and so on; each file is complete on its own.
``read_records("day/books")`` reads them back in order (a single file path works too).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import zstandard

from marketpipe.recording.format import MAGIC, Decoder, Record, encode

SUFFIX = ".mprec.zst"
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
_PART = re.compile(r"\.(\d{5})" + re.escape(SUFFIX) + "$")
READ_CHUNK = 1 << 20


def part_path(base: Path, index: int) -> Path:
    return base.with_name(f"{base.name}.{index:05d}{SUFFIX}")


class RecordWriter:
    """Appends records; a new file starts when the current one holds ``max_bytes``."""

    def __init__(self, base: str | Path, max_bytes: int = DEFAULT_MAX_BYTES, level: int = 3):
        self.base = Path(base)
        self.base.parent.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.records = 0
        self.files: list[Path] = []
        self._compressor = zstandard.ZstdCompressor(level=level)
        self._file: BinaryIO | None = None
        self._stream: zstandard.ZstdCompressionWriter | None = None
        self._open()

    def _open(self) -> None:
        path = part_path(self.base, len(self.files))
        self.files.append(path)
        self._file = path.open("wb")
        self._stream = self._compressor.stream_writer(self._file, closefd=False)
        self._stream.write(MAGIC)

    def write(self, record: Record) -> None:
        assert self._stream is not None
        self._stream.write(encode(record))
        self.records += 1
        if self._stream.tell() >= self.max_bytes:
            self._close_file()
            self._open()

    def _close_file(self) -> None:
        if self._stream is not None and self._file is not None:
            self._stream.close()
            self._file.close()
        self._stream = self._file = None

    def close(self) -> None:
        self._close_file()


def recording_files(base: str | Path) -> list[Path]:
    """The files of a recording, in order: ``base`` itself if it is a file, else its parts."""
    path = Path(base)
    if path.is_file():
        return [path]
    parts = [p for p in path.parent.glob(f"{path.name}.*{SUFFIX}") if _PART.search(p.name)]
    if not parts:
        raise FileNotFoundError(f"no recording at {base} (nor {base}.NNNNN{SUFFIX})")
    return sorted(parts)


def read_records(base: str | Path) -> Iterator[Record]:
    for path in recording_files(base):
        decoder = Decoder()
        with path.open("rb") as file, zstandard.ZstdDecompressor().stream_reader(file) as stream:
            while chunk := stream.read(READ_CHUNK):
                yield from decoder.feed(chunk)
        decoder.finish()
