"""The replication stage of one node: every Raft group it is in, one round at a time.

With ``ring.replicas: R > 1`` the arc of node *g* is replicated on
``ring.replicas(g, R)`` and is one Raft group, id *g*. Consensus -- leader
election, log matching, the commit rule -- is PySyncObj's (``SyncObj``);
none of it is ours. What is ours is how it runs inside a node:

- **One thread, "chord-raft"** ticks every group's ``SyncObj`` (each built
  with ``autoTick=False``) in rounds. A round: take the messages peers
  sent, take the commands the dispatcher queued (``submit``), tick the
  groups they are for (and every group at least every ``Settings.tick``,
  for its timers), make the journal durable, then let the round's messages
  leave. Rounds are one at a time, under one lock: PySyncObj runs
  single-threaded, as it expects. While the engine thread is between
  rounds, the event loop that received a peer's message runs the round
  itself (``_take_round``), and the round's messages leave from there:
  two thread wake-ups fewer per node on a write's path (sequential
  creates, BENCHMARKS.md). Commands, reads, timers, ``run_soon`` functions and the
  install of a dump stay on the engine thread. (Taking the dispatcher's
  commands the same way cost A@16 14%: the engine thread's rounds batch
  the commands that arrive meanwhile.) The loop then also waits out the
  round's fdatasync, and the rare rewrite of the journal (raftjournal.py).
- **Durable before it counts.** A follower's "I have entry i" (next_node_idx
  success) and a vote leave the node only after the round's
  ``journal.sync()`` (one fdatasync for every group of the node) returned:
  an entry counts towards a majority only on replicas that have it on
  disk, and a vote is cast only once it is durable. In a round taken by
  the event loop that received the append, they leave as soon as it
  returned, before the tick applies what the append committed: that tick
  is left to the loop's next turn, once the answers are written. A leader's
  append_entries leave before that sync (Raft allows the leader to write
  its log in parallel with replicating it; to a peer that gets messages
  after the sync anyway they go with those): the followers' fdatasyncs run
  while the leader's does, and the leader counts itself towards an entry's
  majority only in a later round, which starts after this round's sync
  returned. A failed sync fail-stops the node: nothing else of that round
  is sent.
- **Majority first.** A leader sends a new entry at once only to the
  followers its majority needs (with R = 3: one, the fastest to answer:
  ``Group.first_followers``),
  and to the others once the first entry they lack is ``Settings.spread``
  (10 ms) old, or at the heartbeat, every entry since in one message. A write then
  costs one follower round, not two (``Group.send_appends``). When entries
  go out is all that changes; what commits is PySyncObj's rule.
- **No pickle.** Commands are our own bytes; PySyncObj's apply path (which
  unpickles ``@replicated`` calls and membership changes) is replaced by
  ``apply(group, idx, command)``; messages travel as chord.raft.v1 protobuf
  (codec.py); an entry never exceeds one message, so PySyncObj's pickled
  "transmission" never happens.
- **Reads by confirmation (Raft's ReadIndex, thesis 6.4), beside the log.**
  PySyncObj has no read path of its own, and a read through the log costs
  an entry, written and fdatasynced on a majority. ``read`` instead takes
  the leader's commit index when the read arrives (only once the leader
  committed an entry of its own term -- its no-op --, so that index covers
  every entry committed before) and waits for two things: a majority
  (itself and enough followers) answered one of its append_entries sent
  after that moment while still in that term, and the group applied up to
  that index here. Then nothing newer can have been committed elsewhere:
  a leader of a later term needs a majority of a later term first, and a
  follower answers a leader's append only while it is in that leader's
  term (PySyncObj ignores older terms). Each round's appends of a group
  carry a number (``probe``); a follower's next_node_idx in answer carries
  it back with the append's term, after the round's journal sync like any
  answer (so the term it vouches for is durable), and a replica still
  learning (it lost its disk, and with it its votes) vouches for nothing.
  No clock is involved. Anything else -- not the leader, no entry of its
  term committed yet, the term moved on, no majority within an election
  timeout -- hands the read back (``fallback``) to go through the log.
  This is the one piece of Raft that is ours; it decides nothing (no
  vote, no entry, no commit), it only reads what PySyncObj decided.
- **Compaction is the node's.** PySyncObj never serializes a state of its
  own (its thresholds are out of reach): after each node snapshot the node
  writes each group's dump (dump.py) and ``compact`` drops the group's log
  up to the dump's first entry. A replica behind the start of its leader's
  log receives the dump in chunks, PySyncObj's snapshot transfer, and
  *install* puts it into the node (replica.py) before the entries after it.

The engine does no network I/O itself: *send* takes each round's messages
per peer (exchange.py puts them on gRPC streams; tests wire engines
directly), and ``deliver`` takes what arrived.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import hashlib
import logging
import os
import queue
import threading
import time
from typing import Callable

import pysyncobj.syncobj as _syncobj
from pysyncobj import SyncObj, SyncObjConf
from pysyncobj.config import FAIL_REASON
from pysyncobj.journal import Journal
from pysyncobj.node import Node as _PsoNode
from pysyncobj.transport import Transport

from chordctl.core.replication import codec, dump
from chordctl.errors import CorruptRecordError, StorageError
from chordctl.pb import raft_pb2 as rpb

logger = logging.getLogger("chordctl.raft")

REGULAR = _syncobj._COMMAND_TYPE.REGULAR
NO_OP = _syncobj._COMMAND_TYPE.NO_OP
_REGULAR_BYTE = bytes([REGULAR])
_LEADER = _syncobj._RAFT_STATE.LEADER
# PySyncObj's clock (CLOCK_MONOTONIC_RAW), not time.monotonic's: its timers
# are compared with it, and the two drift apart by NTP's slew.
_pso_now = _syncobj.monotonicTime
# What a resubmitted command ends with (Command.retry = true, appended to the
# first copy's bytes: protobuf merges it). Only a command that ends so makes a
# leader look for its first copy in the log: the write path pays nothing.
RETRY_MARK = rpb.Command(retry=True).SerializeToString()
# Commands of entries dropped by a compaction a leader still recognises (as
# digests) when their resubmission arrives after the compaction.
RECENT_COMPACTED = 4096

# PySyncObj builds its journal from conf.journalFile (a path, or None for
# memory); ours is an object, handed over as that field.
_create_journal = _syncobj.createJournal


def _journal_for(journal_file):
    if isinstance(journal_file, Journal):
        return journal_file
    return _create_journal(journal_file)


_syncobj.createJournal = _journal_for

# PySyncObj wakes its own thread through a pipe: a write per command, and a
# select and two reads per tick. The engine ticks the groups itself and has a
# wake-up of its own (_Wake): no pipe, and a poller with nothing to poll.
_syncobj.PIPE_NOTIFIER_ENABLED = False


class _NoPoller:
    """PySyncObj's poller for a group: it polls the sockets of PySyncObj's
    own transport, which the engine never opens."""

    def subscribe(self, descr, callback, eventMask):
        raise RuntimeError("raft: a group has no sockets of its own to poll")

    def unsubscribe(self, descr):
        pass

    def poll(self, timeout):
        pass


_NO_POLLER = _NoPoller()

# Callback outcomes a submitter may see (PySyncObj's FAIL_REASON names).
REASONS = {v: k.lower() for k, v in vars(FAIL_REASON).items() if k.isupper()}


@dataclasses.dataclass(frozen=True)
class Settings:
    """Timers of every group (seconds). An election starts after
    *election_timeout* .. 2x without a leader; the leader sends heartbeats
    every *heartbeat*; it steps down when no majority answered for
    *leader_fallback*. *max_entry_bytes*: the largest command (and the most
    one append_entries carries). *spread*: a leader sends a new entry at
    once only to the followers its majority needs, and to the others once
    the first entry they lack is this old (at most *heartbeat*; 0: every
    follower at once, PySyncObj's way)."""

    election_timeout: float = 1.0
    heartbeat: float = 0.1
    leader_fallback: float | None = None   # default: the election timeout
    tick: float = 0.02
    max_entry_bytes: int = 4 * 1024 * 1024
    spread: float = 0.01

    def conf(self, journal: Journal, owner: bool = False, dump_file: str | None = None,
             install: Callable[[str], tuple] | None = None) -> SyncObjConf:
        """PySyncObj's settings for one group. The arc's *owner* waits half as
        long before it stands for election (between the heartbeat's 3x and the
        others' minimum), so it usually wins the first election and stays
        leader: no transfer, no failed forwards, after a start. *dump_file*
        is the group's dump (dump.py), *install* what loads one that arrived."""
        fallback = self.leader_fallback or self.election_timeout
        low, high = self.election_timeout, 2 * self.election_timeout
        if owner:
            low = max(3.2 * self.heartbeat, 0.5 * self.election_timeout)
            high = max(low * 1.2, 0.95 * self.election_timeout)
        return SyncObjConf(
            autoTick=False,
            appendEntriesUseBatch=False,     # a command goes out in its own round
            appendEntriesPeriod=self.heartbeat,
            raftMinTimeout=low,
            raftMaxTimeout=high,
            leaderFallbackTimeout=max(fallback, self.heartbeat * 1.5),
            connectionTimeout=2 * self.election_timeout,
            appendEntriesBatchSizeBytes=self.max_entry_bytes,
            commandsWaitLeader=True,
            dynamicMembershipChange=False,
            journalFile=journal,
            fullDumpFile=dump_file,
            # PySyncObj never compacts by itself: the node's snapshots are the
            # groups' snapshots (Engine.compact). Its serializer is never
            # called; its deserializer loads a dump that arrived.
            logCompactionMinEntries=2 ** 62,
            logCompactionMinTime=10 ** 12,
            logCompactionBatchSize=DUMP_CHUNK_BYTES,
            serializer=_never_serialize if install else None,
            deserializer=install,
            useFork=False,
            pollerType="select",
        )


# Bytes of a dump per message of PySyncObj's snapshot transfer.
DUMP_CHUNK_BYTES = 256 * 1024


# Where a dump from the leader arrives, beside the group's own (dump.py):
# it replaces the group's dump only once install_dump checked it whole.
INCOMING = ".in"


class _Incoming:
    """PySyncObj's serializer for a group, but a transfer from the leader is
    written to a file of its own (PySyncObj writes it over the group's dump,
    which this replica may be sending to another at the time, before anything
    checked it). *install* gets that file; it moves it in place (replica.py)."""

    def __init__(self, inner, path: str, install: Callable[[str], tuple]):
        self._inner = inner
        self.path = path
        self._install = install
        self._file = None
        self.recent = None           # the last installed dump's command digests

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def setTransmissionData(self, data) -> bool:
        """One chunk of a transfer; True once the last one is written."""
        if data is None:
            return False
        chunk, first, last = data
        if first:
            self._close()
            try:
                self._file = open(self.path, "wb")
            except OSError as e:
                logger.error("raft: cannot write a dump from the leader to %s: %s", self.path, e)
                return False
        elif self._file is None:
            return False                 # a transfer whose start this replica missed
        try:
            self._file.write(chunk)
            if last:
                self._file.close()
        except OSError as e:
            logger.error("raft: cannot write a dump from the leader to %s: %s", self.path, e)
            self._close()
            return False
        if last:
            self._file = None
        return last

    def _close(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
            self._file = None

    def deserialize(self):
        out = self._install(self.path)
        self.recent = out[3] if len(out) > 3 else ()
        return (None,) + tuple(out[:3])


def _never_serialize(path, data):
    raise RuntimeError("raft: PySyncObj's own serializer is never used (Engine.compact)")


def _digest(command: bytes) -> bytes:
    return hashlib.blake2b(command, digest_size=dump.DIGEST_BYTES).digest()


def recent_digests(seen) -> list[tuple[bytes, int, int]]:
    """What ``Engine.recent`` took, as a dump's ``recent``: (digest, idx,
    term) of the newest RECENT_COMPACTED commands, oldest first. Any thread."""
    compacted, entries = seen
    first = entries[0][1] if entries else None
    out = [(d, i, t) for d, (i, t) in compacted if first is None or i < first]
    out += [(_digest(c), i, t) for c, i, t in entries if c[:1] == _REGULAR_BYTE]
    return out[-RECENT_COMPACTED:]


class _Wake:
    """What wakes the engine thread (an Event's ``set`` and ``wait``) on a C
    queue: a ``set`` happens for every message and command that arrives, and
    a put costs less than an Event's lock and notify_all."""

    __slots__ = ("_q",)

    def __init__(self):
        self._q: queue.SimpleQueue = queue.SimpleQueue()

    def set(self) -> None:
        self._q.put(None)

    def wait(self, timeout: float) -> None:
        """Until a set (every set so far is taken) or *timeout* seconds."""
        q = self._q
        try:
            q.get(timeout=timeout)
        except queue.Empty:
            return
        try:
            while True:
                q.get_nowait()
        except queue.Empty:
            pass


class Member(_PsoNode):
    """A node of the ring as PySyncObj sees it: id is its config index as text
    (what the journal stores for a vote), ``index`` the number."""

    def __init__(self, index: int):
        super().__init__(str(index))
        self.index = index


class _GroupTransport(Transport):
    """PySyncObj's transport for one group: sends go into the engine's round."""

    def __init__(self, engine: "Engine", group: int, self_node: Member, others: list[Member]):
        super().__init__(None, self_node, others)
        self._engine = engine
        self._group = group
        # Log indices of commands followers forwarded and wait for, in order.
        self.awaited: collections.deque[int] = collections.deque()

    def send(self, node, message) -> bool:
        if message["type"] == "apply_command_response" and "log_idx" in message:
            self.awaited.append(message["log_idx"])     # a follower waits for it
        self._engine._outgoing(node.index, self._group, message)
        return True


class Group(SyncObj):
    """One arc's Raft group on this node: PySyncObj with our apply and no pickle."""

    def __init__(self, engine: "Engine", group: int, members: tuple[int, ...],
                 journal: Journal):
        self.group = group
        self.members = members
        self._apply = engine.apply
        me = engine.index
        self_node = Member(me)
        others = [Member(i) for i in members if i != me]
        self.transport = _GroupTransport(engine, group, self_node, others)
        self._awaited = self.transport.awaited
        dumps = engine.dumps
        self.dump_file = dumps.dump_path(group) if dumps is not None else None
        install = (lambda path, g=group: dumps.install_dump(g, path)) \
            if dumps is not None else None
        super().__init__(self_node, others,
                         engine.settings.conf(journal, owner=group == me,
                                              dump_file=self.dump_file, install=install),
                         transport=self.transport)
        self._poller = _NO_POLLER
        self.transport.setOnMessageReceivedCallback(self._received)
        if dumps is not None:
            self._SyncObj__serializer = _Incoming(self._SyncObj__serializer,
                                                  self.dump_file + INCOMING, install)
        # A compacted log starts at the entry before the last compaction's
        # dump: that one and everything before it are in the node's files.
        self._SyncObj__raftLastApplied = self._SyncObj__raftLog[0][1]
        self.first_term = self.raftCurrentTerm
        self.send_wanted = False     # an append to send at the end of the round
        # Majority first (send_appends): since when the followers outside
        # the majority lack an entry, the term of the last append to all;
        # send_all asks the next round for all.
        self._spread = min(engine.settings.spread, engine.settings.heartbeat)
        self._behind_since: float | None = None   # the first entry the others lack
        self._full_term = -1
        self.send_all = False
        self.partial_sends = 0
        # Fastest first (first_followers): per follower, the median of its
        # last TRIPS round trips (kept in _trips) in the rounds that went to
        # it and not to every follower (seconds: the append out, its answer
        # in, the follower's fdatasync between), and the (number, time, timed) of each append
        # of this term it has not answered yet (the oldest kept, up to
        # UNANSWERED); the followers new entries went to first, last time
        # (node indices), and the rounds that went to those first.
        self.round_trip: dict[int, float] = {}
        self._trips: dict[int, collections.deque] = {}
        self._timed = -1             # the number of the round being sent to those alone
        self._unanswered: dict[int, collections.deque] = {}
        self._first_rounds = 0
        self._trip_term = -1
        self.chosen: tuple[int, ...] = ()
        self.first_sends: collections.Counter = collections.Counter()   # per follower
        # Read confirmation (module docstring, "Reads"): the number of this
        # group's last round of appends; per follower, the (term, number) of
        # the newest append it answered; reads waiting here, oldest first:
        # (number they need, commit index, term, when, ready, fallback); as a
        # follower, the append being received (its number and term).
        self.probe = 0
        self.heard: dict[int, tuple[int, int]] = {}
        self.reads: collections.deque = collections.deque()
        self.echo: tuple[int, int] | None = None
        self.index_reads = 0         # reads answered by confirmation
        self.log_reads = 0           # reads handed back to go through the log
        self.installs = 0
        self.stale_dumps = 0         # transfers that ended behind what this replica applied
        self.dropped_dump = False    # the last transfer was not installed (see _loadDumpFile)
        self.compactions = 0
        self.duplicates = 0          # resubmissions attached to their first copy
        self._compacted: collections.OrderedDict = collections.OrderedDict()
        if self.dump_file is not None and self.log_start() > 1:
            # A restart on a compacted log: the commands before it are the dump's.
            try:
                self.remember(dump.read_recent(self.dump_file))
            except (CorruptRecordError, OSError) as e:
                logger.warning("raft group %d: %s: %s; resubmissions of commands before "
                               "entry %d are not recognised", group, self.dump_file, e,
                               self.log_start())
        # The engine drops what cannot be delivered, and Raft resends: every
        # peer counts as connected (PySyncObj only elects when "connected").
        for node in others:
            self.transport._onNodeConnected(node)

    # PySyncObj's handler of a dump chunk (an append_entries without
    # prevLogIdx) checks no log matching, yet sets the commit index to
    # min(leader's, its own log's end): a follower whose log holds a deposed
    # leader's entries past what it applied would commit and apply them. A
    # chunk moves the commit index only when it completes an install (the
    # log is then the dump's, all committed).
    def _received(self, node, message) -> None:
        if message["type"] != "append_entries" or "prevLogIdx" in message:
            self._SyncObj__onMessageReceived(node, message)
            return
        before = self._SyncObj__raftCommitIndex
        installs = self.installs
        self._SyncObj__onMessageReceived(node, message)
        if self.installs == installs and self._SyncObj__raftCommitIndex > before:
            self._SyncObj__raftCommitIndex = before
            self._SyncObj__raftLog.setRaftCommitIndex(before)

    # PySyncObj's private apply (name-mangled): REGULAR entries are our
    # commands; a no-op is a new leader's first entry; membership and code
    # version entries (pickled by PySyncObj) are never written by us and
    # never unpickled here.
    def _SyncObj__doApplyCommand(self, command):
        kind = command[0]
        if kind == REGULAR:
            idx = self._SyncObj__raftLastApplied + 1   # this entry's index
            return self._apply(self.group, idx, command[1:])
        if kind != NO_OP:
            logger.error("raft group %d: entry of kind %d ignored (membership and "
                         "version entries are not used)", self.group, kind)
        return None

    # PySyncObj (appendEntriesUseBatch=False) sends every follower an append
    # for each command it appends, and again after each apply and at each
    # heartbeat. The engine sends once per group per round instead, after
    # the group's tick (Engine._round): every entry the round appended and
    # the newest commit index in one message per follower.
    def _SyncObj__sendAppendEntries(self):
        self.send_wanted = True

    # Majority first (Settings.spread). An entry commits once a majority
    # holds it, so a leader of three needs one follower's answer, not two:
    # a round's appends go at once only to the followers a majority needs
    # (the fastest to answer: first_followers). The others get theirs --
    # every entry since, in one message --
    # once the first entry they lack is spread seconds old, and at every
    # heartbeat: PySyncObj's own timer, brought forward to then. That halves
    # a write's Raft messages and fdatasyncs at R = 3. The commit rule is
    # PySyncObj's, unchanged: only when an entry goes out is ours. A
    # follower that fails is passed over once the others' turn came (its
    # match index stops), so a write waits about spread longer, once. A new
    # leader, and a follower waiting for an entry it forwarded, send to
    # every follower at once.
    def send_appends(self) -> None:
        self.send_wanted = False
        self.probe += 1
        others = self._SyncObj__otherNodes
        need = len(self.members) // 2       # followers in a majority with the leader
        if self._spread and len(others) > need and self._SyncObj__raftState == _LEADER:
            now = _pso_now()
            due = self._SyncObj__newAppendEntriesTime     # the others' turn
            term = self.raftCurrentTerm
            if not self.send_all and term == self._full_term and now < due:
                first = self.first_followers(need)
                self._timed = self.probe
                if self._behind_since is None:
                    self._behind_since = now
                self.partial_sends += 1
                for n in first:
                    self.first_sends[n.index] += 1
                try:
                    self._SyncObj__otherNodes = set(first)   # what PySyncObj's send walks
                    SyncObj._SyncObj__sendAppendEntries(self)
                finally:
                    self._SyncObj__otherNodes = others
                self._SyncObj__newAppendEntriesTime = min(due, self._behind_since + self._spread)
                return
            self.send_all = False
            self._full_term = term
            self._behind_since = None
        SyncObj._SyncObj__sendAppendEntries(self)

    # Fastest first: the followers a new entry goes to at once are the ones
    # whose answers come back soonest: the median of each one's last TRIPS
    # round trips (its disk's fdatasync included) ranks them, a follower with an
    # append unanswered for longer counting as that slow. The commit waits
    # for the slowest of the chosen, so on a ring whose followers differ (a
    # slower disk, a busier machine, a CPU far from the disk's interrupts)
    # each write waits for the fast ones. Only rounds sent to the chosen
    # alone are timed: in a round to every follower the later answers wait
    # behind the leader's work on the first, which would keep the first
    # choice whatever it was. So one round in EXPLORE goes to another
    # follower instead (one with no append unanswered for twice the chosen
    # one's time), to time it too. The choice changes only for a follower a
    # tenth faster (no flapping between two alike); untimed followers rank
    # first, so each is timed early; the ties go to the ones furthest along
    # (highest match index, then the latest to answer), the rule before
    # round trips were kept. A follower's appends are kept until answered,
    # the oldest UNANSWERED of them: how long the oldest has waited is how
    # slow a silent follower counts. A median, not a moving average: one
    # slow answer (a page fault, a busy CPU, the pause of a follower that
    # was stopped, counted already while it was silent) moves it by one
    # rank at most, where it moved an average past the tenth and sent the
    # writes to the slower follower until enough of the rounds in EXPLORE
    # had timed the faster one again; a follower that did become slower is
    # ranked so after TRIPS // 2 + 1 of its rounds.
    EXPLORE = 16
    UNANSWERED = 256
    TRIPS = 9

    def first_followers(self, need: int) -> list:
        """The *need* followers a new entry goes to at once (engine thread)."""
        match = self._SyncObj__raftMatchIndex
        answered = self._SyncObj__lastResponseTime
        now = time.monotonic()
        trip = self.round_trip
        unanswered = self._sent_this_term()
        silent: dict = {}        # follower -> how long its oldest append is unanswered
        cost: dict = {}
        for n in self._SyncObj__otherNodes:
            waiting = unanswered.get(n.index)
            silent[n] = now - waiting[0][1] if waiting else 0.0
            cost[n] = max(trip.get(n.index, 0.0), silent[n])
        ranked = sorted(cost, key=lambda n: (cost[n], -match.get(n, 0),
                                             -answered.get(n, 0.0)))
        first = ranked[:need]
        before = [n for n in ranked if n.index in self.chosen]
        if len(before) != need or (first != before and max(cost[n] for n in before) * 0.9
                                   > max(cost[n] for n in first)):
            before = first              # a tenth faster (or no choice yet): the new one
        self.chosen = tuple(n.index for n in before)
        self._first_rounds += 1
        if self._first_rounds % self.EXPLORE == 0:
            # The best of the others in the slowest chosen one's place,
            # unless it left an append unanswered for twice the chosen's time.
            rest = [n for n in ranked if n not in before]
            limit = 2 * max(cost[n] for n in before)
            rest = [n for n in rest if silent[n] <= limit]
            if rest:
                return sorted(before, key=cost.get)[:need - 1] + rest[:1]
        return before

    def _sent_this_term(self) -> dict[int, collections.deque]:
        if self._trip_term != self.raftCurrentTerm:
            self._trip_term = self.raftCurrentTerm
            self._unanswered = {}
        return self._unanswered

    def sent_append(self, peer: int, number: int, entries: bool = True) -> None:
        """An append numbered *number* (self.probe) leaves for *peer*; with
        *entries* (one without, a read's confirmation or a heartbeat, asks no
        fdatasync of it: not timed)."""
        waiting = self._sent_this_term().get(peer)
        if waiting is None:
            waiting = self._unanswered[peer] = collections.deque()
        elif waiting and waiting[-1][0] == number:
            return                   # a round's second message to it (a dump chunk)
        if len(waiting) < self.UNANSWERED:   # full: the oldest, what counts, stays
            waiting.append((number, time.monotonic(), entries and number == self._timed))

    def answered_append(self, peer: int, term: int | None, number: int | None,
                        success: bool = True) -> None:
        """*peer* answered an append: the one numbered *number* of *term*
        (None: a node too old to say which, timed from its oldest append
        unanswered: an overestimate). Only an append it took is timed (a
        refusal is quick and says nothing of its disk)."""
        waiting = self._sent_this_term().get(peer)
        if not waiting:
            return
        if term is None:             # answers come in order: the oldest's
            _n, sent, timed = waiting[0]
            waiting.clear()
        elif term != self._trip_term:
            return
        else:
            while waiting and waiting[0][0] < number:
                waiting.popleft()
            if not waiting or waiting[0][0] != number:
                return
            _n, sent, timed = waiting.popleft()
        if timed and success:       # not a round to every follower (first_followers)
            trips = self._trips.get(peer)
            if trips is None:
                trips = self._trips[peer] = collections.deque(maxlen=self.TRIPS)
            trips.append(time.monotonic() - sent)
            ranked = sorted(trips)
            self.round_trip[peer] = ranked[(len(ranked) - 1) // 2]

    def confirmable(self) -> bool:
        """This replica leads and has committed an entry of its own term, so
        its commit index covers every committed entry (engine thread)."""
        # PySyncObj appends the no-op when it becomes leader (the only way to
        # the leader state), so while it leads, the no-op is of this term.
        noop = self._SyncObj__noopIDx
        return (self._SyncObj__raftState == _LEADER and noop is not None
                and self._SyncObj__raftCommitIndex >= noop)

    def confirmed(self) -> int:
        """The newest append number that a majority (this leader and enough
        followers) answered in the current term."""
        need = len(self.members) // 2        # followers besides this leader
        term = self.raftCurrentTerm
        heard = sorted((p for t, p in self.heard.values() if t == term), reverse=True)
        return heard[need - 1] if len(heard) >= need else 0

    def serve_reads(self, now: float, patience: float) -> None:
        """Answer the reads a majority confirmed once the group applied up to
        their index; hand back, to go through the log, those this leader can
        no longer confirm (another term, not the leader) or that waited over
        *patience* seconds (engine thread)."""
        reads = self.reads
        leading = self._SyncObj__raftState == _LEADER
        term = self.raftCurrentTerm
        confirmed = self.confirmed() if leading else 0
        if leading and not confirmed and self.echoes() < len(self.members) // 2:
            # Too few followers have ever answered an append of this term with
            # its number: just elected (the first heartbeat's answers are on
            # their way), or peers of a release without read confirmation.
            patience = 0.0
        applied = self._SyncObj__raftLastApplied
        while reads:
            needed, index, t, since, ready, fallback = reads[0]
            if leading and t == term and needed <= confirmed and index <= applied:
                reads.popleft()
                self.index_reads += 1
                ready()
            elif not leading or t != term or now - since > patience:
                reads.popleft()
                self.log_reads += 1
                fallback()
            else:
                break

    def echoes(self) -> int:
        """Followers that answered an append of the current term with its number."""
        term = self.raftCurrentTerm
        return sum(1 for t, _p in self.heard.values() if t == term)

    def probe_wanted(self) -> bool:
        """Reads wait for a round of appends not sent yet, and the last one
        sent was answered by a majority (or none of this term was): one
        round in flight at a time, which every read that arrives meanwhile
        shares. A round lost on the way is made up by the next heartbeat."""
        if not self.reads or self.reads[-1][0] <= self.probe:
            return False
        if not self.echoes():
            return True
        return self.confirmed() >= self.probe

    # A leader tells its followers a new commit index at once after applying
    # (PySyncObj with appendEntriesUseBatch=False): two messages and two
    # follower rounds per write, a quarter of a replicated write's CPU.
    # Only a follower that waits for an entry (it forwarded the command: a
    # write or a scan's barrier submitted there) needs it now; the others
    # learn it from the next append or heartbeat (replication.heartbeat).
    def _SyncObj__applyLogEntries(self):
        if not SyncObj._SyncObj__applyLogEntries(self):
            return False
        awaited = self._awaited
        if not awaited or awaited[0] > self._SyncObj__raftCommitIndex:
            return False
        commit = self._SyncObj__raftCommitIndex
        while awaited and awaited[0] <= commit:
            awaited.popleft()
        self.send_all = True         # the follower waiting may not be in the majority
        return True

    # PySyncObj looks at every tick whether a dump of its own finished or is
    # due; the node writes the groups' dumps (Engine.compact), so none ever is.
    def _SyncObj__tryLogCompaction(self):
        pass

    def _SyncObj__parseChangeClusterRequest(self, command):
        return None

    # A command resubmitted after a leader change (it ends with RETRY_MARK)
    # may have a first copy in the log already: the old leader appended it
    # and the new one has it. A leader that holds the first copy does not
    # append it again; it attaches the caller to the first copy's entry, as
    # PySyncObj attaches any caller to the entry it appended. A leader whose
    # log lacks the first copy appends it: that first copy is then in no log
    # that can still commit (a log with this leader's entries overwrites it,
    # and one that keeps it drops this term's), so at most one copy commits.
    def _applyCommand(self, command, callback, commandType=None):
        if command.endswith(RETRY_MARK) and self._SyncObj__raftState == _LEADER:
            full = command if commandType is None else bytes([commandType]) + command
            found = self._first_copy(full)
            if found is not None:
                self.duplicates += 1
                self._attach(found, callback)
                return
        super()._applyCommand(command, callback, commandType)

    def _first_copy(self, full: bytes) -> tuple[int, int] | None:
        """(index, term) of the entry holding *full*, resubmitted, or its first
        copy (*full* without the mark), newest first; None if none does."""
        first = full[:-len(RETRY_MARK)]
        for command, idx, term in reversed(self._SyncObj__raftLog[:]):
            if command == full or command == first:
                return idx, term
        for c in (full, first):
            hit = self._compacted.get(_digest(c))
            if hit is not None:
                return hit
        return None

    def _attach(self, entry: tuple[int, int], callback) -> None:
        idx, term = entry
        if isinstance(callback, tuple):          # forwarded by a follower: (node, request id)
            node, request_id = callback
            self.transport.send(node, {"type": "apply_command_response",
                                       "request_id": request_id, "log_idx": idx,
                                       "log_term": term})
        elif callback is not None:
            if idx <= self._SyncObj__raftLastApplied:
                callback(None, FAIL_REASON.SUCCESS)
            else:
                self._SyncObj__commandsWaitingCommit[idx].append((term, callback))

    def forget_before(self, prev_idx: int) -> None:
        """Compaction is about to drop the entries before *prev_idx*: keep the
        digests of the newest of them, for resubmissions still on their way."""
        log = self._SyncObj__raftLog
        first = log[0][1]
        dropped = log[max(0, prev_idx - first - RECENT_COMPACTED):prev_idx - first]
        recent = self._compacted
        for command, idx, term in dropped:
            if command[:1] == _REGULAR_BYTE:
                recent[_digest(command)] = (idx, term)
        while len(recent) > RECENT_COMPACTED:
            recent.popitem(last=False)

    # PySyncObj loads its dump file at the first tick (a restart) and when a
    # transfer ends. The first is not needed: the node's own files hold the
    # state and the compacted log starts where they end (__init__). A
    # transfer that ends behind what this replica applied is dropped: the
    # leader restarts a transfer on every stale "next index" it receives, so
    # one replica may get the same dump twice, the second after it applied
    # entries past it. Installing it would clear a log that holds those
    # entries and set the applied index back. PySyncObj then tells the
    # leader where this log ends, and the leader goes on from there.
    def _SyncObj__loadDumpFile(self, clearJournal):
        if not clearJournal:
            return
        path = self._SyncObj__serializer.path
        try:
            at = dump.read_last(path)
        except (CorruptRecordError, OSError) as e:
            logger.error("raft group %d: a dump from the leader is unreadable (%s); "
                         "the leader sends it again", self.group, e)
            at = None
        applied = self._SyncObj__raftLastApplied
        if at is not None and at <= applied:
            self.stale_dumps += 1
            logger.info("raft group %d: a dump at entry %d arrived after entry %d was "
                        "applied here: dropped", self.group, at, applied)
            at = None
        if at is None:
            try:
                os.unlink(path)
            except OSError:
                pass
            # PySyncObj answers a finished transfer with success at the end of
            # this replica's log, as if it had installed it: that log may hold
            # entries of a deposed leader past what was applied here, which the
            # leader would then count as its own. The answer says "applied so
            # far" instead (Engine._outgoing), and the leader goes on from there.
            self.dropped_dump = True
            return
        self.dropped_dump = False
        self.installs += 1
        incoming = self._SyncObj__serializer
        incoming.recent = None
        SyncObj._SyncObj__loadDumpFile(self, clearJournal)
        if incoming.recent is not None:          # installed: its commands are known
            self.remember(incoming.recent)

    def remember(self, recent) -> None:
        """Know the commands of a dump (its ``recent``) as compacted ones."""
        self._compacted = collections.OrderedDict((d, (i, t)) for d, i, t in recent)

    def log_start(self) -> int:
        return self._SyncObj__raftLog[0][1]

    def leader_index(self) -> int | None:
        leader = self._getLeader()
        return None if leader is None else leader.index

    def summary(self) -> dict:
        """What `ring show` and metrics need, read on the engine thread."""
        state = self._SyncObj__raftState
        return {
            "group": self.group,
            "members": self.members,
            "leader": self.leader_index(),
            "state": ("follower", "candidate", "leader")[state],
            "term": self.raftCurrentTerm,
            "commit_index": self.raftCommitIndex,
            "last_applied": self.raftLastApplied,
            "log_index": self._SyncObj__getCurrentLogIndex(),
            "match_index": {n.index: i for n, i in self._SyncObj__raftMatchIndex.items()}
            if state == 2 else {},
            # Fastest first, leader only: each follower's round trip (the
            # median first_followers ranks by, seconds) and how many rounds
            # of this node's leadership went to it first.
            "round_trip": dict(self.round_trip) if state == 2 else {},
            "first_sends": dict(self.first_sends) if state == 2 else {},
            "elections": self.raftCurrentTerm - self.first_term,
            "learning": False,
            "log_start": self.log_start(),
            "installs": self.installs,
            "stale_dumps": self.stale_dumps,
            "compactions": self.compactions,
            "duplicates": self.duplicates,
            "index_reads": self.index_reads,
            "log_reads": self.log_reads,
        }


Apply = Callable[[int, int, bytes], object]
Send = Callable[[dict[int, list[rpb.Message]]], None]


class Engine:
    """Every group of node *index*; see the module docstring.

    *groups*: group id -> its members (config indices, this node among them).
    *journal*: ``group(gid) -> Journal`` and ``sync()`` (storage.raftjournal).
    *apply(group, idx, command)*: runs on the engine thread for each
    committed REGULAR entry in commit order; its return value goes to the
    submitter's callback. *send*: each round's messages, per peer.
    *on_failed(reason)*: the journal could not be made durable. *dumps*:
    ``dump_path(group)``, each group's dump file, and ``install_dump(group,
    path) -> (last, prev, members)``, which puts a dump that arrived into
    the node (engine thread); None: no compaction, no transfer.
    """

    def __init__(self, index: int, groups: dict[int, tuple[int, ...]], journal,
                 apply: Apply, send: Send, settings: Settings = Settings(),
                 on_failed: Callable[[str], None] | None = None, learn_grace: float = 0.0,
                 dumps=None, on_learned: Callable[[frozenset], None] | None = None,
                 learners=None, new_ring: bool = False):
        self.index = index
        self.settings = settings
        self.apply = apply
        self.dumps = dumps
        self.journal = journal
        self._send = send
        self._on_failed = on_failed
        # a group learned: on_learned(the groups still learning), in the round
        # (engine thread or an inline round on the event loop) before any
        # message of that group leaves as a full replica's; False: it could not
        # record that, and those groups stay learners this round (tried again)
        self._on_learned = on_learned
        self.groups: dict[int, Group] = {}
        for gid, members in sorted(groups.items()):
            if index not in members:
                raise ValueError(f"node {index} is not a member of group {gid} {members}")
            if len(members) < 2:
                raise ValueError(f"group {gid} needs two members or more, has {members}")
            self.groups[gid] = Group(self, gid, tuple(members), journal.group(gid))
        self._groups_list = list(self.groups.values())
        self._members = {i: Member(i) for g in groups.values() for i in g}
        self._peers = {gid: frozenset(m) - {index} for gid, m in groups.items()}
        self._inbox: collections.deque = collections.deque()
        self._commands: collections.deque = collections.deque()
        self._reads: collections.deque = collections.deque()
        self._out: dict[int, list[rpb.Message]] = {}
        self._early: dict[int, list[rpb.Message]] = {}     # a leader's append_entries
        self._local: collections.deque = collections.deque()
        self._local_lock = threading.Lock()
        self._ended = False
        self._periodic: list[list] = []          # [interval, next time, fn]
        self._wake = _Wake()
        # A round runs under this lock, on the engine thread or on the thread
        # that brought its work while the engine thread was between rounds
        # (_take_round).
        self._round_lock = threading.Lock()
        self.inline_rounds = 0
        self._stopping = False
        self.failed: str | None = None
        self.rounds = 0
        self.partial_ticks = 0       # rounds that ticked only the groups with work
        self._full_tick_at = 0.0
        self._tick_later: set[int] = set()
        self.dropped = 0
        # A replica that lost its state (started without a journal: new, or a
        # replacement) starts as a learner in each group: it forgot whom it
        # voted for and which entries it acknowledged, so until it holds every
        # entry committed when it first heard a leader it neither votes nor
        # acknowledges (its acks would count towards commits it cannot
        # vouch for). Then it is a full replica. With no leader to hear within
        # *learn_grace* seconds it is one too, but only once every other member
        # said its log holds no entry of a term above 0 (a new group: no
        # leader ever appended, so nothing was committed). One member that is
        # down or holds entries keeps it a learner: the entries it forgot may
        # be committed on that member alone among the living (it and a member
        # now down were a majority), and counting this empty replica as full
        # would let a member without them lead and overwrite them.
        # The leader it learns from must be of the group's newest term: a
        # deposed leader still sending in an older term would teach it a log
        # without the entries this replica acknowledged to the new one, and
        # then have its acknowledgements. So it first asks the other members
        # their terms (TERM_QUERY), and takes its target only from an append
        # of a term at least the highest that enough of them answered that
        # any majority it was part of before shows among them (_floor).
        # *learners*: the groups it learns (default: every group, with a grace).
        # *new_ring* (`node serve --new-ring`, the operator's word that no
        # member of the ring ever started before): the members it must hear
        # say so are fewer (_new_group): all of them, or once the grace is
        # over, enough to make a majority with this one, so that an arc
        # serves with a member that is not up yet. The operator's word is
        # what makes that safe; any answer of a written log (a late start
        # into a ring that began without it, or the flag given to a
        # replacement by mistake) still keeps it a learner.
        self._new_ring = new_ring
        self._learning: dict[int, int | None] = (
            {} if learn_grace <= 0 else {gid: None for gid in groups} if learners is None
            else {gid: None for gid in groups if gid in learners})
        self._terms: dict[int, dict[int, int]] = {}   # learning group -> member -> term
        # learning group -> member -> the term of its log's last entry (any
        # member's answer, a learner's too; 0: no leader ever appended to it)
        self._history: dict[int, dict[int, int]] = {}
        self._led: set[int] = set()      # learning groups that heard an append
        self._asked: dict[int, dict[int, float]] = {}   # group -> learner peer -> its last query
        self._query_at = 0.0
        self._learn_grace = learn_grace
        self._learn_until = 0.0
        self.votes_ignored = 0
        self.acks_held = 0
        self._summaries: dict[int, dict] = {}
        self._led_at: dict[int, float] = {}      # group -> when it last had a leader
        self._appended_at: dict[int, float] = {}  # group -> when its leader's last append came
        self._summary_at = 0.0                   # when _summarize last ran
        self._thread = threading.Thread(target=self._run, name=f"chord-raft-{index}",
                                        daemon=True)

    # -- any thread -----------------------------------------------------------

    def start(self) -> None:
        now = time.monotonic()
        self._learn_until = now + self._learn_grace
        self._led_at = dict.fromkeys(self.groups, now)
        self._summary_at = now
        self._thread.start()

    @property
    def ended(self) -> bool:
        """The engine thread has stopped (or failed): run_soon runs at once."""
        return self._ended

    def learning(self, group: int) -> bool:
        return group in self._learning

    def pending(self) -> int:
        """Commands and reads handed in (submit, read) that no round took yet."""
        return len(self._commands) + len(self._reads)

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping = True
        self._wake.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def run_soon(self, fn: Callable[[], None]) -> None:
        """Run *fn* on the engine thread at the start of its next round, between
        the entries applied before and after (any thread). Once the engine has
        ended, *fn* runs at once on the caller's thread."""
        with self._local_lock:
            if not self._ended:
                self._local.append(fn)
                self._wake.set()
                return
        fn()

    def every(self, interval: float, fn: Callable[[], None]) -> None:
        """Run *fn* on the engine thread about every *interval* seconds (before start)."""
        self._periodic.append([interval, 0.0, fn])

    def submit(self, group: int, command: bytes,
               callback: Callable[[object, int], None]) -> None:
        """Replicate *command* in *group*; ``callback(result, reason)`` runs on the
        engine thread once it is applied here (reason FAIL_REASON.SUCCESS) or
        cannot be (another reason: no leader, leader changed, ...)."""
        if len(command) >= self.settings.max_entry_bytes:
            raise ValueError(f"raft: a command of {len(command)} bytes is over the "
                             f"{self.settings.max_entry_bytes}-byte entry limit")
        self._commands.append((group, command, callback))
        self._wake.set()

    def read(self, group: int, ready: Callable[[], None],
             fallback: Callable[[], None]) -> None:
        """A read of *group* by confirmation (module docstring, "Reads"):
        ``ready()`` runs on the engine thread once the read may be answered
        from the node's map -- everything the group committed before this
        call is applied here, and nothing after it can have been committed
        elsewhere first; ``fallback()`` runs instead when this replica cannot
        confirm it (not the leader, ...): the read then goes through the log.
        Once the engine has ended, ``fallback()`` runs at once on the caller's
        thread. Any thread."""
        with self._local_lock:
            if not self._ended:
                self._reads.append((group, ready, fallback))
                self._wake.set()
                return
        fallback()

    def deliver(self, sender: int, messages) -> None:
        """Messages from peer *sender* (chord.raft.v1.Message), any thread."""
        self._inbox.append((sender, messages))
        if not self._take_round():
            self._wake.set()

    # -- rounds on the thread that brings the work ------------------------------

    def _take_round(self) -> bool:
        """Run a round here and now if the engine thread is between rounds:
        a message from a peer, on the event loop that received it (the
        round's messages then leave from there), saves two thread wake-ups
        on a write's path. True if it ran and left nothing for the engine
        thread; else the caller wakes it. Timers, summaries, commands and
        reads (the engine thread batches them) and run_soon functions stay on
        the engine thread, as does any round with a dump chunk to install."""
        lock = self._round_lock
        if not lock.acquire(blocking=False):
            return False
        try:
            if self._stopping or self._thread.ident is None:     # not started
                return False
            self.inline_rounds += 1
            try:
                later = self._round(self._groups_list, inline=True)
            except Exception as e:
                self._stop_on(e)
                return False
        finally:
            lock.release()
        if later:                 # its tick: after the loop wrote its answers
            try:
                asyncio.get_running_loop().call_soon(self._take_tick)
            except RuntimeError:  # not on a loop: the engine thread ticks
                return False
        return not (self._inbox or self._commands or self._reads or self._local)

    def _take_tick(self) -> None:
        """On the loop: the tick a round taken there left (``_round``)."""
        if not self._take_round():
            self._wake.set()

    def status(self) -> dict[int, dict]:
        """Each group's summary as of the engine's last round (a copy)."""
        return dict(self._summaries)

    def leaderless_for(self, group: int) -> float:
        """Seconds group *group* had gone without a leader this node knew of,
        as of the engine's last summary (every 50 ms; a stalled engine thread
        does not make every group look leaderless); 0 while it has one. Any
        thread."""
        at = self._summary_at
        return max(0.0, at - self._led_at.get(group, at))

    def learners_of(self, group: int) -> set[int]:
        """The members of *group* learning, as this node knows: itself, and
        the peers that asked its term lately (a learner asks every heartbeat
        until it has a leader to learn from). Any thread."""
        recent = time.monotonic() - 3 * self.settings.heartbeat - 0.5
        out = {p for p, at in dict(self._asked.get(group, {})).items() if at >= recent}
        if group in self._learning:
            out.add(self.index)
        return out

    def heard_leader_within(self, group: int, seconds: float) -> bool:
        """This node, a follower of *group*, had an append from its leader in
        the last *seconds* (any thread)."""
        return time.monotonic() - self._appended_at.get(group, -1e9) < seconds

    def leader(self, group: int) -> int | None:
        s = self._summaries.get(group)
        return None if s is None else s["leader"]

    # -- engine thread ----------------------------------------------------------

    def recent(self, gid: int, upto: int):
        """What a dump of group *gid* at entry *upto* needs to name its newest
        commands (``recent_digests`` hashes it, off this thread): the digests
        compaction kept, and the log's newest entries up to *upto* (engine
        thread)."""
        g = self.groups[gid]
        log = g._SyncObj__raftLog
        first = log[0][1]
        end = upto - first + 1
        entries = log[max(0, end - RECENT_COMPACTED):max(0, end)] if end > 0 else []
        return list(g._compacted.items()), list(entries)

    def entries(self, gid: int, start: int, count: int) -> list:
        """Up to *count* entries of group *gid*'s log from index *start* (engine thread)."""
        return self.groups[gid]._SyncObj__getEntries(start, count)

    def compact(self, gid: int, tmp: str, prev: tuple[bytes, int, int],
                last: tuple[bytes, int, int]) -> bool:
        """Make *tmp*, a fsynced dump of group *gid* at entries *prev*, *last*
        (dump.py), the group's dump, and drop its log before *prev* (engine
        thread). Refused -- *tmp* removed -- when the log no longer holds those
        two entries as they were (a dump installed since, a truncation) or
        already starts at *prev* or later."""
        g = self.groups[gid]
        log = g._SyncObj__raftLog
        first = log[0][1]
        pos = prev[1] - first
        ok = (pos > 0 and pos + 1 < len(log) and prev[1] + 1 <= g.raftLastApplied
              and tuple(log[pos]) == tuple(prev) and tuple(log[pos + 1]) == tuple(last))
        if not ok:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            return False
        # A transfer of the previous dump in flight ends here: the next one
        # starts from the new file's first chunk (the receiver starts over).
        serializer = g._SyncObj__serializer
        for node in list(g._SyncObj__otherNodes):
            serializer.cancelTransmisstion(node)
        dump.replace(tmp, g.dump_file)
        g.forget_before(prev[1])
        g._SyncObj__deleteEntriesTo(prev[1])
        g.compactions += 1
        return True

    def lead_from_owners(self) -> None:
        """Hand each group this node leads to the arc's owner (group id g is
        node g) once the owner's log has caught up: requests for an arc go to
        its owner first, so the owner leading saves a forward per command.
        PySyncObj's transferLeadership (Raft's TimeoutNow) refuses a target
        that is not caught up; the next call tries again."""
        for gid, g in self.groups.items():
            if gid != self.index and g._isLeader() and gid in g.members:
                owner = self._members[gid]
                if g._SyncObj__raftMatchIndex.get(owner, 0) == g._SyncObj__getCurrentLogIndex():
                    g.transferLeadership(owner)
                    # Its timeout_now leaves with the next round: that
                    # round's entries go to every follower, or the owner
                    # stands a log shorter than the other's (majority first).
                    g.send_all = True

    def _summarize(self, groups: list[Group]) -> dict[int, dict]:
        out = {}
        now = time.monotonic()
        led = self._led_at
        for g in groups:
            st = g.summary()
            st["learning"] = g.group in self._learning
            out[g.group] = st
            if st["leader"] is not None:
                led[g.group] = now
        self._summary_at = now
        return out

    def _floor(self, gid: int) -> int | None:
        """The lowest term a learner of group *gid* may learn from, once enough
        other members answered its TERM_QUERY: any majority it was part of
        before its disk was lost leaves at least one of them; None until then."""
        answers = self._terms.get(gid, {})
        members = len(self.groups[gid].members)
        need = members - (members // 2 + 1) + 1     # more than a minority of the others
        return max(answers.values()) if len(answers) >= need else None

    def _new_group(self, gid: int, now: float) -> bool:
        """Whether this learner of group *gid* with no leader to learn from is
        a full replica of a new group: after the grace, every other member
        answered a TERM_QUERY that its log holds no entry of a term above 0
        (no leader ever appended to any of them, so no entry was ever
        committed: a majority is more than the group tolerates losing, so
        every majority holds one of them that kept its disk, and this empty
        replica forgot nothing that counts). With *new_ring*: every other
        member at once, or after the grace, as many as make a majority with
        this one; none of those that answered may hold an entry."""
        answers = self._history.get(gid, {})
        if any(answers.values()):
            return False
        everyone = len(answers) == len(self._peers[gid])
        if self._new_ring:
            majority = len(answers) >= len(self.groups[gid].members) // 2
            return everyone or (majority and now >= self._learn_until)
        return everyone and now >= self._learn_until

    def _ask_terms(self, learning: dict[int, int | None]) -> None:
        """A learner's TERM_QUERY to the other members, every heartbeat, while
        it has no target (engine thread)."""
        now = time.monotonic()
        if now < self._query_at:
            return
        self._query_at = now + self.settings.heartbeat
        for gid, target in learning.items():
            if target is not None:
                continue
            for peer in self._peers[gid]:
                self._out.setdefault(peer, []).append(
                    rpb.Message(group=gid, kind=rpb.TERM_QUERY))

    def _learned(self, learning: dict[int, int | None]) -> None:
        now = time.monotonic()
        learned = {}
        for gid, target in list(learning.items()):
            g = self.groups[gid]
            if (target is not None and g.raftLastApplied >= target) or \
                    (target is None and gid not in self._led and self._new_group(gid, now)):
                del learning[gid]
                learned[gid] = target
        if not learned:
            return
        if self._on_learned is not None and self._on_learned(frozenset(learning)) is False:
            learning.update(learned)    # not recorded: a restart would not know (next round)
            return
        for gid, target in learned.items():
            logger.info("raft group %d: node %d is a full replica (%s)", gid, self.index,
                        f"holds the log up to {target}" if target is not None
                        else "no leader to learn from: a new group")


    def _outgoing(self, peer: int, group: int, message: dict) -> None:
        kind = message["type"]
        g = self.groups[group]
        if kind == "next_node_idx" and g.dropped_dump:
            g.dropped_dump = False
            if message.get("success"):
                message["next_node_idx"] = g.raftLastApplied + 1
                message["reset"] = True
        if group in self._learning and kind == "next_node_idx" and message.get("success"):
            self.acks_held += 1      # a learner's ack must not count (see __init__)
            return
        if kind == "append_entries":
            message["probe"] = g.probe
            g.sent_append(peer, g.probe, bool(message.get("entries")))
        elif kind == "next_node_idx":
            echo = g.echo
            if echo is not None and group not in self._learning:
                message["probe"], message["probe_term"] = echo
        try:
            m = codec.encode(group, message)
        except codec.UnsupportedMessage as e:
            logger.error("%s (group %d, to node %d): not sent", e, group, peer)
            return
        box = self._early if kind == "append_entries" else self._out
        out = box.get(peer)
        if out is None:
            box[peer] = [m]
        else:
            out.append(m)

    def _run(self) -> None:
        wake = self._wake
        tick = self.settings.tick
        groups = self._groups_list
        next_summary = 0.0
        try:
            while not self._stopping:
                wake.wait(tick)
                with self._round_lock:
                    if self._stopping:
                        break
                    self._round(groups)
                    now = time.monotonic()
                    for p in self._periodic:
                        if now >= p[1]:
                            p[1] = now + p[0]
                            p[2]()
                    if now >= next_summary:
                        self._summaries = self._summarize(groups)
                        next_summary = now + 0.05
        except Exception as e:
            self._stop_on(e)
        finally:
            # A round on another thread ends first, and none starts after:
            # the lock stays taken.
            self._round_lock.acquire()
            self._summaries = self._summarize(groups)
            with self._local_lock:
                self._ended = True
                local, self._local = list(self._local), collections.deque()
                reads = [fallback for _g, _r, fallback in self._reads]
                self._reads.clear()
            for g in groups:         # reads waiting for a confirmation: not coming
                reads += [read[5] for read in g.reads]
                g.reads.clear()
            for fn in local:
                fn()
            for fallback in reads:
                fallback()

    def _round(self, groups: list[Group], inline: bool = False) -> bool:
        """One round (the module docstring); True if it left its tick to the
        next (``_tick_later``), a round taken on the event loop that only
        had a follower's answers to send."""
        self.rounds += 1
        local = self._local
        everyone = False
        if not inline:
            everyone = bool(local)       # a local function may touch any group
            while local:
                local.popleft()()
                if self._stopping:
                    return
        busy: set[int] = set()       # groups with messages or commands this round
        inbox = self._inbox
        learning = self._learning
        while inbox:
            sender, messages = inbox.popleft()
            if inline and any(m.HasField("serialized") for m in messages):
                # A dump chunk: its install waits for the applier; it and
                # what came after it are the engine thread's.
                inbox.appendleft((sender, messages))
                break
            member = self._members.get(sender)
            for m in messages:
                busy.add(m.group)
                g = self.groups.get(m.group)
                if g is None or member is None or sender not in self._peers[m.group]:
                    self.dropped += 1
                    continue
                if m.kind == rpb.TERM_QUERY:
                    self._asked.setdefault(m.group, {})[sender] = time.monotonic()
                    reply = rpb.Message(group=m.group, kind=rpb.TERM_REPLY,
                                        last_log_term=g._SyncObj__getCurrentLogTerm())
                    if m.group not in learning:     # a learner's term proves nothing
                        reply.term = g.raftCurrentTerm
                    self._out.setdefault(sender, []).append(reply)
                    continue
                if m.kind == rpb.TERM_REPLY:
                    if m.group in learning:
                        if m.HasField("term"):
                            self._terms.setdefault(m.group, {})[sender] = m.term
                        # An older node says nothing of its log: it may hold entries.
                        self._history.setdefault(m.group, {})[sender] = \
                            m.last_log_term if m.HasField("last_log_term") else 1
                    continue
                if learning and m.group in learning:
                    if m.kind == rpb.REQUEST_VOTE:
                        self.votes_ignored += 1
                        continue
                    if m.kind == rpb.APPEND_ENTRIES and learning[m.group] is None \
                            and m.HasField("commit_index"):
                        self._led.add(m.group)
                        floor = self._floor(m.group)
                        if floor is not None and m.term >= floor:
                            learning[m.group] = m.commit_index   # what it must hold first
                try:
                    message = codec.decode(m)
                except codec.UnsupportedMessage as e:
                    self.dropped += 1
                    logger.warning("%s (from node %d): dropped", e, sender)
                    continue
                if m.kind == rpb.APPEND_ENTRIES:
                    self._appended_at[m.group] = time.monotonic()
                    g.echo = (m.probe, m.term) if m.HasField("probe") else None
                    g.transport._onMessageReceived(member, message)
                    g.echo = None
                    continue
                if m.kind == rpb.NEXT_NODE_IDX:
                    if m.HasField("probe_term"):
                        heard = g.heard.get(sender)
                        if heard is None or (m.probe_term, m.probe) > heard:
                            g.heard[sender] = (m.probe_term, m.probe)
                        g.answered_append(sender, m.probe_term, m.probe, m.success)
                    else:
                        g.answered_append(sender, None, None, m.success)
                g.transport._onMessageReceived(member, message)
        deferred = self._tick_later       # a tick the last round left to this one
        if deferred:
            busy |= deferred
            self._tick_later = set()
        if self._out and inline:
            # Answers first: a follower's next_node_idx (and a vote) leave
            # once durable, before the tick applies what the append's commit
            # index covers -- the apply is not on the leader's wait. A round
            # on the event loop that only follows leaves its tick to a round
            # of its own, after the loop wrote the answers (_take_round);
            # never twice in a row, so the apply is late by one loop turn.
            # (Not on the engine thread: its rounds take commands, and what
            # waits in _out -- a timeout_now of lead_from_owners -- leaves
            # behind the round's entries, in its one sync.)
            self._flush()
            if not deferred and not any(
                    self.groups[gid]._SyncObj__raftState == _LEADER
                    for gid in busy if gid in self.groups):
                self._tick_later = busy
                return True
        # Reads and commands are the engine thread's (its rounds batch them).
        reads = self._reads
        while reads and not inline:
            gid, ready, fallback = reads.popleft()
            g = self.groups.get(gid)
            if g is None or not g.confirmable():
                if g is not None:
                    g.log_reads += 1
                fallback()
                continue
            # It needs a round of appends sent from now on, answered by a
            # majority (Group.probe_wanted). (Before the commands: a read
            # handed back goes into them, in this round.)
            g.reads.append((g.probe + 1, g._SyncObj__raftCommitIndex, g.raftCurrentTerm,
                            time.monotonic(), ready, fallback))
        commands = self._commands
        while commands and not inline:
            gid, command, callback = commands.popleft()
            g = self.groups.get(gid)
            if g is None:
                callback(None, FAIL_REASON.REQUEST_DENIED)
                continue
            busy.add(gid)
            g._applyCommand(command, callback, REGULAR)
        if learning:
            # A learner does not stand for election: its log may lack what it
            # acknowledged before, and it would win with a full member's vote
            # and then lead a group of learners that cannot vouch for each
            # other. Its timer is held off until it is a full replica.
            hold = _pso_now() + self.settings.election_timeout
            for gid in learning:
                self.groups[gid]._SyncObj__raftElectionDeadline = hold
        # A tick is PySyncObj's whole step (timers, commit, apply, sends), tens
        # of microseconds per group: a round ticks the groups it brought work
        # for, and every group at least every settings.tick for their timers.
        now = time.monotonic()
        if everyone or now >= self._full_tick_at:
            self._full_tick_at = now + self.settings.tick
            for g in groups:
                g.doTick(0.0)
        else:
            self.partial_ticks += 1
            for g in groups:
                if g.group in busy:
                    g.doTick(0.0)
        patience = self.settings.election_timeout
        for g in groups:
            if g.reads:
                g.serve_reads(now, patience)
                if g.probe_wanted():
                    g.send_wanted = True
            if g.send_wanted:
                g.send_appends()
        if learning:
            self._learned(learning)
            if learning:
                self._ask_terms(learning)
        self._flush()

    def _flush(self) -> None:
        """The round's messages out: a leader's appends now, the rest once the
        journal is durable (see the docstring). A peer that gets messages
        after the sync anyway gets the round's appends with them: one gRPC
        message per peer and round, where a busy node saves most CPU (an idle
        ring, one write in flight, has no such peer)."""
        if self._early:
            early, self._early = self._early, {}
            late = self._out
            for peer in [p for p in early if p in late]:
                late[peer] = early.pop(peer) + late[peer]
            if early:
                self._send(early)
        self.journal.sync()
        if self._out:
            out, self._out = self._out, {}
            self._send(out)

    def _stop_on(self, e: Exception) -> None:
        """A round raised: a storage error fail-stops the node as it says; anything
        else is a bug, and replicating stops rather than go on half-broken."""
        if isinstance(e, StorageError):
            self._fail(str(e))
            return
        logger.exception("raft engine of node %d stopped", self.index, exc_info=e)
        self._fail(f"raft: engine stopped: {type(e).__name__}: {e}")

    def _fail(self, reason: str) -> None:
        self.failed = reason
        self._stopping = True
        self._wake.set()
        self._out = {}
        self._early = {}
        logger.error("node %d: %s", self.index, reason)
        if self._on_failed is not None:
            self._on_failed(reason)
