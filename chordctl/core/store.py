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

from typing import Iterator

from chordctl.core.storage.records import OP_CREATE, OP_DELETE, OP_READ, OP_UPDATE

OK = 0
NOT_FOUND = 5
ALREADY_EXISTS = 6
INVALID_ARGUMENT = 3

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

    def get(self, key: int) -> bytes | None:
        return self._chunks[key & self._mask].get(key)

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

    def to_dict(self) -> dict[int, bytes]:
        out: dict[int, bytes] = {}
        for chunk in self._chunks:
            out.update(chunk)
        return out
