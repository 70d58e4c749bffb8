"""Real 4- and 8-node rings: ownership, traced routes, ordering, batches.

Every test runs against a ring of real `chordctl node serve` processes and
checks what the nodes do against the pure model in chordctl.core.ring: each
reply comes from Ring.owner(key), each key lives only on its owner, and a
traced request visits exactly Ring.route(entry, key).
"""

from __future__ import annotations

import collections
import concurrent.futures

import pytest

from chordctl.client import Client, Result
from chordctl.core.ring import Ring
from chordctl.errors import AlreadyExistsError, ChordError, NotFoundError
from conftest import CLI, Cluster, write_config

BITS = 16
SIZE = 1 << BITS
HUGE = 1 << 200     # a key far above 2^m
REPLY_TIMEOUT = 30  # seconds a test waits for one future; the client deadline is shorter

CONFIGS = {
    "4-direct-fingers": dict(n=4, placement="direct", routing="fingers"),
    "8-direct-fingers": dict(n=8, placement="direct", routing="fingers"),
    "8-hash-fingers": dict(n=8, placement="hash", routing="fingers"),
    "4-direct-neighbors": dict(n=4, placement="direct", routing="neighbors"),
}

# Key families: each test uses its own salt so the tests sharing one ring never
# touch each other's keys (direct keys are shifted by salt * 2^m, which keeps
# their ring position; hash keys are searched in a salt-specific range).
SALT_CRUD, SALT_STATUS, SALT_TRACE, SALT_ORDER, SALT_BATCH = 0, 10, 20, 30, 40


def start_ring(directory, n: int, **options) -> Cluster:
    """A started ring whose every address is answered by the process this test started.

    write_config's ports are free when chosen, not when the nodes bind them: a
    test running in parallel can take one in between, and then the health
    check of our address is answered by *its* node while ours has exited.
    Such a start is thrown away and retried on fresh ports.
    """
    problems = []
    for attempt in range(3):
        path = write_config(directory, n, name=f"ring-{attempt}.yaml", **options)
        cluster = Cluster(path)
        try:
            cluster.start()
            for node in cluster.nodes:
                with Client(cluster.config, target=node.address) as c:
                    pid = c.status().pid
                if pid != node.proc.pid or not node.alive:
                    raise AssertionError(f"{node.address} is answered by pid {pid}, not by "
                                         f"node {node.index} (pid {node.proc.pid}):\n{node.log()}")
            return cluster
        except (AssertionError, ChordError) as e:
            problems.append(str(e))
            cluster.stop()
    raise AssertionError("the ring did not start:\n" + "\n".join(problems))


@pytest.fixture(scope="module", params=list(CONFIGS))
def ring_cluster_module(request, tmp_path_factory):
    """One running ring per configuration, shared by the tests of this module."""
    opts = CONFIGS[request.param]
    cluster = start_ring(tmp_path_factory.mktemp(request.param), opts["n"], bits=BITS,
                         placement=opts["placement"], routing=opts["routing"], timeout=10)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def ring_cluster(ring_cluster_module):
    """The module's ring, checked to be whole before each test (with the logs if not)."""
    for node in ring_cluster_module.nodes:
        assert node.alive, f"node {node.index} died before this test:\n{node.log()}"
    return ring_cluster_module


def ring_of(cluster: Cluster) -> Ring:
    cfg = cluster.config
    return Ring(cfg.ring.bits, len(cfg.nodes), cfg.ring.placement, cfg.ring.routing)


def _hash_keys_at(ring: Ring, positions: set[int], salt: int) -> list[int]:
    """For each wanted ring position, a key that SHA-1 places there (bounded search)."""
    found: dict[int, int] = {}
    start = salt * 10**8
    for k in range(start, start + 5_000_000):
        pos = ring.position(k)
        if pos in positions and pos not in found:
            found[pos] = k
            if len(found) == len(positions):
                break
    assert len(found) == len(positions), f"no key found for positions {positions - set(found)}"
    return [found[p] for p in sorted(positions)]


def boundary_keys(ring: Ring, salt: int) -> list[int]:
    """Keys at both ends of every arc (X+1 and Y of (X, Y]), 0 and 2^m-1, and a huge key."""
    if ring.placement == "direct":
        keys = []
        for i in range(ring.n):
            low, high = ring.arc(i)
            # low + 1 of the wrap-around arc is 2^m itself: a key above the ring
            # whose position is 0.
            keys += [low + 1 + salt * SIZE, high + salt * SIZE]
    else:
        wanted = set()
        for i in range(ring.n):
            low, high = ring.arc(i)
            wanted |= {(low + 1) % SIZE, high}
        keys = _hash_keys_at(ring, wanted, salt)
    keys += [salt * SIZE, salt * SIZE + SIZE - 1, HUGE + salt * SIZE + 12345]
    return list(dict.fromkeys(keys))


def clients(cluster: Cluster) -> list[Client]:
    return [Client(cluster.config, target=cluster.address(i)) for i in range(len(cluster.nodes))]


def run_all(client: Client, ops: list[tuple[str, int, bytes | None]],
            trace: bool = False) -> list[Result | ChordError]:
    """Send every op without waiting (they are for distinct keys), then collect the outcomes."""
    futures = []
    for op, key, value in ops:
        f: concurrent.futures.Future = concurrent.futures.Future()
        client.submit(op, str(key), value, trace=trace, callback=f.set_result)
        futures.append(f)
    return [f.result(timeout=REPLY_TIMEOUT) for f in futures]


def owner_label(ring: Ring, key: int) -> str:
    o = ring.owner(key)
    return f"node {o} (id {ring.ids[o]})"


def ids_of(ring: Ring, route: list[int]) -> tuple[str, ...]:
    return tuple(str(ring.ids[i]) for i in route)


def test_crud_through_any_node_is_served_by_the_owner(ring_cluster):
    ring = ring_of(ring_cluster)
    keys = boundary_keys(ring, SALT_CRUD)
    # Every arc contributes both of its ends.
    assert {ring.owner(k) for k in keys} == set(range(ring.n))
    steps = [  # (op, value, expected value or error class)
        ("create", b"one", None),
        ("create", b"again", AlreadyExistsError),
        ("read", None, b"one"),
        ("update", b"two", None),
        ("read", None, b"two"),
        ("delete", None, None),
        ("read", None, NotFoundError),
        ("update", b"three", NotFoundError),
        ("delete", None, NotFoundError),
    ]
    for entry, client in enumerate(clients(ring_cluster)):
        with client:
            for op, value, expected in steps:
                outcomes = run_all(client, [(op, k, value) for k in keys])
                for key, out in zip(keys, outcomes):
                    where = f"{op} {key} through node {entry}"
                    owner = ring.owner(key)
                    if isinstance(expected, type):
                        assert isinstance(out, expected), f"{where}: {out!r}"
                        assert f"owner: {owner_label(ring, key)}" in str(out), where
                        continue
                    assert isinstance(out, Result), f"{where}: {out!r}"
                    assert (out.node_index, out.node_id) == (owner, str(ring.ids[owner])), where
                    if op == "read":
                        assert out.value == expected, where


def test_each_key_is_stored_only_on_its_owner(ring_cluster):
    ring = ring_of(ring_cluster)
    keys = boundary_keys(ring, SALT_STATUS)
    cs = clients(ring_cluster)
    try:
        before = [c.status().keys for c in cs]
        for i, key in enumerate(keys):
            # Spread the entry points so most creates are forwarded.
            cs[i % len(cs)].create(str(key), b"x")
        after = [c.status().keys for c in cs]
    finally:
        for c in cs:
            c.close()
    expected = collections.Counter(ring.owner(k) for k in keys)
    assert [a - b for a, b in zip(after, before)] == [expected[i] for i in range(ring.n)]


def test_traced_route_matches_the_simulated_route(ring_cluster):
    ring = ring_of(ring_cluster)
    keys = boundary_keys(ring, SALT_TRACE)
    cs = clients(ring_cluster)
    try:
        created = run_all(cs[0], [("create", k, f"v{k}".encode()) for k in keys])
        assert all(isinstance(r, Result) for r in created), created
        for entry, c in enumerate(cs):
            for key, out in zip(keys, run_all(c, [("read", k, None) for k in keys], trace=True)):
                assert isinstance(out, Result), out
                assert out.route == ids_of(ring, ring.route(entry, key)), \
                    f"read {key} through node {entry}"
                assert out.value == f"v{key}".encode()
    finally:
        for c in cs:
            c.close()

    # The CLI prints the same route: on stderr, so that stdout stays the bare value.
    run = CLI(ring_cluster.config_path)
    for entry in range(ring.n):
        key = max(keys, key=lambda k: len(ring.route(entry, k)))
        route = ring.route(entry, key)
        r = run("kv", "read", str(key), "--trace", target=ring_cluster.address(entry))
        assert r.exit_code == 0, r.output
        assert r.stdout == f"v{key}"          # the exact bytes: stdout is not a terminal
        hops = len(route) - 1
        assert f"route: {' -> '.join(ids_of(ring, route))} ({hops} hop" in r.stderr, r.stderr


def test_read_then_update_through_a_distant_node_sees_every_update(ring_cluster):
    ring = ring_of(ring_cluster)
    keys = boundary_keys(ring, SALT_ORDER)
    # The (entry, key) pair with the longest route: 2 hops where the ring allows.
    entry, key = max(((e, k) for e in range(ring.n) for k in keys),
                     key=lambda ek: len(ring.route(*ek)))
    hops = len(ring.route(entry, key)) - 1
    assert hops >= 1
    if ring.n == 8 or ring.routing == "neighbors":
        assert hops >= 2
    with Client(ring_cluster.config, target=ring_cluster.address(entry)) as c:
        c.create(str(key), b"1")
        for _ in range(300):
            r = c.read(str(key))
            assert r.node_index == ring.owner(key)
            c.update(str(key), str(int(r.value) + 1).encode())
        final = c.read(str(key), trace=True)
    assert final.value == b"301"
    assert len(final.route) == hops + 1


def test_batch_through_a_non_owner_answers_each_op_in_order_from_its_owner(ring_cluster):
    ring = ring_of(ring_cluster)
    keys = boundary_keys(ring, SALT_BATCH)
    entry = 1
    # Every arc has two keys in the family: one to create, one created beforehand.
    by_owner: dict[int, list[int]] = collections.defaultdict(list)
    for k in keys:
        by_owner[ring.owner(k)].append(k)
    assert len(by_owner) == ring.n
    fresh = [ks[0] for ks in by_owner.values()]
    existing = [ks[1] for ks in by_owner.values()]
    missing = [ks[0] + 7 * SIZE for ks in by_owner.values()]  # never created
    with Client(ring_cluster.config, target=ring_cluster.address(entry)) as c:
        for k in existing:
            c.create(str(k), f"old{k}".encode())
        ops: list[tuple[str, str, bytes | None]] = []
        for f, e, m in zip(fresh, existing, missing):
            ops += [("create", str(f), f"new{f}".encode()), ("read", str(e), None),
                    ("delete", str(m), None), ("create", str(e), b"dup"),
                    ("update", str(m), b"nope")]
        results = c.batch(ops)
        assert len(results) == len(ops)
        for (op, key, _), res in zip(ops, results):
            k = int(key)
            where = f"batch {op} {key} through node {entry}"
            if k in missing:
                assert isinstance(res, NotFoundError), f"{where}: {res!r}"
                assert f"owner: {owner_label(ring, k)}" in str(res), where
            elif op == "create" and k in existing:
                assert isinstance(res, AlreadyExistsError), f"{where}: {res!r}"
                assert f"owner: {owner_label(ring, k)}" in str(res), where
            else:
                assert isinstance(res, Result), f"{where}: {res!r}"
                assert (res.op, res.key) == (op, key)
                assert res.node_index == ring.owner(k), where
                if op == "read":
                    assert res.value == f"old{k}".encode()
        # The batch's creates really landed on their owners.
        again = c.batch([("read", str(f), None) for f in fresh])
        assert [r.value for r in again] == [f"new{f}".encode() for f in fresh]
        assert [r.node_index for r in again] == [ring.owner(f) for f in fresh]
    # The entry node forwarded most of it: it owns only its own arc.
    assert sum(ring.owner(int(k)) != entry for _, k, _ in ops) > len(ops) // 2

