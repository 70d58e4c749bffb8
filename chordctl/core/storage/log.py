"""The append-only operation log file, kept open for the life of the node.

Records are framed by ``records``; this module only appends bytes and makes
them durable. ``fsync`` uses fdatasync: the file's size is part of the data it
makes durable, its timestamps are not needed.
"""

from __future__ import annotations

import os

from chordctl.core.storage import files


class LogFile:
    """One open ``log.X``, appended to with whole buffers."""

    def __init__(self, directory: str, counter: int):
        self.directory = directory
        self.counter = counter
        self.path = os.path.join(directory, files.log_name(counter))
        existed = os.path.exists(self.path)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.size = os.fstat(self._fd).st_size
        self.records = 0
        self.dirty = False
        if not existed:
            files.fsync_dir(directory)

    def append(self, data: bytes, count: int) -> None:
        """Write *data* (``count`` framed records) in full, or raise OSError."""
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        self.size += len(data)
        self.records += count
        self.dirty = True

    def rollback(self, size: int) -> None:
        """Cut the file back to *size* (its length after the last whole
        append) and make that durable, or raise OSError: after a failed
        append, so no part of the failed write can survive a restart."""
        os.ftruncate(self._fd, size)
        os.fdatasync(self._fd)
        self.size = size
        self.dirty = False

    def sync(self) -> None:
        if self.dirty:
            os.fdatasync(self._fd)
            self.dirty = False

    def close(self) -> None:
        if self._fd >= 0:
            try:
                self.sync()
            finally:
                os.close(self._fd)
                self._fd = -1


def truncate(path: str, size: int) -> None:
    """Cut a torn tail off *path* and make the cut durable."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    finally:
        os.close(fd)
