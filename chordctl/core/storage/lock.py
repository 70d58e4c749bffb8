"""The exclusive lock on a node directory: one process at a time.

A node holds ``<node_dir>/LOCK`` with ``flock(LOCK_EX)`` for its whole life
and writes its pid into the file, so a second process (another node, or
``chordctl log replay`` while the node runs) is refused with the holder's pid.
The kernel drops the lock when the holder exits, even by ``kill -9``; a LOCK
file left behind means nothing by itself. Offline readers take a shared lock:
they may read side by side, never beside a running node.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time

from chordctl.errors import DirectoryLockedError

LOCK_NAME = "LOCK"
# A probe by holder() takes the lock for microseconds; retry that long.
_RETRY_SECONDS = 0.2


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None


class DirectoryLock:
    """``with DirectoryLock(dir):`` or acquire()/release(); exclusive by default."""

    def __init__(self, directory: str, shared: bool = False):
        self.directory = directory
        self.path = os.path.join(directory, LOCK_NAME)
        self.shared = shared
        self._fd = -1

    def acquire(self) -> "DirectoryLock":
        flags = os.O_RDONLY if self.shared else os.O_RDWR | os.O_CREAT
        try:
            fd = os.open(self.path, flags, 0o644)
        except FileNotFoundError:
            if self.shared:          # never run by a node: nothing to exclude
                return self
            raise
        mode = (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB
        deadline = time.monotonic() + _RETRY_SECONDS
        while True:
            try:
                fcntl.flock(fd, mode)
                break
            except OSError as e:
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    os.close(fd)
                    raise
                if time.monotonic() >= deadline:
                    pid = _read_pid(fd)
                    os.close(fd)
                    raise DirectoryLockedError(self.directory, pid) from None
                time.sleep(0.01)
        if not self.shared:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)    # closing the descriptor drops the flock
            self._fd = -1

    @property
    def held(self) -> bool:
        return self._fd >= 0

    def __enter__(self) -> "DirectoryLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def holder(directory: str) -> int | None:
    """The pid of the process holding *directory* exclusively, or None."""
    try:
        fd = os.open(os.path.join(directory, LOCK_NAME), os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return _read_pid(fd) or -1
            raise
        return None            # nobody holds it (our probe ends with the close)
    finally:
        os.close(fd)
