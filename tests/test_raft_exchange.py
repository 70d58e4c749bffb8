"""Raft traffic over gRPC (core/replication/exchange.py): three engines whose
messages travel on Raft.Push streams between real grpc.aio servers on
loopback; a replica whose server goes away and comes back catches up; a
stream from another ring, or from a node that shares no group, is refused."""

from __future__ import annotations

import asyncio
import threading

import grpc
import pytest
from pysyncobj.config import FAIL_REASON

from chordctl import config as configmod
from chordctl.core.replication.engine import Engine, Settings
from chordctl.core.replication.exchange import Exchange, RaftServicer
from chordctl.pb import raft_pb2 as rpb
from chordctl.pb import raft_pb2_grpc as rpb_grpc
from conftest import free_ports
from test_raft_engine import Journals, until

FAST = Settings(election_timeout=0.25, heartbeat=0.04, tick=0.01)
RING = "f" * 16


class Loop:
    """An event loop on a thread of its own, as a node has."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout=10):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self):
        async def cancel_all():
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self.run(cancel_all())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


class Replica:
    def __init__(self, loop: Loop, cfg, i: int, n: int):
        self.loop, self.cfg, self.i = loop, cfg, i
        self.applied: list[tuple[int, bytes]] = []
        self.journals = Journals()
        self.peers = set(range(n)) - {i}
        self.server = None
        self.start()

    def start(self):
        def apply(group, idx, command):
            self.applied.append((idx, command))
            return idx

        self.exchange = Exchange(self.cfg, self.i, RING, self.loop.loop, self.peers)
        self.engine = Engine(self.i, {0: tuple(range(len(self.cfg.nodes)))}, self.journals,
                             apply, self.exchange.send, FAST)
        self.serve()
        self.engine.start()

    def serve(self):
        async def go():
            server = grpc.aio.server()
            rpb_grpc.add_RaftServicer_to_server(
                RaftServicer(self.i, RING, self.peers, self.engine.deliver), server)
            server.add_insecure_port(self.cfg.nodes[self.i].address)
            await server.start()
            return server

        self.server = self.loop.run(go())

    def crash(self):
        self.engine.stop()
        self.loop.run(self.server.stop(None))
        self.loop.run(self.exchange.close())


def commit(engine, command, timeout=10):
    done = threading.Event()
    out = []
    engine.submit(0, command, lambda res, reason: (out.append(reason), done.set()))
    assert done.wait(timeout), f"no answer for {command!r}"
    return out[0]


def leader_of(replicas):
    live = [r for r in replicas if r.engine._thread.is_alive()]
    leaders = [r for r in live if r.engine.status().get(0, {}).get("state") == "leader"]
    if len(leaders) == 1 and {r.engine.leader(0) for r in live} == {leaders[0].i}:
        return leaders[0]
    return None


@pytest.fixture
def trio(tmp_path):
    ports = free_ports(3)
    cfg = configmod.from_dict({"ring": {"bits": 8},
                               "nodes": [{"host": "127.0.0.1", "port": p} for p in ports],
                               "storage": {"data_dir": str(tmp_path)}})
    loop = Loop()
    replicas = [Replica(loop, cfg, i, 3) for i in range(3)]
    yield replicas
    for r in replicas:
        try:
            r.crash()
        except Exception:
            pass
    loop.close()


def test_a_group_replicates_over_grpc_streams(trio):
    until(lambda: leader_of(trio) is not None, what="a leader")
    leader = leader_of(trio)
    for k in range(30):
        assert commit(leader.engine, b"k%d" % k) == FAIL_REASON.SUCCESS
    until(lambda: all(len(r.applied) == 30 for r in trio), what="every replica applied")
    assert trio[0].applied == trio[1].applied == trio[2].applied
    assert all(r.exchange.sent > 0 for r in trio)


def test_a_replica_whose_server_was_gone_catches_up_when_it_returns(trio):
    until(lambda: leader_of(trio) is not None, what="a leader")
    leader = leader_of(trio)
    victim = next(r for r in trio if r is not leader)
    assert commit(leader.engine, b"first") == FAIL_REASON.SUCCESS
    victim.crash()
    for k in range(5):
        assert commit(leader.engine, b"gone%d" % k) == FAIL_REASON.SUCCESS
    victim.applied.clear()
    victim.start()   # same port, same journal
    until(lambda: len(victim.applied) == 6, what="the returning replica caught up")
    assert victim.applied == leader.applied


def test_a_stream_from_another_ring_or_a_stranger_is_refused(trio):
    address = trio[0].cfg.nodes[0].address

    async def push(batch):
        async with grpc.aio.insecure_channel(address) as ch:
            return await rpb_grpc.RaftStub(ch).Push(iter([batch]))

    reply = trio[0].loop.run(push(rpb.RaftBatch(sender=1, ring="0" * 16)))
    assert "another ring" in reply.message
    reply = trio[0].loop.run(push(rpb.RaftBatch(sender=7, ring=RING)))
    assert "shares no replica group" in reply.message


def test_an_exchange_refused_by_its_peer_says_why_and_counts_the_batch_lost(trio, caplog):
    """A node of another ring (another fingerprint) pushing to trio's node 0:
    node 0 ends the stream with its reason, which the sender logs."""
    r0 = trio[0]
    stranger = Exchange(r0.cfg, 1, "0" * 16, r0.loop.loop, {0})
    caplog.set_level("WARNING", logger="chordctl.raft")
    stranger.send({0: [rpb.Message(group=0)]})
    until(lambda: any("refused our stream" in m and "another ring" in m
                      for m in caplog.messages), what="the refusal logged")
    until(lambda: stranger.lost >= 1, what="the batch counted lost")
    r0.loop.run(stranger.close())
