"""One cell of the peer benchmark: one system, one phase, N threads; one JSON line out.

benchmarks/peers.py runs this once per (system, phase, threads), each run
alone on the machine; it also runs by hand against a store that is up::

    python benchmarks/ycsb.py --system redis --address 127.0.0.1:6379 --phase load --threads 16
    python benchmarks/ycsb.py --system chordctl --config ring4.yaml --phase A --threads 16
    python benchmarks/ycsb.py --system chordctl-grpc --route owner --config ring4.yaml --phase C

The client shape is the same for every system, the way applications call a
store: one process, N threads, each thread one synchronous request at a
time, all threads sharing one client (redis-py's connection pool, etcd3's
channel, chordctl's own client, or one gRPC channel per node).

The operations are drawn before the clock starts, with chordctl's YCSB
key chooser and mix (chordctl/bench/workloads.py: zipfian keys, A 50/50
read/update, B 95/5, C reads; ``load`` creates every record once), into
one sequence that the threads take from in order: every system is asked
for the same keys in the same order. A run stops at --max-ops operations
or after --seconds, whichever comes first. A failed operation (a read of
a missing key too) is counted in ``errors``, never fatal; a store that
cannot be reached before the clock starts exits with code 3.

Records are the keys ``key_base + i * KEY_STRIDE`` for i in 0..records-1:
13 is odd, so on a ring of 2^m positions with ``placement: direct`` (key
mod 2^m) the keys spread evenly over every node's arc.

The redis and etcd adapters import nothing of chordctl: etcd3 needs
protobuf<4 and runs from its own venv, where chordctl's generated code
does not load, so workloads.py is loaded by its path.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import os
import pathlib
import platform
import random
import sys
import threading
import time
from typing import Any, Callable, Protocol, Sequence

ROOT = pathlib.Path(__file__).resolve().parent.parent
SYSTEMS = ("redis", "etcd", "chordctl", "chordctl-grpc")
PHASES = ("load", "A", "B", "C")
ROUTES = {"chordctl": ("direct", "entry"), "chordctl-grpc": ("owner", "entry")}
KEY_STRIDE = 13
DEFAULT_KEY_BASE = 7
DEFAULT_TIMEOUT = 10.0     # seconds per request
WARM_KEYS = 16             # reads before the clock: connections up, every node asked
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3


def _load_workloads():
    """chordctl/bench/workloads.py, loaded by path (no chordctl import: see the docstring)."""
    path = ROOT / "chordctl" / "bench" / "workloads.py"
    spec = importlib.util.spec_from_file_location("_ycsb_workloads", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


workloads = _load_workloads()

Op = tuple[str, int, "bytes | None"]


class Missing(Exception):
    """A read found no value for its key."""


class Adapter(Protocol):
    """What the driver needs from a store's client: three calls on int keys."""

    def create(self, key: int, value: bytes) -> None: ...

    def read(self, key: int) -> bytes: ...

    def update(self, key: int, value: bytes) -> None: ...

    def close(self) -> None: ...

    def version(self) -> str: ...


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host or "127.0.0.1", int(port)


# -- the adapters ---------------------------------------------------------------

class RedisAdapter:
    """redis-py: one ``redis.Redis`` whose default connection pool the threads share."""

    def __init__(self, address: str, timeout: float):
        import redis
        self._redis_version = redis.__version__
        host, port = _host_port(address)
        self.r = redis.Redis(host=host, port=port, socket_timeout=timeout)

    def create(self, key: int, value: bytes) -> None:
        self.r.set(str(key), value)

    def read(self, key: int) -> bytes:
        value = self.r.get(str(key))
        if value is None:
            raise Missing(f"no value for {key}")
        return value

    def update(self, key: int, value: bytes) -> None:
        self.r.set(str(key), value)

    def close(self) -> None:
        self.r.close()

    def version(self) -> str:
        return f"redis-py {self._redis_version}"


class EtcdAdapter:
    """python-etcd3: one ``etcd3.client`` (one gRPC channel) shared by the threads."""

    def __init__(self, address: str, timeout: float):
        import etcd3
        self._etcd3 = etcd3
        host, port = _host_port(address)
        self.c = etcd3.client(host=host, port=port, timeout=timeout)

    def create(self, key: int, value: bytes) -> None:
        self.c.put(str(key), value)

    def read(self, key: int) -> bytes:
        value, _meta = self.c.get(str(key))
        if value is None:
            raise Missing(f"no value for {key}")
        return value

    def update(self, key: int, value: bytes) -> None:
        self.c.put(str(key), value)

    def close(self) -> None:
        self.c.close()

    def version(self) -> str:
        import grpc
        from google import protobuf
        from google.protobuf.internal import api_implementation
        return (f"etcd3 {_dist_version('etcd3')}, grpcio {grpc.__version__}, protobuf "
                f"{protobuf.__version__} ({api_implementation.Type()})")


def connect_chordctl(path: str, route: str, timeout: float) -> Any:
    """chordctl's own client for the config at *path*, shared by every thread:
    the public API, ``chordctl.connect`` (coalescing on, as its default)."""
    import chordctl
    return chordctl.connect(path, route=route, timeout=timeout)


class ChordctlAdapter:
    """chordctl's own client (connect_chordctl), by *route*: direct (to each key's
    owner) or entry (everything to node 0)."""

    def __init__(self, path: str, route: str, timeout: float):
        from chordctl.errors import NotFoundError
        self._not_found = NotFoundError
        self.c = connect_chordctl(path, route, timeout)

    def create(self, key: int, value: bytes) -> None:
        self.c.create(key, value)

    def read(self, key: int) -> bytes:
        try:
            return self.c.read(key).value
        except self._not_found as e:
            raise Missing(str(e)) from None

    def update(self, key: int, value: bytes) -> None:
        self.c.update(key, value)

    def close(self) -> None:
        self.c.close()

    def version(self) -> str:
        import chordctl
        import grpc
        from google import protobuf
        return (f"chordctl {chordctl.__version__}, grpcio {grpc.__version__}, protobuf "
                f"{protobuf.__version__}")


class GrpcAdapter:
    """A generic unary gRPC client: KeyValueStub calls, no batching, default channel
    options -- what grpcurl or another language's stub does. One channel per
    node, shared by the threads; *route* entry sends everything to node 0,
    owner sends each request to the key's owner (from the ring's arithmetic)."""

    def __init__(self, path: str, route: str, timeout: float):
        import grpc
        from chordctl import config as config_mod
        from chordctl import security
        from chordctl.core.ring import Ring
        from chordctl.pb import chord_pb2 as pb
        from chordctl.pb import chord_pb2_grpc as pb_grpc
        self._grpc = grpc
        self._pb = pb
        self.timeout = timeout
        cfg = config_mod.load(path)
        count = len(cfg.nodes) if route == "owner" else 1
        self.channels = [security.channel(cfg, cfg.nodes[i].address, options=())
                         for i in range(count)]
        self.stubs = [pb_grpc.KeyValueStub(ch) for ch in self.channels]
        ring = Ring.from_config(cfg)
        self._owner: Callable[[int], int] = ring.owner if route == "owner" else (lambda k: 0)

    def create(self, key: int, value: bytes) -> None:
        self.stubs[self._owner(key)].Create(self._pb.WriteRequest(key=str(key), value=value),
                                            timeout=self.timeout)

    def read(self, key: int) -> bytes:
        try:
            return self.stubs[self._owner(key)].Read(self._pb.KeyRequest(key=str(key)),
                                                     timeout=self.timeout).value
        except self._grpc.RpcError as e:
            if e.code() == self._grpc.StatusCode.NOT_FOUND:
                raise Missing(e.details()) from None
            raise

    def update(self, key: int, value: bytes) -> None:
        self.stubs[self._owner(key)].Update(self._pb.WriteRequest(key=str(key), value=value),
                                            timeout=self.timeout)

    def close(self) -> None:
        for ch in self.channels:
            ch.close()

    def version(self) -> str:
        import grpc
        from google import protobuf
        return f"generic gRPC stub, grpcio {grpc.__version__}, protobuf {protobuf.__version__}"


def _dist_version(name: str) -> str:
    from importlib import metadata
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "?"


def open_adapter(system: str, *, config: str | None, address: str | None, route: str,
                 timeout: float) -> Adapter:
    """The adapter for *system*; ValueError when its address or config is missing."""
    if system in ("redis", "etcd"):
        if not address:
            raise ValueError(f"--system {system} needs --address HOST:PORT")
        return (RedisAdapter if system == "redis" else EtcdAdapter)(address, timeout)
    if not config:
        raise ValueError(f"--system {system} needs --config PATH (the ring's config)")
    return (ChordctlAdapter if system == "chordctl" else GrpcAdapter)(config, route, timeout)


# -- the operations ---------------------------------------------------------------

def key_of(i: int, key_base: int = DEFAULT_KEY_BASE) -> int:
    """The key of record *i*."""
    return key_base + i * KEY_STRIDE


def value_of(size: int, seed: int = 1) -> bytes:
    """The value every create and update writes: *size* bytes, fixed by *seed*."""
    return random.Random(seed).randbytes(size)


def plan(phase: str, records: int, max_ops: int, value: bytes, key_base: int = DEFAULT_KEY_BASE,
         seed: int = 1) -> list[Op]:
    """The operations of *phase*, in the order they are taken: at most *max_ops*.

    ``load``: a create of each record, in record order; A, B, C: the YCSB
    mix over zipfian keys, the same sequence for every system.
    """
    if phase == "load":
        return [("create", key_of(i, key_base), value) for i in range(min(records, max_ops))]
    return list(workloads.operations(phase, "zipfian", records, max_ops,
                                     lambda i: key_of(i, key_base), value, seed))


def warm(adapter: Adapter, records: int, key_base: int) -> None:
    """Reads of keys spread over the records, before the clock: every connection
    (and, routed by owner, every node's) opens here. A missing key is fine;
    any other failure means the store is not there and propagates."""
    step = max(1, records // WARM_KEYS)
    for i in range(0, records, step):
        try:
            adapter.read(key_of(i, key_base))
        except Missing:
            pass


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    if not sorted_values:
        return None
    i = min(len(sorted_values) - 1, max(0, int(round(q * (len(sorted_values) - 1)))))
    return sorted_values[i]


def process_cpu(pid: int) -> float | None:
    """CPU seconds (user + system) process *pid* has used so far; None if unreadable."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(adapter: Adapter, ops: Sequence[Op], threads: int, seconds: float,
        server_pids: Sequence[int] = ()) -> dict:
    """Drive *ops* with *threads* threads, one synchronous call each, for at most
    *seconds*; returns ops, errors, seconds, ops_per_s, p50_ms, p99_ms (and
    the first error's text when there was one), and the CPU time per
    operation of this client process and of the *server_pids* together
    (client_cpu_us, server_cpu_us) over the same seconds."""
    take = itertools.count().__next__     # atomic under the GIL: each index once
    total = len(ops)
    calls: dict[str, Callable[..., Any]] = {"create": adapter.create, "update": adapter.update}
    perf = time.perf_counter
    start = threading.Barrier(threads + 1)
    deadline = [0.0]
    results: list[tuple[list[float], int, str, float]] = [([], 0, "", 0.0)] * threads

    def worker(slot: int) -> None:
        lat: list[float] = []
        errors = 0
        sample = ""
        read = adapter.read
        start.wait()
        stop = deadline[0]
        while True:
            i = take()
            if i >= total:
                break
            op, key, value = ops[i]
            t0 = perf()
            if t0 >= stop:
                break
            try:
                if value is None:
                    read(key)
                else:
                    calls[op](key, value)
            except Exception as e:   # every failure of any client counts, none stops the run
                errors += 1
                if not sample:
                    sample = f"{op} {key}: {type(e).__name__}: {e}"
            else:
                lat.append(perf() - t0)
        results[slot] = (lat, errors, sample, perf())

    workers = [threading.Thread(target=worker, args=(s,), daemon=True) for s in range(threads)]
    for w in workers:
        w.start()
    server_cpu0 = [process_cpu(pid) for pid in server_pids]
    client_cpu0 = time.process_time()
    deadline[0] = perf() + seconds
    t_start = perf()
    start.wait()
    for w in workers:
        w.join(seconds + 3 * DEFAULT_TIMEOUT + 30)
    client_cpu = time.process_time() - client_cpu0
    server_cpu1 = [process_cpu(pid) for pid in server_pids]
    if any(w.is_alive() for w in workers):
        raise RuntimeError("ycsb: a thread is still waiting for its reply after the run")
    elapsed = max(r[3] for r in results) - t_start
    latencies = sorted(x for r in results for x in r[0])
    errors = sum(r[1] for r in results)
    done = len(latencies) + errors
    out = {"ops": done, "errors": errors, "seconds": round(elapsed, 3),
           "ops_per_s": round(done / elapsed, 1) if elapsed > 0 else 0.0,
           "p50_ms": _ms(percentile(latencies, 0.50)), "p99_ms": _ms(percentile(latencies, 0.99))}
    if done:
        out["client_cpu_us"] = round(client_cpu / done * 1e6, 1)
        if server_pids and None not in server_cpu0 + server_cpu1:
            used = sum(b - a for a, b in zip(server_cpu0, server_cpu1))
            out["server_cpu_us"] = round(used / done * 1e6, 1)
    sample = next((r[2] for r in results if r[2]), "")
    if sample:
        out["sample_error"] = sample
    return out


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1e3, 3)


# -- the command ------------------------------------------------------------------

def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="ycsb.py", description="One YCSB cell of the peer benchmark; prints one JSON line.")
    p.add_argument("--system", choices=SYSTEMS, required=True)
    p.add_argument("--phase", choices=PHASES, required=True)
    p.add_argument("--threads", type=int, default=1, help="client threads [1]")
    p.add_argument("--records", type=int, default=5000, help="records loaded [5000]")
    p.add_argument("--value-bytes", type=int, default=100, help="value size [100]")
    p.add_argument("--seconds", type=float, default=10.0, help="at most this long [10]")
    p.add_argument("--max-ops", type=int, default=200_000, help="at most this many ops [200000]")
    p.add_argument("--config", metavar="PATH", help="chordctl's config (chordctl systems)")
    p.add_argument("--address", metavar="HOST:PORT", help="the server (redis, etcd)")
    p.add_argument("--route", help="chordctl: direct | entry [direct]; chordctl-grpc: "
                                   "owner | entry [owner]")
    p.add_argument("--key-base", type=int, default=DEFAULT_KEY_BASE,
                   help=f"record i is key KEY_BASE + i * {KEY_STRIDE} [{DEFAULT_KEY_BASE}]")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                   help=f"seconds per request [{DEFAULT_TIMEOUT:g}]")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--server-pids", default="", metavar="PID,...",
                   help="the server's processes, for the CPU time per operation on its side")
    args = p.parse_args(argv)
    routes = ROUTES.get(args.system, ("",))
    if args.route is None:
        args.route = routes[0]
    elif args.route not in routes:
        p.error(f"--route {args.route}: --system {args.system} takes "
                + (" | ".join(routes) if routes[0] else "no --route"))
    for name in ("threads", "records", "value_bytes", "max_ops"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if not args.seconds > 0:
        p.error("--seconds must be above 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    value = value_of(args.value_bytes, args.seed)
    ops = plan(args.phase, args.records, args.max_ops, value, args.key_base, args.seed)
    try:
        adapter = open_adapter(args.system, config=args.config, address=args.address,
                               route=args.route, timeout=args.timeout)
    except ValueError as e:
        print(f"ycsb: {e}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as e:
        print(f"ycsb: cannot open the {args.system} client: {type(e).__name__}: {e}",
              file=sys.stderr)
        return EXIT_UNREACHABLE
    try:
        try:
            warm(adapter, args.records, args.key_base)
        except Exception as e:
            print(f"ycsb: {args.system} does not answer before the run: "
                  f"{type(e).__name__}: {e}", file=sys.stderr)
            return EXIT_UNREACHABLE
        pids = [int(x) for x in args.server_pids.split(",") if x.strip()]
        out = run(adapter, ops, args.threads, args.seconds, pids)
        client = adapter.version()
    finally:
        adapter.close()
    print(json.dumps({"system": args.system, "route": args.route, "phase": args.phase,
                      "threads": args.threads, "records": args.records,
                      "value_bytes": args.value_bytes, **out, "client": client,
                      "python": platform.python_version()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
