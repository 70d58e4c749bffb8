"""The gRPC client shared by the one-shot commands, the shell and the tests.

One channel for the client's life; every call is asynchronous underneath
(``submit`` returns a future) with the configured deadline; gRPC failures
become ChordError subclasses, so callers never see grpc exceptions.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import os
import queue
import threading
import time
from _thread import allocate_lock as _allocate_lock
from typing import Callable, Iterable

import grpc

from chordctl import security
from chordctl.config import ClientConfig, Config, LimitsConfig
from chordctl.config import load as load_config
from chordctl.core import membership
from chordctl.core.membership import Membership
from chordctl.core.ring import Ring
from chordctl.errors import ChordError, InternalError, InvalidInputError, UnavailableError
from chordctl.pb import chord_pb2 as pb
from chordctl.pb import chord_pb2_grpc as pb_grpc
from chordctl.protocol import (DEADLINE_EXCEEDED, OPS, UNAVAILABLE, BatchFit, allow_key_digits,
                               code_name, describe, error_class, first_share, key_text,
                               never_sent, parse_key, unknown_operation, validate)

# _Lane._stream_once's reads with their share of the time spent: no reply at
# all (the node takes messages and does not answer), or the node's own answer.
_SILENT = object()
_SPENT = object()

STREAM_GRACE = 0.05     # s past a stream message's deadline before the client gives up on
#                         its stream (the node answers an expired message itself by then)

CONNECT_TIMEOUT = 1.0
# Direct routing with ring.replicas > 1: a node found unreachable (a call to it
# never left: its connection was refused) is passed over for this long, its
# arcs' next replica taking its operations, then it is tried again.
PASS_OVER = 2.0
# Direct routing: a node that cannot be reached makes the client ask the
# others where the ring has it (it may have moved), at most this often, each
# asked at most this long.
LEARN_EVERY = 1.0
LEARN_TIMEOUT = 0.5
# Seconds; longer timeouts (inf too) are this: gRPC's deadline overflows past
# ~9.2e9 s from now, and such a call failed at once with DEADLINE_EXCEEDED.
MAX_TIMEOUT = 1e9
_LIMITS = LimitsConfig()     # without a config: the defaults a node has
log = logging.getLogger("chordctl.client")
ROUTES = ("entry", "direct")
RING_UP_HINT = "is the ring up? (`chordctl ring show`; start it with `chordctl cluster up`)"


@dataclasses.dataclass(frozen=True)
class Result:
    """The outcome of one operation, as every front end renders it."""

    op: str
    key: str
    value: bytes | None
    node_index: int
    node_id: str
    message: str
    route: tuple[str, ...] = ()


def error_for(code: grpc.StatusCode | int, message: str, address: str = "",
              waited: float | None = None, source: str = "client.timeout") -> ChordError:
    """The ChordError for a gRPC status (a code object or its number; see protocol).

    Node-made messages (they name their node) reach the user as they are;
    gRPC's own words become ours, naming the address and what to do, and go
    to the debug log (``--log-level debug``). *waited*: the call's deadline
    in seconds, for "no reply within ...", and *source* where it came from.
    """
    number = code if isinstance(code, int) else code.value[0]
    cls = error_class(number)
    node_made = message.startswith(("node ", "client:"))
    if not node_made and number in (UNAVAILABLE, DEADLINE_EXCEEDED):
        log.debug("client: %s: gRPC %s: %s", address, code_name(number), message)
    if number == UNAVAILABLE and not message:
        message = f"client: {address} is unreachable; {RING_UP_HINT}"
    elif number == DEADLINE_EXCEEDED and "deadline" in message.lower() and not node_made:
        within = f"within {waited:g}s ({source})" if waited else "within the deadline"
        message = (f"client: no reply from {address} {within}; a write may still be "
                   f"applied (read the key before retrying it; a read changed nothing); "
                   f"the node may be overloaded, "
                   f"stuck, or without a majority of its replica group -- {RING_UP_HINT}")
    elif not node_made and "Channel closed!" in message:   # "Stream removed (...)" too
        # gRPC's words for a call cancelled by closing its channel: close(), or
        # a channel replaced after an outage while other calls were on it.
        message = (f"client: the connection to {address} was closed while the call was in "
                   f"flight (the client was closed, or replaced the connection after an "
                   f"outage); it may or may not have been applied")
    elif never_sent(number, message):
        # Only gRPC's own text means *this* client could not connect; a node's
        # relayed "node 0 ... could not reach node 3 ... (failed to connect ...)"
        # must reach the user as is, naming the node that is really down.
        message = cannot_connect(address, message)
    elif number == UNAVAILABLE and not node_made:
        # gRPC's own words for a connection lost mid-call ("Socket closed",
        # "Connection reset by peer"); every node-made message names its node.
        message = (f"client: lost the connection to {address} before the reply; a write "
                   f"may still be applied (read the key before retrying it; a read changed "
                   f"nothing); the node may "
                   f"have stopped -- {RING_UP_HINT}")
    return cls(message)


def _reason(details: str) -> str:
    """Why gRPC could not connect, in a few words of ours."""
    low = details.lower()
    if "connection refused" in low:
        return "connection refused: no node listens there"
    if "timeout" in low or "timed out" in low or "deadline" in low:
        return "no answer"
    if "dns" in low or "resolv" in low or "name or service" in low:
        return "the host name does not resolve"
    if "unreachable" in low or "no route" in low:
        return "no route to the host"
    return "unreachable"


def _tls_like(details: str) -> bool:
    """A failed handshake or a socket closed before any reply: likely a TLS mismatch."""
    low = details.lower()
    return ("handshake" in low and ("tls" in low or "ssl" in low)) or "ssl_error" in low \
        or "socket closed" in low or "connection reset" in low


def cannot_connect(address: str, details: str) -> str:
    """The message for gRPC's "failed to connect ..." to *address*."""
    if _tls_like(details):
        # What to check in the config (security.connect_failure names the fields).
        return f"client: cannot connect to {address}{security.connect_failure(details)}"
    return f"client: cannot connect to {address} ({_reason(details)}); {RING_UP_HINT}"


_PENDING = object()     # an _Op's outcome before its reply


class _Op:
    """One operation in a lane: what to send, and who gets its outcome.

    A synchronous caller (``Client.call`` from any thread) waits on *waiter*,
    a lock it holds until the outcome is set (or it is asked to lead); an
    asynchronous one (``submit``) gets *callback* called instead.
    """

    __slots__ = ("op", "key", "value", "trace", "callback", "waiter", "timeout", "deadline",
                 "outcome", "lead")

    def __init__(self, op: str, key: str, value: bytes | None, trace: bool, timeout: float,
                 callback: Callable | None = None):
        self.op = op
        self.key = key
        self.value = value
        self.trace = trace
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout    # bounds its wait in the queue too
        self.callback = callback
        self.outcome = _PENDING
        self.lead: list[_Op] | None = None     # a batch this caller is to send
        if callback is None:
            self.waiter = _allocate_lock()
            self.waiter.acquire()
        else:
            self.waiter = None


class LaneBase:
    """What a coalescing lane of either client flavour holds (client.py's
    _Lane, threads; aio.py's _Lane, one event loop)."""

    def __init__(self, client, index: int | None, stub, address: str, depth: int):
        self.client = client
        self.index = index          # the config's node, or None for the entry node
        self.node = index           # the node it sends to: index's arc's serving node
        self.stub = stub
        self.address = address
        self.depth = depth          # Batch calls in flight at most
        self.pending: list = []     # operations waiting for a free slot
        self.senders = 0            # slots taken
        self.batches = 0            # Batch calls sent, and the operations they carried
        self.operations = 0

    def follow(self) -> None:
        """Send where the client sends now: with direct routing to the node
        serving this lane's arc (ClientBase.serving: after a failure moved it,
        or once the owner is no longer passed over); to the entry node's
        current channel (another call may have replaced it)."""
        client = self.client
        if self.index is None:
            kv = client._kv
            if kv is not None and kv is not self.stub:
                self.stub, self.address = kv, client.address
            return
        node = client.serving(self.index)
        if node != self.node:
            self.node = node
            self.stub = client._node_stub(node)
            self.address = client.node_address(node)

    @staticmethod
    def close_deadlines(pending: list, n: int) -> int:
        """How many of the first *n* of *pending* have deadlines close to the
        first one's (within a quarter of the shorter timeout): a batch goes
        with the earliest deadline of its calls (_remaining), so a call of a
        short timeout must not cut short the calls of a long one."""
        if n < 2:
            return n
        head = pending[0]
        deadline, timeout = head.deadline, head.timeout
        for i in range(1, n):
            o = pending[i]
            t = o.timeout
            if abs(o.deadline - deadline) > 0.25 * (t if t < timeout else timeout):
                return i
        return n

    def lost_channel(self) -> ChordError:
        """The outcome of a call whose channel was closed under it again and again."""
        if self.client._closed:
            return self.client.closed_error()
        return UnavailableError(f"client: the channel to {self.address} was replaced twice "
                                f"under this call (nothing was sent); try again")

    def refresh(self) -> bool:
        """This lane's channel was closed under it: take the client's current
        one (another thread replaced it). False if the client itself is closed."""
        if self.client._closed:
            return False
        if self.index is not None:
            self.node = None
        self.follow()
        return True

    def moved(self) -> bool:
        """Whether follow() may change where this lane sends (checked per batch)."""
        if self.index is None:
            return self.stub is not self.client._kv
        return self.node != self.index or bool(self.client._passed)


class _Lane(LaneBase):
    """Coalesces single operations bound for one node into Batch calls.

    While fewer than ``depth`` Batch calls are in flight an operation leaves
    at once (a batch of one: no added latency when idle); otherwise it waits
    and leaves with everything else that queued up behind the calls in
    flight. Each operation still gets its own result, exactly as unary, and
    operations in one Batch are applied in the order they were added.

    Who sends: a synchronous caller that finds a free slot sends the batch
    itself, a blocking call on its own thread (no hand-off to gRPC's
    completion thread and back). When its reply comes it hands the slot to
    one of the callers queued behind it, which wakes and sends everything
    queued by then -- each thread wakes once, for its own reply or to send.
    Operations submitted with a callback ride along, or are sent with a
    future when no synchronous caller waits.
    """

    def __init__(self, client: "Client", index: int | None, stub: pb_grpc.KeyValueStub,
                 address: str, depth: int):
        super().__init__(client, index, stub, address, depth)
        self.lock = threading.Lock()
        # Batches of two or more go as messages of a BatchStream call (one
        # per slot in use, kept open: _send_stream) unless the node lacks it.
        self.streaming = client.stream
        self.streams: list[_Stream] = []        # open and idle

    def _take(self) -> list[_Op]:
        """The next batch off the queue (the caller holds the lock): as many as
        one Batch call carries (protocol.BatchFit), of close deadlines."""
        n = self.close_deadlines(self.pending, self.client.fit.count(self.pending, 0, "read"))
        batch = self.pending[:n]
        if batch:
            del self.pending[:n]
            self.batches += 1
            self.operations += len(batch)
        return batch

    # -- asynchronous: submit ---------------------------------------------------

    def add(self, item: _Op) -> None:
        with self.lock:
            self.pending.append(item)
            if self.senders >= self.depth:
                return
            self.senders += 1
            batch = self._take()
        self._send_async(batch)

    def _send_async(self, batch: list[_Op], share: float | None = None) -> None:
        """Send *batch* with a future (this caller holds a slot). A send that
        fails at once (the channel closed) is answered here, and the slot goes
        on in this loop, not in a recursion as deep as the queue. *share*: of
        the time left, what this node gets (Client.read_share; 1 once a call
        of reads moved on)."""
        refreshed = False
        while batch:
            if self.moved():
                self.follow()
            timeout = min(item.timeout for item in batch)
            if share is None:
                share = self.client.read_share(all(b.op == "read" for b in batch))
            stub = self.stub
            try:
                fut = _call(stub, batch, max(_remaining(batch) * share, 0.001), future=True)
            except ValueError:          # the channel was closed under us
                if not refreshed and self.refresh():
                    refreshed = True    # replaced by another thread: nothing was sent
                    continue
                outcomes = [self.lost_channel()] * len(batch)
            except Exception as e:      # a bug of ours: fail the batch, keep the lane going
                outcomes = [InternalError(f"client: could not send to {self.address} "
                                          f"({e!r})")] * len(batch)
            else:
                fut.add_done_callback(lambda f, b=batch, t=timeout, s=share, k=stub:
                                      self._async_done(f, b, t, s, k))
                return
            self._deliver(batch, outcomes)
            batch, share = self._pass_on(), None

    def _move_on(self, batch: list[_Op], details: str, stub: pb_grpc.KeyValueStub) -> None:
        """A call of reads had no answer within its share: the rest of its time
        at the next node (Client.move_on), on a thread of its own (not the
        failed channel's: moving on may close it), the slot still held."""
        try:
            if silent(details):
                self.client.move_on(self.index, stub)
        except ChordError as e:
            self._next()
            self._deliver(batch, [e] * len(batch))
            return
        self.follow()
        self._send_async(batch, share=1.0)

    def _async_done(self, fut: grpc.Future, batch: list[_Op], timeout: float,
                    share: float = 1.0, stub: pb_grpc.KeyValueStub | None = None) -> None:
        if share < 1:
            details = _timed_out(fut)
            if details is not None:
                threading.Thread(target=self._move_on, args=(batch, details, stub),
                                 name="chordctl-move-on", daemon=True).start()
                return
        try:
            outcomes = self._outcomes(batch, fut.result())
        except grpc.RpcError as e:
            outcomes = [error_for(e.code(), e.details() or "", self.address, timeout)] \
                * len(batch)
        except grpc.FutureCancelledError:
            outcomes = [UnavailableError("client: request cancelled")] * len(batch)
        self._next()        # first: a callback may make a blocking call on this lane
        self._deliver(batch, outcomes)

    # -- synchronous: call --------------------------------------------------------

    def call(self, item: _Op) -> Result | ChordError:
        """Send *item* (alone or with whatever queued up) and wait for its outcome."""
        with self.lock:
            self.pending.append(item)
            batch = None
            if self.senders < self.depth:
                self.senders += 1
                batch = self._take()
        while True:
            if batch is None:
                try:
                    answered = item.waiter.acquire(True, max(item.deadline - time.monotonic(),
                                                             0.0))
                except BaseException:   # Ctrl-C while waiting: leave, strand no one
                    self._withdraw(item)
                    raise
                if not answered:        # its timeout passed in the queue
                    self._withdraw(item)
                    if item.outcome is not _PENDING:
                        return item.outcome
                    return error_for(DEADLINE_EXCEEDED, "Deadline Exceeded", self.address,
                                     item.timeout)
                if item.lead is None:
                    return item.outcome
                batch, item.lead = item.lead, None
            # This thread holds a sender slot: send, hand the slot on, answer.
            # *batch* holds this item (a lead's batch holds its leader, and a
            # free slot means nothing queued ahead of it).
            self._send_and_deliver(batch)
            if item.outcome is not _PENDING:
                return item.outcome
            batch = None

    def _withdraw(self, item: _Op) -> None:
        """*item*'s caller stopped waiting (interrupted): take it out of the
        queue, or, if the slot was just handed to it, pass the batch on
        without it. An item already in a call in flight is answered to nobody."""
        with self.lock:
            batch, item.lead = item.lead, None
            if batch is None:
                try:
                    self.pending.remove(item)
                except ValueError:
                    pass
                return
        batch = [b for b in batch if b is not item]
        if batch:
            self._send_async(batch)
        else:
            self._next()

    def _reopen(self) -> None:
        stub = self.client.reopen(self.index, self.stub)
        if self.index is None:
            self.stub, self.address = stub, self.client.address
        else:
            self.node = None
            self.follow()

    def _send_and_deliver(self, batch: list[_Op]) -> None:
        """Send *batch*, hand the slot on, then answer the batch: a callback
        that makes a blocking call on this client does not wait for a slot
        its own thread holds."""
        try:
            outcomes = self._send_blocking(batch)
        except BaseException as e:   # Ctrl-C in the sending thread: no caller stranded
            self._next()
            self._deliver(batch, [UnavailableError(f"client: request interrupted ({e!r})")]
                          * len(batch))
            raise
        self._next()
        self._deliver(batch, outcomes)

    def _send_blocking(self, batch: list[_Op]) -> list[Result | ChordError]:
        if self.moved():
            self.follow()
        if self.streaming and len(batch) > 1:
            return self._send_stream(batch)
        timeout = min(item.timeout for item in batch)
        # Reads only (R > 1): a share of the time here, the rest at the next
        # node if this one takes the call and never answers (Client.move_on).
        share = self.client.read_share(all(b.op == "read" for b in batch))
        resent = refreshed = False
        while True:
            stub = self.stub
            try:
                return self._outcomes(batch, _call(stub, batch,
                                                   max(_remaining(batch) * share, 0.001)))
            except grpc.RpcError as e:
                details = e.details() or ""
                if not resent and never_sent(e.code().value[0], details):
                    # Nothing left this process (the channel is backing off from
                    # an earlier outage, or the node is down): a fresh channel,
                    # to another entry node if this one does not answer.
                    resent = True
                    self._reopen()
                    continue
                if share < 1 and e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    share = 1.0     # the rest of the time, here or at the next node
                    if silent(details):     # the node it went to: another call may have moved
                        self.client.move_on(self.index, stub)
                    self.follow()
                    continue
                return [error_for(e.code(), details, self.address, timeout)] * len(batch)
            except ValueError:      # the channel was closed under us
                if not refreshed and self.refresh():
                    refreshed = True
                    continue        # replaced by another thread: nothing was sent
                return [self.lost_channel()] * len(batch)

    def _send_stream(self, batch: list[_Op]) -> list[Result | ChordError]:
        """Send *batch* as one message of a BatchStream call and wait for its
        reply: the node serves it as a Batch call, at about half the node's
        CPU of one (BENCHMARKS.md). The stream is this slot's while in use,
        then back in ``streams`` for the next batch.

        Outcomes as a Batch call's: a stream found ended (the node stopped or
        restarted since), or ended by the node before reading this message
        (it is stopping: it ends streams only between messages), or a call
        that never left this process, is sent once more (on a fresh stream;
        nothing was applied); one that broke while the message was in flight
        fails as a Batch call failing mid-flight does, maybe applied. Without
        a reply by the deadline (the node answers an expired message itself;
        a node that cannot answer at all) the watchdog cancels the stream:
        DEADLINE_EXCEEDED. A node without BatchStream (UNIMPLEMENTED): this
        lane goes back to Batch calls. Reads only (R > 1): a share of the time
        at this node, the rest at the next if it takes the message and never
        answers (Client.move_on), as a Batch call's reads.
        """
        share = self.client.read_share(all(b.op == "read" for b in batch))
        while True:
            outcomes = self._stream_once(batch, share)
            if type(outcomes) is not tuple:
                return outcomes
            spent, stub = outcomes
            share = 1.0         # the rest of the time, here or at the next node
            if spent is _SILENT:    # the node it went to (another batch may have moved on)
                self.client.move_on(self.index, stub)
            self.follow()

    def _stream_once(self, batch: list[_Op], share: float):
        """_send_stream's one try with *share* of the time left: the outcomes,
        or (share < 1) (_SILENT, the stub it went to) for no reply at all
        within it, (_SPENT, the stub) for the node's own answer that it ran
        out of it."""
        timeout = min(item.timeout for item in batch)
        ops = [pb.Operation(op=OPS[b.op], key=b.key, value=b.value or b"", trace=b.trace)
               for b in batch]
        watchdog = self.client.watchdog()
        streams = self.streams
        for attempt in (0, 1, 2):     # each retry: nothing was sent
            s = streams.pop() if streams else None
            if s is None or s.stub is not self.stub or not s.replies.is_active():
                if s is not None:
                    s.discard()
                try:
                    s = _Stream(self.stub)
                except ValueError:      # the channel was closed under us
                    if attempt < 2 and self.refresh():
                        continue
                    return [self.lost_channel()] * len(batch)
            left = _stream_left(batch, share)
            seq = s.seq = s.seq + 1
            request = pb.BatchRequest(ops=ops, seq=seq, timeout_ms=_ms(left), unordered=True)
            watchdog.arm(s, time.monotonic() + left + STREAM_GRACE)
            try:
                s.box.put(request)
                reply = next(s.replies)
            except StopIteration:
                # Ended with OK before answering: the node is stopping, and a
                # message it did not answer it did not read.
                watchdog.disarm(s)
                s.discard()
                if attempt < 2:
                    continue
                return [UnavailableError(f"client: {self.address} is stopping (it ended the "
                                         f"stream before this batch); {RING_UP_HINT}")
                        ] * len(batch)
            except grpc.RpcError as e:
                watchdog.disarm(s)
                s.discard()
                if s.expired:
                    if share < 1:
                        return _SILENT, s.stub
                    return [error_for(DEADLINE_EXCEEDED, "Deadline Exceeded", self.address,
                                      timeout)] * len(batch)
                code = e.code()
                if code == grpc.StatusCode.UNIMPLEMENTED:   # an older node: nothing was run
                    log.debug("client: %s has no BatchStream; Batch calls", self.address)
                    self.streaming = False
                    return self._send_blocking(batch)
                details = e.details() or ""
                if attempt < 2 and never_sent(code.value[0], details):
                    self._reopen()
                    continue
                return [error_for(code, details, self.address, timeout)] * len(batch)
            except BaseException:       # Ctrl-C while waiting: its reply would come later
                watchdog.disarm(s)
                s.discard()
                raise
            watchdog.disarm(s)
            if reply.seq != seq:
                s.discard()
                return [InternalError(f"client: {self.address} answered message {reply.seq} "
                                      f"of the stream for message {seq}")] * len(batch)
            if self.client._closed:
                s.discard()
            else:
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

    def close_streams(self) -> None:
        while self.streams:
            self.streams.pop().discard()

    # -- both -----------------------------------------------------------------------

    def _outcomes(self, batch: list[_Op], reply) -> list[Result | ChordError]:
        """The outcome of each operation from *reply*: a unary reply for a batch
        of one, else a BatchReply."""
        if len(batch) == 1 and not isinstance(reply, pb.BatchReply):
            item = batch[0]
            return [reply_result(item.op, item.key, reply)]
        return batch_outcomes(batch, reply.results, self.address)

    def _deliver(self, batch: list[_Op], outcomes: list) -> None:
        for item, outcome in zip(batch, outcomes):
            item.outcome = outcome
            if item.callback is None:
                item.waiter.release()
                continue
            try:
                item.callback(outcome)
            except Exception:       # a caller's bug must not strand the rest
                log.exception("client: a result callback failed")

    def _next(self) -> None:
        """A sender is done: hand its slot on (_pass_on), sending with a future
        the batch no synchronous caller waits in."""
        batch = self._pass_on()
        if batch:
            self._send_async(batch)

    def _pass_on(self) -> list[_Op] | None:
        """Hand a finished sender's slot, with the next batch, to a waiting
        synchronous caller in that batch (None); else return the batch, for
        the caller to send with a future; else free the slot (None)."""
        with self.lock:
            if not self.pending:
                self.senders -= 1
                return None
            batch = self._take()
            leader = None
            for item in batch:
                if item.callback is None:
                    leader = item
                    leader.lead = batch
                    break
        if leader is not None:
            leader.waiter.release()
            return None
        return batch


class _Stream:
    """One BatchStream call of a lane: requests go into *box*, which a thread
    of gRPC's reads; replies come from *replies*, one per request, in order."""

    __slots__ = ("stub", "box", "replies", "seq", "due", "expired")

    def __init__(self, stub: pb_grpc.KeyValueStub):
        self.stub = stub
        self.box: queue.SimpleQueue = queue.SimpleQueue()
        self.replies = stub.BatchStream(iter(self.box.get, None))
        self.seq = 0
        self.due = 0.0          # when the reply in flight is overdue (the watchdog's)
        self.expired = False    # the watchdog cancelled it

    def discard(self) -> None:
        """Cancel the call and end gRPC's thread reading *box*."""
        self.replies.cancel()
        self.box.put(None)


class _Watchdog:
    """Cancels a stream whose reply is overdue: a blocking read of a stream
    has no timeout of its own. One thread per Client, started with its first
    stream, asleep until the earliest reply due; arming one due later than
    that (every message of the same timeout) wakes nothing."""

    def __init__(self):
        self.cond = threading.Condition(threading.Lock())
        self.armed: set[_Stream] = set()
        self.target = math.inf      # when the thread wakes next
        self.thread: threading.Thread | None = None
        self.stopped = False

    def arm(self, stream: _Stream, due: float) -> None:
        with self.cond:
            stream.due = due
            self.armed.add(stream)
            if due < self.target and not self.stopped:
                self.target = due
                if self.thread is None:
                    self.thread = threading.Thread(target=self._run, daemon=True,
                                                   name="chordctl-stream-watchdog")
                    self.thread.start()
                else:
                    self.cond.notify()

    def disarm(self, stream: _Stream) -> None:
        with self.cond:
            self.armed.discard(stream)

    def stop(self) -> None:
        with self.cond:
            self.stopped = True
            self.cond.notify()

    def _run(self) -> None:
        with self.cond:
            while not self.stopped:
                now = time.monotonic()
                target = math.inf
                for stream in list(self.armed):
                    if stream.due <= now:
                        self.armed.discard(stream)
                        stream.expired = True
                        stream.replies.cancel()
                    elif stream.due < target:
                        target = stream.due
                self.target = target
                self.cond.wait(None if target == math.inf else target - now)


class ClientBase:
    """What the sync Client and chordctl.aio.AsyncClient share: the settings
    (route, nodes, timeout, limits), the check of an operation, closed.

    No channel here: each flavour opens its own kind (grpc or grpc.aio).
    """

    def __init__(self, config: Config | None = None, target: str | None = None,
                 timeout: float | None = None, route: str | None = None,
                 coalesce: bool = False, coalesce_depth: int | None = None):
        self.config = config
        self.route = route or (config.client.route if config else "entry")
        if self.route not in ROUTES:
            raise InvalidInputError(f"client: route {self.route!r} is not one of "
                                    f"{', '.join(ROUTES)}")
        if self.route == "direct" and config is None:
            raise InvalidInputError("client: direct routing needs the config (-c PATH)")
        self.coalesce = coalesce
        # Batch calls in flight per node before operations wait and coalesce:
        # 2 to the one entry node; 1 to each owner with direct routing, where
        # n lanes already keep n calls in flight and a second call per lane
        # only halves each batch (4 nodes, 64 in flight: YCSB A 9.3k -> 12.4k
        # ops/s, C 10.6k -> 13.7k; BENCHMARKS.md).
        self.coalesce_depth = (coalesce_depth if coalesce_depth is not None
                               else 1 if self.route == "direct" else 2)
        if self.coalesce_depth < 1:
            raise InvalidInputError("client: coalesce_depth must be at least 1")
        self._lanes: dict = {}      # node index (None: the entry node) -> its lane
        self._ring = Ring.from_config(config) if self.route == "direct" else None
        self.target = target
        if target:
            self.addresses = [target]
        elif config is not None:
            self.addresses = [n.address for n in config.nodes]
        else:
            raise InvalidInputError("client: no node to talk to; give --target HOST:PORT or a "
                                    "config with -c")
        self.timeout = self.deadline(timeout if timeout is not None else (
            config.client.timeout if config else ClientConfig.timeout))
        self.limits = config.limits if config else _LIMITS
        self.fit = BatchFit(self.limits.max_value_bytes, self.limits.max_batch_ops,
                            self.limits.max_key_digits)
        self.max_value = self.limits.max_value_bytes
        self.max_digits = self.limits.max_key_digits
        allow_key_digits(self.max_digits)
        self.address: str | None = None
        self._closed = False
        # Direct routing with ring.replicas > 1: node index -> until when it is
        # passed over (it could not be reached; serving()).
        self._passed: dict[int, float] = {}
        self._replicas = config.ring.replicas if config is not None else 1
        # Direct routing: where the ring has each node (membership.py), the
        # config's until a node that cannot be reached makes the client ask
        # the others (learn_moves).
        self.membership = (Membership.from_config(config)
                           if config is not None and self.route == "direct" else None)
        self._learn_after = 0.0

    def node_address(self, i: int) -> str:
        """Where node *i* is: the ring's membership as this client knows it."""
        if self.membership is not None:
            return self.membership.address(i)
        return self.config.nodes[i].address

    def _learn_order(self, failed: int) -> list[int] | None:
        """Direct routing, node *failed* could not be reached: the nodes to ask
        where the ring has it (the others, in order), or None when it is not
        the time (at most once per LEARN_EVERY s)."""
        now = time.monotonic()
        if self.membership is None or self.membership.n < 2 or now < self._learn_after:
            return None
        self._learn_after = now + LEARN_EVERY
        return [i for i in range(self.membership.n) if i != failed]

    def _learned(self, reply: pb.Membership, failed: int) -> bool:
        """Merge a node's membership into this client's; whether node *failed*
        moved (its next call goes to its new address)."""
        try:
            theirs = membership.from_pb(reply)
            if theirs is None:
                return False
            new = self.membership.merge(theirs)
        except membership.MembershipError as e:
            log.debug("client: %s", e)
            return False
        old, self.membership = self.membership, new
        moved = old.address(failed) != new.address(failed)
        if moved:
            log.info("client: node %d moved from %s to %s (membership epoch %d); update the "
                     "config", failed, old.address(failed), new.address(failed), new.epoch)
        return moved

    def serving(self, owner: int) -> int:
        """The node to send an operation on the arc of node *owner* to (direct
        routing): the owner, or, while it is passed over (pass_over), the arc's
        first replica that is not; the owner again when all are."""
        passed = self._passed
        if not passed:
            return owner
        now = time.monotonic()
        for i in self._ring.replicas(owner, self._replicas):
            until = passed.get(i)
            if until is None:
                return i
            if until <= now:
                passed.pop(i, None)
                return i
        return owner

    def pass_over(self, index: int) -> None:
        """Node *index* could not be reached: with direct routing and
        ring.replicas > 1, send its arcs' operations to their next replica for
        PASS_OVER seconds (any replica routes an operation to its arc's leader)."""
        if self._ring is not None and self._replicas > 1:
            fresh = index not in self._passed
            self._passed[index] = time.monotonic() + PASS_OVER
            if fresh:
                log.info("client: %s cannot be reached; its arcs' operations go to their "
                         "next replica for %.0f s", self.node_address(index), PASS_OVER)

    def read_share(self, reads_only: bool) -> float:
        """The share of its time a call gets at its first node (protocol.first_share,
        as a node's router gives one): READ_FIRST for a call of reads only on a
        ring.replicas > 1 ring with another node to go to (not a --target)."""
        return first_share(reads_only, self._replicas > 1 and not self.target and
                           self.config is not None and len(self.config.nodes) > 1)

    def pass_silent(self, owner: int, node: int | None) -> bool:
        """Direct routing: node *node* took a call of reads on *owner*'s arc and
        did not answer within its share; pass it over (its arcs' next replica
        takes their calls for PASS_OVER s). Whether the arc goes elsewhere now
        (True too for *node* None: its channel was replaced, serving() says)."""
        if node is None:
            return True
        self.pass_over(node)
        return self.serving(owner) != node

    @property
    def closed(self) -> bool:
        return self._closed

    @staticmethod
    def deadline(timeout) -> float:
        """A timeout in seconds, checked: a positive number; past MAX_TIMEOUT
        (inf too) it is MAX_TIMEOUT, as gRPC fails a call at once whose
        deadline overflows."""
        if timeout.__class__ is bool or not isinstance(timeout, (int, float)):
            raise InvalidInputError(f"client: timeout must be a number of seconds, "
                                    f"not {timeout!r}")
        if not timeout > 0:     # nan too
            raise InvalidInputError(f"client: timeout must be a positive number of seconds, "
                                    f"not {timeout!r}")
        return float(timeout) if timeout < MAX_TIMEOUT else MAX_TIMEOUT

    CONNECT = "chordctl.connect"    # how to open a new one, for the message below

    def closed_error(self) -> InvalidInputError:
        return InvalidInputError(f"client: this client is closed; open a new one "
                                 f"({self.CONNECT})")

    def lane_stats(self) -> dict[str, int]:
        """Batch calls the coalescing lanes sent, and the operations in them."""
        lanes = list(self._lanes.values())
        return {"batches": sum(lane.batches for lane in lanes),
                "operations": sum(lane.operations for lane in lanes)}

    def check(self, op: str, key: str, value: bytes | None, trace: bool = False) -> None:
        """Raise InvalidInputError for anything a node would refuse (protocol.validate),
        and for a value that is not bytes or a trace that is not a bool (protobuf
        would raise TypeError inside a lane, failing every operation coalesced
        with it)."""
        if value is not None and not isinstance(value, bytes):
            raise InvalidInputError(f"the value of {op} {key} is a {type(value).__name__}; "
                                    f"give bytes")
        if trace.__class__ is not bool and not isinstance(trace, int):
            raise InvalidInputError(f"client: trace must be True or False, not {trace!r}")
        validate(op, key, value, self.limits)

    @staticmethod
    def _scan_count(value, what: str, most: int = 2 ** 63 - 2) -> int:
        """A scan's *limit* or *page_size*: a whole number from 0 (InvalidInputError
        for anything else, before a message is built)."""
        if value.__class__ is bool or not isinstance(value, int):
            raise InvalidInputError(f"scan: {what} must be a whole number, not {value!r}")
        if not 0 <= value <= most:
            raise InvalidInputError(f"scan: {what} must be between 0 and {most}, not {value}")
        return value

    def _key_bound(self, key: int | str | None, what: str) -> str:
        if key is None or key == "":
            return ""
        key = key_text(key)
        try:
            parse_key(key, self.max_digits)
        except ValueError as e:
            raise InvalidInputError(f"scan: {what}: {e}") from None
        return key

    def _ring_arcs(self, start: str, end: str) -> list[tuple[int, list[tuple[int, str, str, str]]]]:
        """ring.replicas > 1: (arc, its replicas as (index, label, address, ring
        id), owner first) of every arc that can hold keys in [start, end)."""
        from chordctl.scan import nodes_for_range
        ring = self._ring or Ring.from_config(self.config)
        r = self.config.ring.replicas
        out = []
        for g in nodes_for_range(ring, int(start or 0), int(end) if end else None):
            members = []
            for i in ring.replicas(g, r):
                ring_id = str(ring.ids[i])
                members.append((i, f"arc {g} on node {i} (id {ring_id})",
                                self.node_address(i), ring_id))
            out.append((g, members))
        return out

    def _ring_nodes(self, start: str, end: str) -> list[tuple[int, str, str, str]]:
        """(index, label, address, ring id) of every config node that can hold
        keys in [start, end) (scan.nodes_for_range)."""
        from chordctl.scan import nodes_for_range
        ring = self._ring or Ring.from_config(self.config)
        out = []
        for i in nodes_for_range(ring, int(start or 0), int(end) if end else None):
            ring_id = str(ring.ids[i])
            out.append((i, f"node {i} (id {ring_id})", self.node_address(i), ring_id))
        return out


class Client(ClientBase):
    """A connection to a chordctl ring, shared safely by any number of threads.

    Talks to one entry node (``target``, or the config's first that answers),
    or with ``route="direct"`` (``client.route: direct``) sends each
    operation straight to the key's owner, computed from the config like a
    token-aware driver. With ``coalesce=True`` concurrent single operations
    travel as Batch calls (see _Lane), each still getting its own result.

    Keys are ints or decimal strings; values are bytes. Every operation
    returns a Result or raises a ChordError subclass (NotFoundError,
    AlreadyExistsError, InvalidInputError, UnavailableError, ...); gRPC's
    own exceptions never reach the caller. Most programs call
    ``chordctl.connect()`` instead of building one.
    """

    def __init__(self, config: Config | None = None, target: str | None = None,
                 timeout: float | None = None, route: str | None = None,
                 coalesce: bool = False, coalesce_depth: int | None = None,
                 stream: bool = False):
        super().__init__(config, target, timeout, route, coalesce, coalesce_depth)
        # Coalesced batches on BatchStream calls (_Lane._send_stream): 15-20% less
        # node CPU per op, but on a 2-core machine shared with its nodes no more
        # ops/s (gRPC's sync streams wake a thread of theirs per message) and a
        # thread per open stream, so Batch calls stay the sync default.
        self.stream = stream
        self._watchdog: _Watchdog | None = None
        self._lanes: dict[int | None, _Lane] = {}
        self._node_stubs: dict[int, pb_grpc.KeyValueStub] = {}
        self._node_channels: dict[int, grpc.Channel] = {}
        self._channel: grpc.Channel | None = None
        self._kv: pb_grpc.KeyValueStub | None = None
        self._admin: pb_grpc.AdminStub | None = None
        # Guards opening and replacing channels (threads share the client).
        self._lock = threading.RLock()
        # submit_ordered: key -> operations waiting for the one in flight.
        self._order_lock = threading.Lock()
        self._waiting: dict[int, collections.deque] = {}
        self._ordered_local = threading.local()     # _send_ordered's queue per thread

    # -- connection -----------------------------------------------------------

    def connect(self, probe: bool = False) -> str:
        """Open the channel to the first node that answers; returns its address.
        A lone address (a --target) is opened unprobed, so the first call says
        what fails, unless *probe* (chordctl.connect: a ring that is down fails
        there)."""
        if self._channel is not None:
            return self.address
        with self._lock:
            if self._closed:
                raise self.closed_error()
            if self._channel is not None:
                return self.address
            if len(self.addresses) == 1 and not probe:
                self.open(self.addresses[0])
                return self.address
            return self._first_answering()

    def _first_answering(self, last: str | None = None) -> str:
        # One after another in config order, each for at most CONNECT_TIMEOUT;
        # a refused connection fails at once, so a ring that is down fails fast.
        # *last*: an address that just failed, tried after every other one.
        t0 = time.monotonic()
        failures: list[tuple[str, str]] = []
        order = self.addresses if last is None else \
            [a for a in self.addresses if a != last] + [last]
        for address in order:
            channel = security.channel(self.config, address)
            why = _probe(channel, address)
            if why is None:
                self._adopt(address, channel)
                return address
            channel.close()
            failures.append((address, why))
        raise none_answered(failures, time.monotonic() - t0)

    def open(self, address: str) -> None:
        """Use *address* without checking that it answers (calls fail until it does)."""
        self._adopt(address, security.channel(self.config, address))

    def _adopt(self, address: str, channel: grpc.Channel) -> None:
        self.address = address
        self._channel = channel
        self._kv = pb_grpc.KeyValueStub(channel)
        self._admin = pb_grpc.AdminStub(channel)

    def close(self) -> None:
        """Close every channel; calls in flight fail, later calls raise. Idempotent."""
        with self._lock:
            self._closed = True
            if self._channel is not None:
                self._channel.close()
                self._channel = None
            for channel in self._node_channels.values():
                channel.close()
            self._node_channels.clear()
            self._node_stubs.clear()
            for lane in self._lanes.values():
                lane.close_streams()
            self._lanes.clear()
            if self._watchdog is not None:
                self._watchdog.stop()

    def watchdog(self) -> _Watchdog:
        """The streams' watchdog (made once)."""
        wd = self._watchdog
        if wd is None:
            with self._lock:
                wd = self._watchdog
                if wd is None:
                    wd = self._watchdog = _Watchdog()
        return wd

    def stub_for(self, key: str) -> tuple[pb_grpc.KeyValueStub, str]:
        """The stub to send an operation on *key* to, and its address."""
        if self._ring is None:
            self.connect()
            return self._kv, self.address
        i = self._ring.owner(int(key))
        if self._passed:
            i = self.serving(i)
        return self._node_stub(i), self.node_address(i)

    def alternate_for(self, key: str, tried: set[str]) -> tuple[pb_grpc.KeyValueStub, str] | None:
        """Another node to send an operation on *key* to, after the nodes at the
        addresses *tried* could not be reached: with entry routing any other
        node of the config (it routes the request), with direct routing and
        ring.replicas > 1 the next replica of the key's arc. None when there
        is none left (a --target, or the owner of an unreplicated arc)."""
        if self.target or self.config is None:
            return None
        nodes = self.config.nodes
        if self._ring is None:
            candidates = range(len(nodes))
        elif self.config.ring.replicas > 1:
            candidates = self._ring.replicas(self._ring.owner(int(key)), self.config.ring.replicas)
        else:
            return None
        for i in candidates:
            if self.node_address(i) in tried:
                self.pass_over(i)
            else:
                return self._node_stub(i), self.node_address(i)
        return None

    def move_on(self, index: int | None, quiet: pb_grpc.KeyValueStub) -> bool:
        """A call of reads to the node behind *quiet* had no answer within its
        share (read_share): the node takes calls and does not answer (stopped,
        cut off, starved). This call's rest and the next calls go elsewhere:
        with direct routing (*index*: the arc's owner) to the arc's next
        replica, the quiet node passed over for PASS_OVER s; with entry
        routing (*index* None) through another entry node (the quiet one
        last; its channel closed once the calls on it had their time, as it
        may only be slow). Whether there is another node to go to."""
        if index is not None:
            return self.pass_silent(index, next(
                (i for i, stub in list(self._node_stubs.items()) if stub is quiet), None))
        if quiet is not self._kv:
            return True             # another call moved on already
        before = self.address
        self.reopen(None, quiet, linger=self.timeout)   # it logs the new entry node
        return self.address != before

    def _node_stub(self, index: int) -> pb_grpc.KeyValueStub:
        """A stub for the config's node *index*, on a channel of its own (kept)."""
        stub = self._node_stubs.get(index)
        if stub is None:
            with self._lock:
                if self._closed:
                    raise self.closed_error()
                stub = self._node_stubs.get(index)
                if stub is None:
                    channel = security.channel(self.config, self.node_address(index))
                    self._node_channels[index] = channel
                    stub = self._node_stubs[index] = pb_grpc.KeyValueStub(channel)
        return stub

    def reopen(self, index: int | None, failed: pb_grpc.KeyValueStub,
               linger: float = 0.0) -> pb_grpc.KeyValueStub:
        """A stub on a fresh channel in place of *failed* (the entry node's when
        *index* is None), unless another failure replaced it already. With
        direct routing *index* is the arc's owner: *failed*'s node is passed
        over (R > 1) and the stub is to the node serving the arc now.
        *linger*: seconds before a replaced entry channel is closed."""
        with self._lock:
            if self._closed:
                raise self.closed_error()
            if index is None:
                if failed is self._kv:
                    old = self._channel
                    self._channel = None
                    if len(self.addresses) > 1:
                        # The entry node cannot be reached: any other node of
                        # the ring routes the call as well (this one last).
                        dead = self.address
                        try:
                            if self._first_answering(last=dead) != dead:
                                log.info("client: %s cannot be reached; the entry node is "
                                         "now %s", dead, self.address)
                        except UnavailableError:
                            self.open(dead)
                    else:
                        self.open(self.address)
                    _close_later(old, linger)
                return self._kv
            lost = None
            for i, stub in self._node_stubs.items():
                if stub is failed:
                    del self._node_stubs[i]
                    _close_later(self._node_channels.pop(i, None))
                    lost = i
                    break
            if lost is None:
                return self._node_stub(self.serving(index))
        # Asked without the lock (up to LEARN_TIMEOUT a node): close() and the
        # other lanes go on meanwhile.
        if not self._learn_moves(lost):     # moved: its new address next
            self.pass_over(lost)
        return self._node_stub(self.serving(index))

    def _learn_moves(self, failed: int) -> bool:
        """Ask the other nodes where the ring has node *failed* (the first that
        answers); whether it moved (Admin.Members, a question)."""
        for i in self._learn_order(failed) or ():
            with security.channel(self.config, self.node_address(i)) as channel:
                try:
                    reply = pb_grpc.AdminStub(channel).Members(pb.Membership(),
                                                               timeout=LEARN_TIMEOUT)
                except grpc.RpcError:
                    continue
            return self._learned(reply, failed)
        return False

    def _lane(self, key: str) -> _Lane:
        index = None if self._ring is None else self._ring.owner(int(key))
        lane = self._lanes.get(index)
        if lane is None:
            if index is None:
                stub, address = self.stub_for(key)
            else:       # the owner's: a lane follows a passed-over owner as it sends
                stub, address = self._node_stub(index), self.node_address(index)
            with self._lock:
                lane = self._lanes.get(index)
                if lane is None:
                    lane = self._lanes[index] = _Lane(self, index, stub, address,
                                                      self.coalesce_depth)
        return lane

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- operations -----------------------------------------------------------

    def submit(self, op: str, key: int | str, value: bytes | None = None, trace: bool = False,
               callback: Callable[[Result | ChordError], None] | None = None,
               timeout: float | None = None) -> None:
        """Send one operation without waiting; *callback* gets a Result or a ChordError.

        The callback runs on a thread of the client's (gRPC's, or a thread
        whose own call carried this operation): keep it short. A call that
        never left this client because the channel is still backing off from
        an earlier outage (gRPC's "failed to connect") is sent once more on a
        fresh channel: the node may be back already, and nothing was sent, so
        even a write is safe to repeat.
        """
        key = key_text(key)
        self.check(op, key, value, trace)
        if self._closed:
            raise self.closed_error()
        t = self.timeout if timeout is None else self.deadline(timeout)
        deliver = callback if callback is not None else (lambda _outcome: None)
        if self.coalesce:
            self._lane(key).add(_Op(op, key, value, trace, t, deliver))
            return
        self._send_unary(op, key, value, trace, deliver, t, retry=True)

    def _send_unary(self, op: str, key: str, value: bytes | None, trace: bool,
                    callback: Callable[[Result | ChordError], None], t: float,
                    retry: bool, share: float | None = None,
                    deadline: float | None = None) -> None:
        # *share*: of the time left, what this node gets (read_share; 1 once
        # a read moved on); *deadline*: the operation's, kept when it does.
        if share is None:
            share = self.read_share(op == "read")
        if deadline is None:
            deadline = time.monotonic() + t
        kv, address = self.stub_for(key)
        try:
            fut = _unary(kv, op).future(_request(op, key, value, trace),
                                        timeout=max(deadline - time.monotonic(), 0.001) * share)
        except ValueError:          # its channel was closed: by close(), or replaced
            if retry and not self._closed:
                self._send_unary(op, key, value, trace, callback, t, False, share, deadline)
            else:
                callback(self.closed_error())
            return

        def again() -> None:
            try:
                self._reopen_for(key, kv)
                self._send_unary(op, key, value, trace, callback, t, retry=False, share=share)
            except ChordError as e:
                callback(e)

        def elsewhere(details: str) -> None:
            try:
                if silent(details):
                    self.move_on(self._arc_of(key), kv)
                self._send_unary(op, key, value, trace, callback, t, retry, 1.0, deadline)
            except ChordError as e:
                callback(e)

        def done(f: grpc.Future) -> None:
            if retry and _never_sent(f):
                # Not on this thread: it is the failed channel's own, and
                # reopening closes that channel (a close from its own thread
                # waits for itself: the client hung for good).
                threading.Thread(target=again, name="chordctl-resend", daemon=True).start()
            elif share < 1 and _timed_out(f) is not None:
                threading.Thread(target=elsewhere, args=(_timed_out(f),),
                                 name="chordctl-move-on", daemon=True).start()
            else:
                callback(_outcome(f, op, key, address, t))

        fut.add_done_callback(done)

    def _arc_of(self, key: str) -> int | None:
        """With direct routing the owner of *key* (its arc), else None (the entry node)."""
        return None if self._ring is None else self._ring.owner(int(key))

    def _reopen_for(self, key: str, failed: pb_grpc.KeyValueStub) -> None:
        self.reopen(self._arc_of(key), failed)

    def submit_ordered(self, op: str, key: str, value: bytes | None,
                       callback: Callable[[Result | ChordError], None],
                       trace: bool = False) -> None:
        """Like submit, but operations on the same key are sent one after another.

        Concurrent gRPC calls may be served in any order; a pipelining client
        (the shell) still wants `create 1 a` before `read 1`. Each key gets its
        own little queue: the next operation on a key is sent when the previous
        one's reply arrives; different keys still travel concurrently.
        """
        key = key_text(key)
        self.check(op, key, value, trace)
        k = parse_key(key, self.max_digits)[0]
        item = (op, key, value, callback, trace)
        with self._order_lock:
            queue = self._waiting.get(k)
            if queue is not None:
                queue.append(item)
                return
            self._waiting[k] = collections.deque()
        self._send_ordered(k, item)

    def _send_ordered(self, k: int, item) -> None:
        """Send *item*, the next operation on key *k*. A send that completes at
        once (the client closed, a call that failed at once) runs the next
        one's send from its callback: on this thread those queue here and go
        from this loop, not as a recursion as deep as the key's queue."""
        local = self._ordered_local
        todo = getattr(local, "todo", None)
        if todo is not None:        # inside a send on this thread
            todo.append((k, item))
            return
        local.todo = todo = collections.deque([(k, item)])
        try:
            while todo:
                k, item = todo.popleft()
                try:
                    self._send_ordered_one(k, item)
                except Exception:   # a caller's callback: the rest still go
                    log.exception("client: a result callback failed")
        finally:
            local.todo = None

    def _send_ordered_one(self, k: int, item) -> None:
        op, key, value, callback, trace = item

        def done(outcome: Result | ChordError) -> None:
            try:
                callback(outcome)
            finally:
                with self._order_lock:
                    queue = self._waiting[k]
                    nxt = queue.popleft() if queue else None
                    if nxt is None:
                        del self._waiting[k]
                if nxt is not None:
                    self._send_ordered(k, nxt)

        try:
            self.submit(op, key, value, trace, callback=done)
        except ChordError as e:
            done(e)

    def call(self, op: str, key: int | str, value: bytes | None = None,
             trace: bool = False, timeout: float | None = None) -> Result:
        """One operation by name, waiting for its reply; raises ChordError on failure.

        The reply is waited for on the calling thread: with coalescing the
        thread sends its own Batch when the node's lane is free (see _Lane),
        without it a blocking unary call; no other thread is woken for it.
        """
        key = key_text(key)
        self.check(op, key, value, trace)
        if self._closed:
            raise self.closed_error()
        t = self.timeout if timeout is None else self.deadline(timeout)
        if self.coalesce:
            out = self._lane(key).call(_Op(op, key, value, trace, t))
        else:
            out = self._call_unary(op, key, value, trace, t)
        if out.__class__ is Result:
            return out
        raise out

    def _call_unary(self, op: str, key: str, value: bytes | None, trace: bool,
                    t: float) -> Result | ChordError:
        request = _request(op, key, value, trace)
        deadline = time.monotonic() + t
        # A read (R > 1): a share of the time at the first node, the rest at
        # the next if it takes the call and never answers (move_on).
        share = self.read_share(op == "read")
        resent = refreshed = False
        while True:
            kv, address = self.stub_for(key)
            try:
                reply = _unary(kv, op)(request,
                                       timeout=max(deadline - time.monotonic(), 0.001) * share)
            except grpc.RpcError as e:
                details = e.details() or ""
                if not resent and never_sent(e.code().value[0], details):
                    resent = True
                    self._reopen_for(key, kv)
                    continue
                if share < 1 and e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    share = 1.0     # the rest of the time, here or at the next node
                    if silent(details):
                        self.move_on(self._arc_of(key), kv)
                    continue
                return error_for(e.code(), details, address, t)
            except ValueError:      # its channel was closed: by close(), or replaced
                if not refreshed and not self._closed:
                    refreshed = True
                    continue
                return self.closed_error() if self._closed else UnavailableError(
                    f"client: the channel to {address} was replaced twice under this call "
                    f"(nothing was sent); try again")
            return reply_result(op, key, reply)

    def create(self, key: int | str, value: bytes, trace: bool = False) -> Result:
        """Create *key* with *value*; AlreadyExistsError if it exists."""
        return self.call("create", key, value, trace)

    def read(self, key: int | str, trace: bool = False) -> Result:
        """The value of *key* (``.value``); NotFoundError if it does not exist."""
        return self.call("read", key, None, trace)

    def update(self, key: int | str, value: bytes, trace: bool = False) -> Result:
        """Replace the value of *key*; NotFoundError if it does not exist."""
        return self.call("update", key, value, trace)

    def delete(self, key: int | str, trace: bool = False) -> Result:
        """Delete *key*; NotFoundError if it does not exist."""
        return self.call("delete", key, None, trace)

    def batch(self, ops: Iterable[tuple[str, int | str, bytes | None]],
              timeout: float | None = None) -> list[Result | ChordError]:
        """Many operations in one Batch call to the entry node, applied in order.

        *ops* are (op, key, value) tuples, value None for read and delete.
        Returns one Result or ChordError per operation, in order, as the
        node answered each: a failed operation (a missing key, a bad key or
        value) is its own error and the rest still run. Raises
        InvalidInputError for a malformed tuple or an unknown operation
        before anything is sent, and UnavailableError if the call fails.
        More than ``limits.max_batch_ops`` operations go as several calls,
        one after another.
        """
        slots, items, msgs = batch_messages(ops)
        if msgs:
            self.connect()
            t = self.timeout if timeout is None else self.deadline(timeout)
            for start, end in self.fit.runs(msgs):
                reply, address = self._entry_batch(pb.BatchRequest(ops=msgs[start:end]), t)
                for (slot, op, key), res in zip(items[start:end], reply.results):
                    slots[slot] = _batch_outcome(res, op, key, address)
        return slots

    def _entry_batch(self, request: pb.BatchRequest, t: float) -> tuple[pb.BatchReply, str]:
        """One Batch call to the entry node, and that node's address. A call
        that never left (the node is down, or its channel was replaced under
        this thread) goes once more, through another node if this one does
        not answer (reopen)."""
        for attempt in (0, 1):
            self.connect()
            kv, address = self._kv, self.address
            try:
                return kv.Batch(request, timeout=t), address
            except grpc.RpcError as e:
                details = e.details() or ""
                if attempt == 0 and never_sent(e.code().value[0], details):
                    self.reopen(None, kv)
                    continue
                raise error_for(e.code(), details, address, t) from None
            except ValueError:      # its channel was closed: by close(), or replaced
                if self._closed:
                    raise self.closed_error() from None
                if attempt == 0:
                    continue
                raise UnavailableError(f"client: the channel to {address} was replaced "
                                       f"twice under this call; try again") from None
        raise AssertionError("unreachable")

    # -- scan and count (chordctl/scan.py) ------------------------------------

    def _each_node(self, start: str = "", end: str = ""
                   ) -> list[tuple[int | None, str, str, pb_grpc.KeyValueStub, str]]:
        """(index, label, address, stub, ring id) of every node a scan asks: the
        config's that can hold keys in [start, end), or only the --target node
        (which answers for its own keys)."""
        if self.target or self.config is None:
            self.connect()
            return [(None, "the node", self.address, self._kv, "")]
        return [(i, label, address, self._node_stub(i), ring_id)
                for i, label, address, ring_id in self._ring_nodes(start, end)]

    def _sources(self, request) -> list[tuple[object, list[tuple]]]:
        """What a scan or count asks: (request, [(index, label, address, stub,
        ring id), ...]) per source, the first asked first. A node each; with
        ring.replicas > 1, an arc each (request.arc set), its replicas in turn."""
        if self.target or self.config is None or self.config.ring.replicas == 1:
            return [(request, [node]) for node in self._each_node(request.start, request.end)]
        out = []
        for g, members in self._ring_arcs(request.start, request.end):
            req = type(request)()
            req.CopyFrom(request)
            req.arc = g
            out.append((req, [(i, label, address, self._node_stub(i), ring_id)
                              for i, label, address, ring_id in members]))
        return out

    def scan(self, start: int | str | None = None, end: int | str | None = None,
             limit: int = 1000,
             keys_only: bool = False, partial: bool = False, page_size: int = 0):
        """A scan.Scan of the keys in [start, end) across the ring, ascending by key.

        Iterate it for scan.Entry objects (at most *limit*; 0: all); it holds
        about (nodes x 3) pages at a time. See chordctl/scan.py.
        """
        from chordctl import scan as scan_mod
        limit = self._scan_count(limit, "limit")
        request = pb.ScanRequest(start=self._key_bound(start, "--from"),
                                 end=self._key_bound(end, "--to"),
                                 limit=limit + 1 if limit else 0, keys_only=keys_only,
                                 page_size=self._scan_count(page_size, "page_size", 2 ** 32 - 1))
        streams = [scan_mod.NodeStream(stub, req, label, address, self.timeout, index,
                                       to_error=error_for, alternates=rest)
                   for req, ((index, label, address, stub, _id), *rest)
                   in self._sources(request)]
        return scan_mod.Scan(streams, limit, partial).open()

    def count(self, start: int | str | None = None, end: int | str | None = None) -> list:
        """One scan.NodeCount per node (in parallel; per arc with ring.replicas >
        1, from the first of its replicas that answers): its keys in [start,
        end), or its error."""
        request = pb.CountRequest(start=self._key_bound(start, "--from"),
                                  end=self._key_bound(end, "--to"))
        calls = [(req, options, options[0][3].Count.future(req, timeout=self.timeout))
                 for req, options in self._sources(request)]
        from chordctl.scan import said_by_a_node
        out = []
        for req, options, fut in calls:
            told = None     # a replica's own words, kept over failing to reach the next
            for k, (index, label, address, stub, ring_id) in enumerate(options):
                try:
                    if k:
                        fut = stub.Count.future(req, timeout=self.timeout)
                    out.append(node_count(fut.result(), index, label, address, ring_id,
                                          _arc(req)))
                    break
                except grpc.RpcError as e:
                    if said_by_a_node(e.details() or ""):
                        told = (e, index, label, address, ring_id)
                    last = k == len(options) - 1
                    if last or e.code() != grpc.StatusCode.UNAVAILABLE:
                        e, index, label, address, ring_id = told or \
                            (e, index, label, address, ring_id)
                        out.append(node_count(e, index, label, address, ring_id, _arc(req),
                                              options[0]))
                        break
        return out

    # -- admin ----------------------------------------------------------------

    def _admin_call(self, method: str, request, timeout: float | None):
        self.connect()
        t = self.timeout if timeout is None else self.deadline(timeout)
        try:
            return getattr(self._admin, method)(request, timeout=t)
        except grpc.RpcError as e:
            raise error_for(e.code(), e.details() or "", self.address, t) from None

    def health(self, timeout: float | None = None, service: str = "") -> str:
        """The node's grpc.health.v1 status for *service* ("": the node; "arc/G":
        arc G on a replicated node): SERVING, NOT_SERVING, ..."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc
        self.connect()
        t = self.timeout if timeout is None else self.deadline(timeout)
        try:
            reply = health_pb2_grpc.HealthStub(self._channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=t)
        except grpc.RpcError as e:
            raise error_for(e.code(), e.details() or "", self.address, t) from None
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    def status(self, timeout: float | None = None) -> pb.NodeStatus:
        return self._admin_call("Status", pb.StatusRequest(), timeout)

    def take_snapshot(self, timeout: float | None = None) -> pb.SnapshotReply:
        """Snapshot now; waits for the file (a big map takes a while: 300 s by default)."""
        return self._admin_call("TakeSnapshot", pb.SnapshotRequest(), timeout or 300.0)

    def files(self, timeout: float | None = None) -> pb.FilesReply:
        return self._admin_call("Files", pb.FilesRequest(), timeout)


def connect(config: Config | str | os.PathLike | None = None, *, target: str | None = None,
            route: str | None = None, timeout: float | None = None,
            coalesce: bool = True, stream: bool = False) -> Client:
    """Open a Client on a ring: the public entry point (``chordctl.connect``).

    *config*: a path to the ring's YAML config (the one its nodes run
    with), or a loaded Config; None with *target* talks to that one node.
    *route*: ``"direct"`` sends each operation to its key's owner (needs the
    config), ``"entry"`` to one entry node that routes on the ring. The
    library's default is ``"direct"`` with a config (a token-aware driver's
    choice: no forward, measured faster at every thread count, BENCHMARKS.md)
    and ``"entry"`` with a *target*; the config's ``client.route`` is the
    CLI's default. *timeout*: seconds per request (default
    ``client.timeout``). *coalesce*: concurrent calls from many threads
    travel as Batch calls per node (default on; each call still gets its own
    result). *stream*: those Batch calls go as messages of one BatchStream per
    node instead (less node CPU per op; a thread per open stream). Checks that
    a node answers, so a ring that is down fails here with UnavailableError,
    not at the first call.
    """
    if config is not None and not isinstance(config, Config):
        config = load_config(os.fspath(config))
    client = Client(config, target=target, timeout=timeout,
                    route=library_route(config, target, route), coalesce=coalesce,
                    stream=stream)
    try:
        client.connect(probe=True)
    except BaseException:
        client.close()
        raise
    return client


def batch_messages(ops: Iterable[tuple[str, int | str, bytes | None]]
                   ) -> tuple[list[Result | ChordError | None], list[tuple[int, str, str]],
                              list[pb.Operation]]:
    """The operations of a ``batch()`` call, checked: (slots, items, msgs).

    *slots* has one entry per operation: an InvalidInputError for a bad key
    or value (the rest still run), None for one to send; *items* is the
    (slot, op, key) of each message in *msgs*. Raises InvalidInputError for
    a malformed tuple or an unknown operation, before anything is sent.
    """
    slots: list[Result | ChordError | None] = []
    items: list[tuple[int, str, str]] = []      # (slot, op, key) of what is sent
    msgs = []
    for n, entry in enumerate(ops):
        try:
            op, key, value = entry
        except (TypeError, ValueError):
            raise InvalidInputError(f"batch: operation {n} is {entry!r}; give (op, key, "
                                    f"value) tuples") from None
        if op not in OPS:
            raise InvalidInputError(f"batch: operation {n}: {unknown_operation(op)}")
        try:
            key = key_text(key)
            if value is None and (op == "create" or op == "update"):
                raise InvalidInputError(f"{op} needs a value")
            msg = pb.Operation(op=OPS[op], key=key, value=value or b"")
        except InvalidInputError as e:
            slots.append(e)
            continue
        except TypeError:
            slots.append(InvalidInputError(f"the value of {op} {key} is a "
                                           f"{type(value).__name__}; give bytes"))
            continue
        items.append((len(slots), op, key))
        slots.append(None)
        msgs.append(msg)
    return slots, items, msgs


def node_count(reply: pb.CountReply | grpc.RpcError, index: int | None, label: str,
               address: str, ring_id: str, arc: int | None = None,
               owner: tuple | None = None):
    """The scan.NodeCount of one node's Count reply, or of its failure; *arc*:
    the arc it was asked for (ring.replicas > 1), *owner*: that arc's first
    option (index, label, address, stub, ring id). A failed arc's row is its
    owner's (no replica counted it; the error names the one that said why)."""
    from chordctl import scan as scan_mod
    if isinstance(reply, grpc.RpcError):
        err = error_for(reply.code(), reply.details() or "", address)
        what = f"count of arc {arc}" if arc is not None else "count"
        error = type(err)(f"{what}: {label} at {address} failed: {err}")
        if arc is not None and owner is not None:
            index, _label, address, _stub, ring_id = owner
        return scan_mod.NodeCount(index, ring_id, address, error=error, arc=arc)
    return scan_mod.NodeCount(reply.node_index, reply.node_id, address, reply.keys,
                              reply.last_seq, arc=arc)


def _arc(request) -> int | None:
    """The arc a Scan or Count request asks for, if it names one."""
    return request.arc if request.HasField("arc") else None


def library_route(config: Config | None, target: str | None, route: str | None) -> str:
    """connect()'s route: as given, else direct to the owners when there is a
    config and no target, else the entry node."""
    if route is not None:
        return route
    return "direct" if config is not None and not target else "entry"


def _remaining(batch) -> float:
    """Seconds left to the earliest deadline of *batch* (its items waited in
    the queue; at least 1 ms, so an expired one still gets gRPC's deadline
    error). The earliest: no caller waits past its own timeout (the one that
    leads a batch waited longest); a later one in it may be answered at that
    deadline, a little before its own."""
    return max(min(item.deadline for item in batch) - time.monotonic(), 0.001)


def _stream_left(batch, share: float) -> float:
    """Seconds a stream message of *batch* gets at its node: all that is left,
    or (reads only, R > 1) *share* of it, the watchdog's grace included, the
    rest being the next node's."""
    left = _remaining(batch)
    if share < 1:
        left *= share
        left = max(left - min(STREAM_GRACE, left / 2), 0.001)
    return left


def _ms(seconds: float) -> int:
    """A stream message's timeout_ms (a uint32: at most ~49 days)."""
    return min(math.ceil(seconds * 1000), 0xFFFFFFFF)


def _unary(kv: pb_grpc.KeyValueStub, op: str):
    """The unary method of *kv* for *op*."""
    if op == "read":
        return kv.Read
    if op == "update":
        return kv.Update
    if op == "create":
        return kv.Create
    return kv.Delete


def _call(kv: pb_grpc.KeyValueStub, batch: list[_Op], timeout: float, future: bool = False):
    """Send *batch*: one operation as its unary call (cheaper on both ends than
    a Batch of one: ~100 us less per sequential call here), more as a Batch."""
    if len(batch) == 1:
        item = batch[0]
        method = _unary(kv, item.op)
        request = _request(item.op, item.key, item.value, item.trace)
    else:
        method = kv.Batch
        # A lane's batch: calls of separate callers, in no order among them.
        request = pb.BatchRequest(ops=[pb.Operation(op=OPS[b.op], key=b.key,
                                                    value=b.value or b"", trace=b.trace)
                                       for b in batch], unordered=True)
    if future:
        return method.future(request, timeout=timeout)
    return method(request, timeout=timeout)


def _request(op: str, key: str, value: bytes | None, trace: bool):
    if op == "create" or op == "update":
        return pb.WriteRequest(key=key, value=value, trace=trace)
    return pb.KeyRequest(key=key, trace=trace)


def silent(details: str) -> bool:
    """Whether a DEADLINE_EXCEEDED call had no answer at all (gRPC's own words),
    not a node's (which name it: it answered, e.g. "arc 0: not committed before
    the deadline")."""
    return not details.startswith("node ")


def _timed_out(fut: grpc.Future) -> str | None:
    """The details of a finished call that failed with DEADLINE_EXCEEDED, else None."""
    try:
        fut.result()
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            return e.details() or ""
    except Exception:
        pass
    return None


def _never_sent(fut: grpc.Future) -> bool:
    """True when the call failed before leaving this process (no connection)."""
    try:
        fut.result()
    except grpc.RpcError as e:
        return never_sent(e.code().value[0], e.details() or "")
    except Exception:
        return False
    return False


def batch_outcomes(batch, results, address: str) -> list[Result | ChordError]:
    """The outcome of each operation of a coalesced Batch call; *batch* holds
    objects with ``.op`` and ``.key`` (a lane's operations), in order."""
    if len(results) != len(batch):
        return [InternalError(f"client: {address} answered {len(results)} "
                              f"results for {len(batch)} operations")] * len(batch)
    return [_batch_outcome(res, item.op, item.key, address)
            for item, res in zip(batch, results)]


def _batch_outcome(res: pb.Result, op: str, key: str, address: str) -> Result | ChordError:
    """One result of a Batch call. Batch results leave out the sentence of a
    success (it is derivable)."""
    if res.code:
        return error_for(res.code, res.message, address)
    message = res.message or describe(OPS[op], key, 0, f"node {res.node_index} (id {res.node_id})")
    return Result(op, key, res.value if op == "read" else None, res.node_index, res.node_id,
                  message, tuple(res.route))


def _close_later(channel: grpc.Channel | None, after: float = 0.0) -> None:
    """Close a replaced channel on a thread of its own: the caller may be one
    of that channel's callbacks, and a close from there never returns. Calls
    other threads still have on it fail (they were on a connection that had
    failed; one never sent is sent again on the current channel). *after*:
    seconds to wait first (a node that was only silent may still answer the
    calls in flight on it)."""
    if channel is None:
        return
    closer = threading.Timer(after, channel.close) if after > 0 else \
        threading.Thread(target=channel.close)
    closer.name, closer.daemon = "chordctl-close", True
    closer.start()


def _probe(channel: grpc.Channel, address: str) -> str | None:
    """None if the node at *address* answers within CONNECT_TIMEOUT, else why not.

    Any reply counts, even an error status: the node is there. Without
    wait_for_ready a refused connection fails at once instead of retrying.
    """
    try:
        channel.unary_unary(PROBE_METHOD)(b"", timeout=CONNECT_TIMEOUT)
    except grpc.RpcError as e:
        return probe_failure(e, address)
    return None


PROBE_METHOD = "/grpc.health.v1.Health/Check"


def probe_failure(e: grpc.RpcError, address: str) -> str | None:
    """Why a probe of *address* failed with *e* (a sync or grpc.aio error), or
    None: any other status is a reply, and the node is there."""
    details = e.details() or ""
    if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
        log.debug("client: %s: gRPC DEADLINE_EXCEEDED: %s", address, details)
        return f"no answer within {CONNECT_TIMEOUT:g}s"
    if e.code() == grpc.StatusCode.UNAVAILABLE:
        log.debug("client: %s: gRPC UNAVAILABLE: %s", address, details)
        if _tls_like(details):
            return security.connect_failure(details).lstrip(": ")
        return _reason(details)
    return None


def none_answered(failures: list[tuple[str, str]], waited: float) -> UnavailableError:
    """The error of a connect whose probes all failed: (address, why) each."""
    reasons = {why for _, why in failures}
    if len(reasons) == 1:
        detail = f"{', '.join(a for a, _ in failures)}: {reasons.pop()}"
    else:
        detail = "; ".join(f"{a}: {why}" for a, why in failures)
    return UnavailableError(
        f"client: no node of the config answered (tried {len(failures)} in "
        f"{waited:.2f}s -- {detail}); {RING_UP_HINT}")


def _outcome(fut: grpc.Future, op: str, key: str, address: str | None,
             waited: float | None = None) -> Result | ChordError:
    try:
        reply = fut.result()
    except grpc.RpcError as e:
        return error_for(e.code(), e.details() or "", address or "?", waited)
    except grpc.FutureCancelledError:
        return UnavailableError(f"client: {op} {key} was cancelled")
    return reply_result(op, key, reply)


def reply_result(op: str, key: str, reply: pb.Reply) -> Result:
    """The Result of a unary call's reply."""
    return Result(op, key, reply.value if op == "read" else None, reply.node_index,
                  reply.node_id, reply.message, tuple(reply.route))
