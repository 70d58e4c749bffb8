"""One real node driven through chordctl.client.Client: CRUD, ordering, batches,
what is logged, shutdown and every fsync policy."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import NodeProc, write_config
from chordctl.client import Client, Result
from chordctl.core.storage import records
from chordctl.errors import (AlreadyExistsError, InvalidInputError, NotFoundError,
                             UnavailableError)

NODE_ID = str(2**16 - 1)
MAX_VALUE = 1024
THREADS = 10
BARRIER_TIMEOUT = 30


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    d = tmp_path_factory.mktemp("node_single")
    path = write_config(d, 1, limits={"max_value_bytes": MAX_VALUE})
    n = NodeProc(path, 0).start()
    yield n
    assert n.stop() == 0, n.log()


@pytest.fixture
def client(node):
    with Client(node.config) as c:
        yield c


def log0(node: NodeProc) -> str:
    return os.path.join(node.config.node_dir(0), "log.0")


# -- suites shared by the single-client and the parallel tests ----------------------


def crud_ok(c: Client, key: str) -> None:
    r = c.create(key, b"first")
    assert isinstance(r, Result) and (r.op, r.key) == ("create", key)
    assert (r.node_index, r.node_id) == (0, NODE_ID)
    assert c.read(key).value == b"first"
    c.update(key, b"second")
    assert c.read(key).value == b"second"
    c.delete(key)
    with pytest.raises(NotFoundError):
        c.read(key)


def crud_nok(c: Client, key: str, missing: str) -> None:
    c.create(key, b"original")
    with pytest.raises(AlreadyExistsError, match=rf"\bkey {key}\b"):
        c.create(key, b"intruder")
    assert c.read(key).value == b"original"
    for op in ("read", "update", "delete"):
        with pytest.raises(NotFoundError, match=rf"\bkey {missing}\b"):
            c.call(op, missing, b"x" if op == "update" else None)
    with pytest.raises(NotFoundError):
        c.read(missing)                      # the failed update did not create it
    c.delete(key)
    for op in ("update", "delete"):
        with pytest.raises(NotFoundError):
            c.call(op, key, b"x" if op == "update" else None)


def ordered_updates(c: Client, key: str, steps: int) -> None:
    c.create(key, b"1")
    for i in range(steps):
        value = c.read(key).value
        assert value == str(i + 1).encode(), (key, i, value)
        c.update(key, str(int(value) + 1).encode())
    assert c.read(key).value == str(steps + 1).encode()


def in_parallel(node: NodeProc, job, n: int = THREADS) -> None:
    """Run job(client, i) in n threads, each with its own Client, started together."""
    barrier = threading.Barrier(n)

    def run(i: int) -> None:
        with Client(node.config) as c:
            c.connect()
            barrier.wait(BARRIER_TIMEOUT)
            job(c, i)

    with ThreadPoolExecutor(n) as pool:
        futures = [pool.submit(run, i) for i in range(n)]
        for f in futures:
            f.result(timeout=120)


# -- one client -------------------------------------------------------------------


def test_crud_ok(client):
    crud_ok(client, "1000")


def test_crud_failures_change_nothing(client):
    crud_nok(client, "1100", "1101")


def test_bad_key_or_value_is_invalid_argument(client):
    for key in ("-5", "abc", "1.5", ""):
        with pytest.raises(InvalidInputError):
            client.read(key)
    with pytest.raises(InvalidInputError, match="limits.max_value_bytes"):
        client.create("1150", b"x" * (MAX_VALUE + 1))
    with pytest.raises(NotFoundError):
        client.read("1150")


def test_sequential_read_then_update_sees_every_step(client):
    ordered_updates(client, "1200", 1000)


# -- ten clients at once, on distinct keys ------------------------------------------


def test_parallel_clients_crud_ok(node):
    in_parallel(node, lambda c, i: crud_ok(c, str(2000 + i)))


def test_parallel_clients_crud_failures(node):
    in_parallel(node, lambda c, i: crud_nok(c, str(2100 + i), str(2200 + i)))


def test_parallel_clients_ordered_updates(node):
    in_parallel(node, lambda c, i: ordered_updates(c, str(2300 + i), 200))
    with Client(node.config) as c:
        assert [c.read(str(2300 + i)).value for i in range(THREADS)] == [b"201"] * THREADS


# -- Batch ---------------------------------------------------------------------------


def test_batch_applies_in_order_with_per_op_errors(client):
    k, missing = "3000", "3001"
    client.create("3002", b"exists")
    ops = [
        ("create", k, b"a"),
        ("update", k, b"b"),
        ("read", k, None),                    # sees the update just before it
        ("create", k, b"c"),                  # ALREADY_EXISTS
        ("read", "-1", None),                 # INVALID_ARGUMENT, the rest still runs
        ("read", missing, None),              # NOT_FOUND
        ("update", missing, b"x"),            # NOT_FOUND
        ("delete", missing, None),            # NOT_FOUND
        ("create", "abc", b"x"),              # INVALID_ARGUMENT
        ("create", "3003", b"y" * (MAX_VALUE + 1)),  # INVALID_ARGUMENT (value too big)
        ("create", "3002", b"again"),         # ALREADY_EXISTS
        ("delete", k, None),
        ("read", k, None),                    # NOT_FOUND: deleted just before
        ("create", k, b"d"),
        ("read", k, None),
    ]
    results = client.batch(ops)
    kinds = [type(r) for r in results]
    assert kinds == [Result, Result, Result, AlreadyExistsError, InvalidInputError,
                     NotFoundError, NotFoundError, NotFoundError, InvalidInputError,
                     InvalidInputError, AlreadyExistsError, Result, NotFoundError,
                     Result, Result]
    for (op, key, _), r in zip(ops, results):
        if isinstance(r, Result):
            assert (r.op, r.key, r.node_index, r.node_id) == (op, key, 0, NODE_ID)
    assert results[2].value == b"b"
    assert results[14].value == b"d"
    assert "negative" in str(results[4])
    assert "3001" in str(results[5])
    assert client.read(k).value == b"d"
    assert client.read("3002").value == b"exists"
    for key in (missing, "3003"):
        with pytest.raises(NotFoundError):
            client.read(key)


def test_batch_of_only_bad_ops_answers_each(client):
    results = client.batch([("read", "-1", None), ("update", "x", b"v")])
    assert [type(r) for r in results] == [InvalidInputError, InvalidInputError]


def test_batch_fast_and_slow_paths_refuse_in_the_words_of_protocol_validate(client):
    """An unknown op or an oversized value gets protocol.validate's message,
    whether the key is plain (the inlined fast path) or not (traced, "0...")."""
    from chordctl import protocol
    from chordctl.config import LimitsConfig
    from chordctl.pb import chord_pb2 as pb
    limits = LimitsConfig(max_value_bytes=MAX_VALUE)
    big = b"y" * (MAX_VALUE + 1)
    cases = [(0, "3100", b"", False), (7, "3101", b"", False), (7, "03102", b"", False),
             (1, "3103", big, False), (3, "3104", big, True), (1, "03105", big, False)]
    client.connect()
    reply = client._kv.Batch(pb.BatchRequest(ops=[
        pb.Operation(op=op, key=key, value=value, trace=trace)
        for op, key, value, trace in cases]), timeout=10)
    for (op, key, value, _), res in zip(cases, reply.results):
        with pytest.raises(InvalidInputError) as expected:
            protocol.validate(op, key, value, limits)
        assert (res.code, res.message) == (protocol.INVALID_ARGUMENT, str(expected.value))
        assert (res.node_index, res.node_id) == (0, NODE_ID)


# -- what is logged ------------------------------------------------------------------


def test_reads_are_not_logged(client, node):
    client.create("4000", b"logged")
    path = log0(node)
    before = os.path.getsize(path)
    assert before > 0
    last_seq = client.status().last_seq
    for i in range(300):
        assert client.read("4000").value == b"logged"
        with pytest.raises(NotFoundError):
            client.read(str(4001 + i))
    results = client.batch([("read", "4000", None)] * 200)
    assert all(isinstance(r, Result) and r.value == b"logged" for r in results)
    assert os.path.getsize(path) == before
    assert client.status().last_seq == last_seq
    # The measurement can fail: one mutation does grow the log.
    client.update("4000", b"changed")
    assert os.path.getsize(path) > before


# -- shutdown and restart ------------------------------------------------------------


def test_sigterm_exits_0_with_intact_log(tmp_path):
    path = write_config(tmp_path, 1)
    n = NodeProc(path, 0).start()
    mutations = 0
    try:
        with Client(n.config) as c:
            for i in range(50):
                c.create(str(i), f"v{i}".encode())
            for i in range(0, 50, 2):
                c.update(str(i), f"u{i}".encode())
            for i in range(0, 50, 5):
                c.delete(str(i))
            mutations = 50 + 25 + 10
    finally:
        code = n.stop()
    assert code == 0, n.log()
    assert "Traceback" not in n.log()

    with open(os.path.join(n.config.node_dir(0), "log.0"), "rb") as f:
        scan = records.scan(f.read(), "log.0", allow_torn=False)
    assert scan.torn_bytes == 0
    assert [r.seq for r in scan.records] == list(range(1, mutations + 1))

    n.start()
    try:
        with Client(n.config) as c:
            for i in range(50):
                if i % 5 == 0:
                    with pytest.raises(NotFoundError):
                        c.read(str(i))
                else:
                    want = f"u{i}" if i % 2 == 0 else f"v{i}"
                    assert c.read(str(i)).value == want.encode(), i
    finally:
        assert n.stop() == 0, n.log()


def test_sigterm_during_writes_keeps_every_ack(tmp_path):
    path = write_config(tmp_path, 1)
    n = NodeProc(path, 0).start()
    acked: dict[str, bytes] = {}
    lock = threading.Lock()
    enough = threading.Event()
    writers = 4

    def write(w: int) -> None:
        with Client(n.config) as c:
            for i in range(3000):
                key = str(w * 100_000 + i)
                try:
                    c.create(key, key.encode())
                except UnavailableError:
                    return
                with lock:
                    acked[key] = key.encode()
                    if len(acked) >= 200:
                        enough.set()

    try:
        with ThreadPoolExecutor(writers) as pool:
            futures = [pool.submit(write, w) for w in range(writers)]
            assert enough.wait(60), "writers made no progress"
            code = n.stop()
            for f in futures:
                f.result(timeout=60)
        assert code == 0, n.log()
        assert len(acked) < writers * 3000, "the writers finished before the SIGTERM"
        n.start()
        with Client(n.config) as c:
            keys = sorted(acked)
            results = c.batch([("read", k, None) for k in keys], timeout=60)
        missing = [k for k, r in zip(keys, results)
                   if not isinstance(r, Result) or r.value != acked[k]]
        assert not missing, f"{len(missing)} acknowledged writes lost, e.g. {missing[:5]}"
    finally:
        n.stop()


@pytest.mark.parametrize("policy", ["always", "batch", "everysec", "never"])
def test_fsync_policy_serves_and_keeps_data_across_restart(tmp_path, policy):
    path = write_config(tmp_path, 1, fsync=policy)
    n = NodeProc(path, 0).start()
    try:
        with Client(n.config) as c:
            assert c.status().fsync == policy
            crud_ok(c, "1")
            crud_nok(c, "2", "3")
            for i in range(10, 30):
                c.create(str(i), f"v{i}".encode())
            c.update("10", b"updated")
            c.delete("11")
        assert n.stop() == 0, n.log()
        n.start()
        with Client(n.config) as c:
            assert c.read("10").value == b"updated"
            with pytest.raises(NotFoundError):
                c.read("11")
            for i in range(12, 30):
                assert c.read(str(i)).value == f"v{i}".encode()
            for key in ("1", "2", "3"):
                with pytest.raises(NotFoundError):
                    c.read(key)
            assert c.status().keys == 19
    finally:
        assert n.stop() == 0, n.log()


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_node_runs_on_either_event_loop(tmp_path, loop):
    """uvloop by default where it is installed; CHORDCTL_EVENT_LOOP=asyncio falls back."""
    if loop == "uvloop":
        pytest.importorskip("uvloop")
    path = write_config(tmp_path, 1)
    node = NodeProc(path, 0, env={"CHORDCTL_EVENT_LOOP": "auto" if loop == "uvloop" else loop})
    node.start()
    try:
        with Client(node.config) as c:
            assert c.status().event_loop == loop
            crud_ok(c, "17")
            crud_nok(c, "18", "19")
    finally:
        assert node.stop() == 0
    assert f", {loop}, grpc " in node.log()
