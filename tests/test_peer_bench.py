"""The peer benchmark (benchmarks/ycsb.py, benchmarks/peers.py): its driver against a
real ring with tiny counts, and its pure parts (keys, plans, tables, the section
writer). Redis and etcd are never needed: the benchmark skips a peer that is
absent, and so do these tests, by not asking for one."""

from __future__ import annotations

import collections
import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest

from chordctl.core.ring import Ring

from conftest import write_config

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}",
                                                  ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module         # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


ycsb = _load("ycsb")
peers = _load("peers")


def _ycsb(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "ycsb.py"), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _result(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


# -- the driver against a real ring -------------------------------------------------------

def test_ycsb_runs_chordctl_and_generic_grpc_cells_without_errors(make_cluster):
    cluster = make_cluster(4)
    common = ["--config", cluster.config_path, "--records", "50", "--threads", "2",
              "--seconds", "1", "--max-ops", "300"]
    own = ["--system", "chordctl", "--route", "direct", "--key-base", "100000007"]
    grpc = ["--key-base", "200000007"]
    # Two key ranges, loaded side by side; then workloads on each, every shape at once.
    loads = [_ycsb(*common, *own, "--phase", "load"),
             _ycsb(*common, "--system", "chordctl-grpc", "--route", "owner", *grpc,
                   "--phase", "load")]
    for r in map(_result, loads):
        assert (r["phase"], r["ops"], r["errors"]) == ("load", 50, 0), r
    runs = [_ycsb(*common, *own, "--phase", "A"),
            _ycsb(*common, "--system", "chordctl-grpc", "--route", "owner", *grpc,
                  "--phase", "B"),
            _ycsb(*common, "--system", "chordctl-grpc", "--route", "entry", *grpc,
                  "--phase", "A")]
    for r in map(_result, runs):
        assert r["ops"] > 0 and r["errors"] == 0, r
        assert r["ops_per_s"] > 0 and r["p50_ms"] is not None and r["client"]
        assert r["client_cpu_us"] > 0, r
    # With the nodes' pids, the CPU time the ring spent per operation too.
    pids = ",".join(str(n.proc.pid) for n in cluster.nodes)
    r = _result(_ycsb(*common, *own, "--phase", "C", "--server-pids", pids))
    assert r["server_cpu_us"] > 0 and r["client_cpu_us"] > 0, r


def test_process_cpu_reads_proc_and_says_none_for_a_gone_process():
    sum(i * i for i in range(200_000))     # some CPU of our own to see
    assert ycsb.process_cpu(os.getpid()) > 0
    assert ycsb.process_cpu(2 ** 22 + 12345) is None


def test_ycsb_exits_3_when_the_ring_is_down(tmp_path):
    path = write_config(tmp_path, 2)        # no node started
    proc = _ycsb("--system", "chordctl-grpc", "--config", path, "--phase", "C", "--records",
                 "10", "--seconds", "1", "--timeout", "2")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == ycsb.EXIT_UNREACHABLE, (out, err)
    assert err.startswith("ycsb: chordctl-grpc does not answer before the run") and not out


def test_ycsb_refuses_a_route_its_system_does_not_take():
    with pytest.raises(SystemExit) as e:
        ycsb.parse_args(["--system", "redis", "--phase", "A", "--route", "owner"])
    assert e.value.code == 2


# -- the driver's pure parts ------------------------------------------------------------------

class _Store:
    """An in-memory adapter for run(): a dict; a read of a missing key raises Missing."""

    def __init__(self):
        self.data: dict[int, bytes] = {}

    def create(self, key: int, value: bytes) -> None:
        self.data[key] = value

    def read(self, key: int) -> bytes:
        if key not in self.data:
            raise ycsb.Missing(f"no value for {key}")
        return self.data[key]

    def update(self, key: int, value: bytes) -> None:
        self.data[key] = value

    def close(self) -> None:
        pass

    def version(self) -> str:
        return "dict"


def test_run_counts_a_read_of_a_missing_key_as_an_error_and_goes_on():
    store = _Store()
    value = ycsb.value_of(10)
    load = ycsb.plan("load", 20, 10, value)          # only half the records: max-ops 10
    assert ycsb.run(store, load, 3, 5.0)["errors"] == 0 and len(store.data) == 10
    out = ycsb.run(store, [("read", ycsb.key_of(i), None) for i in range(20)], 4, 5.0)
    assert (out["ops"], out["errors"]) == (20, 10)
    assert "Missing" in out["sample_error"]


def test_run_stops_at_its_time_bound():
    class Slow(_Store):
        def read(self, key: int) -> bytes:
            import time
            time.sleep(0.01)
            return b""

    out = ycsb.run(Slow(), [("read", 1, None)] * 100_000, 2, 0.2)
    assert 0 < out["ops"] < 1000 and out["seconds"] < 1.0


def test_plan_is_one_sequence_for_every_system():
    value = ycsb.value_of(100)
    a = ycsb.plan("A", 5000, 2000, value, key_base=7)
    assert a == ycsb.plan("A", 5000, 2000, value, key_base=7)
    ops = collections.Counter(op for op, _, _ in a)
    assert set(ops) == {"read", "update"} and 0.4 < ops["read"] / len(a) < 0.6
    assert {op for op, _, _ in ycsb.plan("C", 5000, 500, value)} == {"read"}
    load = ycsb.plan("load", 5000, 10_000, value)
    assert [k for _, k, _ in load] == [ycsb.key_of(i) for i in range(5000)]


@pytest.mark.parametrize("row", range(len(peers.SHAPES)))
def test_every_rows_keys_spread_over_all_four_nodes(row):
    ring = Ring(16, 4, "direct")
    owners = collections.Counter(ring.owner(ycsb.key_of(i, peers.key_base(row)))
                                 for i in range(5000))
    assert set(owners) == {0, 1, 2, 3}
    assert all(1150 <= n <= 1350 for n in owners.values()), owners
    assert len({len(str(ycsb.key_of(i, peers.key_base(row)))) for i in (0, 4999)}) == 1


# -- the orchestrator's pure parts -----------------------------------------------------------

def test_systems_expand_in_table_order_and_refuse_a_stranger():
    names = [s.name for s in peers.expand_systems("chordctl,chordctl-grpc,redis")]
    assert names == ["redis", "chordctl-grpc-entry", "chordctl-grpc-owner", "chordctl"]
    with pytest.raises(ValueError, match="unknown system 'mysql'"):
        peers.expand_systems("redis,mysql")


def test_cells_measure_the_load_at_the_most_threads_then_each_workload():
    assert peers.cells([1, 16], ["A", "B", "C"]) == [
        ("load", 16), ("A", 1), ("B", 1), ("C", 1), ("A", 16), ("B", 16), ("C", 16)]


def _r(rate: float, errors: int = 0) -> dict:
    return {"ops_per_s": rate, "errors": errors, "ops": 100, "p50_ms": 1.0, "p99_ms": 9.5}


def test_tables_show_rates_errors_ratios_and_targets():
    shapes = peers.expand_systems("redis,etcd,chordctl")
    labels = {s.name: s.name for s in shapes}
    columns = peers.cells([16], ["A", "C"])
    results = {("redis", "load", 16): _r(6000), ("redis", "A", 16): _r(5000),
               ("redis", "C", 16): _r(4000),
               ("etcd", "load", 16): _r(2000), ("etcd", "A", 16): _r(2500),
               ("etcd", "C", 16): {"failed": "no result"},
               ("chordctl", "load", 16): _r(4100), ("chordctl", "A", 16): _r(5500),
               ("chordctl", "C", 16): _r(3000, errors=3)}
    text = peers.render_tables(shapes, labels, results, columns)
    assert "| redis | 6,000 | 5,000 | 4,000 |" in text
    assert "| etcd | 2,000 | 2,500 | failed |" in text
    assert "| chordctl | 4,100 | 5,500 | 3,000 (3 errors) |" in text
    assert "| redis | 1.00 / 9.5 |" in text
    assert "CPU time per operation" in text
    # A cell with errors or a failed one has no ratio.
    assert "| chordctl's own client / Redis | 0.68x | 1.10x |  |" in text
    assert "| chordctl's own client / etcd | 2.05x | 2.20x |  |" in text
    assert "| 1 | own client, 16 threads >= 1.0x Redis | A 1.10x, C: - | **no** |" in text
    assert "| 3 | load, 16 threads of single creates >= 2x etcd | load 2.05x | yes |" in text
    assert "1 thread" not in text          # no cell at 1 thread: its target is not shown
    assert "generic gRPC" not in text      # nor the rows not run


def test_section_is_appended_once_then_replaced_in_place():
    one = peers.render_section("TABLE 1", when="w", command="python benchmarks/peers.py",
                               settings="s", versions=["Redis 7"])
    assert one.startswith(peers.BEGIN + "\n" + peers.HEADING) and one.endswith(peers.END + "\n")
    doc = "# Benchmarks\n\n## Commands\n\ntext\n"
    first = peers.replace_section(doc, one)
    assert first == doc + "\n" + one
    two = one.replace("TABLE 1", "TABLE 2")
    again = peers.replace_section(first, two)
    assert again == doc + "\n" + two and again.count(peers.BEGIN) == 1
    # In the middle of a file, what follows the end marker stays.
    middle = f"# B\n\n{one}\n## History\n\nold\n"
    assert peers.replace_section(middle, two) == f"# B\n\n{two}\n## History\n\nold\n"


def test_a_peer_that_is_not_installed_is_skipped_with_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setattr(peers.shutil, "which", lambda name: None)
    with pytest.raises(peers.Skip, match=r"apt-get install redis-server"):
        peers.RedisServer(tmp_path).check()
    with pytest.raises(peers.Skip, match=r"apt-get install etcd-server"):
        peers.EtcdServer(tmp_path).check()


def test_replication_sequential_pairs_print_each_ratio_and_their_median():
    """benchmarks/replication.py --sequential: R = 1 and R = 3 rings of its
    own (free ports), tiny counts; every pair measured, the median said."""
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "replication.py"),
                        "--sequential", "2", "--records", "40"],
                       capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert p.returncode == 0, p.stdout + p.stderr
    lines = p.stdout.strip().splitlines()
    pairs = [line for line in lines if line.startswith("pair ")]
    assert len(pairs) == 2 and all("failed" not in line and line.endswith("x") for line in pairs)
    assert lines[-1].startswith("median ")
    assert "of 2 pairs (40 sequential creates each)" in lines[-1]
