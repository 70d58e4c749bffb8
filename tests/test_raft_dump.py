"""Group dump files (core/replication/dump.py): what a replica installs from
the network is checked whole before any of it is used."""

from __future__ import annotations

import pytest

from chordctl.core.replication import codec, dump
from chordctl.core.replication.exchange import _parts
from chordctl.errors import CorruptRecordError
from chordctl.pb import raft_pb2 as rpb
from chordctl.protocol import allow_key_digits

PREV = (b"\x01prev", 41, 3)
LAST = (b"\x01last", 42, 3)


def write(tmp_path, pairs, group=0, prev=PREV, last=LAST, keys=None):
    path = str(tmp_path / "raft-0.dump")
    dump.write(path, group, prev, last, pairs.items(), len(pairs) if keys is None else keys)
    return path


def test_round_trip_of_many_chunks_and_a_huge_key(tmp_path):
    allow_key_digits(6000)                       # as a node does from limits.max_key_digits
    pairs = {k: b"v%d" % k for k in range(5000)}
    pairs[10 ** 5000 + 7] = b"big key"           # past Python's 4,300-digit default
    path = write(tmp_path, pairs)
    d = dump.read(path, 0, lambda k: True)
    assert d.pairs == pairs and d.prev == PREV and d.last == LAST and d.group == 0
    assert dump.read_last(path) == 42
    assert dump.read_last(str(tmp_path / "none")) is None


def test_an_empty_arc_round_trips(tmp_path):
    d = dump.read(write(tmp_path, {}), 0, lambda k: True)
    assert d.pairs == {}


@pytest.mark.parametrize("damage", ["flip", "truncate", "append", "magic"])
def test_any_damage_is_refused(tmp_path, damage):
    path = write(tmp_path, {k: b"x" * 50 for k in range(3000)})
    buf = bytearray(open(path, "rb").read())
    if damage == "flip":
        buf[len(buf) // 2] ^= 0x40
    elif damage == "truncate":
        del buf[-10:]
    elif damage == "append":
        buf += b"\0" * 8
    else:
        buf[0:1] = b"X"
    open(path, "wb").write(bytes(buf))
    with pytest.raises(CorruptRecordError):
        dump.read(path, 0, lambda k: True)


def test_a_key_outside_the_arc_or_another_group_is_refused(tmp_path):
    path = write(tmp_path, {5: b"a", 500: b"b"})
    with pytest.raises(CorruptRecordError, match="canonical key of group 0"):
        dump.read(path, 0, lambda k: k < 100)
    with pytest.raises(CorruptRecordError, match="group 1"):
        dump.read(path, 1, lambda k: True)


def test_a_count_that_does_not_match_is_refused(tmp_path):
    with pytest.raises(ValueError):
        write(tmp_path, {1: b"a"}, keys=2)


def test_impossible_entries_are_refused(tmp_path):
    path = write(tmp_path, {1: b"a"}, prev=(b"p", 40, 1), last=(b"l", 42, 1))
    with pytest.raises(CorruptRecordError, match="impossible entries"):
        dump.read(path, 0, lambda k: True)


def test_each_dump_chunk_travels_in_a_batch_of_its_own():
    plain = [codec.encode(0, {"type": "request_vote", "term": 1, "last_log_index": 1,
                              "last_log_term": 1})]
    assert _parts(plain) == [plain]
    chunk = codec.encode(0, {"type": "append_entries", "term": 1, "commit_index": 2,
                             "serialized": (b"d" * 10, True, False)})
    assert chunk.serialized.data == b"d" * 10 and chunk.serialized.first
    parts = _parts(plain + [chunk, chunk] + plain)
    assert parts == [plain, [chunk], [chunk], plain]
    # No chunk to send (PySyncObj's None or False): no chunk field at all.
    for none in (None, False):
        m = codec.encode(0, {"type": "append_entries", "term": 1, "commit_index": 2,
                             "serialized": none})
        assert not m.HasField("serialized")
    back = codec.decode(chunk)
    assert back["serialized"] == (b"d" * 10, True, False)
    assert isinstance(chunk, rpb.Message)


def test_the_newest_commands_travel_as_digests_in_the_header(tmp_path):
    recent = [(bytes([i]) * dump.DIGEST_BYTES, 30 + i, 3) for i in range(12)]
    path = str(tmp_path / "raft-0.dump")
    dump.write(path, 0, PREV, LAST, [(5, b"v")], 1, recent)
    assert dump.read(path, 0, lambda k: True).recent == tuple(recent)
    assert dump.read_recent(path) == tuple(recent)
    assert dump.read_recent(str(tmp_path / "none")) == ()
    # A digest of the wrong size, or of an entry past the dump's last: refused.
    for bad in ([(b"short", 30, 3)], [(b"x" * dump.DIGEST_BYTES, LAST[1] + 1, 3)]):
        dump.write(path, 0, PREV, LAST, [], 0, bad)
        with pytest.raises(CorruptRecordError, match="digest"):
            dump.read(path, 0, lambda k: True)
        with pytest.raises(CorruptRecordError, match="digest"):
            dump.read_recent(path)
