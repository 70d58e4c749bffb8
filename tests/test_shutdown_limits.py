"""Graceful shutdown answers what is in flight; a second signal exits at once;
the in-flight limit answers RESOURCE_EXHAUSTED instead of queueing without bound."""

from __future__ import annotations

import signal
import threading
import time

import pytest

from chordctl.client import Client
from chordctl.errors import NotFoundError, ResourceExhaustedError
from conftest import Cluster, write_config


def _held_read(cluster, key: str, box: list, started: threading.Event) -> threading.Thread:
    def run():
        with Client(cluster.config) as c:
            started.set()
            try:
                box.append(c.read(key))
            except Exception as e:  # the outcome is what the test inspects
                box.append(e)

    t = threading.Thread(target=run)
    t.start()
    return t


def _wait_in_flight(cluster, minimum: int = 1, timeout: float = 10.0) -> None:
    """Until the node reports *minimum* client requests received and not yet answered."""
    deadline = time.monotonic() + timeout
    with Client(cluster.config) as c:
        while c.status().in_flight < minimum:
            if time.monotonic() > deadline:
                raise AssertionError("the held request never reached the node")
            time.sleep(0.01)


def _node_holding_a_read(tmp_path, hold: float, timeout: float):
    """A one-node cluster whose receiver holds a read of key 77 for *hold* seconds,
    that read in flight (its thread and the box its outcome lands in)."""
    path = write_config(tmp_path, 1, timeout=timeout)
    cluster = Cluster(path, hold=f"77:{hold}").start()
    box: list = []
    started = threading.Event()
    t = _held_read(cluster, "77", box, started)
    started.wait(10)
    _wait_in_flight(cluster)
    return cluster, t, box


def _wait_not_serving(address: str, timeout: float = 10.0) -> None:
    """Until a graceful stop has begun: health says NOT_SERVING, or new calls are refused."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    with grpc.insecure_channel(address) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        deadline = time.monotonic() + timeout
        while True:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            except grpc.RpcError:
                return
            if reply.status != health_pb2.HealthCheckResponse.SERVING:
                return
            assert time.monotonic() < deadline, "the node never began to stop"
            time.sleep(0.01)


def test_sigterm_answers_the_request_in_flight_then_exits_zero(tmp_path):
    cluster, t, box = _node_holding_a_read(tmp_path, hold=1.5, timeout=20)
    node = cluster.nodes[0]
    try:
        node.proc.send_signal(signal.SIGTERM)
        t.join(30)
        assert node.proc.wait(timeout=30) == 0
    finally:
        cluster.stop()
    assert len(box) == 1
    # The held read got its real answer, not a cancellation.
    assert isinstance(box[0], NotFoundError), box[0]


def test_second_signal_exits_at_once(tmp_path):
    cluster, t, _box = _node_holding_a_read(tmp_path, hold=30, timeout=60)
    node = cluster.nodes[0]
    try:
        node.proc.send_signal(signal.SIGTERM)
        _wait_not_serving(cluster.address(0))   # the graceful stop (5 s grace) has begun
        t0 = time.monotonic()
        node.proc.send_signal(signal.SIGTERM)
        code = node.proc.wait(timeout=10)
        assert time.monotonic() - t0 < 5
        assert code != 0
        t.join(70)
    finally:
        cluster.stop()


def test_in_flight_limit_answers_resource_exhausted(tmp_path):
    path = write_config(tmp_path, 1, timeout=20, limits={"max_in_flight": 1})
    cluster = Cluster(path, hold="77:2").start()
    box: list = []
    started = threading.Event()
    try:
        t = _held_read(cluster, "77", box, started)
        started.wait(10)
        _wait_in_flight(cluster)
        with Client(cluster.config) as c:
            deadline = time.monotonic() + 10
            refused = None
            while time.monotonic() < deadline and refused is None:
                try:
                    c.create("5", b"x")
                    c.delete("5")
                except ResourceExhaustedError as e:
                    refused = e
            assert refused is not None, "the limit never refused a request"
            assert "max_in_flight" in str(refused)
        t.join(30)
        with Client(cluster.config) as c:
            c.create("6", b"y")       # once the held request is answered, work resumes
            assert c.read("6").value == b"y"
    finally:
        cluster.stop()
    assert isinstance(box[0], NotFoundError)


@pytest.mark.parametrize("limit", [64])
def test_value_over_the_limit_is_refused_by_the_node(tmp_path, limit):
    from chordctl.pb import chord_pb2 as pb
    from chordctl.pb import chord_pb2_grpc as pb_grpc
    import grpc
    path = write_config(tmp_path, 1, limits={"max_value_bytes": limit})
    cluster = Cluster(path).start()
    try:
        with grpc.insecure_channel(cluster.address(0)) as ch:
            stub = pb_grpc.KeyValueStub(ch)
            with pytest.raises(grpc.RpcError) as e:
                stub.Create(pb.WriteRequest(key="1", value=b"x" * (limit + 1)), timeout=10)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "max_value_bytes" in e.value.details()
            with pytest.raises(grpc.RpcError) as e:
                stub.Read(pb.KeyRequest(key="1"), timeout=10)
            assert e.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        cluster.stop()


def test_keys_past_pythons_4300_digit_limit_work_up_to_max_key_digits(tmp_path):
    """limits.max_key_digits above 4,300 used to hit Python's int-conversion
    limit: UNKNOWN on Batch, Python's own message on the unary calls. The node
    lifts the interpreter limit to the configured one (and restarts with such
    keys in its log)."""
    import grpc
    from chordctl.pb import chord_pb2 as pb
    from chordctl.pb import chord_pb2_grpc as pb_grpc
    path = write_config(tmp_path, 1, limits={"max_key_digits": 6000})
    cluster = Cluster(path).start()
    big = "7" * 5000
    bigger = "8" * 5999
    try:
        with grpc.insecure_channel(cluster.address(0)) as ch:
            stub = pb_grpc.KeyValueStub(ch)
            reply = stub.Batch(pb.BatchRequest(ops=[pb.Operation(op=pb.CREATE, key=big,
                                                                 value=b"b")]), timeout=10)
            assert reply.results[0].code == 0, reply.results[0].message
            stub.Create(pb.WriteRequest(key=bigger, value=b"c"), timeout=10)
            assert stub.Read(pb.KeyRequest(key=big), timeout=10).value == b"b"
            with pytest.raises(grpc.RpcError) as e:
                stub.Read(pb.KeyRequest(key="9" * 6001), timeout=10)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "max_key_digits" in e.value.details()
        cluster.nodes[0].kill()          # no shutdown snapshot: the restart replays the log
        cluster.nodes[0].start()
        with Client(cluster.config) as c:
            assert c.read(bigger).value == b"c"
    finally:
        cluster.stop()
