"""Drive operations through a Client with a fixed number in flight; time each."""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Callable, Iterable, Iterator

from chordctl.client import Client
from chordctl.errors import ChordError


@dataclasses.dataclass
class Phase:
    name: str
    concurrency: int
    seconds: float = 0.0
    latencies: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    errors: dict[str, int] = dataclasses.field(default_factory=dict)
    sample_error: str = ""

    @property
    def count(self) -> int:
        return sum(len(v) for v in self.latencies.values()) + sum(self.errors.values())

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else 0.0


def merge(phases: list[Phase]) -> Phase:
    """Several runs of one phase as one: latencies and errors pooled, seconds added."""
    out = Phase(phases[0].name, phases[0].concurrency)
    for p in phases:
        out.seconds += p.seconds
        for op, lat in p.latencies.items():
            out.latencies.setdefault(op, []).extend(lat)
        for op, n in p.errors.items():
            out.errors[op] = out.errors.get(op, 0) + n
        out.sample_error = out.sample_error or p.sample_error
    return out


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    i = min(len(sorted_values) - 1, max(0, int(round(q * (len(sorted_values) - 1)))))
    return sorted_values[i]


def summarize(phase: Phase) -> list[dict]:
    """One row per operation type plus an 'all' row: throughput and latency in ms."""
    rows = []
    everything: list[float] = []
    for op in sorted(set(phase.latencies) | set(phase.errors)):
        lat = sorted(phase.latencies.get(op, []))
        everything.extend(lat)
        rows.append(_row(phase, op, lat, phase.errors.get(op, 0)))
    if len(rows) > 1:
        rows.append(_row(phase, "all", sorted(everything), sum(phase.errors.values())))
    return rows


def _row(phase: Phase, op: str, lat: list[float], errors: int) -> dict:
    """A result row; with no successful operation the latencies are None (null), not 0."""
    n = len(lat) + errors

    def ms(q: float) -> float | None:
        return round(percentile(lat, q) * 1e3, 3) if lat else None

    return {
        "phase": phase.name, "op": op, "concurrency": phase.concurrency, "ops": n,
        "errors": errors, "ops_per_s": round(n / phase.seconds, 1) if phase.seconds else 0.0,
        "p50_ms": ms(0.50), "p95_ms": ms(0.95), "p99_ms": ms(0.99),
        "max_ms": round(lat[-1] * 1e3, 3) if lat else None,
    }


def drive(client: Client, name: str, ops: Iterable[tuple[str, str, bytes | None]],
          total: int, concurrency: int, progress: Callable[[int], None] | None = None,
          time_limit: float = 600.0) -> Phase:
    """Run *total* operations with *concurrency* in flight (1 = sequential)."""
    phase = Phase(name, concurrency)
    it: Iterator = iter(ops)
    lock = threading.Lock()
    finished = threading.Event()
    state = {"issued": 0, "completed": 0}
    perf = time.perf_counter
    stop_at = time.monotonic() + time_limit

    def issue() -> None:
        with lock:
            if state["issued"] >= total or time.monotonic() > stop_at:
                if state["completed"] >= state["issued"]:
                    finished.set()
                return
            try:
                op, key, value = next(it)
            except StopIteration:
                state["issued"] = total
                if state["completed"] >= state["issued"]:
                    finished.set()
                return
            state["issued"] += 1
        t0 = perf()
        try:
            client.submit(op, key, value, callback=lambda out, o=op, t=t0: complete(o, t, out))
        except ChordError as e:
            complete(op, t0, e)

    def complete(op: str, t0: float, outcome) -> None:
        elapsed = perf() - t0
        with lock:
            if isinstance(outcome, ChordError):
                phase.errors[op] = phase.errors.get(op, 0) + 1
                if not phase.sample_error:
                    phase.sample_error = str(outcome)
            else:
                lat = phase.latencies.get(op)
                if lat is None:
                    lat = phase.latencies[op] = []
                lat.append(elapsed)
            state["completed"] += 1
        if progress is not None:
            progress(1)
        issue()

    t_start = perf()
    for _ in range(max(1, concurrency)):
        issue()
    finished.wait(time_limit + 60)
    phase.seconds = perf() - t_start
    return phase
