"""Ring geometry and routing for chordctl, as pure functions of (bits, n, placement, routing).

This module decides where every node sits on the 2**bits identifier ring, which
node owns a key, what each node's routing table (predecessor, successor and
fingers in both directions) contains, and which table entry a request goes to
next.  It does no I/O and holds no mutable state beyond lazily built caches,
so every node computes the same answers from the same configuration and the
whole thing can be tested exhaustively on small rings.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from chordctl.protocol import MIN_BITS, PLACEMENTS, ROUTINGS


def node_id(bits: int, n: int, i: int) -> int:
    """Id of the i-th configured node: the first at 2**bits - 1, each next one 2**bits // n lower."""
    size = 1 << bits
    return size - 1 - i * (size // n)


def key_position(key: int, bits: int, placement: str) -> int:
    """Ring position of a key under the given placement rule."""
    size = 1 << bits
    if placement == "direct":
        return key % size
    if placement == "hash":
        digest = hashlib.sha1(str(key).encode()).digest()
        return int.from_bytes(digest, "big") % size
    raise ValueError(f"unknown placement {placement!r}; expected one of {PLACEMENTS}")


@dataclass(frozen=True)
class RoutingEntry:
    """One routing-table entry: why the node is in the table, and which node it is."""

    role: str  # "predecessor", "successor", "finger+k" or "finger-k"
    index: int  # node index in config order


class Ring:
    """Built once from (bits, n, placement, routing); everything precomputed where cheap."""

    __slots__ = (
        "bits", "size", "n", "placement", "routing", "ids", "_step", "_tables", "_hop_candidates",
    )

    def __init__(self, bits: int, n: int, placement: str = "direct", routing: str = "fingers") -> None:
        if not isinstance(bits, int) or isinstance(bits, bool) or bits < MIN_BITS:
            raise ValueError(f"ring.bits must be an integer >= {MIN_BITS}, got {bits!r}")
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"the ring needs at least one node, got n={n!r}")
        if n > (1 << bits):
            raise ValueError(
                f"{n} nodes do not fit on a ring of 2**{bits} = {1 << bits} positions "
                "(node ids would collide)"
            )
        if placement not in PLACEMENTS:
            raise ValueError(f"unknown ring.placement {placement!r}; expected one of {PLACEMENTS}")
        if routing not in ROUTINGS:
            raise ValueError(f"unknown ring.routing {routing!r}; expected one of {ROUTINGS}")
        self.bits = bits
        self.size = 1 << bits
        self.n = n
        self.placement = placement
        self.routing = routing
        # Ids descend evenly from size-1, so ownership is plain division by the
        # step rather than a search; the step is floor(size/n) even when n does
        # not divide size, which leaves the remainder in the lowest node's arc.
        self._step = self.size // n
        self.ids: tuple[int, ...] = tuple(self.size - 1 - i * self._step for i in range(n))
        self._tables: dict[int, tuple[RoutingEntry, ...]] = {}
        # (index, id) pairs per node so next_hop does not re-index ids each hop.
        self._hop_candidates: dict[int, tuple[tuple[int, int], ...]] = {}

    @classmethod
    def from_config(cls, config) -> "Ring":
        """The ring of a config.Config: its ring section and its nodes."""
        ring = config.ring
        return cls(ring.bits, len(config.nodes), ring.placement, ring.routing)

    def __repr__(self) -> str:
        return (
            f"Ring(bits={self.bits}, n={self.n}, placement={self.placement!r}, "
            f"routing={self.routing!r})"
        )

    # -- placement and ownership -------------------------------------------

    def position(self, key: int) -> int:
        """Ring position of a key under this ring's placement."""
        if self.placement == "direct":
            return key % self.size
        return key_position(key, self.bits, self.placement)

    def owner_of_position(self, pos: int) -> int:
        """Index of the node owning a ring position."""
        # The owner is the node with the smallest id >= pos, i.e. the largest i
        # with size-1-i*step >= pos.  Because the highest id is size-1, nothing
        # lies above it, so the wrap-around arc reduces to clamping at n-1.
        i = (self.size - 1 - pos % self.size) // self._step
        return i if i < self.n else self.n - 1

    def owner(self, key: int) -> int:
        """Index of the node owning a key."""
        return self.owner_of_position(self.position(key))

    def key_test(self, i: int) -> Callable[[int], bool]:
        """A fast ``key -> whether node i owns it`` for the dispatcher's loop."""
        low, _ = self.arc(i)
        base, span, size = low + 1, self.arc_size(i), self.size
        if self.placement == "direct":
            # pos = key mod size lies in (low, high] iff (key - low - 1) mod size < span.
            return lambda key: (key - base) % size < span
        bits, placement = self.bits, self.placement
        return lambda key: (key_position(key, bits, placement) - base) % size < span

    def arc(self, i: int) -> tuple[int, int]:
        """(low, high) such that node i owns (low, high] mod size; low == high means everything."""
        self._check_index(i)
        return self.ids[self.predecessor(i)], self.ids[i]

    def arc_size(self, i: int) -> int:
        """Number of positions node i owns."""
        low, high = self.arc(i)
        # A single node's arc (x, x] is the whole ring, not empty.
        return (high - low) % self.size or self.size

    # -- neighbours --------------------------------------------------------

    def successor(self, i: int) -> int:
        """Next node clockwise (next higher id, wrapping)."""
        return (i - 1) % self.n

    def predecessor(self, i: int) -> int:
        """Next node counter-clockwise (next lower id, wrapping)."""
        return (i + 1) % self.n

    # -- replication (ring.replicas) ----------------------------------------

    def replicas(self, i: int, r: int) -> tuple[int, ...]:
        """The replica set of node i's arc: i, then the next r-1 nodes clockwise
        (Chord's successor list). Group i of ``ring.replicas: r`` runs on these."""
        self._check_index(i)
        if not 1 <= r <= self.n:
            raise ValueError(f"ring.replicas must be between 1 and the {self.n} node(s), got {r}")
        return tuple((i - k) % self.n for k in range(r))

    def groups_of(self, i: int, r: int) -> tuple[int, ...]:
        """The arcs (group ids: their owners' indices) node i holds a replica
        of: its own first, then the r-1 arcs counter-clockwise before it."""
        self._check_index(i)
        if not 1 <= r <= self.n:
            raise ValueError(f"ring.replicas must be between 1 and the {self.n} node(s), got {r}")
        return tuple((i + k) % self.n for k in range(r))

    # -- routing -----------------------------------------------------------

    def _check_index(self, i: int) -> None:
        # Negative indices would silently wrap through tuple indexing and
        # route as a different node; fail loudly instead.
        if not 0 <= i < self.n:
            raise IndexError(f"node index {i} out of range for a ring of {self.n} nodes")

    def _at_or_before(self, pos: int) -> int:
        """Index of the node with the largest id <= pos, wrapping to the highest id."""
        d = self.size - 1 - pos
        i = -(-d // self._step)  # smallest i with size-1-i*step <= pos
        return i if i < self.n else 0

    def routing_table(self, i: int) -> tuple[RoutingEntry, ...]:
        """Node i's routing table: everything it may forward to, first role wins on duplicates."""
        table = self._tables.get(i)
        if table is not None:
            return table
        self._check_index(i)
        candidates: list[tuple[str, int]] = []
        if self.n > 1:
            candidates.append(("predecessor", self.predecessor(i)))
            candidates.append(("successor", self.successor(i)))
            if self.routing == "fingers":
                me = self.ids[i]
                size = self.size
                for k in range(self.bits):
                    candidates.append((f"finger+{k}", self.owner_of_position((me + (1 << k)) % size)))
                for k in range(self.bits):
                    candidates.append((f"finger-{k}", self._at_or_before((me - (1 << k)) % size)))
        seen: set[int] = {i}
        entries: list[RoutingEntry] = []
        for role, index in candidates:
            if index not in seen:
                seen.add(index)
                entries.append(RoutingEntry(role, index))
        table = tuple(entries)
        self._tables[i] = table
        self._hop_candidates[i] = tuple((e.index, self.ids[e.index]) for e in table)
        return table

    def next_hop(self, i: int, pos: int) -> int:
        """Routing-table entry of node i that leaves the shortest ring distance to pos's owner."""
        o = self.owner_of_position(pos)
        if o == i:
            raise ValueError(f"node {i} owns position {pos}; there is no next hop")
        candidates = self._hop_candidates.get(i)
        if candidates is None:
            self.routing_table(i)
            candidates = self._hop_candidates[i]
        target = self.ids[o]
        size = self.size
        best_key: tuple[int, int, int] | None = None
        best = -1
        for index, ident in candidates:
            cw = (target - ident) % size
            key = (min(cw, size - cw), cw, index)
            if best_key is None or key < best_key:
                best_key = key
                best = index
        return best

    def route(self, entry: int, key: int) -> list[int]:
        """Node indices a request for key visits, from entry to the owner inclusive."""
        self._check_index(entry)
        pos = self.position(key)
        owner = self.owner_of_position(pos)
        path = [entry]
        current = entry
        # Each hop strictly shrinks the distance to the owner (the neighbour on
        # the shorter side is always in the table), so more than n hops means a
        # bug, not a long route.
        while current != owner:
            if len(path) > self.n:
                raise RuntimeError(f"routing loop for key {key} from node {entry}: {path}")
            current = self.next_hop(current, pos)
            path.append(current)
        return path
