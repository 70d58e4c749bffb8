"""Tests for chordctl.core.ring: ids, ownership, placement, routing tables and hop counts."""

from __future__ import annotations

import bisect
import hashlib
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chordctl.core.ring import PLACEMENTS, ROUTINGS, Ring, RoutingEntry, key_position, node_id

# Every (bits, n) with bits <= 5, plus a few bits=6 rings, is small enough to
# check every entry node against every position.
SMALL_RINGS = [(m, n) for m in range(1, 6) for n in range(1, 2**m + 1)] + [
    (6, n) for n in (1, 2, 3, 5, 7, 10, 31, 63, 64)
]


def brute_owners(ids: tuple[int, ...], size: int, pos: int) -> list[int]:
    """Indices of every node that owns pos under the (X, Y] rule, read literally from the spec."""
    order = sorted(range(len(ids)), key=lambda i: ids[i])
    owners = []
    for rank, i in enumerate(order):
        y = ids[i]
        if rank == 0:
            # The lowest node: everything up to it, plus above the highest node.
            if pos <= y or pos > ids[order[-1]]:
                owners.append(i)
        elif ids[order[rank - 1]] < pos <= y:
            owners.append(i)
    return owners


def bisect_owner(ids: tuple[int, ...], pos: int) -> int:
    """Owner via a sorted search, independent of the ring's arithmetic."""
    asc = sorted(ids)
    j = bisect.bisect_left(asc, pos)
    owner_id = asc[j] if j < len(asc) else asc[0]
    return ids.index(owner_id)


# -- ids and construction ------------------------------------------------------


@pytest.mark.parametrize(
    ("bits", "n", "expected"),
    [
        (4, 3, (15, 10, 5)),
        (5, 7, (31, 27, 23, 19, 15, 11, 7)),
        (16, 4, (65535, 49151, 32767, 16383)),
        (16, 8, tuple(65535 - i * 8192 for i in range(8))),
        (3, 8, (7, 6, 5, 4, 3, 2, 1, 0)),
        (3, 1, (7,)),
    ],
)
def test_node_ids_start_at_the_top_and_step_down_evenly(bits: int, n: int,
                                                       expected: tuple[int, ...]) -> None:
    ring = Ring(bits, n)
    assert ring.ids == expected
    assert tuple(node_id(bits, n, i) for i in range(n)) == expected
    assert ring.size == 2**bits and ring.n == n and ring.bits == bits


@pytest.mark.parametrize(("bits", "n"), SMALL_RINGS + [(160, 1000), (32, 1024), (20, 3)])
def test_ids_are_distinct_descending_and_in_range(bits: int, n: int) -> None:
    ids = Ring(bits, n).ids
    assert ids[0] == 2**bits - 1
    assert all(a > b for a, b in zip(ids, ids[1:]))
    assert ids[-1] >= 0


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"bits": 3, "n": 9}, "do not fit"),
        ({"bits": 1, "n": 3}, "do not fit"),
        ({"bits": 0, "n": 1}, "bits"),
        ({"bits": -1, "n": 1}, "bits"),
        ({"bits": 4, "n": 0}, "at least one node"),
        ({"bits": 4, "n": 2, "placement": "md5"}, "placement"),
        ({"bits": 4, "n": 2, "routing": "flood"}, "routing"),
    ],
)
def test_invalid_ring_config_raises_value_error(kwargs: dict, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        Ring(**kwargs)


def test_ring_accepts_every_placement_and_routing() -> None:
    for placement in PLACEMENTS:
        for routing in ROUTINGS:
            ring = Ring(8, 5, placement, routing)
            assert (ring.placement, ring.routing) == (placement, routing)


# -- ownership -----------------------------------------------------------------


@pytest.mark.parametrize(("bits", "n"), SMALL_RINGS)
def test_every_position_has_one_owner(bits: int, n: int) -> None:
    ring = Ring(bits, n)
    for pos in range(ring.size):
        owners = brute_owners(ring.ids, ring.size, pos)
        assert len(owners) == 1, (pos, owners)
        assert ring.owner_of_position(pos) == owners[0]
        assert [i for i in range(n) if ring.owner_of_position(pos) == i] == owners


@pytest.mark.parametrize(("bits", "n"), [(4, 3), (5, 7), (16, 4), (16, 8), (3, 8), (3, 1), (6, 5), (12, 7)])
def test_arc_boundary_positions_have_expected_owner(bits: int, n: int) -> None:
    ring = Ring(bits, n)
    lowest = n - 1
    for i in range(n):
        low, high = ring.arc(i)
        assert high == ring.ids[i]
        assert low == ring.ids[ring.predecessor(i)]
        assert ring.owner_of_position(high) == i
        if n > 1:
            assert ring.owner_of_position((low + 1) % ring.size) == i
            assert ring.owner_of_position(low) == ring.predecessor(i)
    # 0 and the top position belong to the lowest and highest node respectively
    # (the highest id is always 2**m - 1, so nothing wraps past it).
    assert ring.owner_of_position(0) == lowest
    assert ring.owner_of_position(ring.size - 1) == 0


@pytest.mark.parametrize(("bits", "n"), SMALL_RINGS + [(160, 7), (20, 1000)])
def test_arc_sizes_partition_the_ring(bits: int, n: int) -> None:
    ring = Ring(bits, n)
    assert sum(ring.arc_size(i) for i in range(n)) == ring.size
    if bits <= 6:
        for i in range(n):
            assert ring.arc_size(i) == sum(ring.owner_of_position(p) == i for p in range(ring.size))


def test_single_node_owns_everything() -> None:
    ring = Ring(5, 1)
    assert ring.arc(0) == (31, 31)
    assert ring.arc_size(0) == 32
    assert all(ring.owner_of_position(p) == 0 for p in range(32))


@settings(max_examples=300, deadline=None)
@given(data=st.data(), bits=st.integers(min_value=1, max_value=160))
def test_owner_matches_sorted_search_on_large_rings(data: st.DataObject, bits: int) -> None:
    n = data.draw(st.integers(min_value=1, max_value=min(2**bits, 300)))
    pos = data.draw(st.integers(min_value=0, max_value=2**bits - 1))
    ring = Ring(bits, n)
    assert ring.owner_of_position(pos) == bisect_owner(ring.ids, pos)


# -- placement -----------------------------------------------------------------


@pytest.mark.parametrize("key", [0, 1, 15, 16, 17, 255, 256, 10**6, 2**64 + 3, 10**40 + 7])
@pytest.mark.parametrize("bits", [4, 8, 20, 160])
def test_direct_placement_is_key_mod_ring_size(key: int, bits: int) -> None:
    ring = Ring(bits, 3, "direct")
    assert ring.position(key) == key % 2**bits == key_position(key, bits, "direct")


@pytest.mark.parametrize("key", [0, 1, 42, 999_999, 2**70, -5])
@pytest.mark.parametrize("bits", [4, 16, 32, 160])
def test_hash_placement_is_sha1_of_decimal_key(key: int, bits: int) -> None:
    expected = int(hashlib.sha1(str(key).encode()).hexdigest(), 16) % 2**bits
    ring = Ring(bits, 3, "hash")
    assert ring.position(key) == expected == key_position(key, bits, "hash")


def test_owner_is_owner_of_key_position() -> None:
    for placement in PLACEMENTS:
        ring = Ring(10, 7, placement)
        for key in range(0, 5000, 37):
            assert ring.owner(key) == ring.owner_of_position(key_position(key, 10, placement))


@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize(("m", "n"), [(m, n) for (m, n) in SMALL_RINGS if m <= 4] + [(16, 4)])
def test_key_test_agrees_with_owner_for_every_node(placement: str, m: int, n: int) -> None:
    """The dispatcher's fast ownership test is the (X, Y] rule, wrap-around included."""
    ring = Ring(m, n, placement)
    keys = list(range(3 * 2**m)) if m <= 4 else list(range(0, 3 * 2**m, 97))
    keys += [2**64 + 3, 10**40 + 7]
    for i in range(n):
        mine = ring.key_test(i)
        assert [mine(k) for k in keys] == [ring.owner(k) == i for k in keys]


def test_unknown_placement_in_key_position_raises() -> None:
    with pytest.raises(ValueError, match="placement"):
        key_position(1, 8, "md5")


# -- neighbours and distances ---------------------------------------------------


@pytest.mark.parametrize(("bits", "n"), [(4, 3), (5, 7), (3, 8), (3, 1), (8, 2)])
def test_successor_is_next_higher_id_and_predecessor_next_lower(bits: int, n: int) -> None:
    ring = Ring(bits, n)
    by_id = sorted(range(n), key=lambda i: ring.ids[i])
    for rank, i in enumerate(by_id):
        assert ring.successor(i) == by_id[(rank + 1) % n]
        assert ring.predecessor(i) == by_id[(rank - 1) % n]
        assert ring.predecessor(ring.successor(i)) == i


def ring_distance(size: int, a: int, b: int) -> int:
    """Positions between a and b, whichever way round is shorter."""
    return min((b - a) % size, (a - b) % size)


# -- routing tables ------------------------------------------------------------


@pytest.mark.parametrize(("bits", "n"), [(4, 3), (5, 7), (6, 64), (8, 10), (20, 129), (20, 1000), (160, 50)])
def test_fingers_table_has_neighbours_and_log_size(bits: int, n: int) -> None:
    ring = Ring(bits, n, routing="fingers")
    bound = min(2 * bits + 2, 2 * math.ceil(math.log2(n)) + 2)
    for i in range(n):
        table = ring.routing_table(i)
        indices = [e.index for e in table]
        assert len(table) <= bound
        assert len(set(indices)) == len(indices)
        assert i not in indices
        assert ring.predecessor(i) in indices and ring.successor(i) in indices
        assert table[0] == RoutingEntry("predecessor", ring.predecessor(i))


@pytest.mark.parametrize(("bits", "n"), [(4, 3), (5, 7), (5, 32), (6, 10), (7, 100)])
def test_finger_entries_match_their_definition(bits: int, n: int) -> None:
    ring = Ring(bits, n)
    size = ring.size
    for i in range(n):
        expected: dict[int, str] = {}
        candidates = [("predecessor", ring.predecessor(i)), ("successor", ring.successor(i))]
        for k in range(bits):
            candidates.append((f"finger+{k}", bisect_owner(ring.ids, (ring.ids[i] + 2**k) % size)))
        for k in range(bits):
            target = (ring.ids[i] - 2**k) % size
            at_or_below = [j for j in range(n) if ring.ids[j] <= target]
            # Nothing at or below: wrap to the highest id.
            candidates.append(
                (f"finger-{k}", max(at_or_below, key=lambda j: ring.ids[j]) if at_or_below else 0)
            )
        for role, index in candidates:
            if index != i and index not in expected:
                expected[index] = role
        assert ring.routing_table(i) == tuple(RoutingEntry(r, j) for j, r in expected.items())


@pytest.mark.parametrize(("bits", "n"), [(4, 3), (5, 7), (20, 1000), (3, 8)])
def test_neighbors_table_is_exactly_predecessor_and_successor(bits: int, n: int) -> None:
    ring = Ring(bits, n, routing="neighbors")
    for i in range(n):
        assert ring.routing_table(i) == (
            RoutingEntry("predecessor", ring.predecessor(i)),
            RoutingEntry("successor", ring.successor(i)),
        )


@pytest.mark.parametrize("routing", ROUTINGS)
def test_single_node_ring_has_empty_table_and_routes_to_itself(routing: str) -> None:
    ring = Ring(8, 1, routing=routing)
    assert ring.routing_table(0) == ()
    assert ring.route(0, 12345) == [0]


@pytest.mark.parametrize("routing", ROUTINGS)
def test_two_node_ring_has_the_other_node_once(routing: str) -> None:
    ring = Ring(4, 2, routing=routing)
    assert ring.ids == (15, 7)
    assert ring.routing_table(0) == (RoutingEntry("predecessor", 1),)
    assert ring.routing_table(1) == (RoutingEntry("predecessor", 0),)
    assert ring.route(0, 3) == [0, 1]
    assert ring.route(1, 3) == [1]
    assert ring.route(1, 12) == [1, 0]


def test_routing_table_is_cached_and_rejects_bad_index() -> None:
    ring = Ring(16, 8)
    assert ring.routing_table(3) is ring.routing_table(3)
    with pytest.raises(IndexError):
        ring.routing_table(8)
    with pytest.raises(IndexError):
        ring.routing_table(-1)


# -- next hop and routes -------------------------------------------------------


@pytest.mark.parametrize("routing", ROUTINGS)
@pytest.mark.parametrize(("bits", "n"), SMALL_RINGS)
def test_next_hop_shrinks_distance_and_route_reaches_owner(bits: int, n: int, routing: str) -> None:
    ring = Ring(bits, n, routing=routing)
    ids = ring.ids
    for pos in range(ring.size):
        owner = ring.owner_of_position(pos)
        for entry in range(n):
            path = ring.route(entry, pos)
            assert path[0] == entry and path[-1] == owner
            assert owner not in path[:-1]
            for here, there in zip(path, path[1:]):
                assert there == ring.next_hop(here, pos)
                assert there in {e.index for e in ring.routing_table(here)}
                assert ring_distance(ring.size, ids[there], ids[owner]) < \
                    ring_distance(ring.size, ids[here], ids[owner])


def test_next_hop_from_owner_raises() -> None:
    ring = Ring(4, 3)
    with pytest.raises(ValueError, match="owns"):
        ring.next_hop(0, 15)


def test_route_on_huge_ring_with_hash_placement_reaches_owner() -> None:
    ring = Ring(160, 1000, "hash")
    rng = random.Random(7)
    for _ in range(200):
        key = rng.randrange(10**12)
        path = ring.route(rng.randrange(1000), key)
        assert path[-1] == ring.owner(key)
        assert len(path) - 1 <= 2 * math.log2(1000)


def test_path_length_is_logarithmic_with_fingers_and_linear_with_neighbors() -> None:
    bits = 20
    rng = random.Random(20240501)
    rows = []
    for exp in range(3, 11):
        n = 2**exp
        fingers = Ring(bits, n, routing="fingers")
        neighbors = Ring(bits, n, routing="neighbors")
        # Entry nodes cycle through every node so each one's table is exercised.
        finger_hops = [
            len(fingers.route(s % n, rng.randrange(2**bits))) - 1 for s in range(max(n, 1500))
        ]
        neighbor_hops = [
            len(neighbors.route(s % n, rng.randrange(2**bits))) - 1 for s in range(max(n, 600))
        ]
        mean_f = sum(finger_hops) / len(finger_hops)
        mean_n = sum(neighbor_hops) / len(neighbor_hops)
        rows.append((n, mean_f, max(finger_hops), mean_n, 0.5 * math.log2(n), n / 4))
    print()
    print(f"{'N':>6} {'mean fingers':>13} {'max fingers':>12} {'mean neighbors':>15} {'0.5*log2 N':>11} {'N/4':>7}")
    for n, mean_f, max_f, mean_n, half_log, quarter in rows:
        print(f"{n:>6} {mean_f:>13.3f} {max_f:>12} {mean_n:>15.2f} {half_log:>11.2f} {quarter:>7.1f}")
    for n, mean_f, _max_f, mean_n, half_log, quarter in rows:
        assert mean_f <= half_log, (n, mean_f)
        assert abs(mean_n - quarter) <= 0.2 * quarter, (n, mean_n)


# -- replica sets (ring.replicas) ----------------------------------------------

@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
def test_replica_sets_are_the_owner_then_its_successors(n):
    ring = Ring(8, n)
    for r in range(1, n + 1):
        for i in range(n):
            reps = ring.replicas(i, r)
            assert reps[0] == i and len(set(reps)) == r
            for a, b in zip(reps, reps[1:]):
                assert b == ring.successor(a)


@pytest.mark.parametrize("n,r", [(3, 3), (5, 3), (5, 5), (8, 3), (4, 2)])
def test_groups_of_a_node_are_exactly_the_arcs_it_replicates(n, r):
    ring = Ring(8, n)
    for i in range(n):
        mine = ring.groups_of(i, r)
        assert mine[0] == i and len(mine) == r
        assert set(mine) == {g for g in range(n) if i in ring.replicas(g, r)}


@pytest.mark.parametrize("r", [0, 4, -1])
def test_a_replica_count_outside_one_to_n_is_refused(r):
    with pytest.raises(ValueError, match="ring.replicas"):
        Ring(8, 3).replicas(0, r)
