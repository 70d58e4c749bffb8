"""ring.replicas: 3 under faults, each checked for linearizability and durability.

The same workload as test_faults.py (client threads on contended, own and
journal keys, every operation recorded in a History) runs against a real
R = 3 ring while a fault is injected:

  - kill -9 of a group's leader, then a restart,
  - SIGSTOP of a leader past the election timeout, then SIGCONT,
  - the permanent loss of a node (process and data directory), then a
    replacement on an empty directory,
  - every node killed (kill -9 or SIGTERM) and restarted, 20 times,
  - a leader cut off from the other two by the network (network namespaces).

After the fault is over and every node is back (or the replacement caught
up), the history, including a final read of every key, must be linearizable
per key and every acknowledged write must be there. Where every replica is
up, each replica's own copy of each arc (a Scan with ``arc`` set, sent to
that replica) must be the same, and the same as the final reads.

Seeded like test_faults.py: CHORDCTL_FAULT_SEED picks the victims and the workload.
"""

from __future__ import annotations

import hashlib
import random
import shutil
import signal
import time

import pytest

from chordctl.client import Client
from chordctl.core.ring import Ring
from chordctl.pb import chord_pb2 as pb
from chordctl.status import arc_rows
from conftest import wait_until
from robustness.history import OK, UNKNOWN, History, Op
from robustness.test_faults import SEED, Workload, load_phase, verify

BITS = 16
R = 3
NODES = 5
CLIENTS = 6
RATE = 40                 # operations per second per client, at most (2 cores, 5 nodes)
DEADLINE = 1.0            # client.timeout
ELECTION = 0.75           # replication.election_timeout
HEARTBEAT = 0.1
REPLICATION = {"election_timeout": ELECTION, "heartbeat": HEARTBEAT}
ELECTED_WITHIN = 10.0     # seconds: a new leader, generous for a loaded 2-core machine
SERVED_WITHIN = 10.0      # seconds from a permanent loss to every key served (README)
MIN_OPS = 300

pytestmark = pytest.mark.slow


def r3_ring(make_cluster, n: int = NODES):
    return make_cluster(n, bits=BITS, replicas=R, timeout=DEADLINE,
                        replication=REPLICATION).settled(timeout=30)


def start_load(cluster, seed: int, clients: int = CLIENTS) -> tuple[History, Workload]:
    history = History()
    load = Workload(cluster.config, history, seed, clients=clients, rate=RATE)
    load.create_own_keys()
    return history, load.start()


# -- what the replicas say -----------------------------------------------------

def status_of(config, i: int, timeout: float = 2.0):
    """Node i's Status, or the error (down, paused, cut off)."""
    try:
        with Client(config, target=config.nodes[i].address, timeout=timeout) as c:
            return c.status(timeout=timeout)
    except Exception as e:  # noqa: BLE001 - any failure means "no view"
        return e


def group_view(config, i: int, g: int):
    """Node i's GroupStatus of arc g, or None."""
    st = status_of(config, i)
    if isinstance(st, Exception):
        return None
    return next((v for v in st.groups if v.group == g), None)


def leader_among(config, g: int, members, above_term: int = -1) -> int | None:
    """A member that says it leads arc g in a term above *above_term*, or None."""
    for m in members:
        v = group_view(config, m, g)
        if v is not None and v.state == "leader" and v.term > above_term:
            return m
    return None


def arcs(config) -> list[dict]:
    """`ring show`'s view of every arc (chordctl.status.arc_rows), from every node's Status."""
    statuses = [status_of(config, i) for i in range(len(config.nodes))]
    return arc_rows(config, statuses)[1]


def caught_up(config, i: int) -> bool:
    """Node i is `up` (neither `catching up` nor `down`) in every arc it holds a copy
    of, and its Status says it is learning none of them."""
    ring = Ring.from_config(config)
    held = set(ring.groups_of(i, R))
    for doc in arcs(config):
        if doc["arc"] not in held:
            continue
        mine = next(r for r in doc["replicas"] if r["index"] == i)
        if doc["leader"] is None or mine["state"] not in ("up", "leader"):
            return False
    st = status_of(config, i)
    return not isinstance(st, Exception) and not any(v.learning for v in st.groups)


def replica_copies(config) -> dict[int, dict[int, dict[int, bytes]]]:
    """arc -> replica -> that replica's own copy of the arc (key -> value): a Scan
    with ``arc`` set sent to each replica, taken after a barrier through the arc's log."""
    ring = Ring.from_config(config)
    out: dict[int, dict[int, dict[int, bytes]]] = {}
    with Client(config, timeout=15) as c:
        for g in range(len(config.nodes)):
            out[g] = {}
            for i in ring.replicas(g, R):
                copy: dict[int, bytes] = {}
                for page in c._node_stub(i).Scan(pb.ScanRequest(arc=g, limit=0), timeout=15):
                    for e in page.entries:
                        copy[int(e.key)] = e.value
                out[g][i] = copy
    return out


def digest(copy: dict[int, bytes]) -> str:
    h = hashlib.sha256()
    for k in sorted(copy):
        h.update(b"%d\0%d\0" % (k, len(copy[k])) + copy[k])
    return h.hexdigest()[:16]


def assert_replicas_agree(config, final: dict[int, Op]) -> None:
    """Every replica's copy of every arc has one digest, and holds what the final
    reads returned: the keys read back, with their values, and no other."""
    ring = Ring.from_config(config)
    expected: dict[int, dict[int, bytes]] = {g: {} for g in range(len(config.nodes))}
    for k, op in final.items():
        if op.outcome == OK:
            expected[ring.owner(k)][k] = op.result
    copies = replica_copies(config)
    problems = []
    for g, by_replica in copies.items():
        want = digest(expected[g])
        for i, copy in by_replica.items():
            if digest(copy) != want:
                extra = sorted(set(copy) - set(expected[g]))[:5]
                missing = sorted(set(expected[g]) - set(copy))[:5]
                differ = sorted(k for k in set(copy) & set(expected[g])
                                if copy[k] != expected[g][k])[:5]
                problems.append(f"arc {g} on node {i}: digest {digest(copy)}, the final reads' "
                                f"{want} ({len(copy)} keys, {len(expected[g])} read back; "
                                f"extra {extra}, missing {missing}, other values {differ})")
    print(f"[replicas] {sum(len(v) for v in copies.values())} copies of {len(copies)} arcs, "
          f"digests: " + "; ".join(f"arc {g}: {digest(expected[g])}" for g in copies))
    assert not problems, "replicas disagree:\n" + "\n".join(problems)


def ok_on_arc(history: History, ring: Ring, g: int, since: int) -> int:
    """Successful operations on arc g's keys completed after *since* (ns)."""
    return sum(1 for o in history.ops
               if o.complete >= since and o.outcome == OK and ring.owner(o.key) == g)


# -- the faults ----------------------------------------------------------------

def test_kill_9_of_a_group_leader_then_restart(make_cluster):
    cluster = r3_ring(make_cluster)
    cfg = cluster.config
    ring = Ring.from_config(cfg)
    victim = random.Random(SEED).randrange(NODES)
    before = group_view(cfg, victim, victim)
    assert before is not None and before.state == "leader", before
    others = ring.replicas(victim, R)[1:]
    history, load = start_load(cluster, SEED)
    try:
        load_phase(load, 150, 1.5, "load before the kill")
        killed = time.monotonic()
        killed_ns = time.monotonic_ns()
        cluster.nodes[victim].kill(signal.SIGKILL)
        wait_until(lambda: leader_among(cfg, victim, others, before.term) is not None,
                   timeout=ELECTED_WITHIN, interval=0.05,
                   what=f"a new leader of arc {victim} among {others}")
        print(f"\n[fault] arc {victim}: new leader {leader_among(cfg, victim, others)} "
              f"{time.monotonic() - killed:.2f}s after the kill -9 of its leader")
        # The arc is served by the two others while its leader is dead.
        wait_until(lambda: ok_on_arc(history, ring, victim, killed_ns) >= 10,
                   timeout=ELECTED_WITHIN, interval=0.05,
                   what=f"operations on arc {victim} succeeding without its leader")
        load_phase(load, 100, 1, "load with the leader dead")
        cluster.nodes[victim].start()
        cluster.settled(timeout=30)          # the owner leads its arc again
        load_phase(load, 150, 1.5, "load after the restart")
    finally:
        load.stop()
    final = verify(f"R=3: kill -9 of arc {victim}'s leader", history, cfg,
                   cluster.address(victim), clients=CLIENTS, min_ops=MIN_OPS)
    assert_replicas_agree(cfg, final)


def test_sigstop_of_a_leader_past_the_election_timeout_then_sigcont(make_cluster):
    cluster = r3_ring(make_cluster)
    cfg = cluster.config
    ring = Ring.from_config(cfg)
    victim = random.Random(SEED + 1).randrange(NODES)
    before = group_view(cfg, victim, victim)
    assert before is not None and before.state == "leader", before
    others = ring.replicas(victim, R)[1:]
    node = cluster.nodes[victim]
    history, load = start_load(cluster, SEED + 1)
    try:
        load_phase(load, 150, 1.5, "load before the pause")
        stopped_ns = time.monotonic_ns()
        node.kill(signal.SIGSTOP)
        try:
            wait_until(lambda: leader_among(cfg, victim, others, before.term) is not None,
                       timeout=ELECTED_WITHIN, interval=0.05,
                       what=f"the others elect a leader of arc {victim}")
            new_leader = leader_among(cfg, victim, others, before.term)
            wait_until(lambda: ok_on_arc(history, ring, victim, stopped_ns) >= 10,
                       timeout=ELECTED_WITHIN, interval=0.05,
                       what=f"operations on arc {victim} succeeding with its leader paused")
            # Past the client deadline too: what was sent to the paused node timed out.
            wait_until(lambda: sum(1 for o in history.ops if o.invoke >= stopped_ns
                                   and o.outcome == UNKNOWN
                                   and o.complete - o.invoke >= DEADLINE * 1e9) >= 1,
                       timeout=ELECTED_WITHIN, interval=0.05, what="client deadlines to pass")
        finally:
            node.kill(signal.SIGCONT)
        # It rejoins: it learns the new term (as a follower) before it leads again.
        wait_until(lambda: (v := group_view(cfg, victim, victim)) is not None
                   and v.term > before.term, timeout=ELECTED_WITHIN, interval=0.05,
                   what=f"node {victim} learns arc {victim}'s new term")
        print(f"\n[fault] arc {victim}: node {new_leader} led while node {victim} was paused")
        cluster.settled(timeout=30)
        load_phase(load, 150, 1.5, "load after SIGCONT")
    finally:
        load.stop()
    assert node.alive, node.log()
    final = verify(f"R=3: SIGSTOP/SIGCONT of arc {victim}'s leader", history, cfg,
                   cluster.address(victim), clients=CLIENTS, min_ops=MIN_OPS)
    assert_replicas_agree(cfg, final)


PROBE_CLIENT = 100        # history client ids of the probes: 100 + the entry node


def probe_keys(n: int) -> list[int]:
    """Two keys on every arc of an n-node ring, none of the workload's."""
    ring = Ring(BITS, n)
    keys = []
    for g in range(n):
        low, _high = ring.arc(g)
        keys += [(low + 5) % (1 << BITS), (low + 9) % (1 << BITS)]
    assert sorted({ring.owner(k) for k in keys}) == list(range(n))
    return keys


def test_permanent_loss_of_a_node_then_a_replacement_on_an_empty_directory(make_cluster):
    cluster = r3_ring(make_cluster)
    cfg = cluster.config
    victim = random.Random(SEED + 2).randrange(NODES)
    survivors = [i for i in range(NODES) if i != victim]
    keys = probe_keys(NODES)
    history, load = start_load(cluster, SEED + 2)
    with Client(cfg, target=cluster.address(survivors[0])) as c:
        for k in keys:
            op = history.call(c, PROBE_CLIENT, "create", k, b"probe-%d" % k)
            assert op.outcome == OK, f"setup: {op} ({op.detail})"
    try:
        load_phase(load, 150, 1.5, "load before the loss")
        cluster.nodes[victim].kill(signal.SIGKILL)
        shutil.rmtree(cfg.node_dir(victim))
        lost = time.monotonic()
        rounds = [0]

        def served() -> bool:
            """One pass: every probe key read, then updated, through every survivor."""
            rounds[0] += 1
            for i in survivors:
                with Client(cfg, target=cluster.address(i), timeout=DEADLINE) as c:
                    for k in keys:
                        if history.call(c, PROBE_CLIENT + i, "read", k).outcome != OK:
                            return False
                        if history.call(c, PROBE_CLIENT + i, "update", k,
                                        b"n%d-r%d-%d" % (i, rounds[0], k)).outcome != OK:
                            return False
            return True

        wait_until(served, timeout=SERVED_WITHIN, interval=0.05,
                   what=f"every key read and written through every survivor of node {victim}")
        took = time.monotonic() - lost
        print(f"\n[fault] node {victim} lost for good: every key served by every survivor "
              f"{took:.2f}s later ({rounds[0]} passes)")
        assert took < SERVED_WITHIN, took
        load_phase(load, 100, 1, "load without the lost node")

        replaced = time.monotonic()
        cluster.nodes[victim].start()         # the same config, an empty directory
        wait_until(lambda: caught_up(cfg, victim), timeout=60, interval=0.2,
                   what=f"the replacement of node {victim} caught up in its arcs")
        print(f"[fault] the replacement caught up {time.monotonic() - replaced:.2f}s after "
              f"its start")
        cluster.settled(timeout=30)
        load_phase(load, 150, 1.5, "load with the replacement")
    finally:
        load.stop()
    # Read through the replacement, then each replica's own copy (the
    # replacement's too) compared with what was read.
    final = verify(f"R=3: node {victim} lost for good, replaced", history, cfg,
                   cluster.address(victim), clients=CLIENTS, min_ops=MIN_OPS)
    assert_replicas_agree(cfg, final)


ROUNDS = 20
RESTART_NODES = 3


def test_every_node_killed_and_restarted_20_times(make_cluster):
    """A 3-node R = 3 ring (every node holds every arc): each round a little load,
    then every node killed at once (kill -9, or SIGTERM every other round),
    restarted and settled. Then one state per arc on every replica."""
    cluster = r3_ring(make_cluster, RESTART_NODES)
    cfg = cluster.config
    history, load = start_load(cluster, SEED + 3, clients=4)
    took = []
    try:
        for rnd in range(ROUNDS):
            load_phase(load, 15, 0, f"load in round {rnd}")
            sig = signal.SIGKILL if rnd % 2 == 0 else signal.SIGTERM
            t0 = time.monotonic()
            for n in cluster.nodes:
                n.proc.send_signal(sig)
            for n in cluster.nodes:
                n.proc.wait(timeout=30)
                if sig == signal.SIGTERM:
                    assert n.proc.returncode == 0, \
                        f"round {rnd}: node {n.index} exited {n.proc.returncode} on SIGTERM" \
                        f"\n{n.log()}"
            cluster.start()
            cluster.settled(timeout=30)
            took.append(time.monotonic() - t0)
        load_phase(load, 60, 1, "load after the last restart")
    finally:
        load.stop()
    print(f"\n[fault] {ROUNDS} full restarts, {min(took):.1f}-{max(took):.1f}s each "
          f"(down to settled)")
    final = verify(f"R=3: every node killed and restarted {ROUNDS} times", history, cfg,
                   cluster.address(0), clients=4, min_ops=MIN_OPS)
    assert_replicas_agree(cfg, final)
