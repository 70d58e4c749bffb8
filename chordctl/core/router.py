"""F4: send requests this node does not own to the next hop, asynchronously.

The router thread takes what the dispatcher put in F4, groups it by next hop
and builds one ``KeyValue.Batch`` request per group (the service clients
use) with the tightest deadline of the group. It never waits for the
network: it hands each call to the node's event loop, where grpc.aio sends
it; when the reply (or the failure, naming the node that could not be
reached) comes, the loop turns it into each request's result and answers the
waiting receivers directly, with no further thread hop.
"""

from __future__ import annotations

import asyncio
import logging
import time

import grpc

from chordctl import protocol, security
from chordctl.config import Config
from chordctl.core.request import Request
from chordctl.core.membership import Members
from chordctl.core.ring import Ring
from chordctl.pb import chord_pb2 as pb
from chordctl.pb import chord_pb2_grpc as pb_grpc
from chordctl.protocol import (ABORTED, DEADLINE_EXCEEDED, INTERNAL, OP_READ, UNAVAILABLE,
                               first_share, never_sent)

logger = logging.getLogger("chordctl.router")

# Each hop keeps this share of its remaining time for itself, so that a failure
# further on is reported back before the caller's own deadline passes.
FORWARD_BUDGET = 0.9
MIN_TIMEOUT = 0.005
# ring.replicas > 1: after an arc's replica could not be reached, its
# requests go to the next replica for this long, then to the owner again
# (back, it leads its arc again: a request through another replica costs a hop).
PREFER_FOR = 2.0
# ring.replicas > 1: a call made only of reads gets protocol.READ_FIRST of its
# time at the first replica (protocol.first_share, which clients use too).


def message_limit(config: Config) -> int:
    """The largest message a node receives (grpc.max_receive_message_length).

    One operation of the largest value always fits, with room for its key.
    """
    return protocol.message_limit(config.limits.max_value_bytes)


def split(group: list[Request], max_ops: int, max_bytes: int,
          read_reply: int = 0) -> list[list[Request]]:
    """*group* in order, cut into runs of at most *max_ops* operations and about
    *max_bytes* of encoded message each: what the next node accepts in one
    Batch; with *read_reply* (a read's largest answer) also a reply within
    protocol.REPLY_LIMIT."""
    out: list[list[Request]] = []
    run: list[Request] = []
    size = 0
    reply = 0
    max_reply = protocol.REPLY_LIMIT - protocol.MESSAGE_MARGIN
    for r in group:
        cost = len(r.value) + len(r.key_text) + protocol.OP_OVERHEAD
        if r.route:
            cost += sum(len(h) for h in r.route) + 8 * len(r.route)
        answer = len(r.key_text) + (read_reply if r.op == OP_READ else protocol.REPLY_OVERHEAD)
        if run and (len(run) >= max_ops or size + cost > max_bytes
                    or reply + answer > max_reply):
            out.append(run)
            run, size, reply = [], 0, 0
        run.append(r)
        size += cost
        reply += answer
    out.append(run)
    return out


class Router:
    """Forwarding for one node.

    Answers leave by *replies* (node.Replies): ``send`` from the router
    thread, ``deliver`` from the calls on *loop*. *metrics* (NodeMetrics)
    counts what is forwarded.
    """

    def __init__(self, config: Config, index: int, members: Members,
                 loop: asyncio.AbstractEventLoop, replies, metrics=None):
        self.config = config
        self.index = index
        self.members = members       # where each node is: read at each call
        self.loop = loop
        self.send = replies.send
        self.deliver = replies.deliver
        self.max_hops = config.limits.max_hops
        # A forward must pass the next node's checks (same config): at most
        # max_batch_ops operations and a message under its receive limit.
        self.max_ops = config.limits.max_batch_ops
        self.max_bytes = message_limit(config) - protocol.MESSAGE_MARGIN
        self.read_reply = config.limits.max_value_bytes + protocol.REPLY_OVERHEAD
        self.label = f"node {index} (id {self.ring.ids[index]})"
        # Channels are opened lazily (on the loop), and next_hop only ever names
        # routing-table entries, so a node talks to O(log n) peers, never the
        # whole membership.
        self._stubs: dict[int, pb_grpc.KeyValueStub] = {}
        self._channels: dict[int, grpc.aio.Channel] = {}
        self._addresses: dict[int, str] = {}     # what each open channel connects to
        self._tasks: set[asyncio.Task] = set()
        self.metrics = metrics
        # ring.replicas > 1: an arc's requests go straight to one of its
        # replicas (its owner first, or for PREFER_FOR seconds the last one
        # that answered when another could not be reached), and on to the next
        # when one cannot be reached.
        self.replicas = config.ring.replicas
        self._prefer: dict[int, tuple[int, float]] = {}   # arc -> (replica, until)

    @property
    def ring(self) -> Ring:
        return self.members.current.ring

    def peer_label(self, i: int) -> str:
        return f"node {i} (id {self.ring.ids[i]}, {self.members.current.address(i)})"

    # -- router thread --------------------------------------------------------

    def forward(self, reqs: list[Request]) -> None:
        groups: dict = {}
        failed: list[Request] = []
        position = self.ring.position
        next_hop = self.ring.next_hop
        owner = self.ring.owner
        me = self.index
        replicated = self.replicas > 1
        prefer = self._prefer
        now = time.monotonic()
        for r in reqs:
            if r.hops >= self.max_hops:
                r.fail(ABORTED, f"route: hop limit {self.max_hops} reached at {self.label}; "
                                f"the nodes' ring configurations probably differ")
                failed.append(r)
                continue
            if replicated:
                g = owner(r.key)       # one call per arc: a failover is per arc
                p = prefer.get(g)
                if p is None or p[1] <= now:
                    target = (g, g)
                    if p is not None:
                        prefer.pop(g, None)
                else:
                    target = (p[0], g)
            else:
                target = next_hop(me, position(r.key))
            group = groups.get(target)
            if group is None:
                groups[target] = [r]
            else:
                group.append(r)
        if failed:
            self.send(failed)
        calls = []
        for target, group in groups.items():
            nh = target[0] if replicated else target
            remaining = min(r.deadline for r in group) - now
            if remaining <= MIN_TIMEOUT:
                for r in group:
                    r.fail(DEADLINE_EXCEEDED,
                           f"{self.label}: deadline passed before forwarding to "
                           f"{self.peer_label(nh)}")
                self.send(group)
                continue
            if self.metrics is not None:
                self.metrics.forwarded += len(group)
            for run in split(group, self.max_ops, self.max_bytes, self.read_reply):
                batch = pb.BatchRequest()
                add = batch.ops.add
                for r in run:
                    o = add()
                    o.op = r.op
                    o.key = r.key_text.decode()
                    if r.value:
                        o.value = r.value
                    o.hops = r.hops + 1
                    if r.trace:
                        o.trace = True
                        o.route.extend(r.route)
                calls.append((nh, run, batch))
        if calls:
            # One wake-up of the loop for everything taken from F4 at once.
            self.loop.call_soon_threadsafe(self._start_calls, calls)

    # -- event loop -----------------------------------------------------------

    def _stub(self, i: int) -> pb_grpc.KeyValueStub:
        stub = self._stubs.get(i)
        address = self.members.current.addresses[i]
        if stub is not None and self._addresses.get(i, address) != address:   # it moved (a new epoch)
            self._reopen(i, stub)
            stub = None
        if stub is None:
            channel = security.aio_channel(self.config, address)
            self._channels[i] = channel
            self._addresses[i] = address
            stub = self._stubs[i] = pb_grpc.KeyValueStub(channel)
        return stub

    def _reopen(self, i: int, failed: pb_grpc.KeyValueStub) -> None:
        """Replace peer i's channel, unless another failure already did."""
        if self._stubs.get(i) is not failed:
            return
        del self._stubs[i]
        self._spawn(self._channels.pop(i).close())

    def _spawn(self, coro) -> None:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _start_calls(self, calls: list) -> None:
        replicated = self.replicas > 1
        for nh, group, batch in calls:
            share = first_share(_reads_only(group), replicated, FORWARD_BUDGET)
            timeout = max(MIN_TIMEOUT, (min(r.deadline for r in group) - time.monotonic())
                          * share)
            self._spawn(self._call(nh, group, batch, timeout, may_retry=True))

    async def _call(self, nh: int, group: list[Request], batch: pb.BatchRequest,
                    timeout: float, may_retry: bool, tried: tuple = ()) -> None:
        try:
            stub = self._stub(nh)
            reply = await stub.Batch(batch, timeout=timeout)
        except grpc.aio.AioRpcError as e:
            code = e.code()
            if may_retry and never_sent(code.value[0], e.details() or ""):
                # The call never left this node: the channel is in reconnect
                # backoff since the peer was last down. A restarted peer is
                # ready long before the backoff ends, so retry once, now, on a
                # fresh channel (safe for mutations: nothing was sent).
                remaining = min(r.deadline for r in group) - time.monotonic()
                if remaining > MIN_TIMEOUT:
                    self._reopen(nh, stub)
                    await self._call(nh, group, batch,
                                     max(MIN_TIMEOUT, remaining * FORWARD_BUDGET),
                                     may_retry=False, tried=tried)
                    return
            details = e.details() or ""
            # Not applied there (unreachable, or it refused: recovering,
            # failed): another replica of the arc can take it. Silent
            # (stopped, overloaded or cut off): the arc's next requests go to
            # its next replica for a while, and a call of reads goes there now
            # (a mutation may have been applied: it is answered as unknown).
            passed = self.replicas > 1 and (never_sent(code.value[0], details) or (
                code == grpc.StatusCode.UNAVAILABLE and details.startswith("node ")))
            silent = self.replicas > 1 and code == grpc.StatusCode.DEADLINE_EXCEEDED
            if passed or silent:
                tried = tried + (nh,)
                nxt = self._next_replica(nh, group, tried)
                remaining = min(r.deadline for r in group) - time.monotonic()
                if nxt is not None and (silent or remaining > MIN_TIMEOUT):
                    self._prefer[self.ring.owner(group[0].key)] = (
                        nxt, time.monotonic() + PREFER_FOR)
                    if remaining > MIN_TIMEOUT and (passed or _reads_only(group)):
                        await self._call(nxt, group, batch,
                                         max(MIN_TIMEOUT, remaining * FORWARD_BUDGET),
                                         may_retry=True, tried=tried)
                        return
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                why = f"no answer within {timeout:.2f}s"
            elif code == grpc.StatusCode.UNAVAILABLE and not details.startswith("node "):
                why = f"unreachable ({details or 'connection failed'})"
            else:
                # The peer answered: it refused the whole call (recovering,
                # failed, at its in-flight limit, a limit it does not share).
                self._refused(group, nh, code, details)
                return
            self._fail_group(group, nh, why)
            return
        except asyncio.CancelledError:
            self._fail_group(group, nh, "call cancelled (node shutting down)")
            raise
        except Exception as e:  # a bad address, a channel that cannot open
            self._fail_group(group, nh, f"call failed: {e!r}")
            return
        results = reply.results
        if len(results) != len(group):
            self._fail_group(group, nh, f"answered {len(results)} results for {len(group)} "
                                        f"operations")
            return
        for r, res in zip(group, results):
            r.code = res.code
            r.message = res.message
            r.result = res.value if res.code == 0 else None
            r.node_index = res.node_index
            r.node_id = res.node_id
            if r.trace:
                r.route = list(res.route)
        self.deliver(group)

    def _next_replica(self, failed: int, group: list[Request], tried: tuple) -> int | None:
        """The replica of *group*'s arc to try after *failed* (clockwise), or None."""
        members = self.ring.replicas(self.ring.owner(group[0].key), self.replicas)
        i = members.index(failed) if failed in members else -1
        for k in range(1, len(members) + 1):
            m = members[(i + k) % len(members)]
            if m not in tried and m != self.index:
                return m
        return None

    def _refused(self, group: list[Request], nh: int, code: grpc.StatusCode,
                 details: str) -> None:
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            # Not the client's input (each operation is checked on its own, in
            # its result): a batch this node built, over a limit of the peer's.
            number = INTERNAL
            hint = "; the nodes' configs probably differ (limits)"
        else:
            number = code.value[0]
            hint = ""
        message = (f"{self.label} forwarded to {self.peer_label(nh)}, which refused it: "
                   f"{code.name}: {details}{hint}")
        for r in group:
            r.fail(number, message)
        self.deliver(group)

    def _fail_group(self, group: list[Request], nh: int, why: str) -> None:
        for r in group:
            r.fail(UNAVAILABLE, f"{self.label} could not reach {self.peer_label(nh)}: {why}")
        self.deliver(group)

    def close(self) -> None:
        """From any thread: close the channels on the loop (without waiting)."""
        def close_all() -> None:
            for channel in self._channels.values():
                self._spawn(channel.close())
            self._channels.clear()
            self._stubs.clear()
        try:
            self.loop.call_soon_threadsafe(close_all)
        except RuntimeError:   # the loop is already closed
            pass


def _reads_only(group: list[Request]) -> bool:
    return all(r.op == OP_READ for r in group)
