"""``chordctl snapshot``: list a node's snapshots and logs, take one now."""

from __future__ import annotations

import datetime
import os

import click

from chordctl import render
from chordctl.cli.common import State, pass_state
from chordctl.client import Client
from chordctl.core.storage import inventory
from chordctl.errors import (ChordError, DeadlineExceededError, ExitStatus, InvalidInputError,
                             StorageAccessError, UnavailableError)
from chordctl.status import poll_files

HEADERS = ["node", "file", "kind", "counter", "bytes", "time", "records", "in use", "status"]


def _time(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _row(node: str, d: dict) -> list:
    mark = "*" if d["in_use"] else ""
    if d.get("current"):
        mark += " (writing)" if mark else "(writing)"
    return [node, d["file"], d["kind"], d["counter"], d["bytes"], _time(d["mtime"]),
            "-" if d["records"] is None else d["records"], mark, render.clip(d["status"])]


def _down(e: ChordError) -> str:
    """A short status cell for a node that did not answer (the message is in -o json)."""
    if isinstance(e, DeadlineExceededError):
        return "down: no reply"
    if isinstance(e, UnavailableError):
        return "down: unreachable"
    return render.clip(f"error: {e}")


@click.group()
def snapshot() -> None:
    """Snapshots: list them, take one now.

    \b
    Example:
        chordctl snapshot list
        chordctl -o json snapshot list
        chordctl snapshot create --node 0
    """


@snapshot.command(name="list")
@click.option("--data-dir", "data_dir", metavar="DIR",
              help="Read a node directory on disk instead of asking the running nodes.")
@pass_state
def list_(state: State, data_dir: str | None) -> None:
    """Per node: each snapshot and log with counter, size, time and records.

    `in use` marks what a restart would load: the newest valid snapshot and
    the logs after it; `(writing)` marks the log being appended to.

    \b
    Example:
        chordctl snapshot list
        chordctl snapshot list --data-dir ./data/node-0
    """
    fmt = state.fmt("table")
    rows, docs = [], []
    if data_dir:
        if not os.path.isdir(data_dir):
            raise InvalidInputError(f"snapshot: {data_dir} is not a directory")
        try:
            listing = inventory.describe(data_dir)
        except OSError as e:
            raise StorageAccessError.of(e, data_dir, "read") from None
        for d in listing:
            rows.append(_row(data_dir, d))
            docs.append(d)
    else:
        cfg = state.config()
        replies = poll_files(cfg)
        down = 0
        for i, rep in enumerate(replies):
            if isinstance(rep, ChordError):
                down += 1
                rows.append([str(i), "-", "-", "-", "-", "-", "-", "", _down(rep)])
                docs.append({"node": i, "state": "down", "error": str(rep)})
                continue
            for f in rep.files:
                d = {"node": i, "file": f.name, "kind": f.kind, "counter": f.counter,
                     "bytes": f.bytes, "mtime": f.mtime,
                     "records": None if f.records < 0 else f.records, "in_use": f.in_use,
                     "status": f.status, "current": f.current}
                rows.append(_row(str(i), d))
                docs.append(d)
        if down:
            click.echo(render.render_rows(rows, HEADERS, fmt, docs))
            click.secho(f"chordctl: snapshot: {down} node(s) did not answer; is the ring up? "
                        "(`chordctl cluster up`; a stopped node's files: "
                        "`chordctl snapshot list --data-dir DIR`)", fg="red", err=True)
            click.get_current_context().exit(int(ExitStatus.UNAVAILABLE))
    click.echo(render.render_rows(rows, HEADERS, fmt, docs))


@snapshot.command()
@click.option("--node", "index", type=int, default=None, metavar="I",
              help="Only node I (default: every node).")
@pass_state
def create(state: State, index: int | None) -> None:
    """Take a snapshot now, on one node or all of them.

    \b
    Example:
        chordctl snapshot create --node 0
    """
    cfg = state.config()
    indexes = [index] if index is not None else list(range(len(cfg.nodes)))
    for i in indexes:
        cfg.node(i)
    rows, docs = [], []
    failed = unreachable = 0
    first_error = ""
    for i in indexes:
        try:
            with Client(cfg, target=cfg.nodes[i].address) as c:
                rep = c.take_snapshot()
        except ChordError as e:
            failed += 1
            first_error = first_error or f"node {i}: {e}"
            label, sep, reason = str(e).partition("): ")
            if label.startswith("node ") and sep:
                # The node answered: its snapshot failed (a full disk, one
                # already being written). Not a ring that is down.
                cell = render.clip(f"failed: {reason}")
            else:
                unreachable += 1
                cell = _down(e).replace("down: ", "failed: ", 1)
            rows.append([i, "-", "-", "-", cell])
            docs.append({"node": i, "error": str(e)})
            continue
        rows.append([i, f"snap.{rep.counter}", rep.keys, rep.bytes, f"{rep.capture_ms:.2f}",
                     f"{rep.seconds:.3f}", rep.path])
        docs.append({"node": i, "counter": rep.counter, "keys": rep.keys, "bytes": rep.bytes,
                     "capture_ms": round(rep.capture_ms, 3), "seconds": round(rep.seconds, 3),
                     "path": rep.path})
    click.echo(render.render_rows(
        rows, ["node", "snapshot", "keys", "bytes", "capture ms", "write s", "path"],
        state.fmt("table"), docs))
    if failed:
        click.secho(f"chordctl: {failed} node(s) took no snapshot; {first_error}", fg="red",
                    err=True)
        click.get_current_context().exit(
            int(ExitStatus.UNAVAILABLE if unreachable else ExitStatus.FAILED))
