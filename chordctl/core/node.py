"""One node's pipeline: queues F1..F4, the threads between them, the way back.

    queue              name            consumer thread   what flows
    F1  self.incoming  receivers ->    dispatcher        lists of Requests, markers
    F2  self.to_log    dispatcher ->   log-writer        OwnedBatch, markers (logwriter.py)
    F3  self.to_apply  dispatcher ->   applier           OwnedBatch, markers
    F4  self.to_route  dispatcher ->   router            lists of foreign Requests (router.py)
        self.to_snap   applier ->      snapshot-writer   frozen captures (snapshots.py)
        replies.send   answer step ->  event loop        answered Requests (Replies)

A request, from its handler (servicer.py) and back: the receiver, once
the node's Admission (gate.py) lets the call in, sets ``r.waiter`` and
calls ``submit``; the dispatcher drains F1 into one batch,
gives each owned mutation a sequence number, and puts the same OwnedBatch
into F2 and F3 (so the log and the map see the same order). The log writer
appends a batch's mutations with one write and, under ``batch``/``always``,
one fsync, then calls ``stage_done()``; the applier applies it in order and
calls ``stage_done()``. Whichever is second runs the answer step the batch
was given (``_answerer``): it stamps this node on the results and sends them
by the reply path, ``Replies.send``, which hops to the event loop once per
list, where ``wake`` resolves each waiter and the handler builds the reply.
A request is answered only when it is applied AND every mutation up to it
is durable (reads included, so a read never returns a value that a crash
could still take away). With ``ring.replicas`` > 1 durable means in the
raft journals of a majority, before an entry commits: a replica answers a
committed entry once applied, and ``log.X`` is written behind (replica.py;
there a scan's or count's view goes to F3 alone: what it sees is durable).
Foreign requests leave by F4; the router answers them by the same Replies
(server.py builds it and hands it to both).

A snapshot is a marker that travels the same path: at the marker the log
writer closes ``log.(X-1)`` and opens ``log.X``, and the applier freezes the
map (copy-on-write, O(chunks)) and hands it to the snapshot writer. The cut is
therefore exact. The snapshot writer starts ``snap.X`` only once the log writer
has rotated, so on disk too ``snap.X`` never holds an operation that
``log.(X-1)`` lacks.

A scan or a count is a ReadMarker on the same path: the applier freezes the
map (or just counts it) after every earlier request, and, like a read, the
marker completes only when every mutation before it is durable, so a scan
never lists a value that a crash could still take away. A marker a handler
waits for comes back by the same Replies (its on_done sends it, its waiter
is woken). The scan itself then reads the frozen chunks outside the
pipeline threads.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from typing import Callable

from chordctl.config import Config
from chordctl.core import snapshots
from chordctl.core.logwriter import LogWriter
from chordctl.core.markers import STOP, ReadMarker, SnapshotMarker
from chordctl.core.request import Request
from chordctl.core.metrics import NodeMetrics
from chordctl.core.membership import Members, Membership
from chordctl.core.ring import Ring
from chordctl.core.snapshots import SnapshotWriter
from chordctl.core.storage import files, identity, recovery, snapshot
from chordctl.core.storage.lock import DirectoryLock
from chordctl.core.storage.log import LogFile
from chordctl.core.store import Store
from chordctl.protocol import INTERNAL, OP_READ, UNAVAILABLE

logger = logging.getLogger("chordctl.node")

# A node whose entry peers' views keep moving elsewhere shares its index with
# another process (Members.pin): this many times within this many seconds.
CLAIMS_BEFORE_FAIL = 3
CLAIMS_WITHIN = 60.0

DRAIN_LIMIT = 4096           # F1 items merged into one batch at most
JOIN_TIMEOUT = 10.0

__all__ = ["Node", "Replies", "OwnedBatch", "ReadMarker", "SnapshotMarker"]


class Replies:
    """The reply path: finished requests -> the receivers waiting for them.

    Built where the server wires a node (server.py) and given to the Node and
    its Router. ``send(reqs)`` is called from the pipeline's threads and from
    the router thread; ``deliver(reqs)`` where the caller is already on the
    event loop (the router's calls). Over an event loop (``Replies.over``),
    send hops to the loop once per list and deliver wakes each request's
    ``waiter`` (an asyncio future, or the servicer's _BatchWaiter). A scan's,
    count's or TakeSnapshot's marker comes back the same way: its on_done
    sends it, and its waiter is woken. Tests build one from two plain callables.
    """

    __slots__ = ("send", "deliver")

    def __init__(self, send: Callable[[list[Request]], None],
                 deliver: Callable[[list[Request]], None]):
        self.send = send
        self.deliver = deliver

    @classmethod
    def over(cls, loop) -> "Replies":
        """The reply path of a served node: one hop to *loop*, then wake the waiters."""
        call = loop.call_soon_threadsafe

        def send(reqs: list[Request]) -> None:
            call(wake, reqs)

        return cls(send, wake)


def wake(reqs: list[Request]) -> None:
    """On the event loop: wake every receiver waiting for *reqs*."""
    for r in reqs:
        w = r.waiter
        if not w.done():
            w.set_result(r)


class OwnedBatch:
    """Requests this node owns, in F1 order; answered after log and apply.

    Each stage (the log writer, the applier) calls ``stage_done()``; the last
    one calls *on_done* (the node's answer step, given by the dispatcher).
    A replica's committed entry (``waits_for_log=False``) is answered once
    applied: the log writer writes it behind the raft journal.
    """

    __slots__ = ("reqs", "mutations", "seq", "_pending", "_lock", "error", "_on_done", "raft",
                 "waits_for_log")

    def __init__(self, reqs: list[Request], mutations: int, seq: int,
                 on_done: Callable[["OwnedBatch"], None], stages: int = 2,
                 raft: tuple | None = None, waits_for_log: bool = True):
        self.reqs = reqs
        self.mutations = mutations   # log records it adds (its raft record included)
        self.seq = seq               # last sequence number given when it was dispatched
        # ring.replicas > 1: the raft record closing its entry (records.raft_record)
        self.raft = raft
        # False: the log writer writes it, but its answer does not wait for
        # that, and *stages* counts the applier alone (ring.replicas > 1: the
        # raft journal made it durable on a majority before it committed).
        self.waits_for_log = waits_for_log
        self._pending = stages
        # One stage (reads the applier alone answers) needs no lock.
        self._lock = threading.Lock() if stages > 1 else None
        self.error: tuple[int, str] | None = None
        self._on_done = on_done

    def stage_done(self) -> None:
        if self._lock is None:
            self._on_done(self)
            return
        with self._lock:
            self._pending -= 1
            last = self._pending == 0
        if last:
            self._on_done(self)


class Node:
    """Pipeline of one ring node. recover(), then start(), then stop().

    *replies* is the reply path every answered request leaves by (required
    by start(); a node that only recovers needs none).
    """

    def __init__(self, config: Config, index: int, replies: Replies | None = None):
        self.config = config
        self.index = index
        # Where every node is (membership.py): the config's until recover()
        # reads the directory's; routing reads it at use, never a copy.
        self.membership = Members(Membership.from_config(config))
        self.membership_fresh = False   # recover(): the directory recorded no membership
        self._claims: list[float] = []  # when peers' views had this node elsewhere
        self.node_id = self.ring.ids[index]
        self.identity = identity.RingIdentity.of(self.ring, index)
        self.label = f"node {index} (id {self.node_id})"
        self.directory = config.node_dir(index)
        self.replicated = False        # ReplicatedNode: mutations come in Raft entries
        self.fsync = config.storage.fsync
        self.store = Store()
        self.incoming: queue.SimpleQueue = queue.SimpleQueue()   # F1
        self.to_log: queue.SimpleQueue = queue.SimpleQueue()     # F2
        self.to_apply: queue.SimpleQueue = queue.SimpleQueue()   # F3
        self.to_route: queue.SimpleQueue = queue.SimpleQueue()   # F4
        self.to_snap: queue.SimpleQueue = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self.replies = replies
        self._router = None
        self._stopping = threading.Event()
        self.report: recovery.RecoveryReport | None = None
        self.seq = 0                   # last sequence number given (dispatcher)
        self._seq_at_snapshot = 0      # dispatcher: seq covered by the last snapshot
        self._next_counter = 0
        self.lock: DirectoryLock | None = None   # held from recover() to stop()
        self.writes_pid_file = False   # `node serve`: node.pid beside the lock (lock.py)
        self.failed: str | None = None  # set by fail() when the log cannot be written
        self.on_failed: list[Callable[[str], None]] = []   # called once, from fail()
        self.metrics = NodeMetrics()
        # F2's consumer and the snapshot machinery; both fail-stop through self.
        self.writer = LogWriter(self.directory, self.label, self.fsync, self.metrics, self)
        self.snapshots = SnapshotWriter(self.directory, self.label, self.identity,
                                        self.metrics, self)
        self.started_at = time.time()
        self.recovery_seconds = 0.0
        self.ready_seconds = 0.0        # process start -> serving (set by the server)

    @property
    def ring(self) -> Ring:
        """The ring of the current membership (its shape never changes live)."""
        return self.membership.current.ring

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
        self.lock = DirectoryLock(self.directory, pid_file=self.writes_pid_file).acquire()
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
        addresses = tuple(n.address for n in self.config.nodes)
        if recorded is not None:
            if recorded.identity.fingerprint == expected.fingerprint and recorded.epoch == 1:
                # Another ring of this shape first: only then is another index
                # this ring's other node's directory (a fingerprint that differs
                # fails check() below, as it always did). (A ring whose nodes
                # moved while it ran, epoch > 1, may share no address with a
                # config of before; its membership is checked at join.)
                identity.check_addresses(recorded, addresses, self.directory)
            identity.check(recorded.identity, expected, self.directory, recorded.adopted,
                           node_dir=self.config.node_dir)
        mine = self.holds_key_test()
        foreign: list[int] = []

        def check_key(path: str, key: int) -> None:
            if not mine(key):
                foreign.append(key)

        report = recovery.recover(self.directory, self.store,   # reads only
                                  check_key=check_key if self.ring.n > 1 else None,
                                  replicated=self.replicated)
        snap_identity = None
        if report.snapshot:
            snap_path = os.path.join(self.directory, files.snap_name(report.snapshot))
            snap_identity = snapshot.read_info(snap_path).identity
            if snap_identity is not None:
                identity.check(snap_identity, expected, snap_path,
                               node_dir=self.config.node_dir)
        if self.ring.n > 1:
            if snap_identity is None or recorded is None:
                # Keys nobody vouches for (a CHSNAP1 snapshot, or a directory from
                # before IDENTITY existed): check every one of them.
                count, first = identity.foreign_keys((k for k, _ in self.store.items()), mine)
            else:
                count, first = len(foreign), foreign[:5]
            if count:
                raise identity.foreign_keys_error(
                    self.directory, self.ring, self.index, count, first,
                    hint=identity.REPLICATED_HINT if self.replicated else identity.MIGRATE_HINT)
        recovery.repair(self.directory, report)   # keeps copies, logs what it did
        view = self._membership_from(recorded)

        adopted = recorded is not None and recorded.adopted
        created = recorded.created or None if recorded is not None else None

        def persist(m: Membership) -> None:
            identity.write(self.directory, expected, adopted, m.addresses, created,
                           m.epoch, m.since)

        if recorded is not None and recorded.addresses is None:
            persist(view)     # a file of before addresses were recorded: the config's
        # (A move of this node is persisted by join() once it checked that no
        # other process still answers as this node where the ring has it.)
        self.membership.restore(view, persist)
        self.membership.pin(self.index, self.config.node(self.index).address, self._claimed)
        if recorded is None:
            data = bool(report.snapshot or report.records)
            path = identity.write(self.directory, expected, adopted=data, addresses=addresses,
                                  epoch=view.epoch, since=view.since)
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
        self.writer.durable_seq = report.last_seq
        self._seq_at_snapshot = report.last_seq if not report.records else -1
        self.snapshots.counter = report.snapshot or 0
        self._next_counter = report.current_log   # dispatcher: last counter handed out
        self.writer.log = LogFile(self.directory, report.current_log)
        logger.info(
            "%s recovered %d keys in %.3fs (snapshot %s, %d log records from %s%s)",
            self.label, report.keys, time.monotonic() - t0,
            f"snap.{report.snapshot}" if report.snapshot else "none", report.records,
            ", ".join(f"log.{c}" for c, _ in report.logs) or "no logs",
            f", torn tail of {report.torn_bytes} bytes dropped" if report.torn_bytes else "")
        return report

    def _membership_from(self, recorded: identity.IdentityFile | None) -> Membership:
        """The membership the directory recorded (the config's for one that
        recorded none: ``membership_fresh``). Where this node listens now is
        join()'s (announce.py): the ring's view, then this node's move."""
        config_view = Membership.from_config(self.config)
        if recorded is None or recorded.addresses is None \
                or len(recorded.addresses) != config_view.n:
            self.membership_fresh = True     # the ring's view is asked at start (join)
            return config_view
        return Membership.from_config(self.config, recorded.epoch, recorded.addresses,
                                      recorded.since)

    def moved_to_config(self, view: Membership) -> Membership:
        """*view* with this node's own entry where the config says it listens
        (the next epoch if that moves it); the config's other entries are only
        compared, and logged."""
        config_view = Membership.from_config(self.config)
        me = self.index
        mine = config_view.address(me)
        if view.address(me) != mine:
            logger.info("%s: moved from %s to %s: membership epoch %d", self.label,
                        view.address(me), mine, view.epoch + 1)
            view = view.moved(me, mine)
        stale = [j for j in range(view.n) if j != me
                 and view.address(j) != config_view.address(j)]
        if stale:
            logger.warning(
                "%s: the config names %s, but the ring's membership (epoch %d) has %s; "
                "routing by the membership (each node tells its peers where it is); "
                "update the config to match",
                self.label, ", ".join(f"node {j} at {config_view.address(j)}" for j in stale),
                view.epoch, ", ".join(f"node {j} at {view.address(j)}" for j in stale))
        return view

    def _claimed(self, there: str, view: Membership) -> None:
        """A peer's view had this node at *there*: claimed back (Members.pin).
        Once is a tie this node's next epoch settles (a replacement that heard
        no peer at its start); again and again is another process claiming to
        be this node: fail-stop rather than split the arc between the two."""
        now = time.monotonic()
        self._claims = [t for t in self._claims if now - t < CLAIMS_WITHIN] + [now]
        logger.warning("%s: a peer's membership (epoch %d) has this node at %s; it listens "
                       "at %s and claims its entry back", self.label, view.epoch, there,
                       self.config.node(self.index).address)
        if len(self._claims) >= CLAIMS_BEFORE_FAIL:
            # Stop claiming (and, server.py, announcing): the other claim
            # settles the entry instead of both processes failing.
            self.membership.unpin()
            self.fail(f"another process claims to be node {self.index}, at {there} (the "
                      f"ring's membership moved this node there {len(self._claims)} times "
                      f"within {CLAIMS_WITHIN:.0f}s); two processes cannot both be one "
                      f"node: stop the one that should not run, then start this one again")

    def holds_key_test(self) -> Callable[[int], bool]:
        """Whether a key belongs in this node's map (its arc)."""
        return self.ring.key_test(self.index)

    @property
    def log(self) -> LogFile | None:
        """The current log.X (the log writer's; opened by recover())."""
        return self.writer.log

    @property
    def durable_seq(self) -> int:
        """The last sequence number logged under the fsync policy (the log writer's)."""
        return self.writer.durable_seq

    @property
    def snapshot_counter(self) -> int:
        """The newest snap.X written or recovered."""
        return self.snapshots.counter

    def start(self, router=None) -> None:
        """Start the threads: wire each queue to its consumer.

        *router* forwards what F4 carries (router.Router); without one,
        foreign requests are answered INTERNAL.
        """
        if self.log is None:
            raise RuntimeError("node: recover() must run before start()")
        if self.replies is None:
            raise RuntimeError("node: start() needs the reply path (Node(..., replies))")
        self._router = router
        self._answer = self._answerer()
        for name, target, source in (("dispatcher", self._dispatch_loop, None),
                                     ("log-writer", self.writer.run, self.to_log),
                                     ("applier", self._apply_loop, None),
                                     ("router", self._route_loop, None),
                                     ("snapshot-writer", self.snapshots.run, self.to_snap)):
            args = () if source is None else (source,)
            t = threading.Thread(target=target, args=args, name=f"{name}-{self.index}",
                                 daemon=True)
            t.start()
            self._threads.append(t)
        interval = self.config.storage.snapshot_interval
        if interval > 0:
            t = threading.Thread(target=snapshots.timer,
                                 args=(interval, self._stopping,
                                       lambda: self.request_snapshot(force=False)),
                                 name=f"snapshot-timer-{self.index}", daemon=True)
            t.start()
            self._threads.append(t)

    def submit(self, reqs: list[Request]) -> None:
        """Receivers: put one list of requests into F1."""
        self.incoming.put(reqs)

    def request_snapshot(self, force: bool,
                         on_done: Callable[[SnapshotMarker], None] | None = None,
                         waiter=None) -> None:
        """A snapshot's marker into F1; on_done gets it when written or skipped (any thread)."""
        self.incoming.put(SnapshotMarker(force, on_done, waiter))

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
        self.incoming.put(STOP)
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
                if item is STOP:
                    self.seq = seq
                    self._flush_owned(owned, mutations)
                    if foreign:
                        self.to_route.put(foreign)
                    for q in (self.to_log, self.to_apply, self.to_route):
                        q.put(STOP)
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
                        if r.op != OP_READ:
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
        if mutations == 0 and self.writer.durable_seq >= self.seq:
            # Reads only, and every mutation before them is already durable:
            # nothing for the log writer to wait for, so only the applier.
            self.to_apply.put(OwnedBatch(owned, 0, self.seq, self._answer, stages=1))
            return
        batch = OwnedBatch(owned, mutations, self.seq, self._answer)
        self.to_log.put(batch)
        self.to_apply.put(batch)

    def _dispatch_read(self, marker: ReadMarker) -> None:
        if self.failed:
            marker.error = (UNAVAILABLE, f"{self.label}: {self.failed}")
            marker.on_done(marker)
            return
        marker.seq = self.seq
        if self.writer.durable_seq >= self.seq:
            self.to_apply.put(marker)
            return
        marker.wait_for_log()
        self.to_log.put(marker)
        self.to_apply.put(marker)

    def _dispatch_marker(self, marker: SnapshotMarker) -> None:
        if self.failed:
            marker.error = self.failed
            marker.finish()
            return
        again = self.snapshots.unwritten is not None or self.snapshots.retry
        if self.seq == self._seq_at_snapshot and not marker.force and not again:
            marker.skipped = True
            marker.counter = self.snapshot_counter
            marker.finish()
            return
        if not self.snapshots.busy.acquire(blocking=False):
            marker.skipped = True
            marker.error = "a snapshot is already being written; try again when it is done"
            marker.finish()
            return
        if self.snapshots.unwritten is not None:
            # The last cut could not open its log.X: nothing of it is on disk,
            # so this one takes its counter again (read after taking busy,
            # which the writer released after setting it).
            self._next_counter = self.snapshots.unwritten - 1
            self.snapshots.unwritten = None
        self.snapshots.retry = False
        self._seq_at_snapshot = self.seq
        self._next_counter += 1
        marker.counter = self._next_counter
        marker.last_seq = self.seq
        self._cut(marker)
        self.to_log.put(marker)
        self.to_apply.put(marker)

    def _cut(self, marker: SnapshotMarker) -> None:
        """A snapshot marker is about to enter F2 and F3 (ReplicatedNode adds
        the raft records log.X starts with)."""

    # -- F2: log writer: logwriter.LogWriter.run (appends, fsync policy, rotation)

    # -- F3: applier ----------------------------------------------------------

    def _apply_loop(self) -> None:
        get = self.to_apply.get
        apply = self.store.apply
        while True:
            item = get()
            if item is STOP:
                self.to_snap.put(STOP)
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

    def _answerer(self) -> Callable[[OwnedBatch], None]:
        """The answer step every OwnedBatch is given: stamp this node on its
        results (or the batch's error), count them, and send them back."""
        idx = self.index
        nid = str(self.node_id)
        served = self.metrics.served
        send = self.replies.send

        def answer(batch: OwnedBatch) -> None:
            reqs = batch.reqs
            if batch.error:
                code, message = batch.error
                for r in reqs:
                    r.code, r.message, r.result = code, message, None
            for r in reqs:
                r.node_index = idx
                r.node_id = nid
            served(reqs)
            send(reqs)

        return answer

    # -- F4: router -----------------------------------------------------------

    def _route_loop(self) -> None:
        get = self.to_route.get
        while True:
            item = get()
            if item is STOP:
                if self._router is not None:
                    self._router.close()
                return
            if self._router is None:
                for r in item:
                    r.fail(INTERNAL, f"{self.label}: no router configured")
                self.replies.send(item)
                continue
            try:
                self._router.forward(item)
            except Exception as e:  # never lose a request silently
                logger.exception("%s: router failed", self.label)
                for r in item:
                    r.fail(INTERNAL, f"{self.label}: router error: {e}")
                self.replies.send(item)

    # -- snapshots: snapshots.SnapshotWriter.run and snapshots.timer
