"""Names of a node's files and directory helpers (``log.X``, ``snap.X``).

A node directory holds ``log.0, log.1, ...`` and ``snap.1, snap.2, ...``;
``snap.X`` holds exactly the effect of every record in ``log.0 .. log.(X-1)``.
Snapshots being written are named ``snap.X.tmp`` and renamed when complete.
"""

from __future__ import annotations

import errno
import os
import re

LOG_PREFIX = "log."
SNAP_PREFIX = "snap."
TMP_SUFFIX = ".tmp"
_NAME = re.compile(r"^(log|snap)\.(\d+)$")


# `cluster up`'s start lock, in storage.data_dir beside the node directories
# (localcluster.starting); `ring migrate` leaves it with the old tree.
CLUSTER_LOCK = ".cluster-up.lock"
# In a node directory of a replicated ring: the node is still learning its
# groups (it started without raft.journal, replica.py); it lists the groups still
# learning. Kept until it is a full replica in each, so that a restart meanwhile
# starts it as a learner again in those.
LEARNING = "LEARNING"
# A replicated node's Raft journal (raftjournal.py), named here for those
# that only look for it (`cluster up`: has any node started before?).
RAFT_JOURNAL = "raft.journal"

def log_name(counter: int) -> str:
    return f"{LOG_PREFIX}{counter}"


def snap_name(counter: int) -> str:
    return f"{SNAP_PREFIX}{counter}"


def list_counters(directory: str) -> tuple[list[int], list[int]]:
    """(log counters, snapshot counters) present in *directory*, ascending."""
    logs: list[int] = []
    snaps: list[int] = []
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return logs, snaps
    for name in names:
        m = _NAME.match(name)
        if m:
            (logs if m.group(1) == "log" else snaps).append(int(m.group(2)))
    logs.sort()
    snaps.sort()
    return logs, snaps


def makedirs_durable(directory: str) -> list[str]:
    """``os.makedirs(directory, exist_ok=True)``, each new level made durable.

    A created directory is only an entry in its parent until the parent is
    fsynced; without it a crash can take a whole node directory, with every
    fsynced log in it, away. Returns the directories created, outermost first.
    """
    missing: list[str] = []
    path = os.path.abspath(directory)
    while not os.path.isdir(path):
        # A file (or a dangling link) in the way; asked again, for another
        # node sharing the parent may have made the directory just now.
        if os.path.lexists(path) and not os.path.isdir(path):
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    created: list[str] = []
    for path in reversed(missing):
        try:
            os.mkdir(path)
        except FileExistsError:      # made by another process meanwhile: sync it too
            if not os.path.isdir(path):
                raise
        else:
            created.append(path)
        fsync_dir(os.path.dirname(path))
    return created


def fsync_dir(directory: str) -> None:
    """Make a create, rename or unlink in *directory* durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def prune(directory: str, newest: int) -> None:
    """Retention: keep the last 3 snapshots and the logs they need.

    Only after snap.*newest* is durable. Keeps log.(X-2) .. log.X, and never a
    log that a kept snapshot still needs (counters can skip after a crash
    between rotation and snapshot).
    """
    logs, snaps = list_counters(directory)
    keep_snaps = [s for s in snaps if s <= newest][-3:]
    oldest_snap = keep_snaps[0] if keep_snaps else 0
    oldest_log = min(oldest_snap, newest - 2)
    removed = False
    for s in snaps:
        if s < oldest_snap:
            os.unlink(os.path.join(directory, snap_name(s)))
            removed = True
    for c in logs:
        if c < oldest_log:
            os.unlink(os.path.join(directory, log_name(c)))
            removed = True
    if removed:
        fsync_dir(directory)
