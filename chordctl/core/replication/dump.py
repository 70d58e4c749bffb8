"""A group's snapshot file, ``raft-<g>.dump``: one arc's keys as of one entry.

With ``ring.replicas > 1`` every node snapshot (``snap.X``) also writes, for
each group of the node, the arc's keys at the cut and the two log entries
the cut falls on (``prev``, ``last``). Once that file is durable the group's
Raft log is compacted up to ``prev`` (engine.py): the node's own files hold
everything before it. A replica whose log ends before the start of its
leader's receives the file in Chunks (PySyncObj's snapshot transfer, on the
same gRPC streams) and installs it (replica.py).

Byte layout: ``MAGIC``, then frames ``u32 length, u32 CRC-32 of the message,
message``: one ``DumpHeader`` (proto/raft.proto), then ``header.chunks``
``DumpChunk``s, then nothing. Every field is protobuf: a file that came over
the network is parsed, never unpickled or unmarshalled, and checked whole
(every CRC, the counts, every key in the arc) before any of it is used.
"""

from __future__ import annotations

import os
import struct
import zlib
from typing import Callable, Iterable, NamedTuple

from chordctl.core.storage import files
from chordctl.errors import CorruptRecordError
from chordctl.pb import raft_pb2 as rpb

MAGIC = b"CHDUMP1\n"
_FRAME = struct.Struct("<II")
CHUNK_KEYS = 2048          # keys per DumpChunk


def file_name(group: int) -> str:
    return f"raft-{group}.dump"


DIGEST_BYTES = 16          # BLAKE2b digest of a command (engine.py)


class Dump(NamedTuple):
    group: int
    prev: tuple[bytes, int, int]       # (command, idx, term), as the journal holds entries
    last: tuple[bytes, int, int]
    pairs: dict[int, bytes]
    # (digest, idx, term) of the newest commands up to last, oldest first
    recent: tuple[tuple[bytes, int, int], ...] = ()


def _entry(e: tuple[bytes, int, int]) -> rpb.Entry:
    return rpb.Entry(command=e[0], idx=e[1], term=e[2])


def write(path: str, group: int, prev: tuple[bytes, int, int], last: tuple[bytes, int, int],
          pairs: Iterable[tuple[int, bytes]], keys: int,
          recent: Iterable[tuple[bytes, int, int]] = ()) -> int:
    """Write the dump to *path* (a temporary name: the caller renames it),
    fsynced; return its size. *pairs* yields exactly *keys* (key, value);
    *recent* the (digest, idx, term) of the newest commands up to *last*."""
    chunks = (keys + CHUNK_KEYS - 1) // CHUNK_KEYS
    h = rpb.DumpHeader(group=group, prev=_entry(prev), last=_entry(last), keys=keys,
                       chunks=chunks)
    add = h.recent.add
    for digest, idx, term in recent:
        add(digest=digest, idx=idx, term=term)
    header = h.SerializeToString()
    size = 0
    written = 0
    with open(path, "wb") as f:
        def frame(data: bytes) -> None:
            nonlocal size
            f.write(_FRAME.pack(len(data), zlib.crc32(data)))
            f.write(data)
            size += _FRAME.size + len(data)
        f.write(MAGIC)
        size += len(MAGIC)
        frame(header)
        chunk = rpb.DumpChunk()
        for key, value in pairs:
            chunk.keys.append(str(key).encode())
            chunk.values.append(value)
            written += 1
            if len(chunk.keys) == CHUNK_KEYS:
                frame(chunk.SerializeToString())
                chunk = rpb.DumpChunk()
        if len(chunk.keys):
            frame(chunk.SerializeToString())
        if written != keys:
            raise ValueError(f"dump of group {group}: {written} keys written, {keys} announced")
        f.flush()
        os.fsync(f.fileno())
    return size


def read(path: str, group: int, key_test: Callable[[int], bool]) -> Dump:
    """Load and check the dump at *path* for *group*; CorruptRecordError on
    any damage, on a header for another group, or on a key outside the arc."""
    with open(path, "rb") as f:
        buf = f.read()
    if buf[:len(MAGIC)] != MAGIC:
        raise CorruptRecordError(path, 0, "not a chordctl group dump (bad magic)")
    off = len(MAGIC)
    end = len(buf)

    def frame() -> bytes:
        nonlocal off
        if off + _FRAME.size > end:
            raise CorruptRecordError(path, off, "group dump cut short")
        length, crc = _FRAME.unpack_from(buf, off)
        body = off + _FRAME.size
        if body + length > end:
            raise CorruptRecordError(path, off, "group dump frame cut short")
        data = buf[body:body + length]
        if zlib.crc32(data) != crc:
            raise CorruptRecordError(path, off, "group dump checksum mismatch")
        off = body + length
        return data

    try:
        header = rpb.DumpHeader.FromString(frame())
    except CorruptRecordError:
        raise
    except Exception as e:        # protobuf's DecodeError
        raise CorruptRecordError(path, len(MAGIC), f"group dump header undecodable ({e})") \
            from None
    if header.group != group:
        raise CorruptRecordError(path, len(MAGIC), f"group dump of group {header.group} "
                                                   f"where group {group}'s was expected")
    if header.last.idx != header.prev.idx + 1 or header.prev.idx < 1:
        raise CorruptRecordError(path, len(MAGIC), "group dump names impossible entries "
                                                   f"({header.prev.idx}, {header.last.idx})")
    recent = _recent(path, header)
    pairs: dict[int, bytes] = {}
    for _ in range(header.chunks):
        at = off
        try:
            chunk = rpb.DumpChunk.FromString(frame())
        except CorruptRecordError:
            raise
        except Exception as e:
            raise CorruptRecordError(path, at, f"group dump chunk undecodable ({e})") from None
        if len(chunk.keys) != len(chunk.values):
            raise CorruptRecordError(path, at, "group dump chunk with keys and values unpaired")
        for k, v in zip(chunk.keys, chunk.values):
            try:
                key = int(k)
            except ValueError:
                raise CorruptRecordError(path, at, "group dump key is not a decimal "
                                                   "integer") from None
            if key < 0 or not key_test(key) or k != str(key).encode():
                raise CorruptRecordError(path, at, f"group dump key {k[:40]!r} is not a "
                                                   f"canonical key of group {group}'s arc")
            pairs[key] = v
    if off != end:
        raise CorruptRecordError(path, off, "group dump has bytes past its last chunk")
    if len(pairs) != header.keys:
        raise CorruptRecordError(path, 0, "group dump key count does not match its chunks")
    p, last = header.prev, header.last
    return Dump(group, (p.command, p.idx, p.term), (last.command, last.idx, last.term), pairs,
                recent)


def _recent(path: str, header: rpb.DumpHeader) -> tuple[tuple[bytes, int, int], ...]:
    out = tuple((s.digest, s.idx, s.term) for s in header.recent)
    for digest, idx, _term in out:
        if len(digest) != DIGEST_BYTES or idx > header.last.idx:
            raise CorruptRecordError(path, len(MAGIC), "group dump names a command digest "
                                                       "it cannot hold")
    return out


def _header(path: str) -> rpb.DumpHeader | None:
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return None
    with f:
        buf = f.read(len(MAGIC) + _FRAME.size)
        if buf[:len(MAGIC)] != MAGIC or len(buf) < len(MAGIC) + _FRAME.size:
            raise CorruptRecordError(path, 0, "not a chordctl group dump")
        length, crc = _FRAME.unpack_from(buf, len(MAGIC))
        data = f.read(length)
    if len(data) != length or zlib.crc32(data) != crc:
        raise CorruptRecordError(path, len(MAGIC), "group dump header damaged")
    try:
        return rpb.DumpHeader.FromString(data)
    except Exception as e:        # protobuf's DecodeError
        raise CorruptRecordError(path, len(MAGIC), f"group dump header undecodable ({e})") \
            from None


def read_last(path: str) -> int | None:
    """The index of the entry the dump at *path* stands at, from its header
    alone (checked); None without a file."""
    header = _header(path)
    return None if header is None else header.last.idx


def read_recent(path: str) -> tuple[tuple[bytes, int, int], ...]:
    """The dump's (digest, idx, term) of its newest commands, from its header
    alone (checked); () without a file."""
    header = _header(path)
    return () if header is None else _recent(path, header)


def replace(tmp: str, final: str) -> None:
    """Rename the fsynced *tmp* over *final* and make the rename durable."""
    os.replace(tmp, final)
    files.fsync_dir(os.path.dirname(final) or ".")
