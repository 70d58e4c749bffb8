"""Tests for chordctl.core.storage.recovery.recover on node directories built by hand."""

from __future__ import annotations

import logging
import os

import pytest

from chordctl.core.storage import recovery, records, snapshot
from chordctl.core.storage.log import LogFile
from chordctl.core.store import Store
from chordctl.errors import CorruptRecordError, StorageAccessError, StorageError
from chordctl.protocol import OP_CREATE, OP_DELETE, OP_UPDATE
from conftest import deny_open

Op = tuple[int, int, bytes]   # (op, key, value)


class NodeDir:
    """Builds a node directory the way a node would: logs with continuous seqs, snapshots."""

    def __init__(self, directory) -> None:
        self.dir = str(directory)
        self.seq = 0
        self.model: dict[int, bytes] = {}
        self.store = Store(chunks=8)     # what the node's map holds right now

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def log(self, counter: int, ops: list[Op]) -> list[int]:
        """Append ops to log.<counter>; return the offset of each record."""
        lf = LogFile(self.dir, counter)
        offsets = []
        try:
            for op, key, value in ops:
                self.seq += 1
                offsets.append(lf.size)
                lf.append(records.encode_many([(self.seq, op, str(key).encode(), value)]), 1)
                self.store.apply(op, key, value)
                self._model(op, key, value)
            lf.sync()
        finally:
            lf.close()
        return offsets

    def snap(self, counter: int) -> str:
        path, _ = snapshot.write(self.dir, counter, self.seq, self.store.freeze())
        return path

    def _model(self, op: int, key: int, value: bytes) -> None:
        if op == OP_CREATE:
            self.model.setdefault(key, value)
        elif op == OP_UPDATE and key in self.model:
            self.model[key] = value
        elif op == OP_DELETE:
            self.model.pop(key, None)

    def recover(self, repair: bool = True, chunks: int = 16) -> tuple[Store, recovery.RecoveryReport]:
        store = Store(chunks=chunks)
        report = recovery.recover(self.dir, store)
        if repair:
            recovery.repair(self.dir, report)
        return store, report


def creates(keys, tag: bytes = b"v") -> list[Op]:
    return [(OP_CREATE, k, tag + b"%d" % k) for k in keys]


def damage(path: str, offset: int, xor: int = 0xFF) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ xor]))


def append_raw(path: str, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


@pytest.fixture
def node(tmp_path) -> NodeDir:
    d = tmp_path / "node-0"
    d.mkdir()
    return NodeDir(d)


# -- healthy directories --------------------------------------------------------


def test_empty_directory_recovers_empty(node) -> None:
    store, report = node.recover()
    assert len(store) == 0
    assert report.snapshot is None and report.records == 0 and report.last_seq == 0
    assert report.current_log == 0
    assert report.warnings == [] and report.fallbacks == []


def test_missing_directory_recovers_empty(tmp_path) -> None:
    store = Store(chunks=4)
    report = recovery.recover(str(tmp_path / "never-created"), store)
    assert len(store) == 0 and report.current_log == 0


def test_logs_only_replay_in_order(node) -> None:
    node.log(0, creates(range(10)))
    node.log(1, [(OP_UPDATE, 3, b"three"), (OP_DELETE, 4, b""), (OP_CREATE, 3, b"dup"),
                 (OP_UPDATE, 99, b"missing")])
    node.log(2, [(OP_DELETE, 3, b""), (OP_CREATE, 3, b"reborn"), (OP_CREATE, 10**50, b"big")])
    store, report = node.recover()
    assert dict(store.items()) == node.model
    assert dict(store.items()).get(3) == b"reborn" and 4 not in dict(store.items())
    assert report.snapshot is None
    assert report.logs == [(0, 10), (1, 4), (2, 3)]
    assert report.records == 17 and report.last_seq == 17
    assert report.keys == len(node.model)
    assert report.current_log == 2
    assert report.torn_bytes == 0 and report.warnings == []


def test_snapshot_then_later_logs(node) -> None:
    node.log(0, creates(range(20)))
    node.snap(1)
    node.log(1, [(OP_DELETE, k, b"") for k in range(5)])
    node.snap(2)
    node.log(2, creates(range(100, 110)) + [(OP_UPDATE, 10, b"ten")])
    store, report = node.recover()
    assert dict(store.items()) == node.model
    assert report.snapshot == 2 and report.snapshot_keys == 15
    # Only the logs after the snapshot are replayed; log.0 and log.1 are in it.
    assert report.logs == [(2, 11)]
    assert report.records == 11 and report.last_seq == node.seq == 36
    assert report.current_log == 2


def test_snapshot_with_logs_retention_removed(node) -> None:
    # After snap.3 the node keeps logs 1..3 and snapshots 1..3; log.0 is gone.
    node.log(0, creates(range(5)))
    node.snap(1)
    node.log(1, creates(range(5, 10)))
    node.snap(2)
    node.log(2, creates(range(10, 15)))
    node.snap(3)
    node.log(3, creates(range(15, 20)))
    os.unlink(node.path("log.0"))
    store, report = node.recover()
    assert dict(store.items()) == node.model and len(store) == 20
    assert report.snapshot == 3 and report.logs == [(3, 5)]


def test_newest_snapshot_without_later_log(node) -> None:
    # A crash right after snap.2 was renamed, before anything reached log.2
    # (which the rotation created before snap.2 was written).
    node.log(0, creates(range(5)))
    node.snap(1)
    node.log(1, creates(range(5, 8)))
    LogFile(node.dir, 2).close()
    node.snap(2)
    store, report = node.recover()
    assert dict(store.items()) == node.model
    assert report.snapshot == 2 and report.logs == [(2, 0)] and report.last_seq == 8
    # The next record goes to log.2, and the next snapshot is snap.3.
    assert report.current_log == 2


def test_counters_continue_after_recovery(node) -> None:
    for c in range(6):
        if c:
            node.snap(c)
        node.log(c, creates(range(c * 10, c * 10 + 3)))
    for c in range(3):            # retention: the last 3 logs and snapshots
        os.unlink(node.path(f"log.{c}"))
    os.unlink(node.path("snap.1"))
    os.unlink(node.path("snap.2"))
    store, report = node.recover()
    assert dict(store.items()) == node.model
    assert report.snapshot == 5
    assert report.current_log == 5
    assert report.last_seq == node.seq == 18


def test_recovery_reloads_store_of_any_chunk_count(node) -> None:
    node.log(0, creates(range(100)))
    node.snap(1)
    node.log(1, [(OP_UPDATE, 50, b"fifty")])
    for chunks in (1, 8, 1024):
        store, _ = node.recover(chunks=chunks)
        assert dict(store.items()) == node.model
        assert store.apply(2, 50) == (0, b"fifty")


def test_recovery_is_repeatable(node) -> None:
    node.log(0, creates(range(30)))
    node.snap(1)
    node.log(1, [(OP_DELETE, 7, b"")])
    first, r1 = node.recover()
    second, r2 = node.recover()
    assert dict(first.items()) == dict(second.items()) == node.model
    assert (r1.last_seq, r1.current_log, r1.records) == (r2.last_seq, r2.current_log, r2.records)


# -- snapshot fallback ----------------------------------------------------------


def build_three_generations(node: NodeDir) -> None:
    node.log(0, creates(range(10)))
    node.snap(1)
    node.log(1, creates(range(10, 20)) + [(OP_DELETE, 0, b"")])
    node.snap(2)
    node.log(2, [(OP_UPDATE, 5, b"five")] + creates(range(20, 25)))


@pytest.mark.parametrize("where", ["header", "middle", "footer", "truncated", "empty"])
def test_corrupt_newest_snapshot_falls_back_to_previous(node, where: str, caplog) -> None:
    build_three_generations(node)
    path = node.path("snap.2")
    size = os.path.getsize(path)
    if where == "header":
        damage(path, 10)
    elif where == "middle":
        damage(path, size // 2)
    elif where == "footer":
        damage(path, size - 3)
    elif where == "truncated":
        os.truncate(path, size - 20)
    else:
        os.truncate(path, 0)
    with caplog.at_level(logging.WARNING, logger="chordctl.storage"):
        store, report = node.recover()
    # Nothing the logs hold is lost: snap.1 + log.1 + log.2 is the whole history.
    assert dict(store.items()) == node.model
    assert report.snapshot == 1
    assert report.logs == [(1, 11), (2, 6)]
    assert report.last_seq == node.seq
    assert len(report.fallbacks) == 1 and "snap.2" in report.fallbacks[0]
    assert any("snap.2" in w for w in report.warnings)
    assert "snap.2" in caplog.text
    assert report.current_log == 2


def test_two_corrupt_snapshots_fall_back_twice(node) -> None:
    build_three_generations(node)
    damage(node.path("snap.2"), 50)
    damage(node.path("snap.1"), 50)
    store, report = node.recover()
    assert dict(store.items()) == node.model
    assert report.snapshot is None
    assert report.logs == [(0, 10), (1, 11), (2, 6)]
    assert len(report.fallbacks) == 2
    assert "snap.2" in report.fallbacks[0] and "snap.1" in report.fallbacks[1]


def test_snapshot_under_wrong_name_is_skipped(node) -> None:
    build_three_generations(node)
    os.replace(node.path("snap.1"), node.path("snap.2"))   # snap.2 now says it is snap.1
    store, report = node.recover()
    assert report.snapshot is None
    assert any("snap.1" in f for f in report.fallbacks)
    assert dict(store.items()) == node.model


def test_all_snapshots_corrupt_and_log0_gone_is_storage_error(node) -> None:
    build_three_generations(node)
    damage(node.path("snap.1"), 20)
    damage(node.path("snap.2"), 20)
    os.unlink(node.path("log.0"))
    with pytest.raises(StorageError) as err:
        node.recover()
    assert node.dir in str(err.value)
    assert "log.0" in str(err.value)


def test_corrupt_snapshot_whose_logs_are_gone_is_storage_error(node) -> None:
    # snap.2 is bad and snap.1 needs log.1, which retention already removed.
    build_three_generations(node)
    node.snap(3)
    node.log(3, creates(range(30, 32)))
    damage(node.path("snap.3"), 30)
    os.unlink(node.path("log.0"))
    os.unlink(node.path("log.2"))
    with pytest.raises(StorageError) as err:
        node.recover()
    assert "log.2" in str(err.value)


# -- torn tails -----------------------------------------------------------------


def torn_newest(node: NodeDir) -> tuple[str, int, int]:
    build_three_generations(node)
    path = node.path("log.2")
    good = os.path.getsize(path)
    tail = records.encode_many([(node.seq + 1, OP_CREATE, b"777", b"never acknowledged")])
    append_raw(path, tail[:-5])
    return path, good, len(tail) - 5


def test_replay_drops_torn_tail_of_newest_log_and_truncates(node, caplog) -> None:
    path, good, torn = torn_newest(node)
    with caplog.at_level(logging.WARNING, logger="chordctl.storage"):
        store, report = node.recover(repair=True)
    assert dict(store.items()) == node.model and dict(store.items()).get(777) is None
    assert report.torn_bytes == torn and report.torn_file == path
    assert len(report.warnings) == 1 and "log.2" in report.warnings[0]
    assert f"offset {good}" in report.warnings[0]
    assert "torn" in caplog.text
    assert os.path.getsize(path) == good
    # New records appended after the cut replay cleanly.
    node.log(2, [(OP_CREATE, 888, b"after repair")])
    store, report = node.recover()
    assert dict(store.items()) == node.model and dict(store.items()).get(888) == b"after repair"
    assert report.torn_bytes == 0 and report.warnings == []


def test_replay_without_repair_leaves_torn_tail_on_disk(node) -> None:
    path, good, torn = torn_newest(node)
    with open(path, "rb") as f:
        before = f.read()
    store, report = node.recover(repair=False)
    assert dict(store.items()) == node.model
    assert report.torn_bytes == torn and report.torn_file == path
    with open(path, "rb") as f:
        assert f.read() == before
    assert os.path.getsize(path) == good + torn


def test_zero_filled_tail_of_newest_log_is_dropped(node) -> None:
    build_three_generations(node)
    path = node.path("log.2")
    good = os.path.getsize(path)
    append_raw(path, bytes(4096))
    store, report = node.recover()
    assert dict(store.items()) == node.model
    assert report.torn_bytes == 4096
    assert os.path.getsize(path) == good


def test_torn_tail_in_older_log_is_corruption(node) -> None:
    node.log(0, creates(range(5)))
    node.snap(1)
    node.log(1, creates(range(5, 10)))
    node.log(2, creates(range(10, 15)))
    path = node.path("log.1")
    good = os.path.getsize(path)
    os.truncate(path, good - 3)
    with pytest.raises(CorruptRecordError) as err:
        node.recover()
    assert err.value.path == path and "log.1" in str(err.value)
    assert os.path.getsize(path) == good - 3     # nothing was "repaired"


def test_torn_tail_in_older_log_before_empty_newest_is_corruption(node) -> None:
    node.log(0, creates(range(5)))
    LogFile(node.dir, 1).close()              # the node opened log.1, then crashed
    os.truncate(node.path("log.0"), os.path.getsize(node.path("log.0")) - 1)
    with pytest.raises(CorruptRecordError) as err:
        node.recover()
    assert err.value.path == node.path("log.0")


# -- corruption -----------------------------------------------------------------


@pytest.mark.parametrize("log", ["log.1", "log.2"])
@pytest.mark.parametrize(("record", "byte"), [(0, 0), (3, 5), (3, 20), (4, -1)])
def test_corrupt_middle_of_log_names_file_and_offset(node, log: str, record: int,
                                                     byte: int) -> None:
    node.log(0, creates(range(3)))
    node.snap(1)
    offs1 = node.log(1, creates(range(10, 20)))
    offs2 = node.log(2, creates(range(20, 30)))
    offs = offs1 if log == "log.1" else offs2
    path = node.path(log)
    damage(path, offs[record] + byte if byte >= 0 else offs[record + 1] - 1)
    with open(path, "rb") as f:
        before = f.read()
    with pytest.raises(CorruptRecordError) as err:
        node.recover()
    assert err.value.path == path
    assert err.value.offset == offs[record]
    assert log in str(err.value) and f"offset {offs[record]}" in str(err.value)
    with open(path, "rb") as f:
        assert f.read() == before                 # never truncated or rewritten


def test_sequence_gap_between_files_is_corruption(node) -> None:
    node.log(0, creates(range(5)))
    node.seq += 3                               # three records never made it
    node.log(1, creates(range(5, 8)))
    with pytest.raises(CorruptRecordError) as err:
        node.recover()
    assert err.value.path == node.path("log.1") and err.value.offset == 0
    assert "sequence gap" in str(err.value)


def test_sequence_gap_after_snapshot_is_corruption(node) -> None:
    node.log(0, creates(range(5)))
    node.snap(1)
    node.seq += 1
    node.log(1, creates(range(5, 8)))
    with pytest.raises(CorruptRecordError) as err:
        node.recover()
    assert err.value.path == node.path("log.1") and err.value.offset == 0


def test_sequence_gap_inside_a_log_names_record_offset(node) -> None:
    offs = node.log(0, creates(range(4)))
    node.seq += 1
    more = node.log(0, [(OP_CREATE, 100, b"x" * 33), (OP_CREATE, 101, b"")])
    assert more[0] > offs[-1]
    with pytest.raises(CorruptRecordError) as err:
        node.recover()
    assert err.value.offset == more[0]
    assert f"offset {more[0]}" in str(err.value)


def test_replayed_old_log_after_snapshot_is_corruption(node) -> None:
    # log.1 holding log.0's records again (sequence goes backwards).
    node.log(0, creates(range(5)))
    node.snap(1)
    with open(node.path("log.0"), "rb") as f:
        data = f.read()
    with open(node.path("log.1"), "wb") as f:
        f.write(data)
    with pytest.raises(CorruptRecordError) as err:
        node.recover()
    assert err.value.path == node.path("log.1")


def test_missing_log_in_the_middle_is_storage_error(node) -> None:
    node.log(0, creates(range(3)))
    node.log(1, creates(range(3, 6)))
    node.log(2, creates(range(6, 9)))
    os.unlink(node.path("log.1"))
    with pytest.raises(StorageError) as err:
        node.recover()
    assert "log.1" in str(err.value) and "missing" in str(err.value)


def test_missing_log_after_snapshot_is_storage_error(node) -> None:
    node.log(0, creates(range(3)))
    node.snap(1)
    node.log(1, creates(range(3, 6)))
    node.snap(2)
    node.log(2, creates(range(6, 9)))
    node.snap(3)
    node.log(3, creates(range(9, 12)))
    os.unlink(node.path("snap.3"))
    os.unlink(node.path("log.2"))
    with pytest.raises(StorageError) as err:
        node.recover()
    assert "log.2" in str(err.value)


# -- leftovers ------------------------------------------------------------------


def test_repair_removes_stale_tmp_files(node) -> None:
    build_three_generations(node)
    with open(node.path("snap.3.tmp"), "wb") as f:
        f.write(b"half-written snapshot")
    store, report = node.recover(repair=True)
    assert dict(store.items()) == node.model
    assert "snap.3.tmp" not in os.listdir(node.dir)
    # The tmp file was never taken for a snapshot.
    assert report.snapshot == 2 and report.fallbacks == []


def test_no_repair_leaves_tmp_files(node) -> None:
    build_three_generations(node)
    with open(node.path("snap.3.tmp"), "wb") as f:
        f.write(b"half-written snapshot")
    node.recover(repair=False)
    assert "snap.3.tmp" in os.listdir(node.dir)


def test_unrelated_files_are_ignored(node) -> None:
    build_three_generations(node)
    for name in ("README", "log.x", "snap.", "log.2.bak", "snap.1.old"):
        with open(node.path(name), "wb") as f:
            f.write(b"\xff" * 64)
    store, report = node.recover()
    assert dict(store.items()) == node.model
    assert report.snapshot == 2 and report.current_log == 2


# -- damage a torn-tail rule must not hide ------------------------------------------


def test_replay_refuses_bitflip_in_last_record_of_newest_log(node) -> None:
    # The last record was fsynced and acknowledged: a flipped bit in it is
    # corruption naming file and offset, never a torn tail cut away.
    build_three_generations(node)
    path = node.path("log.2")
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        before = f.read()
    offs = [0]
    for rec in records.scan(before, path).records:
        offs.append(offs[-1] + len(records.encode_many([rec])))
    damage(path, size - 1, xor=0x01)
    for repair in (False, True):
        with pytest.raises(CorruptRecordError) as err:
            node.recover(repair=repair)
        assert err.value.path == path and err.value.offset == offs[-2]
        assert os.path.getsize(path) == size        # nothing truncated
    assert not [n for n in os.listdir(node.dir) if n.endswith(".broken")]


def test_corrupt_record_advice_never_says_to_throw_data_away(node) -> None:
    node.log(0, creates(range(5)))                # no snapshot to fall back to
    damage(node.path("log.0"), 3)
    with pytest.raises(CorruptRecordError) as err:
        node.recover()
    text = str(err.value)
    assert "move it aside" not in text and "previous snapshot" not in text
    assert "backup" in text and node.path("log.0") in text


def test_missing_newest_log_after_snapshot_refuses_to_start(node) -> None:
    # Snapshot, write, kill -9, log.3 moved away: the write would be gone.
    build_three_generations(node)
    node.snap(3)
    node.log(3, creates(range(40, 42)))
    os.rename(node.path("log.3"), node.path("elsewhere"))
    with pytest.raises(StorageError) as err:
        node.recover()
    assert node.path("log.3") in str(err.value) and "missing" in str(err.value)


def test_missing_newest_log_behind_a_corrupt_newest_snapshot_refuses(node) -> None:
    build_three_generations(node)
    node.snap(3)
    node.log(3, creates(range(40, 42)))
    damage(node.path("snap.3"), 30)                # falls back to snap.2 + log.2 + log.3
    os.unlink(node.path("log.3"))
    with pytest.raises(StorageError) as err:
        node.recover()
    assert "log.3" in str(err.value)


def test_unreadable_newest_snapshot_refuses_naming_the_file(node, monkeypatch) -> None:
    # Permission denied is an operator problem, not corruption: never skipped
    # silently for an older snapshot. (As root chmod cannot deny a read.)
    build_three_generations(node)
    real_read = snapshot.read

    def read(path):
        if path.endswith("snap.2"):
            raise PermissionError(13, "Permission denied", path)
        return real_read(path)
    monkeypatch.setattr(snapshot, "read", read)
    with pytest.raises(StorageAccessError) as err:
        node.recover()
    assert node.path("snap.2") in str(err.value)
    assert "Permission denied" in str(err.value) and "not corruption" in str(err.value)
    assert err.value.exit_status == 2


def test_unreadable_log_and_directory_are_access_errors(node, monkeypatch) -> None:
    build_three_generations(node)
    deny_open(monkeypatch, recovery, "log.2")
    with pytest.raises(StorageAccessError) as err:
        node.recover()
    assert node.path("log.2") in str(err.value)
    monkeypatch.undo()

    def listdir(path):
        raise PermissionError(13, "Permission denied", path)
    monkeypatch.setattr(recovery.os, "listdir", listdir)
    with pytest.raises(StorageAccessError) as err:
        recovery.recover(node.dir, Store(chunks=4))
    assert node.dir in str(err.value)


# -- repair is a separate, reversible step --------------------------------------------


def test_recover_changes_no_file_and_repair_keeps_a_copy_before_cutting(node) -> None:
    path, good, torn = torn_newest(node)
    with open(node.path("snap.3.tmp"), "wb") as f:
        f.write(b"half-written snapshot")
    before = {n: open(node.path(n), "rb").read() for n in os.listdir(node.dir)}
    store = Store(chunks=4)
    report = recovery.recover(node.dir, store)
    assert {n: open(node.path(n), "rb").read() for n in os.listdir(node.dir)} == before
    assert report.needs_repair and report.tmp_files == ["snap.3.tmp"]
    assert report.torn_offset == good and report.torn_bytes == torn

    done = recovery.repair(node.dir, report)
    assert os.path.getsize(path) == good
    with open(path + ".broken", "rb") as f:
        assert f.read() == before["log.2"]          # the file as it was, whole
    assert "snap.3.tmp" not in os.listdir(node.dir)
    assert len(done) == 2 and report.repairs == done
    assert "log.2.broken" in done[0] and f"offset {good}" in done[0]
    assert "snap.3.tmp" in done[1]
    # Repaired: a second pass finds nothing to do, and the .broken copy is ignored.
    store2 = Store(chunks=4)
    again = recovery.recover(node.dir, store2)
    assert not again.needs_repair and recovery.repair(node.dir, again) == []
    assert dict(store2.items()) == dict(store.items()) == node.model


def test_second_repair_keeps_the_first_broken_copy(node) -> None:
    path, good, _ = torn_newest(node)
    node.recover(repair=True)
    append_raw(path, b"\x05" * 7)
    node.recover(repair=True)
    assert os.path.exists(path + ".broken") and os.path.exists(path + ".broken.1")
    assert os.path.getsize(path) == good


def test_snapshot_list_calls_an_unreadable_snapshot_unreadable_not_corrupt(node, monkeypatch):
    from chordctl.core.storage import inventory

    build_three_generations(node)

    def read_info(path):
        raise PermissionError(13, "Permission denied", path)
    monkeypatch.setattr(snapshot, "read_info", read_info)
    docs = {d["file"]: d for d in inventory.describe(node.dir)}
    assert docs["snap.2"]["status"] == "unreadable: Permission denied"
    assert not docs["snap.2"]["in_use"]


def test_repair_on_a_full_disk_leaves_no_partial_broken_copy_and_says_disk_full(
        node, monkeypatch) -> None:
    """The .broken copy is made before the cut; when the disk fills while it is
    written, the half copy (which would pose as 'the file as it was') is removed,
    the log is left as it was, and the message says the disk is full."""
    import errno
    import shutil

    path, good, torn = torn_newest(node)
    before = {n: open(node.path(n), "rb").read() for n in os.listdir(node.dir)}

    def copyfile(src, dst):
        with open(src, "rb") as s, open(dst, "wb") as d:
            d.write(s.read()[:10])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), dst)

    monkeypatch.setattr(shutil, "copyfile", copyfile)
    report = recovery.recover(node.dir, Store(chunks=4))
    with pytest.raises(StorageError) as err:
        recovery.repair(node.dir, report)
    assert {n: open(node.path(n), "rb").read() for n in os.listdir(node.dir)} == before
    msg = str(err.value)
    assert "No space left on device" in msg and path in msg, msg
    assert "owner and mode" not in msg and "free space" in msg, msg
