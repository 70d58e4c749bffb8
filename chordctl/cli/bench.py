"""``chordctl bench``: YCSB-style load and workloads against a running ring."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import threading
import time

import click

from chordctl import bulk, render
from chordctl.bench import engine, workloads
from chordctl.cli.common import State, pass_state
from chordctl.client import Client
from chordctl.config import Config
from chordctl.core.ring import Ring
from chordctl.errors import ChordError, InvalidInputError

HEADERS = ["phase", "op", "concurrency", "ops", "errors", "ops_per_s", "p50_ms", "p95_ms",
           "p99_ms", "max_ms"]
KEY_STRIDE = 40503   # odd: i * stride spreads keys evenly over any 2^m ring


class _Bar:
    """click's progress bar, safe to advance from gRPC callback threads."""

    def __init__(self, total: int, label: str, enabled: bool):
        self.enabled = enabled
        self.lock = threading.Lock()
        self.bar = click.progressbar(length=total, label=label.ljust(28), file=sys.stderr) \
            if enabled else None

    def __enter__(self):
        if self.bar is not None:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)

    def __call__(self, n: int) -> None:
        if self.bar is not None:
            with self.lock:
                self.bar.update(n)


def _csv(value: str, allowed: tuple[str, ...], name: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    for v in items:
        if v not in allowed:
            raise InvalidInputError(f"bench: --{name} {v!r} is not one of {', '.join(allowed)}")
    return items


def _echo_pair(port_a: int, port_b: int) -> list[subprocess.Popen]:
    """Echo B on port_b, echo A on port_a forwarding to B: 1 hop is B, 2 hops is A->B."""
    procs = []
    for args in (["--port", str(port_b)], ["--port", str(port_a), "--forward",
                                            f"127.0.0.1:{port_b}"]):
        p = subprocess.Popen([sys.executable, "-m", "chordctl.bench.echo", *args],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = p.stdout.readline()
        if not line.startswith("echo on"):
            for q in procs + [p]:
                q.kill()
            raise ChordError("bench: the echo baseline server did not start")
        procs.append(p)
    return procs


def _free_ports(n: int) -> list[int]:
    import socket
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def run_baseline(seq_ops: int, concurrency: int, ops: int, show: bool) -> list[dict]:
    port_a, port_b = _free_ports(2)
    procs = _echo_pair(port_a, port_b)
    rows: list[dict] = []
    try:
        one = f"127.0.0.1:{port_b}"
        two = f"127.0.0.1:{port_a}"
        reads = lambda n: (("read", str(i), None) for i in range(n))  # noqa: E731
        for name, target, n, conc, coalesce in (
                ("echo unary 1 hop", one, seq_ops, 1, False),
                ("echo unary 2 hops", two, seq_ops, 1, False),
                (f"echo unary 1 hop x{concurrency}", one, ops, concurrency, False),
                (f"echo coalesced 1 hop x{concurrency}", one, ops, concurrency, True)):
            with Client(None, target=target, coalesce=coalesce) as c:
                c.read("0") if not coalesce else None   # connect outside the timing
                with _Bar(n, name, show) as bar:
                    phase = engine.drive(c, name, reads(n), n, conc, bar)
            rows.extend(engine.summarize(phase))
        # Batches of 100 reads: the per-call cost spread over 100 operations.
        with Client(None, target=one) as c:
            batch = [("read", str(i), None) for i in range(100)]
            calls = max(1, ops // 100)
            t0 = time.perf_counter()
            for _ in range(calls):
                c.batch(batch)
            secs = time.perf_counter() - t0
        rows.append({"phase": "echo batch of 100", "op": "read", "concurrency": 1,
                     "ops": calls * 100, "errors": 0, "ops_per_s": round(calls * 100 / secs, 1),
                     "p50_ms": "", "p95_ms": "", "p99_ms": "", "max_ms": ""})
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(10)
    return rows


def _one_hop_keys(cfg: Config, ring: Ring, keys: list[str], entry: int) -> list[str]:
    return [k for k in keys if len(ring.route(entry, int(k))) == 2]


def _owned_keys(ring: Ring, keys: list[str], node: int) -> list[str]:
    return [k for k in keys if ring.owner(int(k)) == node]


@click.command()
@click.option("--records", type=click.IntRange(1), default=10_000, show_default=True,
              help="Records created by the load phase.")
@click.option("--ops", type=click.IntRange(1), default=20_000, show_default=True,
              help="Operations per workload run.")
@click.option("--seq-ops", type=click.IntRange(1), default=2_000, show_default=True,
              help="Operations of each sequential phase.")
@click.option("--concurrency", type=click.IntRange(1), default=64, show_default=True,
              help="Requests in flight during the workloads.")
@click.option("--workloads", "wl", default="A,B,C", show_default=True,
              help="YCSB core workloads: A 50/50 read/update, B 95/5, C read only.")
@click.option("--distributions", default="uniform,zipfian", show_default=True)
@click.option("--routes", default="entry,direct", show_default=True,
              help="entry: the first node routes; direct: the client sends to the owner.")
@click.option("--value-size", type=click.IntRange(0), default=32, show_default=True)
@click.option("--coalesce/--no-coalesce", default=True, show_default=True,
              help="Send concurrent operations as Batch calls (the client library's option).")
@click.option("--baseline", is_flag=True,
              help="Also measure a bare gRPC echo of the same shapes (1 and 2 hops, batch).")
@click.option("--snapshot-phase", is_flag=True,
              help="Also run workload C while every node takes snapshots, to compare "
                   "latency with and without one.")
@click.option("--skip-load", is_flag=True,
              help="Use the keys a previous run with the same --key-base loaded.")
@click.option("--key-base", type=int, default=None,
              help="First key of this run's key range [default: new per run].")
@click.option("--seed", type=int, default=1, show_default=True)
@pass_state
def bench(state: State, records: int, ops: int, seq_ops: int, concurrency: int, wl: str,
          distributions: str, routes: str, value_size: int, coalesce: bool, baseline: bool,
          snapshot_phase: bool, skip_load: bool, key_base: int | None, seed: int) -> None:
    """Benchmark a running ring: load, sequential owned/forwarded, YCSB A/B/C.

    Prints throughput and p50/p95/p99/max latency per phase and operation;
    `-o json` for scripts. Keys are new on every run (a fresh key range).

    \b
    Example:
        chordctl -c examples/configs/ring4.yaml bench --baseline
        chordctl -o json bench --records 100000 --workloads A --routes entry
    """
    cfg = state.config()
    wls = _csv(wl.upper(), tuple(workloads.WORKLOADS), "workloads")
    dists = _csv(distributions, workloads.DISTRIBUTIONS, "distributions")
    rts = _csv(routes, ("entry", "direct"), "routes")
    fmt = state.fmt("table")
    show = sys.stderr.isatty()
    ring = Ring(cfg.ring.bits, len(cfg.nodes), cfg.ring.placement, cfg.ring.routing)
    base = key_base if key_base is not None else 10 ** 12 * (1 + int(time.time() * 1000) % 10 ** 6)
    if skip_load and key_base is None:
        raise InvalidInputError("bench: --skip-load needs the --key-base of the run that loaded")
    keys = [str(base + i * KEY_STRIDE) for i in range(records)]
    value = b"v" * value_size
    rows: list[dict] = []

    # Load: pipelined Batch calls, each to the key's owner.
    if not skip_load:
        with Client(cfg, route="direct") as c:
            with _Bar(records, "load", show) as bar:
                rep = bulk.load(c, ((k, value) for k in keys), progress=bar)
        rows.append({"phase": "load (batch 1000, direct)", "op": "create", "concurrency": 4,
                     "ops": rep.records, "errors": rep.failures,
                     "ops_per_s": round(rep.rate, 1),
                     "p50_ms": "", "p95_ms": "", "p99_ms": "", "max_ms": ""})

    # Sequential single operations: the entry node owns the key / one forward.
    entry = 0
    owned = _owned_keys(ring, keys, entry) or keys
    forwarded = _one_hop_keys(cfg, ring, keys, entry)
    with Client(cfg, target=cfg.nodes[entry].address) as c:
        c.read(owned[0])
        for name, pool in (("seq read, entry owns", owned),
                           ("seq read, 1 forward", forwarded)):
            if not pool:
                continue
            gen = (("read", pool[i % len(pool)], None) for i in range(seq_ops))
            with _Bar(seq_ops, name, show) as bar:
                rows.extend(engine.summarize(engine.drive(c, name, gen, seq_ops, 1, bar)))
        gen = (("update", owned[i % len(owned)], value) for i in range(seq_ops))
        name = "seq update, entry owns"
        with _Bar(seq_ops, name, show) as bar:
            rows.extend(engine.summarize(engine.drive(c, name, gen, seq_ops, 1, bar)))

    # YCSB core workloads.
    for route in rts:
        target = cfg.nodes[entry].address if route == "entry" else None
        with Client(cfg, target=target, route=route, coalesce=coalesce) as c:
            for dist in dists:
                for w in wls:
                    name = f"ycsb {w} {dist} {route}"
                    gen = workloads.operations(w, dist, records, ops, keys.__getitem__, value,
                                               seed)
                    with _Bar(ops, name, show) as bar:
                        rows.extend(engine.summarize(
                            engine.drive(c, name, gen, ops, concurrency, bar)))

    if snapshot_phase:
        rows.extend(_snapshot_phase(cfg, keys, ops, concurrency, coalesce, seed, show))

    base_rows = run_baseline(seq_ops, concurrency, ops, show) if baseline else []
    machine = {"python": platform.python_version(), "cpus": os.cpu_count(),
               "platform": platform.platform(), "nodes": len(cfg.nodes),
               "fsync": cfg.storage.fsync, "coalesce": coalesce}
    if fmt == "json":
        click.echo(render.to_json({"machine": machine, "results": rows,
                                   "baseline": base_rows, "ratios": _ratios(rows, base_rows)}))
        return
    click.echo(render.render_rows([[r[h] for h in HEADERS] for r in rows], HEADERS, fmt))
    if base_rows:
        click.echo("\nbaseline (bare gRPC echo, same client machinery):")
        click.echo(render.render_rows([[r[h] for h in HEADERS] for r in base_rows], HEADERS,
                                      fmt))
        click.echo("")
        for k, v in _ratios(rows, base_rows).items():
            click.echo(f"{k}: {v}")


def _snapshot_phase(cfg: Config, keys: list[str], ops: int, concurrency: int, coalesce: bool,
                    seed: int, show: bool) -> list[dict]:
    """Workload C twice: quiet, then while every node writes snapshot after snapshot."""
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
            with _Bar(ops, name, show) as bar:
                phase = engine.drive(c, name, gen, ops, concurrency, bar)
            stop.set()
            if worker.is_alive():
                worker.join(120)
            for row in engine.summarize(phase):
                if "during" in name:
                    row["phase"] = f"{name} ({taken[0]} taken)"
                rows.append(row)
    return rows


def _ratios(rows: list[dict], base: list[dict]) -> dict:
    def rate(rs, phase, op=None):
        for r in rs:
            if r["phase"] == phase and (op is None or r["op"] == op):
                return float(r["ops_per_s"])
        return None

    out = {}
    one = rate(base, "echo unary 1 hop")
    two = rate(base, "echo unary 2 hops")
    owned = rate(rows, "seq read, entry owns")
    fwd = rate(rows, "seq read, 1 forward")
    if one and owned:
        out["seq owned / echo 1 hop"] = round(owned / one, 3)
    if two and fwd:
        out["seq 1 forward / echo 2 hops"] = round(fwd / two, 3)
    quiet = [r for r in rows if r["phase"] == "ycsb C, no snapshot"]
    busy = [r for r in rows if r["phase"].startswith("ycsb C, during snapshots")]
    if quiet and busy and quiet[0]["p99_ms"]:
        out["p99 during snapshots / p99 without"] = round(busy[0]["p99_ms"] /
                                                          quiet[0]["p99_ms"], 3)
    return out
