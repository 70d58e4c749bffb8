"""BatchStream: coalesced batches as messages of one long-lived stream per lane.

The node serves each message exactly like a Batch call (servicer._batch), in
order, with the request's seq; a failure of one message is that reply's code
and the stream goes on; a stopping node ends its streams between messages.
The sync client sends batches of two or more on it, and keeps every
semantic of a Batch call: per-op results, deadlines, reopen after a restart,
a batch broken mid-flight failing as a Batch call does, and Batch calls again
for a node without BatchStream.

Every wait is bounded: a stranded caller fails its test, it never hangs it.
"""

from __future__ import annotations

import queue
import signal
import threading
import time
from concurrent import futures

import grpc
import pytest

import chordctl
from chordctl import ChordError, NotFoundError, Result, UnavailableError
from chordctl.client import Client, _Op
from chordctl.errors import InternalError
from chordctl.pb import chord_pb2 as pb
from chordctl.pb import chord_pb2_grpc as pb_grpc
import chordctl.protocol
from chordctl.protocol import DEADLINE_EXCEEDED, INVALID_ARGUMENT, OK
from conftest import Cluster, wait_until, write_config

JOIN = 10.0
THREADS = 16


def bounded(fn, *args):
    """fn(*args) on a thread, its outcome (or exception); fails the test if it hangs."""
    box: list = []

    def work():
        try:
            box.append(fn(*args))
        except BaseException as e:      # noqa: BLE001 - the outcome is what we test
            box.append(e)
    t = threading.Thread(target=work, daemon=True)
    t.start()
    t.join(JOIN)
    assert not t.is_alive(), f"{fn} did not return within {JOIN}s: a stranded caller"
    return box[0]


def ops(*specs, timeout: float = 5.0) -> list[_Op]:
    """A lane's batch: ("create", key, value) / ("read", key) tuples."""
    return [_Op(s[0], str(s[1]), s[2] if len(s) > 2 else None, False, timeout) for s in specs]


def open_stream(address: str):
    """(box, replies) of a raw BatchStream call to *address*."""
    channel = grpc.insecure_channel(address)
    box: queue.SimpleQueue = queue.SimpleQueue()
    replies = pb_grpc.KeyValueStub(channel).BatchStream(iter(box.get, None))
    return channel, box, replies


def read_op(key) -> pb.Operation:
    return pb.Operation(op=pb.READ, key=str(key))


@pytest.fixture(scope="module")
def ring(tmp_path_factory):
    c = Cluster(write_config(tmp_path_factory.mktemp("stream"), 2))
    c.start()
    yield c
    c.stop()


# -- the node's side ---------------------------------------------------------------------

def test_stream_message_failures_are_its_reply_and_the_stream_goes_on(make_cluster):
    """Over the batch limit, a malformed body and a message past its timeout_ms
    each get their own reply (with the seq); the next message is served on
    the same stream."""
    cluster = make_cluster(1, hold="7:3", limits={"max_batch_ops": 5})
    channel, box, replies = open_stream(cluster.address(0))
    try:
        box.put(pb.BatchRequest(seq=1, ops=[read_op(1), read_op(2)]))
        r = next(replies)
        assert (r.seq, r.code, [x.code for x in r.results]) == (1, OK, [5, 5])

        box.put(pb.BatchRequest(seq=2, ops=[read_op(i) for i in range(6)]))
        r = next(replies)
        assert (r.seq, r.code, len(r.results)) == (2, INVALID_ARGUMENT, 0)
        assert "limits.max_batch_ops" in r.message

        t0 = time.monotonic()
        box.put(pb.BatchRequest(seq=3, timeout_ms=300, ops=[
            pb.Operation(op=pb.CREATE, key="7", value=b"x"), read_op(8)]))   # 7 is held 3 s
        r = next(replies)
        waited = time.monotonic() - t0
        assert (r.seq, r.code, len(r.results)) == (3, DEADLINE_EXCEEDED, 0)
        assert r.message.startswith("node 0 ") and "300 ms" in r.message, r.message
        assert 0.25 < waited < 2.5, waited

        box.put(pb.BatchRequest(seq=4, ops=[read_op(8), read_op(9)]))
        r = next(replies)
        assert (r.seq, r.code, [x.code for x in r.results]) == (4, OK, [5, 5])
        assert replies.is_active()
    finally:
        box.put(None)
        channel.close()


def test_stream_message_to_a_recovering_node_is_unavailable_and_the_stream_goes_on(tmp_path):
    """The readiness gate refuses a message (not the stream): the next one,
    once the node is ready, is served on the same stream."""
    from chordctl.localcluster import wait_serving
    from conftest import NodeProc
    node = NodeProc(write_config(tmp_path, 1), 0, replay_delay=3).start(wait=False)
    channel = None
    box: queue.SimpleQueue = queue.SimpleQueue()
    try:
        channel = grpc.insecure_channel(node.address)
        wait_until(lambda: grpc.channel_ready_future(channel).result(timeout=JOIN) is None,
                   what="the node's port")
        replies = pb_grpc.KeyValueStub(channel).BatchStream(iter(box.get, None))
        box.put(pb.BatchRequest(seq=1, ops=[read_op(1), read_op(2)]))
        r = next(replies)
        assert (r.seq, r.code, len(r.results)) == (1, 14, 0), r     # UNAVAILABLE
        assert "recovering" in r.message
        wait_serving(node.address, node.proc, JOIN)
        box.put(pb.BatchRequest(seq=2, ops=[read_op(1), read_op(2)]))
        r = next(replies)
        assert (r.seq, r.code, [x.code for x in r.results]) == (2, OK, [5, 5])
    finally:
        box.put(None)
        if channel is not None:
            channel.close()
        node.stop()


def test_stream_malformed_message_is_invalid_argument_and_the_stream_goes_on(make_cluster):
    cluster = make_cluster(1)
    channel = grpc.insecure_channel(cluster.address(0))
    box: queue.SimpleQueue = queue.SimpleQueue()
    call = channel.stream_stream("/chord.v1.KeyValue/BatchStream")
    replies = call(iter(box.get, None))
    try:
        box.put(b"\xff\xff\xff")
        r = pb.BatchReply.FromString(next(replies))
        assert r.code == INVALID_ARGUMENT and "not a valid chord.v1.BatchRequest" in r.message
        box.put(pb.BatchRequest(seq=2, ops=[read_op(1), read_op(2)]).SerializeToString())
        r = pb.BatchReply.FromString(next(replies))
        assert (r.seq, r.code, len(r.results)) == (2, OK, 2)
    finally:
        box.put(None)
        channel.close()


def test_stopping_node_ends_its_streams_cleanly_between_messages(make_cluster):
    """SIGTERM: an idle stream ends with OK at once (not after the shutdown
    grace, not with CANCELLED), so a client knows nothing of it was lost."""
    cluster = make_cluster(1)
    channel, box, replies = open_stream(cluster.address(0))
    try:
        box.put(pb.BatchRequest(seq=1, ops=[read_op(1), read_op(2)]))
        assert next(replies).seq == 1
        t0 = time.monotonic()
        cluster.nodes[0].proc.send_signal(signal.SIGTERM)
        out = bounded(next, replies)
        assert isinstance(out, StopIteration), out
        # OK: ended by the node between messages (after the 2 s grace gRPC
        # would cancel it: CANCELLED or UNAVAILABLE, maybe with a reply lost)
        assert replies.code() == grpc.StatusCode.OK
        assert time.monotonic() - t0 < JOIN
        assert cluster.nodes[0].proc.wait(timeout=JOIN) == 0
    finally:
        box.put(None)
        channel.close()


# -- the sync client ---------------------------------------------------------------------

def test_stream_batches_give_exactly_the_outcomes_of_batch_calls_under_concurrency(ring):
    """16 threads, each a mixed sequence on its own keys (successes and every
    error kind): per-op outcomes identical with the stream lane and with
    Batch calls, and batches really went on streams."""
    def run(db) -> dict:
        barrier = threading.Barrier(THREADS, timeout=JOIN)
        out: dict = {}

        def work(t):
            got = out[t] = []
            barrier.wait()
            for i in range(12):
                k = t * 1000 + i * 37
                for op, value in (("create", b"a%d" % i), ("read", None), ("update", b"b%d" % t),
                                  ("read", None), ("create", b"x"), ("delete", None),
                                  ("read", None), ("update", b"y"), ("delete", None)):
                    try:
                        r = db.call(op, k, value)
                        got.append((op, r.key, r.value, r.node_index, r.message))
                    except ChordError as e:
                        got.append((op, k, type(e).__name__, str(e)))
        ts = [threading.Thread(target=work, args=(t,), daemon=True) for t in range(THREADS)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(JOIN * 3)
            assert not t.is_alive()
        return out

    cfg = chordctl.config.load(ring.config_path)
    with Client(cfg, route="direct", coalesce=True, stream=True) as a:
        streamed = run(a)
        stats = a.lane_stats()
        assert all(lane.streaming for lane in a._lanes.values())
        assert sum(len(lane.streams) for lane in a._lanes.values()) >= 1, "no stream was used"
    with Client(cfg, route="direct", coalesce=True, stream=False) as b:
        called = run(b)
    assert stats["batches"] < stats["operations"], stats
    assert streamed == called
    assert sum(len(v) for v in streamed.values()) == THREADS * 12 * 9


@pytest.mark.parametrize("route", ["direct", "entry"])
def test_stream_batch_to_a_stopped_node_fails_within_its_timeout_then_works(make_cluster,
                                                                            route):
    """SIGSTOP: the node cannot answer even the expired message; the client's
    watchdog ends the wait at the deadline (DEADLINE_EXCEEDED, as a Batch
    call), and after SIGCONT the lane works again on a fresh stream."""
    timeout = 0.5
    cluster = make_cluster(1, timeout=timeout)
    node = cluster.nodes[0]
    with chordctl.connect(cluster.config_path, route=route, stream=True) as db:
        lane = db._lane("1")
        assert all(isinstance(o, NotFoundError) for o in lane._send_stream(ops(("read", 1),
                                                                               ("read", 2))))
        [first] = lane.streams
        node.kill(signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            outs = bounded(lane._send_stream, ops(("read", 3), ("read", 4), timeout=timeout))
            waited = time.monotonic() - t0
        finally:
            node.kill(signal.SIGCONT)
        assert [type(o) for o in outs] == [chordctl.DeadlineExceededError] * 2, outs
        assert "no reply from" in str(outs[0]) and "0.5s" in str(outs[0]), outs[0]
        assert timeout * 0.9 < waited < timeout + 1.0, waited
        outs = bounded(lane._send_stream, ops(("create", 5, b"v"), ("read", 5)))
        assert [type(o) for o in outs] == [Result, Result] and outs[1].value == b"v", outs
        assert lane.streams and lane.streams[0] is not first


@pytest.mark.parametrize("timeout", [1e9, 1e7])
def test_stream_batch_with_a_huge_timeout_is_sent(ring, timeout):
    """timeout_ms is a uint32: past ~49 days it is capped, not a ValueError
    out of the lane (1e9 s is what an infinite timeout becomes)."""
    with chordctl.connect(ring.config_path, route="direct", timeout=timeout, stream=True) as db:
        lane = db._lane("1")
        outs = lane._send_stream(ops(("read", 1), ("read", 2), timeout=timeout))
        assert [type(o) for o in outs] == [NotFoundError] * 2, outs


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_node_restart_between_batches_reopens_the_stream(make_cluster, sig):
    """The stream of a node that stopped (cleanly or killed) and came back is
    found ended at the next batch, which goes on a new one, applied once."""
    cluster = make_cluster(1)
    node = cluster.nodes[0]
    with chordctl.connect(cluster.config_path, route="direct", stream=True) as db:
        lane = db._lane("1")
        outs = lane._send_stream(ops(("create", 1, b"a"), ("create", 2, b"b")))
        assert [type(o) for o in outs] == [Result, Result], outs
        [old] = lane.streams
        node.kill(sig)
        node.start()
        outs = bounded(lane._send_stream, ops(("create", 3, b"c"), ("create", 4, b"d"),
                                              ("read", 1)))
        assert [type(o) for o in outs] == [Result, Result, Result], outs
        assert outs[2].value == b"a"
        assert lane.streams and lane.streams[0] is not old
        # and the public path after the restart, from many threads
        got = []
        ts = [threading.Thread(target=lambda k=k: got.append(bounded(db.read, k)), daemon=True)
              for k in (1, 2, 3, 4) * 4]
        for t in ts:
            t.start()
        for t in ts:
            t.join(JOIN)
        assert sorted(r.value for r in got) == sorted([b"a", b"b", b"c", b"d"] * 4), got


def test_stream_broken_mid_flight_fails_like_a_batch_call_and_is_not_retried(make_cluster):
    """The node is killed while the message is in its pipeline (held): the
    caller gets "lost the connection ... before the reply", at once, not a
    hang and not a silent second send."""
    cluster = make_cluster(1, hold="7:5", timeout=8)
    node = cluster.nodes[0]
    with chordctl.connect(cluster.config_path, route="direct", stream=True) as db:
        lane = db._lane("1")
        result: list = []
        t = threading.Thread(target=lambda: result.append(
            lane._send_stream(ops(("create", 7, b"x"), ("read", 8)))), daemon=True)
        t.start()
        wait_until(lambda: db.status().in_flight >= 2, what="the batch held in the node")
        t0 = time.monotonic()
        node.kill(signal.SIGKILL)
        t.join(JOIN)
        assert not t.is_alive(), "the caller hung"
        assert time.monotonic() - t0 < 3.0
        [outs] = result
        assert [type(o) for o in outs] == [UnavailableError] * 2, outs
        assert "lost the connection to" in str(outs[0]) or "closed" in str(outs[0]), outs[0]
        assert not lane.streams     # that stream is gone
        node.hold = None
        node.start()
        assert [type(o) for o in bounded(lane._send_stream, ops(("read", 7), ("read", 8)))] \
            == [NotFoundError] * 2     # the create never ran, and was not sent again


def test_ctrl_c_while_waiting_on_a_stream_drops_that_stream(make_cluster):
    """KeyboardInterrupt in the thread waiting for a stream's reply: it leaves
    at once, and the late reply can never be taken for the next batch's:
    that stream is dropped, the next batch goes on a new one."""
    import ctypes
    cluster = make_cluster(1, hold="7:3")
    with chordctl.connect(cluster.config_path, route="direct", stream=True) as db:
        lane = db._lane("1")
        result: list = []

        def lead():
            try:
                result.append(lane._send_stream(ops(("read", 7), ("read", 8))))
            except BaseException as e:      # noqa: BLE001 - the outcome is what we test
                result.append(e)
        t = threading.Thread(target=lead, daemon=True)
        t.start()
        wait_until(lambda: db.status().in_flight >= 2, what="the batch held in the node")
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(t.ident),
                                                   ctypes.py_object(KeyboardInterrupt))
        t.join(JOIN)
        assert not t.is_alive() and isinstance(result[0], KeyboardInterrupt), result
        assert lane.streams == []
        t0 = time.monotonic()
        outs = bounded(lane._send_stream, ops(("read", 8), ("read", 9)))
        assert [type(o) for o in outs] == [NotFoundError] * 2, outs
        assert time.monotonic() - t0 < 2.0      # not behind the held reply


# -- fake nodes: no BatchStream, a stream ending early, a wrong seq ----------------------

class FakeKeyValue(pb_grpc.KeyValueServicer):
    """Batch answers NOT_FOUND for every op; BatchStream as *stream* says."""

    def __init__(self, stream=None):
        self.batch_calls = 0
        self.messages = 0
        self.streams = 0
        self.stream = stream

    def Batch(self, request, context):
        self.batch_calls += 1
        return not_found(request)

    def Read(self, request, context):       # a lone op: its unary call
        context.abort(grpc.StatusCode.NOT_FOUND, f"node 0 (id 1): key {request.key} not found")

    def BatchStream(self, request_iterator, context):
        if self.stream is None:
            return super().BatchStream(request_iterator, context)
        self.streams += 1
        return self.stream(self, request_iterator)


def not_found(request, seq: int = 0) -> pb.BatchReply:
    return pb.BatchReply(seq=seq, results=[
        pb.Result(code=5, message=f"node 0 (id 1): key {o.key} not found", node_id="1")
        for o in request.ops])


@pytest.fixture
def fake_node():
    servers = []

    def start(servicer) -> str:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        pb_grpc.add_KeyValueServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return f"127.0.0.1:{port}"
    yield start
    for s in servers:
        s.stop(None)


def test_node_without_batchstream_gets_batch_calls_for_that_lane(fake_node):
    """An older node answers BatchStream with UNIMPLEMENTED: the batch goes
    as a Batch call instead, and so does every later one of that lane."""
    fake = FakeKeyValue()
    address = fake_node(fake)
    with Client(target=address, coalesce=True, stream=True) as db:
        lane = db._lane("1")
        outs = bounded(lane._send_blocking, ops(("read", 1), ("read", 2)))
        assert [type(o) for o in outs] == [NotFoundError] * 2, outs
        assert "key 1 not found" in str(outs[0])
        assert (fake.batch_calls, lane.streaming, lane.streams) == (1, False, [])
        bounded(lane._send_blocking, ops(("read", 3), ("read", 4)))
        assert fake.batch_calls == 2
        # and through the public path, many threads at once
        got = []
        ts = [threading.Thread(target=lambda k=k: got.append(bounded(db.read, k)), daemon=True)
              for k in range(16)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(JOIN)
        assert len(got) == 16 and all(isinstance(o, NotFoundError) for o in got), got


def test_stream_ended_before_reading_the_batch_is_sent_again(fake_node):
    """A stream the node ended with OK without answering (it stops between
    messages) never read the batch: it goes again on a new stream, once."""
    def serve(fake, requests):
        if fake.streams == 1:
            return      # ends at once, OK, reading nothing
        for request in requests:
            fake.messages += 1
            yield not_found(request, request.seq)

    fake = FakeKeyValue(serve)
    with Client(target=fake_node(fake), coalesce=True, stream=True) as db:
        lane = db._lane("1")
        outs = bounded(lane._send_stream, ops(("read", 1), ("read", 2)))
        assert [type(o) for o in outs] == [NotFoundError] * 2, outs
        assert (fake.streams, fake.messages, fake.batch_calls) == (2, 1, 0)


def test_stream_reply_with_another_seq_fails_the_batch_and_drops_the_stream(fake_node):
    def serve(fake, requests):
        for request in requests:
            fake.messages += 1
            yield not_found(request, request.seq + 1)

    fake = FakeKeyValue(serve)
    with Client(target=fake_node(fake), coalesce=True, stream=True) as db:
        lane = db._lane("1")
        outs = bounded(lane._send_stream, ops(("read", 1), ("read", 2)))
        assert [type(o) for o in outs] == [InternalError] * 2, outs
        assert "answered message 2 of the stream for message 1" in str(outs[0])
        assert lane.streams == []


def test_close_ends_the_idle_streams(ring):
    before = threading.active_count()
    db = chordctl.connect(ring.config_path, route="direct", stream=True)
    for key in range(8):
        db._lane(str(key))._send_stream(ops(("read", key), ("read", key + 1)))
    assert sum(len(lane.streams) for lane in db._lanes.values()) >= 1
    db.close()
    wait_until(lambda: threading.active_count() <= before + 1,
               what="gRPC's request-reading threads gone after close()")


# -- the asyncio client ------------------------------------------------------------------

def aio_ops(*specs, timeout: float = 5.0):
    from chordctl.aio import _Op as AioOp
    out = []
    for s in specs:
        value = s[2] if len(s) > 2 else b""
        msg = pb.Operation(op=chordctl.protocol.OPS[s[0]], key=str(s[1]), value=value)
        out.append(AioOp(msg, s[0], str(s[1]), timeout, None))
    return out


def run_async(coro):
    import asyncio
    return asyncio.run(asyncio.wait_for(coro, JOIN * 3))


def test_aio_stream_batches_give_exactly_the_outcomes_of_batch_calls(ring):
    import asyncio

    from chordctl.aio import AsyncClient

    async def run(db) -> dict:
        out: dict = {}

        async def work(t):
            got = out[t] = []
            for i in range(8):
                k = 10**5 + t * 1000 + i * 37
                for op, value in (("create", b"a%d" % i), ("read", None), ("update", b"b%d" % t),
                                  ("read", None), ("create", b"x"), ("delete", None),
                                  ("read", None), ("delete", None)):
                    try:
                        r = await db.call(op, k, value)
                        got.append((op, r.key, r.value, r.node_index, r.message))
                    except ChordError as e:
                        got.append((op, k, type(e).__name__, str(e)))
        await asyncio.gather(*(work(t) for t in range(32)))
        return out

    async def main():
        cfg = chordctl.config.load(ring.config_path)
        results = []
        for stream in (True, False):
            db = AsyncClient(cfg, route="direct", coalesce=True, stream=stream)
            await db.connect()
            try:
                results.append(await run(db))
                if stream:
                    assert sum(len(lane.streams) for lane in db._lanes.values()) >= 1
                    assert db.lane_stats()["batches"] < db.lane_stats()["operations"]
            finally:
                await db.close()
        return results
    streamed, called = run_async(main())
    assert streamed == called


def test_aio_stream_to_a_stopped_node_fails_within_its_timeout_then_works(make_cluster):
    import chordctl.aio
    timeout = 0.5
    cluster = make_cluster(1, timeout=timeout)
    node = cluster.nodes[0]

    async def main():
        async with await chordctl.aio.connect(cluster.config_path) as db:
            lane = db._lane("1")
            outs = await lane._send_stream(aio_ops(("read", 1), ("read", 2)))
            assert [type(o) for o in outs] == [NotFoundError] * 2, outs
            [first] = lane.streams
            node.kill(signal.SIGSTOP)
            try:
                t0 = time.monotonic()
                outs = await lane._send_stream(aio_ops(("read", 3), ("read", 4),
                                                       timeout=timeout))
                waited = time.monotonic() - t0
            finally:
                node.kill(signal.SIGCONT)
            assert [type(o) for o in outs] == [chordctl.DeadlineExceededError] * 2, outs
            assert timeout * 0.9 < waited < timeout + 1.0, waited
            outs = await lane._send_stream(aio_ops(("create", 5, b"v"), ("read", 5)))
            assert [type(o) for o in outs] == [Result, Result] and outs[1].value == b"v", outs
            assert lane.streams and lane.streams[0] is not first
            # a node restart between batches: a new stream, the batch applied once
            node.kill(signal.SIGKILL)
            node.start()
            outs = await lane._send_stream(aio_ops(("create", 6, b"w"), ("read", 6)))
            assert [type(o) for o in outs] == [Result, Result] and outs[1].value == b"w", outs
    run_async(main())


def test_aio_node_without_batchstream_gets_batch_calls(fake_node):
    from chordctl.aio import AsyncClient
    fake = FakeKeyValue()
    address = fake_node(fake)

    async def main():
        db = AsyncClient(target=address, coalesce=True, stream=True)
        await db.connect()
        try:
            lane = db._lane("1")
            outs = await lane._send(aio_ops(("read", 1), ("read", 2)))
            assert [type(o) for o in outs] == [NotFoundError] * 2, outs
            assert (fake.batch_calls, lane.streaming) == (1, False)
            await lane._send(aio_ops(("read", 3), ("read", 4)))
            assert fake.batch_calls == 2
        finally:
            await db.close()
    run_async(main())
