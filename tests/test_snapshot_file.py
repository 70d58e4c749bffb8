"""Tests for chordctl.core.storage.snapshot: round trips, atomic writes, every kind of damage."""

from __future__ import annotations

import os
import struct
import tempfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chordctl.core.storage import snapshot
from chordctl.core.store import Store
from chordctl.errors import CorruptRecordError
from chordctl.protocol import OP_CREATE

BIG = 10**5000 + 17   # more digits than Python will convert with str()


def chunks_of(data: dict[int, bytes], nchunks: int = 8) -> list[dict[int, bytes]]:
    s = Store(chunks=nchunks)
    for k, v in data.items():
        s.apply(OP_CREATE, k, v)
    return s.freeze()


def merged(chunks: list[dict[int, bytes]]) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    for c in chunks:
        out.update(c)
    return out


def write_sample(directory: str, counter: int = 3) -> tuple[str, dict[int, bytes]]:
    data = {k: b"value-%d" % k for k in range(0, 60, 3)}
    data[BIG] = b"big"
    path, _ = snapshot.write(directory, counter, 77, chunks_of(data, 4))
    return path, data


def layout(path: str) -> dict[str, tuple[int, int]]:
    """Byte ranges [start, end) of the header, each chunk frame and the footer."""
    with open(path, "rb") as f:
        buf = f.read()
    parts = {"header": (0, snapshot.HEADER_SIZE)}
    off = snapshot.HEADER_SIZE
    i = 0
    while len(buf) - off > 12:
        (length,) = struct.unpack_from("<I", buf, off)
        parts[f"chunk{i}"] = (off, off + 8 + length)
        off += 8 + length
        i += 1
    parts["footer"] = (off, len(buf))
    assert len(buf) - off == 12
    return parts


def assert_corrupt_names_file(path: str) -> CorruptRecordError:
    with pytest.raises(CorruptRecordError) as err:
        snapshot.read(path)
    assert err.value.path == path
    assert os.path.basename(path) in str(err.value)
    return err.value


# -- round trips -----------------------------------------------------------------


def test_empty_map_round_trips(tmp_path) -> None:
    path, size = snapshot.write(str(tmp_path), 1, 0, [{} for _ in range(16)])
    assert path == str(tmp_path / "snap.1")
    assert os.path.getsize(path) == size
    snap = snapshot.read(path)
    assert snap.info == snapshot.SnapshotInfo(counter=1, last_seq=0, keys=0, chunks=16)
    assert snap.chunks == [{} for _ in range(16)]


def test_zero_chunks_round_trip(tmp_path) -> None:
    path, _ = snapshot.write(str(tmp_path), 2, 5, [])
    snap = snapshot.read(path)
    assert snap.info == snapshot.SnapshotInfo(2, 5, 0, 0)
    assert snap.chunks == []


def test_100k_keys_round_trip(tmp_path) -> None:
    data = {k * 7919: (b"%d" % k) * (k % 5) for k in range(100_000)}
    chunks = chunks_of(data, 1024)
    path, size = snapshot.write(str(tmp_path), 12, 123_456, chunks)
    assert os.path.getsize(path) == size
    snap = snapshot.read(path)
    assert snap.info == snapshot.SnapshotInfo(12, 123_456, 100_000, 1024)
    assert snap.chunks == chunks
    assert merged(snap.chunks) == data
    store = Store(chunks=1024)
    store.load_chunks(snap.chunks)
    assert len(store) == 100_000
    assert dict(store.items()).get(99_999 * 7919) == b"99999" * 4


def test_big_int_keys_and_binary_values_round_trip(tmp_path) -> None:
    data = {BIG: b"\x00\xff" * 1000, 2**64: b"", 2**64 - 1: bytes(range(256)), 0: b"zero",
            10**100: b"v" * (1024 * 1024)}
    path, _ = snapshot.write(str(tmp_path), 4, 2**64 - 1, chunks_of(data, 2))
    snap = snapshot.read(path)
    assert merged(snap.chunks) == data
    assert snap.info.last_seq == 2**64 - 1


def test_read_info_returns_header_without_decoding_chunks(tmp_path) -> None:
    path, data = write_sample(str(tmp_path), counter=9)
    assert snapshot.read_info(path) == snapshot.SnapshotInfo(9, 77, len(data), 4)
    # read_info checks only the header, so a damaged chunk does not affect it.
    start, _ = layout(path)["chunk1"]
    with open(path, "r+b") as f:
        f.seek(start + 9)
        f.write(b"\xee")
    assert snapshot.read_info(path).keys == len(data)


def test_write_leaves_no_tmp_file(tmp_path) -> None:
    write_sample(str(tmp_path), counter=1)
    write_sample(str(tmp_path), counter=2)
    assert sorted(os.listdir(tmp_path)) == ["snap.1", "snap.2"]


def test_write_replaces_stale_tmp_and_existing_snapshot(tmp_path) -> None:
    (tmp_path / "snap.5.tmp").write_bytes(b"half a snapshot from a crash")
    (tmp_path / "snap.5").write_bytes(b"garbage")
    path, _ = snapshot.write(str(tmp_path), 5, 1, chunks_of({1: b"a"}))
    assert sorted(os.listdir(tmp_path)) == ["snap.5"]
    assert merged(snapshot.read(path).chunks) == {1: b"a"}


def test_write_to_missing_directory_raises_oserror_and_leaves_nothing(tmp_path) -> None:
    with pytest.raises(OSError):
        snapshot.write(str(tmp_path / "absent"), 1, 0, [{}])
    assert not (tmp_path / "absent").exists()


# -- damage ----------------------------------------------------------------------


@pytest.mark.parametrize("part", ["header", "chunk0", "chunk2", "chunk3", "footer"])
def test_flipped_byte_anywhere_is_corruption(tmp_path, part: str) -> None:
    path, _ = write_sample(str(tmp_path))
    with open(path, "rb") as f:
        good = f.read()
    start, end = layout(path)[part]
    for pos in range(start, end):
        damaged = bytearray(good)
        damaged[pos] ^= 0xFF
        with open(path, "wb") as f:
            f.write(damaged)
        err = assert_corrupt_names_file(path)
        assert start <= err.offset <= end or err.offset == 0, (part, pos, err.offset)


def test_flipped_header_byte_fails_read_info(tmp_path) -> None:
    path, _ = write_sample(str(tmp_path))
    with open(path, "rb") as f:
        good = f.read()
    for pos in range(snapshot.HEADER_SIZE):
        damaged = bytearray(good)
        damaged[pos] ^= 0x01
        with open(path, "wb") as f:
            f.write(damaged)
        with pytest.raises(CorruptRecordError) as err:
            snapshot.read_info(path)
        assert err.value.path == path and err.value.offset == 0


def test_truncated_snapshot_is_corruption_at_every_offset(tmp_path) -> None:
    path, _ = write_sample(str(tmp_path))
    with open(path, "rb") as f:
        good = f.read()
    for cut in range(len(good)):
        with open(path, "wb") as f:
            f.write(good[:cut])
        assert_corrupt_names_file(path)


def test_trailing_bytes_after_footer_are_corruption(tmp_path) -> None:
    path, _ = write_sample(str(tmp_path))
    with open(path, "ab") as f:
        f.write(b"\x00")
    err = assert_corrupt_names_file(path)
    assert "footer" in err.reason


def test_empty_file_is_corruption(tmp_path) -> None:
    path = str(tmp_path / "snap.1")
    open(path, "wb").close()
    assert_corrupt_names_file(path)
    with pytest.raises(CorruptRecordError):
        snapshot.read_info(path)


def test_log_file_is_not_a_snapshot(tmp_path) -> None:
    from chordctl.core.storage.records import encode_many

    path = str(tmp_path / "snap.1")
    with open(path, "wb") as f:
        f.write(encode_many([(1, OP_CREATE, b"1", b"x" * 100)]))
    err = assert_corrupt_names_file(path)
    assert "magic" in err.reason


def test_header_key_count_must_match_chunks(tmp_path) -> None:
    import zlib

    path, data = write_sample(str(tmp_path))
    with open(path, "rb") as f:
        good = bytearray(f.read())
    # Rewrite the key count with a valid header checksum: only the cross-check catches it.
    struct.pack_into("<Q", good, 24, len(data) + 1)
    crc_at = snapshot.HEADER_SIZE - 4
    struct.pack_into("<I", good, crc_at, zlib.crc32(bytes(good[:crc_at])))
    with open(path, "wb") as f:
        f.write(good)
    err = assert_corrupt_names_file(path)
    assert "key count" in err.reason


# -- fuzz ------------------------------------------------------------------------


def check_read(path: str, buf: bytes) -> None:
    with open(path, "wb") as f:
        f.write(buf)
    for fn in (snapshot.read, snapshot.read_info):
        try:
            fn(path)
        except CorruptRecordError as e:
            assert e.path == path
            assert 0 <= e.offset <= len(buf)


@pytest.fixture(scope="module")
def fuzz_dir():
    with tempfile.TemporaryDirectory(prefix="chordctl-snapfuzz-") as d:
        yield d


@settings(max_examples=300, deadline=None)
@given(buf=st.binary(max_size=400))
def test_arbitrary_bytes_raise_only_corrupt_record_error(fuzz_dir, buf: bytes) -> None:
    check_read(os.path.join(fuzz_dir, "snap.1"), buf)


@settings(max_examples=300, deadline=None)
@given(buf=st.binary(max_size=300))
def test_arbitrary_bytes_after_valid_magic_raise_only_corrupt(fuzz_dir, buf: bytes) -> None:
    check_read(os.path.join(fuzz_dir, "snap.2"), snapshot.MAGIC + buf)


@settings(max_examples=300, deadline=None)
@given(
    data=st.dictionaries(st.integers(0, 2**70), st.binary(max_size=20), max_size=30),
    damage=st.lists(st.tuples(st.sampled_from(["flip", "cut", "insert"]),
                              st.integers(0, 10**6), st.binary(min_size=1, max_size=8)),
                    min_size=1, max_size=3),
)
def test_damaged_snapshot_raises_only_corrupt(fuzz_dir, data, damage) -> None:
    path, _ = snapshot.write(fuzz_dir, 3, 9, chunks_of(data, 4))
    with open(path, "rb") as f:
        original = f.read()
    buf = bytearray(original)
    for kind, where, extra in damage:
        pos = where % (len(buf) + 1)
        if kind == "flip" and pos < len(buf):
            buf[pos] ^= extra[0] or 1
        elif kind == "cut":
            del buf[pos:]
        elif kind == "insert":
            buf[pos:pos] = extra
    with open(path, "wb") as f:
        f.write(buf)
    if bytes(buf) != original:
        # Any change to a checksummed, length-exact file must be detected.
        assert_corrupt_names_file(path)
    check_read(path, bytes(buf))
