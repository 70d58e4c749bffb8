"""The request object that travels through a node's queues F1..F4.

One Request per operation. Queues carry *lists* of requests (a unary call is a
list of one, a Batch call or a coalesced forward a longer list), so a batch
crosses each queue as a single item. The receiver sets ``waiter``; whoever
completes the request fills the result fields and the node calls
``waiter.set_result(request)`` on the event loop.
"""

from __future__ import annotations

from chordctl.protocol import OK


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

