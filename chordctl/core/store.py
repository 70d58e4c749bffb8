"""The in-memory map: apply(op, key, value) -> (code, value). Deterministic.

The map is split into a fixed number of chunks (``key & mask``) so that a
snapshot can capture it in time that does not grow with its size: freeze()
hands out the current chunk list and marks every chunk shared; the next write
to a shared chunk copies that chunk first (copy-on-write). Frozen chunks are
never mutated again, so a snapshot writer can read them from another thread.

Result codes are gRPC status numbers, so no layer has to translate them.
Only the applier thread calls apply(); reads of frozen chunks are safe.
"""

from __future__ import annotations

from typing import Callable, Iterator

from chordctl.protocol import (
    ALREADY_EXISTS, INVALID_ARGUMENT, NOT_FOUND, OK, OP_CREATE, OP_DELETE, OP_READ, OP_UPDATE)

DEFAULT_CHUNKS = 1024


class Store:
    """A dict of int -> bytes kept in copy-on-write chunks."""

    def __init__(self, chunks: int = DEFAULT_CHUNKS):
        if chunks < 1 or chunks & (chunks - 1):
            raise ValueError("store: chunks must be a power of two")
        self.nchunks = chunks
        self._mask = chunks - 1
        self._chunks: list[dict[int, bytes]] = [{} for _ in range(chunks)]
        self._shared = bytearray(chunks)
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def apply(self, op: int, key: int, value: bytes = b"") -> tuple[int, bytes | None]:
        i = key & self._mask
        chunk = self._chunks[i]
        if op == OP_READ:
            found = chunk.get(key)
            return (OK, found) if found is not None else (NOT_FOUND, None)
        exists = key in chunk
        if op == OP_CREATE:
            if exists:
                return ALREADY_EXISTS, None
            self._count += 1
        elif op == OP_UPDATE or op == OP_DELETE:
            if not exists:
                return NOT_FOUND, None
        else:
            return INVALID_ARGUMENT, None
        if self._shared[i]:
            chunk = dict(chunk)
            self._chunks[i] = chunk
            self._shared[i] = 0
        if op == OP_DELETE:
            del chunk[key]
            self._count -= 1
        else:
            chunk[key] = value
        return OK, None

    def freeze(self) -> list[dict[int, bytes]]:
        """Capture the whole map now, in O(chunks); later writes copy on write."""
        self._shared = bytearray(b"\x01" * self.nchunks)
        return list(self._chunks)

    def load_chunks(self, chunks: list[dict[int, bytes]]) -> None:
        """Replace the map with *chunks* (from a snapshot), re-bucketing if needed."""
        if len(chunks) == self.nchunks:
            self._chunks = list(chunks)
        else:
            self._chunks = [{} for _ in range(self.nchunks)]
            mask = self._mask
            for chunk in chunks:
                for k, v in chunk.items():
                    self._chunks[k & mask][k] = v
        self._shared = bytearray(self.nchunks)
        self._count = sum(len(c) for c in self._chunks)

    def items(self) -> Iterator[tuple[int, bytes]]:
        for chunk in self._chunks:
            yield from chunk.items()


# -- ordered scans of a frozen view ------------------------------------------
#
# The chunks are split by the key's low bits, so no structure holds the keys
# in order and a scan has to select them. Sorting every key would cost 8 bytes
# per key (a list of references) for the whole scan; instead ordered_keys()
# walks the range in windows of about ``w`` keys: one pass over the map per
# window, each window sorted on its own. ``w`` is SCAN_WINDOW, or 1/8 of the
# keys in range when that is larger, so a full scan makes about 8 passes plus
# one to measure the range (measured: ~0.25 s per pass over a million keys on
# the shared 2-core box, so ~2.5 s of node CPU for a full scan of a million),
# and holds at most 2 * w references at once (~2 bytes per stored key on a big
# map, against ~180 bytes per entry for the map itself). A scan with a limit
# sizes its windows to the limit: one pass. A pass runs one chunk per C call,
# so another thread waits at most one chunk's worth (~1,000 keys on a map of
# a million) for the GIL, plus the sort of one window.

SCAN_WINDOW = 65536


def _range_stats(chunks: list[dict[int, bytes]], after: int,
                 last: int | None) -> tuple[int, int, int]:
    """(count, lowest, highest) of the keys k with after < k <= last (last None: no bound)."""
    count, lo, hi = 0, -1, -1
    gt = after.__lt__
    le = last.__ge__ if last is not None else None
    for c in chunks:
        if not c:
            continue
        if after < 0 and le is None:
            sel = c                   # the whole map: no copy
        else:
            sel = list(filter(gt, c) if le is None else filter(le, filter(gt, c)))
            if not sel:
                continue
        mn, mx = min(sel), max(sel)
        if count == 0 or mn < lo:
            lo = mn
        if mx > hi:
            hi = mx
        count += len(sel)
    return count, lo, hi


def _window(chunks: list[dict[int, bytes]], after: int, upto: int,
            cap: int) -> list[int] | None:
    """The keys k with after < k <= upto, unsorted; None when there are more than *cap*.

    Memory stays within cap plus one chunk (the caller narrows the window).
    """
    out: list[int] = []
    gt, le = after.__lt__, upto.__ge__
    extend = out.extend
    for c in chunks:
        if c:
            extend(filter(le, filter(gt, c)))
            if len(out) > cap:
                return None
    return out


def _next_key(chunks: list[dict[int, bytes]], after: int) -> int | None:
    """The smallest key above *after*, or None."""
    gt = after.__lt__
    best = None
    for c in chunks:
        if c:
            m = min(filter(gt, c), default=None)
            if m is not None and (best is None or m < best):
                best = m
    return best


def ordered_keys(chunks: list[dict[int, bytes]], start: int = 0, end: int | None = None,
                 want: int = 0, window: int = SCAN_WINDOW):
    """Yield the keys k with start <= k < end of frozen *chunks*, ascending, as sorted lists.

    *want* (0: all) is how many keys the caller will take at most: the
    windows shrink to it, so a scan with a small limit sorts little. Each
    list holds at most 2 windows' worth of keys; see the notes above.
    """
    last = end - 1 if end is not None else None
    if last is not None and last < start:
        return
    count, lo, hi = _range_stats(chunks, start - 1, last)
    if count == 0:
        return
    w = max(window, count // 8)
    if want:
        w = max(1, min(w, want))
    cap = 2 * w
    # First guess: the keys spread evenly over [lo, hi]; each window corrects it.
    span = max(1, (hi - lo + 1) * w // count)
    after = lo - 1
    while after < hi:
        upto = min(after + span, hi)
        keys = _window(chunks, after, upto, cap)
        if keys is None:            # denser than guessed: narrow and try again
            span = max(1, span // 4)
            continue
        after = upto
        if keys:
            keys.sort()
            yield keys
            span = max(1, min(span * 16, span * w // len(keys)))
        elif after < hi:
            # A gap: jump to the next key instead of widening step by step.
            nxt = _next_key(chunks, after)
            if nxt is None:
                return
            after = nxt - 1


def arc_ordered_keys(chunks: list[dict[int, bytes]], start: int, end: int | None, want: int,
                     in_arc: Callable[[int], bool] | None):
    """ordered_keys of the keys *in_arc* accepts (None: every key), as non-empty
    sorted lists. A replica's map holds R arcs, and one arc's keys lie all
    over the key order (a position is the key modulo the ring): the windows
    do not shrink to *want* then, or a small --limit walks the whole map a
    couple of keys per window."""
    if in_arc is None:
        yield from ordered_keys(chunks, start, end, want)
        return
    for keys in ordered_keys(chunks, start, end):
        keys = [k for k in keys if in_arc(k)]
        if keys:
            yield keys


def count_keys(chunks: list[dict[int, bytes]], start: int = 0, end: int | None = None) -> int:
    """How many keys k with start <= k < end *chunks* hold (one pass)."""
    if end is not None and end <= start:
        return 0
    return _range_stats(chunks, start - 1, end - 1 if end is not None else None)[0]


def count_arc_keys(chunks: list[dict[int, bytes]], start: int, end: int | None,
                   in_arc) -> int:
    """How many keys k with start <= k < end and in_arc(k) *chunks* hold (one pass)."""
    return sum(1 for chunk in chunks for k in chunk
               if k >= start and (end is None or k < end) and in_arc(k))
