"""Rebuild a node's map from its directory: newest valid snapshot, then logs.

Two separate steps, the way etcd's WAL does it:

* ``recover()`` reads and never changes a file. Used by the node before it
  serves, and offline by ``chordctl log replay``. A corrupt newest snapshot
  falls back to the previous one (and its logs); a torn tail of the newest
  log (see records.py: a write cut short by a crash) is not replayed and is
  reported; any other damage raises CorruptRecordError naming the file and
  offset. A missing log, or a file it cannot read (permissions, I/O), stops it
  too: that is damage or an operator problem, never something to skip.
* ``repair()`` then makes the directory fit for appending, from what
  recover() found: it keeps a copy of a log with a torn tail as
  ``log.X.broken`` before cutting the tail off, removes ``*.tmp`` leftovers of
  snapshots being written, and says what it did. The node runs it before it
  opens the log for appending (so new records never follow garbage), and
  ``chordctl log repair`` runs it offline.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import shutil
from typing import Callable

from chordctl.core.storage import files, identity, log, records, snapshot
from chordctl.core.store import Store
from chordctl.protocol import OP_RAFT
from chordctl.errors import (CorruptRecordError, StorageAccessError, StorageError,
                             access_advice)

logger = logging.getLogger("chordctl.storage")

BROKEN_SUFFIX = ".broken"


@dataclasses.dataclass
class RecoveryReport:
    directory: str
    snapshot: int | None = None          # counter of the snapshot used
    snapshot_keys: int = 0
    fallbacks: list[str] = dataclasses.field(default_factory=list)
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (file, why)
    logs: list[tuple[int, int]] = dataclasses.field(default_factory=list)  # (counter, records)
    records: int = 0
    keys: int = 0
    torn_bytes: int = 0
    torn_file: str | None = None
    torn_offset: int = 0                 # where the torn tail starts in torn_file
    tmp_files: list[str] = dataclasses.field(default_factory=list)  # leftovers repair removes
    last_seq: int = 0
    current_log: int = 0                 # counter of the log to append to
    warnings: list[str] = dataclasses.field(default_factory=list)
    repairs: list[str] = dataclasses.field(default_factory=list)    # what repair() did
    # ring.replicas > 1: each group's last Raft entry whose mutations are in the map
    raft_applied: dict[int, int] = dataclasses.field(default_factory=dict)

    @property
    def needs_repair(self) -> bool:
        return bool(self.torn_bytes or self.tmp_files)


def access_error(path: str, e: OSError, doing: str = "read") -> StorageAccessError:
    """An unreadable node file: an operator problem, not corruption."""
    return StorageAccessError(
        path, e.strerror or str(e), doing,
        access_advice(e) or
        "an unreadable file is not corruption, so nothing was skipped or changed -- give "
        "the node's user access to it (check owner and mode) and retry")


def _listdir(directory: str) -> list[str]:
    try:
        return os.listdir(directory)
    except FileNotFoundError:
        return []
    except OSError as e:
        raise access_error(directory, e, "list") from None


def recover(directory: str, store: Store,
            check_key: Callable[[str, int], None] | None = None,
            replicated: bool | None = None) -> RecoveryReport:
    """Load *directory* into *store*; read only (see the module docstring).

    *check_key(path, key)*, if given, sees every key replayed from a log before
    it is applied (the node uses it to check that each lies in its arc).

    *replicated* (ring.replicas > 1): mutations come in Raft entries, each
    closed by its raft record (records.py). An entry's mutations are applied
    only when its raft record follows; an entry cut short at the end of the
    newest log (a crash inside its write) is a torn tail from its first
    record on -- the group's Raft log still has it and applies it again --
    and one cut short anywhere else is corruption. None (offline tools): as
    the directory's IDENTITY says."""
    if replicated is None:
        replicated = _replicated(directory)
    report = RecoveryReport(directory=directory)
    _listdir(directory)          # an unreadable directory is an error, not "empty"
    log_counters, snap_counters = files.list_counters(directory)

    base = 0
    for counter in reversed(snap_counters):
        name = files.snap_name(counter)
        path = os.path.join(directory, name)
        try:
            snap = snapshot.read(path)
        except CorruptRecordError as e:
            msg = f"snapshot {path} is unusable ({e.reason} at offset {e.offset}); " \
                  f"falling back to the previous one"
            _fallback(report, name, f"{e.reason} at offset {e.offset}", msg)
            continue
        except OSError as e:
            raise access_error(path, e) from None
        if snap.info.counter != counter:
            msg = f"snapshot {path} says it is snap.{snap.info.counter}; skipping it"
            _fallback(report, name, f"says it is snap.{snap.info.counter}", msg)
            continue
        store.load_chunks(snap.chunks)
        base = counter
        report.snapshot = counter
        report.snapshot_keys = snap.info.keys
        report.last_seq = snap.info.last_seq
        break
    else:
        if snap_counters and (not log_counters or log_counters[0] != 0):
            raise StorageError(
                f"storage: no usable snapshot in {directory} and log.0 is gone, so "
                f"the state cannot be rebuilt; restore the directory from a backup"
            )

    # log.X is created (at the rotation) before snap.X is written, and only
    # pruned below the snapshots kept, so every log from the base to the
    # newest file of either kind exists; a missing one is lost history.
    top = max(log_counters + snap_counters, default=0)
    present = set(log_counters)
    for c in range(base, top + 1):
        if c in present or (c == 0 and not log_counters and not snap_counters):
            continue
        missing = os.path.join(directory, files.log_name(c))
        if c == top:
            raise StorageError(
                f"storage: {missing} is missing, but snap.{c} exists and log.{c} is created "
                f"before it, so the writes acknowledged after that snapshot are gone with "
                f"it; the node will not start without it -- put log.{c} back, or restore "
                f"the directory from a backup")
        raise StorageError(
            f"storage: {missing} is missing between the snapshot and log.{top}; the "
            f"history has a hole -- restore it from a backup"
        )
    to_replay = [c for c in log_counters if c >= base]
    newest = to_replay[-1] if to_replay else None
    for c in to_replay:
        path = os.path.join(directory, files.log_name(c))
        try:
            with open(path, "rb") as f:
                buf = f.read()
        except OSError as e:
            raise access_error(path, e) from None
        tail = records.Tail()
        seq = report.last_seq
        first = seq
        apply = store.apply if check_key is None else _checked(store.apply, check_key, path)
        pending: list[tuple[int, bytes, bytes]] = []   # replicated: the open entry
        entry_end, entry_seq = 0, seq       # just past the last raft record, its seq
        after_raft = False
        for off, rseq, op, key, value in records.iter_records(buf, path, c == newest, tail):
            seq += 1
            if rseq != seq:
                raise CorruptRecordError(
                    path, off, f"sequence gap (expected record {seq}, found {rseq})")
            if after_raft:
                entry_end, after_raft = off, False
            if op == OP_RAFT:
                if len(value) != 8 or not key.isdigit():
                    raise CorruptRecordError(path, off, "malformed raft record")
                for p_op, p_key, p_value in pending:
                    apply(p_op, int(p_key), p_value)
                pending.clear()
                report.raft_applied[int(key)] = records.raft_index(value)
                entry_seq, after_raft = seq, True
            elif replicated:
                pending.append((op, key, value))
            else:
                apply(op, int(key), value)
        if after_raft:
            entry_end = tail.valid_bytes
        if pending:
            if c != newest:
                raise CorruptRecordError(
                    path, entry_end, f"a Raft entry's {len(pending)} record(s) end the file "
                    f"without their raft record (only the newest log may end torn)")
            # The entry's write was cut: none of it counts (its group applies it again).
            seq = entry_seq
            tail.torn_bytes = len(buf) - entry_end
            tail.valid_bytes = entry_end
        count = seq - first
        report.last_seq = seq
        report.records += count
        report.logs.append((c, count))
        if tail.torn_bytes:
            report.torn_bytes = tail.torn_bytes
            report.torn_file = path
            report.torn_offset = tail.valid_bytes
            msg = (f"log: {path} ends with a torn record of {tail.torn_bytes} bytes at "
                   f"offset {tail.valid_bytes} (a write cut short by a crash, never "
                   f"acknowledged); it is not replayed")
            report.warnings.append(msg)
            logger.warning("%s", msg)
    report.tmp_files = sorted(n for n in _listdir(directory) if n.endswith(files.TMP_SUFFIX))
    report.current_log = max([base] + log_counters)
    report.keys = len(store)
    return report


def _replicated(directory: str) -> bool:
    try:
        found = identity.read(directory)
    except StorageError:
        return False      # the node itself reports a damaged IDENTITY
    return found is not None and found.identity.replicas > 1


def _fallback(report: RecoveryReport, name: str, why: str, msg: str) -> None:
    report.skipped.append((name, why))
    report.fallbacks.append(msg)
    report.warnings.append(msg)
    logger.warning("%s", msg)


def _free_name(path: str) -> str:
    if not os.path.exists(path):
        return path
    n = 1
    while os.path.exists(f"{path}.{n}"):
        n += 1
    return f"{path}.{n}"


def repair(directory: str, report: RecoveryReport) -> list[str]:
    """Fix what recover() found and may be fixed; return (and log) what was done.

    Only a torn tail of the newest log and ``*.tmp`` leftovers: everything
    else stops recover() itself. The torn log is first copied whole to
    ``log.X.broken`` (fsynced), then cut back to its last whole record."""
    done: list[str] = []
    if report.torn_bytes and report.torn_file:
        path = report.torn_file
        expected = report.torn_offset + report.torn_bytes
        keep = None
        copied = False
        try:
            size = os.path.getsize(path)
            if size != expected:
                raise StorageError(
                    f"log: {path} changed since it was read ({size} bytes, not {expected}); "
                    f"is another process using {directory}? Nothing was repaired")
            keep = _free_name(path + BROKEN_SUFFIX)
            shutil.copyfile(path, keep)
            fd = os.open(keep, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            files.fsync_dir(directory)
            copied = True
            log.truncate(path, report.torn_offset)
        except OSError as e:
            if keep is not None and not copied:
                # A half copy would pose as "the file as it was": never leave one.
                try:
                    os.unlink(keep)
                except OSError:
                    pass
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StorageAccessError(
                    path, e.strerror, "repair",
                    f"the disk is full: the copy kept before the cut ({keep}) needs "
                    f"{expected} bytes; nothing was changed -- free space and retry"
                    if not copied else "the disk is full -- free space and retry") from None
            raise access_error(getattr(e, "filename", None) or path, e, "repair") from None
        done.append(
            f"log: cut a torn record of {report.torn_bytes} bytes off the end of {path} "
            f"(offset {report.torn_offset}; a write cut short by a crash, never "
            f"acknowledged); the file as it was is kept as {keep} -- delete it when you "
            f"no longer need it")
    removed = False
    for name in report.tmp_files:
        path = os.path.join(directory, name)
        try:
            os.unlink(path)
        except FileNotFoundError:
            continue
        except OSError as e:
            raise access_error(path, e, "remove") from None
        removed = True
        done.append(f"storage: removed {path}, left by a snapshot that was being written "
                    f"when the node stopped")
    if removed:
        files.fsync_dir(directory)
    for msg in done:
        logger.warning("%s", msg)
    report.repairs.extend(done)
    return done


def _checked(apply, check_key: Callable[[str, int], None], path: str):
    def checked_apply(op: int, key: int, value: bytes):
        check_key(path, key)
        return apply(op, key, value)
    return checked_apply
