"""``chordctl log replay``: rebuild a stopped node's state offline."""

from __future__ import annotations

import os
import sys

import click

from chordctl import render
from chordctl.cli.common import State, pass_state
from chordctl.core.storage import recovery
from chordctl.core.store import Store
from chordctl.errors import ChordError, ExitStatus, InvalidInputError


@click.group()
def log() -> None:
    """Inspect operation logs."""


@log.command()
@click.option("--data-dir", "data_dir", required=True, metavar="DIR",
              help="A node directory, e.g. ./data/node-0.")
@click.option("--dump", is_flag=True, help="Print every recovered key and value.")
@click.option("--verify", is_flag=True,
              help="Exit 1 on any damage, torn tails and snapshot fallbacks included.")
@pass_state
def replay(state: State, data_dir: str, dump: bool, verify: bool) -> None:
    """Rebuild a node's state from DIR exactly as a restart would; change nothing.

    Reports the snapshot used, the logs replayed, records, keys and torn bytes
    dropped. Run it on a stopped node's directory.

    \b
    Example:
        chordctl log replay --data-dir ./data/node-0
        chordctl log replay --data-dir ./data/node-0 --dump -o json
    """
    if not os.path.isdir(data_dir):
        raise InvalidInputError(f"log: {data_dir} is not a directory")
    store = Store()
    try:
        rep = recovery.recover(data_dir, store, repair=False)
    except ChordError as e:
        click.secho(f"chordctl: {e}", fg="red", err=True)
        click.get_current_context().exit(int(ExitStatus.FAILED))
    fmt = state.fmt("table")
    summary = {
        "data_dir": data_dir,
        "snapshot": f"snap.{rep.snapshot}" if rep.snapshot else None,
        "snapshot_keys": rep.snapshot_keys,
        "fallbacks": rep.fallbacks,
        "logs": [{"file": f"log.{c}", "records": n} for c, n in rep.logs],
        "records": rep.records, "keys": rep.keys, "last_seq": rep.last_seq,
        "torn_bytes": rep.torn_bytes, "torn_file": rep.torn_file,
    }
    items = sorted(store.items()) if dump else []
    if fmt == "json":
        if dump:
            summary["data"] = [{"key": str(k), **render.value_json(v)} for k, v in items]
        click.echo(render.to_json(summary))
    else:
        rows = [["data dir", data_dir],
                ["snapshot", summary["snapshot"] or "none"],
                ["logs replayed", ", ".join(f"log.{c} ({n} records)" for c, n in rep.logs)
                 or "none"],
                ["records replayed", rep.records], ["keys", rep.keys],
                ["last sequence", rep.last_seq], ["torn bytes dropped", rep.torn_bytes]]
        for fb in rep.fallbacks:
            rows.append(["fallback", fb])
        if fmt == "plain":
            click.echo(render.plain(rows))
        else:
            click.echo(render.table(rows, ["recovered", ""]))
        if dump:
            out = sys.stdout.buffer
            for k, v in items:
                out.write(str(k).encode() + b"\t" + v + b"\n")
            out.flush()
    if verify and (rep.torn_bytes or rep.fallbacks):
        click.secho("chordctl: log: damage found (see above)", fg="red", err=True)
        click.get_current_context().exit(int(ExitStatus.FAILED))
