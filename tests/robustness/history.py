"""A history recorder for concurrent clients (the Jepsen / porcupine idea).

Every operation is recorded with the time it was invoked and the time its
result came back, so the checker (``linearizability``) knows which operations
overlapped. An outcome is one of:

    ok              the operation took effect (a read carries the value read)
    not-found       update/delete/read of an absent key: no effect
    already-exists  create of a present key: no effect
    unknown         timeout, unreachable node, node failure: it may or may not
                    have taken effect, at any moment after its invocation
    failed          certainly no effect: refused before it left the client
                    (invalid input, no connection to the entry node at all), or
                    refused by a fail-stopped node ("not applied; safe to retry")

Times are ``time.monotonic_ns()`` of this process, taken right before the
request is sent and right after its reply arrives.
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
import time
from collections import Counter, defaultdict
from typing import Iterable

from chordctl.errors import (AlreadyExistsError, ChordError, DeadlineExceededError,
                             InvalidInputError, NotFoundError, UnavailableError)

OK = "ok"
NOT_FOUND = "not-found"
ALREADY_EXISTS = "already-exists"
UNKNOWN = "unknown"
FAILED = "failed"
OUTCOMES = (OK, NOT_FOUND, ALREADY_EXISTS, UNKNOWN, FAILED)
KINDS = ("create", "read", "update", "delete")


@dataclasses.dataclass
class Op:
    """One operation of one client on one key."""

    id: int
    client: int
    kind: str                      # create | read | update | delete
    key: int
    value: bytes | None            # the value written (create, update)
    invoke: int                    # ns
    complete: int | None = None    # ns; for an unknown outcome, when the client gave up
    outcome: str | None = None     # None while in flight
    result: bytes | None = None    # the value a successful read returned
    detail: str = ""               # the error message, for reports

    def __str__(self) -> str:
        arg = f" {self.value!r}" if self.kind in ("create", "update") else ""
        res = f" -> {self.result!r}" if self.kind == "read" and self.outcome == OK else ""
        return (f"#{self.id} c{self.client} {self.kind} {self.key}{arg}: "
                f"{self.outcome}{res}")


def classify(error: ChordError) -> str:
    """The outcome a client error stands for."""
    if isinstance(error, NotFoundError):
        return NOT_FOUND
    if isinstance(error, AlreadyExistsError):
        return ALREADY_EXISTS
    if isinstance(error, InvalidInputError):
        return FAILED
    if isinstance(error, UnavailableError) and not isinstance(error, DeadlineExceededError):
        text = str(error)
        if text.startswith("client: cannot connect") or "failed to connect" in text.lower():
            # gRPC's own "failed to connect" (here, or relayed by the hop that
            # got it): that hop had no transport to the next one, so the
            # request never went further than a node that does not own it.
            return FAILED
        if "not applied; safe to retry" in text or "refuses requests until" in text:
            # A fail-stopped node: its failed write was cut back off the log
            # (not applied), or it refused the request without writing it.
            return FAILED
    return UNKNOWN


class History:
    """Thread-safe list of operations; clients call ``call`` (or invoke/complete)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ops: list[Op] = []
        self._ids = itertools.count()
        self.start = time.monotonic_ns()

    def invoke(self, client: int, kind: str, key: int, value: bytes | None = None) -> Op:
        if kind not in KINDS:
            raise ValueError(f"history: unknown operation {kind!r}")
        op = Op(next(self._ids), client, kind, int(key),
                value if kind in ("create", "update") else None, time.monotonic_ns())
        with self._lock:
            self._ops.append(op)
        return op

    def complete(self, op: Op, outcome: str, result: bytes | None = None,
                 detail: str = "") -> Op:
        if outcome not in OUTCOMES:
            raise ValueError(f"history: unknown outcome {outcome!r}")
        op.complete = time.monotonic_ns()
        op.outcome = outcome
        op.result = result if (op.kind == "read" and outcome == OK) else None
        op.detail = detail
        return op

    def call(self, client, client_id: int, kind: str, key: int,
             value: bytes | None = None) -> Op:
        """Run one operation through a chordctl ``Client`` and record it."""
        op = self.invoke(client_id, kind, key, value)
        try:
            res = client.call(kind, str(key), value)
        except ChordError as e:
            return self.complete(op, classify(e), detail=str(e))
        return self.complete(op, OK, res.value)

    def batch_reads(self, client, client_id: int, keys: Iterable[int],
                    chunk: int = 200) -> list[Op]:
        """Read many keys with Batch calls; each read is recorded over its call's interval."""
        done: list[Op] = []
        keys = list(keys)
        for i in range(0, len(keys), chunk):
            part = keys[i:i + chunk]
            ops = [self.invoke(client_id, "read", k) for k in part]
            try:
                results = client.batch([("read", str(k), None) for k in part])
            except ChordError as e:
                for op in ops:
                    done.append(self.complete(op, classify(e), detail=str(e)))
                continue
            for op, res in zip(ops, results):
                if isinstance(res, ChordError):
                    done.append(self.complete(op, classify(res), detail=str(res)))
                else:
                    done.append(self.complete(op, OK, res.value))
        return done

    def extend(self, ops: Iterable[Op]) -> None:
        """Add completed operations recorded elsewhere (another process's
        History, on the same monotonic clock), numbered anew."""
        with self._lock:
            for op in ops:
                self._ops.append(dataclasses.replace(op, id=next(self._ids)))

    @property
    def ops(self) -> list[Op]:
        """Every completed operation (in-flight ones are left out), by invocation."""
        with self._lock:
            return sorted((o for o in self._ops if o.outcome is not None),
                          key=lambda o: o.invoke)

    def by_key(self) -> dict[int, list[Op]]:
        out: dict[int, list[Op]] = defaultdict(list)
        for op in self.ops:
            out[op.key].append(op)
        return dict(out)

    def counts(self) -> Counter:
        return Counter((o.kind, o.outcome) for o in self.ops)

    def summary(self) -> str:
        c = Counter(o.outcome for o in self.ops)
        return (f"{sum(c.values())} ops ({', '.join(f'{n} {k}' for k, n in sorted(c.items()))}) "
                f"on {len(self.by_key())} keys")
