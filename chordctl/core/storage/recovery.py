"""Rebuild a node's map from its directory: newest valid snapshot, then logs.

Used by the node before it serves, and offline by ``chordctl log replay``.
A corrupt newest snapshot falls back to the previous one (and its logs); a
torn tail of the newest log is dropped with a warning (and cut off the file
when ``repair`` is set, so new records never follow garbage); any other
damage raises CorruptRecordError naming the file and offset.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Callable

from chordctl.core.storage import files, log, records, snapshot
from chordctl.core.store import Store
from chordctl.errors import CorruptRecordError, StorageError

logger = logging.getLogger("chordctl.storage")


@dataclasses.dataclass
class RecoveryReport:
    directory: str
    snapshot: int | None = None          # counter of the snapshot used
    snapshot_keys: int = 0
    fallbacks: list[str] = dataclasses.field(default_factory=list)
    logs: list[tuple[int, int]] = dataclasses.field(default_factory=list)  # (counter, records)
    records: int = 0
    keys: int = 0
    torn_bytes: int = 0
    torn_file: str | None = None
    last_seq: int = 0
    current_log: int = 0                 # counter of the log to append to
    warnings: list[str] = dataclasses.field(default_factory=list)

    @property
    def next_snapshot(self) -> int:
        return self.current_log + 1


def recover(directory: str, store: Store, repair: bool = True,
            check_key: Callable[[str, int], None] | None = None) -> RecoveryReport:
    """*check_key(path, key)*, if given, sees every key replayed from a log before
    it is applied (the node uses it to check that each lies in its arc)."""
    report = RecoveryReport(directory=directory)
    log_counters, snap_counters = files.list_counters(directory)

    base = 0
    for counter in reversed(snap_counters):
        path = os.path.join(directory, files.snap_name(counter))
        try:
            snap = snapshot.read(path)
        except (CorruptRecordError, OSError) as e:
            msg = f"snapshot {path} is unusable ({e}); falling back to the previous one"
            report.fallbacks.append(msg)
            report.warnings.append(msg)
            logger.warning("%s", msg)
            continue
        if snap.info.counter != counter:
            msg = f"snapshot {path} says it is snap.{snap.info.counter}; skipping it"
            report.fallbacks.append(msg)
            report.warnings.append(msg)
            logger.warning("%s", msg)
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

    to_replay = [c for c in log_counters if c >= base]
    expected = base
    for c in to_replay:
        if c != expected:
            raise StorageError(
                f"storage: {os.path.join(directory, files.log_name(expected))} is missing "
                f"between the snapshot and log.{c}; the history has a hole -- restore it "
                f"from a backup"
            )
        expected += 1
    newest = to_replay[-1] if to_replay else None
    for c in to_replay:
        path = os.path.join(directory, files.log_name(c))
        with open(path, "rb") as f:
            buf = f.read()
        tail = records.Tail()
        seq = report.last_seq
        first = seq
        apply = store.apply if check_key is None else _checked(store.apply, check_key, path)
        for off, rseq, op, key, value in records.iter_records(buf, path, c == newest, tail):
            seq += 1
            if rseq != seq:
                raise CorruptRecordError(
                    path, off, f"sequence gap (expected record {seq}, found {rseq})")
            apply(op, int(key), value)
        count = seq - first
        report.last_seq = seq
        report.records += count
        report.logs.append((c, count))
        result = tail
        if result.torn_bytes:
            report.torn_bytes = result.torn_bytes
            report.torn_file = path
            msg = (f"log: dropped a torn record of {result.torn_bytes} bytes at the end "
                   f"of {path} (offset {result.valid_bytes}); it was never acknowledged")
            report.warnings.append(msg)
            logger.warning("%s", msg)
            if repair:
                log.truncate(path, result.valid_bytes)
    if repair:
        for name in os.listdir(directory) if os.path.isdir(directory) else ():
            if name.endswith(files.TMP_SUFFIX):
                os.unlink(os.path.join(directory, name))
    report.current_log = max([base] + log_counters)
    report.keys = len(store)
    return report


def _checked(apply, check_key: Callable[[str, int], None], path: str):
    def checked_apply(op: int, key: int, value: bytes):
        check_key(path, key)
        return apply(op, key, value)
    return checked_apply
