# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""One side of an exact order book, compiled: the exchange's strings in, the same bytes out.

Why compiled: the whole exchange (2000 pairs x 10 diffs/s) goes through one process, and in
Python the per-level work (find the place, splice the JSON) cost ~10 us per diff and a 250-level
view ~10 us per book (``docs/book-engine.md`` has the measurements). The structure is the one the
pure-Python version had (chosen by measurement there); only the bookkeeping moved to C.

Each side is ordered by a float key with the **best level last**: the key is ``float(price)`` for
bids and ``-float(price)`` for asks, so both sides ascend towards the best price and share one
code path. A side is split into chunks of about ``chunk`` levels (split past ``2 * chunk``, merged
into a neighbour at ``chunk / 4``): each chunk holds its keys (ascending), each level's JSON length
(one byte) and a *blob*: its levels' JSON, best first, each followed by a comma
(``["61234.01000000","0.51200000"],``), written once when the level is set. A change finds its
chunk by bisecting the chunks' best keys and its place by bisecting the chunk; an insert or delete
moves at most a chunk, wherever it lands in a 5000-level side. A view of the best levels is a few
contiguous copies, and its strings are byte-identical to the exchange's.

Window (levels beyond the snapshot cannot rot): a side is *truncated* when its snapshot returned
as many levels as asked for (or the limit is unknown). Then the side's ``floor`` is the worst key
of the snapshot, and the side is exact for every price at or better than the floor: updates beyond
it are ignored, because the book never knew that region. A side also holds at most ``cap`` levels
(the snapshot limit): when inserts push it past ``most`` (``cap + cap // 4``), the worst levels are
dropped back to ``cap`` and the floor moves in to the worst level kept. ``cap`` and ``most`` stay
below the diffs' horizon (``load``): deeper, a level could change unseen.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from libc.float cimport DBL_MAX
from libc.stdio cimport snprintf
from libc.string cimport memcmp, memcpy, memmove

from zlib import crc32

from marketpipe.book.levels import BadLevel, check_precision, decode_fragment

cdef extern from "Python.h":
    const char *PyUnicode_AsUTF8AndSize(object text, Py_ssize_t *size) except NULL

cdef enum:
    MAX_CHUNK = 128  # the default and the largest ``chunk``
    # A chunk holds up to 2 * chunk levels, one more before it splits, and a merge can add
    # chunk / 4 to a full one before that split.
    LEVELS_ROOM = 2 * MAX_CHUNK + MAX_CHUNK // 4 + 1
    SHORT_PRICE = 16  # at most 15 digits: no precision check needed
    LONGEST_FRAGMENT = 255  # a length is one byte; no exchange sends a level near that
    FRAGMENT_FRAME = 8  # '["' + '","' + '"],'
    CHECKSUM_LEVELS = 25  # DESIGN §10: the checksum covers the best 25 levels a side
    REMOVAL_GROWTH = 3  # '["p","q"],' becomes at most '["p","0"],' + ... (quantity >= 1 byte)

CHUNK = MAX_CHUNK
INF = float("inf")
cdef unsigned long long _sides_made = 0

ctypedef struct Chunk:
    Py_ssize_t n  # levels
    Py_ssize_t size  # bytes of blob in use
    Py_ssize_t room  # bytes of blob allocated
    char *blob
    double keys[LEVELS_ROOM]
    unsigned char lens[LEVELS_ROOM]
    unsigned int stamps[LEVELS_ROOM]  # the side's stamp when the level was last set


cdef inline Py_ssize_t bisect_left(const double *keys, Py_ssize_t n, double key) noexcept nogil:
    cdef Py_ssize_t low = 0, high = n, mid
    while low < high:
        mid = (low + high) >> 1
        if keys[mid] < key:
            low = mid + 1
        else:
            high = mid
    return low


cdef inline Py_ssize_t sum_lens(const unsigned char *lens, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t total = 0, i
    for i in range(n):
        total += lens[i]
    return total


cdef inline Py_ssize_t leading(const Chunk *c, Py_ssize_t at) noexcept nogil:
    """Bytes of a chunk's levels from index ``at`` up: the better ones, which lead its blob
    (summed from whichever end of the chunk is nearer). A level inserted at ``at`` starts
    there; level ``at`` itself starts at ``leading(c, at + 1)``."""
    if at >= c.n >> 1:
        return sum_lens(c.lens + at, c.n - at)
    return c.size - sum_lens(c.lens, at)


cdef inline int check_level(object price, object quantity, double key, double size) except -1:
    """A level's arguments as the side is given them: the exchange's two strings and
    ``checked_numbers``' floats for them (price positive and finite, quantity finite and >= 0).
    The side runs without bounds checks: whatever it is given must be what it assumes."""
    if not (isinstance(price, str) and isinstance(quantity, str)):
        raise TypeError(
            f"a level is (price, quantity) as str, not "
            f"({type(price).__name__}, {type(quantity).__name__})"
        )
    if not 0.0 < key <= DBL_MAX:
        raise ValueError(f"price {price!r}: its number must be positive and finite, not {key!r}")
    if not 0.0 <= size <= DBL_MAX:
        raise ValueError(f"quantity {quantity!r}: its number must be finite and >= 0, not {size!r}")
    return 0


cdef inline int check_count(Py_ssize_t count) except -1:
    if count < 0:
        raise ValueError(f"count must be >= 0, not {count}")
    return 0


cdef int reserve(Chunk *c, Py_ssize_t size) except -1:
    cdef char *blob
    cdef Py_ssize_t room
    if size <= c.room:
        return 0
    room = max(size + (size >> 1), 64)
    blob = <char *>PyMem_Realloc(c.blob, room)
    if blob == NULL:
        raise MemoryError()
    c.blob = blob
    c.room = room
    return 0


cdef Chunk *new_chunk() except NULL:
    cdef Chunk *c = <Chunk *>PyMem_Malloc(sizeof(Chunk))
    if c == NULL:
        raise MemoryError()
    c.n = 0
    c.size = 0
    c.room = 0
    c.blob = NULL
    return c


cdef void free_chunk(Chunk *c) noexcept:
    PyMem_Free(c.blob)
    PyMem_Free(c)


cdef inline void write_fragment(
    char *to, const char *price, Py_ssize_t price_len, const char *quantity, Py_ssize_t quantity_len
) noexcept nogil:
    to[0] = b'['
    to[1] = b'"'
    memcpy(to + 2, price, price_len)
    to += 2 + price_len
    to[0] = b'"'
    to[1] = b','
    to[2] = b'"'
    memcpy(to + 3, quantity, quantity_len)
    to += 3 + quantity_len
    to[0] = b'"'
    to[1] = b']'
    to[2] = b','


cdef class BookSide:
    """BookSide(is_ask, chunk=128)
--

One side, best level last (see the module's docstring). The signature above is the
constructor's for ``inspect`` (and so for mypy's stubtest), which cannot read ``__cinit__``'s."""

    cdef Chunk **chunks
    cdef double *maxes  # each chunk's best key
    cdef Py_ssize_t n_chunks
    cdef Py_ssize_t chunks_room
    cdef readonly bint is_ask
    cdef readonly Py_ssize_t chunk
    cdef readonly Py_ssize_t count
    cdef readonly double floor
    cdef readonly Py_ssize_t cap
    cdef readonly Py_ssize_t most
    # Levels set since a view was taken carry a later stamp than the view (``capture``), so the
    # next delta knows what changed without reading the previous message's levels back.
    cdef unsigned int stamp
    cdef readonly unsigned long long identity  # no two sides share one in a process

    def __cinit__(self, bint is_ask, Py_ssize_t chunk=MAX_CHUNK):
        if not 1 <= chunk <= MAX_CHUNK:
            raise ValueError(f"chunk must be 1..{MAX_CHUNK}")
        self.is_ask = is_ask
        self.chunk = chunk
        self.floor = -INF
        global _sides_made
        _sides_made += 1
        self.identity = _sides_made
        self.stamp = 1

    def __dealloc__(self):
        self._clear()
        PyMem_Free(self.chunks)
        PyMem_Free(self.maxes)

    def __len__(self):
        return self.count

    cdef void _clear(self) noexcept:
        cdef Py_ssize_t i
        for i in range(self.n_chunks):
            free_chunk(self.chunks[i])
        self.n_chunks = 0

    cdef int _insert_chunk(self, Py_ssize_t at, Chunk *c) except -1:
        cdef Py_ssize_t room
        cdef Chunk **chunks
        cdef double *maxes
        if self.n_chunks == self.chunks_room:
            room = max(8, self.chunks_room * 2)
            chunks = <Chunk **>PyMem_Realloc(self.chunks, room * sizeof(Chunk *))
            if chunks == NULL:
                raise MemoryError()
            self.chunks = chunks
            maxes = <double *>PyMem_Realloc(self.maxes, room * sizeof(double))
            if maxes == NULL:
                raise MemoryError()
            self.maxes = maxes
            self.chunks_room = room
        memmove(self.chunks + at + 1, self.chunks + at, (self.n_chunks - at) * sizeof(Chunk *))
        memmove(self.maxes + at + 1, self.maxes + at, (self.n_chunks - at) * sizeof(double))
        self.chunks[at] = c
        self.maxes[at] = c.keys[c.n - 1] if c.n else -INF
        self.n_chunks += 1
        return 0

    cdef void _remove_chunk(self, Py_ssize_t at) noexcept:
        free_chunk(self.chunks[at])
        self.n_chunks -= 1
        memmove(self.chunks + at, self.chunks + at + 1, (self.n_chunks - at) * sizeof(Chunk *))
        memmove(self.maxes + at, self.maxes + at + 1, (self.n_chunks - at) * sizeof(double))

    # --- changes ---

    def load(self, levels, numbers, limit, Py_ssize_t horizon):
        """Replace the side by a snapshot's levels (``numbers``: ``checked_numbers``' floats)
        that was asked for ``limit`` levels (None: unknown); diffs report changes only within
        the top ``horizon`` levels of a side (at least 2: the window keeps one level)."""
        cdef dict merged = {}
        cdef double sign = -1.0 if self.is_ask else 1.0
        cdef Py_ssize_t received, taken, i, within, length
        cdef Chunk *c
        cdef const char *p
        cdef const char *q
        cdef Py_ssize_t p_len, q_len
        cdef list keys
        if limit is not None:
            if not isinstance(limit, int):
                raise TypeError(f"limit must be an int or None, not {type(limit).__name__}")
            if limit < 1:
                raise ValueError(f"limit must be at least 1 level (or None), not {limit}")
        if horizon < 2:
            raise ValueError(f"horizon must be at least 2 levels, not {horizon}")
        for level, (key, size) in zip(levels, numbers, strict=True):
            price, quantity = level
            check_level(price, quantity, key, size)
            p = PyUnicode_AsUTF8AndSize(price, &p_len)
            PyUnicode_AsUTF8AndSize(quantity, &q_len)
            if p_len > SHORT_PRICE:
                check_precision(price, quantity)
            if size:
                if p_len + q_len + FRAGMENT_FRAME > LONGEST_FRAGMENT:
                    raise BadLevel("quantity", (price, quantity[:40] + "..."))
                merged[key * sign] = (price, quantity)
            else:
                merged.pop(key * sign, None)
        keys = sorted(merged)
        self._clear()
        self.count = received = len(keys)
        taken = 0
        while taken < received:
            c = new_chunk()
            self._insert_chunk(self.n_chunks, c)
            c.n = min(self.chunk, received - taken)
            for i in range(c.n):
                c.keys[i] = keys[taken + i]
                price, quantity = merged[keys[taken + i]]
                p = PyUnicode_AsUTF8AndSize(price, &p_len)
                q = PyUnicode_AsUTF8AndSize(quantity, &q_len)
                c.lens[i] = p_len + q_len + FRAGMENT_FRAME
                c.stamps[i] = self.stamp
                c.size += c.lens[i]
            reserve(c, c.size)
            length = c.size
            for i in range(c.n):  # best (last) first
                price, quantity = merged[keys[taken + i]]
                p = PyUnicode_AsUTF8AndSize(price, &p_len)
                q = PyUnicode_AsUTF8AndSize(quantity, &q_len)
                length -= c.lens[i]
                write_fragment(c.blob + length, p, p_len, q, q_len)
            self.maxes[self.n_chunks - 1] = c.keys[c.n - 1]
            taken += c.n
        # the exchange never sends more than the horizon, whatever the limit asked for
        truncated = received > 0 and (limit is None or received >= min(limit, horizon))
        self.floor = keys[0] if truncated else -INF
        within = horizon - 1
        self.cap = min(limit if limit is not None else max(received, 1), within)
        self.most = min(self.cap + (self.cap >> 2), within)

    def apply(self, levels, numbers):
        """Set the levels of a diff (``numbers``: ``checked_numbers``' floats for them) on a
        loaded side."""
        cdef Py_ssize_t i, n = len(levels)
        cdef double key, size
        if len(numbers) != n:
            raise ValueError("one (price, quantity) of numbers per level")
        if not self.cap:  # load() sets it, to 1 or more
            raise ValueError("apply() before load(): a side's window comes from its snapshot")
        for i in range(n):
            price, quantity = levels[i]
            key, size = numbers[i]
            self._set(price, quantity, key, size)
        if self.count > self.most:
            self._prune()

    cdef int _set(self, object price, object quantity, double key, double size) except -1:
        cdef Py_ssize_t p_len, q_len, length, at_chunk, at, start, end, grow
        cdef const char *p
        cdef const char *q
        cdef Chunk *c
        check_level(price, quantity, key, size)
        p = PyUnicode_AsUTF8AndSize(price, &p_len)
        q = PyUnicode_AsUTF8AndSize(quantity, &q_len)
        if p_len > SHORT_PRICE:
            check_precision(price, quantity)
        if self.is_ask:
            key = -key
        if key < self.floor:
            return 0
        length = p_len + q_len + FRAGMENT_FRAME
        if size and length > LONGEST_FRAGMENT:
            raise BadLevel("quantity", (price, quantity[:40] + "..."))
        at_chunk = bisect_left(self.maxes, self.n_chunks, key)
        if at_chunk == self.n_chunks:  # better than the best level: a new best (or absent)
            if not size:
                return 0
            if not self.n_chunks:
                self._insert_chunk(0, new_chunk())
            at_chunk -= 1 if at_chunk else 0
        c = self.chunks[at_chunk]
        at = bisect_left(c.keys, c.n, key)
        if at < c.n and c.keys[at] == key:
            start = leading(c, at + 1)
            end = start + c.lens[at]
            if size:  # a new quantity: the fragment may change length
                grow = length - c.lens[at]
                reserve(c, c.size + grow)
                memmove(c.blob + end + grow, c.blob + end, c.size - end)
                write_fragment(c.blob + start, p, p_len, q, q_len)
                c.size += grow
                c.lens[at] = length
                c.stamps[at] = self.stamp
                return 0
            memmove(c.blob + start, c.blob + end, c.size - end)
            c.size -= end - start
            c.n -= 1
            memmove(c.keys + at, c.keys + at + 1, (c.n - at) * sizeof(double))
            memmove(c.lens + at, c.lens + at + 1, c.n - at)
            memmove(c.stamps + at, c.stamps + at + 1, (c.n - at) * sizeof(unsigned int))
            self.count -= 1
            if at == c.n and c.n:
                self.maxes[at_chunk] = c.keys[c.n - 1]
            if c.n <= self.chunk >> 2:
                self._merge(at_chunk)
        elif size:
            start = leading(c, at)
            reserve(c, c.size + length)
            memmove(c.blob + start + length, c.blob + start, c.size - start)
            write_fragment(c.blob + start, p, p_len, q, q_len)
            c.size += length
            memmove(c.keys + at + 1, c.keys + at, (c.n - at) * sizeof(double))
            memmove(c.lens + at + 1, c.lens + at, c.n - at)
            memmove(c.stamps + at + 1, c.stamps + at, (c.n - at) * sizeof(unsigned int))
            c.keys[at] = key
            c.lens[at] = length
            c.stamps[at] = self.stamp
            c.n += 1
            self.count += 1
            if at == c.n - 1:
                self.maxes[at_chunk] = key
            if c.n > self.chunk << 1:
                self._split(at_chunk)
        return 0

    cdef int _split(self, Py_ssize_t at_chunk) except -1:
        """Move the better half of a full chunk into a new chunk after it."""
        cdef Chunk *c = self.chunks[at_chunk]
        cdef Chunk *better = new_chunk()
        cdef Py_ssize_t keep = self.chunk
        better.n = c.n - keep
        memcpy(better.keys, c.keys + keep, better.n * sizeof(double))
        memcpy(better.lens, c.lens + keep, better.n)
        memcpy(better.stamps, c.stamps + keep, better.n * sizeof(unsigned int))
        better.size = sum_lens(better.lens, better.n)  # the better half leads the blob
        try:
            reserve(better, better.size)
        except MemoryError:
            free_chunk(better)
            raise
        memcpy(better.blob, c.blob, better.size)
        memmove(c.blob, c.blob + better.size, c.size - better.size)
        c.size -= better.size
        c.n = keep
        self.maxes[at_chunk] = c.keys[keep - 1]
        self._insert_chunk(at_chunk + 1, better)
        return 0

    cdef int _merge(self, Py_ssize_t at_chunk) except -1:
        """Fold a small (or empty) chunk into its neighbour so chunks stay few."""
        cdef Py_ssize_t low, high
        cdef Chunk *worse
        cdef Chunk *better
        if self.n_chunks == 1:
            if not self.chunks[0].n:
                self._remove_chunk(0)
            return 0
        low = at_chunk - 1 if at_chunk else 0
        high = low + 1
        worse, better = self.chunks[low], self.chunks[high]
        reserve(worse, worse.size + better.size)
        # the better chunk's levels go first in the blob, last among the keys
        memmove(worse.blob + better.size, worse.blob, worse.size)
        memcpy(worse.blob, better.blob, better.size)
        memcpy(worse.keys + worse.n, better.keys, better.n * sizeof(double))
        memcpy(worse.lens + worse.n, better.lens, better.n)
        memcpy(worse.stamps + worse.n, better.stamps, better.n * sizeof(unsigned int))
        worse.n += better.n
        worse.size += better.size
        self._remove_chunk(high)
        self.maxes[low] = worse.keys[worse.n - 1]
        if worse.n > self.chunk << 1:
            self._split(low)
        return 0

    cdef void _prune(self) noexcept:
        """Drop the worst levels back to ``cap``; the floor moves in to the worst level kept."""
        cdef Py_ssize_t excess = self.count - self.cap, worst
        cdef Chunk *c
        self.count = self.cap
        while excess >= self.chunks[0].n:
            excess -= self.chunks[0].n
            self._remove_chunk(0)
        c = self.chunks[0]
        worst = sum_lens(c.lens, excess)  # the worst levels end the blob
        c.size -= worst
        c.n -= excess
        memmove(c.keys, c.keys + excess, c.n * sizeof(double))
        memmove(c.lens, c.lens + excess, c.n)
        memmove(c.stamps, c.stamps + excess, c.n * sizeof(unsigned int))
        self.floor = c.keys[0]

    # --- reading ---

    def best_key(self):
        """The best level's key (None when the side is empty)."""
        return self.maxes[self.n_chunks - 1] if self.n_chunks else None

    def best_price(self):
        """The best level's price string (the side must not be empty)."""
        cdef Chunk *c
        cdef Py_ssize_t end = 2
        if not self.n_chunks:
            raise IndexError("empty side")
        c = self.chunks[self.n_chunks - 1]
        while c.blob[end] != b'"':
            end += 1
        return c.blob[2:end].decode("utf-8")

    cdef Py_ssize_t _json_size(self, Py_ssize_t count) noexcept:
        """Bytes of the best ``count`` levels' JSON, commas between them (not after)."""
        cdef Py_ssize_t at_chunk, total = 0
        cdef Chunk *c
        if count <= 0 or not self.n_chunks:
            return 0
        for at_chunk in range(self.n_chunks - 1, -1, -1):
            c = self.chunks[at_chunk]
            if count <= c.n:
                return total + leading(c, c.n - count) - 1
            total += c.size
            count -= c.n
        return total - 1  # fewer levels than asked for: all of them

    cdef char *_write_best(self, Py_ssize_t count, char *to) noexcept:
        cdef Py_ssize_t at_chunk, size
        cdef Chunk *c
        if count <= 0 or not self.n_chunks:
            return to
        for at_chunk in range(self.n_chunks - 1, -1, -1):
            c = self.chunks[at_chunk]
            size = leading(c, c.n - count) if count <= c.n else c.size
            memcpy(to, c.blob, size)
            to += size
            count -= c.n
            if count <= 0:
                break
        return to - 1  # no comma after the last level

    def best_json(self, Py_ssize_t count):
        """The JSON of the best ``count`` levels, best first, comma-separated: the body of the
        side's array."""
        check_count(count)
        cdef bytes out = PyBytes_FromStringAndSize(NULL, self._json_size(count))
        self._write_best(count, PyBytes_AS_STRING(out))
        return out

    def levels_from(self, double key):
        """(how many levels have a key >= ``key``, the JSON of the level whose key is ``key``
        or None)."""
        cdef Py_ssize_t at_chunk = bisect_left(self.maxes, self.n_chunks, key), at, i, later = 0
        cdef Py_ssize_t start
        cdef Chunk *c
        if key != key:
            raise ValueError("key must be a number, not NaN")
        if at_chunk == self.n_chunks:
            return 0, None
        c = self.chunks[at_chunk]
        at = bisect_left(c.keys, c.n, key)
        for i in range(at_chunk + 1, self.n_chunks):
            later += self.chunks[i].n
        tie = None
        if c.keys[at] == key:
            start = leading(c, at + 1)
            tie = c.blob[start : start + c.lens[at] - 1]
        return c.n - at + later, tie

    def covers(self, price):
        """Whether the side knows the truth at this price (inside its window)."""
        key = -float(price) if self.is_ask else float(price)
        if key != key:
            raise ValueError(f"price must be a number, not {price!r}")
        return key >= self.floor

    def fragments(self, count=None):
        """The JSON of each of the best ``count`` levels (all: None), best first (tests,
        audits; not the hot path)."""
        cdef list chosen = []
        cdef Py_ssize_t at_chunk, i, start
        cdef Py_ssize_t wanted = self.count if count is None else count
        cdef Chunk *c
        check_count(wanted)
        for at_chunk in range(self.n_chunks - 1, -1, -1):
            c = self.chunks[at_chunk]
            start = 0
            for i in range(c.n - 1, -1, -1):
                if len(chosen) >= wanted:
                    return chosen
                chosen.append(c.blob[start : start + c.lens[i] - 1])
                start += c.lens[i]
        return chosen

    def levels(self, count=None):
        """Best first: ``[(price, quantity), ...]`` (tests, audits; not the hot path)."""
        return [decode_fragment(fragment) for fragment in self.fragments(count)]

    def layout(self):
        """Each chunk, worst first, as ``(keys, lengths, blob)`` copies (tests of the structure's
        invariants)."""
        cdef Py_ssize_t at_chunk
        cdef Chunk *c
        chunks = []
        for at_chunk in range(self.n_chunks):
            c = self.chunks[at_chunk]
            chunks.append(
                (
                    [c.keys[i] for i in range(c.n)],
                    c.lens[: c.n],
                    c.blob[: c.size],
                )
            )
        return chunks

    def chunk_bests(self):
        """Each chunk's best key, worst chunk first (tests of the structure's invariants)."""
        return [self.maxes[i] for i in range(self.n_chunks)]


cdef class ViewSide:
    """The levels of one side of a published view, best first: each level's key and JSON length
    (with its comma) and where the side's JSON starts in the view's message."""

    cdef double *keys
    cdef unsigned char *lens
    cdef unsigned int *stamps
    cdef readonly Py_ssize_t count
    cdef Py_ssize_t start  # offset of the side's first level in the message
    cdef unsigned long long side  # the BookSide's identity
    cdef unsigned int taken  # the BookSide's stamp when this view was taken

    def __dealloc__(self):
        PyMem_Free(self.keys)  # the lengths follow the keys in the same block


cdef ViewSide capture(BookSide side, Py_ssize_t count, Py_ssize_t start):
    """The best ``count`` levels' keys and lengths, best first (the side holds them best last)."""
    cdef ViewSide view = ViewSide.__new__(ViewSide)
    cdef Py_ssize_t at_chunk, i, taken = 0
    cdef Chunk *c
    count = max(0, min(count, side.count))
    # one block: the keys, the stamps, then the lengths
    view.keys = <double *>PyMem_Malloc(max(count, 1) * (sizeof(double) + sizeof(unsigned int) + 1))
    if view.keys == NULL:
        raise MemoryError()
    view.stamps = <unsigned int *>(view.keys + max(count, 1))
    view.lens = <unsigned char *>(view.stamps + max(count, 1))
    view.count = count
    view.start = start
    view.side = side.identity
    view.taken = side.stamp
    side.stamp += 1  # whatever is set from now on is newer than this view
    for at_chunk in range(side.n_chunks - 1, -1, -1):
        c = side.chunks[at_chunk]
        for i in range(c.n - 1, -1, -1):
            if taken == count:
                return view
            view.keys[taken] = c.keys[i]
            view.lens[taken] = c.lens[i]
            view.stamps[taken] = c.stamps[i]
            taken += 1
    return view


cdef inline Py_ssize_t price_length(const char *fragment) noexcept nogil:
    cdef Py_ssize_t n = 2
    while fragment[n] != b'"':
        n += 1
    return n - 2


ctypedef struct Cursor:  # a walk over a side's levels, best first
    Py_ssize_t chunk
    Py_ssize_t level  # index in the chunk (best last)
    Py_ssize_t offset  # of the level's JSON in the chunk's blob


cdef inline Cursor start_cursor(BookSide side) noexcept:
    cdef Cursor cursor
    cursor.chunk = side.n_chunks - 1
    cursor.level = side.chunks[cursor.chunk].n - 1 if side.n_chunks else -1
    cursor.offset = 0
    return cursor


cdef Py_ssize_t write_checksum_level(char *to, Cursor *at, BookSide side) noexcept:
    """``price:quantity`` of the level at the cursor (``["price","quantity"]`` in the blob),
    then the cursor moves to the next level (the side must have it)."""
    cdef Chunk *c = side.chunks[at.chunk]
    cdef const char *fragment = c.blob + at.offset
    cdef Py_ssize_t p_len = price_length(fragment)
    cdef Py_ssize_t q_len = c.lens[at.level] - p_len - FRAGMENT_FRAME
    memcpy(to, fragment + 2, p_len)
    to[p_len] = b':'
    memcpy(to + p_len + 1, fragment + p_len + 5, q_len)
    at.offset += c.lens[at.level]
    at.level -= 1
    if at.level < 0 and at.chunk > 0:
        at.chunk -= 1
        at.level = side.chunks[at.chunk].n - 1
        at.offset = 0
    return p_len + 1 + q_len


cdef unsigned long view_checksum(
    BookSide bids, Py_ssize_t bid_count, BookSide asks, Py_ssize_t ask_count
) except? 0:
    """DESIGN §10: crc32 of ``bids[0]:asks[0]:bids[1]:...`` over the best 25 levels of the
    view, ``price:quantity`` each, a missing level skipped."""
    cdef char buffer[2 * CHECKSUM_LEVELS * LONGEST_FRAGMENT]
    cdef Py_ssize_t i, size = 0
    cdef Cursor at_bid = start_cursor(bids), at_ask = start_cursor(asks)
    for i in range(CHECKSUM_LEVELS):
        if i < bid_count and i < bids.count:
            if size:
                buffer[size] = b':'
                size += 1
            size += write_checksum_level(buffer + size, &at_bid, bids)
        if i < ask_count and i < asks.count:
            if size:
                buffer[size] = b':'
                size += 1
            size += write_checksum_level(buffer + size, &at_ask, asks)
    return crc32(PyBytes_FromStringAndSize(buffer, size))


cdef Py_ssize_t changes_room(ViewSide old, ViewSide new) noexcept:
    """An upper bound of the bytes :func:`write_changes` writes."""
    cdef Py_ssize_t room = 0, i
    for i in range(old.count):
        room += old.lens[i] + REMOVAL_GROWTH
    for i in range(new.count):
        room += new.lens[i]
    return room


cdef Py_ssize_t write_changes(
    char *buffer, const char *old_message, ViewSide old, const char *message, ViewSide new
) noexcept:
    """The levels that differ from ``old`` to ``new`` (one side, best first), each followed by
    a comma: each new or changed level as it is now, each level gone as ``["price","0"]``.
    Returns the bytes written."""
    cdef Py_ssize_t i = 0, j = 0, size = 0, at_old = old.start, at_new = new.start
    cdef Py_ssize_t length, p_len
    cdef double old_key, new_key
    # the same side as before: a level is unchanged unless it was set since the old view
    cdef bint stamped = old.side == new.side
    # both sides best first: the larger key is the better level
    while i < old.count or j < new.count:
        old_key = old.keys[i] if i < old.count else -INF
        new_key = new.keys[j] if j < new.count else -INF
        if j == new.count or (i < old.count and old_key > new_key):  # gone from the view
            p_len = price_length(old_message + at_old)
            memcpy(buffer + size, old_message + at_old, p_len + 2)
            memcpy(buffer + size + p_len + 2, b'","0"],', 7)
            size += p_len + 9
            at_old += old.lens[i]
            i += 1
            continue
        length = new.lens[j]
        if (
            i == old.count
            or new_key > old_key  # new in the view
            # or the same price, whose level was set since (and its JSON changed)
            or (
                new.stamps[j] > old.taken
                if stamped
                else old.lens[i] != length
                or memcmp(old_message + at_old, message + at_new, length - 1)
            )
        ):
            # the JSON without its comma (a side's last level has none), then a comma
            memcpy(buffer + size, message + at_new, length - 1)
            buffer[size + length - 1] = b','
            size += length
        if i < old.count and new_key == old_key:
            at_old += old.lens[i]
            i += 1
        at_new += length
        j += 1
    return size


cdef class PublishedView:
    """A rendered ``orderbook.<SYMBOL>`` message and the levels in it, so that the next view's
    delta is computed from what was published, not from the book."""

    cdef readonly bytes message
    cdef readonly unsigned long checksum
    cdef readonly ViewSide bids
    cdef readonly ViewSide asks

    def delta_message(self, PublishedView previous not None, long long prev_update_id):
        """The ``delta.orderbook.<SYMBOL>`` message from ``previous`` (whose ``lastUpdateId``
        is ``prev_update_id``) to this view: this message's head with ``prevUpdateId`` after
        ``lastUpdateId``, the bids that differ, ``],"asks":[``, the asks that differ, and the
        checksum (DESIGN §10: a quantity of "0" removes a level)."""
        if self.message is None or previous.message is None:
            raise TypeError("a PublishedView comes from render_view_message()")
        if prev_update_id < 0:
            raise ValueError(f"prev_update_id must be >= 0, not {prev_update_id}")
        cdef const char *old = PyBytes_AS_STRING(previous.message)
        cdef const char *now = PyBytes_AS_STRING(self.message)
        cdef Py_ssize_t head_len = self.bids.start, at = 0, size, written
        cdef char middle[48]
        cdef Py_ssize_t middle_len = snprintf(middle, 48, b'"prevUpdateId":%lld,', prev_update_id)
        cdef char tail[32]
        cdef Py_ssize_t tail_len = snprintf(tail, 32, b'],"checksum":%lu}', self.checksum)
        cdef char *buffer
        cdef bytes out
        while at < head_len and memcmp(now + at, b'"E":', 4):  # the field after lastUpdateId
            at += 1
        buffer = <char *>PyMem_Malloc(
            head_len
            + middle_len
            + changes_room(previous.bids, self.bids)
            + changes_room(previous.asks, self.asks)
            + tail_len
            + 10
        )
        if buffer == NULL:
            raise MemoryError()
        memcpy(buffer, now, at)
        memcpy(buffer + at, middle, middle_len)
        memcpy(buffer + at + middle_len, now + at, head_len - at)
        size = head_len + middle_len
        written = write_changes(buffer + size, old, previous.bids, now, self.bids)
        size += written - 1 if written else 0  # no comma after a side's last level
        memcpy(buffer + size, b'],"asks":[', 10)
        size += 10
        written = write_changes(buffer + size, old, previous.asks, now, self.asks)
        size += written - 1 if written else 0
        memcpy(buffer + size, tail, tail_len)
        out = PyBytes_FromStringAndSize(buffer, size + tail_len)
        PyMem_Free(buffer)
        return out


def render_view_message(
    bytes head not None,
    BookSide bids not None,
    Py_ssize_t bid_count,
    BookSide asks not None,
    Py_ssize_t ask_count,
):
    """``head`` + the best ``bid_count`` bids + ``],"asks":[`` + the best ``ask_count`` asks +
    ``],"checksum":N}``: a whole ``orderbook.<SYMBOL>`` message in one allocation and a few
    copies, with the levels it holds."""
    if bids.is_ask or not asks.is_ask:
        raise ValueError("bids must be a side of bids and asks a side of asks")
    check_count(bid_count)
    check_count(ask_count)
    cdef const char *middle = b'],"asks":['
    cdef Py_ssize_t middle_len = 10
    cdef Py_ssize_t head_len = len(head)
    cdef Py_ssize_t bids_len = bids._json_size(bid_count)
    cdef PublishedView view = PublishedView.__new__(PublishedView)
    cdef Py_ssize_t size, tail_len
    cdef char *to
    cdef char tail[32]
    view.checksum = view_checksum(bids, bid_count, asks, ask_count)
    tail_len = snprintf(tail, 32, b'],"checksum":%lu}', view.checksum)
    size = head_len + bids_len + middle_len + asks._json_size(ask_count) + tail_len
    view.message = PyBytes_FromStringAndSize(NULL, size)
    to = PyBytes_AS_STRING(view.message)
    memcpy(to, PyBytes_AS_STRING(head), head_len)
    to = bids._write_best(bid_count, to + head_len)
    memcpy(to, middle, middle_len)
    to = asks._write_best(ask_count, to + middle_len)
    memcpy(to, tail, tail_len)
    view.bids = capture(bids, bid_count, head_len)
    view.asks = capture(asks, ask_count, head_len + bids_len + middle_len)
    return view
