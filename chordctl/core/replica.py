"""A node of a replicated ring (``ring.replicas: R > 1``): the pipeline with R.

    queue              name            consumer thread   what flows
    F1  self.incoming  receivers ->    dispatcher        lists of Requests, markers
    R   engine         dispatcher ->   replicator        one command per group (engine.py)
    F2  self.to_log    replicator ->   log-writer        committed entries, markers
    F3  self.to_apply  replicator ->   applier           committed entries, markers
    F4  self.to_route  dispatcher ->   router            requests of arcs it holds no copy of

Node *i* holds a replica of the arcs ``ring.groups_of(i, R)``: its own and
the R-1 before it. The dispatcher sorts what F1 brings by arc: requests of
an arc it holds become one command of that arc's group, handed to the
replicator (``Engine.submit``); the rest go to F4 and on to the arc's
replicas (router.py). A call of reads only goes to the replicator as a
read by confirmation (``Engine.read``, ``replication.reads: index``): the
arc's leader answers it from its map once a majority confirmed it still
leads; a follower, or a leader that cannot confirm it, puts it through the
log like a write. Either way a read is answered at a point after every
write acknowledged before it (linearizable; no lease, no clock).

The replicator (the engine's thread, ``chord-raft-<i>``; while it is between
rounds, the event loop may run a round for a peer's message, engine.py)
runs Raft for every group (PySyncObj; a follower's command goes to its
group's leader by Raft's own forwarding), one round at a time, and its
rounds are the only producer of F2 and F3: each committed entry,
in commit order, becomes an OwnedBatch with its sequence numbers and the
raft record that closes it in ``log.X``; markers (snapshots, scans) take
their place between entries in the engine thread's rounds, so the log and the map
still see one order. The node that submitted a command answers its requests
once the entry is applied here (F3): committed, it is durable in the
journals of a majority, and ``log.X`` is written behind them (F2, with no
answer waiting on it). The other replicas apply it without answering.

Restart: the map comes back from ``snap.X`` and ``log.X`` with each group's
last applied entry (the raft records); the group's journal (``raft.journal``)
holds the log, and entries at or below that index are not applied again.
An empty directory starts empty and receives its groups' logs from their
leaders.

Compaction: each snapshot's cut also records, per group, the two log
entries it falls on; once ``snap.X`` is durable the snapshot writer writes
each group's keys of that frozen map to ``raft-<g>.dump`` (dump.py) and the
engine drops the group's log before the cut. A replica whose log ends
before the start of its leader's gets the leader's dump (PySyncObj's
snapshot transfer) and installs it (``install_dump``): the difference to
its copy of the arc, as one batch through F2 and F3 closed by the dump's
raft record, before any later entry.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import threading
import time
from typing import Callable

from pysyncobj.config import FAIL_REASON

from chordctl.config import Config, replicas_warning
from chordctl.core.markers import STOP, ReadMarker, SnapshotMarker
from chordctl.core.metrics import LATENCY_BUCKETS, Histogram
from chordctl.core.node import Node, OwnedBatch, Replies
from chordctl.core.replication import dump
from chordctl.core.replication.engine import (REASONS, RETRY_MARK, Engine, Settings,
                                               recent_digests)
from chordctl.core.request import Request
from chordctl.core.storage import files, identity, raftjournal, records
from chordctl.errors import CorruptRecordError, StorageError
from chordctl.pb import raft_pb2 as rpb
from chordctl.protocol import (DEADLINE_EXCEEDED, OP_CREATE, OP_DELETE, OP_READ, OP_UPDATE,
                               UNAVAILABLE)

logger = logging.getLogger("chordctl.node")

DRAIN_LIMIT = 4096
BEHIND = 0.005    # seconds committed entries wait to be written to log.X (logwriter.py)
SWEEP_EVERY = 0.1      # seconds between looks for submitted commands near their deadline
# A command is answered this long before its deadline if it is not committed
# by then, so that the answer (and why) reaches a forwarding node or the
# client before they give up on their own.
SWEEP_AHEAD = 0.15
# A group without a leader for this many election timeouts (an election takes
# one or two, more when votes split), and at least NO_MAJORITY_MIN seconds,
# has no majority: its new commands are refused at once.
NO_MAJORITY_AFTER = 5.0
NO_MAJORITY_MIN = 3.0
LEAD_CHECK_EVERY = 0.5   # seconds between offers of a group's leadership to its owner
# A replica started without raft.journal that hears no leader for this many
# election timeouts (a candidacy lasts at most two) is in a new ring, once every other
# member says its log holds nothing a leader appended: it votes (engine.py).
LEARN_GRACE = 2.5
# With `node serve --new-ring` (the operator's word that the ring is new):
# as soon as every other member says so, or after this many election
# timeouts once a majority of the group, this replica among it, does.
NEW_RING_GRACE = 1.0
LEARNING_GROUPS = "groups: "     # LEARNING's line listing the groups still learning
RETRY_AFTER = 0.05       # seconds before a command a leader change left unapplied goes again
INSTALL_WAIT = 60.0      # seconds an install waits for the applier to reach it
# PySyncObj's outcomes that leave a command certainly not in the log (the
# leader refused it, no leader took it, or another entry took its place) ...
NOT_APPLIED = (FAIL_REASON.MISSING_LEADER, FAIL_REASON.NOT_LEADER, FAIL_REASON.DISCARDED)
# ... and those after which it may still be committed. Both are submitted
# again, marked as a resubmission (engine.RETRY_MARK): a leader whose log
# holds the first copy attaches it to that entry instead of appending a
# second, so a write is applied at most once however often it goes again.
MAYBE_APPLIED = (FAIL_REASON.LEADER_CHANGED, FAIL_REASON.UNKNOWN_OUTCOME)


def _silent(batch: OwnedBatch) -> None:
    """The answer step of an entry another replica submitted: nobody waits here."""


class ReplicatedNode(Node):
    """Node with ``ring.replicas`` > 1; see the module docstring."""

    def __init__(self, config: Config, index: int, replies: Replies | None = None):
        super().__init__(config, index, replies)
        r = config.ring.replicas
        self.replicas = r
        self.replicated = True
        self.identity = identity.RingIdentity.of(self.ring, index, r)
        self.snapshots.identity = self.identity
        # (The shape of a membership never changes live, so neither do these.)
        view = self.membership.current
        self.groups = view.groups_of(index)
        self.members = {g: view.replicas_of(g) for g in self.groups}
        self.raft_applied: dict[int, int] = {g: 0 for g in self.groups}
        self.journal: raftjournal.RaftJournal | None = None
        self.engine: Engine | None = None
        self.raft_send: Callable | None = None     # the Exchange's send (server.py)
        rep = config.replication
        self.settings = Settings(election_timeout=rep.election_timeout,
                                 heartbeat=rep.heartbeat,
                                 max_entry_bytes=max(1 << 20, config.limits.max_value_bytes * 4))
        self._no_majority_after = max(NO_MAJORITY_AFTER * rep.election_timeout,
                                      NO_MAJORITY_MIN)
        self.read_index = rep.reads == "index"
        # What makes a write durable here is the journal: every entry is
        # fdatasynced on a majority before it is acknowledged, and entries the
        # map lost in a crash are applied again from it (recovery skips only
        # what log.X holds). So log.X is written behind it without an fsync on
        # the way of each answer: at most once a second (and at every rotation).
        if self.writer.fsync in ("always", "batch"):
            self.writer.fsync = "everysec"
        self.writer.behind = BEHIND
        # command id -> (its waiting requests, or a scan's marker; when submitted)
        # Submitted, not yet answered: command id -> (requests or a scan's
        # marker, when submitted, group).
        self._pending: dict[int, tuple[list[Request], float, int]] = {}
        self.fresh = False       # recover(): raft.journal did not exist (a new or replaced replica)
        # `node serve --new-ring`: the operator's word that this is a new
        # ring's first start, so an empty directory forgot nothing (below).
        self.new_ring = False
        self.learners: frozenset[int] = frozenset()   # recover(): the groups it learns
        self._learned_failing = False     # LEARNING could not be updated (logged once)
        self.commit_seconds = Histogram(LATENCY_BUCKETS)   # submit -> applied here
        self._ids = itertools.count(1)
        self._retry: list[tuple[int, int, bytes, Callable]] = []   # engine thread only
        self._incarnation = random.getrandbits(64)
        self._reinstall: dict[int, str] = {}     # recover(): dumps to install before start
        self.snapshots.after = self._write_dumps
        even = replicas_warning(r)
        if even:
            logger.warning("%s: %s", self.label, even)

    # -- recovery ---------------------------------------------------------------

    def holds_key_test(self) -> Callable[[int], bool]:
        tests = [self.ring.key_test(g) for g in self.groups]
        if len(tests) >= self.ring.n:
            return lambda key: True
        return lambda key: any(t(key) for t in tests)

    def _recover_locked(self):
        try:
            return self._recover_replica()
        except CorruptRecordError as e:
            # A replica has the others: the way back is to rejoin, not a backup.
            raise CorruptRecordError(e.path, e.offset, e.reason, identity.REJOIN) from None

    def _recover_replica(self):
        report = super()._recover_locked()
        for g, idx in report.raft_applied.items():
            if g in self.raft_applied:
                self.raft_applied[g] = idx
        # A replica that started without raft.journal learns its groups before
        # it votes or acknowledges (engine.py); LEARNING lists the groups it
        # has not finished, so that a restart meanwhile learns those again
        # (and only those: a group it is a full replica of restarts as one).
        self._learning_mark = os.path.join(self.directory, files.LEARNING)
        no_journal = not os.path.exists(os.path.join(self.directory, raftjournal.FILE_NAME))
        self.learners = frozenset(self.groups) if no_journal else self._marked_learning()
        if self.new_ring:
            logger.info("%s: --new-ring: %s", self.label,
                        "a new ring's first start: a full replica of each group once a "
                        "majority of it says it is new" if self.learners else
                        f"this directory started before (it holds {raftjournal.FILE_NAME}); "
                        f"it starts as it was")
        self.fresh = bool(self.learners)
        if self.fresh:
            self._mark_learning(self.learners)
        self.journal = raftjournal.RaftJournal(self.directory)
        for g in self.groups:
            have = self.journal.group(g)
            last = have[-1][1] if len(have) else 0
            if self.raft_applied[g] > last and not no_journal:
                # A replica applies a committed entry in the round that brought
                # it, before the round's fdatasync; a kill between the two
                # leaves the map ahead of the journal. Those entries are
                # committed without this replica's ack (it acks only durable
                # entries), so the leader sends them again, and applying them
                # skips what the map holds (_apply_entry).
                logger.warning("%s: group %d: the map holds entries up to %d, the journal "
                               "ends at %d (a kill before its last fdatasync): the leader "
                               "sends them again", self.label, g, self.raft_applied[g], last)
            elif self.raft_applied[g] > last:
                raise StorageError(
                    f"storage: {self.directory}: the map holds group {g}'s Raft entries up to "
                    f"{self.raft_applied[g]} but its journal (raft.journal) ends at {last}; "
                    f"the journal was lost or replaced -- stop the node, empty the directory, "
                    f"and start it again to rejoin as a new replica")
            first = have[0][1] if len(have) else 1
            if first > 1 and self.raft_applied[g] < first:
                # The log was compacted past what the map holds: an installed
                # dump whose batch did not reach log.X before a crash. The dump
                # is durable (install_dump): install it again at start.
                path = self.dump_path(g)
                at = dump.read_last(path)
                if at is None or at < first:
                    raise StorageError(
                        f"storage: {self.directory}: group {g}'s journal starts at entry "
                        f"{first} but the map holds it only up to {self.raft_applied[g]} and "
                        f"no group dump covers the gap; stop the node, empty the "
                        f"directory, and start it again to rejoin as a new replica")
                self._reinstall[g] = path
        logger.info("%s: replica of groups %s (ring.replicas %d), applied %s", self.label,
                    list(self.groups), self.replicas,
                    ", ".join(f"{g}:{i}" for g, i in self.raft_applied.items()))
        return report

    # -- life cycle ---------------------------------------------------------------

    def start(self, router=None) -> None:
        if self.raft_send is None:
            raise RuntimeError("node: a replicated node needs raft_send (server.py) to start")
        # A replica that lost its disk forgot the votes it cast and the entries
        # it acknowledged: it learns each group's log before it votes or
        # acknowledges again (engine.py), or, in a new ring where nobody leads
        # yet, after a grace of a few election timeouts once every other
        # member said its log holds nothing a leader appended.
        # With --new-ring, after one election timeout, as soon as a majority of
        # the group (this replica among it) says it is new (engine.py).
        grace = ((NEW_RING_GRACE if self.new_ring else LEARN_GRACE)
                 * self.settings.election_timeout if self.fresh else 0.0)
        self.engine = Engine(self.index, self.members, self.journal, self._apply_entry,
                             self.raft_send, self.settings, on_failed=self.fail,
                             learn_grace=grace, dumps=self, learners=self.learners,
                             on_learned=self._learned if self.fresh else None,
                             new_ring=self.new_ring)
        self.engine.every(SWEEP_EVERY, self._sweep)
        self.engine.every(RETRY_AFTER, self._resubmit)
        self.engine.every(LEAD_CHECK_EVERY, self.engine.lead_from_owners)
        super().start(router)
        for g, path in sorted(self._reinstall.items()):    # before the engine runs
            d = dump.read(path, g, self.ring.key_test(g))
            logger.warning("%s: group %d: installing %s again (entry %d): the map lost it "
                           "in a crash", self.label, g, path, d.last[1])
            self._install(g, d)
        self._reinstall = {}
        self.engine.start()

    def _marked_learning(self) -> frozenset[int]:
        """The groups LEARNING lists (none without the file; every group for
        one an older release wrote, which lists none)."""
        try:
            with open(self._learning_mark, "rb") as f:
                text = f.read().decode("ascii", "replace")
        except FileNotFoundError:
            return frozenset()
        except OSError as e:
            raise StorageError(f"storage: {self._learning_mark}: cannot read: "
                               f"{e.strerror or e}; check the data directory's disk and "
                               f"permissions") from None
        for line in text.splitlines():
            if line.startswith(LEARNING_GROUPS):
                try:
                    listed = {int(w) for w in line[len(LEARNING_GROUPS):].split()}
                except ValueError:
                    break               # damaged: learn every group again (safe)
                mine = frozenset(g for g in self.groups if g in listed)
                if not mine:        # every group learned, the file left behind
                    self._learned(mine)
                return mine
        return frozenset(self.groups)

    def _mark_learning(self, groups: frozenset[int]) -> None:
        """LEARNING listing *groups*, durable (written aside, renamed)."""
        tmp = self._learning_mark + ".tmp"
        try:
            with open(tmp, "wb") as f:
                f.write(b"learning its replica groups; removed once it is a full replica\n"
                        + (LEARNING_GROUPS + " ".join(map(str, sorted(groups)))).encode()
                        + b"\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self._learning_mark)
            files.fsync_dir(self.directory)
        except OSError as e:
            raise StorageError(f"storage: {self._learning_mark}: cannot write: "
                               f"{e.strerror or e}; check the data directory's disk and "
                               f"permissions") from None

    def _learned(self, still: frozenset[int]) -> bool:
        """In the round, before the groups just learned send as a full
        replica's: LEARNING lists the groups *still* learning, or is gone, so a
        restart from now on is a full replica's in the others. False when that
        could not be written: the engine keeps those groups learning and asks
        again next round (a full replica the file does not know of could, on
        a restart, leave a group with no one to vote)."""
        try:
            if still:
                self._mark_learning(still)
            else:
                try:
                    os.unlink(self._learning_mark)
                except FileNotFoundError:
                    pass
                files.fsync_dir(self.directory)
        except (OSError, StorageError) as e:
            if not self._learned_failing:
                logger.error("%s: cannot update %s: %s; its groups stay learners until it "
                             "can", self.label, self._learning_mark, e)
            self._learned_failing = True
            return False
        self._learned_failing = False
        return True

    def stop(self, final_snapshot: bool = True) -> None:
        super().stop(final_snapshot)
        if self.engine is not None:
            self.engine.stop()
        if self.journal is not None:
            try:
                self.journal.close()
            except StorageError as e:
                logger.error("%s: %s", self.label, e)

    # -- F1: dispatcher -------------------------------------------------------------

    def _dispatch_loop(self) -> None:
        get = self.incoming.get
        empty = self.incoming.empty
        owner = self.ring.owner
        mine = set(self.groups)
        engine = self.engine
        by_index = self.read_index
        me = self.index
        leader_of = engine.leader
        heard = engine.heard_leader_within
        fresh = 3 * self.settings.heartbeat
        while True:
            items = [get()]
            while len(items) < DRAIN_LIMIT and not empty():
                items.append(get())
            # Arcs this node holds whose owner leads them, another node: a
            # client's read-only call for one goes to that leader (F4), which
            # answers it by confirmation, rather than through the arc's log.
            # (Only while its appends arrive: a leader gone silent may be cut
            # off, and the read is better waiting here for the next one.)
            ask = {g for g in mine if g != me and leader_of(g) == g
                   and heard(g, fresh)} if by_index else ()
            per_group: dict[int, list[Request]] = {}
            reads: dict[int, list[Request]] = {}
            foreign: list[Request] = []
            for item in items:
                if type(item) is not list:     # a marker, or STOP
                    self._submit(per_group)
                    self._submit_reads(reads)
                    per_group = {}
                    reads = {}
                    if item is STOP:
                        if foreign:
                            self.to_route.put(foreign)
                        self.to_route.put(STOP)
                        engine.run_soon(self._stop_stages)
                        return
                    engine.run_soon(lambda m=item: self._place_marker(m))
                    continue
                # A call of reads only is answered by confirmation (engine.read);
                # one with a mutation goes through the log whole, its reads in
                # their place among its writes.
                only_reads = by_index and all(r.op == OP_READ for r in item)
                into = reads if only_reads else per_group
                for r in item:
                    g = owner(r.key)
                    if only_reads and g in ask and r.hops == 0:
                        foreign.append(r)      # once: a forwarded read is not sent on
                    elif g in mine:
                        reqs = into.get(g)
                        if reqs is None:
                            into[g] = [r]
                        else:
                            reqs.append(r)
                    else:
                        foreign.append(r)
            self._submit(per_group)
            self._submit_reads(reads)
            if foreign:
                self.to_route.put(foreign)

    def _refused_all(self, per_group: dict[int, list[Request]]) -> bool:
        """Nothing to do, or this node failed: every request refused."""
        if self.failed:
            for reqs in per_group.values():
                self._refuse(reqs, f"{self.label}: {self.failed}")
        return not per_group or bool(self.failed)

    def _submit(self, per_group: dict[int, list[Request]],
                submitted: float | None = None) -> None:
        """Commands of the arcs' requests into the engine; *submitted*: when
        they first went (a read handed back by confirmation), else now."""
        if self._refused_all(per_group):
            return
        limit = self.settings.max_entry_bytes // 2
        leaderless = self.engine.leaderless_for
        for g, reqs in per_group.items():
            alone = leaderless(g)
            if alone > self._no_majority_after:
                self._refuse(reqs, self._no_majority(g, alone))
                continue
            for run in _split(reqs, limit):
                cid = next(self._ids)
                self._pending[cid] = (run, submitted or time.monotonic(), g)
                self._submit_command(g, cid, run)

    def _submit_command(self, g: int, cid: int, run: list[Request]) -> None:
        command = rpb.Command(origin=self.index, id=cid, incarnation=self._incarnation)
        add = command.ops.add
        for r in run:
            add(op=r.op, key=r.key_text, value=r.value)
        data = command.SerializeToString()
        self.engine.submit(g, data, self._outcome(g, cid, data))

    def _submit_reads(self, per_group: dict[int, list[Request]]) -> None:
        """Reads of arcs this node holds, by confirmation (engine.read): the
        arc's leader answers them from its map once a majority confirmed it
        still leads; anywhere else they go through the log (_read_by_log)."""
        if self._refused_all(per_group):
            return
        now = time.monotonic()
        for g, reqs in per_group.items():
            cid = next(self._ids)
            self._pending[cid] = (reqs, now, g)
            self.engine.read(g, lambda c=cid: self._read_ready(c),
                             lambda c=cid, g=g: self._read_by_log(g, c))

    def _read_ready(self, cid: int) -> None:
        """Engine thread: the group applied every entry the read must see."""
        pending = self._pending.pop(cid, None)
        if pending is not None:           # not answered meanwhile (deadline)
            self._apply_reads(pending[0], self._answer)

    def _read_by_log(self, g: int, cid: int) -> None:
        """Engine thread: this replica cannot confirm the read (it does not
        lead the arc, ...): it goes as a command, like a write."""
        pending = self._pending.pop(cid, None)
        if pending is None:
            return
        if self.engine.ended:       # stopped or failed: nothing will commit it
            self._refuse(pending[0], f"{self.label}: " + (
                self.failed or "stopping: its replication engine has ended; not applied "
                               "-- retry on another node"))
            return
        self._submit({g: pending[0]}, pending[1])

    def request_read(self, marker: ReadMarker) -> None:
        """A scan's or count's view. Of one arc (``marker.arc``): after a barrier
        entry through that arc's log, so it holds every write the group
        committed before the call, whichever replica answers."""
        if marker.arc is None or self.engine is None:
            super().request_read(marker)
            return
        alone = self.engine.leaderless_for(marker.arc)
        if alone > self._no_majority_after:
            self._refuse(marker, self._no_majority(marker.arc, alone))
            return
        cid = next(self._ids)
        self._pending[cid] = (marker, time.monotonic(), marker.arc)
        command = rpb.Command(origin=self.index, id=cid, incarnation=self._incarnation)
        data = command.SerializeToString()
        self.engine.submit(marker.arc, data, self._outcome(marker.arc, cid, data))

    def _outcome(self, group: int, cid: int, data: bytes) -> Callable[[object, int], None]:
        """The callback of command *cid*: nothing on success (the answer step
        replies); after a leader change or a refusal it is submitted again,
        marked as a resubmission, a few milliseconds later while its callers'
        deadline allows; otherwise its callers get the reason."""
        again = data if data.endswith(RETRY_MARK) else data + RETRY_MARK

        def outcome(result, reason) -> None:     # engine thread
            if reason == FAIL_REASON.SUCCESS:
                return
            pending = self._pending.get(cid)
            if pending is None:
                return
            item = pending[0]
            if reason in NOT_APPLIED or reason in MAYBE_APPLIED:
                if _deadline(item) > time.monotonic() + RETRY_AFTER:
                    self._retry.append((cid, group, again, outcome))
                    return
            self._pending.pop(cid, None)
            why = REASONS.get(reason, str(reason))
            if reason in MAYBE_APPLIED:
                what = ("outcome unknown: it may still be applied -- read the key before "
                        "retrying a write")
            elif reason in NOT_APPLIED:
                what = "not applied; safe to retry"
            else:
                what = "not applied"
            self._refuse(item, f"{self.label}: replica group {group}: {why.replace('_', ' ')} "
                               f"({what})")
        return outcome

    def _resubmit(self) -> None:
        """Submit again what a leader change left unapplied (engine thread)."""
        retry, self._retry = self._retry, []
        for cid, group, data, outcome in retry:
            if cid in self._pending:     # not answered meanwhile (deadline, sweep)
                self.engine.submit(group, data, outcome)

    def _refuse(self, reqs, message: str, code: int = UNAVAILABLE) -> None:
        """Answer *reqs* (a list of requests, or a scan's ReadMarker) with an error."""
        if type(reqs) is ReadMarker:
            reqs.error = (code, message)
            reqs.on_done(reqs)
            return
        idx, nid = self.index, str(self.node_id)
        for r in reqs:
            r.fail(code, message)
            r.node_index, r.node_id = idx, nid
        self.replies.send(reqs)

    # -- R: the replicator (engine thread) -------------------------------------------

    def _apply_entry(self, group: int, idx: int, data: bytes):
        """A committed entry of *group*, in commit order: into F2 and F3."""
        if idx <= self.raft_applied.get(group, 0):
            return None                 # in the map already (recovered from disk)
        self.raft_applied[group] = idx
        command = rpb.Command.FromString(data)
        pending = None
        if command.origin == self.index and command.incarnation == self._incarnation:
            pending = self._pending.pop(command.id, None)
        answer = self._answer
        if pending is not None:
            reqs = pending[0]
            if type(reqs) is ReadMarker:        # a scan's barrier: the view goes here
                self._dispatch_read(reqs)
                return None
            self.commit_seconds.observe(time.monotonic() - pending[1])
        elif not command.ops:
            return None                         # another replica's barrier
        else:
            answer = _silent
            reqs = [Request(o.op, int(o.key), o.key, o.value, 0.0) for o in command.ops]
        seq = self.seq
        mutations = 0
        for r in reqs:
            if r.op != OP_READ:
                seq += 1
                r.seq = seq
                mutations += 1
        raft = None
        if mutations:
            seq += 1
            raft = records.raft_record(seq, group, idx)
            mutations += 1
        self.seq = seq
        if mutations == 0:
            self._apply_reads(reqs, answer)
        else:
            # Answered once applied (F3): the journal made it durable on a
            # majority before it committed, and log.X is written behind that
            # (F2, the same order). The applier first: it is the one waited for.
            batch = OwnedBatch(reqs, mutations, seq, answer, stages=1, raft=raft,
                               waits_for_log=False)
            self.to_apply.put(batch)
            self.to_log.put(batch)
        return None

    def _apply_reads(self, reqs: list[Request], answer) -> None:
        """Reads into F3 after every entry applied so far (engine thread).
        Only F3: every write they can see is committed, durable on a majority,
        and answered once applied (log.X is not what makes it durable)."""
        self.to_apply.put(OwnedBatch(reqs, 0, self.seq, answer, stages=1))

    def _sweep(self) -> None:
        """Answer commands not committed just before their callers give up (a
        group without a majority, or one too slow): their entries may still
        commit later, and are then applied silently."""
        now = time.monotonic()
        late = [cid for cid, (item, submitted, _g) in list(self._pending.items())
                if sweep_due(_deadline(item), submitted, now)]
        for cid in late:
            item, _t, g = self._pending.pop(cid)
            writes = type(item) is not ReadMarker and any(r.op != OP_READ for r in item)
            why = (("it has no leader: " + (self._stuck(g) or "fewer than a majority of its "
                                            "replicas answer"))
                   if self.engine.leader(g) is None else "its leader did not commit it in time")
            self._refuse(item, f"{self.label}: arc {g}: not committed before the deadline "
                               f"({why}); " + ("outcome unknown: a write may still be applied "
                                               "-- read the key before retrying it" if writes
                                               else "nothing was changed"),
                         DEADLINE_EXCEEDED)

    def _no_majority(self, group: int, alone: float) -> str:
        members = ", ".join(str(i) for i in self.members[group])
        stuck = self._stuck(group)
        if stuck:
            return (f"{self.label}: arc {group} has had no leader for {alone:.1f}s: {stuck}; "
                    f"not applied. Start one of its lost replicas on its old directory (or "
                    f"one restored from a backup) and the arc serves again (`chordctl ring "
                    f"show`)")
        return (f"{self.label}: arc {group} has had no leader for {alone:.1f}s: fewer than a "
                f"majority of its replicas (nodes {members}) answer; not applied -- safe to "
                f"retry once a majority is back (`chordctl ring show`)")

    def _stuck(self, group: int) -> str:
        """Why arc *group* cannot elect, when its learners leave too few full
        replicas for a majority (a learner neither votes nor stands); "" else."""
        learners = self.engine.learners_of(group) if self.engine is not None else set()
        full = [i for i in self.members[group] if i not in learners]
        if not learners or len(full) > len(self.members[group]) // 2:
            return ""
        return (f"its replicas {_names(sorted(learners))} are learning (each started on an "
                f"empty directory and waits for a leader to learn from) and the full ones "
                f"({_names(full) or 'none'}) are not a majority: more of the arc was lost "
                f"than it tolerates, so it cannot elect")

    def _dispatch_read(self, marker: ReadMarker) -> None:
        """A scan's or count's view, after every entry applied before it.
        Only the applier: an applied entry is durable already (in the
        journals of a majority), so the view does not wait for log.X, which
        is written behind them by windows (logwriter.py)."""
        if self.failed:
            super()._dispatch_read(marker)
            return
        marker.seq = self.seq
        self.to_apply.put(marker)

    def _place_marker(self, marker) -> None:
        if type(marker) is ReadMarker:
            self._dispatch_read(marker)
        else:
            self._dispatch_marker(marker)

    def _cut(self, marker: SnapshotMarker) -> None:
        # log.X starts with where every group stood at this cut (recovery.py),
        # and each group's dump of it stands at the entry applied last.
        seq = self.seq
        head = []
        dumps = {}
        for g in self.groups:
            seq += 1
            at = self.raft_applied[g]
            head.append(records.raft_record(seq, g, at))
            if self.engine is not None and at >= 2:
                entries = self.engine.entries(g, at - 1, 2)
                if len(entries) == 2:
                    dumps[g] = (tuple(entries[0]), tuple(entries[1]),
                                self.engine.recent(g, at))
        marker.head = head
        marker.dumps = dumps
        self.seq = seq
        self._seq_at_snapshot = seq

    # -- compaction and snapshot transfer ---------------------------------------

    def dump_path(self, group: int) -> str:
        """Group *group*'s dump file (the engine's and PySyncObj's fullDumpFile)."""
        return os.path.join(self.directory, dump.file_name(group))

    def _write_dumps(self, marker: SnapshotMarker, chunks: list[dict[int, bytes]]) -> None:
        """Snapshot writer, once snap.X is durable: each group's keys of the
        frozen map into its dump, then the engine compacts the group's log."""
        if not marker.dumps or self.engine is None or self.engine.ended \
                or self._stopping.is_set():
            return          # a stopping node compacts nothing: not worth its time
        owner = self.ring.owner
        per: dict[int, list[tuple[int, bytes]]] = {g: [] for g in marker.dumps}
        for chunk in chunks:
            for k, v in chunk.items():
                pairs = per.get(owner(k))
                if pairs is not None:
                    pairs.append((k, v))
        for g, (prev, last, seen) in sorted(marker.dumps.items()):
            tmp = self.dump_path(g) + files.TMP_SUFFIX
            try:
                size = dump.write(tmp, g, prev, last, per[g], len(per[g]),
                                  recent_digests(seen))
            except OSError as e:
                logger.error("%s: group %d: cannot write %s: %s; its log is not compacted "
                             "this time (nothing is lost)", self.label, g, tmp, e.strerror)
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
                continue
            logger.info("%s: group %d: dump at entry %d (%d keys, %d bytes)", self.label, g,
                        last[1], len(per[g]), size)
            self.engine.run_soon(
                lambda g=g, tmp=tmp, prev=prev, last=last: self._compact(g, tmp, prev, last))

    def _compact(self, group: int, tmp: str, prev, last) -> None:
        # Only on the running engine's thread: a node that is stopping keeps
        # its log as it is (run_soon runs this at once once the engine ended).
        if self.engine.ended:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            return
        if not self.engine.compact(group, tmp, prev, last):
            return
        logger.info("%s: group %d: log compacted up to entry %d", self.label, group, prev[1])

    def install_dump(self, group: int, path: str):
        """PySyncObj's deserializer (engine thread): a dump that arrived from the
        leader at *path*, as (last, prev, members). Checked whole and made
        the group's dump, durably, before the node takes any of it: a crash
        that takes the install's batch out of log.X finds it there."""
        try:
            d = dump.read(path, group, self.ring.key_test(group))
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            dump.replace(path, self.dump_path(group))
        except (CorruptRecordError, OSError) as e:
            logger.error("%s: group %d: dump from the leader refused: %s", self.label, group, e)
            raise
        if d.last[1] > self.raft_applied[group]:
            self._install(group, d)
            logger.info("%s: group %d: installed the leader's dump at entry %d (%d keys)",
                        self.label, group, d.last[1], len(d.pairs))
        return d.last, d.prev, set(), d.recent

    def _install(self, group: int, d: dump.Dump) -> None:
        """Make this replica's copy of *group*'s arc the dump's: one batch of
        the differences, after everything applied so far and before any later
        entry, closed by the dump's raft record."""
        done = threading.Event()
        view = ReadMarker(True, lambda m: done.set())
        self.to_apply.put(view)              # behind every entry handed over so far
        if not done.wait(INSTALL_WAIT):
            raise StorageError(f"{self.label}: group {group}: the applier did not reach the "
                               f"dump's install in {INSTALL_WAIT:.0f}s")
        test = self.ring.key_test(group)
        current = {k: v for chunk in view.chunks for k, v in chunk.items() if test(k)}
        pairs = d.pairs
        reqs = [Request(OP_DELETE, k, str(k).encode(), b"", 0.0)
                for k in current if k not in pairs]
        for k, v in pairs.items():
            old = current.get(k)
            if old is None:
                reqs.append(Request(OP_CREATE, k, str(k).encode(), v, 0.0))
            elif old != v:
                reqs.append(Request(OP_UPDATE, k, str(k).encode(), v, 0.0))
        seq = self.seq
        for r in reqs:
            seq += 1
            r.seq = seq
        seq += 1
        batch = OwnedBatch(reqs, len(reqs) + 1, seq, _silent,
                           raft=records.raft_record(seq, group, d.last[1]))
        self.seq = seq
        self.raft_applied[group] = d.last[1]
        self.to_log.put(batch)
        self.to_apply.put(batch)

    def _stop_stages(self) -> None:
        for q in (self.to_log, self.to_apply):
            q.put(STOP)
        self.engine.stop()

    def raft_status(self) -> dict[int, dict]:
        """Each group's summary (engine.py), as of the replicator's last round."""
        return self.engine.status() if self.engine is not None else {}

    def replicator_depth(self) -> int:
        """R's depth (metrics): commands and reads by confirmation the
        dispatcher handed the engine (``submit``, ``read``) that no round has
        taken yet. Any thread (len of a deque)."""
        e = self.engine
        return 0 if e is None else e.pending()


def sweep_due(deadline: float, submitted: float, now: float) -> bool:
    """Whether a command submitted at *submitted* is answered now, if not
    committed: SWEEP_AHEAD before *deadline*, but a short deadline keeps most
    of its time (the lead is at most a quarter of what it had)."""
    return deadline < now + min(SWEEP_AHEAD, 0.25 * (deadline - submitted))


def _deadline(item) -> float:
    """When the caller of a submitted command (its requests, or a scan's
    marker) gives up."""
    if type(item) is ReadMarker:
        return item.deadline or float("inf")
    return min(r.deadline for r in item)


def _split(reqs: list[Request], limit: int) -> list[list[Request]]:
    """Runs of *reqs* whose command stays under *limit* bytes (key, value and
    a margin per operation); one operation is never split."""
    runs: list[list[Request]] = []
    run: list[Request] = []
    size = 0
    for r in reqs:
        cost = len(r.key_text) + len(r.value) + 16
        if run and size + cost > limit:
            runs.append(run)
            run, size = [], 0
        run.append(r)
        size += cost
    if run:
        runs.append(run)
    return runs


def _names(nodes) -> str:
    return ", ".join(f"node {i}" for i in nodes)
