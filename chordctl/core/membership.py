"""Ring membership as a value that changes by epoch.

A ``Membership`` is what every node must agree on to route: the ring's shape
(``ring.bits``, ``ring.placement``, ``ring.routing``, ``ring.replicas``, the
number of nodes) and where each node listens. It is immutable; a change is a
new value with a higher ``epoch``. Each node process holds one ``Members``
(the current value and who to tell when it changes), and every part of the
node that needs an address, an owner or a replica set reads it there at use
(the router, the Raft exchange, the status), never a copy taken at start.

The config gives a new ring its first membership (epoch 1); after that the
node directory's ``IDENTITY`` records the current one (identity.py), and it
changes while the ring runs:

- A node started at another address than its peers know (it moved: a
  replacement on another host, another port) takes a new epoch with its own
  entry changed, and announces it to every peer (``Admin.Members``); each
  peer records it and routes there from then on, without a restart.
- A node tells its peers its membership at every start and learns theirs, so
  one that was down while another moved learns where it went.

Only a node changes its own entry (it is the one that knows where it
listens), and each entry carries the epoch it was last set at (``since``),
so two views merge entry by entry, the later setting winning: two nodes that
move at once each announce an epoch, and every node ends at the same merged
one whichever it hears first. The shape does not change live: a ring with
another number of nodes or ring.bits is another ring (``ring migrate``
offline), and a view of another shape is refused. Joining and leaving nodes
(a replica set changing one member at a time) are the next step; they will
change the shape through consensus rather than this merge, and install the
same kind of value.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Sequence

from chordctl.core.ring import Ring
from chordctl.errors import ChordError, ExitStatus
from chordctl.protocol import MAX_BITS, MIN_BITS


# What a view from the wire may hold: one change a second for a million
# years is far below the epoch's cap, and every epoch + 1 stays a uint64.
MAX_EPOCH = 1 << 48
MAX_ADDRESS = 300
MAX_NODES = 1 << 16


class MembershipError(ChordError):
    """A membership that cannot follow the current one (another ring's shape)."""

    exit_status = ExitStatus.USAGE


@dataclasses.dataclass(frozen=True)
class Membership:
    epoch: int
    bits: int
    placement: str
    routing: str
    replicas: int
    addresses: tuple[str, ...]
    since: tuple[int, ...]          # the epoch each node's address was set at
    ring: Ring = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.epoch < 1:
            raise ValueError(f"a membership epoch is at least 1, got {self.epoch}")
        if len(self.since) != len(self.addresses):
            raise ValueError("membership: one 'since' per node address")
        if any(not 1 <= s <= self.epoch for s in self.since):
            raise ValueError(f"membership: every 'since' lies in 1..{self.epoch}, got "
                             f"{list(self.since)}")
        object.__setattr__(self, "ring", Ring(self.bits, len(self.addresses),
                                              self.placement, self.routing))

    @classmethod
    def from_config(cls, config, epoch: int = 1,
                    addresses: Sequence[str] | None = None,
                    since: Sequence[int] | None = None) -> "Membership":
        """The config's membership (a new ring's first, epoch 1), or the one a
        node directory recorded (*epoch*, *addresses*, *since*) for its shape."""
        ring = config.ring
        addrs = tuple(addresses) if addresses is not None else tuple(
            n.address for n in config.nodes)
        return cls(epoch, ring.bits, ring.placement, ring.routing, ring.replicas, addrs,
                   tuple(since) if since is not None else (1,) * len(addrs))

    # -- reading -------------------------------------------------------------

    @property
    def n(self) -> int:
        return len(self.addresses)

    @property
    def shape(self) -> tuple:
        """What cannot change while the ring runs."""
        return (self.bits, self.placement, self.routing, self.replicas, self.n)

    def address(self, i: int) -> str:
        return self.addresses[i]

    def groups_of(self, i: int) -> tuple[int, ...]:
        return self.ring.groups_of(i, self.replicas)

    def replicas_of(self, arc: int) -> tuple[int, ...]:
        return self.ring.replicas(arc, self.replicas)

    def describe(self) -> str:
        return f"epoch {self.epoch}: " + ", ".join(
            f"node {i} at {a}" for i, a in enumerate(self.addresses))

    # -- changing ------------------------------------------------------------

    def moved(self, index: int, address: str) -> "Membership":
        """Node *index* listens at *address* now: the next epoch, or self when
        it already does."""
        if self.addresses[index] == address:
            return self
        return self.claim(index, address)

    def claim(self, index: int, address: str) -> "Membership":
        """Node *index* is at *address* as of the next epoch, whatever this
        view says of it (a move that must win over every view before it)."""
        epoch = self.epoch + 1
        return dataclasses.replace(
            self, epoch=epoch,
            addresses=self.addresses[:index] + (address,) + self.addresses[index + 1:],
            since=self.since[:index] + (epoch,) + self.since[index + 1:])

    def check_shape(self, other: "Membership", where: str) -> None:
        if other.shape != self.shape:
            names = ("ring.bits", "ring.placement", "ring.routing", "ring.replicas",
                     "number of nodes")
            diff = "; ".join(f"{name} is {b} there but {a} here"
                             for name, a, b in zip(names, self.shape, other.shape) if a != b)
            raise MembershipError(
                f"membership: {where} names another ring ({diff}); a running ring keeps its "
                f"shape -- start every node with one config, or move the data with "
                f"`chordctl ring migrate` with every node stopped")

    def merge(self, other: "Membership") -> "Membership":
        """The two views entry by entry, the later setting of each winning;
        epoch: the newer one's when it holds everything, else one past both.
        Commutative, so every node reaches the same value whatever it hears
        first."""
        self.check_shape(other, "a peer's membership")
        addresses, since = [], []
        for a, s, oa, os_ in zip(self.addresses, self.since, other.addresses, other.since):
            # Ties (one index claimed at two addresses at one epoch: two
            # processes for one node) break the same way everywhere.
            take_other = (os_, oa) > (s, a)
            addresses.append(oa if take_other else a)
            since.append(os_ if take_other else s)
        merged = (tuple(addresses), tuple(since))
        hi, lo = sorted((self, other), key=lambda m: (m.epoch, m.since, m.addresses),
                        reverse=True)
        if (hi.addresses, hi.since) == merged:
            return hi
        if lo.epoch == hi.epoch and (lo.addresses, lo.since) == merged:
            return lo
        # (The epoch never goes back: a value no view held gets one past both.)
        epoch = hi.epoch + 1
        return dataclasses.replace(self, epoch=epoch, addresses=merged[0], since=merged[1])


class Members:
    """A node's current Membership: read ``current`` anywhere (one attribute
    read); ``install`` from any thread; each listener is called with (old,
    new) after a change, in the installing thread."""

    def __init__(self, initial: Membership,
                 persist: Callable[[Membership], None] | None = None) -> None:
        self.current = initial
        self._lock = threading.Lock()
        self._persist = persist
        self._listeners: list[Callable[[Membership, Membership], None]] = []
        self._me: int | None = None
        self._mine = ""
        self._on_claimed: Callable[[str, Membership], None] | None = None

    def pin(self, index: int, address: str,
            on_claimed: Callable[[str, Membership], None] | None = None) -> None:
        """This process is node *index*, at *address*: a view that has it
        elsewhere does not move it (only a node moves itself). Such a view
        is answered by claiming the entry back, at an epoch past it, and
        *on_claimed* (the other address, the view) is told."""
        self._me, self._mine, self._on_claimed = index, address, on_claimed

    def unpin(self) -> None:
        """Claim nothing back any more (a node that fail-stopped: the other
        process's claim then settles the entry)."""
        self._me, self._on_claimed = None, None

    def subscribe(self, listener: Callable[[Membership, Membership], None]) -> None:
        self._listeners.append(listener)

    def restore(self, view: Membership,
                persist: Callable[[Membership], None] | None = None) -> None:
        """Recovery: the view the node directory holds (persisted already),
        and how to persist the next ones. Listeners hear of it as of a change."""
        with self._lock:
            old, self.current = self.current, view
            self._persist = persist
        if old != view:
            for listener in list(self._listeners):
                listener(old, view)

    def replace(self, view: Membership) -> None:
        """Take *view* whole (persisted first), not merged: a node that kept
        no membership adopting its ring's (announce.join)."""
        with self._lock:
            if self._persist is not None:
                self._persist(view)
            old, self.current = self.current, view
        if old != view:
            for listener in list(self._listeners):
                listener(old, view)

    def install(self, incoming: Membership) -> bool:
        """Merge *incoming* into the current view; True when that changed it.

        The new view is persisted (if this node persists it) before anything
        reads it: a node that routed by it and then crashed comes back with
        it. MembershipError when *incoming* is of another shape.
        """
        claimed = None
        with self._lock:
            old = self.current
            new = old.merge(incoming)
            me = self._me
            if me is not None and new.address(me) != self._mine:
                claimed = new.address(me)
                new = new.moved(me, self._mine)
            if new == old:
                return False
            if self._persist is not None:
                self._persist(new)
            self.current = new
        if claimed is not None and self._on_claimed is not None:
            self._on_claimed(claimed, incoming)
        for listener in list(self._listeners):
            listener(old, new)
        return True


# -- on the wire (chord.proto Membership) ------------------------------------------


def to_pb(m: Membership):
    from chordctl.pb import chord_pb2 as pb
    return pb.Membership(epoch=m.epoch, bits=m.bits, placement=m.placement,
                         routing=m.routing, replicas=m.replicas, addresses=m.addresses,
                         since=m.since)


def from_pb(msg) -> Membership | None:
    """The Membership a message carries; None for none (epoch 0: a question);
    MembershipError for one that does not hold together."""
    if msg.epoch == 0:
        return None
    # (Bounded before a Ring is built of it: 2**bits is computed there.)
    if msg.epoch > MAX_EPOCH or not MIN_BITS <= msg.bits <= MAX_BITS \
            or not 0 < len(msg.addresses) <= MAX_NODES \
            or any(not 0 < len(a) <= MAX_ADDRESS for a in msg.addresses):
        raise MembershipError(f"membership: a malformed view (epoch {msg.epoch}, ring.bits "
                              f"{msg.bits}, {len(msg.addresses)} node(s), or an address "
                              f"empty or over {MAX_ADDRESS} characters)")
    try:
        return Membership(msg.epoch, msg.bits, msg.placement, msg.routing, msg.replicas,
                          tuple(msg.addresses), tuple(msg.since))
    except ValueError as e:   # (Ring's checks and our own)
        raise MembershipError(f"membership: a malformed view ({e})") from None
