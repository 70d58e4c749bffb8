"""``chordctl kv``: one request per command."""

from __future__ import annotations

import contextlib
import os
import sys
import threading

import click

from chordctl import bulk, render
from chordctl.cli.common import KeyCommand, State, pass_state
from chordctl.client import Result
from chordctl.errors import InvalidInputError


@click.group()
def kv() -> None:
    """Create, read, update and delete keys; load many from a file.

    KEY is a non-negative integer of any size. A VALUE that begins with '-'
    goes after '--'. `kv read` writes the exact bytes when stdout is not a
    terminal; -o json gives one document, a failure too.

    \b
    Example:
        chordctl kv create 10 hello
        chordctl kv read 10
        chordctl kv update 10 -- -1
        chordctl kv delete 10
        chordctl kv load data.csv
    """


def _value(value: str | None, file: str | None) -> bytes:
    if file is not None and value is not None:
        raise InvalidInputError("kv: give the value as an argument or with --file, not both")
    if file is not None:
        if file == "-":
            return sys.stdin.buffer.read()
        try:
            with open(file, "rb") as f:
                return f.read()
        except OSError as e:
            raise InvalidInputError(f"kv: cannot read {file}: {e.strerror}") from None
    if value is None:
        raise InvalidInputError("kv: missing VALUE (or --file PATH, or --file - for stdin)")
    if value == "-":
        return sys.stdin.buffer.read()
    return value.encode("utf-8", "surrogateescape")


def _route_text(route: tuple[str, ...]) -> str:
    hops = max(0, len(route) - 1)
    return f"route: {' -> '.join(route)} ({hops} hop{'s' if hops != 1 else ''})"


def _print(state: State, r: Result, bare_value: bool = False,
           out_path: str | None = None) -> None:
    """Render *r*; a read's value is written to *out_path* instead, if given."""
    fmt = state.fmt("plain")
    value = r.value if out_path is None else None
    if out_path is not None:
        _write_file(out_path, r.value or b"")
    if fmt == "json":
        doc = {"ok": True, "op": r.op, "key": r.key}
        if r.op == "read":
            if out_path is None:
                doc.update(render.value_json(r.value))
            else:
                doc.update({"out": out_path, "bytes": len(r.value or b"")})
        doc.update({"node_index": r.node_index, "node_id": r.node_id, "message": r.message})
        if r.route:
            doc["route"] = list(r.route)
        click.echo(render.to_json(doc))
        return
    if fmt == "table":
        rows = [["op", r.op], ["key", r.key]]
        if r.op == "read":
            rows.append(["value", value.decode("utf-8", "backslashreplace")
                         if out_path is None else f"{len(r.value or b'')} bytes in {out_path}"])
        rows += [["node", f"{r.node_index} (id {r.node_id})"], ["message", r.message]]
        if r.route:
            rows.append(["route", " -> ".join(r.route)])
        click.echo(render.table(rows, ["field", "value"]))
        return
    if bare_value and out_path is None:
        # The exact bytes for a pipe or a file (like redis-cli --raw); a
        # terminal gets a newline after the value, so the prompt starts afresh.
        out = sys.stdout.buffer
        out.write(r.value or b"")
        if sys.stdout.isatty():
            out.write(b"\n")
        out.flush()
    elif not bare_value:
        click.echo(f"OK {r.message}")
    if r.route:
        click.echo(_route_text(r.route), err=bare_value)


def _write_file(path: str, data: bytes) -> None:
    try:
        with open(path, "wb") as f:
            f.write(data)
    except OSError as e:
        raise InvalidInputError(f"kv: cannot write {path}: {e.strerror}") from None


_trace = click.option("--trace", is_flag=True, help="Print the route the request took.")
_file = click.option("--file", "file", metavar="PATH",
                     help="Read the value from PATH (binary safe); - for stdin.")


@kv.command(cls=KeyCommand)
@click.argument("key")
@click.argument("value", required=False)
@_file
@_trace
@pass_state
def create(state: State, key: str, value: str | None, file: str | None, trace: bool) -> None:
    """Create KEY with VALUE; fails (exit 1) if KEY exists.

    VALUE is text; --file PATH (or --file -, stdin) takes any bytes. A
    VALUE that begins with '-' goes after '--', or it is read as an option.

    \b
    Example:
        chordctl kv create 10 hello
        chordctl kv create 11 --file photo.jpg
        chordctl kv create 12 -- -40C
    """
    with state.client() as c:
        _print(state, c.create(key, _value(value, file), trace))


@kv.command(cls=KeyCommand)
@click.argument("key")
@click.option("--out", "out_path", metavar="FILE",
              help="Write the value's exact bytes to FILE instead of stdout.")
@_trace
@pass_state
def read(state: State, key: str, out_path: str | None, trace: bool) -> None:
    """Print KEY's value (bare, for scripts); exit 1 if KEY does not exist.

    When stdout is not a terminal (a pipe, a file) it gets the value's exact
    bytes, nothing added; a terminal gets a newline after it. --out FILE
    writes the exact bytes to FILE. With --trace the route goes to stderr, so
    stdout stays the bare value. -o json gives text values as is and binary
    ones in base64 ("encoding").

    \b
    Example:
        chordctl kv read 10
        chordctl kv read 11 --out photo.jpg
        chordctl kv read 11 > photo.jpg
        chordctl -o json kv read 10 --trace
    """
    with state.client() as c:
        _print(state, c.read(key, trace), bare_value=True, out_path=out_path)


@kv.command(cls=KeyCommand)
@click.argument("key")
@click.argument("value", required=False)
@_file
@_trace
@pass_state
def update(state: State, key: str, value: str | None, file: str | None, trace: bool) -> None:
    """Replace KEY's value; fails (exit 1) if KEY does not exist.

    A VALUE that begins with '-' goes after '--', or it is read as an option.

    \b
    Example:
        chordctl kv update 10 world
        chordctl kv update 11 --file photo.jpg
        chordctl kv update 12 -- -41C
    """
    with state.client() as c:
        _print(state, c.update(key, _value(value, file), trace))


@kv.command(cls=KeyCommand)
@click.argument("key")
@_trace
@pass_state
def delete(state: State, key: str, trace: bool) -> None:
    """Delete KEY; fails (exit 1) if KEY does not exist.

    \b
    Example:
        chordctl kv delete 10
    """
    with state.client() as c:
        _print(state, c.delete(key, trace))


@kv.command()
@click.argument("file", metavar="FILE")
@click.option("--format", "fmt", type=click.Choice(["csv", "jsonl"]), default=None,
              help="Input format [default: from the file name; csv for stdin].")
@click.option("--batch", type=click.IntRange(1, 10_000), default=bulk.DEFAULT_BATCH,
              show_default=True,
              help="Operations per Batch call.")
@click.option("--depth", type=click.IntRange(1, 64), default=4, show_default=True,
              help="Batch calls in flight at once.")
@pass_state
def load(state: State, file: str, fmt: str | None, batch: int, depth: int) -> None:
    """Create many keys from FILE (CSV key,value or JSONL {"key","value"}); - for stdin.

    Sends pipelined Batch calls (to each key's owner when client.route is
    direct), then prints a summary: records, failures, records stored per
    second. On a terminal a progress bar shows the bytes read (for stdin, the
    count of records stored). A CSV value is the rest of the line; a first
    line whose first field is not a key is a header and is skipped. Exit 1
    if any record failed.

    \b
    Example:
        chordctl kv load data.csv
        seq 1 1000 | sed 's/$/,hello/' | chordctl kv load -
        chordctl kv load --format jsonl dump.jsonl
    """

    if fmt is None:
        fmt = "jsonl" if file.endswith((".jsonl", ".json", ".ndjson")) else "csv"
    if file == "-":
        stream, total = sys.stdin.buffer, None
    else:
        try:
            stream = open(file, "rb")
        except OSError as e:
            raise InvalidInputError(f"kv: cannot read {file}: {e.strerror}") from None
        total = os.fstat(stream.fileno()).st_size or None   # 0: a pipe, a device
    bad: list[str] = []
    cfg = state.config_or_none()
    from chordctl.client import Client
    client = Client(cfg, state.target) if state.target or cfg is None else Client(cfg)
    try:
        with _progress(sys.stderr.isatty(), total) as (on_bytes, on_records):
            rep = bulk.load(client, bulk.records(stream, fmt, bad, on_bytes), batch, depth,
                            progress=on_records)
    finally:
        client.close()
        if stream is not sys.stdin.buffer:
            stream.close()
    rep.records += len(bad)
    rep.failures += len(bad)
    rep.samples[:0] = bad[:5]
    if bad:
        rep.errors["malformed input"] = len(bad)
    summary = {"records": rep.records, "ok": rep.ok, "failures": rep.failures,
               "seconds": round(rep.seconds, 3), "records_per_s": round(rep.rate, 1),
               "errors": rep.errors, "samples": rep.samples[:5]}
    out_fmt = state.fmt("plain")
    if out_fmt == "json":
        click.echo(render.to_json(summary))
    else:
        click.echo(f"loaded {rep.ok} of {rep.records} records in {rep.seconds:.2f}s "
                   f"({rep.rate:,.0f} records/s); {rep.failures} failed")
        for kind, n in rep.errors.items():
            click.echo(f"  {n} {kind}", err=True)
        for sample in rep.samples[:5]:
            click.echo(f"  e.g. {sample}", err=True)
    if rep.failures:
        click.get_current_context().exit(1)


@contextlib.contextmanager
def _progress(enabled: bool, total: int | None):
    """click's progress bar on stderr: bytes read of a file of known size, else a
    count of records stored. Yields (bytes callback, records callback)."""
    if not enabled:
        yield None, None
        return
    if total:
        with click.progressbar(length=total, label="loading", file=sys.stderr) as bar:
            yield bar.update, None
        return
    lock = threading.Lock()
    with click.progressbar((x for x in ()), label="loading (records)", file=sys.stderr,
                           show_pos=True) as bar:
        def tick(n: int) -> None:
            with lock:    # gRPC callback threads
                bar.update(n)
        yield None, tick
