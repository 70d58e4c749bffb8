"""The replication benchmark of issue 14: R = 3 against R = 1 and a 3-member etcd.

One command starts, on free loopback ports in a temporary directory, a
3-node chordctl ring with ``ring.replicas: 1``, the same ring with
``ring.replicas: 3``, and (when Debian's etcd is installed) a 3-member etcd
cluster; runs the cells below one system at a time, interleaved cell by
cell; stops everything it started (by pid); prints a markdown table::

    python benchmarks/replication.py                          # print the table
    python benchmarks/replication.py --write BENCHMARKS.md    # and put it in the file

The cells, as the issue states its targets:

- sequential writes: ``ycsb.py --phase load --threads 1`` (creates, one at a
  time): p50 and p99 latency; target R=3 at most 2x R=1. One pair of runs
  (R = 1, then R = 3) moves by a tenth from one to the next on this shared
  2-core VM, so the cell is ``--pairs`` pairs back to back: the table shows
  the median of each figure and of the pairs' ratios, and lists the ratios;
- 64 in flight: YCSB A, B and C with 64 client threads of one call each
  (the coalescing client); target R=3 at least 0.5x R=1;
- ``kv load``: records/s of ``chordctl kv load`` (a CSV of --load-records);
  target R=3 at least 50,000 records/s, durable on a majority;
- YCSB A, B and C at 16 threads, chordctl R=3 (its own client) against the
  3-member etcd (etcd3 client); target at least 1.0x.
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import peers  # noqa: E402  (the peer benchmark's servers and ycsb runner)

BEGIN = "<!-- replication:begin -->"
END = "<!-- replication:end -->"
HEADING = "## Replication: R = 3 against R = 1 and etcd (issue 14)"


class Ring(peers.ChordRing):
    """A 3-node ring on free ports with ring.replicas *replicas*."""

    def __init__(self, directory: pathlib.Path, replicas: int):
        super().__init__(directory / f"r{replicas}")
        self.replicas = replicas
        self.label = f"chordctl R={replicas}"

    def write_config(self) -> str:
        import yaml
        ports = peers.free_ports(3)
        doc = {"ring": {"bits": 16, "placement": "direct", "replicas": self.replicas},
               "nodes": [{"host": "127.0.0.1", "port": p} for p in ports],
               "storage": {"data_dir": str(self.directory / "data"), "fsync": "batch",
                           "snapshot_interval": 30},
               "client": {"route": "direct"}}
        path = self.directory / "ring.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return str(path)


class EtcdCluster:
    """Three etcd members on loopback (each its own client and peer port)."""

    label = "etcd (3 members)"

    def __init__(self, directory: pathlib.Path):
        self.directory = directory / "etcd3"
        self.procs: list[subprocess.Popen] = []
        self.address = ""
        self.python = ""

    def check(self) -> None:
        if shutil.which("etcd") is None:
            raise peers.Skip("replication: etcd is not installed; skipping etcd "
                             "(install it: apt-get install etcd-server)")
        self.python = peers.etcd_venv()

    def start(self) -> None:
        self.directory.mkdir(parents=True)
        ports = peers.free_ports(6)
        names = [f"m{i}" for i in range(3)]
        peer_urls = [f"http://127.0.0.1:{ports[2 * i + 1]}" for i in range(3)]
        cluster = ",".join(f"{n}={u}" for n, u in zip(names, peer_urls))
        for i, name in enumerate(names):
            client = f"127.0.0.1:{ports[2 * i]}"
            log = self.directory / f"{name}.log"
            with open(log, "wb") as out:
                self.procs.append(subprocess.Popen(
                    ["etcd", "--name", name, "--data-dir", str(self.directory / name),
                     "--listen-client-urls", f"http://{client}",
                     "--advertise-client-urls", f"http://{client}",
                     "--listen-peer-urls", peer_urls[i],
                     "--initial-advertise-peer-urls", peer_urls[i],
                     "--initial-cluster", cluster, "--initial-cluster-state", "new"],
                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                    start_new_session=True))
            if i == 0:
                self.address = client
        peers._wait_for(lambda: peers._etcd_healthy(self.address), self.procs[0],
                        f"etcd on {self.address}", self.directory / "m0.log")

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def stop(self) -> None:
        for p in self.procs:
            peers._stop(p)


def ycsb(server, system: str, phase: str, threads: int, args, row: int) -> dict:
    seconds = peers.LOAD_SECONDS if phase == "load" else args.seconds
    argv = [server.python if system == "etcd" else sys.executable, str(peers.YCSB),
            "--system", system, "--phase", phase, "--threads", str(threads),
            "--records", str(args.records), "--value-bytes", "100",
            "--seconds", f"{seconds:g}",
            "--max-ops", str(args.records if phase == "load" else int(args.seconds * 30000)),
            "--key-base", str(peers.key_base(row))]
    argv += ["--config", server.config] if system == "chordctl" else \
        ["--address", server.address]
    if server.pids():
        argv += ["--server-pids", ",".join(map(str, server.pids()))]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                              timeout=seconds + 180)
    except subprocess.TimeoutExpired:
        return {"failed": "timed out"}
    if done.returncode != 0:
        return {"failed": (done.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def kv_load(ring: Ring, records: int, base: int) -> dict:
    """records/s of `chordctl kv load` of *records* 100-byte values."""
    path = ring.directory / f"load-{base}.csv"
    value = "v" * 100
    with open(path, "w") as f:
        for i in range(records):
            f.write(f"{base + i},{value}\n")
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "chordctl", "-c", ring.config, "-o", "json",
                           "kv", "load", str(path)], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=600)
    seconds = time.monotonic() - t0
    if done.returncode != 0:
        return {"failed": (done.stderr.strip().splitlines() or ["?"])[-1]}
    try:
        doc = json.loads(done.stdout)
    except ValueError:
        doc = {}
    rate = doc.get("records_per_s") or records / seconds
    return {"records": records, "records_per_s": rate, "seconds": round(seconds, 2)}


def fmt(x, unit: str = "") -> str:
    return "-" if x is None else (f"{x:,.0f}{unit}" if x >= 100 else f"{x:.2f}{unit}")


def ratio(a, b) -> str:
    return "-" if not a or not b else f"{a / b:.2f}x"


def sequential(args) -> int:
    """N pairs of the sequential cell, on one R = 1 and one R = 3 ring."""
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="chordctl-replication-"))
    r1, r3 = Ring(tmp, 1), Ring(tmp, 3)
    ratios = []
    try:
        for s in (r1, r3):
            s.start()
        for i in range(args.sequential):
            one = ycsb(r1, "chordctl", "load", 1, args, 20 + 2 * i)
            three = ycsb(r3, "chordctl", "load", 1, args, 21 + 2 * i)
            if "failed" in one or "failed" in three:
                print(f"pair {i + 1}: failed: {one.get('failed') or three.get('failed')}")
                continue
            ratios.append(three["p50_ms"] / one["p50_ms"])
            print(f"pair {i + 1}: p50 R=1 {one['p50_ms']:.2f} ms, R=3 {three['p50_ms']:.2f} ms: "
                  f"{ratios[-1]:.2f}x")
    finally:
        for s in (r1, r3):
            try:
                s.stop()
            except Exception as e:   # never leave processes behind
                print(f"replication: stopping {s.label}: {e}", file=sys.stderr)
        shutil.rmtree(tmp, ignore_errors=True)
    if not ratios:
        return 1
    print(f"median {statistics.median(ratios):.2f}x of {len(ratios)} pairs "
          f"({args.records} sequential creates each)")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="replication.py", description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=10.0, help="seconds per YCSB cell [10]")
    p.add_argument("--records", type=int, default=5000, help="YCSB records [5000]")
    p.add_argument("--load-records", type=int, default=200_000,
                   help="records of the kv load cell [200000]")
    p.add_argument("--write", metavar="FILE", help="put the section into FILE")
    p.add_argument("--pairs", type=int, default=3, metavar="N",
                   help="pairs of runs (R = 1, then R = 3) of the sequential cell [3]")
    p.add_argument("--sequential", type=int, default=0, metavar="N",
                   help="only the sequential cell, N pairs of runs (R = 1, then R = 3), "
                        "each pair's ratio and their median; no table")
    args = p.parse_args(argv)
    if args.sequential:
        return sequential(args)

    tmp = pathlib.Path(tempfile.mkdtemp(prefix="chordctl-replication-"))
    r1, r3, etcd = Ring(tmp, 1), Ring(tmp, 3), EtcdCluster(tmp)
    servers = [r1, r3]
    skipped = []
    try:
        etcd.check()
        servers.append(etcd)
    except peers.Skip as e:
        skipped.append(str(e))
    res: dict = {}
    try:
        for s in servers:
            s.start()
        for n, s in enumerate(servers):         # the YCSB records, per system
            system = "etcd" if s is etcd else "chordctl"
            res[(s.label, "load@16")] = ycsb(s, system, "load", 16, args, n)
        pairs = []
        for i in range(max(1, args.pairs)):
            one = ycsb(r1, "chordctl", "load", 1, args, 30 + 2 * i)
            three = ycsb(r3, "chordctl", "load", 1, args, 31 + 2 * i)
            if "failed" in one or "failed" in three:
                res[(r1.label if "failed" in one else r3.label, "seq")] = \
                    one if "failed" in one else three
                break
            pairs.append((one, three))
        if pairs:
            for k, s in enumerate((r1, r3)):
                res[(s.label, "seq")] = {q: statistics.median(p[k][q] for p in pairs)
                                         for q in ("p50_ms", "p99_ms")}
            res[("pairs", "seq")] = [p[1]["p50_ms"] / p[0]["p50_ms"] for p in pairs]
        for phase in ("A", "B", "C"):
            for threads in (16, 64):
                for n, s in enumerate(servers):
                    if s is etcd and threads == 64:
                        continue
                    system = "etcd" if s is etcd else "chordctl"
                    res[(s.label, f"{phase}@{threads}")] = ycsb(s, system, phase, threads,
                                                                 args, n)
        for s in (r1, r3):
            res[(s.label, "kv load")] = kv_load(s, args.load_records, 5 * 10 ** 12)
    finally:
        for s in servers:
            try:
                s.stop()
            except Exception as e:   # never leave processes behind
                print(f"replication: stopping {s.label}: {e}", file=sys.stderr)
        shutil.rmtree(tmp, ignore_errors=True)

    def rate(label, cell):
        r = res.get((label, cell)) or {}
        return r.get("ops_per_s") or r.get("records_per_s")

    def lat(label, q):
        return (res.get((label, "seq")) or {}).get(q)

    paired = res.get(("pairs", "seq")) or []
    rows = [
        ("sequential creates, p50 ms", fmt(lat(r1.label, "p50_ms")), fmt(lat(r3.label, "p50_ms")),
         "-", f"{statistics.median(paired):.2f}x" if paired else "-", "<= 2x R=1"),
        ("sequential creates, p99 ms", fmt(lat(r1.label, "p99_ms")), fmt(lat(r3.label, "p99_ms")),
         "-", ratio(lat(r3.label, "p99_ms"), lat(r1.label, "p99_ms")), ""),
    ]
    for phase in ("A", "B", "C"):
        c = f"{phase}@64"
        rows.append((f"YCSB {c} ops/s", fmt(rate(r1.label, c)), fmt(rate(r3.label, c)), "-",
                     ratio(rate(r3.label, c), rate(r1.label, c)), ">= 0.5x R=1"))
    for phase in ("A", "B", "C"):
        c = f"{phase}@16"
        rows.append((f"YCSB {c} ops/s", fmt(rate(r1.label, c)), fmt(rate(r3.label, c)),
                     fmt(rate(etcd.label, c)), ratio(rate(r3.label, c), rate(etcd.label, c))
                     + " etcd", ">= 1.0x etcd"))
    rows.append(("kv load records/s", fmt(rate(r1.label, "kv load")),
                 fmt(rate(r3.label, "kv load")), "-", ratio(rate(r3.label, "kv load"),
                                                            rate(r1.label, "kv load")),
                 ">= 50,000 (R=3)"))
    header = ("cell", "R=1", "R=3", "etcd 3 members", "R=3 ratio", "target")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    failed = [f"- {k[0]} {k[1]}: {v['failed']}" for k, v in res.items()
              if isinstance(v, dict) and "failed" in v]
    note = [f"Sequential creates: {len(paired)} pairs of runs (R = 1, then R = 3), "
            f"{args.records} creates each; the medians of their p50 and p99, and of the "
            f"pairs' p50 ratios: {', '.join(f'{r:.2f}x' for r in paired)}."] if paired else []
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    section = "\n".join([
        BEGIN, HEADING, "",
        f"`python benchmarks/replication.py` ({when}; 3-node rings on loopback, fsync batch, "
        f"{args.records} YCSB records of 100 bytes, zipfian, {args.seconds:g} s per cell; "
        f"kv load of {args.load_records} records):", "",
        *lines, "", *note, *([""] if note else []), *[f"Skipped: {s}" for s in skipped],
        *(["Failed cells:", *failed] if failed else []), END])
    print(section)
    if args.write:
        path = pathlib.Path(args.write)
        text = path.read_text()
        if BEGIN in text and END in text:
            text = text[:text.index(BEGIN)] + section + text[text.index(END) + len(END):]
        else:
            text = text.rstrip("\n") + "\n\n" + section + "\n"
        path.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
