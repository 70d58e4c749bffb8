"""``chordctl bench``: YCSB-style load and workloads against a running ring."""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
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
# bench's own key range: [10^18, 2 * 10^18). A run takes a fresh slot of
# 10^12 keys in it (base + i * KEY_STRIDE), so data below 10^18 is never
# touched and runs do not collide.
KEY_FLOOR = 10 ** 18
KEY_SLOT = 10 ** 12
MAX_RECORDS = KEY_SLOT // KEY_STRIDE


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


def _start_echo(port: int, pin: str, forward: str | None = None) -> subprocess.Popen:
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
        port_one, port_a, port_b = _free_ports(3)
        self.one = f"127.0.0.1:{port_one}"
        self.two = f"127.0.0.1:{port_a}"
        self.procs: list[subprocess.Popen] = []
        try:
            for port, pin, forward in ((port_one, pin_entry, None), (port_b, pin_owner, None),
                                       (port_a, pin_entry, f"127.0.0.1:{port_b}")):
                self.procs.append(_start_echo(port, pin, forward))
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


def run_baseline(echo: EchoServers, concurrency: int, ops: int, show: bool) -> list[dict]:
    """The echo's concurrent and batch shapes (its sequential ones run interleaved)."""
    rows: list[dict] = []
    for name, target, n, conc, coalesce in (
            (f"echo unary 1 hop x{concurrency}", echo.one, ops, concurrency, False),
            (f"echo coalesced 1 hop x{concurrency}", echo.one, ops, concurrency, True)):
        with Client(None, target=target, coalesce=coalesce) as c:
            c.read("0") if not coalesce else None   # connect outside the timing
            with _Bar(n, name, show) as bar:
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
    rows.append({"phase": "echo batch of 100", "op": "read", "concurrency": 1,
                 "ops": calls * 100, "errors": 0, "ops_per_s": round(calls * 100 / secs, 1),
                 "p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None})
    return rows


def run_sequential(cfg: Config, entry: int, owned: list[str], forwarded: list[str],
                   value: bytes, seq_ops: int, rounds: int, echo: EchoServers | None,
                   show: bool) -> tuple[list[dict], list[dict], dict[str, list[float]]]:
    """Sequential reads (owned, one forward) and updates, in *rounds* rounds.

    With an echo, each round also times the echo's 1- and 2-hop shapes right
    after the node's: the machine's speed drifts (other tenants, turbo), and
    interleaving puts each ratio's two sides in the same few seconds. Returns
    the node's rows, the echo's rows and each round's ratio.
    """
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
        with _Bar(sum(per) * len(shapes), "sequential", show) as bar:
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


def _one_hop_keys(ring: Ring, keys: list[str], entry: int) -> list[str]:
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


def _owned_keys(ring: Ring, keys: list[str], node: int) -> list[str]:
    return [k for k in keys if ring.owner(int(k)) == node]


@click.command()
@click.option("--records", type=click.IntRange(1, MAX_RECORDS), default=10_000, show_default=True,
              help="Records created by the load phase.")
@click.option("--ops", type=click.IntRange(1), default=20_000, show_default=True,
              help="Operations per workload run.")
@click.option("--seq-ops", type=click.IntRange(1), default=2_000, show_default=True,
              help="Operations of each sequential phase.")
@click.option("--rounds", type=click.IntRange(1), default=5, show_default=True,
              help="Rounds the sequential phases are split into; with --baseline each "
                   "round times the echo right after the node, and a ratio is the median "
                   "of the rounds'.")
@click.option("--concurrency", type=click.IntRange(1), default=64, show_default=True,
              help="Requests in flight during the workloads.")
@click.option("--workloads", "wl", default="A,B,C", show_default=True,
              help="YCSB core workloads: A 50/50 read/update, B 95/5, C read only.")
@click.option("--distributions", default="uniform,zipfian", show_default=True,
              help="Key choice of the workloads: uniform, or zipfian (a few keys are hot).")
@click.option("--routes", default="entry,direct", show_default=True,
              help="entry: the first node routes; direct: the client sends to the owner.")
@click.option("--value-size", type=click.IntRange(0, 64 * 1024 * 1024), default=32,
              show_default=True,
              help="Bytes per value, loaded and updated (at most 64 MiB, the largest limits.max_value_bytes).")
@click.option("--coalesce/--no-coalesce", default=True, show_default=True,
              help="Send concurrent operations as Batch calls (the client library's option).")
@click.option("--baseline", is_flag=True,
              help="Also measure a bare gRPC echo of the same shapes (1 and 2 hops, batch).")
@click.option("--snapshot-phase", is_flag=True,
              help="Also run workload C while every node takes snapshots, to compare "
                   "latency with and without one.")
@click.option("--skip-load", is_flag=True,
              help="Use the keys a previous run with the same --key-base loaded (and kept).")
@click.option("--key-base", type=click.IntRange(0), default=None,
              help="First key of this run's keys [default: a fresh slot in bench's range, "
                   "10^18 to 2*10^18].")
@click.option("--keep", is_flag=True,
              help="Leave the keys in the ring (for a later --skip-load run); by default "
                   "bench deletes them at the end.")
@click.option("--seed", type=int, default=1, show_default=True,
              help="Seed of the workloads' key and operation choices.")
@pass_state
def bench(state: State, records: int, ops: int, seq_ops: int, rounds: int, concurrency: int,
          wl: str,
          distributions: str, routes: str, value_size: int, coalesce: bool, baseline: bool,
          snapshot_phase: bool, skip_load: bool, key_base: int | None, keep: bool,
          seed: int) -> None:
    """Benchmark a running ring: load, sequential owned/forwarded, YCSB A/B/C.

    Prints throughput and p50/p95/p99/max latency per phase and operation;
    `-o json` for scripts (a figure that does not apply is null). Bench works
    in its own key range, 10^18 to 2*10^18, a fresh slot of it per run, so
    it never touches other data; at the end it deletes the keys it used,
    unless --keep.

    \b
    Example:
        chordctl -c examples/configs/ring4.yaml bench --baseline
        chordctl -o json bench --records 100000 --workloads A --routes entry
        chordctl bench --key-base 1000000000000000000 --keep
        chordctl bench --key-base 1000000000000000000 --skip-load
    """
    cfg = state.config()
    wls = _csv(wl.upper(), tuple(workloads.WORKLOADS), "workloads")
    dists = _csv(distributions, workloads.DISTRIBUTIONS, "distributions")
    rts = _csv(routes, ("entry", "direct"), "routes")
    fmt = state.fmt("table")
    show = sys.stderr.isatty()
    ring = Ring(cfg.ring.bits, len(cfg.nodes), cfg.ring.placement, cfg.ring.routing)
    base = key_base if key_base is not None else \
        KEY_FLOOR + KEY_SLOT * (int(time.time() * 1000) % (KEY_FLOOR // KEY_SLOT))
    if skip_load and key_base is None:
        raise InvalidInputError("bench: --skip-load needs the --key-base of the run that loaded")
    keys = [str(base + i * KEY_STRIDE) for i in range(records)]
    value = b"v" * value_size
    rows: list[dict] = []

    loaded = skip_load
    cleanup = None
    try:
        # Load: pipelined Batch calls, each to the key's owner.
        if not skip_load:
            loaded = True
            with Client(cfg, route="direct") as c:
                with _Bar(records, "load", show) as bar:
                    rep = bulk.load(c, ((k, value) for k in keys), progress=bar)
            rows.append({"phase": f"load (batch {bulk.DEFAULT_BATCH}, direct)", "op": "create",
                         "concurrency": 4,
                         "ops": rep.records, "errors": rep.failures,
                         "ops_per_s": round(rep.rate, 1),
                         "p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None})

        # Sequential single operations: the entry node owns the key / one forward,
        # interleaved round by round with the echo's same shapes (--baseline).
        entry = 0
        owned = _owned_keys(ring, keys, entry) or keys
        forwarded = _one_hop_keys(ring, keys, entry)
        # The echoes run on the CPUs of the nodes they stand for: A of the entry
        # node, B of the owner in the forwarded phase.
        sts = _statuses(cfg, (entry, ring.owner(int(forwarded[0])) if forwarded else entry))
        pins = (sts[0].cpus, sts[1].cpus) if sts else None
        with contextlib.ExitStack() as stack:
            echo = stack.enter_context(EchoServers(pins)) if baseline else None
            seq_rows, base_rows, round_ratios = run_sequential(
                cfg, entry, owned, forwarded, value, seq_ops, rounds, echo, show)
            rows.extend(seq_rows)
            if echo is not None:
                base_rows.extend(run_baseline(echo, concurrency, ops, show))

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
    finally:
        if loaded and not keep:
            cleanup = _delete_keys(cfg, keys, show)

    machine = {"python": platform.python_version(), "cpus": os.cpu_count(),
               "platform": platform.platform(), "nodes": len(cfg.nodes),
               "fsync": cfg.storage.fsync, "coalesce": coalesce,
               "node_cpus": list(pins) if pins else None,
               "event_loop": sts[0].event_loop if sts else None}
    if fmt == "json":
        click.echo(render.to_json({"machine": machine, "results": rows,
                                   "baseline": base_rows,
                                   "ratios": _ratios(rows, round_ratios),
                                   "ratio_rounds": round_ratios,
                                   "keys": {"first": str(base), "stride": KEY_STRIDE,
                                            "count": records},
                                   "cleanup": cleanup}))
        _exit_if_cleanup_failed(cleanup)
        return
    click.echo(render.render_rows(_cells(rows), HEADERS, fmt))
    if base_rows:
        click.echo("\nbaseline (bare gRPC echo, same client machinery):")
        click.echo(render.render_rows(_cells(base_rows), HEADERS, fmt))
        click.echo("")
        for k, v in _ratios(rows, round_ratios).items():
            spread = round_ratios.get(k)
            click.echo(f"{k}: {v}" + (f"  (median of {len(spread)} interleaved rounds: "
                                      f"{min(spread)}-{max(spread)})" if spread else ""))
        if pins:
            two = f", 2 hops on {pins[0]} -> {pins[1]}" if forwarded else ""
            click.echo(f"echo servers pinned like the nodes: 1 hop on CPUs {pins[0]}{two}")
    _exit_if_cleanup_failed(cleanup)


def _cells(rows: list[dict]) -> list[list]:
    """Table cells: a figure that does not apply (None, null in JSON) is blank."""
    return [["" if r[h] is None else r[h] for h in HEADERS] for r in rows]


def _delete_keys(cfg: Config, keys: list[str], show: bool) -> dict:
    """Delete this run's keys (pipelined Batch deletes); a key never created is no failure."""
    try:
        with Client(cfg, route="direct") as c:
            with _Bar(len(keys), "cleanup", show) as bar:
                rep = bulk.load(c, ((k, b"") for k in keys), progress=bar, op=bulk.DELETE)
    except ChordError as e:
        return {"deleted": 0, "failures": len(keys), "error": str(e)}
    failures = rep.failures - rep.errors.get("not found", 0)
    out = {"deleted": rep.ok, "failures": failures}
    if failures:
        out["error"] = rep.samples[0] if rep.samples else "unknown"
    click.echo(f"bench: deleted the {rep.ok} keys it used (--keep leaves them)"
               + (f"; {failures} could not be deleted: {out['error']}" if failures else ""),
               err=True)
    return out


def _exit_if_cleanup_failed(cleanup: dict | None) -> None:
    if cleanup and cleanup["failures"]:
        click.get_current_context().exit(1)


def _statuses(cfg: Config, nodes: tuple[int, ...]) -> list | None:
    """Status of each of *nodes*; None if one cannot be read."""
    try:
        out = []
        for i in nodes:
            with Client(cfg, target=cfg.nodes[i].address) as c:
                out.append(c.status())
        return out
    except ChordError:
        return None


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


def _ratios(rows: list[dict], round_ratios: dict[str, list[float]]) -> dict:
    out: dict[str, float] = {k: round(statistics.median(v), 3)
                             for k, v in round_ratios.items() if v}
    quiet = [r for r in rows if r["phase"] == "ycsb C, no snapshot"]
    busy = [r for r in rows if r["phase"].startswith("ycsb C, during snapshots")]
    if quiet and busy and quiet[0]["p99_ms"] and busy[0]["p99_ms"] is not None:
        out["p99 during snapshots / p99 without"] = round(busy[0]["p99_ms"] /
                                                          quiet[0]["p99_ms"], 3)
    return out
