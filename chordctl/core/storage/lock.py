"""The exclusive lock on a node directory: one process at a time.

A node holds ``<node_dir>/LOCK`` with ``flock(LOCK_EX)`` for its whole life
and writes its pid into the file, so a second process (another node, or
``chordctl log replay`` while the node runs) is refused with the holder's pid.
The kernel drops the lock when the holder exits, even by ``kill -9``; a LOCK
file left behind means nothing by itself. Offline readers take a shared lock:
they may read side by side, never beside a running node.

A ``node serve`` process also asks for ``<node_dir>/node.pid`` (*pid_file*):
its pid in text, for ``kill $(cat node.pid)`` and ``cluster down``. It is
written (``.tmp``, fsync, rename) only once the lock is held, so two nodes
on one directory never both write it, and removed before the lock is let
go on a clean stop; after a crash it stays, stale, until the next holder
overwrites it (``localcluster.is_our_node`` verifies a pid before use).
"""

from __future__ import annotations

import errno
import fcntl
import os
import time

from chordctl.core.storage import files
from chordctl.errors import DirectoryLockedError

LOCK_NAME = "LOCK"
PID_FILE = "node.pid"
# A probe by holder() takes the lock for microseconds; retry that long.
_RETRY_SECONDS = 0.2


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None


class DirectoryLock:
    """``with DirectoryLock(dir):`` or acquire()/release(); exclusive by default.

    *pid_file* (exclusive only): write ``node.pid`` while the lock is held.
    """

    def __init__(self, directory: str, shared: bool = False, pid_file: bool = False):
        self.directory = directory
        self.path = os.path.join(directory, LOCK_NAME)
        self.shared = shared
        self.pid_file = pid_file and not shared
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
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
                if self.pid_file:
                    write_pid_file(self.directory)
            except BaseException:
                os.close(fd)
                raise
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd >= 0:
            if self.pid_file:
                # While still held: after the close a new holder may write its own.
                remove_pid_file(self.directory)
            os.close(self._fd)    # closing the descriptor drops the flock
            self._fd = -1

    @property
    def held(self) -> bool:
        return self._fd >= 0

    def __enter__(self) -> "DirectoryLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def pid_file_path(directory: str) -> str:
    return os.path.join(directory, PID_FILE)


def write_pid_file(directory: str, pid: int | None = None) -> str:
    """``node.pid`` atomically: .tmp, fsync, rename, fsync the directory."""
    final = pid_file_path(directory)
    tmp = final + files.TMP_SUFFIX     # a leftover is removed by recovery
    with open(tmp, "w") as f:
        f.write(f"{os.getpid() if pid is None else pid}\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
    files.fsync_dir(directory)
    return final


def remove_pid_file(directory: str) -> None:
    try:
        os.unlink(pid_file_path(directory))
    except FileNotFoundError:
        pass


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
