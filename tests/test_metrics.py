"""Prometheus metrics on a node's metrics_port."""

from __future__ import annotations

import urllib.request

import yaml
from prometheus_client.parser import text_string_to_metric_families

from chordctl.client import Client
from conftest import Cluster, free_ports, write_config


def _scrape(port: int) -> dict[str, list]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def _with_metrics_ports(path: str) -> list[int]:
    """Give every node of the config at *path* a free metrics_port; the ports."""
    doc = yaml.safe_load(open(path))
    ports = free_ports(len(doc["nodes"]))
    for node, port in zip(doc["nodes"], ports):
        node["metrics_port"] = port
    yaml.safe_dump(doc, open(path, "w"))
    return ports


def test_metrics_report_requests_latency_queues_hops_fsync_snapshots_keys(tmp_path):
    path = write_config(tmp_path, 2)
    ports = _with_metrics_ports(path)
    cluster = Cluster(path).start()
    try:
        # Node 0 (id 65535) owns (32767, 65535]; key 10 is node 1's: one forward.
        with Client(cluster.config, target=cluster.address(0)) as c:
            c.create("40000", b"a")
            c.create("10", b"b")
            c.read("10")
            try:
                c.read("11")
            except Exception:
                pass
            c.batch([("create", "40001", b"c"), ("read", "40000", None)])
            c.take_snapshot()
        m0 = _scrape(ports[0])
        m1 = _scrape(ports[1])
    finally:
        cluster.stop()

    def value(samples, name, **labels):
        return sum(s.value for s in samples if s.name == name and
                   all(s.labels.get(k) == v for k, v in labels.items()))

    reqs = m0["chordctl_requests"]
    assert value(reqs, "chordctl_requests_total", op="create", code="OK") == 3
    assert value(reqs, "chordctl_requests_total", op="read", code="NOT_FOUND") == 1
    assert value(reqs, "chordctl_requests_total", op="read", code="OK") == 2
    lat = m0["chordctl_request_latency_seconds"]
    assert value(lat, "chordctl_request_latency_seconds_count", kind="create") == 2
    assert value(lat, "chordctl_request_latency_seconds_count", kind="batch") == 1
    queues = {s.labels["queue"] for s in m0["chordctl_queue_depth"]}
    assert queues == {"F1", "F2", "F3", "F4"}
    assert value(m0["chordctl_keys"], "chordctl_keys") == 2
    assert value(m0["chordctl_forwarded"], "chordctl_forwarded_total") == 3
    # Node 1 served 3 requests that each took one forward to reach it.
    hops = m1["chordctl_request_hops"]
    assert value(hops, "chordctl_request_hops_bucket", le="0") == 0
    assert value(hops, "chordctl_request_hops_bucket", le="1") == 3
    assert value(m0["chordctl_fsync_seconds"], "chordctl_fsync_seconds_count") >= 2
    assert value(m0["chordctl_snapshot_seconds"], "chordctl_snapshot_seconds_count") == 1
    assert value(m0["chordctl_snapshot_bytes"], "chordctl_snapshot_bytes") > 0
    assert all(s.labels["node"] == "0" for s in reqs)


def test_a_replicated_ring_counts_reads_by_confirmation_and_through_the_log(tmp_path):
    from conftest import owners_lead, wait_until
    path = write_config(tmp_path, 3, replicas=3,
                        replication={"election_timeout": 0.5, "heartbeat": 0.05})
    ports = _with_metrics_ports(path)
    cluster = Cluster(path).start()
    try:
        wait_until(lambda: owners_lead(cluster.config), timeout=20, what="owners lead")
        # Node 0 (id 65535) owns (43690, 65535]: it leads that arc's group.
        with Client(cluster.config, target=cluster.address(0)) as c:
            c.create("50000", b"a")
            for _ in range(5):
                assert c.read("50000").value == b"a"
            # Reads only: by confirmation. A write among them: through the log.
            c.batch([("read", "50000", None), ("read", "50001", None)])
            c.batch([("update", "50000", b"b"), ("read", "50000", None)])
            # A client's coalesced calls (unordered): its reads apart from its writes.
            from chordctl.pb import chord_pb2 as pb
            reply = c._node_stub(0).Batch(pb.BatchRequest(ops=[
                pb.Operation(op=pb.UPDATE, key="50000", value=b"b"),
                pb.Operation(op=pb.READ, key="50000")], unordered=True), timeout=5)
            assert [r.code for r in reply.results] == [0, 0]
        # Node 1 holds a copy of arc 0 but does not lead it: a client's read
        # goes on to the leader, node 0, which answers it by confirmation ...
        with Client(cluster.config, target=cluster.address(1)) as c:
            reply = c.read("50000")
            assert reply.value == b"b" and reply.node_index == 0
            # ... and one that was forwarded already goes through node 1's log.
            reply = c._node_stub(1).Batch(pb.BatchRequest(ops=[
                pb.Operation(op=pb.READ, key="50000", hops=1)]), timeout=5)
            assert [(r.code, r.value, r.node_index) for r in reply.results] == [(0, b"b", 1)]

        def reads(port):
            return {s.labels["way"]: s.value for s in _scrape(port)["chordctl_raft_reads"]
                    if s.name == "chordctl_raft_reads_total" and s.labels["group"] == "0"}

        # The counts are the engine's summary, renewed every 50 ms.
        wait_until(lambda: reads(ports[0]) == {"index": 8, "log": 0}, timeout=5,
                   what=f"node 0's reads of arc 0 counted (now {reads(ports[0])})")
        wait_until(lambda: reads(ports[1]) == {"index": 0, "log": 1}, timeout=5,
                   what=f"node 1's reads of arc 0 counted (now {reads(ports[1])})")
    finally:
        cluster.stop()
