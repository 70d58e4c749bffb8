"""Log record framing: encode mutations, decode a log file's bytes.

Byte layout of one record (little-endian)::

    offset  size  field
    0       4     length       payload length in bytes
    4       4     payload_crc  CRC-32 (zlib) of the payload
    8       4     header_crc   CRC-32 of bytes 0..7 (guards the length itself)
    12      8     seq          sequence number, +1 per record, continuous across files
    20      1     op           1 create, 3 update, 4 delete (protocol.OP_*, chord.v1.Op),
                               8 raft: group <key> applied Raft entry <value> (below)
    21      4     key_len      length of the key's decimal text
    25      k     key          the key in canonical decimal ASCII
    25+k    v     value        the rest of the payload (empty for delete)

With ``ring.replicas`` > 1 the mutations of each committed Raft entry are
followed, in the same write, by one raft record (op 8, key = the group id,
value = the entry's index as 8 bytes little-endian), and each ``log.X``
starts with one raft record per group (where every group stood at the
snapshot cut); recovery (recovery.py) applies an entry's mutations only once
its raft record is there.

A log file is records back to back, nothing else. Only two kinds of damage
are a *torn tail* (a write a crash cut short, which was never fsynced and so
never acknowledged under ``batch``/``always``): a record cut short by the end
of the file, and a zero-filled remainder (the file grew but the data never
landed: everything from inside the record to the end of the file is zeros).
The scanner stops there and reports how many bytes it dropped. Anything else
-- a complete record with non-zero bytes and a bad checksum, even the very
last one, or a bad record followed by more data -- is *corruption* and raises
CorruptRecordError naming the file and offset: a bit flip in an acknowledged
record must stop the node, not be silently cut away.
"""

from __future__ import annotations

import struct
import zlib
from typing import Iterable, NamedTuple

from chordctl.errors import CorruptRecordError
# The op byte is the wire's op number; this format maps to protocol, not back.
from chordctl.protocol import LOGGED, OP_RAFT

HEADER = struct.Struct("<III")
PAYLOAD_HEAD = struct.Struct("<QBI")
LEN_CRC = struct.Struct("<II")
HEADER_SIZE = HEADER.size            # 12
PAYLOAD_HEAD_SIZE = PAYLOAD_HEAD.size  # 13
# No record is larger than this; a header that says otherwise is corrupt.
MAX_PAYLOAD = 256 * 1024 * 1024

_crc32 = zlib.crc32
_pack_header = HEADER.pack
_pack_len_crc = LEN_CRC.pack
_pack_payload_head = PAYLOAD_HEAD.pack


class Record(NamedTuple):
    seq: int
    op: int
    key: bytes      # decimal ASCII
    value: bytes


class ScanResult(NamedTuple):
    records: list[Record]
    valid_bytes: int   # offset just past the last good record
    torn_bytes: int    # bytes after it that were dropped (0 if none)


_RAFT_INDEX = struct.Struct("<Q")


def raft_record(seq: int, group: int, idx: int) -> tuple[int, int, bytes, bytes]:
    """The (seq, op, key, value) of a raft record (see the module docstring)."""
    return seq, OP_RAFT, str(group).encode(), _RAFT_INDEX.pack(idx)


def raft_index(value: bytes) -> int:
    return _RAFT_INDEX.unpack(value)[0]


def encode_many(records: Iterable[tuple[int, int, bytes, bytes]]) -> bytes:
    """Frame many (seq, op, key, value) records into one buffer for one write."""
    parts = []
    append = parts.append
    for seq, op, key, value in records:
        payload = _pack_payload_head(seq, op, len(key)) + key + value
        length = len(payload)
        pcrc = _crc32(payload)
        append(_pack_header(length, pcrc, _crc32(_pack_len_crc(length, pcrc))))
        append(payload)
    return b"".join(parts)


class Tail:
    """Where iter_records stopped: filled in when its iteration ends."""

    __slots__ = ("valid_bytes", "torn_bytes")

    def __init__(self):
        self.valid_bytes = 0
        self.torn_bytes = 0


def scan(buf: bytes, path: str = "<buffer>", allow_torn: bool = True) -> ScanResult:
    """Decode every record in *buf*, the whole content of one log file.

    A damaged record is a torn tail only when the file ends inside it, or
    when its damage is a zero-filled remainder: the zeros that run to the end
    of the file start inside it (after its header, when the header itself is
    bad) -- a crash after the file grew but before all the data reached it.
    A complete record with a bad checksum and no such zeros is corruption,
    wherever it is. With allow_torn False (a log that is not the newest) a
    torn tail is corruption too.
    """
    tail = Tail()
    found = [Record(seq, op, key, value)
             for _off, seq, op, key, value in iter_records(buf, path, allow_torn, tail)]
    return ScanResult(found, tail.valid_bytes, tail.torn_bytes)


def iter_records(buf: bytes, path: str, allow_torn: bool, tail: Tail):
    """Yield (offset, seq, op, key, value) for each record, as scan() decides;
    when the iteration ends, *tail* says where the valid records end and how
    many torn bytes follow. Allocates nothing per record beyond key and value:
    recovery replays millions of records through this loop."""
    unpack_header = HEADER.unpack_from
    unpack_head = PAYLOAD_HEAD.unpack_from
    crc32 = _crc32
    mutations = LOGGED
    head_size = PAYLOAD_HEAD_SIZE
    mv = memoryview(buf)
    end = len(buf)
    off = 0
    why = ""
    while off < end:
        if end - off < HEADER_SIZE:
            why = "record header cut short"
            break
        length, pcrc, hcrc = unpack_header(buf, off)
        if crc32(mv[off:off + 8]) != hcrc:
            # The header cannot be trusted, but if nothing but zeros follows
            # it no record can: the write was cut and the file zero-filled.
            if not any(mv[off + HEADER_SIZE:]):
                why = "zero-filled tail"
                break
            raise CorruptRecordError(path, off, "record header checksum mismatch")
        if length < head_size or length > MAX_PAYLOAD:
            raise CorruptRecordError(path, off, f"impossible record length {length}")
        body = off + HEADER_SIZE
        stop = body + length
        if stop > end:
            why = "record payload cut short"
            break
        if crc32(mv[body:stop]) != pcrc:
            # Zero-filled pages after a crash usually start mid-record: if the
            # zeros that run to the end of the file start inside this record,
            # its data never landed. A complete record with non-zero bytes is
            # damage after the write (a bit flip), not a torn write.
            if len(bytes(mv[body:]).rstrip(b"\0")) < length:
                why = "zero-filled tail"
                break
            raise CorruptRecordError(path, off, "record checksum mismatch")
        seq, op, klen = unpack_head(buf, body)
        kstart = body + head_size
        kend = kstart + klen
        if op not in mutations or kend > stop:
            raise CorruptRecordError(path, off, f"malformed record (op {op}, key length {klen})")
        yield off, seq, op, buf[kstart:kend], buf[kend:stop]
        off = stop
    if off < end and not allow_torn:
        raise CorruptRecordError(path, off, f"{why} (only the newest log may end torn)")
    tail.valid_bytes = off
    tail.torn_bytes = end - off
