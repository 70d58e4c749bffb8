"""gRPC health (grpc.health.v1) over a node's life, as load balancers and `cluster up` see it.

NOT_SERVING while the node replays its log (its services answer UNAVAILABLE
"recovering" meanwhile), SERVING once it holds every acknowledged write,
NOT_SERVING again as soon as a graceful shutdown begins. The replay is held
open by a node whose recovery waits first (tests/held_node.py, injected
through NodeServer's node_class), so the recovering state is observed
deterministically, not by racing a fast replay.
"""

from __future__ import annotations

import os
import signal

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from chordctl import config as config_mod
from chordctl.client import Client, Result
from chordctl.pb import chord_pb2 as pb
from chordctl.pb import chord_pb2_grpc as pb_grpc
from conftest import NodeProc, write_config

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICES = ("", "chord.v1.KeyValue", "chord.v1.Admin")
RECORDS = 200_000
BATCH = 10_000
REPLAY_DELAY = 3.0     # seconds the restarted node stays in recovery before replaying
CALL_TIMEOUT = 60.0


def status_name(status: int) -> str:
    return health_pb2.HealthCheckResponse.ServingStatus.Name(status)


def fill(client: Client, records: int) -> None:
    for base in range(0, records, BATCH):
        ops = [("create", str(k), b"v%d" % k) for k in range(base, min(records, base + BATCH))]
        results = client.batch(ops, timeout=CALL_TIMEOUT)
        bad = [r for r in results if not isinstance(r, Result)]
        assert not bad, bad[:3]


def test_health_not_serving_while_replaying_then_serving(tmp_path, run_cli) -> None:
    path = write_config(tmp_path, 1, limits={"max_batch_ops": BATCH})
    cfg = config_mod.load(path)
    node = NodeProc(path, 0).start()
    try:
        with Client(cfg, target=node.address, timeout=CALL_TIMEOUT) as c:
            fill(c, RECORDS)
        node.kill()    # SIGKILL: no shutdown snapshot, so the restart replays the whole log
        assert not [f for f in os.listdir(cfg.node_dir(0)) if f.startswith("snap.")]

        node.replay_delay = REPLAY_DELAY
        node.start(wait=False)
        with grpc.insecure_channel(node.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            first = health.Check(health_pb2.HealthCheckRequest(service=""),
                                 timeout=CALL_TIMEOUT, wait_for_ready=True)
            watch = health.Watch(health_pb2.HealthCheckRequest(service=""),
                                 timeout=CALL_TIMEOUT)
            assert status_name(first.status) == "NOT_SERVING", node.log()
            for service in SERVICES[1:]:
                got = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
                assert status_name(got.status) == "NOT_SERVING", service

            # Our own services refuse, naming the node and saying why.
            with pytest.raises(grpc.RpcError) as refused:
                pb_grpc.KeyValueStub(channel).Read(pb.KeyRequest(key="1"), timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "node 0" in refused.value.details()
            assert "recovering" in refused.value.details()
            with pytest.raises(grpc.RpcError) as refused:
                pb_grpc.AdminStub(channel).Status(pb.StatusRequest(), timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            r = run_cli(path)("kv", "read", "1")
            assert r.exit_code == 3 and "node 0 (id 65535) is recovering" in r.output, r.output

            seen = []
            for message in watch:
                seen.append(status_name(message.status))
                if message.status == SERVING:
                    break
            watch.cancel()
            assert seen[0] == "NOT_SERVING" and seen[-1] == "SERVING", seen
            # SERVING only once the replay is complete: every record is there.
            with Client(cfg, target=node.address, timeout=CALL_TIMEOUT) as c:
                assert c.status().keys == RECORDS
                for k in (0, RECORDS // 2, RECORDS - 1):
                    assert c.read(str(k)).value == b"v%d" % k
            for service in SERVICES:
                got = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
                assert status_name(got.status) == "SERVING", service
    finally:
        node.stop()


def test_health_not_serving_once_graceful_shutdown_begins(tmp_path) -> None:
    path = write_config(tmp_path, 1)
    node = NodeProc(path, 0).start()
    try:
        with grpc.insecure_channel(node.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            watches = {s: health.Watch(health_pb2.HealthCheckRequest(service=s),
                                       timeout=CALL_TIMEOUT) for s in SERVICES}
            for service, watch in watches.items():
                assert status_name(next(watch).status) == "SERVING", service
            node.proc.send_signal(signal.SIGTERM)
            for service, watch in watches.items():
                assert status_name(next(watch).status) == "NOT_SERVING", service
                watch.cancel()
        assert node.proc.wait(timeout=30) == 0, node.log()
    finally:
        node.stop()


def test_ring_show_marks_a_replaying_node_recovering(tmp_path, run_cli) -> None:
    import json
    import time
    path = write_config(tmp_path, 2)
    cfg = config_mod.load(path)
    nodes = [NodeProc(path, i) for i in range(2)]
    nodes[0].start()
    nodes[1].replay_delay = 30
    nodes[1].start(wait=False)
    try:
        with grpc.insecure_channel(nodes[1].address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            deadline = time.monotonic() + 30
            while True:   # until node 1's server answers (it holds NOT_SERVING for 30 s)
                try:
                    reply = health.Check(health_pb2.HealthCheckRequest(service=""),
                                         timeout=5, wait_for_ready=True)
                    break
                except grpc.RpcError:
                    assert time.monotonic() < deadline, "node 1 never answered health"
            assert reply.status == NOT_SERVING
        res = run_cli(path)("ring", "show", output="json")
        assert res.exit_code == 3
        states = [n["state"] for n in json.loads(res.stdout)]
        assert states == ["up", "recovering"]
        table = run_cli(path)("ring", "show")
        assert "recovering" in table.stdout
    finally:
        for n in nodes:
            n.stop()
    del cfg


FSIZE_LIMIT = 256 * 1024    # bytes any file of the node process may grow to (RLIMIT_FSIZE)


def limit_file_size() -> None:
    """preexec_fn: every write past FSIZE_LIMIT fails with EFBIG (Python ignores SIGXFSZ)."""
    import resource
    resource.setrlimit(resource.RLIMIT_FSIZE, (FSIZE_LIMIT, FSIZE_LIMIT))


def test_fail_stopped_node_health_not_serving_and_ring_show_says_why(tmp_path, run_cli) -> None:
    import json
    from conftest import wait_until
    path = write_config(tmp_path, 1)
    cfg = config_mod.load(path)
    node = NodeProc(path, 0).start(preexec_fn=limit_file_size)
    try:
        with Client(cfg, target=node.address, timeout=CALL_TIMEOUT) as c:
            assert c.health() == "SERVING" and c.status().failed == ""
            refused = []
            for base in range(0, 2 * FSIZE_LIMIT // 1024, 50):   # 1 KB values: past the limit
                results = c.batch([("create", str(k), b"x" * 1024)
                                   for k in range(base, base + 50)])
                refused = [r for r in results if not isinstance(r, Result)]
                if refused:
                    break
            assert refused and "log: cannot write" in str(refused[0]), refused[:1]
            wait_until(lambda: c.health() == "NOT_SERVING", what="health NOT_SERVING")
            reason = c.status().failed
        assert "log: cannot write" in reason and "File too large" in reason, reason
        with grpc.insecure_channel(node.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for service in SERVICES:
                got = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
                assert status_name(got.status) == "NOT_SERVING", service

        table = run_cli(path)("ring", "show")
        assert table.exit_code == 3, table.output
        [row] = [line for line in table.stdout.splitlines() if node.address in line]
        assert "failed: log: cannot write log.0: File too large" in row, table.stdout
        assert str(tmp_path) not in row     # short in the table: no directory
        res = run_cli(path)("ring", "show", output="json")
        [doc] = json.loads(res.stdout)
        assert doc["state"] == "failed" and doc["up"] is False
        assert doc["failed"] == reason      # the whole reason, path included
    finally:
        node.stop()
