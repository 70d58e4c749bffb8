"""Log record framing: encode mutations, decode a log file's bytes.

Byte layout of one record (little-endian)::

    offset  size  field
    0       4     length       payload length in bytes
    4       4     payload_crc  CRC-32 (zlib) of the payload
    8       4     header_crc   CRC-32 of bytes 0..7 (guards the length itself)
    12      8     seq          sequence number, +1 per record, continuous across files
    20      1     op           1 create, 3 update, 4 delete (chord.v1.Op numbers)
    21      4     key_len      length of the key's decimal text
    25      k     key          the key in canonical decimal ASCII
    25+k    v     value        the rest of the payload (empty for delete)

A log file is records back to back, nothing else. A record cut short at the
end of the file (a crash mid-write) is a *torn tail*: the scanner stops there
and reports how many bytes it dropped. A bad checksum followed by more data
is *corruption* and raises CorruptRecordError naming the file and offset.
"""

from __future__ import annotations

import struct
import zlib
from typing import Iterable, NamedTuple

from chordctl.errors import CorruptRecordError

OP_CREATE = 1
OP_READ = 2
OP_UPDATE = 3
OP_DELETE = 4
MUTATIONS = (OP_CREATE, OP_UPDATE, OP_DELETE)

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


def encode(seq: int, op: int, key: bytes, value: bytes = b"") -> bytes:
    """One framed record."""
    payload = _pack_payload_head(seq, op, len(key)) + key + value
    length = len(payload)
    pcrc = _crc32(payload)
    return _pack_header(length, pcrc, _crc32(_pack_len_crc(length, pcrc))) + payload


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


def scan(buf: bytes, path: str = "<buffer>", allow_torn: bool = True) -> ScanResult:
    """Decode every record in *buf*, the whole content of one log file.

    A damaged record is a torn tail when nothing valid can follow it: the file
    ends inside it, or its payload checksum fails and it ends exactly at the
    end of the file, or everything after it (after its header, when the header
    itself is bad) is zeros (a crash after the file grew but before all the
    data reached it). With allow_torn False (a log that
    is not the newest) a torn tail is corruption too.
    """
    records: list[Record] = []
    append = records.append
    unpack_header = HEADER.unpack_from
    unpack_head = PAYLOAD_HEAD.unpack_from
    mv = memoryview(buf)
    end = len(buf)
    off = 0
    while off < end:
        if end - off < HEADER_SIZE:
            return _torn(records, off, end, path, allow_torn, "record header cut short")
        length, pcrc, hcrc = unpack_header(buf, off)
        if _crc32(_pack_len_crc(length, pcrc)) != hcrc:
            # The header cannot be trusted, but if nothing but zeros follows
            # it no record can: the write was cut and the file zero-filled.
            if not any(mv[off + HEADER_SIZE:]):
                return _torn(records, off, end, path, allow_torn, "zero-filled tail")
            raise CorruptRecordError(path, off, "record header checksum mismatch")
        if length < PAYLOAD_HEAD_SIZE or length > MAX_PAYLOAD:
            raise CorruptRecordError(path, off, f"impossible record length {length}")
        body = off + HEADER_SIZE
        stop = body + length
        if stop > end:
            return _torn(records, off, end, path, allow_torn, "record payload cut short")
        payload = buf[body:stop]
        if _crc32(payload) != pcrc:
            # Zero-filled pages after a crash usually start mid-record, so
            # zeros after this record mean nothing valid follows it either.
            if stop == end:
                return _torn(records, off, end, path, allow_torn, "last record checksum mismatch")
            if not any(mv[stop:]):
                return _torn(records, off, end, path, allow_torn,
                             "record checksum mismatch before a zero-filled tail")
            raise CorruptRecordError(path, off, "record checksum mismatch")
        seq, op, klen = unpack_head(payload, 0)
        kend = PAYLOAD_HEAD_SIZE + klen
        if op not in MUTATIONS or kend > length:
            raise CorruptRecordError(path, off, f"malformed record (op {op}, key length {klen})")
        append(Record(seq, op, payload[PAYLOAD_HEAD_SIZE:kend], payload[kend:]))
        off = stop
    return ScanResult(records, off, 0)


def _torn(records: list[Record], off: int, end: int, path: str, allow_torn: bool,
          why: str) -> ScanResult:
    if not allow_torn:
        raise CorruptRecordError(path, off, f"{why} (only the newest log may end torn)")
    return ScanResult(records, off, end - off)
