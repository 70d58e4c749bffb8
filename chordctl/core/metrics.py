"""Prometheus metrics of one node, served on its optional ``metrics_port``.

The request path only bumps plain integers (a dict entry, a bucket slot):
no locks, no metric objects per request. A custom collector turns them into
Prometheus families when scraped, so the cost of metrics is paid by the
scraper, not by the requests.
"""

from __future__ import annotations

import bisect
import logging

from chordctl.protocol import OP_NAMES, code_name

logger = logging.getLogger("chordctl.metrics")

LATENCY_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                   1.0, 2.5, 5.0, 10.0)
FSYNC_BUCKETS = (0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.1, 1.0)
SNAPSHOT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
class Histogram:
    """Bucket counts, a sum and a count; one writer thread, any reader."""

    __slots__ = ("bounds", "counts", "total", "count")

    def __init__(self, bounds: tuple[float, ...]):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float, n: int = 1) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += n
        self.total += value * n
        self.count += n

    def cumulative(self) -> list[tuple[str, int]]:
        out, acc = [], 0
        for bound, c in zip(self.bounds, self.counts):
            acc += c
            out.append((repr(bound), acc))
        out.append(("+Inf", acc + self.counts[-1]))
        return out


class NodeMetrics:
    def __init__(self):
        self.requests: dict[tuple[int, int], int] = {}    # (op, code) -> count
        self.latency: dict[str, Histogram] = {}           # "read", ..., "batch"
        self.hops = [0] * 65                              # hops at the owner, clamped
        self.fsync = Histogram(FSYNC_BUCKETS)
        self.snapshot = Histogram(SNAPSHOT_BUCKETS)
        self.snapshot_bytes = 0
        self.forwarded = 0

    def answered(self, op: int, code: int, n: int = 1) -> None:
        key = (op, code)
        self.requests[key] = self.requests.get(key, 0) + n

    def took(self, kind: str, seconds: float) -> None:
        h = self.latency.get(kind)
        if h is None:
            h = self.latency[kind] = Histogram(LATENCY_BUCKETS)
        h.observe(seconds)

    def served(self, reqs) -> None:
        """At the owner: how many hops each request took to get here."""
        hops = self.hops
        top = len(hops) - 1
        for r in reqs:
            h = r.hops
            hops[h if h < top else top] += 1


def start_server(node, metrics: NodeMetrics, host: str, port: int) -> None:
    """Serve /metrics over HTTP in a daemon thread (prometheus_client)."""
    from prometheus_client import CollectorRegistry, start_http_server
    registry = CollectorRegistry()
    registry.register(_Collector(node, metrics))
    start_http_server(port, addr=host, registry=registry)
    logger.info("%s: metrics on http://%s:%d/metrics", node.label, host, port)


class _Collector:
    def __init__(self, node, metrics: NodeMetrics):
        self.node = node
        self.m = metrics

    def collect(self):
        from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                            HistogramMetricFamily)
        node, m = self.node, self.m
        labels = {"node": str(node.index), "id": str(node.node_id)}
        names, values = list(labels), list(labels.values())

        c = CounterMetricFamily("chordctl_requests", "Operations answered, by operation and "
                                "outcome", labels=names + ["op", "code"])
        for (op, code), n in sorted(m.requests.items()):
            c.add_metric(values + [OP_NAMES.get(op, str(op)), code_name(code)], n)
        yield c

        h = HistogramMetricFamily("chordctl_request_latency_seconds",
                                  "Time from receipt to reply, by call kind",
                                  labels=names + ["kind"])
        for kind, hist in sorted(m.latency.items()):
            h.add_metric(values + [kind], hist.cumulative(), sum_value=hist.total)
        yield h

        q = GaugeMetricFamily("chordctl_queue_depth", "Items waiting in each pipeline queue",
                              labels=names + ["queue"])
        for name, queue in (("F1", node.incoming), ("F2", node.to_log), ("F3", node.to_apply),
                            ("F4", node.to_route)):
            q.add_metric(values + [name], queue.qsize())
        replicator_depth = getattr(node, "replicator_depth", None)
        if replicator_depth is not None:       # ring.replicas > 1: dispatcher -> replicator
            q.add_metric(values + ["R"], replicator_depth())
        yield q

        hops = HistogramMetricFamily("chordctl_request_hops",
                                     "Forwards a request took to reach this node (its owner)",
                                     labels=names)
        acc, buckets = 0, []
        for i, n in enumerate(m.hops[:-1]):
            acc += n
            buckets.append((str(i), acc))
        buckets.append(("+Inf", acc + m.hops[-1]))
        hops.add_metric(values, buckets, sum_value=sum(i * n for i, n in enumerate(m.hops)))
        yield hops

        f = HistogramMetricFamily("chordctl_fsync_seconds", "Log fsync latency", labels=names)
        f.add_metric(values, m.fsync.cumulative(), sum_value=m.fsync.total)
        yield f

        s = HistogramMetricFamily("chordctl_snapshot_seconds", "Time to write a snapshot",
                                  labels=names)
        s.add_metric(values, m.snapshot.cumulative(), sum_value=m.snapshot.total)
        yield s
        for name, doc, value in (
                ("chordctl_snapshot_bytes", "Size of the newest snapshot", m.snapshot_bytes),
                ("chordctl_snapshot_counter", "X of the newest snap.X", node.snapshot_counter),
                ("chordctl_keys", "Keys held by this node", len(node.store)),
                ("chordctl_log_sequence", "Sequence number of the last logged mutation",
                 node.durable_seq),
                ("chordctl_membership_epoch", "Epoch of the ring membership this node routes "
                 "by", node.membership.current.epoch)):
            g = GaugeMetricFamily(name, doc, labels=names)
            g.add_metric(values, value)
            yield g
        fw = CounterMetricFamily("chordctl_forwarded", "Operations forwarded to another node",
                                 labels=names)
        fw.add_metric(values, m.forwarded)
        yield fw
        raft_status = getattr(node, "raft_status", None)
        if raft_status is not None:
            yield from _raft_families(node, names, values, raft_status())


def _raft_families(node, names: list[str], values: list[str], groups: dict):
    """ring.replicas > 1: each group's Raft state, lag and commit latency."""
    from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                        HistogramMetricFamily)
    gl = names + ["group"]
    gauges = {
        "term": GaugeMetricFamily("chordctl_raft_term", "Raft term of the group", labels=gl),
        "leader": GaugeMetricFamily("chordctl_raft_is_leader",
                                    "1 if this node leads the group", labels=gl),
        "commit": GaugeMetricFamily("chordctl_raft_commit_index",
                                    "Last entry known committed", labels=gl),
        "applied": GaugeMetricFamily("chordctl_raft_applied_index",
                                     "Last entry applied to this node's map", labels=gl),
        "log_start": GaugeMetricFamily("chordctl_raft_log_start_index",
                                       "First entry the group's log still holds here "
                                       "(compacted before it)", labels=gl),
    }
    installs = CounterMetricFamily("chordctl_raft_dump_installs",
                                   "Dumps of the arc this replica received from a leader "
                                   "and installed, since it started", labels=gl)
    compactions = CounterMetricFamily("chordctl_raft_compactions",
                                      "Times the group's log was compacted here, since "
                                      "this node started", labels=gl)
    elections = CounterMetricFamily("chordctl_raft_elections",
                                    "Terms the group started since this node started",
                                    labels=gl)
    reads = CounterMetricFamily("chordctl_raft_reads",
                                "Read-only calls of the group this node took since it "
                                "started: way=index answered as its leader once a majority "
                                "confirmed it, way=log put through the group's log (not the "
                                "leader, or not confirmed in time)",
                                labels=gl + ["way"])
    lag = GaugeMetricFamily("chordctl_raft_follower_lag_entries",
                            "Leader only: entries a follower's log is behind the leader's",
                            labels=gl + ["follower"])
    trip = GaugeMetricFamily("chordctl_raft_follower_round_trip_seconds",
                             "Leader only: the median of a follower's last round trips "
                             "(an append with entries out, its answer back, the "
                             "follower's fdatasync between), what fastest first ranks "
                             "followers by", labels=gl + ["follower"])
    first = CounterMetricFamily("chordctl_raft_first_sends",
                                "Leader only: rounds whose new entries went at once to "
                                "this follower and not to the others, whose turn comes "
                                "later (majority first: the fastest a majority needs)",
                                labels=gl + ["follower"])
    for g in groups.values():
        v = values + [str(g["group"])]
        gauges["term"].add_metric(v, g["term"])
        gauges["leader"].add_metric(v, 1 if g["state"] == "leader" else 0)
        gauges["commit"].add_metric(v, g["commit_index"])
        gauges["applied"].add_metric(v, g["last_applied"])
        elections.add_metric(v, g["elections"])
        gauges["log_start"].add_metric(v, g.get("log_start", 1))
        installs.add_metric(v, g.get("installs", 0))
        compactions.add_metric(v, g.get("compactions", 0))
        reads.add_metric(v + ["index"], g.get("index_reads", 0))
        reads.add_metric(v + ["log"], g.get("log_reads", 0))
        for follower, match in sorted(g["match_index"].items()):
            lag.add_metric(v + [str(follower)], max(0, g["log_index"] - match))
        for follower, seconds in sorted(g.get("round_trip", {}).items()):
            trip.add_metric(v + [str(follower)], seconds)
        for follower, rounds in sorted(g.get("first_sends", {}).items()):
            first.add_metric(v + [str(follower)], rounds)
    yield from gauges.values()
    yield elections
    yield installs
    yield compactions
    yield reads
    yield lag
    yield trip
    yield first
    h = node.commit_seconds
    c = HistogramMetricFamily("chordctl_raft_commit_seconds",
                              "From a command's submit to its entry applied here",
                              labels=names)
    c.add_metric(values, h.cumulative(), sum_value=h.total)
    yield c
