"""``chordctl log replay`` and ``log repair``: a stopped node's state, offline."""

from __future__ import annotations

import dataclasses
import os
import sys

import click

from chordctl import render
from chordctl.cli.common import State, pass_state
from chordctl.core.storage import offline, raftjournal, recovery
from chordctl.core.store import Store
from chordctl.errors import ExitStatus


@click.group()
def log() -> None:
    """Inspect and repair operation logs (offline, on a stopped node's directory).

    \b
    Example:
        chordctl log replay --data-dir data/node-0 --dump
        chordctl log repair --data-dir data/node-0
    """


@log.command()
@click.option("--data-dir", "data_dir", required=True, metavar="DIR",
              help="A node directory, e.g. ./data/node-0.")
@click.option("--dump", is_flag=True,
              help="Print every recovered key and value (on stdout; the summary goes to "
                   "stderr).")
@click.option("--verify", is_flag=True,
              help="Exit 1 on any damage, torn tails and snapshot fallbacks included.")
@pass_state
def replay(state: State, data_dir: str, dump: bool, verify: bool) -> None:
    """Rebuild a node's state from DIR exactly as a restart would; change nothing.

    Reports the snapshot used, the logs replayed, records, keys and torn bytes
    a restart would cut off. With ring.replicas > 1 it also applies what a
    restart applies from raft.journal past log.X (committed entries, per
    group), as a restart does before it hears a leader. Run it on a stopped
    node's directory: it refuses (exit 2) a directory a running node holds.

    \b
    Example:
        chordctl log replay --data-dir ./data/node-0
        chordctl log replay --data-dir ./data/node-0 --dump -o json
    """
    offline.check_node_dir(data_dir)
    store = Store()
    with offline.locked(data_dir, shared=True):
        rep, journal = offline.replay(data_dir, store)
    fmt = state.fmt("table")
    summary = {
        "data_dir": data_dir,
        "snapshot": f"snap.{rep.snapshot}" if rep.snapshot else None,
        "snapshot_keys": rep.snapshot_keys,
        "fallbacks": rep.fallbacks,
        "skipped": [{"file": f, "reason": why} for f, why in rep.skipped],
        "logs": [{"file": f"log.{c}", "records": n} for c, n in rep.logs],
        "records": rep.records, "keys": len(store), "last_seq": rep.last_seq,
        "torn_bytes": rep.torn_bytes, "torn_file": rep.torn_file,
        "torn_offset": rep.torn_offset if rep.torn_bytes else None,
        "tmp_files": rep.tmp_files,
    }
    if journal is not None:
        summary["raft_journal"] = [dataclasses.asdict(t) for t in journal]
    items = sorted(store.items()) if dump else []
    if fmt == "json":
        if dump:
            summary["data"] = [{"key": str(k), **render.value_json(v)} for k, v in items]
        click.echo(render.to_json(summary))
    else:
        torn = "0"
        if rep.torn_bytes:
            torn = (f"{rep.torn_bytes} (end of {os.path.basename(rep.torn_file)}, offset "
                    f"{rep.torn_offset}; `log repair` cuts it)")
        rows = [["data dir", data_dir],
                ["snapshot", summary["snapshot"] or "none"],
                ["logs replayed", ", ".join(f"log.{c} ({n} records)" for c, n in rep.logs)
                 or "none"],
                ["records replayed", rep.records]]
        for t in journal or ():
            rows.append([f"raft group {t.group}", _journal_row(t)])
        rows += [["keys", len(store)], ["last sequence", rep.last_seq],
                 ["torn bytes dropped", torn]]
        for name, why in rep.skipped:
            rows.append(["fallback", f"{name} skipped: {why}"])
        text = render.plain(rows) if fmt == "plain" else render.table(rows, ["recovered", ""])
        # With --dump, stdout carries only the key/value lines.
        click.echo(text, err=dump)
        if dump:
            out = sys.stdout.buffer
            for k, v in items:
                out.write(str(k).encode() + b"\t" + v + b"\n")
            out.flush()
    if verify and (rep.torn_bytes or rep.fallbacks):
        click.secho("chordctl: log: damage found (see above)", fg="red", err=True)
        click.get_current_context().exit(int(ExitStatus.FAILED))


def _journal_row(t: offline.JournalTail) -> str:
    def entries(n: int, writes: int) -> str:
        return f"{n} {'entry' if n == 1 else 'entries'} ({writes} write{'' if writes == 1 else 's'})"

    text = f"log.X to entry {t.applied}; raft.journal " + (
        f"{t.first}..{t.last}, committed to {t.commit}" if t.first is not None else "empty")
    if t.dump_first:
        return text + f" (starts past log.X: a start installs raft-{t.group}.dump first)"
    if t.replayed:
        text += f": replayed {entries(t.replayed, t.writes)}"
    if t.pending:
        text += (f"; {entries(t.pending, t.pending_writes)} after that "
                 f"{'waits' if t.pending == 1 else 'wait'} for a leader")
    return text


@log.command()
@click.option("--data-dir", "data_dir", required=True, metavar="DIR",
              help="A stopped node's directory, e.g. ./data/node-0.")
@pass_state
def repair(state: State, data_dir: str) -> None:
    """Do offline what a node does before it starts: cut a torn tail, drop *.tmp.

    A torn tail (a write a crash cut short) is cut off the newest log after
    the whole file is copied to log.X.broken; leftover snap.X.tmp files are
    removed. Anything else (a bad checksum inside a complete record, a
    missing log) is not repairable: it exits 1 and changes nothing.

    \b
    Example:
        chordctl log repair --data-dir ./data/node-0
    """
    offline.check_node_dir(data_dir)
    with offline.locked(data_dir, shared=False), offline.replica_advice(data_dir):
        rep = recovery.recover(data_dir, Store())
        # A replica's journal: damage stops a start as it stops this; a torn
        # tail the start cuts itself (nothing of it was acknowledged).
        journal = raftjournal.RaftJournal.read(data_dir)
        done = recovery.repair(data_dir, rep)
    if journal is not None and journal.torn_bytes:
        done.append(f"raft.journal: {journal.torn_bytes} torn byte(s) at offset "
                    f"{journal.torn_offset} (a write a kill cut short; never acknowledged) "
                    f"are left for the node's start, which cuts them")
    if state.fmt("table") == "json":
        click.echo(render.to_json({"data_dir": data_dir, "repairs": done, "keys": rep.keys,
                                   "last_seq": rep.last_seq}))
        return
    if not done:
        click.echo(f"log: nothing to repair in {data_dir} ({rep.keys} keys, last sequence "
                   f"{rep.last_seq})")
    for msg in done:
        click.echo(msg)

