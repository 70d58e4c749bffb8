"""The replication engine (core/replication/engine.py) on PySyncObj, engines
wired to each other in one process: elections, commit order, a leader lost
or cut off, a replica restarted on its journal, and the rule that nothing
leaves a round before the journal is durable."""

from __future__ import annotations

import asyncio
import collections
import os
import threading
import time

import pytest
from pysyncobj.config import FAIL_REASON
from pysyncobj.journal import MemoryJournal

from chordctl.core.replication import dump
from chordctl.core.replication.engine import (REGULAR, RETRY_MARK, Engine, Settings,
                                               recent_digests)
from chordctl.errors import StorageError
from chordctl.pb import raft_pb2 as rpb

FAST = Settings(election_timeout=0.25, heartbeat=0.04, tick=0.01)
WAIT = 10.0


def until(cond, timeout=WAIT, what="condition"):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


class Journals:
    """The journal interface (group, sync) over PySyncObj's MemoryJournal; it
    outlives an engine, as a file would, and records syncs and dirtiness."""

    def __init__(self, fail_sync: bool = False):
        self.groups: dict[int, MemoryJournal] = {}
        self.dirty = False
        self.syncs = 0
        self.fail_sync = fail_sync
        self.lock = threading.Lock()

    def group(self, gid):
        j = self.groups.get(gid)
        if j is None:
            j = self.groups[gid] = _Tracked(self)
        return j

    def sync(self):
        if self.fail_sync and self.dirty:
            raise StorageError("storage: raft.journal: fdatasync failed: EIO (test)")
        self.syncs += 1
        self.dirty = False


class _Tracked(MemoryJournal):
    def __init__(self, owner):
        super().__init__()
        self._owner = owner

    def add(self, command, idx, term):
        self._owner.dirty = True
        super().add(command, idx, term)

    def deleteEntriesFrom(self, entryFrom):
        self._owner.dirty = True
        super().deleteEntriesFrom(entryFrom)

    def deleteEntriesTo(self, entryTo):
        self._owner.dirty = True
        super().deleteEntriesTo(entryTo)

    def clear(self):
        self._owner.dirty = True
        super().clear()

    def setCurrentTerm(self, term, votedForNodeId):
        self._owner.dirty = True
        super().setCurrentTerm(term, votedForNodeId)


class Ring:
    """n engines, one group each per arc as Ring.replicas lays them out, wired
    by direct delivery; *cut* holds links that drop everything."""

    def __init__(self, n=3, groups=None, settings=FAST, dumps=None):
        self.n = n
        self.settings = settings
        self.groups = groups or {0: tuple(range(n))}
        self.journals = {i: Journals() for i in range(n)}
        self.applied = {i: {g: [] for g in self.groups} for i in range(n)}
        self.engines: dict[int, Engine | None] = {}
        self.cut: set[tuple[int, int]] = set()
        self.filter = None       # filter(sender, peer, messages) -> messages delivered
        self.sent_while_dirty = []
        # node -> its dump files (compaction tests: *dumps* is their directory)
        self.dumps: dict[int, object] = {} if dumps is None else \
            {i: Dumps(os.path.join(dumps, str(i))) for i in range(n)}
        for i in range(n):
            self.start(i)

    def start(self, i, learn_grace=0.0, learners=None, on_learned=None, new_ring=False):
        mine = {g: m for g, m in self.groups.items() if i in m}
        applied = self.applied[i]

        def apply(group, idx, command):
            applied[group].append((idx, command))
            return (i, idx)

        journals = self.journals[i]

        def send(out):
            if journals.dirty:
                self.sent_while_dirty.extend(
                    (i, m.kind) for ms in out.values() for m in ms)
            for peer, messages in out.items():
                e = self.engines.get(peer)
                if e is not None and (i, peer) not in self.cut:
                    if self.filter is not None:
                        messages = self.filter(i, peer, messages)
                    e.deliver(i, messages)

        dumps = self.dumps.get(i)
        if dumps is not None:
            dumps.applied = applied
        e = Engine(i, mine, journals, apply, send, self.settings, learn_grace=learn_grace,
                   dumps=dumps, learners=learners, on_learned=on_learned, new_ring=new_ring)
        self.engines[i] = e
        e.start()
        return e

    def crash(self, i):
        e, self.engines[i] = self.engines[i], None
        e.stop()

    def isolate(self, i):
        for j in range(self.n):
            if j != i:
                self.cut |= {(i, j), (j, i)}

    def leader(self, g=0, among=None):
        """The one engine that says it leads group g and that the others
        (among the live ones) follow."""
        live = [e for k, e in self.engines.items() if e is not None and (among is None or k in among)]
        leaders = {e.index for e in live if e.status().get(g, {}).get("state") == "leader"}
        seen = {e.leader(g) for e in live}
        if len(leaders) == 1 and seen == leaders:
            return self.engines[leaders.pop()]
        return None

    def wait_leader(self, g=0, among=None):
        until(lambda: self.leader(g, among) is not None, what=f"a leader of group {g}")
        return self.leader(g, among)

    def commit(self, engine, g, command, timeout=WAIT):
        done = threading.Event()
        out = []

        def cb(result, reason):
            out.append((result, reason))
            done.set()

        engine.submit(g, command, cb)
        assert done.wait(timeout), f"no answer for {command!r}"
        return out[0]

    def stop(self):
        for e in self.engines.values():
            if e is not None:
                e.stop()


@pytest.fixture
def ring():
    rings = []

    def make(*a, **kw):
        r = Ring(*a, **kw)
        rings.append(r)
        return r

    yield make
    for r in rings:
        r.stop()


def test_three_replicas_elect_one_leader_and_apply_in_the_same_order(ring):
    r = ring(3)
    leader = r.wait_leader()
    results = [r.commit(leader, 0, b"c%d" % k) for k in range(50)]
    assert all(reason == FAIL_REASON.SUCCESS for _, reason in results)
    # The callback's result is what apply returned on the leader, in log order.
    idxs = [res[1] for res, _ in results]
    assert idxs == sorted(idxs) and results[0][0][0] == leader.index
    until(lambda: all(len(r.applied[i][0]) == 50 for i in range(3)), what="every replica applied")
    assert r.applied[0][0] == r.applied[1][0] == r.applied[2][0]
    assert [c for _, c in r.applied[0][0]] == [b"c%d" % k for k in range(50)]


def test_concurrent_submits_from_a_follower_reach_the_leader(ring):
    r = ring(3)
    leader = r.wait_leader()
    follower = next(e for e in r.engines.values() if e is not leader)
    res, reason = r.commit(follower, 0, b"via-follower")
    assert reason == FAIL_REASON.SUCCESS
    assert res[0] == follower.index   # answered once applied on the follower itself
    until(lambda: all(r.applied[i][0] and r.applied[i][0][-1][1] == b"via-follower"
                      for i in range(3)), what="applied everywhere")


def test_losing_the_leader_elects_another_and_keeps_every_committed_entry(ring):
    r = ring(3)
    old = r.wait_leader()
    for k in range(20):
        assert r.commit(old, 0, b"before%d" % k)[1] == FAIL_REASON.SUCCESS
    r.crash(old.index)
    t0 = time.monotonic()
    new = r.wait_leader()
    elected_in = time.monotonic() - t0
    assert new.index != old.index
    assert elected_in < 4 * FAST.election_timeout + 1.0
    assert r.commit(new, 0, b"after")[1] == FAIL_REASON.SUCCESS
    for i in r.engines:
        if r.engines[i] is None:
            continue
        until(lambda: r.applied[i][0] and r.applied[i][0][-1][1] == b"after",
              what=f"node {i} applied 'after'")
        cmds = [c for _, c in r.applied[i][0]]
        assert cmds == [b"before%d" % k for k in range(20)] + [b"after"]


def test_a_restarted_replica_catches_up_from_its_journal_and_the_leader(ring):
    r = ring(3)
    leader = r.wait_leader()
    victim = next(i for i in range(3) if i != leader.index)
    assert r.commit(leader, 0, b"one")[1] == FAIL_REASON.SUCCESS
    until(lambda: len(r.applied[victim][0]) == 1, what="the victim applied 'one'")
    r.crash(victim)
    for k in range(10):
        assert r.commit(leader, 0, b"while-down%d" % k)[1] == FAIL_REASON.SUCCESS
    r.applied[victim][0].clear()   # its state machine starts over from the journal
    r.start(victim)
    until(lambda: len(r.applied[victim][0]) == 11, what="the restarted replica caught up")
    assert r.applied[victim][0] == r.applied[leader.index][0]


def test_an_isolated_leader_commits_nothing_and_the_majority_goes_on(ring):
    r = ring(3)
    old = r.wait_leader()
    assert r.commit(old, 0, b"shared")[1] == FAIL_REASON.SUCCESS
    r.isolate(old.index)
    lost = threading.Event()
    outcome = []
    old.submit(0, b"minority", lambda res, reason: (outcome.append(reason), lost.set()))
    others = [i for i in range(3) if i != old.index]
    new = r.wait_leader(among=others)
    assert r.commit(new, 0, b"majority")[1] == FAIL_REASON.SUCCESS
    # The cut-off leader never applies its entry as committed.
    assert all(c != b"minority" for _, c in r.applied[old.index][0])
    r.cut.clear()
    until(lambda: r.applied[old.index][0] and r.applied[old.index][0][-1][1] == b"majority",
          what="the old leader converged")
    for i in range(3):
        assert b"minority" not in [c for _, c in r.applied[i][0]]
    until(lambda: lost.is_set(), what="the minority submit answered")
    assert outcome[0] != FAIL_REASON.SUCCESS


def test_no_message_leaves_a_round_before_the_journal_is_synced(ring):
    r = ring(3)
    leader = r.wait_leader()
    for k in range(30):
        r.commit(leader, 0, b"x%d" % k)
    assert all(r.journals[i].syncs > 0 for i in range(3))
    # Only a leader's appends leave before its sync; acknowledgements and
    # votes never do.
    assert r.sent_while_dirty, "the leader's appends leave before its sync"
    assert {kind for _, kind in r.sent_while_dirty} == {rpb.APPEND_ENTRIES}
    assert {i for i, _ in r.sent_while_dirty} == {leader.index}


def test_a_leader_counts_an_entry_only_once_its_own_copy_is_durable(ring):
    """The leader's appends leave before its fdatasync; a follower may
    acknowledge first (and with the leader's copy it would be a majority),
    but nothing commits until the leader's sync returned. (Majority first:
    the round that waits for the sync sends to one follower.)"""
    r = ring(3)
    leader = r.wait_leader()
    assert r.commit(leader, 0, b"warm")[1] == FAIL_REASON.SUCCESS
    j = r.journals[leader.index]
    gate, entered = threading.Event(), threading.Event()
    sync = j.sync

    def slow_sync():
        if j.dirty:
            entered.set()
            assert gate.wait(10)
        sync()
    j.sync = slow_sync
    done = []
    leader.submit(0, b"held", lambda result, reason: done.append(reason))
    assert entered.wait(5)
    followers = [i for i in range(3) if i != leader.index]
    until(lambda: any(len(r.journals[i].groups[0]) == len(j.groups[0]) for i in followers),
          what="a follower has the entry")
    until(lambda: len(leader._inbox) >= 1, what="its acknowledgement reached the leader")
    assert done == [] and [c for _, c in r.applied[leader.index][0]][-1] == b"warm"
    gate.set()
    until(lambda: done, what="the entry committed")
    assert done == [FAIL_REASON.SUCCESS]


def test_a_failed_journal_sync_stops_the_engine_before_anything_is_sent(ring):
    r = ring(3)
    leader = r.wait_leader()
    failed = []
    victim = next(e for e in r.engines.values() if e is not leader)
    victim._on_failed = failed.append
    r.journals[victim.index].fail_sync = True
    sent_before = []
    deliver = leader.deliver

    def spy(sender, messages):
        if sender == victim.index and victim.failed:
            sent_before.append(messages)
        deliver(sender, messages)

    leader.deliver = spy
    r.commit(leader, 0, b"after-eio")
    # Whatever the victim received of it, its next round must sync something.
    r.journals[victim.index].dirty = True
    victim._wake.set()
    # _fail sets .failed, then tells on_failed: wait for both.
    until(lambda: victim.failed is not None and failed, what="the victim's engine to fail-stop")
    assert "EIO" in victim.failed and failed == [victim.failed]
    assert sent_before == []
    assert not victim._thread.is_alive() or victim._stopping


def test_groups_on_a_ring_share_one_engine_per_node(ring):
    # 4 nodes, R=3: node i is in groups i, i+1, i+2 (Ring.groups_of).
    from chordctl.core.ring import Ring as ChordRing
    cr = ChordRing(8, 4)
    groups = {g: cr.replicas(g, 3) for g in range(4)}
    r = ring(4, groups=groups)
    for g in range(4):
        leader = r.wait_leader(g, among=groups[g])
        assert r.commit(leader, g, b"g%d" % g)[1] == FAIL_REASON.SUCCESS
    for i in range(4):
        assert sorted(r.engines[i].groups) == sorted(cr.groups_of(i, 3))
        for g in cr.groups_of(i, 3):
            until(lambda: [c for _, c in r.applied[i][g]] == [b"g%d" % g],
                  what=f"node {i} applied group {g}")


def test_a_command_over_the_entry_limit_is_refused_before_it_is_queued(ring):
    r = ring(3, settings=Settings(election_timeout=0.25, heartbeat=0.04, tick=0.01,
                                  max_entry_bytes=1000))
    with pytest.raises(ValueError, match="entry limit"):
        r.engines[0].submit(0, b"x" * 1000, lambda *a: None)


def test_a_group_of_one_is_refused():
    with pytest.raises(ValueError, match="two members"):
        Engine(0, {0: (0,)}, Journals(), lambda *a: None, lambda out: None, FAST)


def test_a_replica_that_lost_its_journal_learns_before_it_votes_or_acknowledges(ring):
    r = ring(3)
    leader = r.wait_leader()
    for k in range(20):
        assert r.commit(leader, 0, b"k%d" % k)[1] == FAIL_REASON.SUCCESS
    victim = next(i for i in range(3) if i != leader.index)
    r.crash(victim)
    r.journals[victim] = Journals()          # its disk is gone
    r.applied[victim][0].clear()
    e = r.start(victim, learn_grace=30.0)
    assert e.learning(0)
    until(lambda: len(r.applied[victim][0]) >= 20, what="the replacement caught up")
    until(lambda: not e.learning(0), what="the replacement became a full replica")
    assert e.acks_held > 0          # while it learned, its acks did not count
    assert r.applied[victim][0][:20] == r.applied[leader.index][0][:20]
    until(lambda: e.status()[0]["learning"] is False, what="its status says it is full")


def test_a_learner_grants_no_vote(ring):
    r = ring(3)
    leader = r.wait_leader()
    assert r.commit(leader, 0, b"x")[1] == FAIL_REASON.SUCCESS
    others = [i for i in range(3) if i != leader.index]
    learner, voter = others
    r.crash(learner)
    r.journals[learner] = Journals()
    r.isolate(voter)                # no leader will teach the learner: it stays one
    r.cut -= {(learner, leader.index), (leader.index, learner)}
    r.crash(leader.index)           # the only one that could teach it is gone
    e = r.start(learner, learn_grace=30.0)
    r.cut.clear()                   # the voter campaigns; the learner must not vote
    until(lambda: e.votes_ignored > 0, what="a vote request reached the learner")
    assert r.leader(0, among=[voter, learner]) is None
    assert e.learning(0)


def test_a_new_group_of_learners_elects_once_their_grace_is_over(ring):
    r = ring(3)
    for i in range(3):
        r.crash(i)
        r.journals[i] = Journals()
    t0 = time.monotonic()
    engines = [r.start(i, learn_grace=0.5) for i in range(3)]
    leader = r.wait_leader()
    assert time.monotonic() - t0 >= 0.5
    assert r.commit(leader, 0, b"first")[1] == FAIL_REASON.SUCCESS
    assert not any(e.learning(0) for e in engines)


class Dumps:
    """A node's dump files for the engine (replica.py's role): the state is
    the applied commands, keyed by index; a dump holds them all."""

    def __init__(self, directory):
        self.directory = directory
        os.makedirs(directory, exist_ok=True)
        self.applied = None          # the Ring's applied lists of this node
        self.installed = []
        self.install_threads = []

    def dump_path(self, g):
        return os.path.join(self.directory, dump.file_name(g))

    def install_dump(self, g, path):
        d = dump.read(path, g, lambda k: True)
        dump.replace(path, self.dump_path(g))
        self.applied[g][:] = sorted(d.pairs.items())
        self.installed.append(d.last[1])
        self.install_threads.append(threading.current_thread().name)
        return d.last, d.prev, set(), d.recent

    def compact(self, engine, g, done):
        """On the engine thread: dump what is applied, then compact."""
        def run():
            grp = engine.groups[g]
            at = grp.raftLastApplied
            prev, last = (tuple(e) for e in engine.entries(g, at - 1, 2))
            state = [(idx, c) for idx, c in self.applied[g] if idx <= at]
            tmp = self.dump_path(g) + ".tmp"
            dump.write(tmp, g, prev, last, state, len(state),
                       recent_digests(engine.recent(g, at)))
            done.append((at, engine.compact(g, tmp, prev, last)))
        engine.run_soon(run)


def _compacted_past_a_lost_replica(r, before: int, after: int, pad: bytes = b""):
    """Commands a0.. (*before*, padded) everywhere, then a follower (the
    victim) crashes and loses its disk, b0.. (*after*) commit without it, and
    the leader compacts its log: (leader, victim, (dump's last index, ok))."""
    leader = r.wait_leader()
    for k in range(before):
        assert r.commit(leader, 0, b"a%d" % k + pad)[1] == FAIL_REASON.SUCCESS
    victim = next(i for i in range(3) if i != leader.index)
    until(lambda: len(r.applied[victim][0]) == before, what="the victim applied everything")
    r.crash(victim)
    r.journals[victim] = Journals()      # its disk is gone
    r.applied[victim] = {0: []}
    for k in range(after):
        assert r.commit(leader, 0, b"b%d" % k)[1] == FAIL_REASON.SUCCESS
    done = []
    r.dumps[leader.index].compact(leader, 0, done)
    until(lambda: done, what="the leader compacted")
    return leader, victim, done[0]


def test_a_compacted_log_reaches_a_replica_that_lost_everything_as_a_dump(ring, tmp_path):
    """Compaction drops the log before the dump; a replica that starts empty
    gets the leader's dump (PySyncObj's snapshot transfer, chunked) and then
    the entries after it, and holds exactly what the others hold."""
    r = ring(3, dumps=str(tmp_path))
    big = b"x" * 40_000            # several dump chunks per transfer
    leader, victim, (at, ok) = _compacted_past_a_lost_replica(r, 60, 20, big)
    assert ok and leader.groups[0].log_start() == at - 1
    assert len(r.journals[leader.index].groups[0]) < 10      # the log before it is gone
    r.start(victim, learn_grace=5.0)
    for k in range(5):
        assert r.commit(leader, 0, b"c%d" % k)[1] == FAIL_REASON.SUCCESS
    want = r.applied[leader.index][0]
    until(lambda: r.applied[victim][0] == want, what="the new replica caught up")
    assert r.dumps[victim].installed == [at]
    # An install waits for the applier: always on the replica's engine
    # thread, never on the thread that delivered the chunk (an event loop).
    assert r.dumps[victim].install_threads == [f"chord-raft-{victim}"]
    assert [c for _, c in want][-25:] == [b"b%d" % k for k in range(20)] + \
        [b"c%d" % k for k in range(5)]
    # The same dump again, after the replica applied entries past it (a
    # leader starts a transfer over on every stale "next index" it gets):
    # dropped, the replica's log and state kept as they are.
    v = r.engines[victim]
    end = v.groups[0]._SyncObj__getCurrentLogIndex()
    assert end > at

    def resend():
        g = leader.groups[0]
        node = next(n for n in g._SyncObj__otherNodes if n.index == victim)
        g._SyncObj__raftNextIndex[node] = g.log_start()
        g.send_appends()
    # An acknowledgement the leader reads before the transfer is out (or
    # between its chunks) sets the next index back: ask again until one ends.
    deadline = time.monotonic() + WAIT
    while v.status()[0]["stale_dumps"] == 0:
        assert time.monotonic() < deadline, "the second transfer never ended"
        leader.run_soon(resend)
        time.sleep(0.2)
    assert r.dumps[victim].installed == [at]
    assert v.groups[0].log_start() == at - 1 and v.groups[0].raftLastApplied >= end
    assert not os.path.exists(v.groups[0].dump_file + ".in")
    assert r.commit(leader, 0, b"d0")[1] == FAIL_REASON.SUCCESS
    want = r.applied[leader.index][0]
    until(lambda: r.applied[victim][0] == want, what="the replica goes on after it")
    # A dump compacted past by another is refused, the newer log kept.
    stale = []
    r.dumps[victim].compact(v, 0, stale)
    until(lambda: stale, what="the victim compacted")
    assert stale[0][1] is True and v.groups[0].log_start() == stale[0][0] - 1


def test_compact_refuses_entries_the_log_no_longer_holds(ring, tmp_path):
    r = ring(3, dumps=str(tmp_path))
    leader = r.wait_leader()
    for k in range(5):
        assert r.commit(leader, 0, b"k%d" % k)[1] == FAIL_REASON.SUCCESS
    out = []
    tmp = str(tmp_path / "stale.tmp")

    def run():
        g = leader.groups[0]
        prev, last = (tuple(e) for e in leader.entries(0, g.raftLastApplied - 1, 2))
        dump.write(tmp, 0, prev, last, [], 0)
        wrong = (last[0], last[1], last[2] + 7)          # another term at that index
        out.append(leader.compact(0, tmp, prev, wrong))
    leader.run_soon(run)
    until(lambda: out, what="compact ran")
    assert out == [False] and not os.path.exists(tmp)
    assert leader.groups[0].log_start() == 1


def test_a_resubmitted_command_is_attached_to_its_first_copy_not_appended_again(ring):
    """A command submitted again with RETRY_MARK (what replica.py does after a
    leader change) is applied once whether its first copy is committed,
    still in the log, or compacted; without a first copy it is appended."""
    r = ring(3)
    leader = r.wait_leader()
    follower = next(e for e in r.engines.values() if e is not leader)
    first = b"write-1"
    assert r.commit(follower, 0, first)[1] == FAIL_REASON.SUCCESS
    # Its resubmission on the leader: attached to the applied entry.
    assert r.commit(leader, 0, first + RETRY_MARK)[1] == FAIL_REASON.SUCCESS
    # From the follower (forwarded): the leader names the entry, which the
    # follower has applied already, so PySyncObj says "unknown outcome" (the
    # node that submitted it answered its callers when it applied it).
    until(lambda: r.applied[follower.index][0], what="the follower applied it")
    for _ in range(2):
        assert r.commit(follower, 0, first + RETRY_MARK)[1] == FAIL_REASON.UNKNOWN_OUTCOME
    # A resubmission whose first copy never reached any log is appended once.
    assert r.commit(follower, 0, b"write-2" + RETRY_MARK)[1] == FAIL_REASON.SUCCESS
    assert r.commit(leader, 0, b"write-2" + RETRY_MARK)[1] == FAIL_REASON.SUCCESS
    until(lambda: all(len(r.applied[i][0]) == 2 for i in range(3)), what="two entries everywhere")
    time.sleep(0.2)      # nothing more arrives (a third entry would, by now)
    assert [c for _, c in r.applied[0][0]] == [first, b"write-2" + RETRY_MARK]
    assert leader.status()[0]["duplicates"] == 4
    # Ordinary commands that happen to be equal are never deduplicated.
    assert r.commit(leader, 0, first)[1] == FAIL_REASON.SUCCESS
    until(lambda: len(r.applied[0][0]) == 3, what="the equal command applied")


def test_a_resubmission_finds_a_first_copy_the_log_compacted(ring, tmp_path):
    r = ring(3, dumps=str(tmp_path))
    leader = r.wait_leader()
    assert r.commit(leader, 0, b"early")[1] == FAIL_REASON.SUCCESS
    for k in range(5):
        assert r.commit(leader, 0, b"k%d" % k)[1] == FAIL_REASON.SUCCESS
    done = []
    r.dumps[leader.index].compact(leader, 0, done)
    until(lambda: done and done[0][1], what="compacted")
    assert leader.groups[0].log_start() > 2       # "early" is no longer in the log
    assert r.commit(leader, 0, b"early" + RETRY_MARK)[1] == FAIL_REASON.SUCCESS
    time.sleep(0.2)
    assert [c for _, c in r.applied[leader.index][0]].count(b"early") == 1
    assert len(r.applied[leader.index][0]) == 6


def test_a_commit_reaches_followers_at_once_only_when_one_waits_for_it(ring):
    """After applying, a leader sends the new commit index at once only to
    serve a follower that forwarded a command; otherwise the next append or
    heartbeat carries it. The heartbeat here (1 s) is longer than the test:
    anything a follower applies came with an append. (Every append to every
    follower at once, spread=0: majority first sends the others theirs
    spread later, with the commit index of then.)"""
    slow = Settings(election_timeout=3.5, heartbeat=1.0, tick=0.01, spread=0)
    r = ring(3, settings=slow)
    leader = r.wait_leader()
    followers = [e for e in r.engines.values() if e is not leader]
    assert r.commit(leader, 0, b"w1")[1] == FAIL_REASON.SUCCESS
    assert r.commit(leader, 0, b"w2")[1] == FAIL_REASON.SUCCESS
    # w2's append carried w1's commit; w2's commit has no reason to leave yet.
    for f in followers:
        until(lambda f=f: [c for _, c in r.applied[f.index][0]][-1:] == [b"w1"],
              timeout=0.9, what="the follower applied w1")
    assert all([c for _, c in r.applied[f.index][0]][-1] == b"w1" for f in followers)
    # A follower's own command is answered without waiting for a heartbeat
    # (the whole test stays inside one), and brings w2 along.
    assert r.commit(followers[0], 0, b"f1", timeout=0.9)[1] == FAIL_REASON.SUCCESS
    assert [c for _, c in r.applied[followers[0].index][0]][-2:] == [b"w2", b"f1"]


def _holds(r, i, command, g=0):
    """Engine *i*'s journal of group *g* holds *command* (after its kind byte)."""
    j = r.journals[i].groups.get(g)
    return j is not None and any(e[0][1:] == command for e in j[:])


def test_a_new_entry_goes_at_once_only_to_the_followers_a_majority_needs(ring):
    """Majority first: of two followers, one gets a new entry at once and its
    answer commits it; the other gets it, with every entry since, spread
    seconds after it last had an append."""
    slow = Settings(election_timeout=3.5, heartbeat=1.0, tick=0.01, spread=0.6)
    r = ring(3, settings=slow)
    leader = r.wait_leader()
    g = leader.groups[0]
    followers = [i for i in range(3) if i != leader.index]
    assert r.commit(leader, 0, b"w0")[1] == FAIL_REASON.SUCCESS
    until(lambda: all(_holds(r, i, b"w0") for i in followers), what="a full round")
    before = g.partial_sends
    assert r.commit(leader, 0, b"w1")[1] == FAIL_REASON.SUCCESS
    assert r.commit(leader, 0, b"w2")[1] == FAIL_REASON.SUCCESS
    assert g.partial_sends >= before + 1
    holding = [i for i in followers if _holds(r, i, b"w2")]
    assert len(holding) >= 1
    if len(holding) == 1:          # the other's turn is due spread after its last
        other = next(i for i in followers if i not in holding)
        assert not _holds(r, other, b"w2")
        until(lambda: _holds(r, other, b"w1") and _holds(r, other, b"w2"),
              what="the other follower got both entries in its turn")
    assert r.leader() is leader


def test_a_write_commits_when_the_follower_it_went_to_first_is_gone(ring):
    """The follower a leader sends new entries to first is cut off: the
    write commits through the other once its turn comes (spread), and the
    next writes go to that one first."""
    slow = Settings(election_timeout=3.5, heartbeat=1.0, tick=0.01, spread=0.3)
    r = ring(3, settings=slow)
    leader = r.wait_leader()
    g = leader.groups[0]
    for k in range(5):         # until a round went to one follower alone
        assert r.commit(leader, 0, b"s%d" % k)[1] == FAIL_REASON.SUCCESS
        if k >= 1 and g.chosen:
            break
    first = g.chosen[0]
    r.isolate(first)
    survivor = next(i for i in range(3) if i not in (leader.index, first))
    assert r.commit(leader, 0, b"w2")[1] == FAIL_REASON.SUCCESS
    assert _holds(r, survivor, b"w2")
    before = g.partial_sends
    assert r.commit(leader, 0, b"w3")[1] == FAIL_REASON.SUCCESS
    assert g.partial_sends > before and _holds(r, survivor, b"w3")
    assert not _holds(r, first, b"w2")
    assert g.chosen == (survivor,)


def test_new_entries_go_first_to_the_follower_that_answers_fastest(ring):
    """Fastest first: of two followers, the one whose answers come back
    sooner gets each new entry at once; the slower one (its answers held
    back 50 ms here, as a slow disk would) gets it in its turn. (The rule
    before it preferred the latest to answer: the slow one.)"""
    slow = Settings(election_timeout=3.5, heartbeat=1.0, tick=0.01, spread=0.6)
    r = ring(3, settings=slow)
    leader = r.wait_leader()
    g = leader.groups[0]
    fast, lagging = [i for i in range(3) if i != leader.index]
    held = []

    def hold_back(sender, peer, messages):
        if sender == lagging and peer == leader.index:
            t = threading.Timer(0.05, leader.deliver, (sender, messages))
            held.append(t)
            t.start()
            return []
        return messages

    r.filter = hold_back
    try:
        # The first rounds time each follower (an untimed one goes first).
        for k in range(6):
            assert r.commit(leader, 0, b"v%d" % k)[1] == FAIL_REASON.SUCCESS
        assert g.round_trip[lagging] > g.round_trip[fast]
        assert g.chosen == (fast,)
        assert _holds(r, fast, b"v5") and not _holds(r, lagging, b"v5")
        until(lambda: _holds(r, lagging, b"v5"), what="the slow follower's turn")
    finally:
        r.filter = None
        for t in held:
            t.cancel()


def _on_engine(engine, fn):
    """fn() on *engine*'s thread (between its rounds); its result."""
    done = threading.Event()
    out = []
    engine.run_soon(lambda: (out.append(fn()), done.set()))
    assert done.wait(WAIT), "the engine thread did not run it"
    return out[0]


def test_fastest_first_times_a_slow_follower_again_and_passes_over_a_silent_one(ring):
    """The choice itself (Group.first_followers), on the engine thread: a
    follower timed slow (five times the chosen one) still gets one round in
    EXPLORE, so a bad first sample is not for good; a chosen follower
    that stops answering counts as slow as its oldest unanswered append,
    however many appends went to it since (UNANSWERED of them kept); and
    one slow answer does not move its time (the median of its last TRIPS)."""
    slow = Settings(election_timeout=3.5, heartbeat=1.0, tick=0.01, spread=0.6)
    r = ring(3, settings=slow)
    leader = r.wait_leader()
    g = leader.groups[0]
    fast, lagging = [i for i in range(3) if i != leader.index]

    def explored():
        g._unanswered = {}
        g.round_trip = {fast: 0.001, lagging: 0.005}
        g.chosen = (fast,)
        picks = [g.first_followers(1)[0].index for _ in range(3 * g.EXPLORE)]
        return picks.count(lagging), g.chosen

    assert _on_engine(leader, explored) == (3, (fast,))

    def silent():
        g._unanswered = {}
        g.round_trip = {fast: 0.001, lagging: 0.05}
        g.chosen = (fast,)
        term = g._sent_this_term()
        term[fast] = collections.deque([(g.probe, time.monotonic() - 0.2, True)])
        for k in range(2 * g.UNANSWERED):
            g.sent_append(fast, g.probe + 1 + k)
        return len(term[fast]), g.first_followers(1)[0].index, g.chosen

    assert _on_engine(leader, silent) == (g.UNANSWERED, lagging, (lagging,))

    def answer(after: float, entries: bool = True) -> float:
        # One append to *fast*, timed, answered *after* seconds; its time then.
        number = g.probe + 1 + len(g._trips.get(fast, ()))
        g._timed = number if entries else -1
        term = g._sent_this_term()
        term[fast] = collections.deque([(number, time.monotonic() - after, entries)])
        g.answered_append(fast, g.raftCurrentTerm, number)
        return g.round_trip[fast]

    def paused():
        # Answered 0.3 s late once (it was stopped; counted already while it
        # was silent): the median of its rounds stays where the others put
        # it. An append without entries (a read's confirmation) asks no
        # fdatasync: not timed. A follower that did become slower is ranked
        # so within TRIPS // 2 + 1 of its rounds, not after one.
        g._unanswered = {}
        g._trips = {}
        g.round_trip = {}
        steady = [answer(0.001) for _ in range(g.TRIPS - 1)]
        spike = answer(0.3)
        untimed = answer(0.05, entries=False)
        slower = [answer(0.004) for _ in range(g.TRIPS // 2 + 1)]
        return steady, spike, untimed, slower

    steady, spike, untimed, slower = _on_engine(leader, paused)
    assert all(t == pytest.approx(0.001, abs=1e-4) for t in steady)
    assert spike == pytest.approx(0.001, abs=1e-4) and untimed == spike
    assert slower[0] < 0.003 and slower[-1] == pytest.approx(0.004, abs=1e-4)


def test_spread_zero_sends_every_entry_to_every_follower_at_once(ring):
    r = ring(3, settings=Settings(election_timeout=3.5, heartbeat=1.0, tick=0.01, spread=0))
    leader = r.wait_leader()
    for k in range(5):
        assert r.commit(leader, 0, b"z%d" % k)[1] == FAIL_REASON.SUCCESS
    assert leader.groups[0].partial_sends == 0


def _rounds_of(engine):
    """Spy on *engine*'s rounds: (thread name, inline) of each, in order."""
    seen = []
    real = engine._round

    def spy(groups, inline=False):
        seen.append((threading.current_thread().name, inline))
        return real(groups, inline)
    engine._round = spy
    return seen


def test_a_peers_message_is_taken_on_the_thread_that_delivers_it_while_the_engine_is_idle(ring):
    """A peer's message is taken on the thread that delivers it when the
    engine thread is between rounds: a write's path saves two wake-ups per
    node. Commands and timers stay on the engine thread."""
    r = ring(3)
    leader = r.wait_leader()
    assert r.commit(leader, 0, b"warm")[1] == FAIL_REASON.SUCCESS
    on_leader = _rounds_of(leader)
    on_follower = {e.index: _rounds_of(e) for e in r.engines.values() if e is not leader}
    for k in range(20):
        assert r.commit(leader, 0, b"w%d" % k)[1] == FAIL_REASON.SUCCESS
    # Commands: on the engine thread (its rounds batch them), never here.
    me = threading.current_thread().name
    assert all(name != me for name, _ in on_leader), on_leader
    # A follower (the one sent to first) takes an append on the thread that
    # delivered it (here the leader's round's; on a node, the Raft stream's
    # event loop).
    assert any(inline and name != f"chord-raft-{i}"
               for i, seen in on_follower.items() for name, inline in seen), on_follower
    assert any(name == f"chord-raft-{leader.index}" and not inline for name, inline in on_leader)


def test_a_round_stays_on_the_engine_thread_while_it_is_in_one(ring):
    """While the engine thread is in a round, what arrives waits for it
    (the lock is not taken twice, nor waited for by the bringer)."""
    r = ring(3)
    leader = r.wait_leader()
    held, go = threading.Event(), threading.Event()
    leader.run_soon(lambda: (held.set(), go.wait(5)))   # a round of the engine thread
    assert held.wait(5)
    before = leader.inline_rounds
    done = []
    leader.submit(0, b"while-held", lambda result, reason: done.append(reason))
    leader.deliver(99, [])
    assert leader.inline_rounds == before and done == []
    go.set()
    until(lambda: done, what="the engine thread took the command")
    assert done == [FAIL_REASON.SUCCESS]


class _Events(list):
    """A replica's applied entries of group 0 that also note each apply in *events*."""

    def __init__(self, items, events):
        super().__init__(items)
        self.events = events

    def append(self, item):
        self.events.append(("apply", item[0]))
        super().append(item)


def _loop_delivery(r):
    """Deliver each engine's messages on an event loop of its own, as a
    node's Raft stream does (a round taken there puts its tick on the loop)."""
    loops = {}
    for i, e in r.engines.items():
        loop = asyncio.new_event_loop()
        threading.Thread(target=loop.run_forever, daemon=True, name=f"loop-{i}").start()
        loops[i] = loop
        real = e.deliver
        e.deliver = lambda sender, messages, real=real, loop=loop: \
            loop.call_soon_threadsafe(real, sender, messages)
    return loops


@pytest.mark.parametrize("on_a_loop", [False, True], ids=["thread", "event-loop"])
def test_a_followers_answer_leaves_before_it_applies_what_the_append_committed(ring, on_a_loop):
    """A follower's answer to an append is on its way (durable) before the
    round's tick applies the entries that append's commit index covers: the
    apply is not on the leader's wait for its majority. The tick follows on
    the engine thread, or on the loop that took the round."""
    slow = Settings(election_timeout=3.5, heartbeat=1.0, tick=0.01, spread=0)
    r = ring(3, settings=slow)
    leader = r.wait_leader()
    assert r.commit(leader, 0, b"warm")[1] == FAIL_REASON.SUCCESS
    f = next(e for e in r.engines.values() if e is not leader)
    events = []
    loops = {}
    try:
        r.applied[f.index][0] = _Events(r.applied[f.index][0], events)
        real_deliver, real_send = f.deliver, f._send

        def deliver(sender, messages):
            for m in messages:
                if m.kind == rpb.APPEND_ENTRIES and m.entries:
                    events.append(("append", m.entries[-1].idx, m.commit_index))
            real_deliver(sender, messages)

        def send(out):
            for m in out.get(leader.index, ()):
                if m.kind == rpb.NEXT_NODE_IDX and m.success:
                    events.append(("answer", m.next_node_idx - 1))
            real_send(out)

        f.deliver, f._send = deliver, send
        # (the spy sees a message when the engine takes it, after the hop)
        if on_a_loop:
            loops.update(_loop_delivery(r))
        for k in range(10):
            assert r.commit(leader, 0, b"w%d" % k)[1] == FAIL_REASON.SUCCESS
        until(lambda: any(c == b"w8" for _, c in r.applied[f.index][0]), what="w8 applied")
        checked = 0
        for n, ev in enumerate(events):
            if ev[0] != "append":
                continue
            _, last, commit = ev
            applied_before = max([e[1] for e in events[:n] if e[0] == "apply"], default=0)
            if commit <= applied_before:
                continue              # it committed nothing new here
            rest = events[n + 1:]
            answer = rest.index(("answer", last))
            first_apply = next(k for k, e in enumerate(rest) if e[0] == "apply")
            assert answer < first_apply, events[n:n + 6]
            checked += 1
        assert checked >= 5, events
    finally:
        for loop in loops.values():
            loop.call_soon_threadsafe(loop.stop)


def _lead(r, target):
    """Hand group 0's leadership to engine *target* (from whoever leads)."""
    def hand(e):
        g = e.groups[0]
        if g._isLeader():
            g.transferLeadership(e._members[target.index])
    deadline = time.monotonic() + WAIT
    while r.leader() is not target:
        # Refused while the target is not caught up: ask again.
        assert time.monotonic() < deadline, f"node {target.index} never led"
        cur = r.leader()
        if cur is not None:
            cur.run_soon(lambda cur=cur: hand(cur))
        time.sleep(0.1)


def test_a_leader_handing_its_group_to_the_owner_sends_that_rounds_entries_to_every_follower(ring):
    """lead_from_owners: the round that sends the owner its timeout_now sends
    that round's new entries to every follower, the owner included, even
    when majority first would pass the owner over. Else the owner stands for
    election with a log shorter than the other follower's, loses, and the
    group waits for an election timeout. So the owner wins in the very next
    term."""
    slow = Settings(election_timeout=3.5, heartbeat=1.0, tick=0.01, spread=0.6)
    r = ring(3, settings=slow)
    _lead(r, r.engines[1])             # group 0's owner is node 0: let node 1 lead
    leader = r.engines[1]
    g = leader.groups[0]
    owner = leader._members[0]
    assert r.commit(leader, 0, b"w0")[1] == FAIL_REASON.SUCCESS
    match = g._SyncObj__raftMatchIndex
    until(lambda: all(match.get(leader._members[i]) == g._SyncObj__getCurrentLogIndex()
                      for i in (0, 2)), what="both followers caught up")
    term = g.raftCurrentTerm
    held, go = threading.Event(), threading.Event()
    leader.run_soon(lambda: (held.set(), go.wait(5)))     # hold the engine thread
    assert held.wait(5)

    def hand():
        # The owner answered last: majority first sends a new entry to the other.
        g._SyncObj__lastResponseTime[owner] = 0.0
        leader.lead_from_owners()

    leader.run_soon(hand)                                 # the same round as ...
    leader.submit(0, b"with-the-transfer", lambda result, reason: None)   # ... this entry
    go.set()
    until(lambda: r.leader() is r.engines[0], what="the owner leads")
    assert r.engines[0].groups[0].raftCurrentTerm == term + 1
    assert _holds(r, 0, b"with-the-transfer")


def test_a_leader_that_only_has_the_dump_still_recognises_its_commands(ring, tmp_path):
    """The dedup of resubmissions (RETRY_MARK) reaches back into a dump: a
    replica that installed one and then leads, and a leader restarted on a
    compacted log, attach a resubmission of a command inside the dump to its
    first copy instead of appending it again."""
    r = ring(3, dumps=str(tmp_path))
    leader, victim, (at, ok) = _compacted_past_a_lost_replica(r, 10, 5)
    assert ok
    v = r.start(victim, learn_grace=5.0)
    assert r.commit(leader, 0, b"c0")[1] == FAIL_REASON.SUCCESS
    until(lambda: r.applied[victim][0] == r.applied[leader.index][0],
          what="the replica caught up")
    assert r.dumps[victim].installed == [at]
    _lead(r, v)
    assert r.commit(v, 0, b"a3" + RETRY_MARK)[1] == FAIL_REASON.SUCCESS
    until(lambda: v.status()[0]["duplicates"] == 1, what="the resubmission attached")
    assert r.commit(v, 0, b"d0")[1] == FAIL_REASON.SUCCESS
    # Restarted on its compacted log, it knows them from its own dump.
    r.crash(victim)
    v = r.start(victim)
    _lead(r, v)
    assert r.commit(v, 0, b"b2" + RETRY_MARK)[1] == FAIL_REASON.SUCCESS
    until(lambda: v.status()[0]["duplicates"] == 1, what="the resubmission attached")
    assert r.commit(v, 0, b"d1")[1] == FAIL_REASON.SUCCESS
    # The original leader never restarted: its applied list is the log.
    until(lambda: r.applied[leader.index][0][-1][1] == b"d1", what="d1 applied everywhere")
    tail = [c for _, c in r.applied[leader.index][0]][-3:]
    assert tail == [b"c0", b"d0", b"d1"], tail


def test_a_round_sends_a_peer_its_appends_with_what_waits_for_the_sync():
    """A leader's appends leave before the journal sync, except to a peer the
    round also has acknowledgements (or votes) for: those two go together
    after the sync, in one batch, appends first."""
    journals = Journals()
    sent = []

    def send(out):
        sent.append(("dirty" if journals.dirty else "synced", dict(out)))

    e = Engine(0, {0: (0, 1, 2)}, journals, lambda *a: None, send, FAST)
    append_1, append_2, ack_1 = (rpb.Message(group=0, kind=rpb.APPEND_ENTRIES, term=t)
                                 for t in (1, 2, 3))
    e._early = {1: [append_1], 2: [append_2]}
    e._out = {1: [ack_1]}
    journals.dirty = True
    e._flush()
    assert sent == [("dirty", {2: [append_2]}), ("synced", {1: [append_1, ack_1]})]
    assert e._early == {} and e._out == {}
    sent.clear()
    e._early = {1: [append_1]}
    journals.dirty = True
    e._flush()
    assert sent == [("dirty", {1: [append_1]})]


def test_groups_open_no_pipes_of_their_own(ring):
    """PySyncObj wakes its thread through a pipe per group (a write per
    command, a select and reads per tick); the engine has a wake-up of its
    own, so its groups open no file descriptor."""
    fds = lambda: len(os.listdir("/proc/self/fd"))   # noqa: E731
    before = fds()
    r = ring(3, groups={0: (0, 1, 2), 1: (1, 2, 0), 2: (2, 0, 1)})
    for g in range(3):
        leader = r.wait_leader(g)
        assert r.commit(leader, g, b"g%d" % g)[1] == FAIL_REASON.SUCCESS
    assert fds() == before


def test_leaderless_for_counts_as_of_the_engines_last_summary(ring):
    """How long a group has gone without a leader (replica.py refuses its
    commands past 5 election timeouts): 0 while it has one, growing on an
    isolated replica, and never grown by a stalled engine thread alone."""
    r = ring(3)
    leader = r.wait_leader()
    e = r.engines[leader.index]
    assert e.leaderless_for(0) == 0.0
    lone = next(r.engines[i] for i in range(3) if r.engines[i] is not leader)
    r.isolate(lone.index)
    until(lambda: lone.leaderless_for(0) > 0.5, what="the cut-off replica without a leader")
    e._summary_at -= 100            # as if the engine thread had stalled before its summary
    assert e.leaderless_for(0) == 0.0


# -- reads by confirmation (engine.read: Raft's ReadIndex) ------------------------------

class _Read:
    """One engine.read: which of its two callbacks ran, and what the replica
    had applied by then."""

    def __init__(self, r: Ring, e: Engine, g: int = 0):
        self.done = threading.Event()
        self.how = []
        self.applied_then = None

        def ready():
            self.how.append("ready")
            self.applied_then = list(r.applied[e.index][g])
            self.done.set()

        def fallback():
            self.how.append("log")
            self.done.set()

        e.read(g, ready, fallback)


def test_a_leader_answers_a_read_after_a_majority_heard_it_and_logs_nothing(ring):
    r = ring(3)
    leader = r.wait_leader()
    follower = next(e for e in r.engines.values() if e is not leader)
    # A write acknowledged on a follower, before the read starts.
    assert r.commit(follower, 0, b"seen")[1] == FAIL_REASON.SUCCESS
    until(lambda: leader.status()[0]["commit_index"] == leader.status()[0]["log_index"],
          what="the leader's log committed")
    before = leader.groups[0]._SyncObj__getCurrentLogIndex()
    reads = [_Read(r, leader) for _ in range(20)]
    for rd in reads:
        assert rd.done.wait(WAIT)
    assert all(rd.how == ["ready"] for rd in reads)
    assert all(rd.applied_then[-1][1] == b"seen" for rd in reads)
    assert leader.groups[0]._SyncObj__getCurrentLogIndex() == before   # no entry for a read
    assert leader.groups[0].index_reads == 20


def test_a_follower_hands_a_read_back_to_the_log(ring):
    r = ring(3)
    leader = r.wait_leader()
    follower = next(e for e in r.engines.values() if e is not leader)
    rd = _Read(r, follower)
    assert rd.done.wait(WAIT) and rd.how == ["log"]


def test_a_cut_off_leader_never_confirms_a_read(ring):
    r = ring(3)
    old = r.wait_leader()
    assert r.commit(old, 0, b"old")[1] == FAIL_REASON.SUCCESS
    until(lambda: old.groups[0].confirmable(), what="the leader's no-op committed")
    r.isolate(old.index)
    rd = _Read(r, old)         # it still believes it leads
    others = [i for i in range(3) if i != old.index]
    new = r.wait_leader(among=others)
    assert r.commit(new, 0, b"new")[1] == FAIL_REASON.SUCCESS
    # No majority answers the old leader: the read goes back to the log, never
    # answered from a map that lacks "new".
    assert rd.done.wait(WAIT)
    assert rd.how == ["log"]


def test_answers_from_an_older_term_confirm_no_read(ring):
    r = ring(3)
    leader = r.wait_leader()
    r.crash(leader.index)      # its thread stopped: the test owns its state
    g = leader.groups[0]
    term = g.raftCurrentTerm
    g.heard = {i: (term - 1, 10 ** 9) for i in range(3) if i != leader.index}
    assert g.confirmed() == 0
    g.heard[next(iter(g.heard))] = (term, 7)
    assert g.confirmed() == 7


def test_a_learner_vouches_for_no_leader(ring):
    r = ring(3)
    leader = r.wait_leader()
    e = next(x for x in r.engines.values() if x is not leader)
    r.crash(e.index)           # its thread stopped: the test owns its outbox
    g = e.groups[0]
    message = {"type": "next_node_idx", "next_node_idx": 3, "reset": False, "success": False}
    e._out.clear()
    g.echo = (5, 2)            # answering an append numbered 5, of term 2
    e._learning[0] = None
    e._outgoing(leader.index, 0, dict(message))
    e._learning.pop(0)
    e._outgoing(leader.index, 0, dict(message))
    held, sent = e._out[leader.index]
    assert not held.HasField("probe") and not held.HasField("probe_term")
    assert (sent.probe, sent.probe_term) == (5, 2)


def test_reads_waiting_or_made_after_the_engine_stops_go_back_at_once(ring):
    r = ring(3)
    leader = r.wait_leader()
    until(lambda: leader.groups[0].confirmable(), what="the leader's no-op committed")
    for j in range(3):
        if j != leader.index:
            r.cut |= {(j, leader.index)}     # no answers: the read waits
    waiting = _Read(r, leader)
    until(lambda: leader.groups[0].reads, what="the read waiting for a majority")
    r.crash(leader.index)
    assert waiting.done.wait(WAIT) and waiting.how == ["log"]
    late = _Read(r, leader)
    assert late.done.is_set() and late.how == ["log"]


def test_a_leader_whose_followers_never_echo_reads_through_the_log_at_once(ring):
    r = ring(3)
    leader = r.wait_leader()
    until(lambda: leader.groups[0].confirmable(), what="the leader's no-op committed")

    def old_release(sender, peer, messages):      # peers that do not know the field
        for m in messages:
            m.ClearField("probe")
            m.ClearField("probe_term")
        return messages
    r.filter = old_release
    until(lambda: leader.groups[0].raftCurrentTerm > 0, what="a term")
    r.crash(leader.index)        # a restart: a new leader, in a new term
    new = r.wait_leader(among=[i for i in range(3) if i != leader.index])
    until(lambda: new.groups[0].confirmable(), what="the new leader's no-op committed")
    t0 = time.monotonic()
    rd = _Read(r, new)
    assert rd.done.wait(WAIT) and rd.how == ["log"]
    assert time.monotonic() - t0 < FAST.election_timeout     # not after its patience


def test_a_dropped_transfer_is_answered_with_what_was_applied_not_the_log_end(ring):
    # PySyncObj answers a finished dump transfer with success at its log's end;
    # a replica that dropped the dump (stale or unreadable) may hold entries of a
    # deposed leader past what it applied, which must not count as matching.
    r = ring(3)
    leader = r.wait_leader()
    assert r.commit(leader, 0, b"one")[1] == FAIL_REASON.SUCCESS
    e = next(x for x in r.engines.values() if x is not leader)
    until(lambda: e.groups[0].raftLastApplied >= 2, what="the follower applied 'one'")
    r.crash(e.index)           # its thread stopped: the test owns its outbox
    g = e.groups[0]
    applied = g.raftLastApplied
    e._out.clear()
    g.dropped_dump = True
    e._outgoing(leader.index, 0, {"type": "next_node_idx", "next_node_idx": applied + 9,
                                  "reset": False, "success": True})
    e._outgoing(leader.index, 0, {"type": "next_node_idx", "next_node_idx": applied + 9,
                                  "reset": False, "success": True})
    after_drop, later = e._out[leader.index]
    assert (after_drop.next_node_idx, after_drop.reset) == (applied + 1, True)
    assert (later.next_node_idx, later.reset) == (applied + 9, False)    # only that answer


def test_a_learner_does_not_learn_from_a_deposed_leader(ring):
    # A leads term T and is cut off; B and C elect B in a later term and commit
    # "W". C then loses its disk and, back as a learner, hears only A (B cut
    # off from it). Learning A's log and counting as a full replica would let
    # A commit over W with C. C must wait to hear the newest term first.
    slow_fallback = Settings(election_timeout=0.25, heartbeat=0.04, tick=0.01,
                             leader_fallback=60.0)     # A does not step down by itself
    r = ring(3, settings=slow_fallback)
    a = r.wait_leader()
    assert r.commit(a, 0, b"before")[1] == FAIL_REASON.SUCCESS
    b_i, c_i = [i for i in range(3) if i != a.index]
    until(lambda: len(r.applied[c_i][0]) >= 1 and len(r.applied[b_i][0]) >= 1,
          what="every replica applied 'before'")
    r.isolate(a.index)
    b = r.wait_leader(among=[b_i, c_i])
    b_i, c_i = b.index, next(i for i in (b_i, c_i) if i != b.index)
    assert r.commit(b, 0, b"W")[1] == FAIL_REASON.SUCCESS
    r.crash(c_i)
    r.journals[c_i] = Journals()             # its disk is gone
    r.applied[c_i][0].clear()
    r.cut |= {(b_i, c_i), (c_i, b_i)}
    r.cut -= {(a.index, c_i), (c_i, a.index)}
    c = r.start(c_i, learn_grace=30.0)
    outcome = []
    a.submit(0, b"X", lambda res, reason: outcome.append(reason))
    until(lambda: c.status().get(0, {}).get("leader") == a.index,
          what="the learner heard the deposed leader")
    time.sleep(1.0)      # no event marks a commit that must not happen; A had the time
    assert c.learning(0), "the learner took a deposed leader's log"
    assert FAIL_REASON.SUCCESS not in outcome, "the deposed leader committed with the learner"
    r.cut.clear()        # B reachable: C learns its term, then its log
    until(lambda: not c.learning(0), what="the learner became a full replica")
    until(lambda: any(cmd == b"W" for _, cmd in r.applied[c_i][0]), what="C applied W")
    assert all(cmd != b"X" for _, cmd in r.applied[c_i][0])


def test_a_replacement_with_a_member_down_stays_a_learner_past_its_grace(ring):
    # A leads and commits "W" with C while B is cut off (B lacks W). C then
    # loses its disk and A goes down. No leader can be heard, but B has a log
    # of its own: were C a full replica after its grace, it would vote B in,
    # and B, without W, would overwrite A's W once A is back.
    r = ring(3)
    a = r.wait_leader()
    b_i, c_i = [i for i in range(3) if i != a.index]
    assert r.commit(a, 0, b"before")[1] == FAIL_REASON.SUCCESS
    until(lambda: len(r.applied[b_i][0]) >= 1, what="B applied 'before'")
    r.cut |= {(a.index, b_i), (b_i, a.index)}
    assert r.commit(a, 0, b"W")[1] == FAIL_REASON.SUCCESS       # on A and C only
    r.crash(c_i)
    r.journals[c_i] = Journals()             # C's disk is gone
    r.applied[c_i][0].clear()
    a_i = a.index
    r.crash(a_i)                             # A is down, its journal kept
    r.cut.clear()
    grace = 2 * FAST.election_timeout
    c = r.start(c_i, learn_grace=grace)
    until(lambda: c.votes_ignored >= 5, what="B campaigning at the learner, past its grace")
    assert c.learning(0), "the replacement became a full replica with a member down"
    assert r.leader(0, among=[b_i, c_i]) is None
    r.start(a_i)                             # A back: the group elects, C learns W
    until(lambda: not c.learning(0), what="C a full replica")
    for i in (b_i, c_i):
        until(lambda: any(cmd == b"W" for _, cmd in r.applied[i][0]), what=f"{i} applied W")


def test_new_learners_stay_learners_past_their_grace_until_every_member_answers(ring):
    # Three new replicas, one of them never started: the two cannot tell this
    # from the case above (the third could hold what they forgot), so they
    # stay learners; the third's start makes all three full.
    r = ring(3)
    for i in range(3):
        r.crash(i)
        r.journals[i] = Journals()
    grace = FAST.election_timeout
    two = [r.start(i, learn_grace=grace) for i in (0, 1)]
    until(lambda: all(len(e._history.get(0, {})) == 1 for e in two),
          what="each heard the other's answer to its term query")
    time.sleep(3 * grace)      # past the grace; nothing marks a change that must not happen
    assert all(e.learning(0) for e in two)
    third = r.start(2, learn_grace=grace)
    leader = r.wait_leader()
    assert r.commit(leader, 0, b"first")[1] == FAIL_REASON.SUCCESS
    until(lambda: not any(e.learning(0) for e in (*two, third)), what="all three full")


def test_with_new_ring_two_of_three_new_replicas_are_full_once_past_their_grace(ring):
    # The case above with the operator's word that the ring is new (`node
    # serve --new-ring`): a majority saying so is enough once the grace is
    # over, so the two elect and commit without the third; the third, started
    # later without the word, learns from their leader.
    r = ring(3)
    for i in range(3):
        r.crash(i)
        r.journals[i] = Journals()
    grace = FAST.election_timeout
    two = [r.start(i, learn_grace=grace, new_ring=True) for i in (0, 1)]
    leader = r.wait_leader()
    assert not any(e.learning(0) for e in two)
    assert r.commit(leader, 0, b"first")[1] == FAIL_REASON.SUCCESS
    third = r.start(2, learn_grace=30.0)
    until(lambda: not third.learning(0), what="the third learned from the leader")
    until(lambda: any(c == b"first" for _, c in r.applied[2][0]), what="the third has 'first'")


def test_with_new_ring_a_replica_every_member_answered_for_is_full_before_its_grace(ring):
    r = ring(3)
    for i in range(3):
        r.crash(i)
        r.journals[i] = Journals()
    engines = [r.start(i, learn_grace=30.0, new_ring=True) for i in range(3)]
    leader = r.wait_leader()      # long before 30 s: each heard both others
    assert not any(e.learning(0) for e in engines)
    assert r.commit(leader, 0, b"first")[1] == FAIL_REASON.SUCCESS


def test_with_new_ring_a_replacement_that_hears_a_written_log_stays_a_learner(ring):
    # The word given by mistake to a replacement (or to a node that starts
    # late into a ring that began without it): one answer of a log holding
    # entries keeps it a learner however long, with the other members down,
    # so it never counts as a full replica that forgot nothing.
    r = ring(3)
    leader = r.wait_leader()
    assert r.commit(leader, 0, b"W")[1] == FAIL_REASON.SUCCESS
    others = [i for i in range(3) if i != leader.index]
    victim, keeper = others
    until(lambda: any(c == b"W" for _, c in r.applied[keeper][0]), what="the keeper has W")
    r.crash(leader.index)
    r.crash(victim)
    r.journals[victim] = Journals()          # its disk is gone
    grace = FAST.election_timeout
    e = r.start(victim, learn_grace=grace, new_ring=True)
    until(lambda: len(e._history.get(0, {})) == 1, what="the keeper answered its term query")
    time.sleep(3 * grace)
    assert e.learning(0), "a replacement given --new-ring became full beside a written log"
    assert r.leader(0, among=[victim, keeper]) is None


def test_a_replica_learns_only_the_groups_it_is_told_and_says_which_are_left(ring):
    # Two groups on three nodes; node 0 restarts learning group 1 only (it was
    # a full replica of group 0 when it stopped: its LEARNING listed group 1).
    r = ring(3, groups={0: (0, 1, 2), 1: (0, 1, 2)})
    for g in (0, 1):
        r.wait_leader(g)
    r.crash(0)
    told = []
    e = r.start(0, learn_grace=30.0, learners={1}, on_learned=told.append)
    assert not e.learning(0) and e.learning(1)
    until(lambda: not e.learning(1), what="group 1 learned")
    assert told == [frozenset()]


def test_a_group_learned_that_cannot_be_recorded_stays_a_learner_until_it_can(ring):
    r = ring(3)
    r.wait_leader()
    r.crash(0)
    r.journals[0] = Journals()
    record = {"ok": False, "asked": []}

    def on_learned(still):
        record["asked"].append(still)
        return record["ok"]
    e = r.start(0, learn_grace=30.0, on_learned=on_learned)
    until(lambda: len(record["asked"]) >= 3, what="asked to record it, more than once")
    assert e.learning(0)           # not recorded: still a learner
    record["ok"] = True
    until(lambda: not e.learning(0), what="a full replica once it could be recorded")


def test_a_full_replica_knows_which_peers_are_learning_from_their_queries(ring):
    r = ring(3)
    r.wait_leader()
    for i in (1, 2):
        r.crash(i)
        r.journals[i] = Journals()
    r.crash(0)
    full = r.start(0)               # its journal kept: a full replica
    learners = [r.start(i, learn_grace=30.0) for i in (1, 2)]
    until(lambda: full.learners_of(0) == {1, 2}, what="node 0 knows 1 and 2 are learning")
    assert all(e.learners_of(0) >= {e.index} for e in learners)
    assert r.leader(0) is None      # one full replica of three: no election


def test_a_learner_does_not_stand_for_election(ring):
    # A new ring whose nodes started at different times: A is full, B and C
    # still learning. Were a learner to campaign, it would win with A's vote
    # and lead a group whose other learners cannot vouch for each other.
    r = ring(3)
    for i in range(3):
        r.crash(i)
        r.journals[i] = Journals()
    a = r.start(0, learn_grace=0.0001)
    learners = [r.start(i, learn_grace=30.0) for i in (1, 2)]
    until(lambda: not a.learning(0), what="A a full replica (once B and C answered)")
    until(lambda: a.groups[0].raftCurrentTerm >= 2, what="A campaigning")
    time.sleep(8 * FAST.election_timeout)   # their timers ran out many times over
    for e in learners:
        assert e.learning(0)
        assert e.groups[0].raftCurrentTerm == 0       # never a candidate
        assert e.votes_ignored > 0                     # and no vote for A
    assert r.leader(0) is None


def test_a_dump_chunk_commits_nothing_its_log_was_not_checked_against(ring, tmp_path):
    # PySyncObj, on a dump chunk (no log matching), set the commit index to
    # min(leader's, its log's end): an entry of a deposed leader past what the
    # follower applied would be committed and applied.
    r = ring(3, dumps=str(tmp_path))
    leader = r.wait_leader()
    assert r.commit(leader, 0, b"one")[1] == FAIL_REASON.SUCCESS
    f = next(x for x in r.engines.values() if x is not leader)
    until(lambda: any(c == b"one" for _, c in r.applied[f.index][0]), what="f applied one")
    r.crash(f.index)           # its thread stopped: the test drives it
    g = f.groups[0]
    log = g._SyncObj__raftLog
    end = log[-1][1]
    term = g.raftCurrentTerm
    log.add(bytes([REGULAR]) + b"ghost", end + 1, term)    # never committed anywhere
    g.transport._onMessageReceived(f._members[leader.index], {
        "type": "append_entries", "term": term + 1, "commit_index": end + 50,
        "serialized": (b"\0" * 16, True, False)})          # a transfer's first chunk
    g.doTick(0.0)
    assert g.raftCommitIndex <= end
    assert all(c != b"ghost" for _, c in r.applied[f.index][0])
