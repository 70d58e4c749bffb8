"""Bulk loading: many creates as pipelined Batch calls. Used by `kv load` and `bench`.

Records are grouped into batches of ``batch`` operations (per owner with
direct routing) and up to ``depth`` batches are in flight at once, so the
client's encoding overlaps the nodes' work.

Input files are CSV (``key,value`` per line; the value is the rest of the
line, commas included; a first line whose first field is not a key is a
header) or JSONL (``{"key": K, "value": V}``, with ``"encoding": "base64"``
for binary values). ``records`` parses either from a binary stream and can
report the bytes it consumed, for a progress bar.
"""

from __future__ import annotations

import base64
import collections
import csv
import dataclasses
import io
import json
import threading
import time
from typing import BinaryIO, Callable, Iterable, Iterator

import grpc

from chordctl.client import Client, error_for
from chordctl.errors import ChordError, InvalidInputError, UnavailableError
from chordctl.pb import chord_pb2 as pb
from chordctl.protocol import OP_OVERHEAD, OPS, never_sent

CREATE = OPS["create"]
DELETE = OPS["delete"]
_WRITES = {OPS["create"]: "create", OPS["update"]: "update", OPS["delete"]: "delete"}
_KINDS = {"AlreadyExistsError": "already exists", "NotFoundError": "not found",
          "InvalidInputError": "invalid input", "UnavailableError": "unavailable",
          "DeadlineExceededError": "deadline exceeded",
          "ResourceExhaustedError": "node overloaded", "InternalError": "internal error"}


@dataclasses.dataclass
class LoadReport:
    records: int = 0
    ok: int = 0
    failures: int = 0
    seconds: float = 0.0
    resent: int = 0          # batches sent again through another node (one was down)
    errors: dict[str, int] = dataclasses.field(default_factory=dict)   # first line -> count
    samples: list[str] = dataclasses.field(default_factory=list)       # a few full messages

    @property
    def rate(self) -> float:
        """Records stored per second: a run where every record failed stored 0/s."""
        return self.ok / self.seconds if self.seconds > 0 else 0.0


FORMATS = ("csv", "jsonl")


class CountingReader(io.RawIOBase):
    """A raw binary stream over *raw* that calls ``tick(n)`` for the n bytes read.

    A real io stream (readable, not writable, not seekable), so io.BufferedReader
    and io.TextIOWrapper accept it.
    """

    def __init__(self, raw: BinaryIO, tick: Callable[[int], None]):
        super().__init__()
        self.raw = raw
        self.tick = tick

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        read1 = getattr(self.raw, "read1", None)
        data = read1(len(b)) if read1 is not None else self.raw.read(len(b))
        n = len(data)
        b[:n] = data
        if n:
            self.tick(n)
        return n


def records(stream: BinaryIO, fmt: str, bad: list[str],
            progress: Callable[[int], None] | None = None) -> Iterator[tuple[str, bytes]]:
    """Yield (key text, value bytes) from a CSV or JSONL binary stream.

    Malformed lines are not yielded; each adds a "line N: why" to *bad*.
    *progress*, if given, is called with the number of bytes consumed as
    the stream is read.
    """
    if fmt not in FORMATS:
        raise InvalidInputError(f"load: unknown format {fmt!r}; expected csv or jsonl")
    if progress is not None:
        stream = io.BufferedReader(CountingReader(stream, progress))
    text = io.TextIOWrapper(stream, encoding="utf-8", errors="surrogateescape", newline="")
    try:
        yield from (_csv_records(text, bad) if fmt == "csv" else _jsonl_records(text, bad))
    finally:
        text.detach()    # the caller owns (and closes) the stream


def _is_key(text: str) -> bool:
    t = text.strip()
    return bool(t) and t.isascii() and t.isdigit()


# The longest CSV field read: the largest value a node may be configured to
# take (limits.max_value_bytes <= 64 MiB), with room for quoting. Python's
# csv stops at 128 KiB by default, with an exception, not a record error.
CSV_FIELD_LIMIT = 2 * 64 * 1024 * 1024


def _csv_records(text: io.TextIOWrapper, bad: list[str]) -> Iterator[tuple[str, bytes]]:
    if csv.field_size_limit() < CSV_FIELD_LIMIT:
        csv.field_size_limit(CSV_FIELD_LIMIT)
    first = True
    reader = csv.reader(text)
    lineno = 0
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            # The reader goes on at the next line (a field over the limit,
            # a NUL byte): this record is refused, the others are loaded.
            bad.append(f"line {reader.line_num}: {e}")
            continue
        lineno = reader.line_num
        if not row:
            continue
        if first:
            first = False
            # A header is a first line that is not a record: "key,value",
            # "id,name", "k;v"... anything whose first field is not a key.
            if not _is_key(row[0]):
                continue
        if len(row) < 2:
            bad.append(f"line {lineno}: expected key,value")
            continue
        yield row[0].strip(), ",".join(row[1:]).encode("utf-8", "surrogateescape")


class _Digits(str):
    """A JSON number too long for int() (Python's 4,300-digit limit), kept as its text."""


def _parse_int(text: str):
    return int(text) if len(text) <= INT_DIGITS else _Digits(text)


INT_DIGITS = 4300


def _holds_digits(value) -> bool:
    if isinstance(value, dict):
        return any(_holds_digits(v) for v in value.values())
    if isinstance(value, list):
        return any(_holds_digits(v) for v in value)
    return isinstance(value, _Digits)


def _jsonl_records(text: io.TextIOWrapper, bad: list[str]) -> Iterator[tuple[str, bytes]]:
    for lineno, line in enumerate(text, 1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line, parse_int=_parse_int)
            if not isinstance(doc, dict) or "key" not in doc or "value" not in doc:
                bad.append(f'line {lineno}: expected an object with "key" and "value"')
                continue
            key = doc["key"]
            value = doc["value"]
            if doc.get("encoding") == "base64":
                data = base64.b64decode(value, validate=True)
            elif isinstance(value, str):     # a _Digits value too: its digits, as dumps gives
                data = value.encode("utf-8")
            elif _holds_digits(value):
                bad.append(f"line {lineno}: the value holds a number of more than "
                           f"{INT_DIGITS} digits; write it as a string")
                continue
            else:
                data = json.dumps(value).encode()
            yield str(key), data
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            bad.append(f"line {lineno}: {type(e).__name__}: {e}")


# Operations per Batch call. With entry routing the entry node re-batches
# every call for each next hop; 4,000 spreads that per-call cost thinner
# (1M records on 4 nodes: 1,000 -> 133-142k/s, 4,000 -> 153-156k/s).
DEFAULT_BATCH = 4000


def load(client: Client, items: Iterable[tuple[str, bytes]], batch: int = DEFAULT_BATCH,
         depth: int = 4, progress: Callable[[int], None] | None = None,
         op: int = CREATE) -> LoadReport:
    """Apply *op* (CREATE, or an update or DELETE) to every (key, value), each
    checked as that operation; failures are counted, never raised."""
    name = _WRITES.get(op)
    if name is None:
        raise ValueError(f"bulk.load: op {op} is not create, update or delete")
    report = LoadReport()
    timeout = max(client.timeout, 30.0)
    lock = threading.Lock()
    slots = threading.Semaphore(depth)
    idle = threading.Condition(lock)
    in_flight = [0]

    def note_failure(error: ChordError, n: int = 1) -> None:
        report.failures += n
        kind = _KINDS.get(type(error).__name__, type(error).__name__)
        report.errors[kind] = report.errors.get(kind, 0) + n
        if len(report.samples) < 5:
            report.samples.append(str(error))

    # Batches that never reached their node (it refused the connection: it is
    # down), to send again through another (Client.alternate_for), by the
    # loop below: a gRPC callback must not wait for a slot.
    again: collections.deque = collections.deque()

    def done(fut: grpc.Future, request: pb.BatchRequest, address: str,
             tried: frozenset) -> None:
        n = len(request.ops)
        finished = True
        try:
            results = fut.result().results
            with lock:
                for r in results:
                    if r.code:
                        note_failure(error_for(r.code, r.message, address))
                    else:
                        report.ok += 1
        except grpc.RpcError as e:
            code, details = e.code(), e.details() or ""
            other = None
            if never_sent(code.value[0], details):
                other = client.alternate_for(request.ops[0].key, tried | {address})
            with lock:
                if other is not None:
                    again.append((other, request, tried | {address}))
                    report.resent += 1
                    finished = False
                else:
                    note_failure(error_for(code, details, address, timeout,
                                           "a load's deadline per batch"), n)
        finally:
            slots.release()
            with lock:
                in_flight[0] -= 1
                idle.notify_all()
            if progress is not None and finished:
                progress(n)

    def send(stub, address: str, request: pb.BatchRequest, tried: frozenset = frozenset()) -> None:
        slots.acquire()
        with lock:
            in_flight[0] += 1
        try:
            fut = stub.Batch.future(request, timeout=timeout)
        except ValueError:      # its channel was closed (the client was closed, or replaced it)
            slots.release()
            n = len(request.ops)
            with lock:
                in_flight[0] -= 1
                note_failure(UnavailableError(f"client: the channel to {address} was closed "
                                              f"before this batch left; none of it was sent"), n)
                idle.notify_all()
            if progress is not None:
                progress(n)
            return
        fut.add_done_callback(lambda f, r=request, a=address, t=tried: done(f, r, a, t))

    def send_again() -> None:
        while True:
            with lock:
                if not again:
                    return
                (stub, address), request, tried = again.popleft()
            send(stub, address, request, tried)

    # The client's share of a bulk load is this loop: keep it to a cheap key
    # check, the owner lookup and filling the request in place.
    max_digits, max_value = client.max_digits, client.max_value
    stub_for = client.stub_for
    # A batch also goes once its bytes reach what a node takes in one message.
    budget = client.fit.request
    buffers: dict[str, tuple[object, pb.BatchRequest]] = {}
    sizes: dict[str, int] = {}
    t0 = time.perf_counter()
    for key, value in items:
        report.records += 1
        if not (0 < len(key) <= max_digits and key.isdigit() and key.isascii()
                and len(value) <= max_value):
            try:
                client.check(name, key, value)   # says what is wrong
                key = str(int(key))
            except ChordError as e:
                with lock:
                    note_failure(e)
                if progress is not None:
                    progress(1)
                continue
        stub, address = stub_for(key)
        entry = buffers.get(address)
        if entry is None:
            entry = buffers[address] = (stub, pb.BatchRequest())
        request = entry[1]
        size = sizes.get(address, 0) + len(key) + len(value) + OP_OVERHEAD
        if size > budget and request.ops:
            buffers[address] = entry = (stub, pb.BatchRequest())
            send(stub, address, request)
            if again:
                send_again()
            request = entry[1]
            size = len(key) + len(value) + OP_OVERHEAD
        sizes[address] = size
        o = request.ops.add()
        o.op = op
        o.key = key
        o.value = value
        if len(request.ops) >= batch:
            buffers[address] = (stub, pb.BatchRequest())
            sizes[address] = 0
            send(stub, address, request)
            if again:
                send_again()
    for address, (stub, request) in buffers.items():
        if request.ops:
            send(stub, address, request)
    while True:
        send_again()
        with lock:
            while in_flight[0] and not again:
                idle.wait()
            if not in_flight[0] and not again:
                break
    report.seconds = time.perf_counter() - t0
    return report

