"""The asyncio flavour of the Python API: ``chordctl.aio.connect`` on grpc.aio.

The same operations, results and errors as the sync Client (chordctl/client.py),
awaited instead of blocking::

    import asyncio
    import chordctl.aio

    async def main():
        async with await chordctl.aio.connect("examples/configs/ring4.yaml") as db:
            await db.create(42, b"hello")
            assert (await db.read(42)).value == b"hello"

    asyncio.run(main())

One AsyncClient belongs to the event loop it was connected on (grpc.aio
channels do); any number of coroutines of that loop share it. With
coalescing (the default) their concurrent single operations bound for one
node travel as Batch calls (see _Lane), each caller still getting exactly
its own result. Everything but the channels and the waiting is the sync
client's: settings (ClientBase), errors (error_for), batch results,
key_text and validate, scan's checks and merge order (scan.AsyncScan).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Iterable

import grpc

from chordctl import security
from chordctl.client import (CONNECT_TIMEOUT, LEARN_TIMEOUT, PROBE_METHOD, RING_UP_HINT,
                             STREAM_GRACE, _SILENT, _SPENT,
                             ClientBase, LaneBase, Result,
                             _batch_outcome, _ms, _remaining, _request, _stream_left, _unary,
                             batch_messages,
                             _arc, batch_outcomes, error_for, library_route, node_count,
                             none_answered, probe_failure, reply_result, silent)
from chordctl.config import Config
from chordctl.config import load as load_config
from chordctl.errors import ChordError, InternalError, InvalidInputError, UnavailableError
from chordctl.pb import chord_pb2 as pb
from chordctl.pb import chord_pb2_grpc as pb_grpc
from chordctl.protocol import DEADLINE_EXCEEDED, OPS, key_text, never_sent
from chordctl.scan import AsyncNodeStream, AsyncScan, NodeCount, said_by_a_node

log = logging.getLogger("chordctl.client")

__all__ = ["AsyncClient", "connect"]


class _Op:
    """One operation in a lane; *future* is None for the one its caller sends itself."""

    __slots__ = ("msg", "op", "key", "timeout", "deadline", "future")

    def __init__(self, msg: pb.Operation, op: str, key: str, timeout: float,
                 future: asyncio.Future | None):
        self.msg = msg
        self.op = op
        self.key = key
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout    # bounds its wait in the queue too
        self.future = future

    @property
    def value(self) -> bytes:
        return self.msg.value

class _Lane(LaneBase):
    """Coalesces the single operations bound for one node into Batch calls.

    While fewer than ``depth`` Batch calls are in flight an operation leaves
    at once, a batch of one sent by its caller's own coroutine (no task of
    ours, no added latency when idle). Otherwise it waits in ``pending`` on a future;
    when a call in flight returns, everything queued by then (up to
    ``limit``) leaves as the next Batch, sent by a task that keeps sending
    while operations keep queueing and ends when none are left. Nothing
    waits on a timer: each Batch reply starts the next one. Operations of
    one Batch are applied in order, and each gets its own result.

    Only the event loop's thread touches a lane, so it needs no lock;
    ``pending`` is non-empty only while all ``depth`` slots are busy.
    Batches of two or more go as messages of a BatchStream call, as the
    sync lane's (_send_stream).
    """

    def __init__(self, client, index, stub, address: str, depth: int):
        super().__init__(client, index, stub, address, depth)
        self.streaming = client.stream
        self.streams: list[_Stream] = []        # open and idle


    async def call(self, msg: pb.Operation, op: str, key: str,
                   timeout: float) -> Result | ChordError:
        """Send one operation (alone or with others) and return its outcome."""
        if self.senders < self.depth:
            self.senders += 1
            self.batches += 1
            self.operations += 1
            try:
                return (await self._send([_Op(msg, op, key, timeout, None)]))[0]
            finally:
                self._next()
        item = _Op(msg, op, key, timeout, asyncio.get_running_loop().create_future())
        self.pending.append(item)
        try:
            return await asyncio.wait_for(item.future, timeout)
        except TimeoutError:    # its timeout passed in the queue (_take leaves it out)
            return error_for(DEADLINE_EXCEEDED, "Deadline Exceeded", self.address, timeout)

    def _take(self) -> list[_Op]:
        """The next batch off the queue; callers that gave up waiting (their
        coroutine was cancelled) are left out, as nothing of theirs was sent."""
        while self.pending:
            pending = self.pending
            n = self.close_deadlines(pending, self.client.fit.count(pending, 0, "read"))
            batch = [item for item in pending[:n] if not item.future.done()]
            del pending[:n]
            if batch:
                self.batches += 1
                self.operations += len(batch)
                return batch
        return []

    def _next(self) -> None:
        """A caller's own call is done: send what queued behind it, or free the slot."""
        batch = self._take()
        if batch:
            self.client._spawn(self._drain(batch))
        else:
            self.senders -= 1

    async def _drain(self, batch: list[_Op]) -> None:
        """Send *batch*, then whatever queued meanwhile, until nothing is left."""
        try:
            while batch:
                outcomes = await self._send(batch)
                for item, outcome in zip(batch, outcomes):
                    if not item.future.done():
                        item.future.set_result(outcome)
                batch = self._take()
        except BaseException as e:   # cancelled (the loop is ending): no caller stranded
            err = UnavailableError(f"client: request interrupted ({e!r})")
            for item in batch + self.pending:
                if not item.future.done():
                    item.future.set_result(err)
            self.pending.clear()
            raise
        finally:
            self.senders -= 1

    async def _reopen(self, failed: pb_grpc.KeyValueStub) -> None:
        stub = await self.client._reopen(self.index, failed)
        if self.index is None:
            self.stub, self.address = stub, self.client.address
        else:
            self.node = None
            self.follow()

    async def _send(self, batch: list[_Op]) -> list[Result | ChordError]:
        if self.moved():
            self.follow()
        single = len(batch) == 1
        if self.streaming and not single:
            return await self._send_stream(batch)
        timeout = min(item.timeout for item in batch)
        if single:      # a lone operation goes as its unary call (cheaper than a Batch of one)
            only = batch[0]
            request = _request(only.op, only.key, only.msg.value, only.msg.trace)
        else:
            request = pb.BatchRequest(ops=[item.msg for item in batch], unordered=True)
        # Reads only (R > 1): a share of the time here, the rest at the next
        # node if this one takes the call and never answers (move_on).
        share = self.client.read_share(all(item.op == "read" for item in batch))
        resent = refreshed = False
        while True:
            stub = self.stub
            # the items may have waited in the queue
            left = max(_remaining(batch) * share, 0.001)
            try:
                if single:
                    reply = await _unary(stub, only.op)(request, timeout=left)
                    return [reply_result(only.op, only.key, reply)]
                reply = await stub.Batch(request, timeout=left)
            except grpc.RpcError as e:
                details = e.details() or ""
                if not resent and never_sent(e.code().value[0], details):
                    # Nothing left this process (the channel is backing off from
                    # an earlier outage): a fresh channel, and once more.
                    resent = True
                    try:
                        await self._reopen(stub)
                    except ChordError as err:
                        return [err] * len(batch)
                    continue
                if share < 1 and e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    share = 1.0     # the rest of the time, here or at the next node
                    if silent(details):
                        try:
                            await self.client.move_on(self.index, stub)
                        except ChordError as err:
                            return [err] * len(batch)
                    self.follow()
                    continue
                return [error_for(e.code(), details, self.address, timeout)] * len(batch)
            except grpc.aio.UsageError:     # the channel was closed before the call
                if not refreshed and self.refresh():
                    refreshed = True
                    continue                # replaced by another call: nothing was sent
                return [self.lost_channel()] * len(batch)
            except asyncio.CancelledError:
                if _cancelling():
                    raise
                return [self.client.lost_error(self.address)] * len(batch)
            return batch_outcomes(batch, reply.results, self.address)


    async def _send_stream(self, batch: list[_Op]) -> list[Result | ChordError]:
        """*batch* as one message of a BatchStream call: the outcomes of the
        sync lane's _send_stream (a stream found or ended before this message
        was read: sent again on a fresh one; broken mid-flight: failed, maybe
        applied; no reply by the deadline: DEADLINE_EXCEEDED; UNIMPLEMENTED:
        Batch calls for this lane). The deadline is a timer that cancels the
        stream, as a stream has none per message. Reads only (R > 1): a share
        of the time at this node, the rest at the next if it takes the message
        and never answers (Client.move_on), as a Batch call's reads."""
        share = self.client.read_share(all(item.op == "read" for item in batch))
        while True:
            outcomes = await self._stream_once(batch, share)
            if type(outcomes) is not tuple:
                return outcomes
            spent, stub = outcomes
            share = 1.0         # the rest of the time, here or at the next node
            if spent is _SILENT:    # the node it went to (another batch may have moved on)
                try:
                    await self.client.move_on(self.index, stub)
                except ChordError as err:
                    return [err] * len(batch)
            self.follow()

    async def _stream_once(self, batch: list[_Op], share: float):
        """_send_stream's one try with *share* of the time left: the outcomes,
        or (share < 1) (_SILENT, the stub it went to) for no reply at all
        within it, (_SPENT, the stub) for the node's own answer that it ran
        out of it."""
        timeout = min(item.timeout for item in batch)
        ops = [item.msg for item in batch]
        streams = self.streams
        loop = asyncio.get_running_loop()
        for attempt in (0, 1, 2):     # each retry: nothing was sent
            s = streams.pop() if streams else None
            if s is None or s.stub is not self.stub or s.call.done():
                if s is not None:
                    s.call.cancel()
                try:
                    s = _Stream(self.stub)
                except (grpc.aio.UsageError, AttributeError):   # the channel was closed
                    if attempt < 2 and self.refresh():
                        continue
                    return [self.lost_channel()] * len(batch)
            left = _stream_left(batch, share)
            seq = s.seq = s.seq + 1
            request = pb.BatchRequest(ops=ops, seq=seq, timeout_ms=_ms(left), unordered=True)
            timer = loop.call_later(left + STREAM_GRACE, s.expire)
            try:
                try:
                    await s.call.write(request)
                except (grpc.RpcError, asyncio.InvalidStateError) as e:
                    # The stream was over before this message left (a grpc.aio
                    # call learns that its connection died when it next writes
                    # or reads): nothing was sent; once more on a fresh stream.
                    s.call.cancel()
                    if isinstance(e, grpc.RpcError) \
                            and e.code() == grpc.StatusCode.UNIMPLEMENTED:
                        self.streaming = False
                        return await self._send(batch)
                    if attempt < 2:
                        if attempt == 1:
                            # A fresh stream ended too: the node may be down. A
                            # fresh channel (to another node if it does not
                            # answer: reopen, follow); nothing was sent.
                            try:
                                await self._reopen(self.stub)
                            except ChordError as err:
                                return [err] * len(batch)
                        continue
                    return [UnavailableError(f"client: could not send to {self.address}: "
                                             f"its stream ended before this batch left, three "
                                             f"times (nothing was sent); {RING_UP_HINT}")
                            ] * len(batch)
                reply = await s.call.read()
            except grpc.RpcError as e:
                s.call.cancel()
                code = e.code()
                if code == grpc.StatusCode.UNIMPLEMENTED:   # an older node: nothing was run
                    self.streaming = False
                    return await self._send(batch)
                details = e.details() or ""
                if attempt < 2 and never_sent(code.value[0], details):
                    try:
                        await self._reopen(self.stub)
                    except ChordError as err:
                        return [err] * len(batch)
                    continue
                return [error_for(code, details, self.address, timeout)] * len(batch)
            except asyncio.CancelledError:
                s.call.cancel()
                if _cancelling():       # the caller's task itself: not ours to answer
                    raise
                if s.expired:
                    if share < 1:
                        return _SILENT, s.stub
                    return [error_for(DEADLINE_EXCEEDED, "Deadline Exceeded", self.address,
                                      timeout)] * len(batch)
                return [self.client.lost_error(self.address)] * len(batch)
            finally:
                timer.cancel()
            if reply is grpc.aio.EOF:
                # Ended with OK before answering: the node is stopping, and a
                # message it did not answer it did not read.
                if attempt < 2:
                    continue
                return [UnavailableError(f"client: {self.address} is stopping (it ended the "
                                         f"stream before this batch); {RING_UP_HINT}")
                        ] * len(batch)
            if reply.seq != seq:
                s.call.cancel()
                return [InternalError(f"client: {self.address} answered message {reply.seq} "
                                      f"of the stream for message {seq}")] * len(batch)
            if not self.client._closed:
                streams.append(s)
            code = reply.code
            if code:
                if code == DEADLINE_EXCEEDED:   # in the words of a call's deadline
                    if share < 1:
                        return _SPENT, s.stub
                    return [error_for(DEADLINE_EXCEEDED, "Deadline Exceeded", self.address,
                                      timeout)] * len(batch)
                return [error_for(code, reply.message, self.address, timeout)] * len(batch)
            return batch_outcomes(batch, reply.results, self.address)
        raise AssertionError("unreachable")


class _Stream:
    """One BatchStream call of an aio lane (reader/writer API)."""

    __slots__ = ("stub", "call", "seq", "expired")

    def __init__(self, stub: pb_grpc.KeyValueStub):
        self.stub = stub
        self.call = stub.BatchStream()
        self.seq = 0
        self.expired = False

    def expire(self) -> None:
        """The reply in flight is overdue: end the stream (its read raises)."""
        self.expired = True
        self.call.cancel()


def _cancelling() -> bool:
    """Whether the running task itself is being cancelled (not just a call of it,
    which a channel closed under the call cancels)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class AsyncClient(ClientBase):
    """A connection to a chordctl ring for asyncio programs, on grpc.aio channels.

    The sync Client's API with ``await``: ``create/read/update/delete``,
    ``call``, ``batch``, ``scan``, ``count``, ``close``, ``async with``; the same
    Result objects and the same ChordError subclasses (gRPC's exceptions
    never reach the caller). Routes like the sync client: ``"entry"`` talks
    to one entry node, ``"direct"`` sends each operation to its key's owner
    on a channel per node. With ``coalesce=True`` concurrent coroutines'
    single operations travel as Batch calls per node (see _Lane).

    Bound to the event loop it was connected on. Build it with
    ``await chordctl.aio.connect(...)``.
    """

    CONNECT = "chordctl.aio.connect"

    def __init__(self, config: Config | None = None, target: str | None = None,
                 timeout: float | None = None, route: str | None = None,
                 coalesce: bool = False, coalesce_depth: int | None = None,
                 stream: bool = True):
        super().__init__(config, target, timeout, route, coalesce, coalesce_depth)
        self.stream = stream        # coalesced batches on BatchStream calls (_Lane._send_stream)
        self._lanes: dict[int | None, _Lane] = {}
        self._channel: grpc.aio.Channel | None = None
        self._kv: pb_grpc.KeyValueStub | None = None
        self._node_channels: dict[int, grpc.aio.Channel] = {}
        self._node_stubs: dict[int, pb_grpc.KeyValueStub] = {}
        self._tasks: set[asyncio.Task] = set()     # lanes' senders, held until done
        self._closers: set[asyncio.Task] = set()   # replaced channels' closes (_retire)
        self._lingering: set[grpc.aio.Channel] = set()    # replaced, closed later (move_on)
        self._loop: asyncio.AbstractEventLoop | None = None    # set by connect

    # -- connection -----------------------------------------------------------

    async def connect(self, probe: bool = False) -> str:
        """Open the channel to the first node that answers (probed one after
        another, each for at most CONNECT_TIMEOUT, like the sync client), or
        to a lone address unprobed unless *probe* (chordctl.aio.connect);
        returns its address."""
        if self._closed:
            raise self.closed_error()
        if self._channel is not None:
            self._own_loop()
            return self.address
        self._loop = asyncio.get_running_loop()
        if len(self.addresses) == 1 and not probe:
            self._open(self.addresses[0])
            return self.address
        return await self._first_answering()

    async def _first_answering(self, last: str | None = None) -> str:
        """Adopt the first node that answers, in config order (*last*, one that
        just failed, after every other one); UnavailableError if none does."""
        t0 = time.monotonic()
        failures: list[tuple[str, str]] = []
        order = self.addresses if last is None else \
            [a for a in self.addresses if a != last] + [last]
        for address in order:
            channel = security.aio_channel(self.config, address)
            try:
                await channel.unary_unary(PROBE_METHOD)(b"", timeout=CONNECT_TIMEOUT)
                why = None
            except grpc.RpcError as e:
                why = probe_failure(e, address)
            if why is None:
                if self._channel is not None:   # another coroutine connected meanwhile
                    await channel.close()
                    return self.address
                self._adopt(address, channel)
                return address
            await channel.close()
            failures.append((address, why))
        raise none_answered(failures, time.monotonic() - t0)

    def _open(self, address: str) -> None:
        self._adopt(address, security.aio_channel(self.config, address))

    def _adopt(self, address: str, channel: grpc.aio.Channel) -> None:
        self.address = address
        self._channel = channel
        self._kv = pb_grpc.KeyValueStub(channel)

    def _own_loop(self) -> None:
        """InvalidInputError unless running on the loop this client connected on
        (its grpc.aio channels and lanes belong to that loop)."""
        if self._loop is not None and asyncio.get_running_loop() is not self._loop:
            raise InvalidInputError(
                f"client: this AsyncClient belongs to the event loop it was connected on; "
                f"open one in this loop ({self.CONNECT})")

    def _entry(self) -> pb_grpc.KeyValueStub:
        if self._closed:
            raise self.closed_error()
        self._own_loop()
        if self._kv is None:
            raise UnavailableError("client: not connected; use `await chordctl.aio.connect(...)`")
        return self._kv

    def _node_stub(self, index: int) -> pb_grpc.KeyValueStub:
        """A stub for the config's node *index*, on a channel of its own (kept)."""
        stub = self._node_stubs.get(index)
        if stub is None:
            if self._closed:
                raise self.closed_error()
            channel = security.aio_channel(self.config, self.node_address(index))
            self._node_channels[index] = channel
            stub = self._node_stubs[index] = pb_grpc.KeyValueStub(channel)
        return stub

    def _stub_for(self, key: str) -> tuple[int | None, pb_grpc.KeyValueStub, str]:
        """(the key's owner or None, stub, address) to send an operation on *key*
        to: the entry node's, or the node serving the owner's arc (serving)."""
        if self._ring is None:
            return None, self._entry(), self.address
        owner = self._ring.owner(int(key))
        i = self.serving(owner) if self._passed else owner
        return owner, self._node_stub(i), self.node_address(i)

    async def _reopen(self, index: int | None, failed: pb_grpc.KeyValueStub,
                      linger: float = 0.0) -> pb_grpc.KeyValueStub:
        """A stub on a fresh channel in place of *failed* (the entry node's when
        *index* is None), unless another failure replaced it already. With
        direct routing *index* is the arc's owner: *failed*'s node is passed
        over (R > 1) and the stub is to the node serving the arc now.
        *linger*: seconds before a replaced entry channel is closed."""
        if self._closed:
            raise self.closed_error()
        if index is None:
            if failed is self._kv:
                old, dead = self._channel, self.address
                self._channel = None
                try:
                    if len(self.addresses) > 1:
                        # The entry node cannot be reached: any other node of
                        # the ring routes the call as well (this one last).
                        try:
                            if await self._first_answering(last=dead) != dead:
                                log.info("client: %s cannot be reached; the entry node is "
                                         "now %s", dead, self.address)
                        except UnavailableError:
                            self._open(dead)
                    else:
                        self._open(dead)
                finally:
                    if self._channel is None:       # cancelled meanwhile
                        self._channel = old
                    elif linger > 0 and old is not None:
                        # Closed after *linger* s, or by close() if that is sooner.
                        self._lingering.add(old)
                        asyncio.get_running_loop().call_later(linger, self._unlinger, old)
                    else:
                        self._retire(old)
                if self._closed:                    # close() ran during the await
                    new, self._channel, self._kv = self._channel, None, None
                    self._retire(new)
                    raise self.closed_error()
            return self._kv
        for i, stub in list(self._node_stubs.items()):
            if stub is failed:
                del self._node_stubs[i]
                self._retire(self._node_channels.pop(i, None))
                if not await self._learn_moves(i):     # moved: its new address next
                    self.pass_over(i)
                break
        return self._node_stub(self.serving(index))

    async def _learn_moves(self, failed: int) -> bool:
        """The sync Client._learn_moves: ask the other nodes where the ring has
        node *failed*; whether it moved."""
        for i in self._learn_order(failed) or ():
            channel = security.aio_channel(self.config, self.node_address(i))
            try:
                reply = await pb_grpc.AdminStub(channel).Members(
                    pb.Membership(), timeout=LEARN_TIMEOUT)
            except grpc.aio.AioRpcError:
                continue
            finally:
                await channel.close()
            return self._learned(reply, failed)
        return False

    async def move_on(self, index: int | None, quiet: pb_grpc.KeyValueStub) -> bool:
        """The sync Client.move_on: a call of reads had no answer from the node
        behind *quiet* within its share; the arc's next replica (direct
        routing, *index* its owner) or another entry node takes this call's
        rest and the next calls. Whether there is another node to go to."""
        if index is not None:
            return self.pass_silent(index, next(
                (i for i, stub in list(self._node_stubs.items()) if stub is quiet), None))
        if quiet is not self._kv:
            return True             # another call moved on already
        before = self.address
        await self._reopen(None, quiet, linger=self.timeout)
        return self.address != before

    def _unlinger(self, channel: grpc.aio.Channel) -> None:
        if channel in self._lingering:
            self._lingering.discard(channel)
            self._retire(channel)

    def _retire(self, channel: grpc.aio.Channel | None) -> None:
        """Close a replaced channel, without waiting for it here (calls other
        coroutines still have on it fail); close() waits for it."""
        if channel is None:
            return
        task = asyncio.get_running_loop().create_task(channel.close())
        self._closers.add(task)
        task.add_done_callback(self._closers.discard)

    def _lane(self, key: str) -> _Lane:
        index = None if self._ring is None else self._ring.owner(int(key))
        lane = self._lanes.get(index)
        if lane is None:
            if index is None:
                stub, address = self._entry(), self.address
            else:       # the owner's: a lane follows a passed-over owner as it sends
                stub, address = self._node_stub(index), self.node_address(index)
            lane = self._lanes[index] = _Lane(self, index, stub, address, self.coalesce_depth)
        return lane

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def lost_error(self, address: str) -> UnavailableError:
        """The outcome of a call whose channel was closed under it: maybe applied."""
        if self._closed:
            return UnavailableError(f"client: the client was closed while a call to {address} "
                                    f"was in flight; it may or may not have been applied")
        return UnavailableError(f"client: the call to {address} was cancelled when its channel "
                                f"closed; it may or may not have been applied")

    async def close(self) -> None:
        """Close every channel; calls in flight fail, later calls raise. Idempotent."""
        self._closed = True
        channels = [self._channel, *self._node_channels.values(), *self._lingering]
        self._lingering.clear()
        self._channel = self._kv = None
        self._node_channels.clear()
        self._node_stubs.clear()
        for channel in channels:
            if channel is not None:
                await channel.close()
        if self._tasks:     # the lanes' senders end as their calls fail
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._closers:
            await asyncio.gather(*self._closers, return_exceptions=True)
        for lane in self._lanes.values():
            while lane.streams:
                lane.streams.pop().call.cancel()
        self._lanes.clear()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    # -- operations -----------------------------------------------------------

    async def call(self, op: str, key: int | str, value: bytes | None = None,
                   trace: bool = False, timeout: float | None = None) -> Result:
        """One operation by name; returns its Result, raises ChordError on failure."""
        key = key_text(key)
        self.check(op, key, value, trace)
        if self._closed:
            raise self.closed_error()
        self._own_loop()
        t = self.timeout if timeout is None else self.deadline(timeout)
        if self.coalesce:
            out = await self._lane(key).call(
                pb.Operation(op=OPS[op], key=key, value=value or b"", trace=trace), op, key, t)
        else:
            out = await self._call_unary(op, key, value, trace, t)
        if out.__class__ is Result:
            return out
        raise out

    async def _call_unary(self, op: str, key: str, value: bytes | None, trace: bool,
                          t: float) -> Result | ChordError:
        request = _request(op, key, value, trace)
        deadline = time.monotonic() + t
        share = self.read_share(op == "read")     # as the sync Client's _call_unary
        resent = refreshed = False
        while True:
            index, kv, address = self._stub_for(key)
            try:
                reply = await _unary(kv, op)(
                    request, timeout=max(deadline - time.monotonic(), 0.001) * share)
            except grpc.RpcError as e:
                details = e.details() or ""
                if not resent and never_sent(e.code().value[0], details):
                    resent = True
                    await self._reopen(index, kv)
                    continue
                if share < 1 and e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    share = 1.0
                    if silent(details):
                        await self.move_on(index, kv)
                    continue
                return error_for(e.code(), details, address, t)
            except grpc.aio.UsageError:     # its channel was closed: by close(), or replaced
                if not refreshed and not self._closed:
                    refreshed = True
                    continue
                return self.closed_error()
            except asyncio.CancelledError:
                if _cancelling():
                    raise
                return self.lost_error(address)
            return reply_result(op, key, reply)
        raise AssertionError("unreachable")

    async def create(self, key: int | str, value: bytes, trace: bool = False) -> Result:
        """Create *key* with *value*; AlreadyExistsError if it exists."""
        return await self.call("create", key, value, trace)

    async def read(self, key: int | str, trace: bool = False) -> Result:
        """The value of *key* (``.value``); NotFoundError if it does not exist."""
        return await self.call("read", key, None, trace)

    async def update(self, key: int | str, value: bytes, trace: bool = False) -> Result:
        """Replace the value of *key*; NotFoundError if it does not exist."""
        return await self.call("update", key, value, trace)

    async def delete(self, key: int | str, trace: bool = False) -> Result:
        """Delete *key*; NotFoundError if it does not exist."""
        return await self.call("delete", key, None, trace)

    async def batch(self, ops: Iterable[tuple[str, int | str, bytes | None]],
                    timeout: float | None = None) -> list[Result | ChordError]:
        """Many operations in one Batch call to the entry node, applied in order.

        Exactly the sync ``Client.batch``: one Result or ChordError per
        operation, in order (a failed operation is its own error and the rest
        still run); InvalidInputError for a malformed tuple or an unknown
        operation before anything is sent; UnavailableError if the call
        fails; past ``limits.max_batch_ops`` several calls, one after another.
        """
        slots, items, msgs = batch_messages(ops)
        if msgs:
            t = self.timeout if timeout is None else self.deadline(timeout)
            for start, end in self.fit.runs(msgs):
                reply = await self._entry_batch(pb.BatchRequest(ops=msgs[start:end]), t)
                for (slot, op, key), res in zip(items[start:end], reply.results):
                    slots[slot] = _batch_outcome(res, op, key, self.address)
        return slots

    async def _entry_batch(self, request: pb.BatchRequest, t: float) -> pb.BatchReply:
        for attempt in (0, 1):
            kv = self._entry()
            try:
                return await kv.Batch(request, timeout=t)
            except grpc.RpcError as e:
                details = e.details() or ""
                if attempt == 0 and never_sent(e.code().value[0], details):
                    await self._reopen(None, kv)
                    continue
                raise error_for(e.code(), details, self.address, t) from None
            except grpc.aio.UsageError:     # its channel was closed: by close(), or replaced
                if attempt == 0 and not self._closed:
                    continue
                raise self.closed_error() from None
            except asyncio.CancelledError:
                if _cancelling():
                    raise
                raise self.lost_error(self.address) from None
        raise AssertionError("unreachable")

    # -- scan and count (chordctl/scan.py) ------------------------------------

    def _each_node(self, start: str = "", end: str = ""
                   ) -> list[tuple[int | None, str, str, pb_grpc.KeyValueStub, str]]:
        """(index, label, address, stub, ring id) of every node a scan asks: the
        config's that can hold keys in [start, end), or only the --target node."""
        if self.target or self.config is None:
            return [(None, "the node", self.address, self._entry(), "")]
        if self._closed:
            raise self.closed_error()
        self._own_loop()
        return [(i, label, address, self._node_stub(i), ring_id)
                for i, label, address, ring_id in self._ring_nodes(start, end)]

    async def scan(self, start: int | str | None = None, end: int | str | None = None,
                   limit: int = 1000, keys_only: bool = False, partial: bool = False,
                   page_size: int = 0) -> AsyncScan:
        """An opened scan.AsyncScan of the keys in [start, end), ascending by key.

        ``async for entry in await db.scan(a, b)``: scan.Entry objects, at most
        *limit* (0: all); every node's first page has arrived when this
        returns, so a node that is down fails here (or, with *partial*, is
        left out and named in ``.skipped``). The sync ``Client.scan``.
        """
        limit = self._scan_count(limit, "limit")
        request = pb.ScanRequest(start=self._key_bound(start, "--from"),
                                 end=self._key_bound(end, "--to"),
                                 limit=limit + 1 if limit else 0, keys_only=keys_only,
                                 page_size=self._scan_count(page_size, "page_size",
                                                            2 ** 32 - 1))
        streams = [AsyncNodeStream(stub, req, label, address, self.timeout, index,
                                   to_error=error_for, alternates=rest)
                   for req, ((index, label, address, stub, _id), *rest)
                   in self._sources(request)]
        return await AsyncScan(streams, limit, partial).open()

    def _sources(self, request) -> list[tuple[object, list[tuple]]]:
        """The sync Client._sources: a node each, or with ring.replicas > 1 an
        arc each, its replicas in turn."""
        if self.target or self.config is None or self.config.ring.replicas == 1:
            return [(request, [node]) for node in self._each_node(request.start, request.end)]
        if self._closed:
            raise self.closed_error()
        self._own_loop()
        out = []
        for g, members in self._ring_arcs(request.start, request.end):
            req = type(request)()
            req.CopyFrom(request)
            req.arc = g
            out.append((req, [(i, label, address, self._node_stub(i), ring_id)
                              for i, label, address, ring_id in members]))
        return out

    async def count(self, start: int | str | None = None,
                    end: int | str | None = None) -> list[NodeCount]:
        """One scan.NodeCount per node (asked at once): its keys in [start, end),
        or its error -- the sync ``Client.count``."""
        request = pb.CountRequest(start=self._key_bound(start, "--from"),
                                  end=self._key_bound(end, "--to"))
        sources = self._sources(request)
        return list(await asyncio.gather(*(self._count_source(req, options)
                                           for req, options in sources)))

    async def _count_source(self, request: pb.CountRequest, options: list[tuple]) -> NodeCount:
        """One source's count: its replicas in turn while they are unavailable."""
        told = None     # a replica's own words, kept over failing to reach the next
        for k, (index, label, address, stub, ring_id) in enumerate(options):
            reply = await self._count_one(stub, request)
            if isinstance(reply, grpc.RpcError):
                if said_by_a_node(reply.details() or ""):
                    told = (reply, index, label, address, ring_id)
                if k < len(options) - 1 and reply.code() == grpc.StatusCode.UNAVAILABLE:
                    continue
                reply, index, label, address, ring_id = told or \
                    (reply, index, label, address, ring_id)
            return node_count(reply, index, label, address, ring_id, _arc(request), options[0])

    async def _count_one(self, stub: pb_grpc.KeyValueStub,
                         request: pb.CountRequest) -> pb.CountReply | grpc.RpcError:
        try:
            return await stub.Count(request, timeout=self.timeout)
        except grpc.RpcError as e:
            return e
        except grpc.aio.UsageError:
            raise self.closed_error() from None


async def connect(config: Config | str | os.PathLike | None = None, *,
                  target: str | None = None, route: str | None = None,
                  timeout: float | None = None, coalesce: bool = True,
                  stream: bool = True) -> AsyncClient:
    """Open an AsyncClient on a ring: ``chordctl.connect``, awaited.

    The same parameters as the sync ``chordctl.connect``: *config* a path or
    a loaded Config (None with *target*), *route* ``"direct"`` (the default
    with a config and no target) or ``"entry"``, *timeout* seconds per request, *coalesce* concurrent
    coroutines' calls as Batch calls per node, *stream* send those batches as
    messages of one BatchStream per node (the default here). Checks that a node answers,
    so a ring that is down fails here with UnavailableError.
    """
    if config is not None and not isinstance(config, Config):
        config = load_config(os.fspath(config))
    client = AsyncClient(config, target=target, timeout=timeout,
                         route=library_route(config, target, route), coalesce=coalesce,
                         stream=stream)
    try:
        await client.connect(probe=True)
    except BaseException:
        await client.close()
        raise
    return client
