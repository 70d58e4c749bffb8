"""Raft messages between nodes, over the nodes' own gRPC ports (chord.raft.v1).

One long-lived client stream (``Raft.Push``) per ordered pair of nodes that
share a group carries every group's messages, in the order the engine sent
them. The sending side lives on the node's event loop: the engine thread
hands each round's messages over with one ``call_soon_threadsafe`` (a
round that ran on the loop itself hands them over directly); a
queue per peer feeds that peer's stream. A peer that is down loses what is
sent to it (the queue keeps the newest ``max_queued`` batches while the
stream reconnects): Raft resends what matters, and a restarted peer asks
for what it lacks.

The receiving side is ``RaftServicer.Push``: it checks who is sending (an
index of this ring, one this node shares a group with, and the same ring
fingerprint), then hands each batch to ``Engine.deliver``; decoding happens
on the engine thread.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Callable

import grpc

from chordctl import security
from chordctl.config import Config
from chordctl.core.membership import Members, Membership
from chordctl.pb import raft_pb2 as rpb
from chordctl.pb import raft_pb2_grpc as rpb_grpc

logger = logging.getLogger("chordctl.raft")

RETRY_MIN = 0.01
# A peer that is back must hear its leaders' heartbeats before its election
# timeout, or it starts an election and unseats a healthy leader (PySyncObj
# has no pre-vote): retry at least every heartbeat (server.py passes it).
RETRY_MAX = 0.5


class Exchange:
    """This node's outgoing Raft streams. Build and close it on *loop*."""

    def __init__(self, config: Config, index: int, ring_fingerprint: str,
                 loop: asyncio.AbstractEventLoop, peers: set[int], max_queued: int = 1024,
                 channel: Callable[[str], grpc.aio.Channel] | None = None,
                 retry_max: float = RETRY_MAX, members: Members | None = None):
        self.config = config
        # Where each peer is (membership.py): read at each (re)connection, so
        # a peer that moved is reached at its new address.
        self.members = members or Members(Membership.from_config(config))
        self.index = index
        self.ring = ring_fingerprint
        self.loop = loop
        self.peers = frozenset(peers)
        self.max_queued = max_queued
        self.retry_max = max(RETRY_MIN, min(RETRY_MAX, retry_max))
        self._channel = channel or (lambda address: security.aio_channel(config, address))
        self._queues: dict[int, asyncio.Queue] = {}
        self._tasks: dict[int, asyncio.Task] = {}
        self._closed = False
        self.sent = 0
        self.lost = 0
        self._loop_thread = threading.get_ident()   # built on the loop

    # -- engine thread ----------------------------------------------------------

    def send(self, out: dict[int, list[rpb.Message]]) -> None:
        """The engine's *send*: one wake-up of the loop per round, none for a
        round that ran on the loop (Engine._take_round)."""
        if threading.get_ident() == self._loop_thread:
            self._enqueue(out)
            return
        try:
            self.loop.call_soon_threadsafe(self._enqueue, out)
        except RuntimeError:   # the loop is closed: the node is stopping
            pass

    # -- event loop -------------------------------------------------------------

    def _enqueue(self, out: dict[int, list[rpb.Message]]) -> None:
        if self._closed:
            return
        for peer, messages in out.items():
            if peer not in self.peers:
                continue
            q = self._queues.get(peer)
            if q is None:
                q = self._queues[peer] = asyncio.Queue()
                self._tasks[peer] = self.loop.create_task(self._pump(peer, q),
                                                          name=f"raft-push-{peer}")
            for part in _parts(messages):
                if q.qsize() >= self.max_queued:
                    q.get_nowait()
                    self.lost += 1
                q.put_nowait(rpb.RaftBatch(sender=self.index, ring=self.ring, messages=part))

    async def _pump(self, peer: int, q: asyncio.Queue) -> None:
        delay = RETRY_MIN
        while not self._closed:
            channel = self._channel(self.members.current.address(peer))
            try:
                stub = rpb_grpc.RaftStub(channel)
                first = await q.get()

                async def requests():
                    nonlocal delay
                    batch = first
                    while True:
                        self.sent += 1
                        yield batch
                        batch = await q.get()
                        delay = RETRY_MIN   # the stream carried a batch: it works

                reply = await stub.Push(requests())
                if reply.message:
                    logger.warning("raft: node %d refused our stream: %s", peer, reply.message)
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as e:
                logger.debug("raft: stream to node %d: %s", peer, e.code().name)
            finally:
                await channel.close()
            self.lost += 1
            await asyncio.sleep(delay)
            delay = min(self.retry_max, delay * 2)

    async def close(self) -> None:
        self._closed = True
        tasks = list(self._tasks.values())
        for t in tasks:
            t.cancel()
        for t in tasks:
            try:
                await t
            except (asyncio.CancelledError, Exception):
                pass
        self._tasks.clear()


class RaftServicer(rpb_grpc.RaftServicer):
    """chord.raft.v1.Raft on a node: peers' messages into its engine."""

    def __init__(self, index: int, ring_fingerprint: str, peers: set[int],
                 deliver: Callable[[int, list], None]):
        self.index = index
        self.ring = ring_fingerprint
        self.peers = frozenset(peers)
        self.deliver = deliver
        self.received = 0
        self.ending = False
        self._tasks: set[asyncio.Task] = set()

    def end_streams(self) -> None:
        """The node is stopping: end every peer's stream (a peer keeps its
        stream open for as long as both run, so a graceful server stop would
        otherwise wait its whole grace on them). Between two batches: deliver
        never awaits, so a batch is either delivered whole or not read."""
        self.ending = True
        for task in list(self._tasks):
            task.cancel()

    async def Push(self, request_iterator, context):
        summary = rpb.PushSummary()
        if self.ending:
            return summary                # no message: not a refusal, the peer retries
        task = asyncio.current_task()
        self._tasks.add(task)
        try:
            return await self._push(request_iterator, summary)
        except asyncio.CancelledError:
            if not self.ending:
                raise
            # Cancelled by end_streams: answer, so that gRPC ends the call now
            # (a handler that ends cancelled leaves it open until the peer
            # gives up or the server's grace is over).
            task.uncancel()
            return summary
        finally:
            self._tasks.discard(task)

    async def _push(self, request_iterator, summary: rpb.PushSummary) -> rpb.PushSummary:
        async for batch in request_iterator:
            if batch.ring != self.ring:
                summary.message = (
                    f"node {self.index}: raft messages from another ring (fingerprint "
                    f"{batch.ring or 'none'}, ours {self.ring}); check that every node "
                    f"runs the same config")
                return summary
            if batch.sender not in self.peers:
                summary.message = (
                    f"node {self.index}: node {batch.sender} shares no replica group "
                    f"with this node")
                return summary
            summary.batches += 1
            self.received += 1
            self.deliver(batch.sender, batch.messages)
        return summary


def _parts(messages: list[rpb.Message]) -> list[list[rpb.Message]]:
    """A round's messages to one peer as the batches that carry them: all in
    one, except that each chunk of a dump (DUMP_CHUNK_BYTES) goes in a batch
    of its own, so a whole dump sent in one round never makes one gRPC
    message over the nodes' message limit."""
    if not any(m.HasField("serialized") for m in messages):
        return [messages]
    parts: list[list[rpb.Message]] = []
    run: list[rpb.Message] = []
    for m in messages:
        if m.HasField("serialized"):
            if run:
                parts.append(run)
                run = []
            parts.append([m])
        else:
            run.append(m)
    if run:
        parts.append(run)
    return parts
