"""Offline access to a stopped node's directory (``chordctl log replay``/``repair``).

Checks that a path is a node directory, and holds its lock the way a
running node would refuse to share it.
"""

from __future__ import annotations

import contextlib
import os

from chordctl.core.storage import files, recovery
from chordctl.core.storage.lock import DirectoryLock
from chordctl.errors import InvalidInputError


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
