"""gRPC servicers (asyncio): protobuf <-> Requests, into F1, await the result.

The receivers are coroutines on the node's event loop: thousands of requests
can wait without a thread each. A handler asks the node's Admission
(gate.py) whether the call may enter, turns the message into Requests
(protocol.validate: a bad request changes nothing and never reaches the
pipeline), submits them and awaits the reply path (node.py's Replies); the
functions below the servicers build the protobuf replies.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time

import grpc
from google.protobuf.message import DecodeError

from chordctl import cpulist
from chordctl.core import affinity, eventloop, membership, procinfo
from chordctl.core.storage import inventory
from chordctl.core.gate import Admission
from chordctl.core.markers import ReadMarker, SnapshotMarker
from chordctl.core.node import Node
from chordctl.core.request import Request
from chordctl.core.store import arc_ordered_keys, count_arc_keys, count_keys
from chordctl.errors import InvalidInputError
from chordctl.pb import chord_pb2 as pb
from chordctl.pb import chord_pb2_grpc as pb_grpc
from chordctl.protocol import (DEADLINE_EXCEEDED, INVALID_ARGUMENT, OK, OP_CREATE, OP_DELETE,
                               OP_NAMES, OP_READ, OP_UPDATE, RESOURCE_EXHAUSTED, UNAVAILABLE,
                               describe, parse_key, validate)

logger = logging.getLogger("chordctl.node")

STATUS = {sc.value[0]: sc for sc in grpc.StatusCode}   # protocol's codes -> gRPC's
SCAN_PAGE = 1000              # entries per ScanPage unless the request asks fewer
SCAN_PAGE_MAX = 10_000
SCAN_PAGE_BYTES = 1 << 20     # a page closes once its values reach this (one entry at least)
MAX_SCANS = 8                 # scans at once per node: each holds a frozen view


class MalformedRequest:
    """What a request body that is not a valid message of its type decodes to.

    gRPC answers a deserializer's exception with UNKNOWN; a malformed request
    is bad input, like a malformed key, so the handler answers INVALID_ARGUMENT.
    """

    __slots__ = ("message",)

    def __init__(self, message: str):
        self.message = message


def _lenient(message_type):
    parse = message_type.FromString
    name = message_type.DESCRIPTOR.full_name

    def deserialize(data: bytes):
        try:
            return parse(data)
        except DecodeError as e:
            return MalformedRequest(f"request: the body is not a valid {name} message ({e}); "
                                    f"build requests from proto/chord.proto")
    return deserialize


def add_key_value_servicer(servicer: "KeyValueServicer", server) -> None:
    """pb_grpc.add_KeyValueServicer_to_server; a body that does not decode: MalformedRequest."""
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            getattr(servicer, name), request_deserializer=_lenient(request),
            response_serializer=reply.SerializeToString)
        for name, request, reply in (("Create", pb.WriteRequest, pb.Reply),
                                     ("Read", pb.KeyRequest, pb.Reply),
                                     ("Update", pb.WriteRequest, pb.Reply),
                                     ("Delete", pb.KeyRequest, pb.Reply),
                                     ("Batch", pb.BatchRequest, pb.BatchReply),
                                     ("Count", pb.CountRequest, pb.CountReply))}
    handlers["BatchStream"] = grpc.stream_stream_rpc_method_handler(
        servicer.BatchStream, request_deserializer=_lenient(pb.BatchRequest),
        response_serializer=pb.BatchReply.SerializeToString)
    handlers["Scan"] = grpc.unary_stream_rpc_method_handler(
        servicer.Scan, request_deserializer=_lenient(pb.ScanRequest),
        response_serializer=pb.ScanPage.SerializeToString)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("chord.v1.KeyValue", handlers),))
    server.add_registered_method_handlers("chord.v1.KeyValue", handlers)


async def _refuse_malformed(request: MalformedRequest, context) -> None:
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)


# -- replies: answered Requests and markers -> protobuf -----------------------

def _explain(r: Request, here: str, owner: bool = True) -> None:
    """The message of an answer that came without one, in protocol.describe's
    words (*owner*: the node that answered owns the key, ring.replicas 1)."""
    if not r.message:
        r.message = describe(r.op, r.key_text.decode(), r.code,
                             f"node {r.node_index} (id {r.node_id})"
                             if r.node_index >= 0 else here, owner)


def _batch_reply(slots: list, my_index: int, node_id: str, here: str,
                 answered: dict, owner: bool = True) -> pb.BatchReply:
    """A Batch call's reply, one result per op in order: an answered Request,
    or the (code, message) it was refused with here. Counts each outcome."""
    reply = pb.BatchReply()
    add = reply.results.add
    for s in slots:
        res = add()
        if type(s) is Request:
            code = s.code
            outcome = (s.op, code)
            answered[outcome] = answered.get(outcome, 0) + 1
            if code:
                _explain(s, here, owner)
                res.code = code
                res.message = s.message
            elif s.message:
                res.message = s.message     # relayed from the owner
            if s.result:
                res.value = s.result
            if s.node_index < 0:
                # Failed here before any owner saw it (hop limit, next hop
                # unreachable, deadline): this node answers for it.
                res.node_index = my_index
                res.node_id = node_id
            else:
                res.node_index = s.node_index
                res.node_id = s.node_id
            if s.route:
                res.route.extend(s.route)
        else:
            res.code, res.message = s
            res.node_index = my_index
            res.node_id = node_id
            outcome = (0, res.code)
            answered[outcome] = answered.get(outcome, 0) + 1
    return reply


def _send_back(node: Node):
    """A marker's on_done: back by the node's reply path (Replies), which wakes
    its waiter on the event loop like a request's."""
    def send_back(marker) -> None:
        node.replies.send([marker])
    return send_back


class _BatchWaiter:
    """One future for a whole Batch call: resolved when its last request is."""

    __slots__ = ("future", "remaining")

    def __init__(self, future: asyncio.Future, count: int):
        self.future = future
        self.remaining = count

    def done(self) -> bool:
        return self.future.done()

    def set_result(self, _request: Request) -> None:
        self.remaining -= 1
        if self.remaining == 0:
            self.future.set_result(None)


_EXPIRED = True     # what a stream message's timer resolves its _BatchWaiter future with


def _expire(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(_EXPIRED)


class _Stream:
    """One BatchStream call: its handler's task, and whether it waits for a message."""

    __slots__ = ("task", "idle", "ended")

    def __init__(self, task: asyncio.Task):
        self.task = task
        self.idle = True
        self.ended = False


class KeyValueServicer(pb_grpc.KeyValueServicer):
    def __init__(self, node: Node, loop: asyncio.AbstractEventLoop,
                 admission: Admission | None = None):
        self.node = node
        self.loop = loop
        self.admission = admission or Admission(node)
        limits = self.limits = node.config.limits
        self.max_value = limits.max_value_bytes
        self.max_digits = limits.max_key_digits
        self.max_batch = limits.max_batch_ops
        self.default_timeout = node.config.client.timeout
        self.node_id = str(node.node_id)
        self.metrics = node.metrics
        self.scans = 0
        self.views = 0        # Scan and Count calls waiting for their view
        self._send_back = _send_back(node)
        self._streams: set[_Stream] = set()     # BatchStream calls open
        self.ending = False                     # end_streams was called

    # -- helpers --------------------------------------------------------------

    def _deadline(self, context: grpc.aio.ServicerContext) -> float:
        remaining = context.time_remaining()
        if remaining is None:
            remaining = self.default_timeout
        return time.monotonic() + remaining

    def _make(self, op: int, key_text: str, value: bytes, trace: bool, hops: int,
              route, deadline: float) -> Request:
        """A Request that passed protocol.validate; InvalidInputError with the reason otherwise."""
        op, key, canon, value = validate(op, key_text, value, self.limits)
        return Request(op, key, canon, value, deadline, trace, hops,
                       list(route) + [self.node_id] if trace else None)

    async def _unary(self, op: int, request, context: grpc.aio.ServicerContext) -> pb.Reply:
        if type(request) is MalformedRequest:
            await _refuse_malformed(request, context)
        key, trace = request.key, request.trace
        value = request.value if op == OP_CREATE or op == OP_UPDATE else b""
        admission = self.admission
        if not admission.open:
            await admission.refuse(context)
        try:
            r = self._make(op, key, value, trace, 0, (), self._deadline(context))
        except InvalidInputError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        if admission.in_flight >= admission.max_in_flight:
            await admission.full(context)
        t0 = time.perf_counter()
        fut = self.loop.create_future()
        r.waiter = fut
        admission.in_flight += 1
        try:
            self.node.submit([r])
            await fut
        finally:
            admission.in_flight -= 1
        _explain(r, self.node.label, not self.node.replicated)
        metrics = self.metrics
        metrics.answered(op, r.code)
        metrics.took(OP_NAMES[op], time.perf_counter() - t0)
        if r.code != OK:
            await context.abort(STATUS.get(r.code, grpc.StatusCode.UNKNOWN), r.message)
        return pb.Reply(value=r.result or b"", node_index=r.node_index, node_id=r.node_id,
                        message=r.message, route=r.route or ())

    # -- KeyValue -------------------------------------------------------------

    async def Create(self, request, context):
        return await self._unary(OP_CREATE, request, context)

    async def Read(self, request, context):
        return await self._unary(OP_READ, request, context)

    async def Update(self, request, context):
        return await self._unary(OP_UPDATE, request, context)

    async def Delete(self, request, context):
        return await self._unary(OP_DELETE, request, context)

    async def Batch(self, request, context):
        if type(request) is MalformedRequest:
            await _refuse_malformed(request, context)
        reply = await self._batch(request.ops, self._deadline(context), 0.0,
                                  request.unordered)
        if reply.__class__ is tuple:        # refused: the call's status
            await context.abort(STATUS[reply[0]], reply[1])
        return reply

    async def BatchStream(self, request_iterator, context):
        """Batch calls as messages of one stream (proto/chord.proto): each one
        through ``_batch`` like a Batch call, answered in order with its seq;
        a refusal or an expired timeout_ms is that message's code, and the
        stream goes on. ``end_streams`` (the node stopping) ends it between
        messages, with OK: a message without a reply was never read."""
        stream = _Stream(asyncio.current_task())
        streams = self._streams
        streams.add(stream)
        read = context.read
        write = context.write
        default_ms = self.default_timeout * 1000.0
        try:
            while not self.ending:
                stream.idle = True
                try:
                    request = await read()
                except asyncio.CancelledError:
                    if stream.ended:        # end_streams, between two messages
                        return
                    raise
                stream.idle = False
                if request is grpc.aio.EOF:
                    return
                if type(request) is MalformedRequest:
                    await write(pb.BatchReply(code=INVALID_ARGUMENT, message=request.message))
                    continue
                ms = request.timeout_ms or default_ms
                reply = await self._batch(request.ops, time.monotonic() + ms / 1000.0, ms,
                                          request.unordered)
                if reply.__class__ is tuple:
                    reply = pb.BatchReply(code=reply[0], message=reply[1])
                reply.seq = request.seq
                await write(reply)
        finally:
            streams.discard(stream)

    def end_streams(self) -> None:
        """The node is stopping: end every BatchStream between two messages
        (one waiting for a message now; one serving a message once it has
        answered it). Clients reopen on their next batch."""
        self.ending = True
        for stream in list(self._streams):
            if stream.idle and not stream.ended:
                stream.ended = True
                stream.task.cancel()

    async def _batch(self, ops, deadline: float, timed_ms: float, unordered: bool = False):
        """One Batch's work: a BatchReply, or the (code, message) it is
        refused with. *timed_ms* (a stream's message; 0 for a call, whose
        deadline gRPC enforces): answer DEADLINE_EXCEEDED once it passes.
        *unordered* (a client's coalesced calls): on a replicated node the
        reads go into F1 apart from the writes, to be answered by
        confirmation (replica.py)."""
        admission = self.admission
        if not admission.open:
            return UNAVAILABLE, admission.refusal()
        if len(ops) > self.max_batch:
            return INVALID_ARGUMENT, (f"batch of {len(ops)} operations is over the limit of "
                                      f"{self.max_batch} (limits.max_batch_ops); split it")
        if admission.in_flight + len(ops) > admission.max_in_flight:
            return RESOURCE_EXHAUSTED, admission.full_message()
        t0 = time.perf_counter()
        # The hot loop of bulk work: plain keys and values within the limit take
        # an inlined fast path; anything else goes through _make (protocol.validate)
        # for the canonical form or the error.
        slots: list[Request | tuple[int, str]] = []
        valid: list[Request] = []
        make = self._make
        max_digits = self.max_digits
        max_value = self.max_value
        plain_ops = (OP_CREATE, OP_UPDATE)
        for o in ops:
            op = o.op
            text = o.key
            trace = o.trace
            plain = False
            if (not trace and 0 < len(text) <= max_digits and text.isdigit() and text.isascii()
                    and (text[0] != "0" or len(text) == 1)):
                if op in plain_ops:
                    value = o.value
                    plain = len(value) <= max_value
                elif op == OP_READ or op == OP_DELETE:
                    value = b""
                    plain = True
            if plain:
                r = Request(op, int(text), text.encode(), value, deadline, False, o.hops)
            else:
                try:
                    r = make(op, text, o.value, trace, o.hops, o.route, deadline)
                except InvalidInputError as e:
                    slots.append((INVALID_ARGUMENT, str(e)))
                    continue
            slots.append(r)
            valid.append(r)
        if valid:
            fut = self.loop.create_future()
            waiter = _BatchWaiter(fut, len(valid))
            for r in valid:
                r.waiter = waiter
            admission.in_flight += len(valid)
            try:
                if unordered and self.node.replicated:
                    reads = [r for r in valid if r.op == OP_READ]
                    if reads and len(reads) < len(valid):
                        self.node.submit(reads)
                        valid = [r for r in valid if r.op != OP_READ]
                self.node.submit(valid)
                if timed_ms:
                    timer = self.loop.call_later(deadline - time.monotonic(), _expire, fut)
                    expired = await fut
                    timer.cancel()
                    if expired:
                        return DEADLINE_EXCEEDED, (
                            f"{self.node.label}: the batch's deadline ({timed_ms:g} ms) "
                            f"passed before it was answered; it may or may not have "
                            f"been applied")
                else:
                    await fut
            finally:
                admission.in_flight -= len(valid)
        reply = _batch_reply(slots, self.node.index, self.node_id, self.node.label,
                             self.metrics.requests, not self.node.replicated)
        self.metrics.took("batch", time.perf_counter() - t0)
        return reply

    # -- Scan and Count: this node's own keys, from a point-in-time view --------

    async def _key_range(self, request, context, call: str) -> tuple[int, int | None]:
        """[start, end) of a Scan or Count request; INVALID_ARGUMENT with the reason."""
        if type(request) is MalformedRequest:
            await _refuse_malformed(request, context)
        try:
            lo = parse_key(request.start, self.max_digits)[0] if request.start else 0
            hi = parse_key(request.end, self.max_digits)[0] if request.end else None
        except ValueError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{call}: {e}")
        return lo, hi

    async def _arc(self, request, context) -> int | None:
        """The request's arc (ring.replicas > 1), checked against what this node holds."""
        if not request.HasField("arc"):
            return None
        arc = request.arc
        held = getattr(self.node, "groups", (self.node.index,))
        if arc not in held:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"{self.node.label} holds no copy of arc {arc} (it holds "
                                f"{', '.join(map(str, held))}); ask one of its replicas")
        return arc

    async def _view(self, freeze: bool, context, arc: int | None = None) -> ReadMarker:
        """Wait for a ReadMarker to cross the pipeline (see node.py)."""
        await self.admission.admit(context)
        fut = self.loop.create_future()
        remaining = context.time_remaining()
        deadline = time.monotonic() + remaining if remaining is not None else 0.0
        self.node.request_read(ReadMarker(freeze, self._send_back, fut, arc, deadline))
        self.views += 1
        try:
            marker = await fut
        finally:
            self.views -= 1
        if marker.error:
            code, message = marker.error
            await context.abort(STATUS.get(code, grpc.StatusCode.UNKNOWN), message)
        return marker

    async def Scan(self, request, context):
        """Stream this node's keys in [start, end) ascending, in pages.

        The view is frozen by the applier (O(chunks)); the windows of sorted
        keys are computed in a worker thread and the pages built here, one at
        a time, so neither the pipeline nor the event loop waits long and at
        most one window and one page are held per scan.
        """
        start, end = await self._key_range(request, context, "scan")
        arc = await self._arc(request, context)
        if self.scans >= MAX_SCANS:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"{self.node.label} is already running {self.scans} scans; "
                                f"retry when one is done")
        t0 = time.perf_counter()
        self.scans += 1
        try:
            view = await self._view(True, context, arc)
            chunks = view.chunks
            mask = len(chunks) - 1
            in_arc = None if arc is None else self.node.ring.key_test(arc)
            limit = request.limit
            keys_only = request.keys_only
            page_size = min(request.page_size or SCAN_PAGE, SCAN_PAGE_MAX)
            header = {"node_index": self.node.index, "node_id": self.node_id,
                      "keys": view.keys, "last_seq": view.seq}
            windows = arc_ordered_keys(chunks, start, end, limit, in_arc)
            run = self.loop.run_in_executor
            sent = 0
            pages = 0
            page = pb.ScanPage(**header)
            add = page.entries.add
            size = 0
            while not limit or sent < limit:
                keys = await run(None, next, windows, None)
                if keys is None:
                    break
                if limit and sent + len(keys) > limit:
                    keys = keys[:limit - sent]
                sent += len(keys)
                for k in keys:
                    value = b"" if keys_only else chunks[k & mask][k]
                    add(key=str(k), value=value)
                    size += len(value)
                    if len(page.entries) >= page_size or size >= SCAN_PAGE_BYTES:
                        yield page
                        pages += 1
                        page = pb.ScanPage(**header)
                        add = page.entries.add
                        size = 0
            if page.entries or not pages:
                yield page
        finally:
            self.scans -= 1
            self.metrics.took("scan", time.perf_counter() - t0)

    async def Count(self, request, context):
        start, end = await self._key_range(request, context, "count")
        arc = await self._arc(request, context)
        whole = not request.start and not request.end and arc is None
        # The whole map's size needs no frozen view; a range is one pass over one.
        view = await self._view(not whole, context, arc)
        if whole:
            keys = view.keys
        elif arc is None:
            keys = await self.loop.run_in_executor(None, count_keys, view.chunks, start, end)
        else:
            keys = await self.loop.run_in_executor(
                None, count_arc_keys, view.chunks, start, end, self.node.ring.key_test(arc))
        return pb.CountReply(keys=keys, node_index=self.node.index, node_id=self.node_id,
                             last_seq=view.seq)


class AdminServicer(pb_grpc.AdminServicer):
    def __init__(self, node: Node, loop: asyncio.AbstractEventLoop,
                 admission: Admission | None = None):
        self.node = node
        self.loop = loop
        self.admission = admission or Admission(node)
        self._files_cache = inventory.Cache()
        self._files_pending: asyncio.Future | None = None

    async def Status(self, request, context):
        await self.admission.admin(context, "Status")
        return _status_reply(self.node, self.admission.in_flight, self.loop)

    async def TakeSnapshot(self, request, context):
        await self.admission.admin(context, "TakeSnapshot")
        fut = self.loop.create_future()
        self.node.request_snapshot(True, _send_back(self.node), fut)
        marker = await fut
        if marker.error and not marker.result:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"{self.node.label}: {marker.error}")
        return _snapshot_reply(marker)

    async def Files(self, request, context):
        await self.admission.admin(context, "Files")
        # One computation at a time; callers meanwhile share its answer.
        pending = self._files_pending
        if pending is None:
            pending = self._files_pending = self.loop.run_in_executor(None, self._describe)
            pending.add_done_callback(self._files_done)
        try:
            docs = await asyncio.shield(pending)
        except OSError as e:
            await context.abort(grpc.StatusCode.INTERNAL,
                                f"storage: {self.node.label} cannot list "
                                f"{e.filename or self.node.directory}: {e.strerror}")
        return _files_reply(self.node.directory, docs)

    async def Members(self, request, context):
        """Merge the caller's view into ours (membership.py); answer with ours."""
        await self.admission.peer(context)
        members = self.node.membership
        try:
            incoming = membership.from_pb(request)
            if incoming is not None and members.current != incoming:
                # (Persisting it is an fsync: off the loop.)
                if await self.loop.run_in_executor(None, members.install, incoming):
                    logger.info("%s: membership %s", self.node.label,
                                members.current.describe())
        except membership.MembershipError as e:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"{self.node.label}: {e}")
        except OSError as e:
            await context.abort(grpc.StatusCode.UNAVAILABLE,
                                f"{self.node.label} cannot record the membership: "
                                f"{e.strerror or e}")
        return membership.to_pb(members.current)

    def _files_done(self, _fut: asyncio.Future) -> None:
        self._files_pending = None

    def _describe(self) -> list[dict]:
        """inventory.describe with what the node knows (executor thread)."""
        node = self.node
        current = None
        # Records of each log: those recovery replayed at start, plus those
        # appended since; a log in neither is read once (inventory.Cache).
        report = node.report
        counts = dict(report.logs) if report is not None else {}
        for c, n in list(node.writer.closed.items()):
            counts[c] = counts.get(c, 0) + n
        log = node.log
        if log is not None:
            current = (log.counter, counts.pop(log.counter, 0) + log.records)
        trusted = (node.snapshot_counter,) if node.snapshot_counter else ()
        return inventory.describe(node.directory, self._files_cache, current, trusted,
                                  known=counts)


def _status_reply(node: Node, in_flight: int, loop) -> pb.NodeStatus:
    view = node.membership.current
    ring = view.ring
    low, _high = ring.arc(node.index)
    routing = [pb.RoutingEntry(role=e.role, node_index=e.index, node_id=str(ring.ids[e.index]),
                               address=view.address(e.index))
               for e in ring.routing_table(node.index)]
    return pb.NodeStatus(
        node_index=node.index, node_id=str(node.node_id), arc_low=str(low),
        address=view.address(node.index), keys=len(node.store),
        snapshot_counter=node.snapshot_counter,
        log_counter=node.log.counter if node.log else 0, last_seq=node.seq,
        routing=routing, fsync=node.fsync, uptime_seconds=time.time() - node.started_at,
        pid=os.getpid(), placement=ring.placement, routing_mode=ring.routing,
        rss_bytes=procinfo.rss_bytes(), ready_seconds=node.ready_seconds,
        recovery_seconds=node.recovery_seconds, in_flight=in_flight,
        cpus=cpulist.format_cpulist(affinity.available()),
        event_loop=eventloop.name(loop), failed=node.failed or "",
        replicas=node.config.ring.replicas, groups=_groups(node),
        membership=membership.to_pb(view))


def _groups(node: Node) -> list[pb.GroupStatus]:
    status = getattr(node, "raft_status", None)
    if status is None:
        return []
    return [pb.GroupStatus(group=g["group"], members=g["members"],
                           leader=-1 if g["leader"] is None else g["leader"],
                           state=g["state"], term=g["term"], commit_index=g["commit_index"],
                           last_applied=g["last_applied"], log_index=g["log_index"],
                           match_index=g["match_index"], elections=g["elections"],
                           learning=g.get("learning", False),
                           log_start=g.get("log_start", 1), installs=g.get("installs", 0),
                           compactions=g.get("compactions", 0))
            for g in status().values()]


def _snapshot_reply(marker: SnapshotMarker) -> pb.SnapshotReply:
    path, size, keys = marker.result or ("", 0, 0)
    return pb.SnapshotReply(counter=marker.counter, path=path, bytes=size, keys=keys,
                            skipped=marker.skipped, seconds=marker.seconds,
                            capture_ms=marker.capture_ms)


def _files_reply(directory: str, docs: list[dict]) -> pb.FilesReply:
    return pb.FilesReply(directory=os.path.abspath(directory), files=[
        pb.FileInfo(name=d["file"], kind=d["kind"], counter=d["counter"], bytes=d["bytes"],
                    mtime=d["mtime"], records=-1 if d["records"] is None else d["records"],
                    in_use=d["in_use"], status=d["status"], current=d.get("current", False))
        for d in docs])
