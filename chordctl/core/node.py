"""One node's pipeline: queues F1..F4 and the threads between them.

    queue              name            consumer thread   what flows
    F1  self.incoming  receivers ->    dispatcher        lists of Requests, markers
    F2  self.to_log    dispatcher ->   log-writer        OwnedBatch, markers
    F3  self.to_apply  dispatcher ->   applier           OwnedBatch, markers
    F4  self.to_route  dispatcher ->   router            lists of foreign Requests
        self.to_snap   applier ->      snapshot-writer   frozen captures

The dispatcher drains F1 into one batch, gives each owned mutation a sequence
number, and puts the same OwnedBatch into F2 and F3 (so the log and the map
see the same order). The log writer appends a batch's mutations with one
write and, under ``batch``/``always``, one fsync, then marks it logged; the
applier applies it in order and marks it applied. Whichever finishes second
completes the batch: a request is answered only when it is applied AND every
mutation up to it is durable (reads included, so a read never returns a
value that a crash could still take away).

A snapshot is a marker that travels the same path: at the marker the log
writer closes ``log.(X-1)`` and opens ``log.X``, and the applier freezes the
map (copy-on-write, O(chunks)) and hands it to the snapshot writer. The cut is
therefore exact. The snapshot writer starts ``snap.X`` only once the log writer
has rotated, so on disk too ``snap.X`` never holds an operation that
``log.(X-1)`` lacks.

A scan or a count is a ReadMarker on the same path: the applier freezes the
map (or just counts it) after every earlier request, and, like a read, the
marker completes only when every mutation before it is durable, so a scan
never lists a value that a crash could still take away. The scan itself then
reads the frozen chunks outside the pipeline threads.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from typing import Callable

from chordctl.config import Config
from chordctl.core import affinity
from chordctl.core import request as rq
from chordctl.core.request import Request
from chordctl.core.metrics import NodeMetrics
from chordctl.core.ring import Ring
from chordctl.core.storage import files, identity, recovery, records, snapshot
from chordctl.core.storage.lock import DirectoryLock
from chordctl.core.storage.log import LogFile
from chordctl.core.store import Store

logger = logging.getLogger("chordctl.node")

_STOP = object()
DRAIN_LIMIT = 4096           # F1 items merged into one batch at most
JOIN_TIMEOUT = 10.0

Complete = Callable[[list[Request]], None]


class OwnedBatch:
    """Requests this node owns, in F1 order; completed after log and apply."""

    __slots__ = ("reqs", "mutations", "seq", "_pending", "_lock", "error", "_node")

    def __init__(self, reqs: list[Request], mutations: int, seq: int, node: "Node",
                 stages: int = 2):
        self.reqs = reqs
        self.mutations = mutations
        self.seq = seq               # last sequence number given when it was dispatched
        self._pending = stages
        # One stage (reads the applier alone answers) needs no lock.
        self._lock = threading.Lock() if stages > 1 else None
        self.error: tuple[int, str] | None = None
        self._node = node

    def stage_done(self) -> None:
        if self._lock is None:
            self._node._complete_owned(self)
            return
        with self._lock:
            self._pending -= 1
            last = self._pending == 0
        if last:
            self._node._complete_owned(self)


class SnapshotMarker:
    """Travels F1 -> F2/F3; see the module docstring."""

    __slots__ = ("force", "counter", "last_seq", "on_done", "skipped", "result", "error",
                 "rotated", "seconds", "capture_ms")

    def __init__(self, force: bool, on_done: Callable[["SnapshotMarker"], None] | None = None):
        self.force = force
        self.counter = 0
        self.last_seq = 0
        # Set by the log writer once log.(X-1) is closed and fsynced and log.X
        # exists; snap.X waits for it (see _snapshot_loop).
        self.rotated = threading.Event()
        self.on_done = on_done
        self.skipped = False
        self.result: tuple[str, int, int] | None = None   # (path, bytes, keys)
        self.seconds = 0.0       # writing snap.X (snapshot-writer thread)
        self.capture_ms = 0.0    # freezing the map (applier thread, on the request path)
        self.error: str | None = None

    def finish(self) -> None:
        if self.on_done is not None:
            self.on_done(self)


class ReadMarker:
    """A point-in-time read of the whole map (scan, count): F1 -> F3, and F2 too
    when a mutation before it is not durable yet. Completes like an OwnedBatch
    without mutations (the log writer treats it as one)."""

    __slots__ = ("freeze", "seq", "mutations", "reqs", "error", "chunks", "keys", "on_done",
                 "_pending", "_lock")

    def __init__(self, freeze: bool, on_done: Callable[["ReadMarker"], None]):
        self.freeze = freeze          # capture the chunks (scan), or only count (count)
        self.seq = 0                  # the view holds every mutation up to this one
        self.mutations = 0
        self.reqs = ()
        self.error: tuple[int, str] | None = None
        self.chunks: list | None = None
        self.keys = 0
        self.on_done = on_done
        self._pending = 1
        self._lock: threading.Lock | None = None

    def stage_done(self) -> None:
        if self._lock is not None:
            with self._lock:
                self._pending -= 1
                if self._pending:
                    return
        if self.error:
            self.chunks = None
        self.on_done(self)


class Node:
    """Pipeline of one ring node. recover(), then start(complete), then stop()."""

    def __init__(self, config: Config, index: int, store: Store | None = None):
        self.config = config
        self.index = index
        self.ring = Ring(config.ring.bits, len(config.nodes), config.ring.placement,
                         config.ring.routing)
        self.node_id = self.ring.ids[index]
        self.identity = identity.RingIdentity.of(self.ring, index)
        self.label = f"node {index} (id {self.node_id})"
        self.directory = config.node_dir(index)
        self.fsync = config.storage.fsync
        self.store = store if store is not None else Store()
        self.incoming: queue.SimpleQueue = queue.SimpleQueue()   # F1
        self.to_log: queue.SimpleQueue = queue.SimpleQueue()     # F2
        self.to_apply: queue.SimpleQueue = queue.SimpleQueue()   # F3
        self.to_route: queue.SimpleQueue = queue.SimpleQueue()   # F4
        self.to_snap: queue.SimpleQueue = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._complete: Complete | None = None
        self._router = None
        self._stopping = threading.Event()
        self._snap_busy = threading.Lock()
        self.report: recovery.RecoveryReport | None = None
        self.seq = 0                   # last sequence number given (dispatcher)
        self.durable_seq = 0           # last one logged under the fsync policy (log writer)
        self._seq_at_snapshot = 0      # dispatcher: seq covered by the last snapshot
        self._next_counter = 0
        self.log: LogFile | None = None
        self.lock: DirectoryLock | None = None   # held from recover() to stop()
        self.snapshot_counter = 0      # newest snap.X written or recovered
        self.failed: str | None = None  # set by fail() when the log cannot be written
        self.on_failed: list[Callable[[str], None]] = []   # called once, from fail()
        self.metrics = NodeMetrics()
        self.started_at = time.time()
        self.recovery_seconds = 0.0
        self.ready_seconds = 0.0        # process start -> serving (set by the server)

    # -- life cycle ---------------------------------------------------------

    def recover(self) -> recovery.RecoveryReport:
        """Lock the directory, check its ring identity, replay snapshot and logs.

        Must run before start(). Refuses (RingMismatchError, exit 2) a
        directory written under another ring, and DirectoryLockedError when
        another process holds it; the lock is kept until stop().
        """
        created = files.makedirs_durable(self.directory)
        if created:
            logger.info("%s: created %s", self.label, ", ".join(created))
        self.lock = DirectoryLock(self.directory).acquire()
        try:
            return self._recover_locked()
        except BaseException:
            self.lock.release()
            raise

    def _recover_locked(self) -> recovery.RecoveryReport:
        t0 = time.monotonic()
        expected = self.identity
        recorded = identity.read(self.directory)
        if recorded is not None and identity.differences(recorded.identity, expected) \
                and not identity.holds_data(self.directory):
            logger.warning("%s: %s was stamped for %s but holds no data; it is stamped for "
                           "this ring instead", self.label, self.directory,
                           recorded.identity.describe())
            recorded = None
        if recorded is not None:
            identity.check(recorded.identity, expected, self.directory, recorded.adopted)
        mine = self.ring.key_test(self.index)
        foreign: list[int] = []
        check_key = None
        if self.ring.n > 1:
            def check_key(path: str, key: int) -> None:
                if not mine(key):
                    foreign.append(key)
        report = recovery.recover(self.directory, self.store,   # reads only
                                  check_key=check_key)
        snap_identity = None
        if report.snapshot:
            snap_path = os.path.join(self.directory, files.snap_name(report.snapshot))
            snap_identity = snapshot.read_info(snap_path).identity
            if snap_identity is not None:
                identity.check(snap_identity, expected, snap_path)
        if self.ring.n > 1:
            if snap_identity is None or recorded is None:
                # Keys nobody vouches for (a CHSNAP1 snapshot, or a directory from
                # before IDENTITY existed): check every one of them.
                count, first = identity.foreign_keys((k for k, _ in self.store.items()), mine)
            else:
                count, first = len(foreign), foreign[:5]
            if count:
                raise identity.foreign_keys_error(self.directory, self.ring, self.index,
                                                  count, first)
        recovery.repair(self.directory, report)   # keeps copies, logs what it did
        if recorded is None:
            data = bool(report.snapshot or report.records)
            path = identity.write(self.directory, expected, adopted=data)
            if data:
                logger.warning(
                    "%s: %s had no ring identity (written by an older chordctl); every one "
                    "of its %d keys lies in this node's arc, so it is adopted as %s: wrote %s",
                    self.label, self.directory, report.keys, expected.describe(), path)
            else:
                logger.info("%s: wrote %s (ring %s)", self.label, path, expected.fingerprint)
        self.report = report
        self.recovery_seconds = time.monotonic() - t0
        self.seq = report.last_seq
        self.durable_seq = report.last_seq
        self._seq_at_snapshot = report.last_seq if not report.records else -1
        self.snapshot_counter = report.snapshot or 0
        self._next_counter = report.current_log   # dispatcher: last counter handed out
        self.log = LogFile(self.directory, report.current_log)
        logger.info(
            "%s recovered %d keys in %.3fs (snapshot %s, %d log records from %s%s)",
            self.label, report.keys, time.monotonic() - t0,
            f"snap.{report.snapshot}" if report.snapshot else "none", report.records,
            ", ".join(f"log.{c}" for c, _ in report.logs) or "no logs",
            f", torn tail of {report.torn_bytes} bytes dropped" if report.torn_bytes else "")
        return report

    def start(self, complete: Complete, router=None) -> None:
        """Start the threads; *complete* is called with finished requests."""
        if self.log is None:
            raise RuntimeError("node: recover() must run before start()")
        self._complete = complete
        self._router = router
        for name, target in (("dispatcher", self._dispatch_loop),
                             ("log-writer", self._log_loop),
                             ("applier", self._apply_loop),
                             ("router", self._route_loop),
                             ("snapshot-writer", self._snapshot_loop)):
            t = threading.Thread(target=target, name=f"{name}-{self.index}", daemon=True)
            t.start()
            self._threads.append(t)
        interval = self.config.storage.snapshot_interval
        if interval > 0:
            t = threading.Thread(target=self._timer_loop, args=(interval,),
                                 name=f"snapshot-timer-{self.index}", daemon=True)
            t.start()
            self._threads.append(t)

    def submit(self, reqs: list[Request]) -> None:
        """Receivers: put one list of requests into F1."""
        self.incoming.put(reqs)

    def request_snapshot(self, force: bool,
                         on_done: Callable[[SnapshotMarker], None] | None = None) -> None:
        self.incoming.put(SnapshotMarker(force, on_done))

    def request_read(self, marker: ReadMarker) -> None:
        """A scan's or count's point-in-time view; marker.on_done gets it (any thread)."""
        self.incoming.put(marker)

    def stop(self, final_snapshot: bool = True) -> None:
        """Drain the pipeline in order, fsync and close the log, join threads.

        With *final_snapshot* (a clean shutdown) a snapshot is taken first if
        anything changed since the last one, so the next start loads it
        instead of replaying the log.
        """
        if self._stopping.is_set():
            return
        self._stopping.set()
        if final_snapshot and self._threads:
            self.request_snapshot(force=False)
        self.incoming.put(_STOP)
        for t in self._threads:
            t.join(JOIN_TIMEOUT)
            if t.is_alive():
                logger.error("%s: thread %s did not stop in %.0fs", self.label, t.name,
                             JOIN_TIMEOUT)
        if self.lock is not None and not any(t.is_alive() for t in self._threads):
            self.lock.release()

    def fail(self, reason: str) -> None:
        """Fail-stop: refuse every request from now on and tell the listeners.

        Called from the pipeline's threads; listeners must be quick and
        thread-safe (the server uses one to set health to NOT_SERVING)."""
        if self.failed:
            return
        self.failed = reason
        logger.error("%s: %s", self.label, reason)
        for listener in self.on_failed:
            try:
                listener(reason)
            except Exception:
                logger.exception("%s: on_failed listener raised", self.label)

    # -- F1: dispatcher -------------------------------------------------------

    def _dispatch_loop(self) -> None:
        get = self.incoming.get
        empty = self.incoming.empty
        mine = self.ring.key_test(self.index)
        while True:
            items = [get()]
            while len(items) < DRAIN_LIMIT and not empty():
                items.append(get())
            owned: list[Request] = []
            foreign: list[Request] = []
            mutations = 0
            seq = self.seq
            for item in items:
                if item is _STOP:
                    self.seq = seq
                    self._flush_owned(owned, mutations)
                    if foreign:
                        self.to_route.put(foreign)
                    for q in (self.to_log, self.to_apply, self.to_route):
                        q.put(_STOP)
                    return
                if type(item) is not list:    # SnapshotMarker or ReadMarker
                    self.seq = seq
                    self._flush_owned(owned, mutations)
                    owned, mutations = [], 0
                    if type(item) is ReadMarker:
                        self._dispatch_read(item)
                    else:
                        self._dispatch_marker(item)
                    continue
                for r in item:
                    if mine(r.key):
                        if r.op != rq.OP_READ:
                            seq += 1
                            r.seq = seq
                            mutations += 1
                        owned.append(r)
                    else:
                        foreign.append(r)
            self.seq = seq
            self._flush_owned(owned, mutations)
            if foreign:
                self.to_route.put(foreign)

    def _flush_owned(self, owned: list[Request], mutations: int) -> None:
        if not owned:
            return
        if mutations == 0 and self.durable_seq >= self.seq:
            # Reads only, and every mutation before them is already durable:
            # nothing for the log writer to wait for, so only the applier.
            self.to_apply.put(OwnedBatch(owned, 0, self.seq, self, stages=1))
            return
        batch = OwnedBatch(owned, mutations, self.seq, self)
        self.to_log.put(batch)
        self.to_apply.put(batch)

    def _dispatch_read(self, marker: ReadMarker) -> None:
        if self.failed:
            marker.error = (rq.UNAVAILABLE, f"{self.label}: {self.failed}")
            marker.on_done(marker)
            return
        marker.seq = self.seq
        if self.durable_seq >= self.seq:
            self.to_apply.put(marker)
            return
        marker._pending = 2
        marker._lock = threading.Lock()
        self.to_log.put(marker)
        self.to_apply.put(marker)

    def _dispatch_marker(self, marker: SnapshotMarker) -> None:
        if self.failed:
            marker.error = self.failed
            marker.finish()
            return
        if self.seq == self._seq_at_snapshot and not marker.force:
            marker.skipped = True
            marker.counter = self.snapshot_counter
            marker.finish()
            return
        if not self._snap_busy.acquire(blocking=False):
            marker.skipped = True
            marker.error = "a snapshot is already being written; try again when it is done"
            marker.finish()
            return
        self._seq_at_snapshot = self.seq
        self._next_counter += 1
        marker.counter = self._next_counter
        marker.last_seq = self.seq
        self.to_log.put(marker)
        self.to_apply.put(marker)

    # -- F2: log writer -------------------------------------------------------

    def _log_loop(self) -> None:
        affinity.unpin_this_thread()   # fdatasync wakes it on the disk's CPU (affinity.py)
        get = self.to_log.get
        empty = self.to_log.empty
        encode_many = records.encode_many
        read = rq.OP_READ
        sync_each = self.fsync == "always"
        sync_group = self.fsync in ("always", "batch")
        everysec = self.fsync == "everysec"
        last_sync = time.monotonic()
        while True:
            if everysec:
                try:
                    first = get(timeout=max(0.0, 1.0 - (time.monotonic() - last_sync)))
                except queue.Empty:
                    self._sync_log()
                    last_sync = time.monotonic()
                    continue
                items = [first]
            else:
                items = [get()]
            while not empty():
                items.append(get())
            done: list[OwnedBatch] = []
            parts: list[bytes] = []
            count = 0
            for item in items:
                if item is _STOP or type(item) is SnapshotMarker:
                    self._write_log(parts, count, done, sync=True)
                    parts, count, done = [], 0, []
                    if item is _STOP:
                        if self.log is not None:
                            try:
                                self.log.close()
                            except OSError as e:
                                logger.error("%s: log: close failed: %s", self.label, e)
                        return
                    self._rotate_log(item)
                    continue
                if item.mutations and not self.failed:
                    parts.append(encode_many(
                        [(r.seq, r.op, r.key_text, r.value) for r in item.reqs if r.op != read]))
                    count += item.mutations
                done.append(item)
                if sync_each:
                    self._write_log(parts, count, done, sync=True)
                    parts, count, done = [], 0, []
            self._write_log(parts, count, done, sync=sync_group)
            if everysec and time.monotonic() - last_sync >= 1.0:
                self._sync_log()
                last_sync = time.monotonic()

    def _write_log(self, parts: list[bytes], count: int, done: list[OwnedBatch],
                   sync: bool) -> None:
        if not done and not parts:
            return
        verdict = None
        if not self.failed:
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
        if self.failed:
            # Batches of the failed write get its verdict; later ones were
            # never written (a definite refusal, as self.failed says).
            message = f"{self.label}: {verdict or self.failed}"
            for batch in done:
                batch.error = (rq.UNAVAILABLE, message)
        elif done:
            self.durable_seq = done[-1].seq
        for batch in done:
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
        self.fail(f"{what}; the node refuses requests until it is restarted with the disk "
                  f"fixed")
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
            self.fail(f"log: fsync of {self.log.path} failed: {e.strerror}; the node refuses "
                      f"requests until it is restarted with the disk fixed")

    def _rotate_log(self, marker: SnapshotMarker) -> None:
        if self.failed:
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
            self.log = new
        except OSError as e:
            self.fail(f"log: cannot rotate to log.{marker.counter}: {e.strerror}; the node "
                      f"refuses requests until it is restarted with the disk fixed")
        finally:
            marker.rotated.set()

    # -- F3: applier ----------------------------------------------------------

    def _apply_loop(self) -> None:
        get = self.to_apply.get
        apply = self.store.apply
        while True:
            item = get()
            if item is _STOP:
                self.to_snap.put(_STOP)
                return
            if type(item) is not OwnedBatch:
                if type(item) is ReadMarker:
                    item.keys = len(self.store)
                    if item.freeze:
                        item.chunks = self.store.freeze()
                    item.stage_done()
                    continue
                t0 = time.perf_counter()
                chunks = self.store.freeze()
                item.capture_ms = (time.perf_counter() - t0) * 1e3
                self.to_snap.put((item, chunks))
                continue
            for r in item.reqs:
                r.code, r.result = apply(r.op, r.key, r.value)
            item.stage_done()

    def _complete_owned(self, batch: OwnedBatch) -> None:
        idx = self.index
        nid = str(self.node_id)
        reqs = batch.reqs
        if batch.error:
            code, message = batch.error
            for r in reqs:
                r.code, r.message, r.result = code, message, None
        for r in reqs:
            r.node_index = idx
            r.node_id = nid
        self.metrics.served(reqs)
        self._complete(reqs)

    # -- F4: router -----------------------------------------------------------

    def _route_loop(self) -> None:
        get = self.to_route.get
        while True:
            item = get()
            if item is _STOP:
                if self._router is not None:
                    self._router.close()
                return
            if self._router is None:
                for r in item:
                    r.fail(rq.INTERNAL, f"{self.label}: no router configured")
                self._complete(item)
                continue
            try:
                self._router.forward(item)
            except Exception as e:  # never lose a request silently
                logger.exception("%s: router failed", self.label)
                for r in item:
                    r.fail(rq.INTERNAL, f"{self.label}: router error: {e}")
                self._complete(item)

    # -- snapshots ------------------------------------------------------------

    def _timer_loop(self, interval: float) -> None:
        while not self._stopping.wait(interval):
            self.request_snapshot(force=False)

    def _snapshot_loop(self) -> None:
        while True:
            item = self.to_snap.get()
            if item is _STOP:
                return
            marker, chunks = item
            # The applier can reach the marker before the log writer does: wait
            # until every record up to the cut is durable in log.(X-1), or a
            # crash could leave a snap.X holding operations that no log holds.
            marker.rotated.wait()
            if marker.error:
                # The log writer could not open log.X: nothing of this snapshot is
                # on disk, so the next one takes counter X again (the dispatcher
                # reads it only after it gets _snap_busy, released below).
                self._next_counter = marker.counter - 1
                self._seq_at_snapshot = -1
                self._snap_busy.release()
                marker.finish()
                continue
            if self.failed:
                marker.error = f"snapshot: snap.{marker.counter} not written: {self.failed}"
                self._snap_busy.release()
                marker.finish()
                continue
            try:
                t0 = time.monotonic()
                path, size = snapshot.write(self.directory, marker.counter, marker.last_seq,
                                            chunks, identity=self.identity)
                keys = sum(len(c) for c in chunks)
                self.snapshot_counter = marker.counter
                elapsed = time.monotonic() - t0
                self.metrics.snapshot.observe(elapsed)
                self.metrics.snapshot_bytes = size
                marker.result = (path, size, keys)
                marker.seconds = elapsed
                logger.info("%s: wrote %s (%d keys, %d bytes) in %.3fs", self.label, path, keys,
                            size, elapsed)
                self._prune(marker.counter)
            except OSError as e:
                marker.error = f"snapshot: cannot write snap.{marker.counter}: {e.strerror}"
                logger.error("%s: %s", self.label, marker.error)
            finally:
                self._snap_busy.release()
                marker.finish()

    def _prune(self, newest: int) -> None:
        """Keep the last 3 snapshots and the logs they need; only after newest is durable."""
        logs, snaps = files.list_counters(self.directory)
        keep_snaps = [s for s in snaps if s <= newest][-3:]
        oldest_snap = keep_snaps[0] if keep_snaps else 0
        # log.(X-2) .. log.X, and never a log that a kept snapshot still needs
        # (counters can skip after a crash between rotation and snapshot).
        oldest_log = min(oldest_snap, newest - 2)
        removed = False
        for s in snaps:
            if s < oldest_snap:
                os.unlink(os.path.join(self.directory, files.snap_name(s)))
                removed = True
        for c in logs:
            if c < oldest_log:
                os.unlink(os.path.join(self.directory, files.log_name(c)))
                removed = True
        if removed:
            files.fsync_dir(self.directory)
