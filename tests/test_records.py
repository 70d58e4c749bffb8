"""Tests for chordctl.core.storage.records: framing round trips, torn tails, corruption."""

from __future__ import annotations

import struct
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chordctl.core.storage import records
from chordctl.core.storage.records import (
    HEADER_SIZE,
    MAX_PAYLOAD,
    PAYLOAD_HEAD_SIZE,
    Record,
    encode_many,
    scan,
)
from chordctl.errors import CorruptRecordError
from chordctl.protocol import OP_CREATE, OP_DELETE, OP_UPDATE


def encode(seq: int, op: int, key: bytes, value: bytes = b"") -> bytes:
    """One framed record (the log writer frames many at once)."""
    return encode_many([(seq, op, key, value)])

PATH = "/data/node-3/log.7"
MIB = 1024 * 1024


def sample_records() -> list[tuple[int, int, bytes, bytes]]:
    return [
        (1, OP_CREATE, b"7", b"seven"),
        (2, OP_CREATE, str(10**40).encode(), b""),
        (3, OP_UPDATE, b"7", bytes(range(256))),
        (4, OP_DELETE, b"7", b""),
        (5, OP_CREATE, b"0", b"\x00" * 17),
    ]


def offsets(recs: list[tuple[int, int, bytes, bytes]]) -> list[int]:
    """Byte offset of every record in encode_many(recs), plus the end."""
    out = [0]
    for rec in recs:
        out.append(out[-1] + len(encode(*rec)))
    return out


def header(length: int, pcrc: int = 0) -> bytes:
    """A record header with a valid header checksum for any length."""
    return struct.pack("<III", length, pcrc, zlib.crc32(struct.pack("<II", length, pcrc)))


# -- round trips -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value"),
    [
        (b"0", b""),
        (b"9", b"x"),
        (b"1" + b"0" * 4999, b""),                       # 5000-digit key
        (b"1" + b"0" * 4999, b"v" * MIB),                # 5000-digit key, 1 MiB value
        (b"42", bytes(range(256)) * (MIB // 256)),       # 1 MiB of every byte value
    ],
    ids=["1-digit-empty", "1-digit", "5000-digits-empty", "5000-digits-1MiB", "binary-1MiB"],
)
@pytest.mark.parametrize("op", [OP_CREATE, OP_UPDATE, OP_DELETE])
def test_record_round_trips(op: int, key: bytes, value: bytes) -> None:
    buf = encode(123456789, op, key, value)
    assert len(buf) == HEADER_SIZE + PAYLOAD_HEAD_SIZE + len(key) + len(value)
    result = scan(buf, PATH)
    assert result.records == [Record(123456789, op, key, value)]
    assert result.valid_bytes == len(buf)
    assert result.torn_bytes == 0


def test_encode_many_equals_concatenated_encode() -> None:
    recs = sample_records() + [(6, OP_CREATE, b"1" * 5000, b"v" * MIB)]
    buf = encode_many(recs)
    assert buf == b"".join(encode(*r) for r in recs)
    result = scan(buf, PATH)
    assert result.records == [Record(*r) for r in recs]
    assert (result.valid_bytes, result.torn_bytes) == (len(buf), 0)


def test_encode_many_of_nothing_is_empty() -> None:
    assert encode_many([]) == b""
    assert scan(b"", PATH) == records.ScanResult([], 0, 0)


# -- torn tails ---------------------------------------------------------------------


def test_replay_drops_torn_tail_at_every_offset_of_last_record() -> None:
    recs = sample_records() + [(6, OP_UPDATE, b"12345", b"last value " * 3)]
    buf = encode_many(recs)
    offs = offsets(recs)
    start, end = offs[-2], offs[-1]
    assert end == len(buf)
    for cut in range(start + 1, end):
        result = scan(buf[:cut], PATH)
        assert result.records == [Record(*r) for r in recs[:-1]], cut
        assert result.valid_bytes == start, cut
        assert result.torn_bytes == cut - start, cut


def test_cut_at_a_record_boundary_is_not_torn() -> None:
    recs = sample_records()
    buf = encode_many(recs)
    for i, off in enumerate(offsets(recs)):
        result = scan(buf[:off], PATH)
        assert result.records == [Record(*r) for r in recs[:i]]
        assert (result.valid_bytes, result.torn_bytes) == (off, 0)


@pytest.mark.parametrize("cut_from_end", [1, 5, HEADER_SIZE, HEADER_SIZE + 3])
def test_torn_tail_of_only_record_leaves_nothing(cut_from_end: int) -> None:
    buf = encode(1, OP_CREATE, b"5", b"value")
    result = scan(buf[:-cut_from_end], PATH)
    assert result == records.ScanResult([], 0, len(buf) - cut_from_end)


@pytest.mark.parametrize("bit", range(8))
def test_replay_refuses_bitflip_in_last_record(bit: int) -> None:
    # The whole record reached the file (it may have been fsynced and
    # acknowledged): a flipped bit is corruption, never a torn write to cut.
    recs = sample_records()
    buf = bytearray(encode_many(recs))
    offs = offsets(recs)
    buf[-1] ^= 1 << bit
    with pytest.raises(CorruptRecordError) as err:
        scan(bytes(buf), PATH)
    assert err.value.offset == offs[-2]
    assert "checksum" in err.value.reason


def test_bitflip_anywhere_in_last_payload_is_corruption() -> None:
    recs = sample_records()[:-1] + [(5, OP_CREATE, b"12", b"payload of the last record")]
    buf = encode_many(recs)
    offs = offsets(recs)
    for pos in range(offs[-2] + HEADER_SIZE, offs[-1]):
        damaged = bytearray(buf)
        damaged[pos] ^= 0x10
        with pytest.raises(CorruptRecordError) as err:
            scan(bytes(damaged), PATH)
        assert err.value.offset == offs[-2], pos


def test_complete_bad_record_before_zero_tail_is_corruption() -> None:
    # Zeros after a whole record do not explain its bad checksum.
    recs = sample_records()[:-1] + [(5, OP_CREATE, b"12", b"nonzero")]
    buf = bytearray(encode_many(recs))
    offs = offsets(recs)
    buf[-2] ^= 0x01
    with pytest.raises(CorruptRecordError) as err:
        scan(bytes(buf) + bytes(4096), PATH)
    assert err.value.offset == offs[-2]


@pytest.mark.parametrize("zeros", [1, HEADER_SIZE - 1, HEADER_SIZE, HEADER_SIZE + 1, 100, 4096])
def test_zero_filled_tail_is_torn(zeros: int) -> None:
    recs = sample_records()
    good = encode_many(recs)
    result = scan(good + bytes(zeros), PATH)
    assert result.records == [Record(*r) for r in recs]
    assert (result.valid_bytes, result.torn_bytes) == (len(good), zeros)


def test_zero_filled_file_is_all_torn() -> None:
    assert scan(bytes(8192), PATH) == records.ScanResult([], 0, 8192)


def test_zero_fill_starting_inside_last_record_is_torn() -> None:
    # A crash after the file grew but before its last pages were written: the
    # zeros start at a page boundary, which is rarely a record boundary.
    recs = sample_records() + [(6, OP_CREATE, b"99", b"p" * 300)]
    buf = encode_many(recs)
    offs = offsets(recs)
    start, end = offs[-2], offs[-1]
    for keep in (1, 4, 8, HEADER_SIZE - 1, HEADER_SIZE, HEADER_SIZE + 5, end - start - 1):
        damaged = buf[:start + keep] + bytes(end - start - keep + 512)
        result = scan(damaged, PATH)
        assert result.records == [Record(*r) for r in recs[:-1]], keep
        assert result.valid_bytes == start, keep
        assert result.torn_bytes == len(damaged) - start, keep


def test_allow_torn_false_makes_torn_tail_corrupt() -> None:
    recs = sample_records()
    buf = encode_many(recs)
    offs = offsets(recs)
    for damaged in (buf[:-3], buf[:offs[-2] + 4], buf + bytes(64)):
        with pytest.raises(CorruptRecordError) as err:
            scan(damaged, PATH, allow_torn=False)
        assert err.value.path == PATH
        assert "log.7" in str(err.value)
        assert err.value.offset == (len(buf) if len(damaged) > len(buf) else offs[-2])
    # An intact file is fine with allow_torn=False.
    assert scan(buf, PATH, allow_torn=False).records == [Record(*r) for r in recs]


# -- corruption ------------------------------------------------------------------


def test_flipped_byte_in_middle_record_is_corruption_at_its_offset() -> None:
    recs = sample_records()
    buf = encode_many(recs)
    offs = offsets(recs)
    # Every record but the last one is followed by valid data.
    for i in range(len(recs) - 1):
        start, end = offs[i], offs[i + 1]
        for pos in range(start, end):
            damaged = bytearray(buf)
            damaged[pos] ^= 0xFF
            with pytest.raises(CorruptRecordError) as err:
                scan(bytes(damaged), PATH)
            assert err.value.offset == start, (i, pos)
            assert err.value.path == PATH
            assert "log.7" in str(err.value)
            assert f"offset {start}" in str(err.value)


@pytest.mark.parametrize("bit", [0, 3, 7])
def test_single_bit_flip_in_middle_header_is_corruption(bit: int) -> None:
    recs = sample_records()
    buf = encode_many(recs)
    offs = offsets(recs)
    for pos in range(offs[2], offs[2] + HEADER_SIZE):
        damaged = bytearray(buf)
        damaged[pos] ^= 1 << bit
        with pytest.raises(CorruptRecordError) as err:
            scan(bytes(damaged), PATH)
        assert err.value.offset == offs[2]


def test_flipped_header_byte_of_last_record_is_corruption() -> None:
    # A bad header followed by non-zero bytes is not a torn write: the payload
    # that follows it was written, so the header was damaged afterwards.
    recs = sample_records()
    buf = encode_many(recs)
    start = offsets(recs)[-2]
    for pos in range(start, start + HEADER_SIZE):
        damaged = bytearray(buf)
        damaged[pos] ^= 0xFF
        with pytest.raises(CorruptRecordError) as err:
            scan(bytes(damaged), PATH)
        assert err.value.offset == start


def test_garbage_after_valid_records_is_corruption() -> None:
    recs = sample_records()
    buf = encode_many(recs)
    with pytest.raises(CorruptRecordError) as err:
        scan(buf + b"\x01" * 40, PATH)
    assert err.value.offset == len(buf)


def test_bad_middle_record_before_zeros_is_not_hidden_by_later_data() -> None:
    # Zeros inside the file do not make a damaged record torn when valid data follows.
    recs = sample_records()
    buf = encode_many(recs)
    offs = offsets(recs)
    damaged = buf[:offs[1] + 3] + bytes(offs[2] - offs[1] - 3) + buf[offs[2]:]
    with pytest.raises(CorruptRecordError) as err:
        scan(damaged, PATH)
    assert err.value.offset == offs[1]


@pytest.mark.parametrize("length", [0, 1, PAYLOAD_HEAD_SIZE - 1, MAX_PAYLOAD + 1, 2**32 - 1])
def test_impossible_length_is_corruption(length: int) -> None:
    good = encode(1, OP_CREATE, b"1", b"a")
    # A header whose own checksum is right but whose length cannot be real.
    damaged = good + header(length) + b"\x01" * 64
    with pytest.raises(CorruptRecordError) as err:
        scan(damaged, PATH)
    assert err.value.offset == len(good)
    assert "length" in err.value.reason
    # Even at the very end of the newest log: a wrong length is not a torn write.
    with pytest.raises(CorruptRecordError):
        scan(good + header(length), PATH)


@pytest.mark.parametrize("op", [0, 2, 5, 255])
def test_unknown_op_is_corruption(op: int) -> None:
    bad = encode(2, op, b"1", b"x")
    good = encode(1, OP_CREATE, b"1", b"a")
    with pytest.raises(CorruptRecordError) as err:
        scan(good + bad + good, PATH)
    assert err.value.offset == len(good)
    assert "malformed" in err.value.reason


def test_key_length_past_payload_is_corruption() -> None:
    payload = struct.pack("<QBI", 1, OP_CREATE, 1000) + b"12"
    rec = header(len(payload), zlib.crc32(payload)) + payload
    with pytest.raises(CorruptRecordError) as err:
        scan(rec, PATH)
    assert err.value.offset == 0


# -- fuzz ----------------------------------------------------------------------------


def check_scan(buf: bytes) -> None:
    """scan returns a consistent result or raises CorruptRecordError; nothing else."""
    for allow_torn in (True, False):
        try:
            result = scan(buf, PATH, allow_torn=allow_torn)
        except CorruptRecordError as e:
            assert e.path == PATH
            assert 0 <= e.offset <= len(buf)
            continue
        assert 0 <= result.valid_bytes <= len(buf)
        assert result.valid_bytes + result.torn_bytes == len(buf)
        if not allow_torn:
            assert result.torn_bytes == 0
        # What scan accepted re-encodes to exactly the bytes it accepted.
        assert encode_many(result.records) == buf[:result.valid_bytes]


record_strategy = st.tuples(
    st.integers(0, 2**64 - 1),
    st.sampled_from([OP_CREATE, OP_UPDATE, OP_DELETE]),
    st.integers(0, 10**30).map(lambda k: str(k).encode()),
    st.binary(max_size=64),
)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=512))
def test_scan_of_arbitrary_bytes_returns_or_raises_corrupt(buf: bytes) -> None:
    check_scan(buf)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(record_strategy, min_size=1, max_size=6),
    st.lists(st.tuples(st.sampled_from(["flip", "cut", "zero", "insert"]),
                       st.integers(0, 10**6), st.binary(min_size=1, max_size=16)),
             max_size=3),
)
def test_scan_of_damaged_log_returns_or_raises_corrupt(recs, damage) -> None:
    buf = bytearray(encode_many(recs))
    for kind, where, data in damage:
        pos = where % (len(buf) + 1)
        if kind == "flip" and pos < len(buf):
            buf[pos] ^= data[0] or 1
        elif kind == "cut":
            del buf[pos:]
        elif kind == "zero":
            buf[pos:] = bytes(len(buf) - pos + len(data))
        elif kind == "insert":
            buf[pos:pos] = data
    check_scan(bytes(buf))


@settings(max_examples=200, deadline=None)
@given(st.lists(record_strategy, max_size=20))
def test_scan_decodes_whatever_encode_many_wrote(recs) -> None:
    buf = encode_many(recs)
    assert scan(buf, PATH, allow_torn=False) == records.ScanResult(
        [Record(*r) for r in recs], len(buf), 0)
