"""The Python API when messages grow large or nodes go away, against real nodes.

Coalesced operations and batch() never build a Batch a node cannot take or
answer (protocol.BatchFit); batch() and asyncio's entry route go on through
another node when the entry node dies; a channel replaced under a thread is
never reported as the client being closed.
"""

from __future__ import annotations

import asyncio
import signal
import threading

import chordctl
from chordctl import ChordError, aio
from chordctl.client import Client
from chordctl.core.ring import Ring
from chordctl.protocol import OP_CREATE, OP_READ, REPLY_LIMIT, BatchFit, message_limit
from chordctl.pb import chord_pb2 as pb

MIB = 1024 * 1024


# -- protocol.BatchFit -------------------------------------------------------------

def test_batch_fit_keeps_a_request_and_its_reply_within_what_a_node_takes() -> None:
    fit = BatchFit(MIB, 10_000)
    writes = [pb.Operation(op=OP_CREATE, key=str(k), value=b"v" * MIB) for k in range(60)]
    runs = fit.runs(writes)
    assert [e - s for s, e in runs] == [17, 17, 17, 9]
    for s, e in runs:
        assert pb.BatchRequest(ops=writes[s:e]).ByteSize() <= message_limit(MIB)
    reads = [pb.Operation(op=OP_READ, key=str(k)) for k in range(600)]
    runs = fit.runs(reads)                      # each may answer with a 1 MiB value
    assert len(runs) == 3 and all((e - s) * MIB < REPLY_LIMIT for s, e in runs)
    # Small values: only max_batch_ops cuts; one op of the largest value always goes.
    small = BatchFit(4096, 100)
    assert small.runs([pb.Operation(op=OP_READ, key="1")] * 250) == [(0, 100), (100, 200),
                                                                     (200, 250)]
    huge = [pb.Operation(op=OP_CREATE, key="1", value=b"v" * MIB)]
    assert fit.runs(huge) == [(0, 1)] and fit.runs([]) == []


def test_large_values_coalesced_or_batched_each_get_their_own_result(make_cluster) -> None:
    """24 threads writing then reading 1 MiB values (the default limit) through
    one coalescing client, and batch() of 20 of them: every operation gets
    the result it would get alone. Before, the lane packed them into one
    Batch of 24 MiB, over the node's 18 MiB limit, and 23 of 24 failed."""
    cluster = make_cluster(1)
    big = [bytes([65 + i]) * MIB for i in range(24)]
    with chordctl.connect(cluster.config_path) as db:
        errors: list = []
        got: dict[int, bytes] = {}

        def run(fn) -> None:
            threads = [threading.Thread(target=fn, args=(i,)) for i in range(24)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)

        def create(i: int) -> None:
            try:
                db.create(1000 + i, big[i])
            except ChordError as e:
                errors.append(e)

        def read(i: int) -> None:
            try:
                got[i] = db.read(1000 + i).value
            except ChordError as e:
                errors.append(e)

        run(create)
        run(read)
        assert errors == []
        assert got == dict(enumerate(big))
        results = db.batch([("create", 2000 + i, big[i]) for i in range(20)])
        assert [type(r).__name__ for r in results] == ["Result"] * 20
        results = db.batch([("read", 2000 + i, None) for i in range(20)])
        assert [r.value for r in results] == big[:20]

    async def via_aio() -> list[bytes]:
        async with await aio.connect(cluster.config_path) as adb:
            await asyncio.gather(*(adb.update(1000 + i, big[23 - i]) for i in range(24)))
            return [r.value for r in await asyncio.gather(
                *(adb.read(1000 + i) for i in range(24)))]

    assert asyncio.run(via_aio()) == big[::-1]


def test_batch_with_a_create_without_a_value_is_refused_for_that_operation(make_cluster):
    cluster = make_cluster(1)
    with chordctl.connect(cluster.config_path) as db:
        r = db.batch([("create", 911, None), ("create", 912, b"x")])
        assert type(r[0]).__name__ == "InvalidInputError" and "needs a value" in str(r[0])
        assert r[1].message
        assert type(db.batch([("read", 911, None)])[0]).__name__ == "NotFoundError"


# -- the entry node dies ------------------------------------------------------------

def test_batch_and_asyncio_go_on_through_another_node_when_the_entry_node_dies(
        make_cluster) -> None:
    """batch() had no retry at all, and asyncio's entry route reopened only
    the dead node's address (then called its lane's channel "closed" for
    good): both now move to the next node that answers, as single
    operations of the sync client do."""
    cluster = make_cluster(3)
    ring = Ring.from_config(cluster.config)
    keys = [k for k in range(0, 60000, 997) if ring.owner(k) != 0]   # node 0 is killed
    with chordctl.connect(cluster.config_path, route="entry") as db:
        assert db.address == cluster.address(0)
        assert all(type(r).__name__ == "Result"
                   for r in db.batch([("create", k, b"v") for k in keys]))

        async def before() -> aio.AsyncClient:
            return await aio.connect(cluster.config_path, route="entry")

        loop = asyncio.new_event_loop()
        try:
            adb = loop.run_until_complete(before())
            assert adb.address == cluster.address(0)
            cluster.nodes[0].kill(signal.SIGKILL)
            results = db.batch([("read", k, None) for k in keys])
            assert [getattr(r, "value", r) for r in results] == [b"v"] * len(keys)
            assert db.address != cluster.address(0)

            async def after() -> list:
                out = [await adb.read(keys[0])]                     # a lane, coalesced
                out += await adb.batch([("update", k, b"w") for k in keys])
                out += await asyncio.gather(*(adb.read(k) for k in keys))  # the lane again
                return out

            out = loop.run_until_complete(after())
            assert [type(o).__name__ for o in out] == ["Result"] * len(out), out[:3]
            assert [o.value for o in out[-len(keys):]] == [b"w"] * len(keys)
            assert adb.address != cluster.address(0)
            loop.run_until_complete(adb.close())
        finally:
            loop.close()


def test_a_channel_replaced_under_a_caller_is_never_called_closed(make_cluster) -> None:
    """A thread still holding a channel that another thread's reopen replaced
    (and that is then closed) gets its call sent on the current channel, not
    "this client is closed" (InvalidInputError, exit 2 in the CLI)."""
    cluster = make_cluster(3, replicas=1)
    for coalesce in (False, True):
        c = Client(cluster.config, coalesce=coalesce, route="direct")
        try:
            c.create(str(7 + coalesce), b"v")
            owner = c._ring.owner(7 + coalesce)
            stale = c._node_stubs[owner]
            channel = c._node_channels[owner]
            c.reopen(owner, stale)              # another thread's retry replaced it
            channel.close()                     # ... and its close came
            if coalesce:
                lane = c._lanes[owner]
                lane.stub = stale               # that lane still holds the old one
            assert c.read(str(7 + coalesce)).value == b"v"
            assert not c.closed
        finally:
            c.close()


def test_scan_refuses_a_limit_or_page_size_that_is_not_a_whole_number() -> None:
    """Before, -1 listed nothing, -5 and page_size=-1 raised protobuf's
    ValueError, 2.5 and '3' a TypeError: never a ChordError."""
    import pytest
    from chordctl import InvalidInputError
    c = Client(target="127.0.0.1:1")               # nothing is sent: refused first
    try:
        for bad in (-1, -5, 2.5, "3", True, None, 2 ** 64):
            with pytest.raises(InvalidInputError, match="limit"):
                c.scan(limit=bad)
        for bad in (-1, 1.5, 2 ** 32):
            with pytest.raises(InvalidInputError, match="page_size"):
                c.scan(page_size=bad)
    finally:
        c.close()

    async def via_aio() -> None:
        async with aio.AsyncClient(target="127.0.0.1:1") as db:
            with pytest.raises(InvalidInputError, match="limit"):
                await db.scan(limit=-1)

    asyncio.run(via_aio())


def test_a_coalesced_call_never_waits_past_its_own_timeout(make_cluster) -> None:
    """Calls queued behind a hung node's call, at staggered times: the one
    that leads the next batch waited longest, so the batch's deadline is
    the earliest of its calls'. Before it was the latest, and the leading
    caller waited up to twice its timeout."""
    import time
    cluster = make_cluster(1)
    node = cluster.nodes[0]
    timeout = 0.6
    took: list[float] = []
    with chordctl.connect(cluster.config_path, timeout=timeout) as db:
        db.create(1, b"v")
        node.kill(signal.SIGSTOP)
        try:
            def one() -> None:
                t0 = time.monotonic()
                try:
                    db.read(1)
                except ChordError:
                    pass
                took.append(time.monotonic() - t0)

            threads = []
            for _ in range(6):
                t = threading.Thread(target=one)
                t.start()
                threads.append(t)
                time.sleep(timeout / 5)
            for t in threads:
                t.join(10)
        finally:
            node.kill(signal.SIGCONT)
    assert len(took) == 6
    assert max(took) < timeout + 0.25, took


def test_a_stream_removed_by_closing_its_channel_is_said_in_our_words() -> None:
    from chordctl.client import error_for
    from chordctl.protocol import UNAVAILABLE
    for details in ("Channel closed!", "Stream removed (Channel closed!)"):
        e = error_for(UNAVAILABLE, details, "127.0.0.1:7")
        assert str(e).startswith("client: the connection to 127.0.0.1:7 was closed"), e


def test_a_coalesced_batch_holds_calls_of_close_deadlines_only() -> None:
    """A batch goes with its earliest deadline, so calls of very different
    timeouts never share one: a 1 ms call would cut a 5 s call short."""
    from chordctl.client import LaneBase

    class Op:
        def __init__(self, deadline, timeout):
            self.deadline, self.timeout = deadline, timeout

    cut = LaneBase.close_deadlines
    same = [Op(100 + i * 0.1, 5) for i in range(10)]        # one timeout, queued over 1 s
    assert cut(same, 10) == 10 and cut(same, 4) == 4
    mixed = [Op(105, 5), Op(105.1, 5), Op(100.001, 0.001), Op(105.2, 5)]
    assert cut(mixed, 4) == 2
    assert cut([Op(100.001, 0.001), Op(105, 5)], 2) == 1
    assert cut([Op(1, 1)], 1) == 1 and cut([], 0) == 0


# -- a node slow to finish a connection ----------------------------------------------

class _SlowHandshake:
    """A TCP proxy in front of a gRPC server that holds each new connection
    *delay* seconds before passing bytes on: a node too busy to answer a
    connection at once (starting, a loaded machine, a long round trip)."""

    def __init__(self, port: int, delay: float):
        import socket
        self.port, self.delay = port, delay
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.sockets: list = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.port))
            self.sockets += [client, upstream]
            threading.Thread(target=self._hold_then_pipe, args=(client, upstream),
                             daemon=True).start()

    def _hold_then_pipe(self, client, upstream) -> None:
        threading.Event().wait(self.delay)
        threading.Thread(target=self._pipe, args=(upstream, client), daemon=True).start()
        self._pipe(client, upstream)

    @staticmethod
    def _pipe(a, b) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass

    def close(self) -> None:
        self.listener.close()
        for s in self.sockets:
            s.close()


def test_a_node_slow_to_finish_a_connection_is_still_reached() -> None:
    """Every channel chordctl opens gives a connection attempt as long as a
    probe waits (security.CONNECT_ATTEMPT_MS), not gRPC's reconnect backoff:
    a node that answers a new connection only after 0.3 s is reached, by the
    sync and the asyncio channels, on the first call (it failed at once with
    "cannot connect (no answer)" when an attempt had 100 ms)."""
    from concurrent import futures

    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    from chordctl import security
    server = grpc.server(futures.ThreadPoolExecutor(2))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    proxy = _SlowHandshake(port, 0.3)
    try:
        with security.channel(None, proxy.address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING

        async def check() -> int:
            async with security.aio_channel(None, proxy.address) as channel:
                reply = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=10)
            return reply.status

        assert asyncio.run(check()) == health_pb2.HealthCheckResponse.SERVING
    finally:
        proxy.close()
        server.stop(None)
