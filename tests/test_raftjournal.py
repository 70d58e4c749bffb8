"""The node's Raft journal (core/storage/raftjournal.py) against PySyncObj's
MemoryJournal: same answers, durable after sync(), a torn tail cut, damage
refused, crash-safe under SIGKILL and during rewrites, fail-stop on a failed
write or fsync, and accepted by a real SyncObj."""

from __future__ import annotations

import errno
import logging
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
import zlib

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from pysyncobj.journal import Journal, MemoryJournal

from chordctl.core.storage import raftjournal
from chordctl.core.storage.raftjournal import (FILE_HEADER_SIZE, FILE_NAME, GroupJournal,
                                               JournalWriteError, RaftJournal)
from chordctl.errors import CorruptRecordError, InvalidInputError, StorageError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def state_of(g) -> tuple:
    return (list(g[:]), len(g), g.getCurrentTerm(), g.getVotedForNodeId())


def crash(j: RaftJournal) -> None:
    """Lose what is pending, as a SIGKILL would: close the file unsynced."""
    os.close(j._fd)
    j._fd = -1


def fill(j: RaftJournal, gid: int, n: int, start: int = 1, size: int = 10, term: int = 1):
    g = j.group(gid)
    for i in range(start, start + n):
        g.add(bytes([i % 251]) * size, i, term)
    return g


# -- the interface, one method at a time ------------------------------------

def test_new_group_has_memoryjournal_defaults(tmp_path):
    j = RaftJournal(str(tmp_path))
    g, m = j.group(0), MemoryJournal()
    assert isinstance(g, Journal) and isinstance(g, GroupJournal)
    assert len(g) == len(m) == 0
    assert g.getCurrentTerm() == m.getCurrentTerm() == 0
    assert g.getVotedForNodeId() is m.getVotedForNodeId() is None
    assert g.getRaftCommitIndex() == m.getRaftCommitIndex() == 1
    assert g[:] == [] and not j.dirty
    with pytest.raises(IndexError):
        g[0]
    j.close()
    assert os.listdir(tmp_path) == [FILE_NAME]


def test_each_method_matches_memoryjournal(tmp_path):
    j = RaftJournal(str(tmp_path))
    g, m = j.group(7), MemoryJournal()
    for i in range(1, 11):
        g.add(b"c%d" % i, i, 1 + i // 4)
        m.add(b"c%d" % i, i, 1 + i // 4)
    for item in (0, 3, -1, -10, slice(2, 5), slice(-3, None), slice(None, None, 2),
                 slice(8, 100)):
        assert g[item] == m[item]
    with pytest.raises(IndexError):
        g[10]
    for op, arg in (("deleteEntriesFrom", 8), ("deleteEntriesTo", 2), ("deleteEntriesFrom", -1),
                    ("deleteEntriesTo", -5), ("deleteEntriesFrom", 100),
                    ("deleteEntriesTo", 0), ("deleteEntriesTo", -100)):
        getattr(g, op)(arg)
        getattr(m, op)(arg)
        assert g[:] == m[:] and len(g) == len(m)
    g.setCurrentTerm(4, "10.0.0.1:7000")
    m.setCurrentTerm(4, "10.0.0.1:7000")
    g.setRaftCommitIndex(9)
    assert (g.getCurrentTerm(), g.getVotedForNodeId()) == (4, "10.0.0.1:7000")
    assert g.getRaftCommitIndex() == 9          # kept, as FileJournal does
    g.onOneSecondTimer()
    g._destroy()                                # the node's file stays open
    g.clear()
    m.clear()
    assert g[:] == m[:] == []
    assert j.dirty
    j.sync()
    assert not j.dirty
    j.close()
    k = RaftJournal(str(tmp_path))
    h = k.group(7)
    assert (h[:], h.getCurrentTerm(), h.getVotedForNodeId(), h.getRaftCommitIndex()) == \
        ([], 4, "10.0.0.1:7000", 9)
    k.close()


def test_str_commands_come_back_as_bytes_and_bad_types_are_refused(tmp_path):
    j = RaftJournal(str(tmp_path))
    g = j.group(1)
    g.add("héllo", 1, 1)
    g.add(bytearray(b"ab"), 2, 1)
    assert g[:] == [("héllo".encode(), 1, 1), (b"ab", 2, 1)]
    with pytest.raises(TypeError):
        g.add(12, 3, 1)
    with pytest.raises(TypeError):
        g.setCurrentTerm(2, 5)
    with pytest.raises((ValueError, TypeError)):
        j.group(-1)
    assert len(g) == 2
    j.close()
    assert RaftJournal(str(tmp_path)).group(1)[:] == [("héllo".encode(), 1, 1), (b"ab", 2, 1)]


def test_add_record_has_the_documented_layout(tmp_path):
    j = RaftJournal(str(tmp_path))
    j.group(0x0102).add(b"cmd", 7, 3)
    j.close()
    data = (tmp_path / FILE_NAME).read_bytes()
    assert data[:16] == b"CHRDRJNL" + struct.pack("<I", 1) + \
        struct.pack("<I", zlib.crc32(b"CHRDRJNL" + struct.pack("<I", 1)))
    rec = data[16:]
    payload = bytes([1]) + struct.pack("<H", 2) + b"\x02\x01" + struct.pack("<QQ", 7, 3) + b"cmd"
    head = struct.pack("<II", len(payload), zlib.crc32(payload))
    assert rec == head + struct.pack("<I", zlib.crc32(head)) + payload


def test_add_refuses_a_command_over_the_record_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(raftjournal, "MAX_PAYLOAD", 1000)
    j = RaftJournal(str(tmp_path))
    g = j.group(1)
    with pytest.raises(InvalidInputError, match="smaller batches"):
        g.add(b"x" * 1000, 1, 1)
    assert len(g) == 0 and not j.dirty
    j.close()


def test_groups_share_one_file_and_one_sync(tmp_path, monkeypatch):
    j = RaftJournal(str(tmp_path))
    gids = [0, 5, 2 ** 70]                        # a ring id wider than 64 bits fits too
    for n, gid in enumerate(gids):
        fill(j, gid, 3 + n)
        j.group(gid).setCurrentTerm(n + 1, None if n == 0 else f"node{n}")
    calls = []
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (calls.append(fd), real(fd))[1])
    j.sync()
    assert len(calls) == 1
    j.close()
    k = RaftJournal(str(tmp_path))
    assert k.groups() == sorted(gids)
    for n, gid in enumerate(gids):
        assert len(k.group(gid)) == 3 + n
        assert k.group(gid).getCurrentTerm() == n + 1
    assert k.group(0).getVotedForNodeId() is None
    assert k.group(2 ** 70).getVotedForNodeId() == "node2"
    k.close()


def test_commit_index_goes_with_the_next_sync_once(tmp_path):
    j = RaftJournal(str(tmp_path))
    g = fill(j, 1, 5)
    j.sync()
    size = j.size
    for c in range(1, 6):
        g.setRaftCommitIndex(c)
    # A commit index alone costs no fdatasync: it waits for real records.
    assert not j.dirty
    j.sync()
    assert j.size == size
    g.setCurrentTerm(2, None)
    assert j.dirty
    j.sync()
    one_commit_record = 12 + 3 + 1 + 8
    term_record = 12 + 3 + 1 + 9
    assert j.size == size + term_record + one_commit_record   # five calls, one record
    crash(j)
    assert RaftJournal(str(tmp_path)).group(1).getRaftCommitIndex() == 5


def test_an_unchanged_commit_index_writes_nothing(tmp_path):
    j = RaftJournal(str(tmp_path))
    g = fill(j, 1, 5)
    g.setRaftCommitIndex(3)
    j.sync()
    size = j.size
    g.setRaftCommitIndex(3)     # every heartbeat sets it again
    g.add(b"x", 6, 1)
    j.sync()
    assert j.size == size + 12 + 3 + 1 + 16 + 1


def test_close_writes_a_pending_commit_index(tmp_path):
    j = RaftJournal(str(tmp_path))
    g = fill(j, 1, 5)
    j.sync()
    g.setRaftCommitIndex(4)
    j.close()
    assert RaftJournal(str(tmp_path)).group(1).getRaftCommitIndex() == 4


def test_unsynced_calls_are_lost_whole_on_crash(tmp_path):
    j = RaftJournal(str(tmp_path))
    g = fill(j, 1, 5)
    g.setCurrentTerm(3, "a")
    j.sync()
    g.deleteEntriesFrom(2)
    g.add(b"new", 3, 4)
    g.setCurrentTerm(4, "b")
    g.setRaftCommitIndex(3)
    crash(j)
    h = RaftJournal(str(tmp_path)).group(1)
    assert [e[1] for e in h[:]] == [1, 2, 3, 4, 5]
    assert (h.getCurrentTerm(), h.getVotedForNodeId(), h.getRaftCommitIndex()) == (3, "a", 1)


def test_drop_group_forgets_it(tmp_path):
    j = RaftJournal(str(tmp_path))
    old = fill(j, 3, 4)
    fill(j, 4, 2)
    old.setRaftCommitIndex(3)
    j.drop_group(3)
    with pytest.raises(StorageError, match="dropped"):
        old.add(b"x", 9, 1)
    j.sync()
    j.close()
    k = RaftJournal(str(tmp_path))
    assert k.groups() == [4]
    assert len(k.group(3)) == 0 and k.group(3).getRaftCommitIndex() == 1
    k.close()


# -- the model test -----------------------------------------------------------

class JournalVsMemory(RuleBasedStateMachine):
    """Random calls on a few groups, compared with MemoryJournal (plus the
    commit index) after every step; sync, reopen and crash steps; a small
    rewrite threshold so compactions happen along the way."""

    GIDS = (0, 1, 300)

    def __init__(self):
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="raftjournal-")
        self.j = RaftJournal(self.dir, rewrite_threshold=2048)
        self.model = {gid: (MemoryJournal(), [1]) for gid in self.GIDS}
        self.durable = self.snapshot()
        self.idx = 0

    def teardown(self):
        try:
            self.j.close()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def snapshot(self):
        return {gid: (list(m[:]), m.getCurrentTerm(), m.getVotedForNodeId(), c[0])
                for gid, (m, c) in self.model.items()}

    def restore(self, snap):
        self.model = {}
        for gid, (entries, term, vote, commit) in snap.items():
            m = MemoryJournal()
            for e in entries:
                m.add(*e)
            m.setCurrentTerm(term, vote)
            self.model[gid] = (m, [commit])

    gid = st.sampled_from(GIDS)
    pos = st.integers(-6, 12)

    @rule(gid=gid, size=st.sampled_from([0, 1, 50, 700]), term=st.integers(0, 5))
    def add(self, gid, size, term):
        self.idx += 1
        command = random.Random(self.idx).randbytes(size)
        self.j.group(gid).add(command, self.idx, term)
        self.model[gid][0].add(command, self.idx, term)

    @rule(gid=gid, pos=pos)
    def delete_from(self, gid, pos):
        self.j.group(gid).deleteEntriesFrom(pos)
        self.model[gid][0].deleteEntriesFrom(pos)

    @rule(gid=gid, pos=pos)
    def delete_to(self, gid, pos):
        self.j.group(gid).deleteEntriesTo(pos)
        self.model[gid][0].deleteEntriesTo(pos)

    @rule(gid=gid)
    def clear(self, gid):
        self.j.group(gid).clear()
        self.model[gid][0].clear()

    @rule(gid=gid, term=st.integers(0, 2 ** 40),
          vote=st.one_of(st.none(), st.sampled_from(["a:1", "b:2", "ü:3", ""])))
    def set_term(self, gid, term, vote):
        self.j.group(gid).setCurrentTerm(term, vote)
        self.model[gid][0].setCurrentTerm(term, vote)

    @rule(gid=gid, commit=st.integers(0, 50))
    def set_commit(self, gid, commit):
        self.j.group(gid).setRaftCommitIndex(commit)
        self.model[gid][1][0] = commit

    @rule(gid=gid)
    def drop_group(self, gid):
        self.j.drop_group(gid)
        self.model[gid] = (MemoryJournal(), [1])

    @rule()
    def sync(self):
        records = self.j.dirty
        self.j.sync()
        snap = self.snapshot()
        if not records:
            # A changed commit index alone is not synced (Raft does not need
            # it durable): it goes with the next records, or at close.
            snap = {gid: (*v[:3], self.durable[gid][3]) for gid, v in snap.items()}
        self.durable = snap
        assert not self.j.dirty

    @rule()
    def reopen_after_sync(self):
        self.j.close()
        self.durable = self.snapshot()
        self.j = RaftJournal(self.dir, rewrite_threshold=2048)
        assert self.j.torn_bytes == 0

    @rule()
    def crash_and_reopen(self):
        crash(self.j)
        self.restore(self.durable)
        self.j = RaftJournal(self.dir, rewrite_threshold=2048)

    @invariant()
    def same_as_model(self):
        for gid, (m, commit) in self.model.items():
            g = self.j.group(gid)
            assert len(g) == len(m)
            assert g[:] == m[:]
            if len(m):
                assert g[-1] == m[-1] and g[0] == m[0]
            assert g.getCurrentTerm() == m.getCurrentTerm()
            assert g.getVotedForNodeId() == m.getVotedForNodeId()
            assert g.getRaftCommitIndex() == commit[0]

    @invariant()
    def file_is_bounded(self):
        # After every sync the file is small, or at most half dead.
        if not self.j.dirty:
            assert self.j.size <= max(2048, 2 * self.j.live_bytes())


JournalVsMemory.TestCase.settings = settings(
    max_examples=60, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
test_journal_matches_memoryjournal_across_syncs_reopens_and_crashes = JournalVsMemory.TestCase


# -- torn tails and damage ---------------------------------------------------

def two_states(directory):
    """A synced journal, then one more record; returns (file bytes, where the
    last record starts, state before it, state after it)."""
    j = RaftJournal(directory)
    g = fill(j, 2, 4, size=30)
    g.setCurrentTerm(2, "n1")
    j.sync()
    before, start = state_of(g), j.size
    g.add(b"last-record-" * 5, 5, 2)
    j.sync()
    after = state_of(g)
    j.close()
    with open(os.path.join(directory, FILE_NAME), "rb") as f:
        return f.read(), start, before, after


def reopen_from(tmp_path, name, data) -> RaftJournal:
    d = tmp_path / name
    d.mkdir()
    (d / FILE_NAME).write_bytes(data)
    return RaftJournal(str(d))


def test_torn_tail_at_every_byte_of_last_record_reopens_with_earlier_state(tmp_path):
    data, start, before, after = two_states(str(tmp_path / "src"))
    for cut in range(start, len(data)):
        for how, torn in (("cut", data[:cut]),
                          ("zeros", data[:cut] + b"\0" * (len(data) - cut))):
            j = reopen_from(tmp_path, f"{how}{cut}", torn)
            assert state_of(j.group(2)) == before, (how, cut)
            assert j.torn_offset == start and j.torn_bytes == len(torn) - start
            # The cut is on disk, and appending after it works.
            assert os.path.getsize(j.path) == start
            j.group(2).add(b"again", 5, 2)
            j.close()
            assert RaftJournal(os.path.dirname(j.path)).group(2)[-1] == (b"again", 5, 2)
    j = reopen_from(tmp_path, "whole", data)
    assert state_of(j.group(2)) == after and j.torn_bytes == 0


def record_offsets(data: bytes) -> list[int]:
    offs, off = [], FILE_HEADER_SIZE
    while off < len(data):
        offs.append(off)
        off += 12 + struct.unpack_from("<I", data, off)[0]
    return offs


@pytest.mark.parametrize("where", ["payload", "length", "header_crc"])
def test_replay_refuses_bitflip_in_middle_record(tmp_path, where):
    data, _start, _b, _a = two_states(str(tmp_path / "src"))
    offs = record_offsets(data)
    victim = offs[2]
    at = {"payload": victim + 20, "length": victim + 1, "header_crc": victim + 9}[where]
    bad = bytearray(data)
    bad[at] ^= 0x10
    with pytest.raises(CorruptRecordError) as e:
        reopen_from(tmp_path, "bad", bytes(bad))
    assert e.value.offset == victim
    assert e.value.path.endswith(FILE_NAME)
    msg = str(e.value)
    assert msg.startswith("storage: ") and f"at offset {victim}" in msg and "backup" in msg


def test_replay_refuses_bitflip_in_complete_last_record(tmp_path):
    data, start, _b, _a = two_states(str(tmp_path / "src"))
    bad = bytearray(data)
    bad[start + 30] ^= 0x01
    with pytest.raises(CorruptRecordError, match=f"offset {start}"):
        reopen_from(tmp_path, "bad", bytes(bad))


def test_replay_refuses_damaged_file_header_and_other_versions(tmp_path):
    data, _s, _b, _a = two_states(str(tmp_path / "src"))
    for n, bad in enumerate((b"XHRDRJNL" + data[8:], data[:10], b"")):
        with pytest.raises(CorruptRecordError, match="offset 0"):
            reopen_from(tmp_path, f"h{n}", bad)
    head = raftjournal.MAGIC + struct.pack("<I", 2)
    v2 = head + struct.pack("<I", zlib.crc32(head)) + data[16:]
    with pytest.raises(StorageError, match="format 2"):
        reopen_from(tmp_path, "v2", v2)


def frame(op: int, gid: int, body: bytes) -> bytes:
    g = raftjournal._gid_bytes(gid)
    return raftjournal._frame(struct.pack("<BH", op, len(g)) + g + body)


def test_replay_refuses_a_delete_past_the_end_of_the_log(tmp_path):
    data, _s, _b, _a = two_states(str(tmp_path / "src"))
    bad = data + frame(raftjournal.OP_DELETE_FROM, 2, struct.pack("<Q", 99))
    with pytest.raises(CorruptRecordError, match="deletes past the end"):
        reopen_from(tmp_path, "bad", bad)


@pytest.mark.parametrize("op,body", [(1, b"short"), (2, b""), (5, b"\0" * 8 + b"\2"),
                                     (4, b"x"), (9, b"")])
def test_replay_refuses_malformed_records(tmp_path, op, body):
    data, _s, _b, _a = two_states(str(tmp_path / "src"))
    with pytest.raises(CorruptRecordError, match="malformed|unknown"):
        reopen_from(tmp_path, "bad", data + frame(op, 2, body))


# -- compaction ------------------------------------------------------------------

def test_rewrite_drops_dead_records_and_keeps_the_state(tmp_path):
    j = RaftJournal(str(tmp_path), rewrite_threshold=4096)
    g = j.group(1)
    idx = 0
    for _round in range(20):
        for _ in range(10):
            idx += 1
            g.add(b"v" * 100, idx, 3)
        g.setCurrentTerm(3, "me")
        g.setRaftCommitIndex(idx)
        g.deleteEntriesTo(len(g) - 5)           # log compaction keeps the last 5
        j.sync()
    assert j.rewrites > 0
    assert j.size < 2 * j.live_bytes() + 4096
    expect = state_of(g)
    j.close()
    assert not os.path.exists(j.path + ".tmp")
    k = RaftJournal(str(tmp_path), rewrite_threshold=4096)
    assert state_of(k.group(1)) == expect and k.group(1).getRaftCommitIndex() == idx
    k.close()


def test_rewrite_writes_exactly_the_live_bytes(tmp_path):
    j = RaftJournal(str(tmp_path), rewrite_threshold=1)
    g = fill(j, 9, 30, size=64)
    g.setCurrentTerm(2, "x")
    g.setRaftCommitIndex(20)
    j.sync()
    g.deleteEntriesTo(29)                      # now most of the file is dead
    j.sync()
    assert j.rewrites == 1
    assert j.size == j.live_bytes() == os.path.getsize(j.path)
    j.close()


def test_leftover_tmp_of_a_crashed_rewrite_is_ignored_and_removed(tmp_path):
    j = RaftJournal(str(tmp_path))
    g = fill(j, 1, 6)
    j.sync()
    expect = state_of(g)
    crash(j)
    tmp = tmp_path / (FILE_NAME + ".tmp")
    good = (tmp_path / FILE_NAME).read_bytes()
    # A complete tmp that was never renamed (crash before rename), then a half one.
    for leftover in (good[:FILE_HEADER_SIZE] + good[FILE_HEADER_SIZE:][:40], good, b"garbage"):
        tmp.write_bytes(leftover)
        k = RaftJournal(str(tmp_path))
        assert k.removed_tmp and not tmp.exists()
        assert state_of(k.group(1)) == expect
        crash(k)


def test_rewrite_that_fails_before_rename_appends_to_the_old_file(tmp_path, monkeypatch,
                                                                 caplog):
    j = RaftJournal(str(tmp_path), rewrite_threshold=1)
    g = fill(j, 1, 20, size=50)
    j.sync()
    real_open = os.open

    def no_space_for_tmp(path, *a, **kw):
        if str(path).endswith(".tmp"):
            raise OSError(errno.ENOSPC, "No space left on device", path)
        return real_open(path, *a, **kw)

    monkeypatch.setattr(os, "open", no_space_for_tmp)
    g.deleteEntriesTo(19)
    with caplog.at_level(logging.WARNING, "chordctl.storage"):
        j.sync()                                # appended instead, and durable
    assert j.rewrites == 0 and "cannot rewrite" in caplog.text and "free space" in caplog.text
    expect = state_of(g)
    crash(j)
    assert not os.path.exists(j.path + ".tmp")
    monkeypatch.setattr(os, "open", real_open)
    k = RaftJournal(str(tmp_path), rewrite_threshold=1)
    assert state_of(k.group(1)) == expect
    k.group(1).add(b"after", 21, 1)
    k.sync()                                    # the disk has room again: rewritten
    assert k.rewrites == 1 and k.size == k.live_bytes()
    k.close()


def test_a_sync_that_rewrites_pays_one_fdatasync_and_one_directory_fsync(tmp_path,
                                                                         monkeypatch):
    j = RaftJournal(str(tmp_path), rewrite_threshold=1)
    g = fill(j, 1, 20, size=50)
    j.sync()
    g.deleteEntriesTo(19)
    g.add(b"pending", 21, 1)
    calls = []
    real_fdatasync, real_fsync = os.fdatasync, os.fsync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (calls.append("fdatasync"),
                                                     real_fdatasync(fd))[1])
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append("fsync"), real_fsync(fd))[1])
    j.sync()
    assert j.rewrites == 1 and calls == ["fdatasync", "fsync"]
    expect = state_of(g)
    crash(j)
    assert state_of(RaftJournal(str(tmp_path)).group(1)) == expect


def test_rewrite_whose_directory_fsync_fails_stops_the_journal(tmp_path, monkeypatch):
    j = RaftJournal(str(tmp_path), rewrite_threshold=1)
    g = fill(j, 1, 20, size=50)
    j.sync()
    g.deleteEntriesTo(19)

    def eio(directory):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(raftjournal.files, "fsync_dir", eio)
    with pytest.raises(JournalWriteError, match="directory"):
        j.sync()
    g.add(b"x", 21, 1)
    with pytest.raises(JournalWriteError):
        j.sync()


# -- failed writes: fail-stop, no false success ---------------------------------

@pytest.mark.parametrize("call,err", [("write", errno.ENOSPC), ("fdatasync", errno.EIO),
                                      ("write", errno.EIO)])
def test_failed_write_or_fsync_raises_and_never_reports_success_later(
        tmp_path, monkeypatch, call, err):
    j = RaftJournal(str(tmp_path))
    g = fill(j, 1, 3)
    j.sync()
    durable = state_of(g)
    g.add(b"lost", 4, 1)
    real = getattr(os, call)

    def fail(*a):
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(os, call, fail)
    with pytest.raises(JournalWriteError) as e:
        j.sync()
    msg = str(e.value)
    assert msg.startswith("storage: ") and "fail-stop" in msg and "restart the node" in msg
    assert ("free space" in msg) == (err == errno.ENOSPC)
    assert e.value.errno == err
    monkeypatch.setattr(os, call, real)          # the disk "recovers": still no success
    assert j.dirty
    with pytest.raises(JournalWriteError):
        j.sync()
    g.add(b"later", 5, 1)
    with pytest.raises(JournalWriteError):
        j.sync()
    j.close()                                     # closes without claiming anything
    after = state_of(RaftJournal(str(tmp_path)).group(1))
    assert after == durable or (call == "fdatasync" and after[0][:-1] == durable[0])


def test_partial_write_then_enospc_is_cut_back(tmp_path, monkeypatch):
    j = RaftJournal(str(tmp_path))
    g = fill(j, 1, 3)
    j.sync()
    size = j.size
    g.add(b"z" * 5000, 4, 1)
    real = os.write
    state = {"n": 0}

    def half_then_full(fd, data):
        state["n"] += 1
        if state["n"] == 1:
            return real(fd, bytes(data[:1000]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", half_then_full)
    with pytest.raises(JournalWriteError, match="none of the records"):
        j.sync()
    monkeypatch.setattr(os, "write", real)
    assert os.path.getsize(j.path) == size
    j.close()
    assert len(RaftJournal(str(tmp_path)).group(1)) == 3


# -- crash test: SIGKILL at random moments ---------------------------------------

CHILD = textwrap.dedent("""
    import os, random, sys
    sys.path.insert(0, sys.argv[2])
    from chordctl.core.storage.raftjournal import RaftJournal
    KEEP = int(sys.argv[3])
    REWRITE_EACH = sys.argv[4] == "rewrite"
    j = RaftJournal(sys.argv[1], rewrite_threshold=1 if REWRITE_EACH else 32 * 1024)
    g = j.group(4)
    idx = g[-1][1] if len(g) else 0
    out = os.fdopen(1, "w", buffering=1)
    while True:
        idx += 1
        size = random.Random(idx).randrange(0, 3000)
        g.add(random.Random(-idx).randbytes(size), idx, idx // 50)
        if idx % 50 == 0:
            g.setCurrentTerm(idx // 50, "n%d" % idx)
        if len(g) > KEEP:
            g.deleteEntriesTo(len(g) - KEEP)
        if REWRITE_EACH:            # all dead: every sync is a rewrite
            entries = g[:]
            g.clear()
            for e in entries:
                g.add(*e)
        g.setRaftCommitIndex(idx - 1)
        j.sync()
        out.write("%d\\n" % idx)
""")


@pytest.mark.parametrize("mode", ["append", "rewrite"])
def test_sigkill_at_random_moments_loses_no_synced_entry(tmp_path, mode):
    """mode rewrite: every sync rewrites the file, so the kills land in
    rewrites (tmp written or not, renamed or not)."""
    keep = 40
    rng = random.Random(1234)
    reported = 0
    inodes = set()
    for _round in range(12):
        p = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path), ROOT, str(keep), mode],
                             stdout=subprocess.PIPE, text=True)
        try:
            want = rng.randrange(1, 300 if mode == "append" else 60)
            for _ in range(want):
                line = p.stdout.readline()
                assert line, "the child died"
                reported = int(line)
            time.sleep(rng.random() * 0.01)       # land the kill anywhere in the loop
        finally:
            p.send_signal(signal.SIGKILL)
            p.wait()
            p.stdout.close()
        j = RaftJournal(str(tmp_path))
        g = j.group(4)
        last = g[-1][1]
        assert last >= reported
        idxs = [e[1] for e in g[:]]
        assert idxs == list(range(idxs[0], last + 1))
        # Only the child's own compaction (keep the last `keep`) removed any.
        assert idxs[0] == 1 or len(idxs) in (keep, keep + 1)
        for command, idx, term in g[:]:
            size = random.Random(idx).randrange(0, 3000)
            assert command == random.Random(-idx).randbytes(size)
            assert term == idx // 50
        assert g.getCurrentTerm() >= reported // 50
        assert g.getRaftCommitIndex() <= last
        inodes.add(os.stat(j.path).st_ino)       # a rewrite renames a new file in
        crash(j)
    assert len(inodes) > 1, "no rewrite happened: the test did not cover compaction"


# -- a real SyncObj -----------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_syncobj_runs_on_the_journal_and_gets_it_back_after_restart(tmp_path, monkeypatch):
    import pysyncobj.syncobj as so
    from pysyncobj import SyncObj, SyncObjConf, replicated

    class Counter(SyncObj):
        def __init__(self, addr, journal, conf):
            self.value = 0
            monkeypatch.setattr(so, "createJournal", lambda _file: journal)
            super().__init__(addr, [], conf)

        @replicated
        def incr(self, n):
            self.value += n
            return self.value

    def conf():
        return SyncObjConf(autoTick=False, raftMinTimeout=0.31, raftMaxTimeout=0.32,
                           appendEntriesPeriod=0.1, connectionTimeout=3.5, useFork=False,
                           logCompactionMinEntries=10 ** 9, logCompactionMinTime=10 ** 9)

    def tick_until(obj, journal, cond, timeout=10.0):
        deadline = time.monotonic() + timeout
        while not cond():
            assert time.monotonic() < deadline, "SyncObj made no progress"
            obj.doTick(0.01)
            if journal.dirty:
                journal.sync()

    addr = f"127.0.0.1:{free_port()}"
    j = RaftJournal(str(tmp_path))
    o = Counter(addr, j.group(0), conf())
    tick_until(o, j, lambda: o._isLeader())
    done = []
    for n in (1, 2, 3):
        o.incr(n, callback=lambda res, err: done.append((res, err)))
    tick_until(o, j, lambda: len(done) == 3)
    assert [r for r, _ in done] == [1, 3, 6]
    g = j.group(0)
    term, vote, entries = g.getCurrentTerm(), g.getVotedForNodeId(), g[:]
    assert term >= 1 and vote == o.selfNode.id and len(entries) >= 5
    o.destroy()
    j.close()

    k = RaftJournal(str(tmp_path))
    h = k.group(0)
    assert (h.getCurrentTerm(), h.getVotedForNodeId(), h[:]) == (term, vote, entries)
    o2 = Counter(addr, h, conf())
    tick_until(o2, k, lambda: o2.value == 6 and o2._isLeader())
    assert o2._getTerm() > term and h.getCurrentTerm() == o2._getTerm()
    o2.destroy()
    k.close()
