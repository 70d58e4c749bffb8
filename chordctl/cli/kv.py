"""``chordctl kv``: one request per command."""

from __future__ import annotations

import sys

import click

from chordctl import render
from chordctl.cli.common import State, pass_state
from chordctl.client import Result
from chordctl.errors import InvalidInputError


@click.group()
def kv() -> None:
    """Create, read, update and delete keys."""


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


def _print(state: State, r: Result, bare_value: bool = False) -> None:
    fmt = state.fmt("plain")
    if fmt == "json":
        doc = {"ok": True, "op": r.op, "key": r.key}
        if r.op == "read":
            doc.update(render.value_json(r.value))
        doc.update({"node_index": r.node_index, "node_id": r.node_id, "message": r.message})
        if r.route:
            doc["route"] = list(r.route)
        click.echo(render.to_json(doc))
        return
    if fmt == "table":
        rows = [["op", r.op], ["key", r.key]]
        if r.op == "read":
            rows.append(["value", r.value.decode("utf-8", "backslashreplace")])
        rows += [["node", f"{r.node_index} (id {r.node_id})"], ["message", r.message]]
        if r.route:
            rows.append(["route", " -> ".join(r.route)])
        click.echo(render.table(rows, ["field", "value"]))
        return
    if bare_value:
        out = sys.stdout.buffer
        out.write(r.value or b"")
        out.write(b"\n")
        out.flush()
    else:
        click.echo(f"OK {r.message}")
    if r.route:
        click.echo(_route_text(r.route), err=bare_value)


# Let "-5" reach the key parser (which explains that keys are non-negative)
# instead of click's "no such option".
_ARGS = {"ignore_unknown_options": True}
_trace = click.option("--trace", is_flag=True, help="Print the route the request took.")
_file = click.option("--file", "file", metavar="PATH",
                     help="Read the value from PATH (binary safe); - for stdin.")


@kv.command(context_settings=_ARGS)
@click.argument("key")
@click.argument("value", required=False)
@_file
@_trace
@pass_state
def create(state: State, key: str, value: str | None, file: str | None, trace: bool) -> None:
    """Create KEY with VALUE; fails (exit 1) if KEY exists.

    \b
    Example:
        chordctl kv create 10 hello
        chordctl kv create 11 --file photo.jpg
    """
    with state.client() as c:
        _print(state, c.create(key, _value(value, file), trace))


@kv.command(context_settings=_ARGS)
@click.argument("key")
@_trace
@pass_state
def read(state: State, key: str, trace: bool) -> None:
    """Print KEY's value (bare, for scripts); exit 1 if KEY does not exist.

    With --trace the route goes to stderr, so stdout stays the bare value.

    \b
    Example:
        chordctl kv read 10
        chordctl -o json kv read 10 --trace
    """
    with state.client() as c:
        _print(state, c.read(key, trace), bare_value=True)


@kv.command(context_settings=_ARGS)
@click.argument("key")
@click.argument("value", required=False)
@_file
@_trace
@pass_state
def update(state: State, key: str, value: str | None, file: str | None, trace: bool) -> None:
    """Replace KEY's value; fails (exit 1) if KEY does not exist.

    \b
    Example:
        chordctl kv update 10 world
    """
    with state.client() as c:
        _print(state, c.update(key, _value(value, file), trace))


@kv.command(context_settings=_ARGS)
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
