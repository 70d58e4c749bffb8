"""``chordctl kv``: one request per command."""

from __future__ import annotations

import contextlib
import os
import sys
import threading

import click

from chordctl import bulk, render
from chordctl import scan as scan_mod
from chordctl.cli.common import KeyCommand, State, pass_state
from chordctl.core.storage import files
from chordctl.client import Result
from chordctl.errors import ChordError, ExitStatus, InvalidInputError


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
        chordctl kv export keys.jsonl
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
    records = None
    try:
        with _progress(sys.stderr.isatty(), total) as (on_bytes, on_records):
            records = bulk.records(stream, fmt, bad, on_bytes)
            rep = bulk.load(client, records, batch, depth, progress=on_records)
    finally:
        if records is not None:
            records.close()     # lets go of the stream while it is open (a failed load too)
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
               "resent_batches": rep.resent, "errors": rep.errors, "samples": rep.samples[:5]}
    out_fmt = state.fmt("plain")
    if out_fmt == "json":
        click.echo(render.to_json(summary))
    else:
        click.echo(f"loaded {rep.ok} of {rep.records} records in {rep.seconds:.2f}s "
                   f"({rep.rate:,.0f} records/s); {rep.failures} failed")
        if rep.resent:
            click.echo(f"  {rep.resent} batch(es) sent again through another node: the "
                       f"first could not be reached", err=True)
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


# -- scan and count -------------------------------------------------------------

@kv.command()
@click.option("--from", "start", metavar="KEY", help="First key to list, inclusive [default: 0].")
@click.option("--to", "end", metavar="KEY",
              help="Stop before this key (exclusive) [default: none].")
@click.option("--limit", type=click.IntRange(0, 2 ** 63 - 1), default=scan_mod.DEFAULT_LIMIT,
              metavar="N",
              show_default=True,
              help="List at most N keys; 0 for all.")
@click.option("--all", "everything", is_flag=True, help="List every key (--limit 0).")
@click.option("--keys-only", is_flag=True, help="List the keys without their values.")
@click.option("--partial", is_flag=True,
              help="If a node is down, list the others' keys anyway (warning, exit 3).")
@pass_state
def scan(state: State, start: str | None, end: str | None, limit: int, everything: bool,
         keys_only: bool, partial: bool) -> None:
    """List keys and values across the ring in ascending key order.

    Every node streams its own keys in [--from, --to) from one point-in-time
    view of its map (after every write acknowledged before the scan, never a
    write that is not durable yet); the client merges the streams in key
    order. With --target only that node's own keys are listed.

    \b
    Output (-o):
      table  key, node, value (default; values as text, other bytes as \\xNN,
             cut at 60 characters)
      plain  KEY<TAB>VALUE lines, the value's bytes as stored (like kv read);
             with --keys-only one key per line
      json   one document: nodes, entries ({key, value, encoding, node}),
             count, truncated; streamed, so it may be large

    A node that is down stops the scan before anything is listed (exit 3),
    unless --partial. If more keys follow than --limit, stderr says where to
    continue (--from).

    \b
    Example:
        chordctl kv scan
        chordctl kv scan --from 100 --to 200 --limit 10
        chordctl -o plain kv scan --all --keys-only | wc -l
        chordctl -o json kv scan --from 100 --to 200
    """
    fmt = state.fmt("table")
    if everything:
        limit = 0
    with state.client() as c:
        s = c.scan(start, end, limit, keys_only, partial)
        for _stream, err in s.skipped:
            click.secho(f"chordctl: warning: {err}; its keys are NOT listed", fg="yellow",
                        err=True)
        failure: ChordError | None = None
        last: list[int] = []
        try:
            if fmt == "json":
                _scan_json(s, keys_only, last)
            elif fmt == "plain":
                out = sys.stdout.buffer
                for e in s:
                    if keys_only:
                        out.write(b"%d\n" % e.key)
                    else:
                        out.write(b"%d\t%s\n" % (e.key, e.value))
                    last[:] = [e.key]
                out.flush()
            else:
                headers = ["key", "node"] if keys_only else ["key", "node", "value"]

                def rows():
                    for e in s:
                        last[:] = [e.key]
                        if keys_only:
                            yield [str(e.key), str(e.node_index)]
                        else:
                            yield [str(e.key), str(e.node_index), render.shown_value(e.value)]
                for line in render.stream_table(rows(), headers):
                    click.echo(line)
        except ChordError as e:
            failure = e
        finally:
            s.close()
        if failure is not None:
            raise type(failure)(f"{failure}; the listing is incomplete")
        if s.truncated and fmt != "json":
            click.echo(f"kv scan: listed the first {s.count} keys; more follow -- continue "
                       f"with --from {last[0] + 1}, or list them all with --all", err=True)
        if s.skipped:
            click.get_current_context().exit(int(ExitStatus.UNAVAILABLE))


def _scan_json(s, keys_only: bool, last: list[int]) -> None:
    """One JSON document, written as the entries arrive (never all held):
    an entry a line on a terminal, all on one line otherwise (-o json's rule)."""
    import json
    pretty = sys.stdout.isatty()
    nodes = [{"index": v.index, "id": v.node_id, "address": v.address, "keys": v.keys,
              "last_seq": v.last_seq} for v in s.nodes]
    skipped = [{"address": st.address, "error": str(err)} for st, err in s.skipped]
    nl, ind = ("\n", "  ") if pretty else ("", "")
    field = "," + nl + ind if pretty else ", "
    click.echo("{" + nl + ind + '"nodes": ' + json.dumps(nodes) + field
               + '"skipped": ' + json.dumps(skipped) + field + '"entries": [', nl=False)
    first = True
    error = None
    sep_first, sep = (nl + ind * 2, "," + nl + ind * 2) if pretty else ("", ", ")
    try:
        for e in s:
            doc = {"key": str(e.key)}
            if not keys_only:
                doc.update(render.value_json(e.value))
            doc["node"] = e.node_index
            click.echo((sep_first if first else sep) + json.dumps(doc), nl=False)
            first = False
            last[:] = [e.key]
    except ChordError as err:
        error = err
    tail = {"count": s.count, "truncated": s.truncated,
            "next": str(last[0] + 1) if s.truncated else None,
            "complete": error is None and not s.skipped}
    if error is not None:
        tail["error"] = str(error)
    click.echo(("" if first else nl) + ind + "]" + field + field.join(
        f"{json.dumps(k)}: {json.dumps(v)}" for k, v in tail.items()) + nl + "}")
    if error is not None:
        raise error


@kv.command()
@click.argument("file", metavar="FILE")
@click.option("--from", "start", metavar="KEY", help="First key to export, inclusive.")
@click.option("--to", "end", metavar="KEY", help="Stop before this key (exclusive).")
@pass_state
def export(state: State, file: str, start: str | None, end: str | None) -> None:
    """Write every key and value to FILE as JSON lines that `kv load` reads; - for stdout.

    One line per key, in key order: {"key", "value", "encoding"} (UTF-8 text,
    or base64 for other bytes), from one point-in-time view per node, as `kv
    scan` lists them. FILE is written as FILE.tmp and renamed into place once
    complete (fsynced), so a failed export never leaves a partial FILE; a
    node that is down fails the export (exit 3). On a terminal a progress bar
    counts the keys. The way to move the keys to a ring of another shape,
    replicated rings included: export from the old ring, `kv load` into the
    new one.

    \b
    Example:
        chordctl -c old.yaml kv export keys.jsonl
        chordctl -c new.yaml kv load keys.jsonl
        chordctl kv export --from 100 --to 200 - | head
    """
    import json
    import time
    to_stdout = file == "-"
    tmp = None
    t0 = time.perf_counter()
    with state.client() as c:
        total = None
        if sys.stderr.isatty():
            counts = c.count(start, end)
            if all(n.keys is not None for n in counts):
                total = sum(n.keys for n in counts)
        if to_stdout:
            out = sys.stdout
        else:
            tmp = file + ".tmp"
            try:
                out = open(tmp, "w", encoding="utf-8")
            except OSError as e:
                raise InvalidInputError(f"kv: cannot write {tmp}: {e.strerror}") from None
        n = 0
        try:
            s = c.scan(start, end, 0)
            with s, _export_progress(sys.stderr.isatty(), total) as tick:
                write, dumps, value_json = out.write, json.dumps, render.value_json
                for e in s:
                    write(dumps({"key": str(e.key), **value_json(e.value)}) + "\n")
                    n += 1
                    if tick is not None and n % 256 == 0:
                        tick(256)
                if tick is not None:
                    tick(n % 256)
            out.flush()
            if tmp is not None:
                os.fsync(out.fileno())
                out.close()
                os.replace(tmp, file)
                tmp = None
                try:
                    files.fsync_dir(os.path.dirname(os.path.abspath(file)))
                except OSError as e:
                    raise InvalidInputError(
                        f"kv: {file} is written whole, but its directory could not be synced "
                        f"({e.strerror}): a crash now may lose the file's name") from None
        except ChordError as e:
            raise type(e)(f"{e}; nothing was written to {file}" if not to_stdout
                          else f"{e}; the export is incomplete") from None
        except BrokenPipeError:
            raise                   # `kv export - | head`: main ends quietly
        except OSError as e:
            raise InvalidInputError(f"kv: cannot write {tmp or file}: {e.strerror}") from None
        finally:
            if tmp is not None:
                out.close()
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
    seconds = time.perf_counter() - t0
    summary = {"file": file, "keys": n, "seconds": round(seconds, 3),
               "keys_per_s": round(n / seconds, 1) if seconds > 0 else None}
    if state.fmt("plain") == "json" and not to_stdout:
        click.echo(render.to_json(summary))
    else:
        where = "stdout" if to_stdout else file
        click.echo(f"exported {n} key(s) to {where} in {seconds:.2f}s", err=to_stdout)


@contextlib.contextmanager
def _export_progress(enabled: bool, total: int | None):
    """click's progress bar on stderr counting keys (of *total* when known)."""
    if not enabled:
        yield None
        return
    if total:
        with click.progressbar(length=total, label="exporting", file=sys.stderr,
                               show_pos=True) as bar:
            yield bar.update
        return
    with click.progressbar((x for x in ()), label="exporting (keys)", file=sys.stderr,
                           show_pos=True) as bar:
        yield bar.update


@kv.command()
@click.option("--from", "start", metavar="KEY", help="Count keys from this one, inclusive.")
@click.option("--to", "end", metavar="KEY", help="Count keys below this one (exclusive).")
@pass_state
def count(state: State, start: str | None, end: str | None) -> None:
    """Count the keys stored: per node and in total.

    Each node counts at one point in time after every earlier request; the
    whole map's size costs a node nothing, a --from/--to range one pass over
    its keys. Nodes that do not answer are shown as DOWN and the command
    exits 3 (the total then covers the others only). With ring.replicas > 1
    there is a row per arc, counted by one of its replicas; an arc none of
    them could count is shown on its owner's row, as NO LEADER when a
    replica answered that the arc has no leader, else DOWN (exit 3 too).
    -o plain prints the total alone.

    \b
    Example:
        chordctl kv count
        chordctl kv count --from 1000 --to 2000
        chordctl -o plain kv count
    """
    fmt = state.fmt("table")
    with state.client() as c:
        counts = c.count(start, end)
    total = sum(n.keys for n in counts if n.error is None)
    down = [n for n in counts if n.error is not None]
    if fmt == "json":
        click.echo(render.to_json({
            "total": total, "complete": not down,
            "nodes": [{"index": n.index, "id": n.node_id or None, "address": n.address,
                       "keys": n.keys, "last_seq": n.last_seq if n.error is None else None,
                       **({"arc": n.arc} if n.arc is not None else {}), "state": n.state,
                       **({"error": str(n.error)} if n.error else {})} for n in counts]}))
    elif fmt == "plain":
        click.echo(str(total))
    else:
        rows = [["-" if n.index is None else str(n.index), n.node_id or "-", n.address,
                 n.state.upper() if n.error else str(n.keys)] for n in counts]
        rows.append(["total", "", "", str(total) + (" (incomplete)" if down else "")])
        headers = ["index", "id", "address", "keys"]
        if any(n.arc is not None for n in counts):
            # ring.replicas > 1: a row per arc, counted by one of its replicas
            # (the same node may answer for two arcs when an owner is down).
            rows = [[str(n.arc), *row] for n, row in zip(counts, rows)] + [["", *rows[-1]]]
            headers = ["arc", "answered by", "id", "address", "keys"]
        click.echo(render.table(rows, headers))
    for n in down:
        click.secho(f"chordctl: {n.error}", fg="red", err=True)
    if down:
        click.get_current_context().exit(int(ExitStatus.UNAVAILABLE))
