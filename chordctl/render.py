"""Output rendering: tables (tabulate), JSON and plain text. No click here."""

from __future__ import annotations

import base64
import json
from typing import Any, Iterable, Sequence

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


def to_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=False, default=str)


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
