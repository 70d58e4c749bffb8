"""Telling the peers where every node is (membership.py), on the node's loop.

At start and after every change of its membership, a node calls
``Admin.Members`` on each peer with its view; the peer merges it and answers
with the result, which the node merges in turn. A peer is asked again (with
a growing pause, up to ANNOUNCE_MAX) until it answered with this node's
current view; one that is down is asked again until it is back. So a node
that moved is found by every peer that was up, and by each one that comes
back later; and a node that was down while another moved learns where it
went from the first peer it reaches.
"""

from __future__ import annotations

import asyncio
import logging

import grpc

from chordctl import security
from chordctl.core import membership
from chordctl.core.membership import Members, Membership
from chordctl.pb import chord_pb2 as pb
from chordctl.pb import chord_pb2_grpc as pb_grpc
from chordctl.protocol import never_sent

logger = logging.getLogger("chordctl.node")

ASK_TIMEOUT = 1.0     # join: each peer's answer (one that is down refuses at once)
ANNOUNCE_MIN = 0.05
ANNOUNCE_MAX = 2.0
CALL_TIMEOUT = 1.0


async def join(node, config, take_over: bool = False) -> None:
    """Before a node serves (server.py, after recovery): the ring's
    membership, with this node where its config says it listens.

    The node asks its peers for their views (at the addresses its directory
    recorded) and merges them into the one it recorded; a directory that
    recorded none (a new node, or a replacement on an empty directory) takes
    the peers' view whole. If the ring has this node elsewhere, this start
    moves it: only once nothing still serves as this node there (a refused
    connection; with *take_over*, also an address that does not answer at
    all) -- else MembershipError (exit 2), with nothing written. Then the
    move is the next epoch, persisted before the node serves.
    """
    members = node.membership
    me = node.index
    recorded = members.current
    learned = await _ask_peers(config, me, recorded)
    if learned is None:
        ring = recorded
    elif node.membership_fresh:
        ring = learned
    else:
        ring = recorded.merge(learned)
    # Where the ring routes this node's traffic: the peers' view of it (a tie
    # in a merge with what this directory recorded must not hide it).
    # (Unless this directory's own setting of it is newer: a peer that did
    # not hear this node's last move yet.)
    peers_say = learned is not None and learned.since[me] >= recorded.since[me]
    there = (learned if peers_say else recorded).address(me)
    mine = config.node(me).address
    if there != mine:
        await _check_gone(config, me, there, ring, take_over)
        logger.info("%s: moved from %s to %s: membership epoch %d", node.label, there, mine,
                    ring.epoch + 1)
        ring = ring.claim(me, mine)      # past every view that had it elsewhere
    view = node.moved_to_config(ring)
    if view != recorded:
        await asyncio.get_running_loop().run_in_executor(None, members.replace, view)
        if learned is not None and node.membership_fresh:
            logger.info("%s: took the ring's membership %s", node.label, view.describe())


async def _ask_peers(config, me: int, view: Membership) -> Membership | None:
    """The peers' views merged (epoch 0: a question), None if none answered."""
    async def ask(j: int) -> Membership | None:
        channel = security.aio_channel(config, view.address(j))
        try:
            reply = await pb_grpc.AdminStub(channel).Members(
                pb.Membership(), timeout=ASK_TIMEOUT)
            theirs = membership.from_pb(reply)
            if theirs is not None:
                view.check_shape(theirs, f"node {j}'s membership")
            return theirs
        except (grpc.aio.AioRpcError, membership.MembershipError) as e:
            logger.debug("membership: asking node %d: %s", j, e)
            return None
        finally:
            await channel.close()

    answers = await asyncio.gather(*(ask(j) for j in range(view.n) if j != me))
    learned = None
    for theirs in answers:
        if theirs is not None:
            learned = theirs if learned is None else learned.merge(theirs)
    return learned


async def _check_gone(config, me: int, there: str, view: Membership, take_over: bool) -> None:
    """MembershipError unless nothing serves as node *me* at *there* (where the
    ring has it): a refused connection, or another node there; with
    *take_over* also an address that takes no call within ASK_TIMEOUT."""
    channel = security.aio_channel(config, there)
    try:
        st = await pb_grpc.AdminStub(channel).Status(pb.StatusRequest(), timeout=ASK_TIMEOUT)
    except grpc.aio.AioRpcError as e:
        code, details = e.code(), e.details() or ""
        low = details.lower()
        # No server said anything: no connection (refused, timed out, a name
        # that no longer resolves), or no answer within the time.
        unanswered = (never_sent(code.value[0], details)
                      or code == grpc.StatusCode.DEADLINE_EXCEEDED
                      or (code == grpc.StatusCode.UNAVAILABLE
                          and ("resolv" in low or "dns" in low)))
        if unanswered and "connection refused" in low:
            return          # nothing listens there: the node that was there is gone
        if unanswered:
            # The host may be cut off or stopped with node *me* still on it.
            if take_over:
                logger.warning("node %d: nothing answers at %s, where the ring has this "
                               "node (%s); taking its place (--take-over)", me, there,
                               details or code.name)
                return
            raise membership.MembershipError(
                f"node: the ring has node {me} at {there}, and nothing answers there within "
                f"{ASK_TIMEOUT:.0f}s ({details or code.name}), but nothing refuses the "
                f"connection either (a host cut off or stopped may still run node {me}); if "
                f"node {me} at {there} is gone for good, start this one with "
                f"--take-over") from None
        raise membership.MembershipError(
            f"node: a node answers at {there}, where the ring has node {me} ({code.name}: "
            f"{details}); two processes cannot both be node {me} -- stop that one first "
            f"(a node moves, or is replaced, only once the one before it is gone)") from None
    finally:
        await channel.close()
    theirs = membership.from_pb(st.membership) if st.HasField("membership") else None
    if st.node_index == me and (theirs is None or theirs.shape == view.shape):
        raise membership.MembershipError(
            f"node: node {me} is already running at {there} (pid {st.pid}), where the ring "
            f"has it; two processes cannot both be node {me} -- stop that one first (a node "
            f"moves, or is replaced, only once the one before it is gone), or start this "
            f"process with the index of the node it is meant to be")
    logger.warning("node %d: %s serves node %d now, not this node; taking this node's place "
                   "in the ring's membership", me, there, st.node_index)


class Announcer:
    """Run ``run()`` as a task on the node's loop; cancel it to stop."""

    def __init__(self, config, index: int, members: Members, label: str,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.config = config
        self.index = index
        self.members = members
        self.label = label
        self.loop = loop
        self.changed = asyncio.Event()
        # peer -> the view it last answered with (or this node's, for a peer
        # that cannot take views: an older node, another ring's shape)
        self.told: dict[int, Membership] = {}
        self._given_up: set[int] = set()
        members.subscribe(self._on_change)

    def _on_change(self, _old: Membership, _new: Membership) -> None:
        # From whichever thread installed it.
        try:
            self.loop.call_soon_threadsafe(self.changed.set)
        except RuntimeError:   # the loop is closed: the node is stopping
            pass

    def pending(self) -> list[int]:
        view = self.members.current
        return [j for j in range(view.n) if j != self.index and j not in self._given_up
                and self.told.get(j) != view]

    async def run(self) -> None:
        delay = ANNOUNCE_MIN
        while True:
            self.changed.clear()
            peers = self.pending()
            if not peers:
                await self.changed.wait()
                delay = ANNOUNCE_MIN
                continue
            view = self.members.current
            await asyncio.gather(*(self._tell(j, view) for j in peers))
            if self.pending():
                try:   # a change wakes it early
                    await asyncio.wait_for(self.changed.wait(), delay)
                    delay = ANNOUNCE_MIN
                except asyncio.TimeoutError:
                    delay = min(ANNOUNCE_MAX, delay * 2)

    async def _tell(self, j: int, view: Membership) -> None:
        address = view.address(j)
        channel = security.aio_channel(self.config, address)
        try:
            reply = await pb_grpc.AdminStub(channel).Members(membership.to_pb(view),
                                                             timeout=CALL_TIMEOUT)
            theirs = membership.from_pb(reply)
        except grpc.aio.AioRpcError as e:
            code = e.code()
            if code in (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.FAILED_PRECONDITION):
                # An older node (routes by its config) or another ring's:
                # asking again changes nothing.
                logger.warning("%s: node %d at %s does not take this ring's membership "
                               "(%s: %s)", self.label, j, address, code.name, e.details())
                self._given_up.add(j)
            else:
                logger.debug("%s: membership to node %d: %s", self.label, j, code.name)
            return
        except membership.MembershipError as e:
            logger.warning("%s: node %d at %s answered %s", self.label, j, address, e)
            self._given_up.add(j)
            return
        finally:
            await channel.close()
        if theirs is None:
            return
        if theirs != self.members.current:
            try:
                # (Persisting it is an fsync: off the loop.)
                changed = await self.loop.run_in_executor(None, self.members.install, theirs)
            except membership.MembershipError as e:
                logger.warning("%s: node %d at %s: %s", self.label, j, address, e)
                self._given_up.add(j)
                return
            except OSError as e:   # IDENTITY cannot be written: asked again later
                logger.warning("%s: cannot record the membership node %d told: %s",
                               self.label, j, e)
                return
            if changed:
                logger.info("%s: membership %s (from node %d)", self.label,
                            self.members.current.describe(), j)
        self.told[j] = theirs
