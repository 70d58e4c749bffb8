"""Output rendering: tables (tabulate), JSON and plain text. No click here."""

from __future__ import annotations

import base64
import json
import sys
from typing import Any, Iterable, Iterator, Sequence

from tabulate import tabulate

FORMATS = ("table", "json", "plain")


def value_json(value: bytes | None) -> dict[str, Any]:
    """A value for JSON: text when it is UTF-8, base64 otherwise."""
    if value is None:
        return {"value": None}
    try:
        return {"value": value.decode("utf-8"), "encoding": "utf-8"}
    except UnicodeDecodeError:
        return {"value": base64.b64encode(value).decode(), "encoding": "base64"}


def to_json(obj: Any, pretty: bool | None = None) -> str:
    """One JSON document: indented for a terminal, compact on one line otherwise
    (a pipe, a file: one document per line for scripts)."""
    if pretty is None:
        pretty = sys.stdout.isatty()
    if pretty:
        return json.dumps(obj, indent=2, sort_keys=False, default=str)
    return json.dumps(obj, separators=(",", ":"), sort_keys=False, default=str)


def failure_json(message: str, exit_code: int) -> str:
    """The document a failed command prints under ``-o json``."""
    return to_json({"ok": False, "error": message, "exit": exit_code})


CELL_WIDTH = 40


def clip(text: str, width: int = CELL_WIDTH) -> str:
    """A table cell at most *width* characters; the whole text belongs in -o json."""
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[:width - 3].rstrip() + "..."


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    return tabulate(rows, headers=headers, tablefmt="simple", disable_numparse=True)


def plain(rows: Iterable[Sequence[Any]]) -> str:
    """Tab-separated lines, for scripts."""
    return "\n".join("\t".join("" if c is None else str(c) for c in row) for row in rows)


def rows_as_dicts(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> list[dict]:
    return [dict(zip(headers, row)) for row in rows]


def render_rows(rows: Sequence[Sequence[Any]], headers: Sequence[str], fmt: str,
                json_rows: list[dict] | None = None) -> str:
    if fmt == "json":
        return to_json(json_rows if json_rows is not None else rows_as_dicts(rows, headers))
    if fmt == "plain":
        return plain(rows)
    return table(rows, headers)


# -- streamed tables (kv scan) -------------------------------------------------

TABLE_BLOCK = 1000      # rows whose widths set a streamed table's columns
TABLE_VALUE = 60        # characters of a value a table row shows

_CONTROL = {c: f"\\x{c:02x}" for c in (*range(32), 127)}
_CONTROL.update({10: "\\n", 13: "\\r", 9: "\\t"})


def shown_value(value: bytes) -> str:
    """A value for a table cell: text, other bytes and control characters as
    \\xNN (\\n, \\t, \\r), one line, cut short."""
    text = value.decode("utf-8", "backslashreplace").translate(_CONTROL)
    return text if len(text) <= TABLE_VALUE else text[:TABLE_VALUE - 3] + "..."


def stream_table(rows: Iterable[Sequence[str]], headers: Sequence[str]) -> Iterator[str]:
    """The lines of a table like table(), without holding every row: the first
    block of rows sets the column widths; a wider cell later just overflows."""
    rows = iter(rows)
    block = []
    for row in rows:
        block.append(row)
        if len(block) >= TABLE_BLOCK:
            break
    widths = [max([len(h)] + [len(r[i]) for r in block]) for i, h in enumerate(headers)]

    def line(cells) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()

    yield line(headers)
    yield line(["-" * w for w in widths])
    for row in block:
        yield line(row)
    for row in rows:
        yield line(row)
