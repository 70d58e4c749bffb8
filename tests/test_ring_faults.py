"""Faults on a real ring: dead, paused and restarted nodes, the hop limit.

A request that needs an unreachable node must fail with exit 3 within the
client's deadline and name that node; everything that does not need it must
keep working; nothing hangs.
"""

from __future__ import annotations

import json
import signal
import time

import pytest

from chordctl.client import Client
from chordctl.core.ring import Ring
from chordctl.errors import UnavailableError
from conftest import Cluster, run_chordctl
from test_ring_cluster import start_ring

BITS = 16
SIZE = 1 << BITS
DEADLINE = 3          # client.timeout of these configs, seconds
CLI_TIMEOUT = 60      # a hung CLI fails the test instead of the whole run
OUTAGE = 1.5          # seconds a killed node stays down under traffic


@pytest.fixture(scope="module")
def ring4(tmp_path_factory):
    """A 4-node neighbors ring (so routes pass *through* nodes), one key per arc."""
    cluster = start_ring(tmp_path_factory.mktemp("faults"), 4, bits=BITS, routing="neighbors",
                         timeout=DEADLINE)
    try:
        ring = Ring(BITS, 4, "direct", "neighbors")
        with Client(cluster.config, target=cluster.address(0)) as c:
            for i in range(4):
                c.create(str(key_of(ring, i)), f"value{i}".encode())
        yield cluster
    finally:
        cluster.stop()


def key_of(ring: Ring, owner: int) -> int:
    """A key in the middle of *owner*'s arc."""
    low, high = ring.arc(owner)
    return (low + ((high - low) % ring.size) // 2 + 1) % ring.size


def ring_of(cluster: Cluster) -> Ring:
    cfg = cluster.config
    return Ring(cfg.ring.bits, len(cfg.nodes), cfg.ring.placement, cfg.ring.routing)


def transit(ring: Ring) -> tuple[int, int, int]:
    """(entry, owner, via): a 2-hop route entry -> via -> owner."""
    for entry in range(ring.n):
        for owner in range(ring.n):
            route = ring.route(entry, key_of(ring, owner))
            if len(route) == 3:
                return entry, owner, route[1]
    raise AssertionError(f"{ring} has no 2-hop route")


def chordctl(cluster: Cluster, entry: int, *args: str):
    r = run_chordctl("-c", cluster.config_path, "--target", cluster.address(entry), *args,
                     timeout=CLI_TIMEOUT)
    return r.returncode, r.stdout.decode(), r.stderr.decode()


def names_node(message: str, cluster: Cluster, i: int) -> bool:
    return f"node {i} " in message and cluster.address(i) in message


def assert_serves_everything_but(cluster: Cluster, down: int) -> None:
    """Every request whose route avoids *down* still succeeds, from every other entry."""
    ring = ring_of(cluster)
    checked = 0
    for entry in range(ring.n):
        if entry == down:
            continue
        with Client(cluster.config, target=cluster.address(entry)) as c:
            for owner in range(ring.n):
                key = key_of(ring, owner)
                if down in ring.route(entry, key):
                    continue
                r = c.read(str(key))
                assert (r.value, r.node_index) == (f"value{owner}".encode(), owner)
                checked += 1
    assert checked >= ring.n  # the check covered something


def test_request_routed_through_a_killed_node_fails_naming_it(ring4):
    ring = ring_of(ring4)
    entry, owner, via = transit(ring)
    ring4.nodes[via].kill()
    try:
        code, _, err = chordctl(ring4, entry, "kv", "read", str(key_of(ring, owner)))
        assert code == 3, err
        assert names_node(err, ring4, via), err

        code, _, err = chordctl(ring4, entry, "kv", "create", str(key_of(ring, owner) + SIZE),
                                "x")
        assert code == 3, err
        assert names_node(err, ring4, via), err

        # A key the dead node owns, asked from a neighbour of it.
        neighbour = ring.successor(via)
        code, _, err = chordctl(ring4, neighbour, "kv", "read", str(key_of(ring, via)))
        assert code == 3, err
        assert names_node(err, ring4, via), err

        assert_serves_everything_but(ring4, via)
    finally:
        ring4.nodes[via].start()
    # The create that failed on the way did not land anywhere.
    with Client(ring4.config, target=ring4.address(owner)) as c:
        assert c.status().keys == 1


def test_owner_killed_two_hops_away_fails_naming_the_owner(ring4):
    # The failure is detected on the middle node and has to travel back
    # through a Batch reply; it must still name the dead owner, not the middle.
    ring = ring_of(ring4)
    entry, owner, via = transit(ring)
    ring4.nodes[owner].kill()
    try:
        code, _, err = chordctl(ring4, entry, "kv", "update", str(key_of(ring, owner)), "x")
        assert code == 3, err
        assert names_node(err, ring4, owner), err
        assert f"node {via} " in err, err  # the node that could not reach it
    finally:
        ring4.nodes[owner].start()
    with Client(ring4.config, target=ring4.address(entry)) as c:
        assert c.read(str(key_of(ring, owner))).value == f"value{owner}".encode()


def test_entry_node_killed_fails_naming_its_address(ring4):
    ring = ring_of(ring4)
    ring4.nodes[2].kill()
    try:
        code, _, err = chordctl(ring4, 2, "kv", "read", str(key_of(ring, 0)))
        assert code == 3, err
        assert ring4.address(2) in err, err
    finally:
        ring4.nodes[2].start()


def test_ring_show_marks_a_killed_node_down_and_the_others_up(ring4):
    down = 1
    ring4.nodes[down].kill()
    try:
        code, out, err = chordctl(ring4, 0, "ring", "show")
        assert code == 3, err
        rows = {line.split()[0]: line for line in out.splitlines()
                if line.split() and line.split()[0].isdigit()}
        assert sorted(rows) == ["0", "1", "2", "3"], out
        for i, line in rows.items():
            assert ring4.address(int(i)) in line
            state = "down" if int(i) == down else "up"
            assert f" {state} " in line, line
        assert "1 of 4 node(s) not up" in err

        code, out, err = chordctl(ring4, 0, "-o", "json", "ring", "show")
        assert code == 3, err
        docs = json.loads(out)
        assert [(d["index"], d["up"]) for d in docs] == [(i, i != down) for i in range(4)]
        assert docs[down]["address"] == ring4.address(down) and docs[down]["error"]
        assert all(d["keys"] == 1 for d in docs if d["up"])
    finally:
        ring4.nodes[down].start()


def test_restarted_node_serves_and_forwards_again(ring4):
    ring = ring_of(ring4)
    entry, owner, via = transit(ring)
    key = key_of(ring, owner)
    ring4.nodes[via].kill()
    code, _, err = chordctl(ring4, entry, "kv", "read", str(key))
    assert code == 3, err
    ring4.nodes[via].start()  # waits until the node reports SERVING

    code, out, err = chordctl(ring4, entry, "kv", "read", str(key), "--trace")
    assert code == 0, err
    assert out == f"value{owner}"
    ids = [str(ring.ids[i]) for i in (entry, via, owner)]
    assert " -> ".join(ids) in err
    # Its own key survived the SIGKILL, and it takes new work as entry and owner.
    with Client(ring4.config, target=ring4.address(via)) as c:
        assert c.read(str(key_of(ring, via))).value == f"value{via}".encode()
        assert c.read(str(key)).node_index == owner
    with Client(ring4.config, target=ring4.address(entry)) as c:
        new = key_of(ring, via) + 5 * SIZE
        assert c.create(str(new), b"after").node_index == via
        assert c.delete(str(new)).node_index == via


def test_node_restarted_after_an_outage_is_reachable_at_once(ring4):
    # While a node is down its neighbours' channels to it sit in gRPC's
    # reconnect backoff (up to 1 s); the first request after it is back must
    # not fail on that stale state. Alternate the dead node between the middle
    # of the route (the entry's channel) and the owner (the middle's channel).
    ring = ring_of(ring4)
    entry, owner, via = transit(ring)
    key = str(key_of(ring, owner))
    with Client(ring4.config, target=ring4.address(entry)) as c:
        for victim in (via, owner, via, owner):
            ring4.nodes[victim].kill()
            # Clients keep trying during the outage, long enough for the
            # backoff to grow to its cap.
            end, tries = time.monotonic() + OUTAGE, 0
            while time.monotonic() < end and tries < 10_000:
                with pytest.raises(UnavailableError):
                    c.read(key)
                tries += 1
            ring4.nodes[victim].start()  # waits until the node reports SERVING
            r = c.read(key)
            assert (r.value, r.node_index) == (f"value{owner}".encode(), owner)


def test_request_through_a_paused_node_fails_within_the_deadline(ring4):
    ring = ring_of(ring4)
    entry, owner, via = transit(ring)
    key = key_of(ring, owner)
    paused = ring4.nodes[via]
    paused.kill(signal.SIGSTOP)
    try:
        code, _, err = chordctl(ring4, entry, "kv", "read", str(key))
        assert code == 3, err
        assert names_node(err, ring4, via), err
        # The paused node's own key: its owner never answers.
        code, _, err = chordctl(ring4, ring.successor(via), "kv", "read", str(key_of(ring, via)))
        assert code == 3, err
        assert names_node(err, ring4, via), err
    finally:
        paused.kill(signal.SIGCONT)
    assert paused.alive
    with Client(ring4.config, target=ring4.address(entry)) as c:
        r = c.read(str(key), trace=True)
    assert r.value == f"value{owner}".encode()
    assert r.route == tuple(str(ring.ids[i]) for i in (entry, via, owner))


def test_hop_limit_stops_a_request_that_needs_more_hops(tmp_path, run_cli):
    cluster = start_ring(tmp_path, 8, bits=BITS, routing="neighbors", timeout=DEADLINE,
                         limits={"max_hops": 1})
    try:
        ring = ring_of(cluster)
        cli = run_cli(cluster.config_path)
        entry = 0
        for owner in range(ring.n):
            key = str(key_of(ring, owner))
            hops = len(ring.route(entry, int(key))) - 1
            r = cli("kv", "create", key, "v", target=cluster.address(entry))
            if hops <= 1:
                assert r.exit_code == 0, f"{hops} hop(s): {r.output}"
            else:
                assert r.exit_code == 3, f"{hops} hops: {r.output}"
                assert "hop limit" in r.stderr, r.stderr
        # Every key can still be reached from an entry next to its owner.
        for owner in range(ring.n):
            r = cli("kv", "create", str(key_of(ring, owner) + SIZE), "v",
                    target=cluster.address(ring.successor(owner)))
            assert r.exit_code == 0, r.output
    finally:
        cluster.stop()
