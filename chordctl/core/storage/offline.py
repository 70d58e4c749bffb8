"""Offline access to a stopped node's directory (``chordctl log replay``/``repair``).

Checks that a path is a node directory, holds its lock the way a running
node would refuse to share it, and (ring.replicas > 1) replays what a start
applies from raft.journal.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os

from pysyncobj.syncobj import _COMMAND_TYPE

from chordctl.core.storage import files, identity, raftjournal, recovery
from chordctl.core.storage.lock import DirectoryLock
from chordctl.core.store import Store
from chordctl.errors import CorruptRecordError, InvalidInputError
from chordctl.pb import raft_pb2 as rpb
from chordctl.protocol import OP_READ

_REGULAR = bytes([_COMMAND_TYPE.REGULAR])


def check_node_dir(data_dir: str) -> None:
    """A node directory holds log.N or snap.N files; refuse anything else
    (a data dir's parent, a typo'd path) instead of reporting "keys 0"."""
    if not os.path.isdir(data_dir):
        raise InvalidInputError(f"log: {data_dir} is not a directory")
    try:
        names = sorted(os.listdir(data_dir))
    except OSError as e:
        raise recovery.access_error(data_dir, e, "list") from None
    logs, snaps = files.list_counters(data_dir)
    if logs or snaps:
        return
    nodes = []
    for name in names:
        sub = os.path.join(data_dir, name)
        try:
            if os.path.isdir(sub) and any(files.list_counters(sub)):
                nodes.append(name)
        except OSError:
            continue
    if nodes:
        shown = ", ".join(nodes[:4]) + (", ..." if len(nodes) > 4 else "")
        raise InvalidInputError(
            f"log: {data_dir} is not a node directory (it holds node directories: {shown}); "
            f"point --data-dir at one of them, e.g. {os.path.join(data_dir, nodes[0])}")
    raise InvalidInputError(
        f"log: {data_dir} holds no node files (log.N, snap.N); point --data-dir at one "
        f"node's directory, e.g. ./data/node-0")


@contextlib.contextmanager
def locked(data_dir: str, shared: bool):
    """Shared for readers (side by side, never beside a running node, which
    holds it exclusively); exclusive for repair."""
    lock = DirectoryLock(data_dir, shared=shared)
    try:
        lock.acquire()          # DirectoryLockedError (exit 2) names the holder
    except OSError as e:
        raise recovery.access_error(lock.path, e, "lock") from None
    try:
        yield lock
    finally:
        lock.release()


@dataclasses.dataclass
class JournalTail:
    """What a start of a replicated node (ring.replicas > 1) applies from one
    group's raft.journal past what its log.X holds, as ``log replay`` found it."""

    group: int
    applied: int              # the last entry log.X holds (its raft records)
    first: int | None         # the journal's first and last entry of the group
    last: int | None
    commit: int               # the commit index the journal recorded
    replayed: int = 0         # entries after *applied* up to *commit*, applied here
    writes: int = 0           # the writes among them
    dump_first: bool = False  # the journal starts past log.X: a start installs the dump
    pending: int = 0          # entries after *commit* (and *applied*): a leader decides
    pending_writes: int = 0


def replay(data_dir: str, store: Store
           ) -> tuple[recovery.RecoveryReport, list[JournalTail] | None]:
    """Rebuild into *store* what a start of *data_dir* would (recovery, then
    replay_journal), with a replica's advice for a damaged file."""
    with replica_advice(data_dir):
        report = recovery.recover(data_dir, store)
        return report, replay_journal(data_dir, report, store)


@contextlib.contextmanager
def replica_advice(data_dir: str):
    """A damaged file of a replica's directory (ring.replicas > 1) gets the
    advice a start gives it: rejoin on an empty directory (identity.REJOIN),
    not only a backup."""
    try:
        yield
    except CorruptRecordError as e:
        if not replicated(data_dir):
            raise
        raise CorruptRecordError(e.path, e.offset, e.reason, identity.REJOIN) from None


def replicated(data_dir: str) -> bool:
    """Whether *data_dir* is a replica's (ring.replicas > 1): its IDENTITY says
    so, or it holds a raft.journal."""
    if os.path.exists(os.path.join(data_dir, raftjournal.FILE_NAME)):
        return True
    try:
        found = identity.read(data_dir)
    except Exception:       # unreadable: the caller reports what it found
        return False
    return found is not None and found.identity.replicas > 1


def replay_journal(data_dir: str, report: recovery.RecoveryReport,
                   store: Store) -> list[JournalTail] | None:
    """Apply to *store* what a start applies from ``raft.journal`` before it
    hears a leader: each group's entries after the last one ``log.X`` holds,
    up to the commit index the journal recorded (``log.X`` is written behind
    the journal, so a kill leaves it behind). Entries past that commit index
    are applied once a leader confirms them, which offline cannot tell. None
    if the directory has no journal (ring.replicas 1)."""
    journal = raftjournal.RaftJournal.read(data_dir)
    if journal is None:
        return None
    apply = store.apply
    out = []
    for gid in journal.groups():
        g = journal.group(gid)
        entries = g[:]
        applied = report.raft_applied.get(gid, 0)
        tail = JournalTail(gid, applied, entries[0][1] if entries else None,
                           entries[-1][1] if entries else None, g.getRaftCommitIndex())
        out.append(tail)
        if tail.first is not None and tail.first > applied + 1:
            # Compacted past log.X: the entries between are in raft-<g>.dump,
            # which a start installs before anything after it.
            tail.dump_first = True
            continue
        for command, idx, _term in entries:
            if idx <= applied:
                continue
            ops = rpb.Command.FromString(command[1:]).ops if command[:1] == _REGULAR else ()
            if idx > tail.commit:
                tail.pending += 1
                tail.pending_writes += sum(1 for o in ops if o.op != OP_READ)
                continue
            tail.replayed += 1
            for o in ops:
                if o.op != OP_READ:
                    apply(o.op, int(o.key), o.value)
                    tail.writes += 1
    return out
