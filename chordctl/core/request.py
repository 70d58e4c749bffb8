"""The request object that travels through a node's queues F1..F4.

One Request per operation. Queues carry *lists* of requests (a unary call is a
list of one, a Batch call or a coalesced forward a longer list), so a batch
crosses each queue as a single item. The receiver sets ``waiter``; whoever
completes the request fills the result fields and the node calls
``waiter.set_result(request)`` on the event loop.
"""

from __future__ import annotations

import sys

from chordctl.core.storage.records import OP_CREATE, OP_DELETE, OP_READ, OP_UPDATE

OP_NAMES = {OP_CREATE: "create", OP_READ: "read", OP_UPDATE: "update", OP_DELETE: "delete"}

# gRPC status numbers used in results (grpc.StatusCode values, without grpc).
OK = 0
DEADLINE_EXCEEDED = 4
INVALID_ARGUMENT = 3
NOT_FOUND = 5
ALREADY_EXISTS = 6
RESOURCE_EXHAUSTED = 8
ABORTED = 10
INTERNAL = 13
UNAVAILABLE = 14


class Request:
    __slots__ = (
        "op", "key", "key_text", "value", "trace", "hops", "route", "deadline", "seq",
        "code", "message", "result", "node_index", "node_id", "waiter",
    )

    def __init__(self, op: int, key: int, key_text: bytes, value: bytes, deadline: float,
                 trace: bool = False, hops: int = 0, route: list[str] | None = None):
        self.op = op
        self.key = key
        self.key_text = key_text      # canonical decimal ASCII, as logged
        self.value = value
        self.deadline = deadline      # time.monotonic() by which the caller gives up
        self.trace = trace
        self.hops = hops
        self.route = route            # ring ids visited (only when traced)
        self.seq = 0                  # log sequence number once dispatched
        self.code = OK
        self.message = ""
        self.result: bytes | None = None
        self.node_index = -1
        self.node_id = ""
        self.waiter = None

    def fail(self, code: int, message: str) -> None:
        self.code = code
        self.message = message


_DONE = {OP_CREATE: "created", OP_READ: "read", OP_UPDATE: "updated", OP_DELETE: "deleted"}


def describe(op: int, key: str, code: int, node: str) -> str:
    """The human sentence of a result produced by *node* (``node 1 (id 49151)``)."""
    if code == OK:
        return f"{_DONE[op]} key {key} on {node}"
    if code == NOT_FOUND:
        return f"key {key} not found (owner: {node})"
    if code == ALREADY_EXISTS:
        return f"key {key} already exists (owner: {node}); use update to change it"
    return f"{OP_NAMES.get(op, 'operation')} of key {key} failed on {node} (code {code})"


def parse_key(text: str, max_digits: int) -> tuple[int, bytes]:
    """A key's decimal text -> (int, canonical ASCII); ValueError says what is wrong."""
    if not text:
        raise ValueError("key is empty; give a non-negative integer such as 42")
    if not text.isascii() or not text.isdigit():
        if text.startswith("-") and text[1:].isdigit():
            raise ValueError(f"key {text} is negative; keys are non-negative integers")
        shown = text if len(text) <= 40 else text[:40] + "..."
        raise ValueError(f"key {shown!r} is not a non-negative decimal integer")
    if len(text) > max_digits:
        raise ValueError(f"key has {len(text)} digits; the limit is {max_digits} "
                         f"(limits.max_key_digits)")
    key = int(text)
    if text[0] == "0" and len(text) > 1:
        text = str(key)
    return key, text.encode()


def allow_key_digits(digits: int) -> None:
    """Let int() and str() take keys of *digits* digits in this process.

    Python refuses decimal conversions past 4,300 digits by default (a guard
    against quadratic parsing); limits.max_key_digits (capped in config.py)
    is the guard here, so nodes and clients lift Python's to it."""
    current = sys.get_int_max_str_digits()
    if current and current < digits:
        sys.set_int_max_str_digits(digits)
