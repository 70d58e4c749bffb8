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

AsyncNodeStream and AsyncScan are the same for grpc.aio (chordctl.aio):
a task per node instead of a thread, the same checks and errors.

No click and no printing here; failures are ChordErrors naming the node.
"""

from __future__ import annotations

import asyncio
import dataclasses
import heapq
import queue
import threading
from typing import AsyncIterator, Callable, Iterable, Iterator, Sequence

import grpc

from chordctl.errors import ChordError, DeadlineExceededError, InternalError, UnavailableError
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
    arc: int | None = None  # ring.replicas > 1: the arc it counted (its owner's index)

    @property
    def state(self) -> str:
        """up (counted) | no leader (a replica of the arc answered that it has
        none: ring.replicas > 1) | down (no node answered)."""
        if self.error is None:
            return "up"
        return "no leader" if self.arc is not None and leaderless(str(self.error)) else "down"


def leaderless(text: str) -> bool:
    """Whether a replica's refusal says its arc has no leader (core/replica.py:
    "has had no leader", "it has no leader: ...", learners that cannot elect)."""
    return said_by_a_node(text) and "no leader" in text


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


def _page_entries(stream, page: pb.ScanPage, prev: int) -> tuple[list[Entry], int]:
    """The entries of one page of *stream*, checked ascending after key *prev*
    (the merge relies on it); and the last key."""
    out = []
    index = stream.index
    for e in page.entries:
        k = int(e.key)
        if k <= prev:
            raise _out_of_order(stream, k, prev)
        prev = k
        out.append(Entry(k, e.value, index))
    return out, prev


class _NodeStreamBase:
    """What the sync and the asyncio stream of one node's Scan call hold."""

    def __init__(self, stub, request: pb.ScanRequest, label: str, address: str, idle: float,
                 index: int | None = None, *,
                 to_error: Callable[[grpc.StatusCode, str, str], ChordError],
                 alternates: Sequence[tuple] = ()):
        # ring.replicas > 1: other replicas of the arc, (index, label, address,
        # stub, ring id) each, asked in turn when this one is unavailable.
        self.alternates = tuple(alternates)
        self.stub = stub
        self.to_error = to_error      # client.error_for: the ChordError for a gRPC status
        self.request = request
        self.label = label
        self.address = address
        self.idle = idle
        self.index = index
        self.view: NodeView | None = None
        self._first: pb.ScanPage | None = None
        self._queue = self._new_queue()
        self._closed = False
        self._call = None

    @staticmethod
    def _new_queue():
        raise NotImplementedError

    def failover(self, error: ChordError):
        """A stream to the arc's next replica (unstarted) after *error* before
        the first page, or None: only an unreachable replica is passed over."""
        if not self.alternates or not isinstance(error, UnavailableError):
            return None
        (index, label, address, stub, _id), *rest = self.alternates
        return type(self)(stub, self.request, label, address, self.idle, index,
                          to_error=self.to_error, alternates=rest)


class NodeStream(_NodeStreamBase):
    """One node's Scan call, read by a thread into a bounded queue.

    A page must arrive within *idle* seconds (the client timeout) of asking
    for it; the call itself has no deadline, so a long scan of a big node is
    not cut off while it keeps sending.
    """

    @staticmethod
    def _new_queue():
        return queue.Queue(maxsize=PREFETCH)

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
            raise _idle_error(self) from None
        if isinstance(item, ChordError):
            self.close()
            raise _node_failed(self, item)
        return item

    def first(self) -> NodeView:
        """Wait for the first page (it names the node and its view); raises ChordError."""
        self._first = _first_page(self, self._get())
        return self.view

    def entries(self) -> Iterator[Entry]:
        """This node's entries, ascending (checked: the merge relies on it)."""
        page = self._first
        prev = -1
        while True:
            entries, prev = _page_entries(self, page, prev)
            yield from entries
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


def _idle_error(stream) -> DeadlineExceededError:
    return DeadlineExceededError(
        f"scan: {stream.label} at {stream.address} sent nothing for {stream.idle:g}s "
        f"(client.timeout); is it overloaded or stopped? (`chordctl ring show`)")


def telling(before: ChordError | None, error: ChordError) -> ChordError:
    """Of two failures of one arc's replicas, the one to report: a node's own
    words (it answered, and says why: the arc has no leader, say) over the
    client's failing to reach the next replica."""
    if before is not None and said_by_a_node(str(before)) and not said_by_a_node(str(error)):
        return before
    return error


def said_by_a_node(text: str) -> bool:
    """Whether a (maybe _node_failed-wrapped) failure is a node's own words."""
    return text.startswith("node ") or " failed: node " in text


def _node_failed(stream, error: ChordError) -> ChordError:
    return type(error)(f"scan: {stream.label} at {stream.address} failed: {error}")


def _out_of_order(stream, key: int, prev: int) -> InternalError:
    return InternalError(f"scan: {stream.label} sent key {key} after {prev}, out of "
                         f"order; the listing would be wrong")


def _first_page(stream, page) -> pb.ScanPage:
    """Check a stream's first page and set its index and view from it (shared
    by NodeStream and AsyncNodeStream)."""
    if page is _END:
        raise InternalError(f"scan: {stream.label} at {stream.address} ended the scan without "
                            f"a page; is it a chordctl node of this version?")
    stream.index = page.node_index
    stream.view = NodeView(page.node_index, page.node_id, stream.address, page.keys,
                           page.last_seq)
    return page


def _not_every_node(error: ChordError) -> ChordError:
    return type(error)(f"{error}; nothing listed: a scan in key order needs every "
                       f"node (add --partial to list the others' keys)")


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
            for k, s in enumerate(self.streams):
                told = None     # the most telling failure of this arc's replicas so far
                while True:
                    try:
                        self.nodes.append(s.first())
                        live.append(s)
                        break
                    except ChordError as e:
                        s.close()
                        told = telling(told, e)
                        nxt = s.failover(e)
                        if nxt is not None:
                            self.streams[k] = s = nxt.start()
                            continue
                        if not self.partial:
                            raise _not_every_node(told) from None
                        self.skipped.append((s, told))
                        break
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


class AsyncNodeStream(_NodeStreamBase):
    """NodeStream for grpc.aio (chordctl.aio): one node's Scan call, read by a
    task of the event loop into a bounded asyncio.Queue; the same checks and
    the same errors as the sync stream."""

    _task: asyncio.Task | None = None     # the reader, from start()

    @staticmethod
    def _new_queue():
        return asyncio.Queue(maxsize=PREFETCH)

    def start(self) -> "AsyncNodeStream":
        self._call = self.stub.Scan(self.request)
        self._task = asyncio.get_running_loop().create_task(self._read())
        return self

    async def _read(self) -> None:
        try:
            async for page in self._call:
                await self._queue.put(page)
            item = _END
        except grpc.RpcError as e:
            item = self.to_error(e.code(), e.details() or "", self.address)
        except asyncio.CancelledError:
            return
        except Exception as e:  # never leave the merge waiting without a reason
            item = InternalError(f"scan: reading from {self.label}: {e}")
        await self._queue.put(item)

    async def _get(self):
        try:
            async with asyncio.timeout(self.idle):
                item = await self._queue.get()
        except TimeoutError:
            self.close()
            raise _idle_error(self) from None
        if isinstance(item, ChordError):
            self.close()
            raise _node_failed(self, item)
        return item

    async def first(self) -> NodeView:
        """Wait for the first page (it names the node and its view); raises ChordError."""
        self._first = _first_page(self, await self._get())
        return self.view

    async def entries(self) -> AsyncIterator[Entry]:
        """This node's entries, ascending (checked: the merge relies on it)."""
        page = self._first
        prev = -1
        while True:
            entries, prev = _page_entries(self, page, prev)
            for entry in entries:
                yield entry
            page = await self._get()
            if page is _END:
                return

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._call is not None:
            self._call.cancel()
        if self._task is not None:
            self._task.cancel()


class AsyncScan:
    """Scan for asyncio (chordctl.aio): ``await open()`` waits for every node's
    first page, then ``async for`` the entries in ascending key order, at most
    *limit* (0: all). The same *partial*, ``nodes``, ``skipped``,
    ``truncated`` and ``count`` as Scan, and Merge's heap of one entry per
    node, awaited."""

    def __init__(self, streams: list[AsyncNodeStream], limit: int, partial: bool = False):
        self.streams = streams
        self.limit = limit
        self.partial = partial
        self.nodes: list[NodeView] = []
        self.skipped: list[tuple[AsyncNodeStream, ChordError]] = []
        self.truncated = False
        self.count = 0
        self._live: list[AsyncNodeStream] | None = None

    async def open(self) -> "AsyncScan":
        for s in self.streams:
            s.start()
        live = []
        try:
            for k, s in enumerate(self.streams):
                told = None     # the most telling failure of this arc's replicas so far
                while True:
                    try:
                        self.nodes.append(await s.first())
                        live.append(s)
                        break
                    except ChordError as e:
                        s.close()
                        told = telling(told, e)
                        nxt = s.failover(e)
                        if nxt is not None:
                            nxt.start()
                            self.streams[k] = s = nxt
                            continue
                        if not self.partial:
                            raise _not_every_node(told) from None
                        self.skipped.append((s, told))
                        break
        except BaseException:
            self.close()
            raise
        self._live = live
        return self

    def __aiter__(self) -> AsyncIterator[Entry]:
        return self._merge()

    async def _merge(self) -> AsyncIterator[Entry]:
        if self._live is None:
            await self.open()
        sources = [s.entries() for s in self._live]
        try:
            heap = []
            for i, source in enumerate(sources):
                entry = await anext(source, None)
                if entry is not None:
                    heap.append((entry.key, i, entry))
            heapq.heapify(heap)
            limit = self.limit
            while heap:
                _key, i, entry = heap[0]
                if limit and self.count >= limit:
                    self.truncated = True
                    return
                self.count += 1
                yield entry
                entry = await anext(sources[i], None)
                if entry is None:
                    heapq.heappop(heap)
                else:
                    heapq.heapreplace(heap, (entry.key, i, entry))
        finally:
            self.close()

    def close(self) -> None:
        for s in self.streams:
            s.close()

    async def __aenter__(self) -> "AsyncScan":
        return self

    async def __aexit__(self, *exc) -> None:
        self.close()
