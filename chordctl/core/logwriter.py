"""F2: the log writer -- appends, the fsync policy, rotation, fail-stop.

One thread (``run``) takes what the dispatcher put in F2: OwnedBatches (and
ReadMarkers, which count as batches without mutations), SnapshotMarkers and
STOP. It appends a drained group's mutations with one write and, under
``storage.fsync`` ``batch``/``always``, one fsync (``always``: one per batch;
``everysec``: at most a second apart; ``never``: none), then sets
``durable_seq`` and calls each item's ``stage_done()`` (not a replica's
committed entry, answered once applied: ``OwnedBatch.waits_for_log``). At a SnapshotMarker it
closes ``log.(X-1)`` (fsynced) and opens ``log.X``, then sets
``marker.rotated``. A replica's committed entries, which nobody waits for,
are taken in windows of ``behind`` seconds instead of each at once.

A failed append or fsync fail-stops the node (``failstop.fail``): nothing is
written after it, the write is cut back where it can be, and the replies say
whether the outcome is a definite refusal or unknown (``_write_failed``).
"""

from __future__ import annotations

import logging
import os
import queue
import time

from chordctl.core import affinity
from chordctl.core.markers import STOP, SnapshotMarker
from chordctl.core.storage import files, records
from chordctl.core.storage.log import LogFile
from chordctl.protocol import OP_READ, UNAVAILABLE

logger = logging.getLogger("chordctl.node")


class LogWriter:
    """The log of one node and the thread that writes it.

    *failstop* is the node's fail-stop state: ``.failed`` (the reason, or
    None) and ``.fail(reason)``. *log* is opened by the node's recovery.
    """

    # Seconds a replica's committed entries may wait to be written (replica.py
    # sets it; 0: every batch at once). Nobody waits for them -- the raft
    # journal made them durable on a majority -- so the writer takes them in
    # windows of this long: while they keep coming, one wake-up and one write
    # per window, not one per entry in the middle of the next write's round
    # (a wake-up there, and its GIL, cost a sequential write at R = 3 37-100
    # us; BENCHMARKS.md). After a window that brought nothing it blocks
    # again: the next entry wakes it as before. What waits for the log (a
    # snapshot's cut, an install, STOP) waits at most one window longer.
    behind = 0.0

    def __init__(self, directory: str, label: str, fsync: str, metrics, failstop):
        self.directory = directory
        self.label = label
        self.fsync = fsync
        self.metrics = metrics
        self.failstop = failstop
        self.log: LogFile | None = None
        # counter -> records this process appended to each log it closed
        # (Admin.Files counts them without reading the file).
        self.closed: dict[int, int] = {}
        self.durable_seq = 0     # last sequence number logged under the fsync policy

    def run(self, to_log: queue.SimpleQueue) -> None:
        affinity.unpin_this_thread()   # fdatasync wakes it on the disk's CPU (affinity.py)
        get = to_log.get
        empty = to_log.empty
        encode_many = records.encode_many
        read = OP_READ
        failstop = self.failstop
        sync_each = self.fsync == "always"
        sync_group = self.fsync in ("always", "batch")
        everysec = self.fsync == "everysec"
        last_sync = time.monotonic()
        behind = self.behind
        windows = False      # entries behind the journal keep coming: write them by windows
        while True:
            if windows:
                time.sleep(behind)
                if empty():
                    windows = False
                    continue
                items = [get()]
            elif everysec:
                try:
                    first = get(timeout=max(0.0, 1.0 - (time.monotonic() - last_sync)))
                except queue.Empty:
                    self._sync_log()
                    last_sync = time.monotonic()
                    continue
                items = [first]
            else:
                items = [get()]
            if behind and not windows and _behind(items[0]):
                time.sleep(behind)
                windows = not empty()
            while not empty():
                items.append(get())
            done: list = []
            parts: list[bytes] = []
            count = 0
            for item in items:
                if item is STOP or type(item) is SnapshotMarker:
                    self._write_log(parts, count, done, sync=True)
                    parts, count, done = [], 0, []
                    if item is STOP:
                        if self.log is not None:
                            try:
                                self.log.close()
                            except OSError as e:
                                logger.error("%s: log: close failed: %s", self.label, e)
                        return
                    self._rotate_log(item)
                    continue
                if item.mutations and not failstop.failed:
                    recs = [(r.seq, r.op, r.key_text, r.value) for r in item.reqs if r.op != read]
                    if item.raft is not None:
                        recs.append(item.raft)
                    parts.append(encode_many(recs))
                    count += item.mutations
                done.append(item)
                if sync_each:
                    self._write_log(parts, count, done, sync=True)
                    parts, count, done = [], 0, []
            self._write_log(parts, count, done, sync=sync_group)
            if everysec and time.monotonic() - last_sync >= 1.0:
                self._sync_log()
                last_sync = time.monotonic()

    def _write_log(self, parts: list[bytes], count: int, done: list, sync: bool) -> None:
        if not done and not parts:
            return
        failstop = self.failstop
        verdict = None
        if not failstop.failed:
            lf = self.log
            good = lf.size             # its length after the last whole append
            syncing = False
            try:
                if parts:
                    lf.append(parts[0] if len(parts) == 1 else b"".join(parts), count)
                if sync and lf.dirty:
                    syncing = True
                    t0 = time.perf_counter()
                    lf.sync()
                    self.metrics.fsync.observe(time.perf_counter() - t0)
            except OSError as e:
                verdict = self._write_failed(lf, good, syncing, e)
        if failstop.failed:
            # Batches of the failed write get its verdict; later ones were
            # never written (a definite refusal, as failstop.failed says).
            # (Not a replica's committed entry: its outcome is known, it is
            # durable on a majority and the applier answers it.)
            message = f"{self.label}: {verdict or failstop.failed}"
            for batch in done:
                if batch.waits_for_log:
                    batch.error = (UNAVAILABLE, message)
        elif done:
            self.durable_seq = done[-1].seq
        for batch in done:
            if batch.waits_for_log:
                batch.stage_done()

    def _write_failed(self, lf: LogFile, good: int, syncing: bool, e: OSError) -> str:
        """Fail-stop after a failed append or fsync; return what the replies
        of that write must say.

        The map may now hold effects the log does not, so the node answers
        nothing until it restarts from disk. A failed append is cut back to
        the log's last good length: if that cut is durable, no part of the
        write can survive (a definite refusal). If the cut fails, or the
        append was whole and its fsync failed, the records may or may not be
        on disk after a restart: the outcome is unknown, and the reply says so.
        """
        what = f"log: cannot {'fsync' if syncing else 'write'} {lf.path}: {e.strerror or e}"
        self.failstop.fail(f"{what}; the node refuses requests until it is restarted with the "
                           f"disk fixed")
        if not syncing:
            try:
                lf.rollback(good)
            except OSError as e2:
                logger.error("%s: log: cannot cut %s back to %d bytes after the failed "
                             "write: %s", self.label, lf.path, good, e2.strerror or e2)
            else:
                return (f"{what}; not applied; safe to retry (the node refuses requests "
                        f"until it is restarted with the disk fixed)")
        return (f"{what}; outcome unknown: the write may or may not be there after the node "
                f"restarts -- read the key then before retrying")

    def _sync_log(self) -> None:
        try:
            self.log.sync()
        except OSError as e:
            self.failstop.fail(f"log: fsync of {self.log.path} failed: {e.strerror}; the node "
                               f"refuses requests until it is restarted with the disk fixed")

    def _rotate_log(self, marker: SnapshotMarker) -> None:
        if self.failstop.failed:
            # Never rotate past a failed log: log.(X-1) may end torn, and a
            # log.X after it would make that tail look like corruption.
            marker.rotated.set()
            return
        path = os.path.join(self.directory, files.log_name(marker.counter))
        try:
            try:
                new = LogFile(self.directory, marker.counter)
            except OSError as e:
                if os.path.exists(path):     # created, then its directory entry not synced
                    raise
                # No new file (no space, no inode, a quota): log.(X-1) is whole and
                # still open, so only this snapshot fails; the node keeps appending.
                marker.error = (f"snapshot: snap.{marker.counter} not written: cannot create "
                                f"log.{marker.counter}: {e.strerror}; the node goes on "
                                f"writing {self.log.path} -- free space and take a "
                                f"snapshot again")
                logger.error("%s: %s", self.label, marker.error)
                return
            try:
                self.log.close()
            except OSError:
                new.close()
                os.unlink(path)      # never leave a log.X after a log that may end torn
                raise
            self.closed[self.log.counter] = self.log.records
            self.log = new
            if marker.head:
                # ring.replicas > 1: where each group stood at the cut, durable
                # before snap.X can be written (recovery.py reads it back).
                self.log.append(records.encode_many(marker.head), len(marker.head))
                self.log.sync()
        except OSError as e:
            self.failstop.fail(f"log: cannot rotate to log.{marker.counter}: {e.strerror}; the "
                               f"node refuses requests until it is restarted with the disk "
                               f"fixed")
        finally:
            marker.rotated.set()


def _behind(item) -> bool:
    """A replica's committed entry: written behind its journal, nobody waits."""
    return getattr(item, "waits_for_log", True) is False     # only an OwnedBatch's can be
