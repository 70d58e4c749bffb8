"""kv scan and kv count: the ordered windows, the merge, the pipeline marker, real rings.

Pure parts first (store.ordered_keys, scan.Merge), then the ReadMarker on an
in-process node (it must wait for the log like a read), then 4-node rings of
real processes under both placements.
"""

from __future__ import annotations

import json
import random
import threading

import pytest

from chordctl import config as config_mod
from chordctl.client import Client
from chordctl.core.markers import ReadMarker
from chordctl.core.node import Node, Replies
from chordctl.core.request import Request
from chordctl.core.ring import Ring
from chordctl.core.store import Store, count_keys, ordered_keys
from chordctl.errors import DeadlineExceededError, InvalidInputError, UnavailableError
from chordctl.protocol import OP_CREATE
from chordctl.scan import Entry, Merge, nodes_for_range
from conftest import Cluster, run_chordctl, wait_until, write_config

# -- store.ordered_keys ----------------------------------------------------------


def _store(keys, chunks: int = 8) -> list[dict[int, bytes]]:
    s = Store(chunks=chunks)
    for k in keys:
        s.apply(OP_CREATE, k, b"v")
    return s.freeze()


def _families(r: random.Random):
    n = r.randint(0, 300)
    yield r.sample(range(10**6), n)                                   # spread
    yield list(range(n))                                              # dense
    yield list(range(n)) + [10**30 + i for i in range(r.randint(1, 20))]   # a huge gap
    yield [r.randint(0, 10**40) for _ in range(n)]                    # big keys


def test_ordered_keys_equals_sorted_filter_for_any_range_window_and_want() -> None:
    r = random.Random(7)
    for _ in range(40):
        for keys in _families(r):
            chunks = _store(keys)
            every = sorted(set(keys))
            for _ in range(4):
                start = r.choice(every + [0, 5, 10**30]) if every else 0
                end = r.choice([None, start, start + r.randint(0, 10**6)])
                want = r.choice([0, 1, 3, 50])
                windows = list(ordered_keys(chunks, start, end, want, window=r.choice([1, 4, 16])))
                got = [k for w in windows for k in w]
                assert got == [k for k in every if k >= start and (end is None or k < end)]


def test_ordered_keys_holds_at_most_two_windows_at_once() -> None:
    keys = random.Random(1).sample(range(10**9), 5000)
    chunks = _store(keys, chunks=64)
    w = max(16, len(keys) // 8)
    windows = list(ordered_keys(chunks, window=16))
    assert sum(map(len, windows)) == len(keys)
    assert len(windows) > 4 and max(map(len, windows)) <= 2 * w
    # A limit sizes the windows to it: the first window is all a small scan sorts.
    first = next(ordered_keys(chunks, want=10, window=16))
    assert 1 <= len(first) <= 20 and first == sorted(keys)[:len(first)]


def test_an_arcs_first_key_far_into_the_map_takes_few_windows_even_with_a_small_limit():
    """A replica's map holds R arcs whose keys interleave (position = key mod
    the ring). A scan of one arc with --limit 1 walked the map 2 keys per
    window, an executor hop each: 15,000 hops on a 30k-key replica, past the
    client's timeout."""
    from chordctl.core.ring import Ring
    from chordctl.core.store import arc_ordered_keys
    ring = Ring(16, 3)
    in_arc0 = ring.key_test(0)
    keys = [k for k in range(30_000) if not in_arc0(k)] + [65536 * 20 + 65535]   # arc 0: one key, last
    assert in_arc0(65536 * 20 + 65535)
    chunks = _store(keys, chunks=64)
    windows = list(arc_ordered_keys(chunks, 0, None, 2, in_arc0))
    assert windows == [[65536 * 20 + 65535]]
    # Every window yielded holds keys of the arc, in order, and nothing is lost.
    in_arc1 = ring.key_test(1)
    got = [k for w in arc_ordered_keys(chunks, 0, None, 2, in_arc1) for k in w]
    assert got == sorted(k for k in keys if in_arc1(k))
    # Without an arc (R = 1) a small limit still sizes the windows to it.
    first = next(arc_ordered_keys(chunks, 0, None, 10, None))
    assert len(first) <= 20


def test_ordered_keys_of_an_empty_range_or_map_yields_nothing() -> None:
    assert list(ordered_keys(_store([]))) == []
    assert list(ordered_keys(_store([1, 2, 3]), 5, 5)) == []
    assert list(ordered_keys(_store([1, 2, 3]), 3, 2)) == []


def test_count_keys_counts_the_half_open_range() -> None:
    chunks = _store([0, 1, 2, 10, 10**50])
    assert count_keys(chunks) == 5
    assert count_keys(chunks, 1, 10) == 2
    assert count_keys(chunks, 10, None) == 2
    assert count_keys(chunks, 10, 10) == 0


# -- scan.Merge -----------------------------------------------------------------------


def _source(node: int, keys):
    return [Entry(k, b"", node) for k in sorted(keys)]


def test_merge_interleaves_the_nodes_in_key_order() -> None:
    # Direct placement on m=4: node arcs interleave across every 16 keys.
    sources = [_source(0, [15, 31, 47]), _source(1, [1, 17, 33]), _source(2, [8, 24])]
    got = [(e.key, e.node_index) for e in Merge(sources)]
    assert got == [(1, 1), (8, 2), (15, 0), (17, 1), (24, 2), (31, 0), (33, 1), (47, 0)]


def test_merge_limit_is_truncated_only_when_an_entry_is_left() -> None:
    sources = [_source(0, [1, 3]), _source(1, [2, 4])]
    m = Merge(sources, limit=3)
    assert [e.key for e in m] == [1, 2, 3] and m.truncated
    m = Merge([_source(0, [1, 3]), _source(1, [2])], limit=3)
    assert [e.key for e in m] == [1, 2, 3] and not m.truncated
    m = Merge([_source(0, []), _source(1, [])], limit=0)
    assert list(m) == [] and not m.truncated


def test_nodes_for_range_are_exactly_the_owners_of_the_range_under_direct() -> None:
    for n in range(1, 6):
        ring = Ring(4, n, "direct")
        for start in range(0, 40):
            for end in range(start, start + 20):
                want = sorted({ring.owner(k) for k in range(start, end)})
                assert nodes_for_range(ring, start, end) == want, (n, start, end)
        assert nodes_for_range(ring, 5, None) == list(range(n))
    # Under hash placement any node may hold any key.
    assert nodes_for_range(Ring(4, 3, "hash"), 1, 2) == [0, 1, 2]


# -- the ReadMarker on an in-process node -------------------------------------------


def test_scan_marker_waits_until_the_write_before_it_is_durable(tmp_path) -> None:
    cfg = config_mod.load(write_config(tmp_path, 1, fsync="batch"))
    drop = Replies(lambda reqs: None, lambda reqs: None)
    node = Node(cfg, 0, drop)
    node.recover()
    release = threading.Event()
    node.start()
    try:
        real_sync = node.log.sync

        def slow_sync() -> None:
            release.wait(30)
            real_sync()

        node.log.sync = slow_sync
        node.submit([Request(OP_CREATE, 5, b"5", b"five", deadline=1e18)])
        done = threading.Event()
        marker = ReadMarker(True, lambda m: done.set())
        node.request_read(marker)
        # The applier has frozen the map with the write in it...
        wait_until(lambda: marker.chunks is not None, what="the applier to freeze the map")
        assert marker.keys == 1 and marker.seq == 1
        assert marker.chunks[5 & (len(marker.chunks) - 1)][5] == b"five"
        # ...but the scan may not start until that write is durable.
        assert not done.is_set()
        release.set()
        assert done.wait(10)
        assert marker.error is None
        # Everything durable now: the next marker needs the applier only.
        again = threading.Event()
        quick = ReadMarker(False, lambda m: again.set())
        node.request_read(quick)
        assert again.wait(10) and quick.keys == 1 and quick.chunks is None
    finally:
        release.set()
        node.stop(final_snapshot=False)


# -- real 4-node rings ----------------------------------------------------------------

BITS = 8           # small, so that many keys share a ring position under direct
HUGE = 10**30


def _data() -> dict[str, bytes]:
    keys = list(range(0, 700, 3)) + [HUGE + i for i in range(0, 50, 7)] + [2**64 - 1]
    data = {str(k): f"v{k}".encode() for k in keys}
    data["1"] = b"\xff\x00bin\nary"
    return data


@pytest.fixture(scope="module", params=["direct", "hash"])
def ring4(request, tmp_path_factory):
    """A 4-node ring loaded with _data(), shared by the read-only tests."""
    path = write_config(tmp_path_factory.mktemp(f"scan-{request.param}"), 4, bits=BITS,
                        placement=request.param, timeout=10)
    cluster = Cluster(path).start()
    try:
        with Client(cluster.config) as c:
            results = c.batch([("create", k, v) for k, v in _data().items()])
            assert all(not isinstance(r, Exception) for r in results), results
        yield cluster
    finally:
        cluster.stop()


def _ring(cluster: Cluster) -> Ring:
    cfg = cluster.config
    return Ring.from_config(cfg)


def _json(cluster: Cluster, *args: str) -> tuple[dict, str, int]:
    p = run_chordctl("-c", cluster.config_path, "-o", "json", *args)
    return json.loads(p.stdout or b"null"), p.stderr.decode(), p.returncode


def test_scan_lists_every_key_in_key_order_from_its_owner(ring4) -> None:
    doc, err, rc = _json(ring4, "kv", "scan", "--all")
    assert rc == 0, err
    data = _data()
    ring = _ring(ring4)
    assert [e["key"] for e in doc["entries"]] == sorted(data, key=int)
    for e in doc["entries"]:
        assert e["node"] == ring.owner(int(e["key"]))
        if e["key"] != "1":
            assert e == {"key": e["key"], "value": data[e["key"]].decode(),
                         "encoding": "utf-8", "node": e["node"]}
    binary = next(e for e in doc["entries"] if e["key"] == "1")
    assert binary["encoding"] == "base64"
    assert doc["count"] == len(data) and doc["truncated"] is False and doc["complete"] is True
    assert sorted(n["index"] for n in doc["nodes"]) == [0, 1, 2, 3]
    assert sum(n["keys"] for n in doc["nodes"]) == len(data)


def test_kv_export_to_a_pipe_closed_early_ends_quietly(make_cluster) -> None:
    """`kv export - | head -1`: exit 0 and nothing on stderr, as every
    command that writes to a pipe the reader closed (here 600 KB, more than
    a pipe holds, so the export does meet the closed pipe)."""
    import subprocess
    import sys
    cluster = make_cluster(1)
    with Client(cluster.config) as c:
        c.batch([("create", k, b"v" * 100) for k in range(5000)])
    p = subprocess.Popen([sys.executable, "-m", "chordctl", "-c", cluster.config_path, "kv",
                          "export", "-"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = p.stdout.readline()
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=60) == 0, err
    assert json.loads(first)["key"] == "0"
    assert "Broken pipe" not in err and "Traceback" not in err, err


def test_scan_json_in_a_pipe_is_one_line_as_every_json_document(ring4) -> None:
    p = run_chordctl("-c", ring4.config_path, "-o", "json", "kv", "scan", "--limit", "5")
    assert p.returncode == 0 and p.stdout.count(b"\n") == 1, p.stdout
    doc = json.loads(p.stdout)
    assert doc["count"] == 5 and len(doc["entries"]) == 5 and doc["truncated"] is True


def test_scan_from_is_inclusive_and_to_exclusive(ring4) -> None:
    doc, err, rc = _json(ring4, "kv", "scan", "--from", "300", "--to", "330", "--keys-only")
    assert rc == 0, err
    assert [e["key"] for e in doc["entries"]] == [str(k) for k in range(300, 330, 3)]
    assert "value" not in doc["entries"][0]
    doc, _, _ = _json(ring4, "kv", "scan", "--from", str(HUGE))
    assert [e["key"] for e in doc["entries"]] == [str(HUGE + i) for i in range(0, 50, 7)]


def test_scan_limit_stops_and_says_where_to_continue(ring4) -> None:
    p = run_chordctl("-c", ring4.config_path, "-o", "plain", "kv", "scan", "--limit", "4",
                     "--keys-only")
    assert p.returncode == 0, p.stderr
    assert p.stdout.decode().split() == ["0", "1", "3", "6"]
    assert "continue with --from 7" in p.stderr.decode()
    doc, _, _ = _json(ring4, "kv", "scan", "--from", "7", "--limit", "2")
    assert [e["key"] for e in doc["entries"]] == ["9", "12"]
    assert doc["truncated"] is True and doc["next"] == "13"
    # Exactly as many keys as the limit: nothing left, not truncated.
    doc, _, _ = _json(ring4, "kv", "scan", "--from", "690", "--to", "700", "--limit", "4")
    assert [e["key"] for e in doc["entries"]] == ["690", "693", "696", "699"]
    assert doc["truncated"] is False


def test_scan_plain_prints_values_as_stored_and_table_escapes_them(ring4) -> None:
    p = run_chordctl("-c", ring4.config_path, "-o", "plain", "kv", "scan", "--to", "4")
    assert p.stdout == b"0\tv0\n1\t\xff\x00bin\nary\n3\tv3\n"
    p = run_chordctl("-c", ring4.config_path, "kv", "scan", "--to", "4")
    lines = p.stdout.decode().splitlines()
    assert lines[0].split() == ["key", "node", "value"]
    assert lines[3].split()[0::2] == ["1", "\\xff\\x00bin\\nary"]


def test_count_reports_each_nodes_keys_and_the_total(ring4) -> None:
    ring = _ring(ring4)
    owners = [ring.owner(int(k)) for k in _data()]
    doc, err, rc = _json(ring4, "kv", "count")
    assert rc == 0, err
    assert doc["total"] == len(owners) and doc["complete"] is True
    assert {n["index"]: n["keys"] for n in doc["nodes"]} == {i: owners.count(i) for i in range(4)}
    doc, _, _ = _json(ring4, "kv", "count", "--from", "3", "--to", "9")
    assert doc["total"] == 2
    p = run_chordctl("-c", ring4.config_path, "-o", "plain", "kv", "count")
    assert p.stdout.decode() == f"{len(owners)}\n"


def test_scan_with_target_lists_only_that_nodes_keys(ring4) -> None:
    ring = _ring(ring4)
    doc, err, rc = _json(ring4, "--target", ring4.address(2), "kv", "scan", "--all")
    assert rc == 0, err
    mine = sorted((k for k in _data() if ring.owner(int(k)) == 2), key=int)
    assert [e["key"] for e in doc["entries"]] == mine
    assert [n["index"] for n in doc["nodes"]] == [2]


def test_scan_refuses_a_bad_range_with_exit_2(ring4) -> None:
    p = run_chordctl("-c", ring4.config_path, "kv", "scan", "--from", "-5")
    assert p.returncode == 2 and b"negative" in p.stderr and b"Traceback" not in p.stderr
    p = run_chordctl("-c", ring4.config_path, "kv", "count", "--to", "x1")
    assert p.returncode == 2 and b"not a non-negative decimal integer" in p.stderr
    with Client(ring4.config) as c, pytest.raises(InvalidInputError):
        c.scan("abc")
    # A node refuses it too (a client that skipped the check).
    from chordctl.pb import chord_pb2 as pb
    from chordctl.pb import chord_pb2_grpc as pb_grpc
    import grpc
    with grpc.insecure_channel(ring4.address(0)) as ch:
        with pytest.raises(grpc.RpcError) as e:
            list(pb_grpc.KeyValueStub(ch).Scan(pb.ScanRequest(start="-1"), timeout=10))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details().startswith("scan: key -1 is negative")


def test_node_refuses_a_bad_count_range_and_malformed_scan_and_count_bodies(ring4) -> None:
    import grpc
    from chordctl.pb import chord_pb2 as pb
    with grpc.insecure_channel(ring4.address(0)) as ch:
        with pytest.raises(grpc.RpcError) as e:
            ch.unary_unary("/chord.v1.KeyValue/Count")(
                pb.CountRequest(end="x1").SerializeToString(), timeout=10)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert e.value.details().startswith("count: key 'x1' is not a non-negative")
        for method in ("/chord.v1.KeyValue/Count", "/chord.v1.KeyValue/Scan"):
            call = (ch.unary_unary if method.endswith("Count") else ch.unary_stream)(method)
            with pytest.raises(grpc.RpcError) as e:
                reply = call(b"\xff\xff", timeout=10)
                if method.endswith("Scan"):
                    list(reply)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, method
            assert "not a valid chord.v1." in e.value.details(), method


# -- consistency and failures (their own rings) ------------------------------------------


def test_scan_sees_each_node_as_of_its_start_while_writes_go_on(tmp_path) -> None:
    path = write_config(tmp_path, 4, bits=BITS, timeout=10)
    cluster = Cluster(path).start()
    old = b"o" * 65536      # big pages: gRPC flow control holds each node back
    try:
        with Client(cluster.config, route="direct") as c:
            for i in range(0, 400, 50):
                c.batch([("create", str(k), old) for k in range(i, i + 50)])
            s = c.scan(limit=0, page_size=1)
            # The views are frozen now; most pages are built after these writes.
            c.batch([("update", str(k), b"new") for k in range(400)])
            c.batch([("delete", str(k), None) for k in range(0, 400, 2)])
            c.batch([("create", str(k), b"late") for k in range(400, 500)])
            got = [(e.key, e.value == old) for e in s]
            assert got == [(k, True) for k in range(400)]
            assert [(e.key, e.value) for e in c.scan(limit=0)] == \
                [(k, b"new") for k in range(1, 400, 2)] + [(k, b"late") for k in range(400, 500)]
    finally:
        cluster.stop()


def test_scan_during_a_writer_sees_a_prefix_of_each_nodes_writes(tmp_path) -> None:
    """A writer creates 0, 1, 2, ... one at a time (each acknowledged before the
    next); every node's view must hold exactly a prefix of the keys it owns,
    and at least all that were acknowledged before the scan began."""
    path = write_config(tmp_path, 4, bits=BITS, timeout=10)
    cluster = Cluster(path).start()
    stop = threading.Event()
    acked = [-1]

    def writer() -> None:
        with Client(cluster.config, route="direct") as w:
            k = 0
            while not stop.is_set() and k < 5000:
                w.create(str(k), b"x")
                acked[0] = k
                k += 1

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    try:
        ring = _ring(cluster)
        with Client(cluster.config) as c:
            for _ in range(3):
                wait_until(lambda: acked[0] >= 50, what="the writer to get going")
                before = acked[0]
                keys = [e.key for e in c.scan(limit=0, page_size=7)]
                for i in range(4):
                    mine = [k for k in keys if ring.owner(k) == i]
                    assert mine == [k for k in range(len(mine) and mine[-1] + 1)
                                    if ring.owner(k) == i], f"node {i}: not a prefix"
                    assert all(k in set(mine) for k in range(before + 1) if ring.owner(k) == i)
    finally:
        stop.set()
        t.join(30)
        cluster.stop()


def test_kv_export_writes_json_lines_that_kv_load_reads(ring4, tmp_path) -> None:
    """Every key once, in key order, as kv load's JSONL (binary values as
    base64); a range; stdout; the file appears only once complete."""
    out = tmp_path / "keys.jsonl"
    p = run_chordctl("-c", ring4.config_path, "kv", "export", str(out))
    assert p.returncode == 0, p.stderr
    data = _data()
    assert f"exported {len(data)} key(s) to {out}" in p.stdout.decode()
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [d["key"] for d in lines] == sorted(data, key=int)
    assert {d["key"]: d for d in lines}["1"]["encoding"] == "base64"
    assert not (tmp_path / "keys.jsonl.tmp").exists()
    from chordctl import bulk
    bad: list[str] = []
    with open(out, "rb") as f:
        loaded = dict(bulk.records(f, "jsonl", bad))
    assert bad == [] and loaded == {k: v for k, v in data.items()}
    p = run_chordctl("-c", ring4.config_path, "kv", "export", "--from", "300", "--to", "310",
                     "-")
    assert p.returncode == 0, p.stderr
    assert [json.loads(x)["key"] for x in p.stdout.decode().splitlines()] == \
        ["300", "303", "306", "309"]
    assert "exported 4 key(s) to stdout" in p.stderr.decode()
    doc, err, rc = _json(ring4, "kv", "export", str(tmp_path / "again.jsonl"))
    assert rc == 0 and doc["keys"] == len(data), err
    p = run_chordctl("-c", ring4.config_path, "kv", "export", str(tmp_path / "no" / "dir.jsonl"))
    assert p.returncode == 2 and b"cannot write" in p.stderr and b"Traceback" not in p.stderr


def test_scan_with_a_node_down_exits_3_naming_it(tmp_path) -> None:
    path = write_config(tmp_path, 4, bits=BITS, timeout=5)
    cluster = Cluster(path).start()
    try:
        with Client(cluster.config) as c:
            c.batch([("create", str(k), b"v") for k in range(64)])
        cluster.nodes[2].kill()
        label = f"node 2 (id {_ring(cluster).ids[2]}) at {cluster.address(2)}"
        p = run_chordctl("-c", path, "kv", "scan")
        err = p.stderr.decode()
        assert p.returncode == 3 and p.stdout == b"", err
        assert label in err and "--partial" in err and "Traceback" not in err
        p = run_chordctl("-c", path, "-o", "plain", "kv", "scan", "--partial", "--keys-only")
        owners = [_ring(cluster).owner(k) for k in range(64)]
        assert p.returncode == 3
        assert [int(k) for k in p.stdout.split()] == [k for k in range(64) if owners[k] != 2]
        assert label in p.stderr.decode() and "NOT listed" in p.stderr.decode()
        doc, err, rc = _json(cluster, "kv", "count")
        assert rc == 3 and label in err
        assert doc["complete"] is False and doc["total"] == 64 - owners.count(2)
        assert [n["keys"] for n in doc["nodes"]][2] is None
        with Client(cluster.config) as c, pytest.raises(UnavailableError):
            c.scan()
        out = tmp_path / "keys.jsonl"
        p = run_chordctl("-c", path, "kv", "export", str(out))
        assert p.returncode == 3 and label in p.stderr.decode(), p.stderr
        assert f"nothing was written to {out}" in p.stderr.decode()
        assert not out.exists() and not (tmp_path / "keys.jsonl.tmp").exists()
        # Direct placement: a range whose positions node 2 does not own never asks it.
        lo, hi = _ring(cluster).arc(2)
        p = run_chordctl("-c", path, "-o", "plain", "kv", "scan", "--to", str(lo + 1),
                         "--keys-only")
        assert p.returncode == 0, p.stderr
        assert [int(k) for k in p.stdout.split()] == list(range(lo + 1))
        doc, err, rc = _json(cluster, "kv", "count", "--from", str(hi + 1), "--to", "256")
        assert rc == 0 and doc["total"] == 0 and [n["index"] for n in doc["nodes"]] == [0, 1]
    finally:
        cluster.stop()


def _fill_for_a_fault(c: Client, ring: Ring, failing: int) -> None:
    """Keys 0..399, 64 KB values; node *failing* gets 512 KB ones (40 MB in
    pages of one entry): more than gRPC's receive windows and the client's
    page queue take in ahead of the reader, so the rest of its keys are still
    on it when it dies or hangs."""
    big, bigger = b"b" * 65536, b"B" * (512 * 1024)
    mine = ring.key_test(failing)
    for i in range(0, 400, 10):
        c.batch([("create", str(k), bigger if mine(k) else big) for k in range(i, i + 10)])


def test_scan_fails_naming_the_node_that_dies_mid_stream(tmp_path) -> None:
    path = write_config(tmp_path, 4, bits=BITS, timeout=5)
    cluster = Cluster(path).start()
    try:
        ring = _ring(cluster)
        with Client(cluster.config, route="direct") as c:
            _fill_for_a_fault(c, ring, 1)
            s = c.scan(limit=0, page_size=1)
            it = iter(s)
            # The first entry needs every node's first page: node 1's stream
            # is open. Kill it at once; read further first and (on a loaded
            # machine) node 1 may have streamed all it holds into the
            # client's buffers, and its stream ends cleanly.
            seen = [next(it).key]
            cluster.nodes[1].kill()
            with pytest.raises(UnavailableError) as e:
                for entry in it:
                    seen.append(entry.key)
            assert f"node 1 (id {ring.ids[1]}) at {cluster.address(1)}" in str(e.value)
            assert seen == list(range(len(seen))) and len(seen) < 400
    finally:
        cluster.stop()


def test_scan_of_a_hung_node_times_out_naming_it(tmp_path) -> None:
    import signal
    path = write_config(tmp_path, 4, bits=BITS, timeout=1)
    cluster = Cluster(path).start()
    label = f"node 3 (id {_ring(cluster).ids[3]}) at {cluster.address(3)}"
    try:
        with Client(cluster.config, route="direct", timeout=5) as c:
            _fill_for_a_fault(c, _ring(cluster), 3)
        with Client(cluster.config) as c:
            s = c.scan(limit=0, page_size=1)
            it = iter(s)
            next(it)
            cluster.nodes[3].kill(signal.SIGSTOP)    # hangs with pages still to send
            with pytest.raises(DeadlineExceededError) as e:
                for _ in it:
                    pass
            assert f"scan: {label} sent nothing for 1s" in str(e.value)
        # Stopped before the scan: gRPC gives up connecting; exit 3 all the same.
        p = run_chordctl("-c", path, "kv", "scan", timeout=60)
        assert p.returncode == 3 and label in p.stderr.decode(), p.stderr
    finally:
        cluster.nodes[3].kill(signal.SIGCONT)
        cluster.stop()


def test_kv_scan_limit_past_uint64_is_exit_2_not_a_traceback(tmp_path):
    path = write_config(tmp_path, 1)            # never started: refused before any call
    p = run_chordctl("-c", path, "kv", "scan", "--limit", str(10 ** 24))
    err = p.stderr.decode()
    assert p.returncode == 2, err
    assert "Traceback" not in err and "--limit" in err, err
