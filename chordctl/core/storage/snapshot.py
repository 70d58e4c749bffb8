"""Snapshot files ``snap.X``: the whole map at the cut before ``log.X``.

Byte layout (little-endian)::

    header   8s  magic b"CHSNAP2\\n"
             Q   counter       X
             Q   last_seq      sequence number of the last record it includes
             Q   keys          number of keys
             I   chunks        number of chunk frames that follow
             H   ring_bits     the ring identity it was written under
             B   placement       (identity.py): 1 direct, 2 hash; all four
             B   replicas        fields 0 when none was given (offline tools);
             4x  (zero)          replicas 0 in older files: 1
             Q   ring_nodes      number of nodes
             Q   node_index
             I   header_crc    CRC-32 of the 60 bytes above
    chunks   repeated: I length, I crc (CRC-32 of data), data = marshal(dict)
    footer   8s  magic b"CHSNEND\\n", I chunks (again)

The previous format, ``CHSNAP1``, is the same without the identity fields
(a 40-byte header); it is still read, with no identity.

Each chunk is one of the store's copy-on-write chunks, so writing needs no
copy of the map and loading assigns chunks without re-hashing. A snapshot is
written to ``snap.X.tmp``, fsynced, renamed and the directory fsynced, so a
crash never leaves a partial ``snap.X``.
"""

from __future__ import annotations

import marshal
import os
import struct
import time
import zlib
from typing import NamedTuple

from chordctl.core.storage import files
from chordctl.core.storage.identity import PLACEMENT_CODES, RingIdentity
from chordctl.errors import CorruptRecordError

MAGIC = b"CHSNAP2\n"
MAGIC_V1 = b"CHSNAP1\n"
END_MAGIC = b"CHSNEND\n"
_HEAD = struct.Struct("<8sQQQIHBB4xQQ")
_HEAD_V1 = struct.Struct("<8sQQQI")
_HEAD_CRC = struct.Struct("<I")
_FRAME = struct.Struct("<II")
_FOOT = struct.Struct("<8sI")
HEADER_SIZE = _HEAD.size + _HEAD_CRC.size
HEADER_SIZE_V1 = _HEAD_V1.size + _HEAD_CRC.size
_PLACEMENTS = {code: name for name, code in PLACEMENT_CODES.items()}


class SnapshotInfo(NamedTuple):
    counter: int
    last_seq: int
    keys: int
    chunks: int
    identity: RingIdentity | None = None   # None: CHSNAP1, or written without one
    header_size: int = HEADER_SIZE


class Snapshot(NamedTuple):
    info: SnapshotInfo
    chunks: list[dict[int, bytes]]


# Seconds the writer pauses per second of work (see write()); 0 in offline tools.
PAUSE_RATIO = 4.0


def write(directory: str, counter: int, *args, **kwargs) -> tuple[str, int]:
    """Write ``snap.<counter>`` atomically; return (path, size in bytes).

    Arguments as _write_file(). On any error ``snap.<counter>.tmp`` is
    removed: a failed snapshot (ENOSPC...) must not leave its partial file to
    fill the disk, and the logs still hold everything it would have held."""
    try:
        return _write_file(directory, counter, *args, **kwargs)
    except BaseException:
        tmp = os.path.join(directory, files.snap_name(counter)) + files.TMP_SUFFIX
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _write_file(directory: str, counter: int, last_seq: int,
                chunks: list[dict[int, bytes]], pause_ratio: float = PAUSE_RATIO,
                identity: RingIdentity | None = None) -> tuple[str, int]:
    final = os.path.join(directory, files.snap_name(counter))
    tmp = final + files.TMP_SUFFIX
    keys = sum(len(c) for c in chunks)
    if identity is None:
        ring = (0, 0, 0, 0, 0)
    else:
        ring = (identity.bits, PLACEMENT_CODES[identity.placement], identity.replicas,
                identity.nodes, identity.index)
    head = _HEAD.pack(MAGIC, counter, last_seq, keys, len(chunks), *ring)
    size = 0
    with open(tmp, "wb") as f:
        f.write(head + _HEAD_CRC.pack(zlib.crc32(head)))
        size += HEADER_SIZE
        # One marshal call per chunk (~0.1 ms for 1,000 keys), then step
        # aside for four times as long: the writer shares the node's one GIL
        # with the request threads, and this keeps it to a fifth of it, so
        # request latency barely moves while a large snapshot is written, even
        # with the node saturated (BENCHMARKS.md: twice as long gave p99 up to
        # 2x at 40k reads/s).
        perf = time.perf_counter
        for chunk in chunks:
            t0 = perf()
            data = marshal.dumps(chunk)
            f.write(_FRAME.pack(len(data), zlib.crc32(data)))
            f.write(data)
            size += _FRAME.size + len(data)
            time.sleep(pause_ratio * (perf() - t0))
        f.write(_FOOT.pack(END_MAGIC, len(chunks)))
        size += _FOOT.size
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
    files.fsync_dir(directory)
    return final, size


def read_info(path: str) -> SnapshotInfo:
    """The header of a snapshot, verified (cheap: no chunk is decoded)."""
    with open(path, "rb") as f:
        head = f.read(HEADER_SIZE)
    return _parse_header(head, path)


def _parse_header(buf: bytes, path: str) -> SnapshotInfo:
    magic = bytes(buf[:8])
    head = _HEAD if magic == MAGIC else _HEAD_V1
    if len(buf) < head.size + _HEAD_CRC.size:
        raise CorruptRecordError(path, 0, "snapshot header cut short")
    if magic not in (MAGIC, MAGIC_V1):
        raise CorruptRecordError(path, 0, "not a chordctl snapshot (bad magic)")
    (crc,) = _HEAD_CRC.unpack_from(buf, head.size)
    if zlib.crc32(buf[:head.size]) != crc:
        raise CorruptRecordError(path, 0, "snapshot header checksum mismatch")
    if head is _HEAD_V1:
        _, counter, last_seq, keys, nchunks = _HEAD_V1.unpack_from(buf, 0)
        return SnapshotInfo(counter, last_seq, keys, nchunks, None, HEADER_SIZE_V1)
    _, counter, last_seq, keys, nchunks, bits, placement, replicas, nodes, index = \
        _HEAD.unpack_from(buf, 0)
    identity = None
    if bits or placement or nodes or index:
        if placement not in _PLACEMENTS or not bits or not nodes or index >= nodes:
            raise CorruptRecordError(path, 0, "snapshot header names an impossible ring "
                                              f"(bits {bits}, placement code {placement}, "
                                              f"node {index} of {nodes})")
        identity = RingIdentity(bits, _PLACEMENTS[placement], nodes, index, replicas or 1)
    return SnapshotInfo(counter, last_seq, keys, nchunks, identity, HEADER_SIZE)


def read(path: str) -> Snapshot:
    """Load and verify a whole snapshot; CorruptRecordError on any damage."""
    with open(path, "rb") as f:
        buf = f.read()
    info = _parse_header(buf, path)
    off = info.header_size
    end = len(buf)
    chunks: list[dict[int, bytes]] = []
    loads = marshal.loads
    crc32 = zlib.crc32
    for _ in range(info.chunks):
        if off + _FRAME.size > end:
            raise CorruptRecordError(path, off, "snapshot cut short")
        length, crc = _FRAME.unpack_from(buf, off)
        body = off + _FRAME.size
        if body + length > end:
            raise CorruptRecordError(path, off, "snapshot chunk cut short")
        data = buf[body:body + length]
        if crc32(data) != crc:
            raise CorruptRecordError(path, off, "snapshot chunk checksum mismatch")
        try:
            chunk = loads(data)
        except (ValueError, EOFError, TypeError) as e:
            raise CorruptRecordError(path, off, f"snapshot chunk undecodable ({e})") from None
        if not isinstance(chunk, dict):
            raise CorruptRecordError(path, off, "snapshot chunk is not a map")
        chunks.append(chunk)
        off = body + length
    if end - off != _FOOT.size or _FOOT.unpack_from(buf, off) != (END_MAGIC, info.chunks):
        raise CorruptRecordError(path, off, "snapshot footer missing or wrong")
    if sum(len(c) for c in chunks) != info.keys:
        raise CorruptRecordError(path, 0, "snapshot key count does not match its chunks")
    return Snapshot(info, chunks)
