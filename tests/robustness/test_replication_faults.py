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
from robustness.history import FAILED, OK, UNKNOWN, History, Op
from robustness.test_faults import CONTENDED, SEED, Workload, load_phase, verify

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


def assert_replicas_agree(config, final: dict[int, Op], copies=None) -> None:
    """Every replica's copy of every arc (*copies*, or replica_copies) has one
    digest, and holds what the final reads returned: the keys read back, with
    their values, and no other."""
    ring = Ring.from_config(config)
    expected: dict[int, dict[int, bytes]] = {g: {} for g in range(len(config.nodes))}
    for k, op in final.items():
        if op.outcome == OK:
            expected[ring.owner(k)][k] = op.result
    if copies is None:
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
        load_phase(load, 100, 1, "load before the kill")
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
        load_phase(load, 100, 1, "load after the restart")
    finally:
        load.stop()
    final = verify(f"R=3: kill -9 of arc {victim}'s leader", history, cfg,
                   cluster.address(victim), clients=CLIENTS, min_ops=MIN_OPS)
    assert_replicas_agree(cfg, final)


PAUSED_CLIENT = 90        # history client id of the requests sent to a paused leader


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
    probe = None
    try:
        load_phase(load, 100, 1, "load before the pause")
        mine = [k for k in CONTENDED if ring.owner(k) == victim][:2]
        probe = Client(cfg, target=cluster.address(victim), timeout=DEADLINE)
        history.call(probe, PAUSED_CLIENT, "read", mine[-1])
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
            # Requests sent to the paused leader itself: no answer (they time
            # out at the client), whatever it does with them once it runs again.
            # (on a connection made before the pause: they reach its socket)
            sent = [history.call(probe, PAUSED_CLIENT, "update", mine[0], b"paused"),
                    history.call(probe, PAUSED_CLIENT, "read", mine[-1])]
            assert all(o.outcome == UNKNOWN for o in sent), \
                "the paused leader answered: " + ", ".join(f"{o} ({o.detail})" for o in sent)
        finally:
            node.kill(signal.SIGCONT)
        # It rejoins: it learns the new term (as a follower) before it leads again.
        wait_until(lambda: (v := group_view(cfg, victim, victim)) is not None
                   and v.term > before.term, timeout=ELECTED_WITHIN, interval=0.05,
                   what=f"node {victim} learns arc {victim}'s new term")
        print(f"\n[fault] arc {victim}: node {new_leader} led while node {victim} was paused")
        cluster.settled(timeout=30)
        load_phase(load, 100, 1, "load after SIGCONT")
    finally:
        load.stop()
        if probe is not None:
            probe.close()
    assert node.alive, node.log()
    final = verify(f"R=3: SIGSTOP/SIGCONT of arc {victim}'s leader", history, cfg,
                   cluster.address(victim), clients=CLIENTS, min_ops=MIN_OPS)
    assert_replicas_agree(cfg, final)


PROBE_CLIENT = 100        # history client ids of the probes: 100 + the entry node


def probe_keys(n: int) -> list[int]:
    """A key on every arc of an n-node ring, none of the workload's."""
    ring = Ring(BITS, n)
    keys = []
    for g in range(n):
        low, _high = ring.arc(g)
        keys.append((low + 5) % (1 << BITS))
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
        load_phase(load, 100, 1, "load before the loss")
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
        load_phase(load, 100, 1, "load with the replacement")
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
    then every node killed at once (kill -9, or SIGTERM every fourth round),
    restarted and settled. Then one state per arc on every replica."""
    cluster = r3_ring(make_cluster, RESTART_NODES)
    cfg = cluster.config
    history, load = start_load(cluster, SEED + 3, clients=4)
    took = []
    try:
        for rnd in range(ROUNDS):
            load_phase(load, 15, 0, f"load in round {rnd}")
            sig = signal.SIGTERM if rnd % 4 == 1 else signal.SIGKILL
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


# -- a leader cut off by the network (network namespaces) ----------------------
#
# Each node in its own network namespace, joined by a bridge (test_netns.py's
# PrivateNet). The test process cannot reach those addresses, so the clients
# run as drivers inside the namespaces (this module's driver(), below): the
# majority's load in the client namespace, the minority's inside the cut
# leader's own namespace, where its address still answers. Each driver writes
# its History as JSON; CLOCK_MONOTONIC is the machine's, so the histories
# merge into one.

PART_CLIENTS = 4
MINORITY_FIRST = 20           # the minority's client ids (own keys, journal keys)
CUT_FOR = 3.0                 # seconds the leader stays cut off: 4 election timeouts
DRIVER_BOUND = 90.0           # seconds any driver runs at most


def _op_json(o: Op) -> list:
    hexed = (lambda b: None if b is None else b.hex())
    return [o.client, o.kind, o.key, hexed(o.value), o.invoke, o.complete, o.outcome,
            hexed(o.result), o.detail]


def _op_from(row: list) -> Op:
    unhex = (lambda h: None if h is None else bytes.fromhex(h))
    client, kind, key, value, invoke, complete, outcome, result, detail = row
    return Op(0, client, kind, key, unhex(value), invoke, complete, outcome, unhex(result),
              detail)


def driver(argv: list[str]) -> None:
    """Run inside a namespace: python -c '...driver(sys.argv[1:])' CONFIG MODE JSON."""
    import json
    import os

    from chordctl import config as config_mod
    from conftest import owners_lead
    from robustness.test_faults import completed, final_reads

    cfg = config_mod.load(argv[0])
    mode, args = argv[1], json.loads(argv[2])
    if mode == "settled":
        wait_until(lambda: owners_lead(cfg), timeout=args["timeout"], interval=0.05,
                   what="every arc led by its owner")
    elif mode == "load":
        history = History()
        load = Workload(cfg, history, args["seed"], clients=args["clients"], rate=RATE,
                        entries=args["entries"], first=args["first"])
        if args["own_keys"]:
            load.create_own_keys()
        load.start()
        bound = time.monotonic() + args["seconds"]
        try:
            if args.get("ready_file"):
                wait_until(lambda: completed(history, 0, OK) >= args["ready_ops"],
                           timeout=DRIVER_BOUND, interval=0.05, what="the load's first ops")
                open(args["ready_file"], "w").close()
            while time.monotonic() < bound and not (
                    args.get("stop_file") and os.path.exists(args["stop_file"])):
                time.sleep(0.05)      # a duration of load (or until the test says stop)
        finally:
            load.stop()
        with open(args["out"], "w") as f:
            json.dump([_op_json(o) for o in history.ops], f)
    elif mode == "final":
        history = History()
        with open(args["ops_file"]) as f:
            history.extend(_op_from(r) for r in json.load(f))
        final = final_reads(history, cfg, cfg.nodes[args["entry"]].address)
        with open(args["out"], "w") as f:
            json.dump({str(k): _op_json(o) for k, o in final.items()}, f)
    elif mode == "copies":
        copies = replica_copies(cfg)
        with open(args["out"], "w") as f:
            json.dump({g: {i: {str(k): v.hex() for k, v in c.items()} for i, c in r.items()}
                       for g, r in copies.items()}, f)
    else:
        raise SystemExit(f"driver: unknown mode {mode}")


@pytest.fixture
def netns_r3(tmp_path):
    """(config, PrivateNet, run(ns, mode, args, wait=True)): a 3-node R = 3 ring,
    each node in its own network namespace."""
    import json
    import os
    import subprocess
    import sys

    import yaml

    from chordctl import config as config_mod
    try:
        from test_netns import PORT, PrivateNet, _tail, exec_in
    except ImportError as e:       # pragma: no cover - the module is ours
        pytest.skip(f"test_netns helpers: {e}")
    if os.geteuid() != 0:
        pytest.skip("a network partition needs root to create network namespaces")
    if shutil.which("ip") is None:
        pytest.skip("a network partition needs the `ip` command (iproute2)")
    tests_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    net = PrivateNet()
    procs: list[subprocess.Popen] = []
    logs = [str(tmp_path / f"node-{i}.log") for i in range(3)]
    try:
        try:
            net.build()
        except (RuntimeError, OSError) as e:
            pytest.skip(f"network namespaces are not usable here: {e}")
        doc = {"ring": {"bits": BITS, "placement": "direct", "routing": "fingers",
                        "replicas": R},
               "replication": REPLICATION,
               "nodes": [{"host": net.address(i), "port": PORT} for i in range(3)],
               "storage": {"data_dir": str(tmp_path / "data"), "snapshot_interval": 0},
               "client": {"timeout": DEADLINE, "grace": 2}}
        path = str(tmp_path / "chordctl.yaml")
        with open(path, "w") as f:
            yaml.safe_dump(doc, f)
        for i, ns in enumerate(net.nodes):
            with open(logs[i], "ab") as log:
                procs.append(subprocess.Popen(
                    exec_in(ns, sys.executable, "-m", "chordctl", "-c", path, "node", "serve",
                            "--node", str(i)),
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT))
        code = ("import sys; sys.path[:0] = [sys.argv[1]]; "
                "from robustness.test_replication_faults import driver; driver(sys.argv[2:])")

        def run(ns: str, mode: str, args: dict, wait: bool = True):
            argv = exec_in(ns, sys.executable, "-c", code, tests_dir, path, mode,
                           json.dumps(args))
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
            if not wait:
                return p
            out, err = p.communicate(timeout=DRIVER_BOUND + 30)
            assert p.returncode == 0, (f"driver {mode} in {ns} failed:\n{err[-3000:]}\n"
                                       + "\n".join(_tail(x) for x in logs))
            return out

        try:
            run(net.client, "settled", {"timeout": 60})
        except AssertionError as e:
            raise AssertionError(f"{e}\n" + "\n".join(_tail(x) for x in logs)) from None
        yield config_mod.load(path), net, run, procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        left = net.delete()
        assert not left, f"network namespaces left behind: {left}"


def test_a_leader_cut_off_acknowledges_nothing_and_the_majority_serves(netns_r3, tmp_path):
    import json
    import os

    from test_netns import must
    cfg, net, run, procs = netns_r3
    ring = Ring.from_config(cfg)
    victim = 0                    # leads arc 0 (settled), follows arcs 1 and 2
    ready, stop = str(tmp_path / "ready"), str(tmp_path / "stop")
    majority_out, minority_out = str(tmp_path / "majority.json"), str(tmp_path / "minority.json")
    majority = run(net.client, "load", {
        "seed": SEED + 4, "clients": PART_CLIENTS, "entries": [0, 1, 2], "first": 0,
        "own_keys": True, "ready_file": ready, "ready_ops": 150, "stop_file": stop,
        "seconds": DRIVER_BOUND, "out": majority_out}, wait=False)
    try:
        wait_until(lambda: os.path.exists(ready) or majority.poll() is not None,
                   timeout=DRIVER_BOUND, interval=0.05, what="the majority's load to run")
        assert majority.poll() is None, majority.communicate()[1][-3000:]
        cut_ns = time.monotonic_ns()
        must("-n", net.nodes[victim], "link", "set", net.link(victim), "down")
        try:
            # From inside the cut node's namespace: its own clients, for CUT_FOR seconds.
            run(net.nodes[victim], "load", {
                "seed": SEED + 5, "clients": 2, "entries": [victim], "first": MINORITY_FIRST,
                "own_keys": False, "seconds": CUT_FOR, "out": minority_out})
        finally:
            healed_ns = time.monotonic_ns()
            must("-n", net.nodes[victim], "link", "set", net.link(victim), "up")
        run(net.client, "settled", {"timeout": 60})
        settled_at = time.monotonic()
        wait_until(lambda: time.monotonic() - settled_at > 1.5 or majority.poll() is not None,
                   timeout=5, interval=0.05, what="load after the heal")   # a duration
    finally:
        open(stop, "w").close()
        _out, err = majority.communicate(timeout=DRIVER_BOUND)
    assert majority.returncode == 0, err[-3000:]
    assert all(p.poll() is None for p in procs), "a node exited during the partition"
    with open(majority_out) as f:
        majority_ops = [_op_from(r) for r in json.load(f)]
    with open(minority_out) as f:
        minority_ops = [_op_from(r) for r in json.load(f)]

    # The minority side acknowledges nothing: no answer at all, not even not-found.
    answered = [o for o in minority_ops if o.outcome not in (UNKNOWN, FAILED)]
    assert len(minority_ops) >= 4, f"the minority's clients sent {len(minority_ops)} requests"
    assert not answered, "the cut-off leader answered:\n" + "\n".join(
        f"{o} ({o.detail})" for o in answered[:10])
    # The majority elected a leader of arc 0 and served it while node 0 was cut off.
    served = [o for o in majority_ops if o.outcome == OK and ring.owner(o.key) == victim
              and o.invoke >= cut_ns and o.complete <= healed_ns]
    print(f"\n[fault] partition: {len(minority_ops)} requests on the cut-off leader's side, "
          f"none answered; {len(served)} operations on its arc served by the majority "
          f"during the {(healed_ns - cut_ns) / 1e9:.1f}s cut")
    assert len(served) >= 10, f"the majority served only {len(served)} ops on arc {victim}"

    history = History()
    history.extend(majority_ops + minority_ops)
    final_out, ops_file = str(tmp_path / "final.json"), str(tmp_path / "ops.json")
    with open(ops_file, "w") as f:
        json.dump([_op_json(o) for o in history.ops], f)
    run(net.client, "final", {"ops_file": ops_file, "entry": victim, "out": final_out})
    with open(final_out) as f:
        rows = json.load(f)
    finals = {int(k): _op_from(r) for k, r in rows.items()}
    history.extend(finals.values())
    final = {o.key: o for o in history.ops if o.client == -1}
    verify("R=3: a leader cut off from the other two", history, cfg, cfg.nodes[victim].address,
           clients=PART_CLIENTS, min_ops=MIN_OPS, final=final)
    copies_out = str(tmp_path / "copies.json")
    run(net.client, "copies", {"out": copies_out})
    with open(copies_out) as f:
        copies = {int(g): {int(i): {int(k): bytes.fromhex(v) for k, v in c.items()}
                           for i, c in r.items()} for g, r in json.load(f).items()}
    assert_replicas_agree(cfg, final, copies)
