"""``chordctl bench``: YCSB-style load and workloads against a running ring.

The phases run in chordctl.bench.runner; this module parses the options,
draws the progress bars and renders the report.
"""

from __future__ import annotations

import sys
import threading

import click

from chordctl import render
from chordctl.bench import runner, workloads
from chordctl.bench.runner import KEY_STRIDE, MAX_RECORDS
from chordctl.cli.common import State, pass_state
from chordctl.errors import InvalidInputError

HEADERS = ["phase", "op", "concurrency", "ops", "errors", "ops_per_s", "p50_ms", "p95_ms",
           "p99_ms", "max_ms"]


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
    if skip_load and key_base is None:
        raise InvalidInputError("bench: --skip-load needs the --key-base of the run that loaded")
    rep = runner.run(
        cfg, records=records, ops=ops, seq_ops=seq_ops, rounds=rounds,
        concurrency=concurrency, workload_names=wls, distributions=dists, routes=rts,
        value_size=value_size, coalesce=coalesce, baseline=baseline,
        snapshot_phase=snapshot_phase, skip_load=skip_load,
        key_base=key_base if key_base is not None else runner.fresh_key_base(), keep=keep,
        seed=seed, progress=lambda label, total: _Bar(total, label, show),
        notify=lambda line: click.echo(line, err=True))
    if fmt == "json":
        click.echo(render.to_json({"machine": rep.machine, "results": rep.rows,
                                   "baseline": rep.baseline,
                                   "ratios": rep.ratios,
                                   "ratio_rounds": rep.round_ratios,
                                   "keys": {"first": str(rep.key_base), "stride": KEY_STRIDE,
                                            "count": rep.records},
                                   "cleanup": rep.cleanup}))
        _exit_if_cleanup_failed(rep.cleanup)
        return
    click.echo(render.render_rows(_cells(rep.rows), HEADERS, fmt))
    if rep.baseline:
        click.echo("\nbaseline (bare gRPC echo, same client machinery):")
        click.echo(render.render_rows(_cells(rep.baseline), HEADERS, fmt))
        click.echo("")
        for k, v in rep.ratios.items():
            spread = rep.round_ratios.get(k)
            click.echo(f"{k}: {v}" + (f"  (median of {len(spread)} interleaved rounds: "
                                      f"{min(spread)}-{max(spread)})" if spread else ""))
        pins = rep.pins
        if pins:
            two = f", 2 hops on {pins[0]} -> {pins[1]}" if rep.forwarded else ""
            click.echo(f"echo servers pinned like the nodes: 1 hop on CPUs {pins[0]}{two}")
    _exit_if_cleanup_failed(rep.cleanup)


def _cells(rows: list[dict]) -> list[list]:
    """Table cells: a figure that does not apply (None, null in JSON) is blank."""
    return [["" if r[h] is None else r[h] for h in HEADERS] for r in rows]


def _exit_if_cleanup_failed(cleanup: dict | None) -> None:
    if cleanup and cleanup["failures"]:
        click.get_current_context().exit(1)
