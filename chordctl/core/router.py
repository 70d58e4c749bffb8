"""F4: send requests this node does not own to the next hop, asynchronously.

The router thread groups what it takes from F4 by next hop and sends each
group as one ``KeyValue.Batch`` call (the service clients use) with the
tightest deadline of the group. It never waits for the network: a callback
on gRPC's thread turns the reply (or the failure, naming the node that could
not be reached) into each request's result and completes the requests.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

import grpc

from chordctl import security
from chordctl.config import Config
from chordctl.core import request as rq
from chordctl.core.request import Request
from chordctl.core.ring import Ring
from chordctl.pb import chord_pb2 as pb
from chordctl.pb import chord_pb2_grpc as pb_grpc

logger = logging.getLogger("chordctl.router")

# Each hop keeps this share of its remaining time for itself, so that a failure
# further on is reported back before the caller's own deadline passes.
FORWARD_BUDGET = 0.9
MIN_TIMEOUT = 0.005



class Router:
    def __init__(self, config: Config, index: int, ring: Ring,
                 complete: Callable[[list[Request]], None]):
        self.config = config
        self.index = index
        self.ring = ring
        self.complete = complete
        self.max_hops = config.limits.max_hops
        self.label = f"node {index} (id {ring.ids[index]})"
        # Channels are opened lazily, and next_hop only ever names routing-table
        # entries, so a node talks to O(log n) peers, never the whole membership.
        self._stubs: dict[int, pb_grpc.KeyValueStub] = {}
        self._channels: dict[int, grpc.Channel] = {}
        self._lock = threading.Lock()
        self.forwarded = 0
        self.metrics = None          # NodeMetrics, when the node wires one in

    def peer_label(self, i: int) -> str:
        return f"node {i} (id {self.ring.ids[i]}, {self.config.nodes[i].address})"

    def _stub(self, i: int) -> pb_grpc.KeyValueStub:
        with self._lock:
            stub = self._stubs.get(i)
            if stub is None:
                channel = security.channel(self.config, self.config.nodes[i].address)
                self._channels[i] = channel
                stub = self._stubs[i] = pb_grpc.KeyValueStub(channel)
            return stub

    def _reopen(self, i: int, failed: pb_grpc.KeyValueStub) -> None:
        """Replace peer i's channel, unless another failure already did."""
        with self._lock:
            if self._stubs.get(i) is not failed:
                return
            del self._stubs[i]
            channel = self._channels.pop(i)
        channel.close()

    def forward(self, reqs: list[Request]) -> None:
        groups: dict[int, list[Request]] = {}
        failed: list[Request] = []
        position = self.ring.position
        next_hop = self.ring.next_hop
        me = self.index
        for r in reqs:
            if r.hops >= self.max_hops:
                r.fail(rq.ABORTED, f"route: hop limit {self.max_hops} reached at {self.label}; "
                                   f"the nodes' ring configurations probably differ")
                failed.append(r)
                continue
            nh = next_hop(me, position(r.key))
            group = groups.get(nh)
            if group is None:
                groups[nh] = [r]
            else:
                group.append(r)
        if failed:
            self.complete(failed)
        now = time.monotonic()
        for nh, group in groups.items():
            remaining = min(r.deadline for r in group) - now
            if remaining <= MIN_TIMEOUT:
                for r in group:
                    r.fail(rq.DEADLINE_EXCEEDED,
                           f"{self.label}: deadline passed before forwarding to "
                           f"{self.peer_label(nh)}")
                self.complete(group)
                continue
            batch = pb.BatchRequest()
            add = batch.ops.add
            for r in group:
                o = add()
                o.op = r.op
                o.key = r.key_text.decode()
                if r.value:
                    o.value = r.value
                o.hops = r.hops + 1
                if r.trace:
                    o.trace = True
                    o.route.extend(r.route)
            self.forwarded += len(group)
            if self.metrics is not None:
                self.metrics.forwarded += len(group)
            self._send(nh, group, batch,
                       max(MIN_TIMEOUT, remaining * FORWARD_BUDGET), may_retry=True)

    def _send(self, nh: int, group: list[Request], batch: pb.BatchRequest, timeout: float,
              may_retry: bool) -> None:
        try:
            stub = self._stub(nh)
            future = stub.Batch.future(batch, timeout=timeout)
        except Exception as e:  # channel creation failed: bad address
            self._fail_group(group, nh, f"cannot open a channel: {e}")
            return
        future.add_done_callback(
            lambda f: self._on_reply(f, group, nh, timeout, stub, batch, may_retry))

    def _fail_group(self, group: list[Request], nh: int, why: str) -> None:
        for r in group:
            r.fail(rq.UNAVAILABLE, f"{self.label} could not reach {self.peer_label(nh)}: {why}")
        self.complete(group)

    def _on_reply(self, future: grpc.Future, group: list[Request], nh: int, timeout: float,
                  stub: pb_grpc.KeyValueStub, batch: pb.BatchRequest, may_retry: bool) -> None:
        try:
            reply = future.result()
        except grpc.RpcError as e:
            code = e.code()
            if (may_retry and code == grpc.StatusCode.UNAVAILABLE
                    and (e.details() or "").lower().startswith("failed to connect")):
                # The call never left this node: the channel is in reconnect
                # backoff since the peer was last down. A restarted peer is
                # ready long before the backoff ends, so retry once, now, on a
                # fresh channel (safe for mutations: nothing was sent).
                remaining = min(r.deadline for r in group) - time.monotonic()
                if remaining > MIN_TIMEOUT:
                    self._reopen(nh, stub)
                    self._send(nh, group, batch, max(MIN_TIMEOUT, remaining * FORWARD_BUDGET),
                               may_retry=False)
                    return
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                why = f"no answer within {timeout:.2f}s"
            elif code == grpc.StatusCode.UNAVAILABLE:
                why = f"unreachable ({e.details() or 'connection failed'})"
            else:
                why = f"{code.name}: {e.details()}"
            self._fail_group(group, nh, why)
            return
        except Exception as e:  # cancelled at shutdown
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
        self.complete(group)

    def close(self) -> None:
        with self._lock:
            channels = list(self._channels.values())
        for channel in channels:
            channel.close()
