"""`kv load`, `bench`, the coalescing client and coalesced forwards, end to end on tiny data."""

from __future__ import annotations

import io
import json
import sys
import threading

import grpc
import pexpect
import pytest

from chordctl import bulk, cpulist
from chordctl.bench import engine, workloads
from chordctl.bench.runner import one_hop_keys
from chordctl.pb import chord_pb2 as pb
from chordctl.client import Client
from chordctl.core import affinity
from chordctl.core.ring import Ring
from chordctl.errors import AlreadyExistsError, NotFoundError


def test_kv_load_csv_reports_records_and_failures(make_cluster, run_cli, tmp_path):
    cluster = make_cluster(4)
    cli = run_cli(cluster.config_path)
    path = tmp_path / "data.csv"
    path.write_text("key,value\n" + "".join(f"{k},val{k}\n" for k in range(0, 60000, 97)))
    res = cli("kv", "load", str(path), output="json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    n = len(range(0, 60000, 97))
    assert doc["records"] == n and doc["ok"] == n and doc["failures"] == 0
    assert doc["records_per_s"] > 0
    with Client(cluster.config) as c:
        assert c.read("9700").value == b"val9700"
    # The same file again: every record fails as already existing, exit 1.
    res = cli("kv", "load", str(path), output="json")
    assert res.exit_code == 1
    doc = json.loads(res.stdout)
    assert doc["failures"] == n and doc["errors"] == {"already exists": n}


def test_kv_load_where_every_record_failed_reports_0_records_per_s(make_cluster, run_cli,
                                                                   tmp_path):
    cluster = make_cluster(1)
    cli = run_cli(cluster.config_path)
    path = tmp_path / "data.csv"
    path.write_text("".join(f"{k},v\n" for k in range(50)))
    assert cli("kv", "load", str(path)).exit_code == 0
    res = cli("kv", "load", str(path), output="json")
    assert res.exit_code == 1
    doc = json.loads(res.stdout)
    assert (doc["records"], doc["ok"], doc["failures"]) == (50, 0, 50)
    assert doc["records_per_s"] == 0
    res = cli("kv", "load", str(path))
    assert res.exit_code == 1 and "(0 records/s)" in res.stdout


@pytest.mark.parametrize("header", ["key,value", "id,name", "Key;Value,x", "k,v"])
def test_kv_load_csv_header_is_a_first_line_that_is_not_a_key(header):
    data = f"{header}\n1,a\n2,b,c\n".encode()
    bad: list[str] = []
    assert list(bulk.records(io.BytesIO(data), "csv", bad)) == [("1", b"a"), ("2", b"b,c")]
    assert bad == []


def test_kv_load_csv_first_line_that_is_a_key_is_a_record():
    bad: list[str] = []
    got = list(bulk.records(io.BytesIO(b"7,seven\nnot-a-key,x\n"), "csv", bad))
    assert got == [("7", b"seven"), ("not-a-key", b"x")]    # (refused later, as a bad key)


def test_kv_load_csv_value_over_128_kib_is_a_record_not_a_python_error():
    """Python's csv stops at 128 KiB a field, with an exception: a 1 MB value
    (the default limits.max_value_bytes) ended `kv load` in a traceback."""
    big = b"x" * (1024 * 1024)
    bad: list[str] = []
    got = list(bulk.records(io.BytesIO(b"1,a\n2," + big + b"\n3,c\n"), "csv", bad))
    assert got == [("1", b"a"), ("2", big), ("3", b"c")] and bad == []


def test_kv_load_csv_field_over_the_reader_limit_is_one_failed_record(monkeypatch):
    import csv
    before = csv.field_size_limit()
    monkeypatch.setattr(bulk, "CSV_FIELD_LIMIT", 1000)
    csv.field_size_limit(1000)
    try:
        bad: list[str] = []
        got = list(bulk.records(io.BytesIO(b"1,a\n2," + b"x" * 5000 + b"\n3,c\n"), "csv", bad))
    finally:
        csv.field_size_limit(before)
    assert got == [("1", b"a"), ("3", b"c")]
    assert len(bad) == 1 and bad[0].startswith("line 2: field larger than field limit"), bad


def test_kv_load_jsonl_key_number_of_4301_digits_is_the_key_not_a_python_error():
    """A JSON number key longer than Python's int conversion limit (4,300
    digits) is taken as its digits, so the key limit (limits.max_key_digits)
    judges it -- no 'ValueError ... sys.set_int_max_str_digits()' message."""
    big = "7" * 5000
    data = (f'{{"key": {big}, "value": "v"}}\n{{"key": 1, "value": {big}}}\n'
            f'{{"key": 2, "value": [{big}]}}\n{{"value": "no key"}}\n').encode()
    bad: list[str] = []
    got = list(bulk.records(io.BytesIO(data), "jsonl", bad))
    assert got == [(big, b"v"), ("1", big.encode())], [(k[:10], v[:10]) for k, v in got]
    assert len(bad) == 2, bad
    assert not any("set_int_max_str_digits" in b or "ValueError" in b or "KeyError" in b
                   for b in bad), bad
    assert bad[0].startswith("line 3: ") and "4300 digits" in bad[0], bad
    assert bad[1].startswith("line 4: ") and '"key"' in bad[1], bad


def test_kv_load_counting_reader_is_a_real_stream_and_counts_every_byte():
    data = "".join(f'{{"key": "{k}", "value": "v{k}"}}\n' for k in range(3000)).encode()
    seen = []
    got = list(bulk.records(io.BytesIO(data), "jsonl", [], progress=seen.append))
    assert len(got) == 3000 and got[-1] == ("2999", b"v2999")
    assert sum(seen) == len(data)
    stream = io.BytesIO(b"1,a\n")
    list(bulk.records(stream, "csv", [], progress=seen.append))
    assert not stream.closed     # the caller's stream is left open


def _spawn(cmd: str) -> pexpect.spawn:
    """*cmd* under a real pseudo-terminal (stderr a terminal), wide enough for a bar."""
    return pexpect.spawn("/bin/sh", ["-c", cmd], timeout=60, dimensions=(24, 120))


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_kv_load_on_a_terminal_shows_a_progress_bar(make_cluster, tmp_path, fmt):
    cluster = make_cluster(2)
    path = tmp_path / f"data.{fmt}"
    if fmt == "csv":
        path.write_text("key,value\n" + "".join(f"{k},v{k}\n" for k in range(3000)))
    else:
        path.write_text("".join(f'{{"key": "{k}", "value": "v"}}\n' for k in range(3000)))
    child = _spawn(f"{sys.executable} -m chordctl -c {cluster.config_path} kv load {path}")
    child.expect(pexpect.EOF)
    child.close()
    out = child.before.decode()
    assert "Traceback" not in out, out
    assert child.exitstatus == 0, out
    assert "loading" in out and "100%" in out, out
    assert "loaded 3000 of 3000 records" in out, out


def test_kv_load_from_stdin_on_a_terminal_shows_a_count(make_cluster, tmp_path):
    cluster = make_cluster(1)
    path = tmp_path / "data.csv"
    path.write_text("".join(f"{k},v\n" for k in range(1500)))
    child = _spawn(f"cat {path} | {sys.executable} -m chordctl -c {cluster.config_path} "
                   f"kv load -")
    child.expect(pexpect.EOF)
    child.close()
    out = child.before.decode()
    assert child.exitstatus == 0, out
    assert "loading (records)" in out and "1500" in out, out
    assert "%" not in out, out               # no percentage of an unknown total
    assert "loaded 1500 of 1500 records" in out, out


def test_kv_load_jsonl_from_stdin_counts_malformed_lines(make_cluster, run_cli):
    cluster = make_cluster(1)
    cli = run_cli(cluster.config_path)
    text = ('{"key": "1", "value": "one"}\n'
            'not json\n'
            '{"key": "2", "value": "AAEC", "encoding": "base64"}\n'
            '{"key": "-3", "value": "neg"}\n'
            '{"value": "no key"}\n')
    res = cli("kv", "load", "--format", "jsonl", "-", input=text, output="json")
    assert res.exit_code == 1
    doc = json.loads(res.stdout)
    assert doc["records"] == 5 and doc["ok"] == 2 and doc["failures"] == 3
    assert doc["errors"] == {"malformed input": 2, "invalid input": 1}
    with Client(cluster.config) as c:
        assert c.read("1").value == b"one"
        assert c.read("2").value == b"\x00\x01\x02"


def test_kv_load_missing_file_is_a_usage_error(make_cluster, run_cli, tmp_path):
    cluster = make_cluster(1)
    res = run_cli(cluster.config_path)("kv", "load", str(tmp_path / "nope.csv"))
    assert res.exit_code == 2
    assert "cannot read" in res.output


def test_kv_load_with_the_ring_down_says_so_without_a_python_error(tmp_path):
    from conftest import run_chordctl, write_config
    config = write_config(tmp_path, 3)          # no node started
    data = tmp_path / "keys.csv"
    data.write_text("".join(f"{k},v{k}\n" for k in range(1, 2001)))
    res = run_chordctl("-c", config, "kv", "load", str(data))
    err = res.stderr.decode()
    assert res.returncode == 3, err
    assert "no node of the config answered" in err
    assert "Traceback" not in err and "Exception ignored" not in err, err


def test_bench_runs_end_to_end_with_well_formed_json(make_cluster, run_cli):
    cluster = make_cluster(4)
    res = run_cli(cluster.config_path)(
        "bench", "--records", "300", "--ops", "300", "--seq-ops", "50", "--concurrency", "8",
        "--workloads", "A,C", "--distributions", "uniform,zipfian", "--routes", "entry,direct",
        output="json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    phases = {r["phase"] for r in doc["results"]}
    assert "load (batch 4000, direct)" in phases
    assert {"seq read, entry owns", "seq read, 1 forward", "seq update, entry owns"} <= phases
    for w in ("A", "C"):
        for d in ("uniform", "zipfian"):
            for r in ("entry", "direct"):
                assert f"ycsb {w} {d} {r}" in phases
    for row in doc["results"]:
        assert row["errors"] == 0, row
        assert row["ops"] > 0 and row["ops_per_s"] > 0
        if row["phase"].startswith("load"):
            assert row["p50_ms"] is None and row["max_ms"] is None    # null, not ""
        else:
            assert 0 <= row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"] <= row["max_ms"]
    assert doc["machine"]["nodes"] == 4
    # bench cleans up after itself: the ring holds no key of its run.
    assert doc["cleanup"] == {"deleted": 300, "failures": 0}
    assert keys_held(cluster) == 0


def keys_held(cluster) -> int:
    total = 0
    for i in range(len(cluster.config.nodes)):
        with Client(cluster.config, target=cluster.address(i)) as c:
            total += c.status().keys
    return total


BENCH_SMALL = ["--records", "120", "--ops", "60", "--seq-ops", "10", "--rounds", "1",
               "--concurrency", "4", "--workloads", "A", "--distributions", "uniform",
               "--routes", "entry"]


def test_bench_leaves_no_keys_and_never_touches_keys_below_its_range(make_cluster, run_cli):
    cluster = make_cluster(2)
    cli = run_cli(cluster.config_path)
    assert cli("kv", "create", "12345", "mine").exit_code == 0
    res = cli("bench", *BENCH_SMALL, output="json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    first = int(doc["keys"]["first"])
    assert 10**18 <= first and first + 120 * doc["keys"]["stride"] < 2 * 10**18
    assert "deleted the 120 keys it used" in res.stderr
    assert keys_held(cluster) == 1
    with Client(cluster.config) as c:
        assert c.read("12345").value == b"mine"


def test_bench_keep_leaves_its_keys_in_its_range(make_cluster, run_cli):
    cluster = make_cluster(1)
    res = run_cli(cluster.config_path)("bench", *BENCH_SMALL, "--keep", output="json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["cleanup"] is None
    assert keys_held(cluster) == 120
    first, stride = int(doc["keys"]["first"]), doc["keys"]["stride"]
    with Client(cluster.config) as c:
        assert c.read(str(first + 119 * stride)).value == b"v" * 32


def test_bench_every_option_has_help(run_cli):
    from chordctl.cli.bench import bench
    missing = [p.name for p in bench.params if not getattr(p, "help", None)]
    assert missing == []
    res = run_cli(None)("bench", "--help")
    assert "10^18" in res.stdout and "--keep" in res.stdout


def test_bench_baseline_interleaves_rounds_and_reports_median_ratios(make_cluster, run_cli):
    cluster = make_cluster(4)
    res = run_cli(cluster.config_path)(
        "bench", "--records", "200", "--ops", "200", "--seq-ops", "31", "--rounds", "3",
        "--concurrency", "8", "--workloads", "C", "--distributions", "uniform",
        "--routes", "entry", "--baseline", output="json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    base = {r["phase"]: r for r in doc["baseline"]}
    results = {r["phase"]: r for r in doc["results"]}
    # Every sequential shape, node's and echo's, pools its 3 rounds (11 + 10 + 10).
    for phase in ("echo unary 1 hop", "echo unary 2 hops"):
        assert base[phase]["ops"] == 31 and base[phase]["errors"] == 0
    for phase in ("seq read, entry owns", "seq read, 1 forward", "seq update, entry owns"):
        assert results[phase]["ops"] == 31 and results[phase]["errors"] == 0
    assert {"echo unary 1 hop x8", "echo coalesced 1 hop x8", "echo batch of 100"} <= set(base)
    for key in ("seq owned / echo 1 hop", "seq 1 forward / echo 2 hops"):
        rounds = doc["ratio_rounds"][key]
        assert len(rounds) == 3 and all(r > 0 for r in rounds)
        assert doc["ratios"][key] == sorted(rounds)[1]            # the median round
    # Unpinned nodes: the echoes run where the nodes may run.
    cpus = cpulist.format_cpulist(affinity.available())
    assert doc["machine"]["node_cpus"] == [cpus, cpus]
    assert doc["machine"]["event_loop"] in ("uvloop", "asyncio")


def test_bench_rejects_unknown_workload(make_cluster, run_cli):
    cluster = make_cluster(1)
    res = run_cli(cluster.config_path)("bench", "--workloads", "Z")
    assert res.exit_code == 2 and "not one of" in res.output


def test_zipfian_prefers_few_keys_and_stays_in_range():
    z = workloads.Zipfian(1000, seed=3)
    draws = [z() for _ in range(20000)]
    assert all(0 <= d < 1000 for d in draws)
    counts = sorted((draws.count(k) for k in set(draws)), reverse=True)
    assert sum(counts[:10]) > 0.2 * len(draws)      # the head is heavy
    ops = list(workloads.operations("B", "uniform", 100, 2000, str, b"v"))
    reads = sum(1 for o in ops if o[0] == "read")
    assert 0.9 * 2000 < reads < 0.99 * 2000


def test_percentiles_are_ordered():
    vals = sorted(i / 1000 for i in range(1000))
    assert engine.percentile(vals, 0.5) <= engine.percentile(vals, 0.99) <= vals[-1]
    assert engine.percentile([], 0.5) == 0.0


@pytest.mark.parametrize(("route", "depth"), [("entry", 2), ("direct", 1)])
def test_coalescing_client_gives_every_operation_its_own_result(make_cluster, route, depth):
    cluster = make_cluster(4)
    outcomes: dict[int, object] = {}
    done = threading.Event()
    lock = threading.Lock()
    n = 400
    with Client(cluster.config, coalesce=True, route=route) as c:
        assert c.coalesce_depth == depth      # Batch calls in flight per node
        for i in range(n):
            key = str(i * 163)
            op = "create" if i % 2 == 0 else "read"   # reads of keys never created fail

            def cb(out, i=i):
                with lock:
                    outcomes[i] = out
                    if len(outcomes) == n:
                        done.set()

            c.submit(op, key, b"v%d" % i if op == "create" else None, callback=cb)
        assert done.wait(60)
    ring = Ring(16, 4)
    for i, out in outcomes.items():
        if i % 2 == 0:
            assert not isinstance(out, Exception), out
            assert out.node_index == ring.owner(i * 163)
        else:
            assert isinstance(out, NotFoundError), out


def test_coalesced_forward_keeps_each_clients_order_per_key(make_cluster):
    cluster = make_cluster(4)
    ring = Ring(16, 4)
    entry = 0
    # Keys another node owns, so every batch is forwarded (and coalesced).
    keys = [k for k in range(1, 60000, 37) if ring.owner(k) != entry][:16]
    errors = []

    def client_thread(key: int) -> None:
        with Client(cluster.config, target=cluster.address(entry)) as c:
            ops = [("create", str(key), b"0")]
            ops += [("update", str(key), b"%d" % j) for j in range(1, 30)]
            ops += [("read", str(key), None), ("create", str(key), b"x"),
                    ("delete", str(key), None), ("read", str(key), None)]
            res = c.batch(ops)
            try:
                assert len(res) == len(ops)
                assert all(not isinstance(r, Exception) for r in res[:31]), res
                assert res[30].value == b"29"
                assert isinstance(res[31], AlreadyExistsError)
                assert not isinstance(res[32], Exception)
                assert isinstance(res[33], NotFoundError)
                assert res[0].node_index == ring.owner(key)
            except AssertionError as e:
                errors.append(e)

    threads = [threading.Thread(target=client_thread, args=(k,)) for k in keys]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors[0]


def test_bench_reuses_a_loaded_key_range_and_compares_snapshot_latency(make_cluster, run_cli):
    cluster = make_cluster(2)
    cli = run_cli(cluster.config_path)
    common = ["--records", "200", "--ops", "200", "--seq-ops", "20", "--concurrency", "8",
              "--workloads", "C", "--distributions", "uniform", "--routes", "entry",
              "--key-base", "5000000"]
    first = cli("bench", *common, "--keep", output="json")
    assert first.exit_code == 0, first.output
    second = cli("bench", *common, "--skip-load", "--snapshot-phase", output="json")
    assert second.exit_code == 0, second.output
    doc = json.loads(second.stdout)
    phases = [r["phase"] for r in doc["results"]]
    assert not any(p.startswith("load") for p in phases)          # nothing created again
    assert "ycsb C, no snapshot" in phases
    assert any(p.startswith("ycsb C, during snapshots (") for p in phases)
    assert all(r["errors"] == 0 for r in doc["results"])          # the keys were there
    assert "p99 during snapshots / p99 without" in doc["ratios"]
    with Client(cluster.config) as c:
        st = c.status()
    assert st.snapshot_counter >= 1 and st.rss_bytes > 10_000_000 and st.ready_seconds > 0
    assert doc["cleanup"]["deleted"] == 200 and keys_held(cluster) == 0   # reused, then deleted


def test_bench_skip_load_needs_the_key_base(make_cluster, run_cli):
    cluster = make_cluster(1)
    res = run_cli(cluster.config_path)("bench", "--skip-load")
    assert res.exit_code == 2 and "--key-base" in res.output


@pytest.mark.parametrize("routing", ["fingers", "neighbors"])
@pytest.mark.parametrize("n", [2, 4, 8])
def test_bench_forwarded_phase_reads_keys_of_the_next_node_one_hop_away(routing, n):
    ring = Ring(16, n, "direct", routing)
    keys = [str(10**12 + i * 7919) for i in range(4000)]
    picked = one_hop_keys(ring, keys, 0)
    assert picked and {ring.owner(int(k)) for k in picked} == {1}
    assert all(len(ring.route(0, int(k))) == 2 for k in picked)


def test_bench_row_of_a_phase_where_every_operation_failed_has_null_latencies():
    phase = engine.Phase("p", 4, seconds=1.0, errors={"read": 5})
    (row,) = engine.summarize(phase)
    assert (row["ops"], row["errors"]) == (5, 5)
    assert [row[k] for k in ("p50_ms", "p95_ms", "p99_ms", "max_ms")] == [None] * 4


def test_bulk_load_refuses_an_op_that_is_not_a_write():
    with Client(None, target="127.0.0.1:1") as c:
        with pytest.raises(ValueError, match="not create, update or delete"):
            bulk.load(c, [("1", b"v")], op=bulk.OPS["read"])


class _Refused(grpc.RpcError):
    def __init__(self, details):
        self._details = details

    def code(self):
        return grpc.StatusCode.UNAVAILABLE

    def details(self):
        return self._details


class _Done:
    """A finished grpc future: its callbacks run at once."""

    def __init__(self, reply=None, error=None):
        self._reply, self._error = reply, error

    def add_done_callback(self, fn):
        fn(self)

    def result(self):
        if self._error is not None:
            raise self._error
        return self._reply


class _Stub:
    def __init__(self, address, log, error=None):
        self.address, self.log, self.error = address, log, error
        self.Batch = self

    def future(self, request, timeout=None):
        self.log.append((self.address, len(request.ops)))
        if self.error is not None:
            return _Done(error=_Refused(self.error))
        return _Done(pb.BatchReply(results=[pb.Result() for _ in request.ops]))


class _Client:
    """What bulk.load uses of a Client: node a refuses every connection (or
    loses it mid-call), b and c answer."""

    timeout, max_digits, max_value = 5.0, 100, 1 << 20
    from chordctl.protocol import BatchFit
    fit = BatchFit(1 << 20, 10_000)

    def __init__(self, error):
        self.log = []
        self.stubs = {a: _Stub(a, self.log, error if a == "a" else None) for a in "abc"}

    def stub_for(self, key):
        return self.stubs["a"], "a"

    def alternate_for(self, key, tried):
        for a in "abc":
            if a not in tried:
                return self.stubs[a], a
        return None


def test_kv_load_sends_a_batch_its_node_never_received_through_another():
    """A node that is down refuses the connection: the batch never left, so it
    goes again through another node (entry routing: any; direct with R > 1:
    the next replica) instead of failing every record in it."""
    c = _Client("failed to connect to all addresses; last error: connection refused")
    rep = bulk.load(c, [(str(k), b"v") for k in range(1, 10)], batch=4, depth=2)
    assert (rep.ok, rep.failures, rep.resent) == (9, 0, 3)
    assert [a for a, _ in c.log] == ["a", "b", "a", "b", "a", "b"]


def test_kv_load_never_sends_again_a_batch_whose_outcome_is_unknown():
    c = _Client("Socket closed")      # lost mid-call: it may have been applied
    rep = bulk.load(c, [(str(k), b"v") for k in range(1, 6)], batch=4, depth=2)
    assert (rep.ok, rep.failures, rep.resent) == (0, 5, 0)
    assert [a for a, _ in c.log] == ["a", "a"]
    assert "a write may still be applied" in rep.samples[0]


def test_client_alternate_for_a_node_that_cannot_be_reached():
    from chordctl import config as config_mod
    from chordctl.client import Client
    from chordctl.core.ring import Ring

    def cfg(route, replicas):
        return config_mod.from_dict({
            "ring": {"bits": 8, "replicas": replicas},
            "nodes": [{"host": "127.0.0.1", "port": 1 + i} for i in range(5)],
            "client": {"route": route}})

    addr = [f"127.0.0.1:{1 + i}" for i in range(5)]
    with Client(cfg("entry", 1)) as c:          # any other node routes it
        assert c.alternate_for("7", {addr[0]})[1] == addr[1]
        assert c.alternate_for("7", set(addr[:4]))[1] == addr[4]
        assert c.alternate_for("7", set(addr)) is None
    ring = Ring(8, 5)
    owner = ring.owner(7)
    with Client(cfg("direct", 3)) as c:         # the next replica of the key's arc
        first, second, third = ring.replicas(owner, 3)
        assert c.alternate_for("7", {addr[first]})[1] == addr[second]
        assert c.alternate_for("7", {addr[first], addr[second]})[1] == addr[third]
        assert c.alternate_for("7", {addr[i] for i in (first, second, third)}) is None
    with Client(cfg("direct", 1)) as c:         # an unreplicated arc has its owner only
        assert c.alternate_for("7", {addr[owner]}) is None
    with Client(cfg("entry", 1), target=addr[2]) as c:   # --target: that node or nothing
        assert c.alternate_for("7", {addr[2]}) is None
