"""The ChordError hierarchy and the CLI's exit statuses.

The core and the client raise these; the CLI maps each to its ExitStatus and
prints the message (never a traceback). Messages begin with the subsystem and
say what to do.
"""

from __future__ import annotations

import enum
import errno


class ExitStatus(enum.IntEnum):
    """Exit codes of every chordctl command (the README lists them)."""

    OK = 0
    FAILED = 1        # the operation failed: not found, already exists
    USAGE = 2         # usage error or invalid input
    UNAVAILABLE = 3   # cluster unreachable or timed out


class ChordError(Exception):
    """Base of every error chordctl reports to a user."""

    exit_status = ExitStatus.FAILED


class ConfigError(ChordError):
    """The configuration file is missing or malformed."""

    exit_status = ExitStatus.USAGE


class InvalidInputError(ChordError):
    """A request or argument is malformed (bad key, oversized value...)."""

    exit_status = ExitStatus.USAGE


class NotFoundError(ChordError):
    """The key does not exist."""


class AlreadyExistsError(ChordError):
    """create on a key that exists."""


class UnavailableError(ChordError):
    """A node could not be reached, or did not answer within the deadline."""

    exit_status = ExitStatus.UNAVAILABLE


class DeadlineExceededError(UnavailableError):
    """The request's deadline passed before a reply came."""


class ResourceExhaustedError(UnavailableError):
    """A node refused the request because it is at its limit."""


class StorageError(ChordError):
    """The log or a snapshot is unreadable; the node must not start."""


class CorruptRecordError(StorageError):
    """A record or snapshot failed its checksum, or framing is inconsistent."""

    RESTORE = "keep the directory as it is and restore the node directory from a backup"

    def __init__(self, path: str, offset: int, reason: str, advice: str = RESTORE):
        self.path = path
        self.offset = offset
        self.reason = reason
        # No "move it aside": without a snapshot past it that throws away
        # every acknowledged write it holds.
        super().__init__(
            f"storage: {reason} in {path} at offset {offset}; the file is "
            f"damaged after it was written (not a torn write), so the node will not "
            f"start rather than drop acknowledged writes -- {advice}"
        )


class StorageAccessError(StorageError):
    """A node file or directory cannot be read or written (permissions, a
    read-only file system): an operator problem, not corruption; nothing is
    skipped or repaired, the node does not start, the listing is not made."""

    exit_status = ExitStatus.USAGE

    def __init__(self, path: str, strerror: str, what: str = "use",
                 advice: str = "give the user running chordctl access to it (owner, mode), "
                               "or point storage.data_dir (--data-dir) elsewhere"):
        self.path = path
        super().__init__(f"storage: cannot {what} {path}: {strerror}; {advice}")

    @classmethod
    def of(cls, e: OSError, default_path: str, what: str = "use") -> "StorageAccessError":
        advice = access_advice(e)
        return cls(e.filename or default_path, (e.strerror or str(e)).lower(), what,
                   **({"advice": advice} if advice else {}))


def access_advice(e: OSError) -> str | None:
    """What to do about an OSError that owner and mode cannot fix; None for the rest."""
    if e.errno == errno.EROFS:
        return ("the file system is mounted read-only: remount it read-write, or point "
                "storage.data_dir (--data-dir) elsewhere")
    if e.errno == errno.ENOTDIR:
        return ("a file stands where a directory belongs: move it away, or point "
                "storage.data_dir (--data-dir) elsewhere")
    if e.errno == errno.EISDIR:
        return ("a directory stands where a node file belongs: move it away and put the "
                "file back (from a backup), nothing was changed")
    return None


class InternalError(ChordError):
    """A node failed in a way it did not expect; see its log."""


class DirectoryLockedError(ChordError):
    """Another process holds a node directory's lock."""

    exit_status = ExitStatus.USAGE

    def __init__(self, directory: str, pid: int | None):
        self.directory = directory
        self.pid = pid
        who = f"process {pid}" if pid else "another process"
        super().__init__(
            f"storage: {directory} is in use by {who}; only one process may hold a node "
            f"directory -- stop it first (`chordctl cluster down`, or kill {pid or 'it'})")


class RingMismatchError(ChordError):
    """A node directory was written under another ring (bits, placement, nodes, index)."""

    exit_status = ExitStatus.USAGE

    def __init__(self, message: str, field: str = ""):
        self.field = field
        super().__init__(message)
