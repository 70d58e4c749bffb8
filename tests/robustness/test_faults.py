"""Faults under concurrent load, each checked for linearizability and durability.

Eight client threads run creates, reads, updates and deletes against a real
4-node ring while a fault is injected: kill -9 of a node, SIGSTOP past the
client deadline, a rolling restart, snapshots forced mid-load (then a crash of
every node), a full disk under the log of a single node, and a full disk hit
while snapshots rotate (then space freed and a restart). After the fault
is over and every node is back, the history, including a final read of every
key, must be linearizable per key, and every acknowledged write must be there.

Three kinds of keys:
  contended  12 keys spread over the ring, every client on all of them
  own        one key per client, updated only by it (its last ack must survive)
  journal    each create a fresh key (every acknowledged create must survive)

Seeded: CHORDCTL_FAULT_SEED picks the victims and the workload.
"""

from __future__ import annotations

import os
import random
import resource
import signal
import subprocess
import threading
import time

import pytest

from chordctl.client import Client
from chordctl.core import affinity
from chordctl.errors import ChordError
from conftest import run_chordctl, wait_until
from robustness.history import FAILED, NOT_FOUND, OK, UNKNOWN, History, Op
from robustness.linearizability import check

SEED = int(os.environ.get("CHORDCTL_FAULT_SEED", "7"))
BITS = 16
NODES = 4
CLIENTS = 8
DEADLINE = 1.0            # client.timeout: a SIGSTOP of 1 s outlasts it
MIN_OPS = 300             # operations the checker must have placed, per fault
MAX_OPS_PER_CLIENT = 4000
RATE = 150                # operations per second per client, at most
LOAD_BOUND = 90.0         # seconds any one wait on the load may take
CONTENDED = [(i * (1 << BITS)) // 12 + 17 for i in range(12)]
OWN_BASE = 7_000_000_000
JOURNAL_BASE = 9_000_000_000
JOURNAL_STRIDE = 1_000_000

pytestmark = pytest.mark.slow


def own_key(c: int) -> int:
    return OWN_BASE + c


def journal_key(c: int, n: int) -> int:
    return JOURNAL_BASE + c * JOURNAL_STRIDE + n


class Workload:
    """CLIENTS threads, each its own gRPC client and entry node, recording into a History.

    A client whose operation fails or times out moves to the next entry node
    and pauses 50 ms, so a dead node does not flood the history. Each client
    also keeps under *rate* (RATE) operations per second, so that a fast
    machine does not run into MAX_OPS_PER_CLIENT before the fault is over.
    """

    def __init__(self, config, history: History, seed: int, clients: int = CLIENTS,
                 give_up_after: int | None = None, rate: float = RATE,
                 entries: list[int] | None = None, first: int = 0):
        self.config = config
        self.first = first                   # client ids first .. first + clients - 1
        self.rate = rate                     # operations per second per client, at most
        # The entry nodes the clients use (all of the config's by default).
        self.addresses = [config.nodes[i].address
                          for i in (range(len(config.nodes)) if entries is None else entries)]
        self.history = history
        self.seed = seed
        self.clients = clients
        self.give_up_after = give_up_after   # stop a client after this many failures
        self.stop_event = threading.Event()
        self.threads: list[threading.Thread] = []
        self.errors: list[BaseException] = []

    def create_own_keys(self) -> None:
        with Client(self.config, target=self.addresses[0]) as c:
            for i in range(self.first, self.first + self.clients):
                op = self.history.call(c, i, "create", own_key(i), f"c{i}-own".encode())
                assert op.outcome == OK, f"setup: {op} ({op.detail})"

    def start(self) -> "Workload":
        for i in range(self.first, self.first + self.clients):
            t = threading.Thread(target=self._guarded, args=(i,), name=f"load-{i}", daemon=True)
            t.start()
            self.threads.append(t)
        return self

    def stop(self) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(timeout=60)
            assert not t.is_alive(), f"{t.name} did not stop"
        assert not self.errors, f"load thread crashed: {self.errors[0]!r}"

    def running(self) -> bool:
        return any(t.is_alive() for t in self.threads)

    def _guarded(self, c: int) -> None:
        try:
            self._run(c)
        except BaseException as e:  # surfaced by stop()
            self.errors.append(e)

    def _run(self, c: int) -> None:
        rng = random.Random(self.seed * 1000 + c)
        clients: dict[str, Client] = {}
        entry = c % len(self.addresses)
        failures = 0
        next_at = time.monotonic()
        try:
            for n in range(MAX_OPS_PER_CLIENT):
                now = time.monotonic()
                if next_at > now:
                    self.stop_event.wait(next_at - now)
                next_at = max(next_at, now) + 1 / self.rate
                if self.stop_event.is_set():
                    return
                address = self.addresses[entry]
                client = clients.get(address)
                if client is None:
                    client = clients[address] = Client(self.config, target=address)
                value = f"c{c}-{n}".encode()
                r = rng.random()
                if r < 0.12:
                    op = self.history.call(client, c, "create", journal_key(c, n), value)
                elif r < 0.25:
                    op = self.history.call(client, c, "update", own_key(c), value)
                else:
                    kind = rng.choices(("read", "create", "update", "delete"),
                                       weights=(35, 20, 30, 15))[0]
                    op = self.history.call(client, c, kind, rng.choice(CONTENDED),
                                           value if kind in ("create", "update") else None)
                if op.outcome in (UNKNOWN, FAILED):
                    failures += 1
                    if self.give_up_after is not None and failures >= self.give_up_after:
                        return
                    entry = (entry + 1) % len(self.addresses)
                    self.stop_event.wait(0.05)
        finally:
            for client in clients.values():
                client.close()


def completed(history: History, since: int = 0, outcome: str | None = None) -> int:
    """Operations completed after *since* (ns), optionally with one outcome."""
    return sum(1 for o in history.ops
               if o.complete >= since and (outcome is None or o.outcome == outcome))


def load_phase(load: Workload, n: int, seconds: float, what: str) -> None:
    """Let the load run: at least *n* successful operations and *seconds* of it."""
    start = time.monotonic()
    since = time.monotonic_ns()

    def enough() -> bool:
        if not load.running():
            raise AssertionError(f"{what}: the load stopped early ({load.errors or 'no error'})"
                                 f"; {load.history.summary()}")
        return completed(load.history, since, OK) >= n

    wait_until(enough, timeout=LOAD_BOUND, interval=0.05, what=f"{what}: {n} successful ops")
    left = seconds - (time.monotonic() - start)
    if left > 0:
        time.sleep(left)   # a duration of load, not a wait for an event


def final_reads(history: History, config, address: str) -> dict[int, Op]:
    """Read every key the history touched, once the fault is over; returns key -> read."""
    keys = sorted({o.key for o in history.ops})
    final: dict[int, Op] = {}
    with Client(config, target=address, timeout=10.0) as c:
        for _attempt in range(3):
            todo = [k for k in keys if k not in final]
            if not todo:
                break
            for op in history.batch_reads(c, -1, todo):
                if op.outcome in (OK, NOT_FOUND):
                    final[op.key] = op
    missing = [k for k in keys if k not in final]
    assert not missing, f"final reads of {len(missing)} keys got no answer, e.g. {missing[:5]}"
    return final


def lost_writes(history: History, final: dict[int, Op], clients: int) -> list[str]:
    """Acknowledged writes the final reads do not show (and failed ones they do)."""
    problems = []
    ops = [o for o in history.ops if o.client >= 0]
    for o in ops:
        if o.key < JOURNAL_BASE or o.kind != "create":
            continue
        seen = final[o.key]
        if o.outcome == OK and seen.result != o.value:
            problems.append(f"acknowledged {o} lost: final read {seen}")
        elif o.outcome == UNKNOWN and seen.outcome == OK and seen.result != o.value:
            problems.append(f"{o} (unknown) reads back as {seen}")
        elif o.outcome == FAILED and seen.outcome != NOT_FOUND:
            problems.append(f"{o} was never sent ({o.detail}) yet reads back as {seen}")
    for c in range(clients):
        writes = sorted((o for o in ops if o.key == own_key(c)), key=lambda o: o.complete)
        acked = [o for o in writes if o.outcome == OK]
        allowed = {o.value for o in writes if o.outcome == UNKNOWN}
        if acked:
            allowed.add(acked[-1].value)
        seen = final[own_key(c)]
        if seen.outcome != OK or seen.result not in allowed:
            problems.append(f"client {c}'s last acknowledged write {acked[-1] if acked else None} "
                            f"lost: final read {seen}")
    return problems


def verify(name: str, history: History, config, address: str, clients: int = CLIENTS,
           min_ops: int = MIN_OPS, final: dict[int, Op] | None = None) -> dict[int, Op]:
    """Final reads (or *final*, read by the caller into *history*), then: no
    acknowledged write lost, the history linearizable. Returns the final reads."""
    if final is None:
        final = final_reads(history, config, address)
    problems = lost_writes(history, final, clients)
    t0 = time.monotonic()
    res = check(history.ops)
    print(f"\n[fault] {name}: seed {SEED}: {res.ops_checked} operations checked for "
          f"linearizability on {len(res.keys)} keys in {time.monotonic() - t0:.1f}s; "
          f"history: {history.summary()}")
    assert not problems and res.ok, \
        f"{name}: {len(problems)} acknowledged writes lost:\n" + "\n".join(problems[:20]) \
        + f"\n\n{res}"
    assert res.ops_checked >= min_ops, \
        f"{name}: only {res.ops_checked} operations checked (minimum {min_ops})"
    return final


@pytest.fixture
def ring(make_cluster):
    return make_cluster(NODES, bits=BITS, timeout=DEADLINE)


def start_load(cluster, seed: int, **kw) -> tuple[History, Workload]:
    history = History()
    load = Workload(cluster.config, history, seed, **kw)
    load.create_own_keys()
    return history, load.start()


def test_kill_9_of_a_random_node_loses_no_acknowledged_write(ring):
    kill_9_of_a_random_node(ring)


@pytest.mark.skipif(len(affinity.available()) < 2, reason="pinning needs 2 or more CPUs")
def test_kill_9_with_nodes_pinned_like_cluster_up(make_cluster):
    """The same crash, with each node pinned to one CPU under SCHED_BATCH, as
    `cluster up` runs them by default."""
    cpus = [str(c) for c in affinity.available()]
    kill_9_of_a_random_node(make_cluster(NODES, bits=BITS, timeout=DEADLINE, cpus=cpus))


def kill_9_of_a_random_node(ring) -> None:
    victim = random.Random(SEED).randrange(NODES)
    history, load = start_load(ring, SEED)
    try:
        load_phase(load, 150, 2, "load before the kill")
        killed_at = time.monotonic_ns()
        ring.nodes[victim].kill(signal.SIGKILL)
        # The load must have run into the dead node before it comes back.
        wait_until(lambda: sum(1 for o in history.ops if o.complete >= killed_at
                               and o.outcome in (UNKNOWN, FAILED)) >= 10,
                   timeout=LOAD_BOUND, interval=0.05, what="operations failing on the dead node")
        ring.nodes[victim].start()
        load_phase(load, 150, 3, "load after the restart")
    finally:
        load.stop()
    verify(f"kill -9 of node {victim}", history, ring.config, ring.address(victim))


def test_sigstop_longer_than_the_deadline_then_sigcont(ring):
    victim = random.Random(SEED + 1).randrange(NODES)
    history, load = start_load(ring, SEED + 1)
    node = ring.nodes[victim]
    try:
        load_phase(load, 150, 2, "load before the pause")
        stopped_at = time.monotonic_ns()
        node.kill(signal.SIGSTOP)
        try:
            # Paused for longer than the deadline: requests sent to it after
            # the pause began have timed out at their clients.
            wait_until(lambda: sum(1 for o in history.ops if o.invoke >= stopped_at
                                   and o.outcome == UNKNOWN
                                   and o.complete - o.invoke >= DEADLINE * 1e9) >= 3,
                       timeout=LOAD_BOUND, interval=0.05, what="client deadlines to pass")
        finally:
            node.kill(signal.SIGCONT)
        load_phase(load, 150, 3, "load after SIGCONT")
    finally:
        load.stop()
    assert node.alive
    verify(f"SIGSTOP/SIGCONT of node {victim}", history, ring.config, ring.address(0))


def test_restart_of_every_node_one_by_one(ring):
    history, load = start_load(ring, SEED + 2)
    try:
        load_phase(load, 100, 2, "load before the restarts")
        for node in ring.nodes:
            code = node.stop()
            assert code == 0, f"node {node.index} exited {code} on SIGTERM\n{node.log()}"
            node.start()
            load_phase(load, 60, 1, f"load after restarting node {node.index}")
    finally:
        load.stop()
    verify("rolling restart of every node", history, ring.config, ring.address(0))


def test_snapshots_forced_during_load_then_crash_of_every_node(ring):
    history, load = start_load(ring, SEED + 3)
    counters = [0] * NODES
    try:
        for rnd in range(3):
            load_phase(load, 100, 1.5, f"load before snapshot {rnd}")
            if rnd == 1:
                r = run_chordctl("-c", ring.config_path, "snapshot", "create", timeout=120)
                assert r.returncode == 0, r.stderr.decode()
                counters = [c + 1 for c in counters]
                continue
            for i in range(NODES):
                with Client(ring.config, target=ring.address(i)) as c:
                    rep = c.take_snapshot()
                assert not rep.skipped and rep.counter == counters[i] + 1, rep
                counters[i] = rep.counter
        # Crash every node with the newest log still being written, recover
        # from snap.3 plus its log, under load.
        load_phase(load, 50, 1, "load after the last snapshot")
        for node in ring.nodes:
            node.kill(signal.SIGKILL)
        ring.start()
        load_phase(load, 150, 2, "load after recovery")
    finally:
        load.stop()
    for i in range(NODES):
        with Client(ring.config, target=ring.address(i)) as c:
            st = c.status()
        assert st.snapshot_counter == 3, f"node {i} recovered from snap.{st.snapshot_counter}"
    verify("snapshots forced during load, then kill -9 of every node", history, ring.config,
           ring.address(0))


FSIZE_LIMIT = 12 * 1024


def _limit_file_size() -> None:
    """In the child, before exec: files may not grow past FSIZE_LIMIT (EFBIG)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (FSIZE_LIMIT, FSIZE_LIMIT))


def test_full_disk_under_the_log_fails_writes_without_acknowledging_them(make_cluster):
    single = make_cluster(1, bits=BITS, timeout=5, start=False)
    node = single.nodes[0]
    node.start(preexec_fn=_limit_file_size)
    history = History()
    load = Workload(single.config, history, SEED + 4, clients=6, give_up_after=3)
    load.create_own_keys()
    load.start()
    try:
        # Every client stops after its third failure; the log fills long before
        # MAX_OPS_PER_CLIENT, so all of them do.
        for t in load.threads:
            t.join(timeout=LOAD_BOUND)
    finally:
        load.stop()
    failed = [o for o in history.ops if o.outcome in (UNKNOWN, FAILED)]
    assert any("log: cannot write" in o.detail for o in failed), \
        f"the log never filled up: {history.summary()}\n{node.log()}"
    odd = [o for o in failed if "log: cannot write" not in o.detail
           and "deadline" not in o.detail.lower()]
    assert not odd, "\n".join(f"{o} ({o.detail})" for o in odd[:10])
    assert node.alive, f"the node died on a full disk instead of failing requests\n{node.log()}"
    log0 = os.path.join(single.config.node_dir(0), "log.0")
    assert os.path.getsize(log0) <= FSIZE_LIMIT
    # Still answering, with an error, not a hang or a crash.
    with Client(single.config, timeout=5) as c:
        probe = history.call(c, -2, "read", CONTENDED[0])
    # Refused by the fail-stopped node: definitely not applied.
    assert probe.outcome == FAILED and "log: cannot write" in probe.detail, probe.detail
    code = node.stop()
    assert code != -signal.SIGKILL, f"the node had to be killed\n{node.log()}"

    node.start()                      # the disk "fixed": no limit this time
    verify("full disk under the log", history, single.config, node.address, clients=6,
           min_ops=150)


SMALL_DISK = "512k"
PRELOAD_BASE = 5_000_000_000
PRELOAD = 150                 # keys of 1 KB: each snapshot takes ~150 KB of the disk


@pytest.fixture
def small_disk(tmp_path):
    """The ring's data dir (tmp_path/data) on a SMALL_DISK tmpfs; yields remount(size)."""
    mnt = tmp_path / "data"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SMALL_DISK}", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or r.returncode}); a "
                    f"full disk during a snapshot needs one (RLIMIT_FSIZE only limits one "
                    f"file's size, not the disk the snapshots share with the log)")

    def remount(size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(mnt)], check=True)

    try:
        yield remount
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_full_disk_while_snapshots_rotate_then_space_freed_and_restart(small_disk,
                                                                         make_cluster):
    """Snapshots forced back to back while the load fills a small disk: some
    snapshots fail with ENOSPC (their .tmp must go), then a log append fails
    with a snapshot marker queued behind it (the log must not rotate). Once
    the disk is bigger the node must restart from what it holds, which is
    every acknowledged write and none it refused."""
    single = make_cluster(1, bits=BITS, timeout=5)
    node = single.nodes[0]
    node_dir = single.config.node_dir(0)
    with Client(single.config, timeout=30) as c:
        res = c.batch([("create", str(PRELOAD_BASE + i), b"p" * 1000) for i in range(PRELOAD)])
    assert not [r for r in res if isinstance(r, ChordError)], res[:3]
    history = History()
    load = Workload(single.config, history, SEED + 5, clients=6, give_up_after=3)
    load.create_own_keys()
    stop = threading.Event()
    snaps = {"ok": 0, "failed": 0}

    def snapshotter() -> None:
        with Client(single.config, target=node.address, timeout=30) as c:
            while not stop.is_set():
                try:
                    c.take_snapshot(timeout=30)
                    snaps["ok"] += 1
                except ChordError:
                    snaps["failed"] += 1
                stop.wait(0.02)       # pacing, not synchronisation

    t = threading.Thread(target=snapshotter, name="snapshotter", daemon=True)
    load.start()
    t.start()
    try:
        # Every client stops after its third failure: once the log is full.
        for th in load.threads:
            th.join(timeout=LOAD_BOUND)
    finally:
        stop.set()
        t.join(timeout=60)
        load.stop()
    failed = [o for o in history.ops if o.outcome in (UNKNOWN, FAILED)]
    assert any("log: cannot write" in o.detail for o in failed), \
        f"the disk never filled: {history.summary()}, snapshots {snaps}\n{node.log()}"
    assert snaps["ok"] >= 1 and snaps["failed"] >= 1, snaps
    assert node.alive, f"the node died on a full disk\n{node.log()}"
    names = os.listdir(node_dir)
    assert not [n for n in names if n.endswith(".tmp")], f"a failed snapshot leaked: {names}"
    assert node.stop() != -signal.SIGKILL, node.log()

    small_disk("64m")                 # space freed
    node.start()                      # must recover: no corruption, no refusal
    verify("full disk while snapshots rotate", history, single.config, node.address,
           clients=6, min_ops=150)
    with Client(single.config, timeout=30) as c:
        back = c.batch([("read", str(PRELOAD_BASE + i), None) for i in range(PRELOAD)])
        assert all(not isinstance(r, ChordError) and r.value == b"p" * 1000 for r in back)
        c.create(str(PRELOAD_BASE - 1), b"after the disk was freed")
