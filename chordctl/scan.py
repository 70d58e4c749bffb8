"""Ring-wide scans and counts: one Scan stream per node, merged in key order.

Every node answers Scan for its own keys only, ascending by key, from one
point-in-time view of its map (see node.py, ReadMarker). The client opens one
stream per node at once, each read by its own thread into a queue of
PREFETCH pages (gRPC flow control holds the node back when the queue is
full), and merges the streams with a heap of one entry per node. Memory on
this side is therefore about nodes x (PREFETCH + 1) pages, whatever the size
of the ring's data. The merged order is ascending by key under either
placement: with ``direct`` a node's keys are every key whose ``key mod 2^m``
falls in its arc, so they interleave with the other nodes' keys just as
under ``hash``; the heap puts them in order either way.

Each node is asked for ``limit + 1`` entries, so once ``limit`` entries are
out, a key left in any stream means the listing was cut short (truncated).
The views of different nodes are taken independently: each node's part is
consistent in itself (every write acknowledged before the scan began is in
it), the ring as a whole is not one snapshot.

No click and no printing here; failures are ChordErrors naming the node.
"""

from __future__ import annotations

import dataclasses
import heapq
import queue
import threading
from typing import Callable, Iterable, Iterator, Sequence

import grpc

from chordctl.errors import ChordError, DeadlineExceededError, InternalError
from chordctl.pb import chord_pb2 as pb

DEFAULT_LIMIT = 1000
PREFETCH = 2           # pages buffered per node while the merge works on another
_END = object()


@dataclasses.dataclass(frozen=True, slots=True)
class Entry:
    key: int
    value: bytes            # b"" with keys_only
    node_index: int


@dataclasses.dataclass
class NodeView:
    """What one node said about its view: who it is, how many keys it held."""

    index: int
    node_id: str
    address: str
    keys: int               # keys held in the view, whatever the range
    last_seq: int           # the view holds every mutation up to this one


@dataclasses.dataclass
class NodeCount:
    index: int | None       # None: the node behind --target, before it answered
    node_id: str
    address: str
    keys: int | None = None
    last_seq: int = 0
    error: ChordError | None = None


def nodes_for_range(ring, start: int, end: int | None) -> list[int]:
    """Indexes of the nodes that can hold keys in [start, end), ascending.

    Under ``hash`` placement any node can. Under ``direct`` a key's position
    is key mod 2^m, so a range shorter than the ring covers the positions
    start mod 2^m .. (end - 1) mod 2^m (wrapping), and only their owners are
    asked: walk the arcs clockwise from the first position.
    """
    if ring.placement != "direct" or end is None or end - start >= ring.size:
        return list(range(ring.n))
    if end <= start:
        return []
    size = ring.size
    p = start % size
    remaining = end - start          # positions left to cover, starting at p
    found: set[int] = set()
    while remaining > 0 and len(found) < ring.n:
        i = ring.owner_of_position(p)
        found.add(i)
        owned = (ring.ids[i] - p) % size + 1      # p .. ids[i], clockwise
        remaining -= owned
        p = (ring.ids[i] + 1) % size
    return sorted(found)


class Merge:
    """Entries of several ascending sources in ascending key order, at most *limit* (0: all).

    ``truncated`` is True once an entry was left over after *limit*; the
    sources should each hold limit + 1 entries for that to be exact.
    """

    def __init__(self, sources: Sequence[Iterable[Entry]], limit: int = 0):
        self.sources = sources
        self.limit = limit
        self.truncated = False
        self.count = 0

    def __iter__(self) -> Iterator[Entry]:
        limit = self.limit
        for entry in heapq.merge(*self.sources, key=_by_key):
            if limit and self.count >= limit:
                self.truncated = True
                return
            self.count += 1
            yield entry


def _by_key(entry: Entry) -> int:
    return entry.key


class NodeStream:
    """One node's Scan call, read by a thread into a bounded queue.

    A page must arrive within *idle* seconds (the client timeout) of asking
    for it; the call itself has no deadline, so a long scan of a big node is
    not cut off while it keeps sending.
    """

    def __init__(self, stub, request: pb.ScanRequest, label: str, address: str, idle: float,
                 index: int | None = None, *,
                 to_error: Callable[[grpc.StatusCode, str, str], ChordError]):
        self.stub = stub
        self.to_error = to_error      # client.error_for: the ChordError for a gRPC status
        self.request = request
        self.label = label
        self.address = address
        self.idle = idle
        self.index = index
        self.view: NodeView | None = None
        self._first: pb.ScanPage | None = None
        self._queue: queue.Queue = queue.Queue(maxsize=PREFETCH)
        self._closed = False
        self._call = None

    def start(self) -> "NodeStream":
        self._call = self.stub.Scan(self.request)
        threading.Thread(target=self._read, name=f"scan-{self.address}", daemon=True).start()
        return self

    def _read(self) -> None:
        try:
            for page in self._call:
                if self._closed:
                    return
                self._queue.put(page)
            item = _END
        except grpc.RpcError as e:
            item = self.to_error(e.code(), e.details() or "", self.address)
        except Exception as e:  # never leave the merge waiting without a reason
            item = InternalError(f"scan: reading from {self.label}: {e}")
        if not self._closed:
            self._queue.put(item)

    def _get(self):
        try:
            item = self._queue.get(timeout=self.idle)
        except queue.Empty:
            self.close()
            raise DeadlineExceededError(
                f"scan: {self.label} at {self.address} sent nothing for {self.idle:g}s "
                f"(client.timeout); is it overloaded or stopped? (`chordctl ring show`)") from None
        if isinstance(item, ChordError):
            self.close()
            raise type(item)(f"scan: {self.label} at {self.address} failed: {item}")
        return item

    def first(self) -> NodeView:
        """Wait for the first page (it names the node and its view); raises ChordError."""
        page = self._get()
        if page is _END:
            raise InternalError(f"scan: {self.label} at {self.address} ended the scan without "
                                f"a page; is it a chordctl node of this version?")
        self._first = page
        self.index = page.node_index
        self.view = NodeView(page.node_index, page.node_id, self.address, page.keys,
                             page.last_seq)
        return self.view

    def entries(self) -> Iterator[Entry]:
        """This node's entries, ascending (checked: the merge relies on it)."""
        page = self._first
        index = self.index
        prev = -1
        while True:
            for e in page.entries:
                k = int(e.key)
                if k <= prev:
                    raise InternalError(f"scan: {self.label} sent key {k} after {prev}, out of "
                                        f"order; the listing would be wrong")
                prev = k
                yield Entry(k, e.value, index)
            page = self._get()
            if page is _END:
                return

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._call is not None:
            self._call.cancel()
        try:   # unblock the reader if it waits on a full queue
            while True:
                self._queue.get_nowait()
        except queue.Empty:
            pass


class Scan:
    """A ring-wide scan: open() waits for every node's first page, then iterate.

    With *partial*, a node that fails before its first page is left out and
    recorded in ``skipped`` (the caller warns); otherwise open() raises. A
    node failing later always raises while iterating: what was yielded so
    far is right but incomplete.
    """

    def __init__(self, streams: list[NodeStream], limit: int, partial: bool = False):
        self.streams = streams
        self.limit = limit
        self.partial = partial
        self.nodes: list[NodeView] = []
        self.skipped: list[tuple[NodeStream, ChordError]] = []
        self._merge: Merge | None = None

    def open(self) -> "Scan":
        for s in self.streams:
            s.start()
        live = []
        try:
            for s in self.streams:
                try:
                    self.nodes.append(s.first())
                    live.append(s)
                except ChordError as e:
                    if not self.partial:
                        raise type(e)(f"{e}; nothing listed: a scan in key order needs every "
                                      f"node (add --partial to list the others' keys)") from None
                    s.close()
                    self.skipped.append((s, e))
        except BaseException:
            self.close()
            raise
        self._merge = Merge([s.entries() for s in live], self.limit)
        return self

    def __iter__(self) -> Iterator[Entry]:
        if self._merge is None:
            self.open()
        try:
            yield from self._merge
        finally:
            self.close()

    @property
    def truncated(self) -> bool:
        return self._merge is not None and self._merge.truncated

    @property
    def count(self) -> int:
        return self._merge.count if self._merge is not None else 0

    def close(self) -> None:
        for s in self.streams:
            s.close()

    def __enter__(self) -> "Scan":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
