"""The Raft journal: one durable file per node for the logs of all its groups.

PySyncObj keeps each group's Raft log in a ``Journal``; its ``FileJournal``
never flushes an ``add`` and writes term and vote without fsync. This module
replaces it. A node has ONE file, ``raft.journal`` in its data directory,
holding the records of every group (arc) it is in, so that one ``sync()`` --
one write and one fdatasync -- makes every group durable before the node's
messages of a tick round leave. ``RaftJournal.group(gid)`` hands out a
``GroupJournal``, a ``pysyncobj.journal.Journal`` that behaves exactly as
``MemoryJournal`` does (list positions, not Raft indices, for the deletes);
its mutating calls only append an encoded record to the node's in-memory
buffer (no syscall), ``sync()`` writes them.

File layout (little-endian). A 16-byte file header::

    offset  size  field
    0       8     magic        b"CHRDRJNL"
    8       4     version      1
    12      4     header_crc   CRC-32 of bytes 0..11

then records back to back, framed as in records.py::

    offset  size  field
    0       4     length       payload length in bytes
    4       4     payload_crc  CRC-32 (zlib) of the payload
    8       4     header_crc   CRC-32 of bytes 0..7 (guards the length itself)
    12      1     op           see below
    13      2     gid_len      g, length of the group id
    15      g     gid          the group id, an unsigned integer, little-endian,
                               minimal length (0 bytes for group 0)
    15+g    ...   body         by op:

    op  name         body                                     MemoryJournal call
    1   add          idx u64, term u64, command (the rest)     add(command, idx, term)
    2   delete-from  keep u64: entries kept at the front       deleteEntriesFrom(pos)
    3   delete-to    drop u64: entries dropped at the front    deleteEntriesTo(pos)
    4   clear        (empty)                                   clear()
    5   term         term u64, has_vote u8 (0/1), vote utf-8   setCurrentTerm(term, vote)
    6   commit       index u64                                 setRaftCommitIndex(index)
    7   drop-group   (empty)                                   RaftJournal.drop_group(gid)

A record's payload is at most 256 MiB (records.MAX_PAYLOAD): ``add``
refuses a larger command with InvalidInputError before changing anything.

Positions are stored normalized (a negative or out-of-range position as the
count it came to), so replay needs no list semantics. Replay applies the
records in order; every mutating call is exactly one record, except that the
commit index records of a sync round are coalesced to the last value per
group and go at the end of the round's write (after the adds, so a durable
commit index never points past durable entries; it is only a hint anyway).

Crash safety: what a crash can leave is a prefix of the records written, so
a reopened journal holds the state after some prefix of the calls -- never a
delete without the adds before it -- and everything a returned ``sync()``
covered. A torn tail (a record cut short by the end of the file, or a
zero-filled remainder starting inside a record: records.py's rule) is cut
off and made durable before anything is appended; any other damage (a
complete record with a bad checksum, a malformed record, a delete of entries
the journal does not have) raises CorruptRecordError naming file and offset.

Compaction: ``deleteEntriesTo``, ``clear`` and repeated term/commit records
make earlier records dead. When the file would be past ``rewrite_threshold``
and more dead than live after a sync's write, that ``sync()`` instead writes
the live state (pending calls included) to ``raft.journal.tmp``, fdatasyncs
it, renames it over ``raft.journal`` and fsyncs the directory. A crash at
any step leaves either the old file (everything synced before) or the new
one (that too, and this sync); a leftover ``.tmp`` is removed at open. A
rewrite that fails before the rename is abandoned -- the old file is whole,
the sync appends to it as usual, the next try waits until the file has grown
by another threshold -- and a failed directory fsync after it is a write
failure (the new name may not be durable).

Failure: a failed write or fdatasync raises JournalWriteError and the
journal stops for good: every later ``sync()`` raises too (a later fsync
could "succeed" on pages the kernel already dropped). The engine fail-stops
the node; on restart the file says what is durable.

One thread uses a RaftJournal and its groups (the node's tick thread).
"""

from __future__ import annotations

import errno
import logging
import os
import struct
import zlib

from pysyncobj.journal import Journal

from chordctl.core.storage import files
from chordctl.core.storage.records import HEADER, HEADER_SIZE, LEN_CRC, MAX_PAYLOAD, Tail
from chordctl.errors import (CorruptRecordError, InvalidInputError, StorageAccessError,
                             StorageError)

logger = logging.getLogger("chordctl.storage")

FILE_NAME = files.RAFT_JOURNAL
TMP_SUFFIX = ".tmp"
MAGIC = b"CHRDRJNL"
VERSION = 1
FILE_HEADER = struct.Struct("<8sII")
FILE_HEADER_SIZE = FILE_HEADER.size          # 16
# Rewrite the file when it is past this size and more dead than live.
DEFAULT_REWRITE_THRESHOLD = 8 * 1024 * 1024
# A rewrite writes the live state in pieces of about this size.
_REWRITE_CHUNK = 4 * 1024 * 1024

OP_ADD = 1
OP_DELETE_FROM = 2
OP_DELETE_TO = 3
OP_CLEAR = 4
OP_TERM = 5
OP_COMMIT = 6
OP_DROP = 7

_PREFIX = struct.Struct("<BH")               # op, gid_len
_U64 = struct.Struct("<Q")
_U64X2 = struct.Struct("<QQ")
_TERM = struct.Struct("<QB")

_crc32 = zlib.crc32
_pack_header = HEADER.pack
_pack_len_crc = LEN_CRC.pack
_pack_u64 = _U64.pack
_pack_u64x2 = _U64X2.pack


class JournalWriteError(StorageError):
    """The raft journal could not be written or made durable (no space, an
    I/O error): the node must fail-stop; nothing is retried."""

    def __init__(self, message: str, path: str = "", err: int | None = None):
        self.path = path
        self.errno = err
        super().__init__(message)


def _advice(e: OSError, directory: str) -> str:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"free space on the disk holding {directory} (or raise the quota)"
    if e.errno == errno.EIO:
        return ("check the disk (kernel log, SMART); if it is failing, replace it and let "
                "the node catch up from its peers")
    if e.errno == errno.EROFS:
        return "the file system went read-only: check the disk and remount it read-write"
    return "fix the cause"


def _gid_bytes(gid: int) -> bytes:
    if type(gid) is not int:
        raise TypeError(f"a group id is an int, not {type(gid).__name__}")
    if gid < 0:
        raise ValueError(f"a group id is >= 0 (got {gid})")
    n = (gid.bit_length() + 7) // 8
    if n > 0xFFFF:
        raise ValueError("a group id has at most 65535 bytes")
    return gid.to_bytes(n, "little")


def _frame(payload_head: bytes, tail: bytes = b"") -> bytes:
    """One whole record: header + payload_head + tail."""
    length = len(payload_head) + len(tail)
    pcrc = _crc32(tail, _crc32(payload_head))
    return _pack_header(length, pcrc, _crc32(_pack_len_crc(length, pcrc))) + payload_head + tail


def _to_bytes(command) -> bytes:
    if isinstance(command, str):           # as PySyncObj's FileJournal stores it
        return command.encode("utf-8")
    if isinstance(command, (bytes, bytearray, memoryview)):
        return bytes(command)
    raise TypeError(f"a journal command is bytes, not {type(command).__name__}")


class _RenamedNotDurable(OSError):
    """The rewritten file was renamed in place, but the directory fsync failed."""


class _Dropped:
    """Stands in for the RaftJournal of a GroupJournal whose group was dropped."""

    def __init__(self, gid: int):
        self._gid = gid

    def __getattr__(self, name):
        raise StorageError(f"storage: raft group {self._gid} was dropped from the journal; "
                           f"take a new one with RaftJournal.group({self._gid})")


class GroupJournal(Journal):
    """The Raft log, term, vote and commit index of one group, in memory,
    with every change queued as a record for the node's next ``sync()``.

    Behaves exactly as ``pysyncobj.journal.MemoryJournal`` (entries are
    ``(command: bytes, idx, term)`` tuples; ``deleteEntriesFrom`` and
    ``deleteEntriesTo`` take list positions), except that the commit index is
    kept (``getRaftCommitIndex`` returns what was set, 1 before that).
    """

    def __init__(self, owner: "RaftJournal", gid: int):
        self.gid = gid
        self._owner = owner
        g = _gid_bytes(gid)
        self._gkey = g
        self._pre = {op: _PREFIX.pack(op, len(g)) + g for op in range(OP_ADD, OP_DROP + 1)}
        self._pre_add = self._pre[OP_ADD]
        # Bytes of one add record besides its command.
        self._add_overhead = HEADER_SIZE + len(self._pre_add) + _U64X2.size
        self._entries: list[tuple[bytes, int, int]] = []
        self._entry_bytes = 0        # bytes the add records of _entries take
        self._term = 0
        self._vote: str | None = None
        self._commit = 1

    # -- the hot path -----------------------------------------------------

    def add(self, command, idx, term):
        if type(command) is not bytes:
            command = _to_bytes(command)
        head = self._pre_add + _pack_u64x2(idx, term)
        length = len(head) + len(command)
        if length > MAX_PAYLOAD:
            raise InvalidInputError(
                f"storage: a raft log entry of {len(command)} bytes is over the journal's "
                f"limit of {MAX_PAYLOAD - len(head)} bytes; propose smaller batches")
        pcrc = _crc32(command, _crc32(head))
        parts = self._owner._parts
        parts.append(_pack_header(length, pcrc, _crc32(_pack_len_crc(length, pcrc))) + head)
        parts.append(command)
        self._entries.append((command, idx, term))
        self._entry_bytes += self._add_overhead + len(command)

    def __getitem__(self, item):
        return self._entries[item]

    def __len__(self):
        return len(self._entries)

    # -- the rest of the interface ---------------------------------------

    def clear(self):
        self._owner._parts.append(_frame(self._pre[OP_CLEAR]))
        self._entries = []
        self._entry_bytes = 0

    def deleteEntriesFrom(self, entryFrom):
        n = len(self._entries)
        keep = n - len(range(n)[entryFrom:])     # what `del entries[entryFrom:]` leaves
        if keep == n:
            return
        self._owner._parts.append(_frame(self._pre[OP_DELETE_FROM] + _pack_u64(keep)))
        gone = self._entries[keep:]
        del self._entries[keep:]
        self._entry_bytes -= self._add_overhead * len(gone) + sum(len(e[0]) for e in gone)

    def deleteEntriesTo(self, entryTo):
        n = len(self._entries)
        drop = n - len(range(n)[entryTo:])       # what `entries[entryTo:]` leaves out
        if drop == 0:
            return
        self._owner._parts.append(_frame(self._pre[OP_DELETE_TO] + _pack_u64(drop)))
        gone = self._entries[:drop]
        self._entries = self._entries[drop:]
        self._entry_bytes -= self._add_overhead * drop + sum(len(e[0]) for e in gone)

    def _destroy(self):
        # SyncObj._destroy calls this; the file is the node's, shared by
        # every group: RaftJournal.close() closes it.
        pass

    def setRaftCommitIndex(self, raftCommitIndex):
        if raftCommitIndex == self._commit:
            return          # PySyncObj sets it on every append_entries, heartbeats too
        rec = _frame(self._pre[OP_COMMIT] + _pack_u64(raftCommitIndex))
        self._commit = raftCommitIndex
        # Needs no sync of its own: only the last one per group goes, at the
        # end of the next sync's write.
        self._owner._commits[self.gid] = rec

    def getRaftCommitIndex(self):
        return self._commit

    def setCurrentTerm(self, term, votedForNodeId):
        if votedForNodeId is None:
            body = _TERM.pack(term, 0)
        elif isinstance(votedForNodeId, str):
            body = _TERM.pack(term, 1) + votedForNodeId.encode("utf-8")
        else:
            raise TypeError(f"a node id is a str, not {type(votedForNodeId).__name__}")
        self._owner._parts.append(_frame(self._pre[OP_TERM] + body))
        self._term = term
        self._vote = votedForNodeId

    def getCurrentTerm(self):
        return self._term

    def getVotedForNodeId(self):
        return self._vote

    def onOneSecondTimer(self):
        pass        # durability is the engine's sync() before messages leave

    # -- for RaftJournal ----------------------------------------------------

    def _live_records(self):
        """The records that rebuild this group's state, as bytes pieces."""
        if self._term != 0 or self._vote is not None:
            vote = self._vote
            body = _TERM.pack(self._term, 0) if vote is None else \
                _TERM.pack(self._term, 1) + vote.encode("utf-8")
            yield _frame(self._pre[OP_TERM] + body)
        if self._commit != 1:
            yield _frame(self._pre[OP_COMMIT] + _pack_u64(self._commit))
        pre = self._pre_add
        for command, idx, term in self._entries:
            head = pre + _pack_u64x2(idx, term)
            length = len(head) + len(command)
            pcrc = _crc32(command, _crc32(head))
            yield _pack_header(length, pcrc, _crc32(_pack_len_crc(length, pcrc))) + head
            yield command

    def _live_bytes(self) -> int:
        n = self._entry_bytes
        meta = HEADER_SIZE + len(self._pre[OP_TERM])
        if self._term != 0 or self._vote is not None:
            n += meta + _TERM.size + (len(self._vote.encode("utf-8")) if self._vote else 0)
        if self._commit != 1:
            n += meta + _U64.size
        return n


class RaftJournal:
    """The node's ``raft.journal``: opened (and loaded) by the constructor.

    *rewrite_threshold*: the file is rewritten without its dead records only
    when it is larger than this (and more than half dead).
    """

    def __init__(self, directory: str, rewrite_threshold: int = DEFAULT_REWRITE_THRESHOLD,
                 _read_only: bool = False):
        self.directory = directory
        self.path = os.path.join(directory, FILE_NAME)
        self.rewrite_threshold = rewrite_threshold
        self._groups: dict[int, GroupJournal] = {}
        self._parts: list[bytes] = []
        self._commits: dict[int, bytes] = {}
        self._failed: str | None = None
        self._fd = -1
        self._size = 0                      # bytes in the file
        self._next_rewrite = 0              # no rewrite below this size (after a failed one)
        self.torn_bytes = 0                 # what the open cut off the end
        self.torn_offset = 0
        self.removed_tmp = False            # a leftover raft.journal.tmp was removed
        self.rewrites = 0
        if not _read_only:
            self._open()

    @classmethod
    def read(cls, directory: str) -> "RaftJournal | None":
        """The journal of *directory* as a start would load it, for reading
        only (``log replay``): nothing is cut, removed or created, and it
        cannot be synced. None if the directory has no journal."""
        j = cls(directory, _read_only=True)
        try:
            with open(j.path, "rb") as f:
                buf = f.read()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StorageAccessError.of(e, j.path, "read") from None
        valid = j._load(buf)
        j.torn_offset, j.torn_bytes = valid, len(buf) - valid
        j._failed = "read only (log replay)"
        return j

    # -- public -------------------------------------------------------------

    def group(self, gid: int) -> GroupJournal:
        """The journal of group *gid* (an int >= 0), made on first use."""
        g = self._groups.get(gid)
        if g is None:
            g = self._groups[gid] = GroupJournal(self, gid)
        return g

    def groups(self) -> list[int]:
        """The ids of the groups the journal holds (made or loaded)."""
        return sorted(self._groups)

    def drop_group(self, gid: int) -> None:
        """Forget group *gid* (the node left it): its records become dead.
        The GroupJournal handed out for it must not be used again."""
        g = self._groups.pop(gid, None)
        if g is None:
            return
        self._parts.append(_frame(g._pre[OP_DROP]))
        self._commits.pop(gid, None)
        g._owner = _Dropped(gid)

    @property
    def dirty(self) -> bool:
        """True while records wait for sync() (or after a failed one: nothing
        is durable any more); a changed commit index alone does not count."""
        return bool(self._parts or self._failed)

    @property
    def size(self) -> int:
        """Bytes in the file (written, synced or not)."""
        return self._size

    def sync(self) -> None:
        """Write every pending record with one write and make it durable with
        one fdatasync. When the file would then be due for a rewrite, the
        rewrite takes the append's place (its fdatasync, then the rename's
        directory fsync). Raises JournalWriteError (for good, once it failed)."""
        if self._failed:
            raise JournalWriteError(self._failed, self.path)
        if self._fd < 0:
            raise StorageError(f"storage: {self.path} is closed; open the journal again")
        if not self._parts:
            # A commit index alone is not worth an fdatasync (Raft does not
            # need it durable): it goes with the next records that are.
            return
        if self._commits:
            self._parts.extend(self._commits.values())
            self._commits.clear()
        parts = self._parts
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        self._parts = []
        good = self._size
        after = good + len(data)
        if after > self.rewrite_threshold and after >= self._next_rewrite:
            live = self.live_bytes()
            if after - live > live and self._rewrite():
                return
        fd = self._fd
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
        except OSError as e:
            self._write_failed("write", e, good)
        self._size = good + len(data)
        try:
            os.fdatasync(fd)
        except OSError as e:
            self._write_failed("fsync", e, None)

    def live_bytes(self) -> int:
        """The size the file would have if rewritten now (pending records included)."""
        return FILE_HEADER_SIZE + sum(g._live_bytes() for g in self._groups.values())

    def close(self) -> None:
        """Sync what is pending (unless the journal failed) and close the file."""
        if self._fd < 0:
            return
        try:
            if not self._failed:
                if self._commits and not self._parts:
                    self._parts.extend(self._commits.values())
                    self._commits.clear()
                self.sync()
        finally:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- opening ------------------------------------------------------------

    def _open(self) -> None:
        path = self.path
        tmp = path + TMP_SUFFIX
        try:
            files.makedirs_durable(self.directory)
            if os.path.lexists(tmp):
                # A rewrite (or the creation) that crashed before its rename:
                # the file itself is whole and authoritative.
                os.unlink(tmp)
                files.fsync_dir(self.directory)
                self.removed_tmp = True
            try:
                with open(path, "rb") as f:
                    buf = f.read()
            except FileNotFoundError:
                buf = None
        except OSError as e:
            raise StorageAccessError.of(e, path, "read") from None
        if buf is None:
            try:
                self._fd, self._size = self._write_fresh()
            except OSError as e:
                raise StorageAccessError.of(e, path, "create") from None
            return
        valid = self._load(buf)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND)
            try:
                if valid < len(buf):
                    # Cut the torn tail off, durably, before anything follows it.
                    os.ftruncate(fd, valid)
                    os.fdatasync(fd)
            except OSError:
                os.close(fd)
                raise
        except OSError as e:
            raise StorageAccessError.of(e, path, "repair") from None
        self.torn_offset = valid
        self.torn_bytes = len(buf) - valid
        self._fd = fd
        self._size = valid

    def _load(self, buf: bytes) -> int:
        """Replay *buf*, the whole file, into the groups; return where the
        valid records end."""
        path = self.path
        if len(buf) < FILE_HEADER_SIZE:
            raise CorruptRecordError(path, 0, "file header cut short (not a raft journal)")
        magic, version, hcrc = FILE_HEADER.unpack_from(buf, 0)
        if magic != MAGIC or _crc32(buf[:12]) != hcrc:
            raise CorruptRecordError(path, 0, "bad file header (not a chordctl raft journal)")
        if version != VERSION:
            raise StorageError(
                f"storage: {path} is raft journal format {version}, this chordctl reads "
                f"format {VERSION}; run the chordctl version that wrote it")
        by_key: dict[bytes, GroupJournal] = {}
        tail = Tail()
        unpack_u64 = _U64.unpack_from
        unpack_u64x2 = _U64X2.unpack_from
        for off, op, gkey, b, stop in _iter_records(buf, path, tail):
            g = by_key.get(gkey)
            if g is None:
                if gkey and gkey[-1] == 0:
                    raise CorruptRecordError(path, off, "malformed record (group id not "
                                                        "minimal)")
                gid = int.from_bytes(gkey, "little")
                g = by_key[gkey] = self.group(gid)
            n = stop - b
            if op == OP_ADD:
                if n < 16:
                    raise _malformed(path, off, op, n)
                idx, term = unpack_u64x2(buf, b)
                g._entries.append((buf[b + 16:stop], idx, term))
            elif op == OP_COMMIT:
                if n != 8:
                    raise _malformed(path, off, op, n)
                g._commit = unpack_u64(buf, b)[0]
            elif op == OP_DELETE_FROM or op == OP_DELETE_TO:
                if n != 8:
                    raise _malformed(path, off, op, n)
                count = unpack_u64(buf, b)[0]
                if count > len(g._entries):
                    raise CorruptRecordError(
                        path, off, f"record deletes past the end of group {g.gid}'s log "
                                   f"({count} of {len(g._entries)} entries)")
                if op == OP_DELETE_FROM:
                    del g._entries[count:]
                else:
                    del g._entries[:count]
            elif op == OP_TERM:
                if n < _TERM.size:
                    raise _malformed(path, off, op, n)
                term, has_vote = _TERM.unpack_from(buf, b)
                rest = buf[b + _TERM.size:stop]
                if has_vote > 1 or (not has_vote and rest):
                    raise _malformed(path, off, op, n)
                try:
                    vote = rest.decode("utf-8") if has_vote else None
                except UnicodeDecodeError:
                    raise _malformed(path, off, op, n) from None
                g._term, g._vote = term, vote
            elif op == OP_CLEAR:
                if n:
                    raise _malformed(path, off, op, n)
                g._entries = []
            elif op == OP_DROP:
                if n:
                    raise _malformed(path, off, op, n)
                del by_key[gkey]
                del self._groups[g.gid]
            else:
                raise CorruptRecordError(path, off, f"unknown record op {op}")
        for g in self._groups.values():
            g._entry_bytes = g._add_overhead * len(g._entries) + \
                sum(len(e[0]) for e in g._entries)
        return tail.valid_bytes

    # -- writing a whole file ------------------------------------------------

    def _write_fresh(self) -> tuple[int, int]:
        """Write the live state to raft.journal.tmp, fdatasync it, rename it
        over raft.journal and fsync the directory; return (fd, size), the fd
        open for appending to the new file. Raises OSError: before the rename
        the tmp file is removed and raft.journal is as it was; a failed
        directory fsync after it raises _RenamedNotDurable."""
        tmp = self.path + TMP_SUFFIX
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
        try:
            head = MAGIC + struct.pack("<I", VERSION)
            chunk = [head + struct.pack("<I", _crc32(head))]
            held = FILE_HEADER_SIZE
            size = 0
            for g in self._groups.values():
                for piece in g._live_records():
                    chunk.append(piece)
                    held += len(piece)
                    if held >= _REWRITE_CHUNK:
                        size += _write_all(fd, b"".join(chunk))
                        chunk, held = [], 0
            size += _write_all(fd, b"".join(chunk))
            os.fdatasync(fd)
            os.rename(tmp, self.path)
        except BaseException:
            os.close(fd)
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        try:
            files.fsync_dir(self.directory)
        except OSError as e:
            os.close(fd)
            raise _RenamedNotDurable(e.errno, e.strerror) from e
        return fd, size

    def _rewrite(self) -> bool:
        """Compaction: replace the file by the live state (what is pending
        included); False if that failed before the rename (the old file is as
        it was: append to it)."""
        try:
            fd, size = self._write_fresh()
        except _RenamedNotDurable as e:
            # Appends to the old fd would go to an unlinked file, to a new
            # one maybe to a name that is not durable: stop.
            self._write_failed("fsync the directory of", e, None)
        except OSError as e:
            # The old file is whole: keep appending to it.
            self._next_rewrite = self._size + self.rewrite_threshold
            logger.warning("storage: cannot rewrite %s to drop its dead records: %s; it "
                           "keeps growing, next try past %d bytes -- %s", self.path,
                           (e.strerror or str(e)).lower(), self._next_rewrite,
                           _advice(e, self.directory))
            return False
        old = self._fd
        self._fd, self._size = fd, size
        self._next_rewrite = 0
        self.rewrites += 1
        try:
            os.close(old)
        except OSError:
            pass
        return True

    def _write_failed(self, doing: str, e: OSError, good: int | None):
        """Stop for good after a failed write or fsync; raise JournalWriteError."""
        what = (e.strerror or str(e)).lower()
        if good is not None:
            # Cut a partial write back, so a restart does not even see a
            # prefix of it (best effort: a torn tail is cut at open anyway).
            try:
                os.ftruncate(self._fd, good)
                os.fdatasync(self._fd)
                outcome = "none of the records of this sync is on disk"
            except OSError:
                outcome = ("the records of this sync may or may not be on disk after a "
                           "restart")
        else:
            outcome = "the records of this sync may or may not be on disk after a restart"
        self._failed = (
            f"storage: cannot {doing} {self.path}: {what}; the raft journal takes no more "
            f"writes and the node must stop (fail-stop); {outcome} -- "
            f"{_advice(e, self.directory)}, then restart the node")
        self._parts = []
        self._commits.clear()
        raise JournalWriteError(self._failed, self.path, e.errno) from None


def _write_all(fd: int, data: bytes) -> int:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
    return len(data)


def _malformed(path: str, off: int, op: int, n: int) -> CorruptRecordError:
    return CorruptRecordError(path, off, f"malformed record (op {op}, body of {n} bytes)")


def _iter_records(buf: bytes, path: str, tail: Tail):
    """Yield (offset, op, gid bytes, body start, body stop) for each record
    after the file header; records.py's torn-tail rule decides where the
    records end (filled into *tail*)."""
    unpack_header = HEADER.unpack_from
    unpack_prefix = _PREFIX.unpack_from
    prefix_size = _PREFIX.size
    crc32 = _crc32
    mv = memoryview(buf)
    end = len(buf)
    off = FILE_HEADER_SIZE
    while off < end:
        if end - off < HEADER_SIZE:
            break                                   # record header cut short
        length, pcrc, hcrc = unpack_header(buf, off)
        if crc32(mv[off:off + 8]) != hcrc:
            if not any(mv[off + HEADER_SIZE:]):
                break                               # zero-filled tail
            raise CorruptRecordError(path, off, "record header checksum mismatch")
        if length < prefix_size or length > MAX_PAYLOAD:
            raise CorruptRecordError(path, off, f"impossible record length {length}")
        body = off + HEADER_SIZE
        stop = body + length
        if stop > end:
            break                                   # record payload cut short
        if crc32(mv[body:stop]) != pcrc:
            if len(bytes(mv[body:]).rstrip(b"\0")) < length:
                break                               # zero-filled tail
            raise CorruptRecordError(path, off, "record checksum mismatch")
        op, glen = unpack_prefix(buf, body)
        gstart = body + prefix_size
        gend = gstart + glen
        if gend > stop:
            raise CorruptRecordError(path, off, f"malformed record (group id of {glen} bytes)")
        yield off, op, buf[gstart:gend], gend, stop
        off = stop
    tail.valid_bytes = off
    tail.torn_bytes = end - off
