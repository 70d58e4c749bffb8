"""The benchmark run behind ``chordctl bench``: load, sequential, YCSB, snapshot, echo.

Library code: every phase returns rows (dicts with the keys of HEADERS in
cli/bench.py) and reports its progress through *progress*, a factory
``progress(label, total)`` that returns a context manager whose value is
called with the number of operations done since the last call. The CLI
draws a progress bar with it; ``None`` shows nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
from typing import Callable, ContextManager, Sequence

from chordctl import bulk
from chordctl.bench import engine, workloads
from chordctl.client import Client
from chordctl.config import Config
from chordctl.core.ring import Ring
from chordctl.errors import ChordError

KEY_STRIDE = 40503   # odd: i * stride spreads keys evenly over any 2^m ring
# bench's own key range: [10^18, 2 * 10^18). A run takes a fresh slot of
# 10^12 keys in it (base + i * KEY_STRIDE), so data below 10^18 is never
# touched and runs do not collide.
KEY_FLOOR = 10 ** 18
KEY_SLOT = 10 ** 12
MAX_RECORDS = KEY_SLOT // KEY_STRIDE

Progress = Callable[[str, int], ContextManager[Callable[[int], None]]]


@contextlib.contextmanager
def _quiet(label: str, total: int):
    yield lambda n: None


def fresh_key_base() -> int:
    """The first key of a fresh slot in bench's range (from the clock)."""
    return KEY_FLOOR + KEY_SLOT * (int(time.time() * 1000) % (KEY_FLOOR // KEY_SLOT))


def bench_keys(base: int, records: int) -> list[str]:
    return [str(base + i * KEY_STRIDE) for i in range(records)]


def free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def start_echo(port: int, pin: str, forward: str | None = None) -> subprocess.Popen:
    args = ["--port", str(port)]
    if forward:
        args += ["--forward", forward]
    if pin:
        args += ["--cpus", pin]
    p = subprocess.Popen([sys.executable, "-m", "chordctl.bench.echo", *args],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    if not p.stdout.readline().startswith("echo on"):
        p.kill()
        p.wait(10)
        raise ChordError("bench: the echo baseline server did not start")
    return p


class EchoServers:
    """The baseline's echo servers, run like the nodes they stand for; a context manager.

    ``one`` answers at once (the entry node serving a key it owns); ``two``
    asks a third echo (the entry node forwarding to the owner). *pins*: the
    CPU lists of the entry node and of the owner, so each echo runs pinned
    like its node (`cluster up` pins each node to one CPU).
    """

    def __init__(self, pins: tuple[str, str] | None = None):
        pin_entry, pin_owner = pins or ("", "")
        port_one, port_a, port_b = free_ports(3)
        self.one = f"127.0.0.1:{port_one}"
        self.two = f"127.0.0.1:{port_a}"
        self.procs: list[subprocess.Popen] = []
        try:
            for port, pin, forward in ((port_one, pin_entry, None), (port_b, pin_owner, None),
                                       (port_a, pin_entry, f"127.0.0.1:{port_b}")):
                self.procs.append(start_echo(port, pin, forward))
        except BaseException:
            self.__exit__()
            raise

    def __enter__(self) -> "EchoServers":
        return self

    def __exit__(self, *exc) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            p.wait(10)


def _reads(n: int):
    return (("read", str(i), None) for i in range(n))


def _no_latency(phase: str, op: str, concurrency: int, ops: int, errors: int,
                rate: float) -> dict:
    return {"phase": phase, "op": op, "concurrency": concurrency, "ops": ops, "errors": errors,
            "ops_per_s": round(rate, 1),
            "p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None}


def run_load(cfg: Config, keys: Sequence[str], value: bytes,
             progress: Progress | None = None) -> list[dict]:
    """Create *keys* with pipelined Batch calls, each to the key's owner."""
    progress = progress or _quiet
    with Client(cfg, route="direct") as c:
        with progress("load", len(keys)) as bar:
            rep = bulk.load(c, ((k, value) for k in keys), progress=bar)
    return [_no_latency(f"load (batch {bulk.DEFAULT_BATCH}, direct)", "create", 4,
                        rep.records, rep.failures, rep.rate)]


def run_baseline(echo: EchoServers, concurrency: int, ops: int,
                 progress: Progress | None = None) -> list[dict]:
    """The echo's concurrent and batch shapes (its sequential ones run interleaved)."""
    progress = progress or _quiet
    rows: list[dict] = []
    for name, target, n, conc, coalesce in (
            (f"echo unary 1 hop x{concurrency}", echo.one, ops, concurrency, False),
            (f"echo coalesced 1 hop x{concurrency}", echo.one, ops, concurrency, True)):
        with Client(None, target=target, coalesce=coalesce) as c:
            c.read("0") if not coalesce else None   # connect outside the timing
            with progress(name, n) as bar:
                phase = engine.drive(c, name, _reads(n), n, conc, bar)
        rows.extend(engine.summarize(phase))
    # Batches of 100 reads: the per-call cost spread over 100 operations.
    with Client(None, target=echo.one) as c:
        batch = [("read", str(i), None) for i in range(100)]
        calls = max(1, ops // 100)
        t0 = time.perf_counter()
        for _ in range(calls):
            c.batch(batch)
        secs = time.perf_counter() - t0
    rows.append(_no_latency("echo batch of 100", "read", 1, calls * 100, 0,
                            calls * 100 / secs))
    return rows


def run_sequential(cfg: Config, entry: int, owned: list[str], forwarded: list[str],
                   value: bytes, seq_ops: int, rounds: int, echo: EchoServers | None,
                   progress: Progress | None = None
                   ) -> tuple[list[dict], list[dict], dict[str, list[float]]]:
    """Sequential reads (owned, one forward) and updates, in *rounds* rounds.

    With an echo, each round also times the echo's 1- and 2-hop shapes right
    after the node's: the machine's speed drifts (other tenants, turbo), and
    interleaving puts each ratio's two sides in the same few seconds. Returns
    the node's rows, the echo's rows and each round's ratio.
    """
    progress = progress or _quiet
    per = [seq_ops // rounds + (1 if r < seq_ops % rounds else 0) for r in range(rounds)]
    per = [n for n in per if n > 0]
    shapes: list[tuple[str, str | None, list[str], str]] = [
        ("seq read, entry owns", cfg.nodes[entry].address, owned, "read")]
    if echo is not None:
        shapes.append(("echo unary 1 hop", echo.one, [], "read"))
    if forwarded:
        shapes.append(("seq read, 1 forward", cfg.nodes[entry].address, forwarded, "read"))
        if echo is not None:
            shapes.append(("echo unary 2 hops", echo.two, [], "read"))
    shapes.append(("seq update, entry owns", cfg.nodes[entry].address, owned, "update"))
    phases: dict[str, list[engine.Phase]] = {name: [] for name, *_ in shapes}
    clients = {name: Client(cfg if pool else None, target=target)
               for name, target, pool, _ in shapes}
    try:
        for name, _, pool, _ in shapes:
            clients[name].read(pool[0] if pool else "0")     # connect outside the timing
        done = 0
        with progress("sequential", sum(per) * len(shapes)) as bar:
            for n in per:
                for name, _, pool, op in shapes:
                    if pool:
                        v = value if op == "update" else None
                        gen = ((op, pool[(done + i) % len(pool)], v) for i in range(n))
                    else:
                        gen = _reads(n)
                    phases[name].append(engine.drive(clients[name], name, gen, n, 1, bar))
                done += n
    finally:
        for c in clients.values():
            c.close()
    rows: list[dict] = []
    echo_rows: list[dict] = []
    for name, runs in phases.items():
        merged = engine.merge(runs)
        (echo_rows if name.startswith("echo") else rows).extend(engine.summarize(merged))
    ratios: dict[str, list[float]] = {}
    for key, node, base in (("seq owned / echo 1 hop", "seq read, entry owns",
                             "echo unary 1 hop"),
                            ("seq 1 forward / echo 2 hops", "seq read, 1 forward",
                             "echo unary 2 hops")):
        if phases.get(node) and phases.get(base):
            ratios[key] = [round(a.rate / b.rate, 3)
                           for a, b in zip(phases[node], phases[base]) if b.rate > 0]
    return rows, echo_rows, ratios


def run_workloads(cfg: Config, keys: Sequence[str], value: bytes, route: str,
                  distributions: Sequence[str], names: Sequence[str], ops: int,
                  concurrency: int, coalesce: bool, seed: int, entry: int = 0,
                  progress: Progress | None = None) -> list[dict]:
    """YCSB core workloads *names* x *distributions*, sent by *route* (entry | direct)."""
    progress = progress or _quiet
    rows: list[dict] = []
    target = cfg.nodes[entry].address if route == "entry" else None
    with Client(cfg, target=target, route=route, coalesce=coalesce) as c:
        for dist in distributions:
            for w in names:
                name = f"ycsb {w} {dist} {route}"
                gen = workloads.operations(w, dist, len(keys), ops, keys.__getitem__, value,
                                           seed)
                with progress(name, ops) as bar:
                    rows.extend(engine.summarize(
                        engine.drive(c, name, gen, ops, concurrency, bar)))
    return rows


def one_hop_keys(ring: Ring, keys: list[str], entry: int) -> list[str]:
    """Keys one forward away from *entry*, all owned by the same node.

    That node is the next one in join order when it is one hop away (always,
    for fingers and for neighbours), so every run measures the same pair:
    under `cluster up`'s round-robin pinning, two nodes on different CPUs,
    like two machines.
    """
    one_hop = [k for k in keys if len(ring.route(entry, int(k))) == 2]
    owners = {ring.owner(int(k)) for k in one_hop}
    if not owners:
        return []
    owner = (entry + 1) % ring.n if (entry + 1) % ring.n in owners else min(owners)
    return [k for k in one_hop if ring.owner(int(k)) == owner]


def owned_keys(ring: Ring, keys: list[str], node: int) -> list[str]:
    return [k for k in keys if ring.owner(int(k)) == node]


def delete_keys(cfg: Config, keys: list[str], progress: Progress | None = None) -> dict:
    """Delete this run's keys (pipelined Batch deletes); a key never created is no failure.

    Returns {"deleted", "failures"} and, when some failed, "error" (one reason);
    ChordError when the deletes could not be sent at all.
    """
    progress = progress or _quiet
    with Client(cfg, route="direct") as c:
        with progress("cleanup", len(keys)) as bar:
            rep = bulk.load(c, ((k, b"") for k in keys), progress=bar, op=bulk.DELETE)
    failures = rep.failures - rep.errors.get("not found", 0)
    out = {"deleted": rep.ok, "failures": failures}
    if failures:
        out["error"] = rep.samples[0] if rep.samples else "unknown"
    return out


def cleanup_message(cleanup: dict) -> str:
    """What delete_keys did, in one line for the user."""
    failures = cleanup["failures"]
    return (f"bench: deleted the {cleanup['deleted']} keys it used (--keep leaves them)"
            + (f"; {failures} could not be deleted: {cleanup['error']}" if failures else ""))


def statuses(cfg: Config, nodes: tuple[int, ...]) -> list | None:
    """Status of each of *nodes*; None if one cannot be read."""
    try:
        out = []
        for i in nodes:
            with Client(cfg, target=cfg.nodes[i].address) as c:
                out.append(c.status())
        return out
    except ChordError:
        return None


def run_snapshot_phase(cfg: Config, keys: list[str], ops: int, concurrency: int,
                       coalesce: bool, seed: int,
                       progress: Progress | None = None) -> list[dict]:
    """Workload C twice: quiet, then while every node writes snapshot after snapshot."""
    progress = progress or _quiet
    rows: list[dict] = []
    with Client(cfg, route="entry", target=cfg.nodes[0].address, coalesce=coalesce) as c:
        for name in ("ycsb C, no snapshot", "ycsb C, during snapshots"):
            stop = threading.Event()
            taken = [0]

            def snapshots(stop: threading.Event = stop, taken: list = taken) -> None:
                while not stop.is_set():
                    for node in cfg.nodes:
                        try:
                            with Client(cfg, target=node.address) as admin:
                                admin.take_snapshot()
                                taken[0] += 1
                        except ChordError:
                            pass

            worker = threading.Thread(target=snapshots, daemon=True)
            if "during" in name:
                worker.start()
            gen = workloads.operations("C", "uniform", len(keys), ops, keys.__getitem__, b"",
                                       seed)
            with progress(name, ops) as bar:
                phase = engine.drive(c, name, gen, ops, concurrency, bar)
            stop.set()
            if worker.is_alive():
                worker.join(120)
            for row in engine.summarize(phase):
                if "during" in name:
                    row["phase"] = f"{name} ({taken[0]} taken)"
                rows.append(row)
    return rows


def ratios(rows: list[dict], round_ratios: dict[str, list[float]]) -> dict:
    """Each ratio's median over its rounds, and p99 during snapshots / p99 without."""
    out: dict[str, float] = {k: round(statistics.median(v), 3)
                             for k, v in round_ratios.items() if v}
    quiet = [r for r in rows if r["phase"] == "ycsb C, no snapshot"]
    busy = [r for r in rows if r["phase"].startswith("ycsb C, during snapshots")]
    if quiet and busy and quiet[0]["p99_ms"] and busy[0]["p99_ms"] is not None:
        out["p99 during snapshots / p99 without"] = round(busy[0]["p99_ms"] /
                                                          quiet[0]["p99_ms"], 3)
    return out


@dataclasses.dataclass
class Report:
    """One bench run: the node's rows, the echo's, the ratios, and what it ran on."""
    rows: list[dict]
    baseline: list[dict]
    round_ratios: dict[str, list[float]]
    machine: dict
    key_base: int
    records: int
    forwarded: bool                   # a one-forward phase ran
    pins: tuple[str, str] | None      # the CPUs of the entry node and of the owner
    cleanup: dict | None              # delete_keys's answer; None: keys kept

    @property
    def ratios(self) -> dict:
        return ratios(self.rows, self.round_ratios)


def run(cfg: Config, *, records: int, ops: int, seq_ops: int, rounds: int, concurrency: int,
        workload_names: Sequence[str], distributions: Sequence[str], routes: Sequence[str],
        value_size: int, coalesce: bool, baseline: bool, snapshot_phase: bool,
        skip_load: bool, key_base: int, keep: bool, seed: int,
        progress: Progress | None = None,
        notify: Callable[[str], None] | None = None) -> Report:
    """Every phase of ``chordctl bench``, in order.

    The keys are deleted at the end unless *keep* (also when a phase
    fails), and *notify* is told how that went (cleanup_message).
    """
    ring = Ring.from_config(cfg)
    keys = bench_keys(key_base, records)
    value = b"v" * value_size
    rows: list[dict] = []
    base_rows: list[dict] = []
    round_ratios: dict[str, list[float]] = {}
    loaded = skip_load
    cleanup = None
    sts = pins = None
    forwarded: list[str] = []
    try:
        if not skip_load:
            loaded = True
            rows.extend(run_load(cfg, keys, value, progress))

        # Sequential single operations: the entry node owns the key / one forward,
        # interleaved round by round with the echo's same shapes (baseline).
        entry = 0
        owned = owned_keys(ring, keys, entry) or keys
        forwarded = one_hop_keys(ring, keys, entry)
        # The echoes run on the CPUs of the nodes they stand for: A of the entry
        # node, B of the owner in the forwarded phase.
        sts = statuses(cfg, (entry, ring.owner(int(forwarded[0])) if forwarded else entry))
        pins = (sts[0].cpus, sts[1].cpus) if sts else None
        with contextlib.ExitStack() as stack:
            echo = stack.enter_context(EchoServers(pins)) if baseline else None
            seq_rows, base_rows, round_ratios = run_sequential(
                cfg, entry, owned, forwarded, value, seq_ops, rounds, echo, progress)
            rows.extend(seq_rows)
            if echo is not None:
                base_rows.extend(run_baseline(echo, concurrency, ops, progress))

        for route in routes:
            rows.extend(run_workloads(cfg, keys, value, route, distributions, workload_names,
                                      ops, concurrency, coalesce, seed, entry, progress))

        if snapshot_phase:
            rows.extend(run_snapshot_phase(cfg, keys, ops, concurrency, coalesce, seed,
                                           progress))
    finally:
        if loaded and not keep:
            try:
                cleanup = delete_keys(cfg, keys, progress)
            except ChordError as e:
                cleanup = {"deleted": 0, "failures": len(keys), "error": str(e)}
            else:
                if notify is not None:
                    notify(cleanup_message(cleanup))

    machine = {"python": platform.python_version(), "cpus": os.cpu_count(),
               "platform": platform.platform(), "nodes": len(cfg.nodes),
               "fsync": cfg.storage.fsync, "coalesce": coalesce,
               "node_cpus": list(pins) if pins else None,
               "event_loop": sts[0].event_loop if sts else None}
    return Report(rows, base_rows, round_ratios, machine, key_base, records, bool(forwarded),
                  pins, cleanup)
