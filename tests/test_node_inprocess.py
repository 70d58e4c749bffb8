"""The node in one process: servicer -> pipeline -> log -> reply path, the
router between two in-process servers, a held stage and a slow replay
injected through constructors (no environment-variable hooks).

grpc's own examples test servicers in-process the same way: a fake context
for the handler, or a real grpc.aio server on a free loopback port.
"""

from __future__ import annotations

import asyncio
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from chordctl import config as config_mod
from chordctl.core.gate import Admission, ReadinessGate
from chordctl.core.node import Node, OwnedBatch, Replies
from chordctl.core.request import Request
from chordctl.core.server import NodeServer
from chordctl.core.servicer import AdminServicer, KeyValueServicer
from chordctl.pb import chord_pb2 as pb
from chordctl.pb import chord_pb2_grpc as pb_grpc
from chordctl.protocol import INVALID_ARGUMENT, OK, OP_READ, OP_UPDATE
from conftest import write_config
from held_node import held


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


class FakeContext:
    """What a KeyValue handler uses of grpc.aio.ServicerContext."""

    def time_remaining(self):
        return 30.0

    async def abort(self, code, details):
        raise Aborted(code, details)


def run(coro, timeout: float = 60):
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def served(cfg, node_class=Node, **limits):
    """A recovered, started Node over this loop's reply path and its servicer."""
    loop = asyncio.get_running_loop()
    node = node_class(cfg, 0, Replies.over(loop))
    await loop.run_in_executor(None, node.recover)
    node.start()
    return node, KeyValueServicer(node, loop)


async def until(predicate, what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


def test_owned_batch_is_answered_by_its_callback_once_both_stages_are_done() -> None:
    answered = []
    batch = OwnedBatch([], 0, 0, answered.append)
    batch.stage_done()
    assert answered == []                 # the log writer or the applier, not both yet
    batch.stage_done()
    assert answered == [batch]
    reads = OwnedBatch([], 0, 0, answered.append, stages=1)
    reads.stage_done()
    assert answered == [batch, reads]


def test_replies_over_a_loop_wake_the_waiters_from_a_pipeline_thread() -> None:
    async def go():
        loop = asyncio.get_running_loop()
        replies = Replies.over(loop)
        r = Request(OP_READ, 1, b"1", b"", 1e18)
        r.waiter = loop.create_future()
        threading.Thread(target=replies.send, args=([r],)).start()
        assert await asyncio.wait_for(r.waiter, 10) is r
        done = Request(OP_READ, 2, b"2", b"", 1e18)
        done.waiter = loop.create_future()
        done.waiter.cancel()                # a receiver that gave up: left alone
        replies.deliver([done])

    run(go())


def test_servicer_answers_through_the_pipeline_the_log_and_the_reply_path(tmp_path) -> None:
    cfg = config_mod.load(write_config(tmp_path, 1, fsync="always"))

    async def go():
        node, kv = await served(cfg)
        ctx = FakeContext()
        try:
            reply = await kv.Create(pb.WriteRequest(key="042", value=b"v"), ctx)
            assert reply.node_index == 0 and reply.node_id == str(node.node_id)
            assert "created key 42" in reply.message
            assert (await kv.Read(pb.KeyRequest(key="42"), ctx)).value == b"v"
            with pytest.raises(Aborted) as missing:
                await kv.Read(pb.KeyRequest(key="7"), ctx)
            assert missing.value.code == grpc.StatusCode.NOT_FOUND
            batch = pb.BatchRequest()
            batch.ops.add(op=OP_UPDATE, key="42", value=b"w")
            batch.ops.add(op=OP_READ, key="42")
            batch.ops.add(op=OP_READ, key="x")
            out = await kv.Batch(batch, ctx)
            assert [r.code for r in out.results] == [OK, OK, INVALID_ARGUMENT]
            assert out.results[1].value == b"w"
            assert kv.admission.in_flight == 0
            # Answered only once durable: the log holds both mutations.
            assert node.durable_seq == node.seq == 2
        finally:
            await asyncio.get_running_loop().run_in_executor(None, node.stop, False)

    run(go())
    again = Node(cfg, 0)                  # a restart: the log holds both mutations
    report = again.recover()
    again.log.close()
    again.lock.release()
    assert report.records == 2 and dict(again.store.items()) == {42: b"w"}


def test_in_flight_limit_answers_resource_exhausted_while_a_request_is_held(tmp_path) -> None:
    cfg = config_mod.load(write_config(tmp_path, 1, limits={"max_in_flight": 1}))

    async def go():
        node, kv = await served(cfg, held(hold="77:0.5"))
        ctx = FakeContext()
        try:
            slow = asyncio.ensure_future(kv.Read(pb.KeyRequest(key="77"), ctx))
            await until(lambda: kv.admission.in_flight == 1, "the held read to be in flight")
            with pytest.raises(Aborted) as refused:
                await kv.Create(pb.WriteRequest(key="5", value=b"x"), ctx)
            assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "max_in_flight" in refused.value.details
            with pytest.raises(Aborted) as answered:
                await slow
            assert answered.value.code == grpc.StatusCode.NOT_FOUND   # its real answer
            await kv.Create(pb.WriteRequest(key="5", value=b"x"), ctx)   # work resumes
        finally:
            await asyncio.get_running_loop().run_in_executor(None, node.stop, False)

    run(go())


def test_fail_stopped_node_refuses_in_the_servicer_before_the_pipeline(tmp_path) -> None:
    cfg = config_mod.load(write_config(tmp_path, 1))

    async def go():
        node, kv = await served(cfg)
        try:
            node.fail("log: cannot write log.0: No space left on device")
            with pytest.raises(Aborted) as refused:
                await kv.Read(pb.KeyRequest(key="1"), FakeContext())
            assert refused.value.code == grpc.StatusCode.UNAVAILABLE
            assert "No space left" in refused.value.details
        finally:
            await asyncio.get_running_loop().run_in_executor(None, node.stop, False)

    run(go())


def test_admission_opens_with_the_gate_and_stays_shut_once_the_node_failed(tmp_path) -> None:
    cfg = config_mod.load(write_config(tmp_path, 1))
    node = Node(cfg, 0)
    gate = ReadinessGate(node.label)
    admission = Admission(node, gate)
    assert not admission.open                 # recovering
    gate.open()
    assert admission.open
    node.fail("log: cannot write log.0: No space left on device")
    assert not admission.open
    late = ReadinessGate(node.label)          # failed before its gate opened
    shut = Admission(node, late)
    late.open()
    assert not shut.open

    async def refused():
        with pytest.raises(Aborted) as e:
            await shut.refuse(FakeContext())
        return e.value

    why = run(refused())
    assert why.code == grpc.StatusCode.UNAVAILABLE and "No space left" in why.details


def test_scan_count_and_snapshot_markers_come_back_by_the_reply_path(tmp_path) -> None:
    cfg = config_mod.load(write_config(tmp_path, 1))

    async def go():
        loop = asyncio.get_running_loop()
        over = Replies.over(loop)
        sent: list[str] = []

        def send(items) -> None:
            sent.extend(type(x).__name__ for x in items)
            over.send(items)

        node = Node(cfg, 0, Replies(send, over.deliver))
        await loop.run_in_executor(None, node.recover)
        node.start()
        kv = KeyValueServicer(node, loop)
        admin = AdminServicer(node, loop, kv.admission)   # one Admission, as server.py
        ctx = FakeContext()
        try:
            await kv.Create(pb.WriteRequest(key="5", value=b"v"), ctx)
            assert (await kv.Count(pb.CountRequest(), ctx)).keys == 1
            pages = [p async for p in kv.Scan(pb.ScanRequest(), ctx)]
            assert [(e.key, e.value) for p in pages for e in p.entries] == [("5", b"v")]
            snap = await admin.TakeSnapshot(pb.SnapshotRequest(), ctx)
            assert snap.counter == 1 and snap.keys == 1
            assert sent == ["Request", "ReadMarker", "ReadMarker", "SnapshotMarker"]
            assert (await admin.Status(pb.StatusRequest(), ctx)).in_flight == 0
        finally:
            await loop.run_in_executor(None, node.stop, False)

    run(go())


class SlowReplay(Node):
    """Recovers only once ``release`` is set: the node stays "recovering"."""

    release = threading.Event()

    def recover(self):
        assert self.release.wait(30), "the test never released the replay"
        return Node.recover(self)


def test_node_server_in_process_refuses_while_recovering_then_serves(tmp_path) -> None:
    cfg = config_mod.load(write_config(tmp_path, 1))
    release = threading.Event()
    node_class = type("Slow", (SlowReplay,), {"release": release})

    async def go():
        ns = NodeServer(cfg, 0, node_class)
        starting = asyncio.ensure_future(ns.start())
        try:
            async with grpc.aio.insecure_channel(cfg.nodes[0].address) as ch:
                health = health_pb2_grpc.HealthStub(ch)
                got = await health.Check(health_pb2.HealthCheckRequest(service=""),
                                         timeout=20, wait_for_ready=True)
                assert got.status == health_pb2.HealthCheckResponse.NOT_SERVING
                kv = pb_grpc.KeyValueStub(ch)
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await kv.Read(pb.KeyRequest(key="1"), timeout=10)
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
                assert "recovering" in refused.value.details()
                release.set()
                await starting
                got = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
                assert got.status == health_pb2.HealthCheckResponse.SERVING
                await kv.Create(pb.WriteRequest(key="1", value=b"one"), timeout=10)
                assert (await kv.Read(pb.KeyRequest(key="1"), timeout=10)).value == b"one"
        finally:
            release.set()
            if not starting.done():
                await asyncio.wait([starting], timeout=30)
            await ns.stop(grace=1)

    run(go())


def test_router_forwards_between_two_in_process_servers(tmp_path) -> None:
    cfg = config_mod.load(write_config(tmp_path, 2))

    async def go():
        servers = [NodeServer(cfg, i) for i in range(2)]
        for ns in servers:
            await ns.start()
        try:
            owner = servers[1].node
            key = next(k for k in range(100) if owner.ring.owner(k) == 1)
            async with grpc.aio.insecure_channel(cfg.nodes[0].address) as ch:
                kv = pb_grpc.KeyValueStub(ch)
                await kv.Create(pb.WriteRequest(key=str(key), value=b"far"), timeout=10)
                reply = await kv.Read(pb.KeyRequest(key=str(key), trace=True), timeout=10)
            assert reply.value == b"far" and reply.node_index == 1
            assert list(reply.route) == [str(servers[0].node.node_id), str(owner.node_id)]
            assert servers[0].node.metrics.forwarded == 2
            assert len(owner.store) == 1 and len(servers[0].node.store) == 0
        finally:
            for ns in servers:
                await ns.stop(grace=1)

    run(go())
