"""The peer benchmark of issue 13: chordctl next to Redis and etcd, in one run.

One command starts every peer on free loopback ports in a temporary
directory, loads each, runs the YCSB phases, stops everything it started
(by pid, also on Ctrl-C or an error) and prints markdown tables::

    python benchmarks/peers.py                          # print the tables
    python benchmarks/peers.py --write BENCHMARKS.md    # and put them in the file

The peers, each as the issue states it:

- Redis (``redis-server``, Debian's package): AOF with ``appendfsync
  everysec``, no RDB snapshots; the client is redis-py (``pip install -e
  '.[bench]'``), one ``redis.Redis`` and its connection pool.
- etcd (``etcd``, Debian's etcd-server): a single member with its defaults
  (it fsyncs every commit); the client is python-etcd3, which needs
  protobuf<4 and so runs from its own venv, made on first use at
  benchmarks/.venv-etcd.
- chordctl: a 4-node ring with the settings of examples/configs/ring4.yaml
  (fsync batch, snapshot_interval 30) on free ports, started with
  ``chordctl cluster up --detach`` (nodes pinned round robin, as always)
  and stopped with ``cluster down``. Three client shapes: chordctl's own
  client (direct routing, concurrent calls coalesced) and a generic unary
  gRPC client sent to node 0 or to each key's owner.

Each cell is one run of benchmarks/ycsb.py in a process of its own, one
system measured at a time while the others sit idle. Cells are ordered by
workload, then by system, so the systems of one column are measured in
the same minute of the machine. A peer that is not installed is skipped
with one line saying how to install it; the rest still run.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.util
import json
import os
import pathlib
import platform
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from typing import Callable, Sequence

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
YCSB = HERE / "ycsb.py"
ETCD_VENV = HERE / ".venv-etcd"
ETCD_CLIENT = ("etcd3>=0.12,<0.13", "protobuf<4")
RING_EXAMPLE = ROOT / "examples" / "configs" / "ring4.yaml"
BEGIN = "<!-- peers:begin -->"
END = "<!-- peers:end -->"
HEADING = "## Peers: Redis and etcd, same run (issue 13)"
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0
# Row r's records: keys (r + 1) * 2^27 + 7 + i * 13, 9 digits each. A multiple of
# 2^27 keeps every row's key i on the same ring position under `placement:
# direct` (key mod 2^m, m <= 27), so zipfian's hot keys land on the same nodes
# for every row: rows differ in the client, not in which node got the hot keys.
KEY_SPACING = 2 ** 27
MAX_RATE = 30_000            # ops/s no cell reaches here: --max-ops defaults to seconds * this
LOAD_SECONDS = 120.0         # the load phase runs until every record is created, or this long


# -- what is measured ---------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Shape:
    """One row of the table: a store and the client shape that drives it."""

    name: str        # the --systems name
    store: str       # the server it needs: redis | etcd | chordctl
    system: str      # ycsb.py --system
    route: str       # ycsb.py --route ("" for redis, etcd)
    label: str       # the row's text; {version} is the server's


SHAPES: dict[str, Shape] = {s.name: s for s in (
    Shape("redis", "redis", "redis", "", "Redis {version} (AOF everysec), redis-py"),
    Shape("etcd", "etcd", "etcd", "", "etcd {version} single node, etcd3"),
    Shape("chordctl-grpc-entry", "chordctl", "chordctl-grpc", "entry",
          "chordctl, a generic gRPC client, entry node 0"),
    Shape("chordctl-grpc-owner", "chordctl", "chordctl-grpc", "owner",
          "chordctl, a generic gRPC client, sent to the owner"),
    Shape("chordctl", "chordctl", "chordctl", "direct",
          "chordctl's own client, direct (coalescing)"),
    Shape("chordctl-entry", "chordctl", "chordctl", "entry",
          "chordctl's own client, entry node 0 (coalescing)"),
)}
ALIASES = {"chordctl-grpc": ("chordctl-grpc-entry", "chordctl-grpc-owner")}
DEFAULT_SYSTEMS = "redis,etcd,chordctl-grpc-entry,chordctl-grpc-owner,chordctl"

# (numerator, denominator, label) of the ratio table
RATIOS = (("chordctl", "redis", "chordctl's own client / Redis"),
          ("chordctl", "etcd", "chordctl's own client / etcd"),
          ("chordctl-grpc-owner", "etcd", "generic gRPC, to the owner / etcd"),
          ("chordctl-grpc-entry", "etcd", "generic gRPC, entry node 0 / etcd"))

# Issue 13's targets: (number, text, numerator, denominator, phases, threads, at least)
TARGETS = (
    ("1", "own client, 16 threads >= 1.0x Redis", "chordctl", "redis", "ABC", 16, 1.0),
    ("1", "own client, 16 threads >= 2x etcd", "chordctl", "etcd", "ABC", 16, 2.0),
    ("2", "own client, 1 thread >= 1.0x etcd", "chordctl", "etcd", "ABC", 1, 1.0),
    ("3", "load, 16 threads of single creates >= 2x etcd", "chordctl", "etcd", ("load",), 16,
     2.0),
    ("4", "generic gRPC to the owner, 16 threads >= 1.0x etcd", "chordctl-grpc-owner", "etcd",
     "ABC", 16, 1.0),
    ("4", "generic gRPC through entry node 0, 16 threads >= 0.8x etcd", "chordctl-grpc-entry",
     "etcd", "ABC", 16, 0.8),
)


def expand_systems(text: str) -> list[Shape]:
    """The shapes named in a --systems list, in the table's order; ValueError for a stranger."""
    names: list[str] = []
    for raw in text.split(","):
        name = raw.strip()
        if not name:
            continue
        for n in ALIASES.get(name, (name,)):
            if n not in SHAPES:
                raise ValueError(f"unknown system {n!r}; expected some of "
                                 f"{', '.join([*SHAPES, *ALIASES])}")
            if n not in names:
                names.append(n)
    if not names:
        raise ValueError("--systems names no system")
    order = list(SHAPES)
    return [SHAPES[n] for n in sorted(names, key=order.index)]


def cells(threads: Sequence[int], workloads: Sequence[str]) -> list[tuple[str, int]]:
    """The table's columns, in the order they are measured: the load at the most
    threads, then each workload at each thread count."""
    return [("load", max(threads))] + [(w, t) for t in threads for w in workloads]


def key_base(row: int) -> int:
    """The first key of row *row*'s records: rows sharing a store never share keys,
    and every row's keys have the same number of digits."""
    return (row + 1) * KEY_SPACING + 7


# -- the tables (pure) ------------------------------------------------------------------

Results = dict[tuple[str, str, int], dict]   # (shape name, phase, threads) -> ycsb.py's JSON


def _rate(results: Results, name: str, phase: str, threads: int) -> float | None:
    r = results.get((name, phase, threads))
    if not r or "ops_per_s" not in r or r.get("errors"):
        return None
    return r["ops_per_s"]


def _cell(r: dict | None) -> str:
    if r is None:
        return ""
    if "failed" in r:
        return "failed"
    text = f"{r['ops_per_s']:,.0f}"
    return f"{text} ({r['errors']:,} errors)" if r.get("errors") else text


def _cpu(r: dict | None) -> str:
    if not r or "failed" in r or "client_cpu_us" not in r:
        return ""
    server = r.get("server_cpu_us")
    return f"{r['client_cpu_us']:.0f} / {server:.0f}" if server is not None \
        else f"{r['client_cpu_us']:.0f} / -"


def _latency(r: dict | None) -> str:
    if r is None or "failed" in r or r.get("p50_ms") is None:
        return ""
    return f"{r['p50_ms']:.2f} / {r['p99_ms']:.1f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def render_tables(shapes: Sequence[Shape], labels: dict[str, str], results: Results,
                  columns: Sequence[tuple[str, int]]) -> str:
    """The ops/s table, the latency table, the ratio table and the targets, in markdown."""
    header = ["", *[f"{p}@{t}" for p, t in columns]]
    rates = [[labels[s.name], *[_cell(results.get((s.name, p, t))) for p, t in columns]]
             for s in shapes]
    lat = [[labels[s.name], *[_latency(results.get((s.name, p, t))) for p, t in columns]]
           for s in shapes]
    cpu = [[labels[s.name], *[_cpu(results.get((s.name, p, t))) for p, t in columns]]
           for s in shapes]
    out = ["Throughput, operations per second:", "", _table(header, rates), "",
           "Latency, p50 / p99 in ms:", "", _table(header, lat), "",
           "CPU time per operation, client process / server processes, in us:", "",
           _table(header, cpu)]
    present = {s.name for s in shapes}
    ratio_rows = []
    for num, den, label in RATIOS:
        if num in present and den in present:
            row = [label]
            for p, t in columns:
                a, b = _rate(results, num, p, t), _rate(results, den, p, t)
                row.append(f"{a / b:.2f}x" if a is not None and b else "")
            ratio_rows.append(row)
    if ratio_rows:
        out += ["", "Ratios, same run:", "", _table(header, ratio_rows)]
    target_rows = []
    for number, text, num, den, phases, threads, least in TARGETS:
        measured_phases = [p for p in phases if (p, threads) in columns]
        if num not in present or den not in present or not measured_phases:
            continue
        measured = []
        met = True
        for p in measured_phases:
            a, b = _rate(results, num, p, threads), _rate(results, den, p, threads)
            if a is None or not b:
                met = False
                measured.append(f"{p}: -")
                continue
            measured.append(f"{p} {a / b:.2f}x")
            met = met and a / b >= least
        target_rows.append([number, text, ", ".join(measured), "yes" if met else "**no**"])
    if target_rows:
        out += ["", "Issue 13's targets in this run:", "",
                _table(["#", "target", "measured", "met"], target_rows)]
    return "\n".join(out)


def render_section(tables: str, *, when: str, command: str, settings: str,
                   versions: Sequence[str], notes: Sequence[str] = ()) -> str:
    """The whole BENCHMARKS.md section, between its markers."""
    lines = [BEGIN, HEADING, "", f"Run of {when}, with:", "", "```sh", command, "```", "",
             settings, "", tables, "", "Versions:", ""]
    lines += [f"- {v}" for v in versions]
    if notes:
        lines += ["", *notes]
    lines += [END]
    return "\n".join(lines) + "\n"


def replace_section(text: str, section: str) -> str:
    """*text* with the part between the peers markers replaced by *section*
    (markers included), or with *section* appended when there are no markers."""
    start = text.find(BEGIN)
    end = text.find(END, start + len(BEGIN)) if start >= 0 else -1
    if start >= 0 and end >= 0:
        tail = text[end + len(END):]
        return text[:start] + section.rstrip("\n") + (tail or "\n")
    sep = "" if not text or text.endswith("\n\n") else ("\n" if text.endswith("\n") else "\n\n")
    return text + sep + section


# -- the servers ------------------------------------------------------------------------

class Skip(Exception):
    """A peer that cannot run here; the message says why and how to fix it."""


def free_ports(n: int) -> list[int]:
    """*n* distinct free loopback ports (bound to 0, then released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _wait_for(ready: Callable[[], bool], proc: subprocess.Popen | None, what: str,
              log: pathlib.Path | None, timeout: float = READY_TIMEOUT) -> None:
    """Until *ready()* is true (each try answers or fails fast); Skip when *proc*
    exits first or *timeout* passes, with the end of its log."""
    deadline = time.monotonic() + timeout
    while not ready():
        exited = proc is not None and proc.poll() is not None
        if exited or time.monotonic() > deadline:
            why = f"exited with code {proc.returncode}" if exited else \
                f"was not ready within {timeout:.0f}s"
            raise Skip(f"peers: {what} {why}; skipping it\n{_tail(log)}")
        time.sleep(0.05)


def _tail(path: pathlib.Path | None, lines: int = 6) -> str:
    if path is None:
        return ""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _stop(proc: subprocess.Popen, timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM our child, wait; SIGKILL if it outlives *timeout*."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _first_line(argv: Sequence[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return out.strip().splitlines()[0] if out.strip() else "?"


class RedisServer:
    """redis-server on a free port, AOF everysec, no RDB, data in *directory*."""

    label = "Redis"

    def __init__(self, directory: pathlib.Path):
        self.directory = directory / "redis"
        self.proc: subprocess.Popen | None = None
        self.address = ""

    def check(self) -> None:
        if shutil.which("redis-server") is None:
            raise Skip("peers: redis-server is not installed; skipping Redis "
                       "(install it: apt-get install redis-server)")
        if importlib.util.find_spec("redis") is None:
            raise Skip("peers: redis-py is not installed; skipping Redis "
                       "(install it: pip install -e '.[bench]')")

    def version(self) -> str:
        line = _first_line(["redis-server", "--version"])
        return next((w[2:] for w in line.split() if w.startswith("v=")), line)

    def start(self) -> None:
        self.directory.mkdir(parents=True)
        port, = free_ports(1)
        self.address = f"127.0.0.1:{port}"
        log = self.directory / "redis.log"
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                ["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                 "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
                 "--dir", str(self.directory), "--daemonize", "no"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)
        _wait_for(lambda: _redis_ping(port), self.proc, f"redis-server on {self.address}", log)

    def pids(self) -> list[int]:
        return [self.proc.pid] if self.proc is not None else []

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)


def _redis_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class EtcdServer:
    """A single etcd member on free ports (defaults otherwise), data in *directory*."""

    label = "etcd"

    def __init__(self, directory: pathlib.Path):
        self.directory = directory / "etcd"
        self.proc: subprocess.Popen | None = None
        self.address = ""
        self.python = ""

    def check(self) -> None:
        if shutil.which("etcd") is None:
            raise Skip("peers: etcd is not installed; skipping etcd "
                       "(install it: apt-get install etcd-server)")
        self.python = etcd_venv()

    def pure_python_protobuf(self) -> bool:
        """True when the etcd client's protobuf is the pure-Python implementation."""
        return _first_line([self.python, "-c", "from google.protobuf.internal import "
                            "api_implementation as a; print(a.Type())"]) == "python"

    def version(self) -> str:
        line = _first_line(["etcd", "--version"])
        return line.split(":", 1)[1].strip() if ":" in line else line

    def start(self) -> None:
        self.directory.mkdir(parents=True)
        client, peer = free_ports(2)
        self.address = f"127.0.0.1:{client}"
        peer_url = f"http://127.0.0.1:{peer}"
        log = self.directory / "etcd.log"
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                ["etcd", "--data-dir", str(self.directory / "data"),
                 "--listen-client-urls", f"http://{self.address}",
                 "--advertise-client-urls", f"http://{self.address}",
                 "--listen-peer-urls", peer_url,
                 # the peer port is not the default one: say so to the one-member cluster
                 "--initial-advertise-peer-urls", peer_url,
                 "--initial-cluster", f"default={peer_url}"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)
        _wait_for(lambda: _etcd_healthy(self.address), self.proc, f"etcd on {self.address}", log)

    def pids(self) -> list[int]:
        return [self.proc.pid] if self.proc is not None else []

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)


def _etcd_healthy(address: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{address}/health", timeout=1.0) as reply:
            return json.loads(reply.read()).get("health") == "true"
    except (OSError, ValueError, urllib.error.URLError):
        return False


def etcd_venv(venv: pathlib.Path = ETCD_VENV) -> str:
    """The python of the etcd client's venv, made (python -m venv, pip install
    etcd3 'protobuf<4') when it does not import etcd3 yet; Skip when that fails."""
    python = venv / "bin" / "python"

    def works() -> bool:
        try:
            return subprocess.run([str(python), "-c", "import etcd3"], capture_output=True,
                                  timeout=60).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            return False

    if python.exists() and works():
        return str(python)
    print(f"peers: setting up the etcd client at {venv} (pip install "
          f"{' '.join(shlex.quote(p) for p in ETCD_CLIENT)})", file=sys.stderr)
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True,
                       capture_output=True, timeout=300)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *ETCD_CLIENT], check=True,
                       capture_output=True, text=True, timeout=600)
    except subprocess.CalledProcessError as e:
        last = (e.stderr or "").strip().splitlines()[-1:] if isinstance(e.stderr, str) else []
        raise Skip(f"peers: could not set up the etcd client venv at {venv} "
                   f"({' '.join(last) or e}); skipping etcd") from None
    except (OSError, subprocess.TimeoutExpired) as e:
        raise Skip(f"peers: could not set up the etcd client venv at {venv} ({e}); "
                   f"skipping etcd") from None
    if not works():
        raise Skip(f"peers: the etcd client venv at {venv} does not import etcd3; "
                   f"skipping etcd (remove the directory to make it again)")
    return str(python)


class ChordRing:
    """A 4-node ring like examples/configs/ring4.yaml, on free ports, data in *directory*,
    run by `chordctl cluster up --detach` and `cluster down`."""

    label = "chordctl"

    def __init__(self, directory: pathlib.Path):
        self.directory = directory / "chordctl"
        self.config = ""
        self.started = False
        self._pids: list[int] | None = None

    def check(self) -> None:
        pass

    def version(self) -> str:
        import chordctl
        return chordctl.__version__

    def write_config(self) -> str:
        """ring4.yaml's settings with free ports and a data dir of our own; its path."""
        import yaml     # chordctl's dependency; only config.py reads YAML inside the package
        doc = yaml.safe_load(RING_EXAMPLE.read_text())
        ports = free_ports(2 * len(doc["nodes"]))
        for i, node in enumerate(doc["nodes"]):
            node["port"] = ports[2 * i]
            if "metrics_port" in node:
                node["metrics_port"] = ports[2 * i + 1]
        doc["storage"]["data_dir"] = str(self.directory / "data")
        path = self.directory / "ring4.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return str(path)

    def _cluster(self, command: str, timeout: float) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "chordctl", "-c", self.config, "cluster",
                               command, *(["--detach"] if command == "up" else [])],
                              capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)

    def start(self) -> None:
        self.directory.mkdir(parents=True)
        self.config = self.write_config()
        self.started = True        # stop() runs `cluster down` even after a failed `up`
        done = self._cluster("up", READY_TIMEOUT * 2)
        if done.returncode != 0:
            raise Skip(f"peers: `chordctl cluster up` failed (exit {done.returncode}); "
                       f"skipping chordctl\n{done.stderr.strip()}")

    def pids(self) -> list[int]:
        """The node processes (found once, after `cluster up`)."""
        if self._pids is None:
            from chordctl import config as config_mod
            from chordctl import localcluster
            self._pids = [f.pid for f in localcluster.find_nodes(config_mod.load(self.config))
                          if f.running]
        return self._pids

    def stop(self) -> None:
        if not self.started:
            return
        try:
            done = self._cluster("down", STOP_TIMEOUT * 2 + 30)
            if done.returncode == 0:
                return
            print(f"peers: `chordctl cluster down` failed: {done.stderr.strip()}",
                  file=sys.stderr)
        except subprocess.TimeoutExpired:
            print("peers: `chordctl cluster down` did not finish; stopping the nodes by pid",
                  file=sys.stderr)
        from chordctl import config as config_mod
        from chordctl import localcluster
        cfg = config_mod.load(self.config)
        found = localcluster.find_nodes(cfg)
        localcluster.stop_pids({f.index: f.pid for f in found if f.running})


# -- one run ------------------------------------------------------------------------------

def run_cell(shape: Shape, server, phase: str, threads: int, row: int,
             args: argparse.Namespace) -> dict:
    """One ycsb.py run; its JSON, or {"failed": why}."""
    python = server.python if shape.store == "etcd" else sys.executable
    seconds = LOAD_SECONDS if phase == "load" else args.seconds
    max_ops = args.records if phase == "load" else (
        args.max_ops or int(args.seconds * MAX_RATE))
    argv = [python, str(YCSB), "--system", shape.system, "--phase", phase,
            "--threads", str(threads), "--records", str(args.records),
            "--value-bytes", str(args.value_bytes), "--seconds", f"{seconds:g}",
            "--max-ops", str(max_ops), "--key-base", str(key_base(row))]
    argv += ["--config", server.config] if shape.store == "chordctl" else \
        ["--address", server.address]
    if shape.route:
        argv += ["--route", shape.route]
    pids = server.pids()
    if pids:
        argv += ["--server-pids", ",".join(map(str, pids))]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                              timeout=seconds + 180)
    except subprocess.TimeoutExpired:
        return {"failed": f"no result within {seconds + 180:.0f}s"}
    if done.returncode != 0:
        return {"failed": (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]}
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return {"failed": f"no JSON line in its output: {done.stdout[-200:]!r}"}


def parse_threads(text: str) -> list[int]:
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of thread counts") from None
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError("thread counts are 1 or more")
    return out


def parse_workloads(text: str) -> list[str]:
    out = [w.strip().upper() for w in text.split(",") if w.strip()]
    if not out or any(w not in ("A", "B", "C") for w in out):
        raise argparse.ArgumentTypeError(f"{text!r}: workloads are some of A,B,C")
    return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="peers.py", description="YCSB against chordctl, Redis and etcd, in one run.")
    p.add_argument("--systems", default=DEFAULT_SYSTEMS,
                   help=f"rows, in the table's order [{DEFAULT_SYSTEMS}]; also chordctl-entry, "
                        f"and chordctl-grpc for both gRPC rows")
    p.add_argument("--threads", type=parse_threads, default=[1, 16],
                   help="client thread counts [1,16]; the load runs at the largest")
    p.add_argument("--workloads", type=parse_workloads, default=["A", "B", "C"],
                   help="YCSB workloads [A,B,C]")
    p.add_argument("--seconds", type=float, default=10.0, help="seconds per cell [10]")
    p.add_argument("--records", type=int, default=5000, help="records [5000]")
    p.add_argument("--value-bytes", type=int, default=100, help="value size [100]")
    p.add_argument("--max-ops", type=int, default=0,
                   help=f"operations per cell at most [seconds x {MAX_RATE}]")
    p.add_argument("--write", metavar="FILE",
                   help="put the section into FILE between its markers (appended once)")
    args = p.parse_args(argv)
    try:
        args.shapes = expand_systems(args.systems)
    except ValueError as e:
        p.error(str(e))
    if not 0 < args.seconds <= 3600:
        p.error("--seconds must be above 0 and at most 3600")
    if not 1 <= args.records < KEY_SPACING // 13:
        p.error(f"--records must be from 1 to {KEY_SPACING // 13 - 1}")
    if args.value_bytes < 1:
        p.error("--value-bytes must be at least 1")
    return args


def _on_sigterm(signum, frame) -> None:
    raise KeyboardInterrupt


def _versions(servers: dict, results: Results, shapes: Sequence[Shape]) -> list[str]:
    import google.protobuf
    import grpc
    out = []
    if "redis" in servers:
        out.append(f"Redis: {_first_line(['redis-server', '--version'])}")
    if "etcd" in servers:
        out.append(f"etcd: {_first_line(['etcd', '--version'])}")
    for s in shapes:
        client = next((r["client"] for (name, _, _), r in results.items()
                       if name == s.name and "client" in r), None)
        if client and s.store in servers:
            out.append(f"{s.name} client: {client}")
    out.append(f"orchestrator and chordctl side: Python {platform.python_version()}, grpcio "
               f"{grpc.__version__}, protobuf {google.protobuf.__version__}; "
               f"{os.cpu_count()} CPUs, {platform.platform()}")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    columns = cells(args.threads, args.workloads)
    started = datetime.datetime.now(datetime.timezone.utc)
    work = pathlib.Path(tempfile.mkdtemp(prefix="chordctl-peers-"))
    kinds = {"redis": RedisServer, "etcd": EtcdServer, "chordctl": ChordRing}
    servers: dict[str, object] = {}
    notes: list[str] = []
    results: Results = {}
    try:
        for store in dict.fromkeys(s.store for s in args.shapes):
            server = servers[store] = kinds[store](work)   # stopped in finally, even half up
            try:
                server.check()
                print(f"peers: starting {server.label}", file=sys.stderr)
                server.start()
            except Skip as e:
                del servers[store]
                server.stop()
                print(e, file=sys.stderr)
                notes.append(str(e).splitlines()[0])
        shapes = [s for s in args.shapes if s.store in servers]
        if "etcd" in servers and servers["etcd"].pure_python_protobuf():
            notes.append("The etcd client runs on protobuf's pure-Python implementation: "
                         "etcd3 needs protobuf<4, which has no compiled wheel for Python "
                         f"{'.'.join(platform.python_version_tuple()[:2])}; that cost is "
                         "on the client side and counts in etcd's figures.")
        if not shapes:
            print("peers: no system could run", file=sys.stderr)
            return 1
        rows = {s.name: r for r, s in enumerate(args.shapes)}
        for phase, threads in columns:
            for s in shapes:
                r = run_cell(s, servers[s.store], phase, threads, rows[s.name], args)
                results[(s.name, phase, threads)] = r
                shown = r["failed"] if "failed" in r else _cell(r) + " ops/s"
                print(f"peers: {s.name} {phase}@{threads}: {shown}", file=sys.stderr)
    except KeyboardInterrupt:
        print("peers: interrupted; stopping every server it started", file=sys.stderr)
        return 130
    finally:
        for server in reversed(list(servers.values())):
            server.stop()
        shutil.rmtree(work, ignore_errors=True)

    labels = {s.name: s.label.format(version=servers[s.store].version()) for s in shapes}
    tables = render_tables(shapes, labels, results, columns)
    command = "python benchmarks/peers.py " + shlex.join(sys.argv[1:] if argv is None
                                                         else list(argv))
    ended = datetime.datetime.now(datetime.timezone.utc)
    when = f"{started:%Y-%m-%d %H:%M}-{ended:%H:%M} UTC"
    settings = (f"YCSB, {args.records:,} records of {args.value_bytes} bytes, zipfian keys; "
                f"one client process, N threads, each one synchronous request at a time "
                f"(load: single creates, or puts); each cell {args.seconds:g} s (load: until "
                f"every record exists), one system at a time, the others idle; each column "
                f"measured for every system back to back. chordctl's 4 nodes are pinned "
                f"round robin by `cluster up`, as always; Redis, etcd and the client "
                f"process are not pinned.")
    section = render_section(tables, when=when, command=command.strip(), settings=settings,
                             versions=_versions(servers, results, shapes), notes=notes)
    print(section)
    if args.write:
        path = pathlib.Path(args.write)
        text = path.read_text() if path.exists() else ""
        path.write_text(replace_section(text, section))
        print(f"peers: wrote the section into {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
