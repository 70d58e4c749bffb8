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
    assert value(m0["chordctl_membership_epoch"], "chordctl_membership_epoch") == 1
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


def _replicated_ring(tmp_path):
    """A settled 3-node ring with R = 3 (every node in every group) and metrics
    ports: (cluster, ports); the caller stops it."""
    path = write_config(tmp_path, 3, replicas=3,
                        replication={"election_timeout": 0.5, "heartbeat": 0.05})
    ports = _with_metrics_ports(path)
    cluster = Cluster(path).start()
    try:
        cluster.settled()
    except BaseException:
        cluster.stop()
        raise
    return cluster, ports


def _samples(port: int, family: str, sample: str) -> list:
    return [s for s in _scrape(port).get(family, []) if s.name == sample]


def _lags(port: int) -> dict[tuple[str, str], float]:
    """(group, follower) -> chordctl_raft_follower_lag_entries, as scraped."""
    return {(s.labels["group"], s.labels["follower"]): s.value
            for s in _samples(port, "chordctl_raft_follower_lag_entries",
                              "chordctl_raft_follower_lag_entries")}


def test_a_replicated_ring_reports_commit_latency_elections_follower_lag_and_round_trips(tmp_path):
    from conftest import wait_until
    cluster, ports = _replicated_ring(tmp_path)
    try:
        def commit(port):
            """(count, sum, +Inf bucket) of chordctl_raft_commit_seconds, one scrape."""
            h = {(s.name, s.labels.get("le")): s.value
                 for s in _scrape(port)["chordctl_raft_commit_seconds"]}
            return (h[("chordctl_raft_commit_seconds_count", None)],
                    h[("chordctl_raft_commit_seconds_sum", None)],
                    h[("chordctl_raft_commit_seconds_bucket", "+Inf")])

        # Node 0 (id 65535) owns (43690, 65535] and leads its group, 0; each
        # sequential write it is sent is one command it submits, and observed
        # once applied there, before the write is acknowledged.
        count0, sum0, _ = commit(ports[0])
        n = 12
        with Client(cluster.config, target=cluster.address(0)) as c:
            for i in range(n):
                c.create(str(50000 + i), b"v")
        count1, sum1, inf1 = commit(ports[0])
        assert count1 >= count0 + n and inf1 == count1, (count0, count1, inf1)
        assert sum1 > sum0 and sum1 > 0, (sum0, sum1)

        # Elections: each group's leader (its owner) started a term in it.
        members = {}
        with Client(cluster.config, target=cluster.address(0)) as c:
            for g in c.status(timeout=5).groups:
                members[str(g.group)] = {str(m) for m in g.members}
        assert set(members) == {"0", "1", "2"}

        # Fastest first: node 0, leading group 0, times the followers its
        # writes went to first and counts those rounds, per follower.
        def of_group_0(family, sample):
            return {s.labels["follower"]: s.value for s in _samples(ports[0], family, sample)
                    if s.labels["group"] == "0"}

        def first_sends():
            return of_group_0("chordctl_raft_first_sends", "chordctl_raft_first_sends_total")

        wait_until(lambda: sum(first_sends().values()) >= 1, timeout=5,
                   what=f"node 0's first sends in group 0 (now {first_sends()})")
        trips = of_group_0("chordctl_raft_follower_round_trip_seconds",
                           "chordctl_raft_follower_round_trip_seconds")
        followers = members["0"] - {"0"}
        assert set(first_sends()) <= followers, first_sends()
        assert trips and set(trips) <= set(first_sends()), (trips, first_sends())
        assert all(0 < t < 1 for t in trips.values()), trips

        def elections(port):
            return {s.labels["group"]: s.value
                    for s in _samples(port, "chordctl_raft_elections",
                                      "chordctl_raft_elections_total")}

        for i, port in enumerate(ports):
            wait_until(lambda: elections(port).get(str(i), 0) >= 1, timeout=5,
                       what=f"node {i}'s elections of group {i} >= 1 "
                            f"(now {elections(port)})")
            terms = {s.labels["group"]: s.value
                     for s in _samples(port, "chordctl_raft_term", "chordctl_raft_term")}
            assert all(0 <= v <= terms[g] for g, v in elections(port).items())

        # Lag: on each node, one gauge per follower of each group it leads, and
        # none for a group it follows.
        for i, port in enumerate(ports):
            def led(port=port):
                return {s.labels["group"] for s in _samples(
                    port, "chordctl_raft_is_leader", "chordctl_raft_is_leader")
                    if s.value == 1}
            wait_until(lambda: str(i) in led() and
                       {f for g, f in _lags(port) if g == str(i)} == members[str(i)] - {str(i)},
                       timeout=5, what=f"node {i}'s lag of its followers (now {_lags(port)})")
            lags = _lags(port)
            assert {g for g, _f in lags} <= led()
            for g in led():
                assert {f for gg, f in lags if gg == g} == members[g] - {str(i)}
            assert all(v >= 0 and v == int(v) for v in lags.values()), lags
    finally:
        cluster.stop()


def test_a_stopped_followers_lag_rises_while_writes_go_on_and_returns_to_zero(tmp_path):
    import signal

    from conftest import wait_until
    cluster, ports = _replicated_ring(tmp_path)
    stopped = cluster.nodes[1]
    try:
        def lag(follower):
            return _lags(ports[0]).get(("0", follower))

        wait_until(lambda: lag("1") == 0, timeout=5,
                   what=f"node 1 caught up in group 0 (lag {_lags(ports[0])})")
        stopped.kill(signal.SIGSTOP)
        n = 10
        # Group 0 commits with nodes 0 and 2 while node 1 stands still.
        with Client(cluster.config, target=cluster.address(0)) as c:
            for i in range(n):
                c.create(str(50000 + i), b"v")
        wait_until(lambda: (lag("1") or 0) >= n and lag("2") == 0, timeout=5,
                   what=f"node 1 {n} entries behind, node 2 not (lag {_lags(ports[0])})")
        stopped.kill(signal.SIGCONT)
        wait_until(lambda: lag("1") == 0, timeout=15,
                   what=f"node 1 caught up again (lag {_lags(ports[0])})")
    finally:
        stopped.kill(signal.SIGCONT)
        cluster.stop()


def test_a_replicated_nodes_queue_depth_includes_the_replicator_queue(tmp_path):
    cluster, ports = _replicated_ring(tmp_path)
    try:
        with Client(cluster.config, target=cluster.address(0)) as c:
            c.create("50000", b"v")
        for port in ports:
            depth = {s.labels["queue"]: s.value
                     for s in _samples(port, "chordctl_queue_depth", "chordctl_queue_depth")}
            assert set(depth) == {"F1", "F2", "F3", "F4", "R"}, depth
            assert all(v >= 0 and v == int(v) for v in depth.values()), depth
    finally:
        cluster.stop()
