"""The gRPC client shared by the one-shot commands, the shell and the tests.

One channel for the client's life; every call is asynchronous underneath
(``submit`` returns a future) with the configured deadline; gRPC failures
become ChordError subclasses, so callers never see grpc exceptions.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from typing import Callable, Sequence

import grpc

from chordctl import security
from chordctl.config import ClientConfig, Config, LimitsConfig
from chordctl.core.ring import Ring
from chordctl.errors import ChordError, InternalError, InvalidInputError, UnavailableError
from chordctl.pb import chord_pb2 as pb
from chordctl.pb import chord_pb2_grpc as pb_grpc
from chordctl.protocol import (DEADLINE_EXCEEDED, OPS, UNAVAILABLE, allow_key_digits, code_name,
                               describe, error_class, never_sent, parse_key, unknown_operation,
                               validate)

CONNECT_TIMEOUT = 1.0
_LIMITS = LimitsConfig()     # without a config: the defaults a node has
log = logging.getLogger("chordctl.client")
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
              waited: float | None = None) -> ChordError:
    """The ChordError for a gRPC status (a code object or its number; see protocol).

    Node-made messages (they name their node) reach the user as they are;
    gRPC's own words become ours, naming the address and what to do, and go
    to the debug log (``--log-level debug``). *waited*: the call's deadline
    in seconds, for "no reply within ...".
    """
    number = code if isinstance(code, int) else code.value[0]
    cls = error_class(number)
    node_made = message.startswith(("node ", "client:"))
    if not node_made and number in (UNAVAILABLE, DEADLINE_EXCEEDED):
        log.debug("client: %s: gRPC %s: %s", address, code_name(number), message)
    if number == UNAVAILABLE and not message:
        message = f"client: {address} is unreachable; {RING_UP_HINT}"
    elif number == DEADLINE_EXCEEDED and "deadline" in message.lower() and not node_made:
        within = f"within {waited:g}s (client.timeout)" if waited else "within the deadline"
        message = (f"client: no reply from {address} {within}; the node may be overloaded "
                   f"or stuck -- {RING_UP_HINT}")
    elif never_sent(number, message):
        # Only gRPC's own text means *this* client could not connect; a node's
        # relayed "node 0 ... could not reach node 3 ... (failed to connect ...)"
        # must reach the user as is, naming the node that is really down.
        message = cannot_connect(address, message)
    elif number == UNAVAILABLE and not node_made:
        # gRPC's own words for a connection lost mid-call ("Socket closed",
        # "Connection reset by peer"); every node-made message names its node.
        message = (f"client: lost the connection to {address} before the reply; the node "
                   f"may have stopped -- {RING_UP_HINT}")
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


class _Lane:
    """Coalesces single operations bound for one node into Batch calls.

    While fewer than ``depth`` Batch calls are in flight an operation leaves
    at once (a batch of one: no added latency when idle); otherwise it waits
    and leaves with everything else that queued up behind the calls in
    flight. Each operation still gets its own result, exactly as unary.
    """

    def __init__(self, stub: pb_grpc.KeyValueStub, address: str, depth: int, limit: int):
        self.stub = stub
        self.address = address
        self.depth = depth
        self.limit = limit
        self.lock = threading.Lock()
        self.pending: list[tuple[pb.Operation, str, str, Callable]] = []
        self.in_flight = 0

    def add(self, msg: pb.Operation, op: str, key: str, callback: Callable,
            timeout: float) -> None:
        with self.lock:
            self.pending.append((msg, op, key, callback))
            if self.in_flight >= self.depth:
                return
            batch = self.pending[:self.limit]
            del self.pending[:self.limit]
            self.in_flight += 1
        self._send(batch, timeout)

    def _send(self, batch: list, timeout: float) -> None:
        fut = self.stub.Batch.future(pb.BatchRequest(ops=[b[0] for b in batch]), timeout=timeout)
        fut.add_done_callback(lambda f: self._done(f, batch, timeout))

    def _done(self, fut: grpc.Future, batch: list, timeout: float) -> None:
        try:
            results = fut.result().results
            failure = None
            if len(results) != len(batch):
                failure = InternalError(f"client: {self.address} answered {len(results)} "
                                        f"results for {len(batch)} operations")
        except grpc.RpcError as e:
            results, failure = (), error_for(e.code(), e.details() or "", self.address,
                                             timeout)
        except grpc.FutureCancelledError:
            results, failure = (), UnavailableError("client: request cancelled")
        with self.lock:
            nxt = self.pending[:self.limit]
            del self.pending[:self.limit]
            if not nxt:
                self.in_flight -= 1
        if nxt:
            self._send(nxt, timeout)
        for i, (_msg, op, key, callback) in enumerate(batch):
            if failure is not None:
                callback(failure)
                continue
            callback(_batch_outcome(results[i], op, key, self.address))


class Client:
    """Talks to one entry node (``--target``, or the config's first reachable).

    ``route="direct"`` (``client.route: direct``) sends each operation to the
    key's owner, computed from the config like a token-aware driver;
    ``coalesce=True`` sends concurrent single operations as Batch calls.
    """

    def __init__(self, config: Config | None = None, target: str | None = None,
                 timeout: float | None = None, route: str | None = None,
                 coalesce: bool = False, coalesce_depth: int | None = None):
        self.config = config
        self.route = route or (config.client.route if config else "entry")
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
        self._lanes: dict[str, _Lane] = {}
        self._node_stubs: dict[int, pb_grpc.KeyValueStub] = {}
        self._node_channels: list[grpc.Channel] = []
        self._ring = Ring.from_config(config) if self.route == "direct" else None
        self.target = target
        if target:
            self.addresses = [target]
        elif config is not None:
            self.addresses = [n.address for n in config.nodes]
        else:
            raise InvalidInputError("client: no node to talk to; give --target HOST:PORT or a "
                                    "config with -c")
        self.timeout = timeout if timeout is not None else (
            config.client.timeout if config else ClientConfig.timeout)
        self.limits = config.limits if config else _LIMITS
        self.max_value = self.limits.max_value_bytes
        self.max_digits = self.limits.max_key_digits
        allow_key_digits(self.max_digits)
        self.address: str | None = None
        self._channel: grpc.Channel | None = None
        self._kv: pb_grpc.KeyValueStub | None = None
        self._admin: pb_grpc.AdminStub | None = None
        # submit_ordered: key -> operations waiting for the one in flight.
        self._order_lock = threading.Lock()
        self._waiting: dict[int, collections.deque] = {}

    # -- connection -----------------------------------------------------------

    def connect(self) -> str:
        """Open the channel to the first node that answers; returns its address."""
        if self._channel is not None:
            return self.address
        if len(self.addresses) == 1:
            self.open(self.addresses[0])
            return self.address
        # One after another in config order, each for at most CONNECT_TIMEOUT;
        # a refused connection fails at once, so a ring that is down fails fast.
        t0 = time.monotonic()
        failures: list[tuple[str, str]] = []
        for address in self.addresses:
            channel = security.channel(self.config, address)
            why = _probe(channel, address)
            if why is None:
                self._adopt(address, channel)
                return address
            channel.close()
            failures.append((address, why))
        waited = time.monotonic() - t0
        reasons = {why for _, why in failures}
        if len(reasons) == 1:
            detail = f"{', '.join(a for a, _ in failures)}: {reasons.pop()}"
        else:
            detail = "; ".join(f"{a}: {why}" for a, why in failures)
        raise UnavailableError(
            f"client: no node of the config answered (tried {len(failures)} in "
            f"{waited:.2f}s -- {detail}); {RING_UP_HINT}")

    def open(self, address: str) -> None:
        """Use *address* without checking that it answers (calls fail until it does)."""
        self._adopt(address, security.channel(self.config, address))

    def _adopt(self, address: str, channel: grpc.Channel) -> None:
        self.address = address
        self._channel = channel
        self._kv = pb_grpc.KeyValueStub(channel)
        self._admin = pb_grpc.AdminStub(channel)

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        for channel in self._node_channels:
            channel.close()
        self._node_channels.clear()
        self._node_stubs.clear()
        self._lanes.clear()

    def stub_for(self, key: str) -> tuple[pb_grpc.KeyValueStub, str]:
        """The stub to send an operation on *key* to, and its address."""
        if self._ring is None:
            self.connect()
            return self._kv, self.address
        owner = self._ring.owner(int(key))
        return self._node_stub(owner), self.config.nodes[owner].address

    def _node_stub(self, index: int) -> pb_grpc.KeyValueStub:
        """A stub for the config's node *index*, on a channel of its own (kept)."""
        stub = self._node_stubs.get(index)
        if stub is None:
            channel = security.channel(self.config, self.config.nodes[index].address)
            self._node_channels.append(channel)
            stub = self._node_stubs[index] = pb_grpc.KeyValueStub(channel)
        return stub

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- validation -----------------------------------------------------------

    def check(self, op: str, key: str, value: bytes | None) -> None:
        """Raise InvalidInputError for anything a node would refuse (protocol.validate)."""
        validate(op, key, value, self.limits)

    # -- operations -----------------------------------------------------------

    def submit(self, op: str, key: str, value: bytes | None = None, trace: bool = False,
               callback: Callable[[Result | ChordError], None] | None = None,
               timeout: float | None = None) -> None:
        """Send one operation without waiting; *callback* gets a Result or a ChordError.

        A call that never left this client because the channel is still
        backing off from an earlier outage (gRPC's "failed to connect") is
        sent once more on a fresh channel: the node may be back already, and
        nothing was sent, so even a write is safe to repeat.
        """
        self.check(op, key, value)
        t = timeout if timeout is not None else self.timeout
        deliver = callback if callback is not None else (lambda _outcome: None)
        self._send(op, key, value, trace, deliver, t, retry=True)

    def _send(self, op: str, key: str, value: bytes | None, trace: bool,
              callback: Callable[[Result | ChordError], None], t: float, retry: bool) -> None:
        kv, address = self.stub_for(key)
        if self.coalesce:
            lane = self._lanes.get(address)
            if lane is None:
                lane = self._lanes.setdefault(address, _Lane(kv, address, self.coalesce_depth,
                                                             _LIMITS.max_batch_ops))
            lane.add(pb.Operation(op=OPS[op], key=key, value=value or b"", trace=trace),
                     op, key, callback, t)
            return
        if op == "create":
            fut = kv.Create.future(pb.WriteRequest(key=key, value=value, trace=trace), timeout=t)
        elif op == "update":
            fut = kv.Update.future(pb.WriteRequest(key=key, value=value, trace=trace), timeout=t)
        elif op == "read":
            fut = kv.Read.future(pb.KeyRequest(key=key, trace=trace), timeout=t)
        else:
            fut = kv.Delete.future(pb.KeyRequest(key=key, trace=trace), timeout=t)

        def done(f: grpc.Future) -> None:
            if retry and _never_sent(f):
                self._reopen(address, kv)
                self._send(op, key, value, trace, callback, t, retry=False)
            else:
                callback(_outcome(f, op, key, address, t))

        fut.add_done_callback(done)

    def _reopen(self, address: str, failed: pb_grpc.KeyValueStub) -> None:
        """Replace the channel behind *failed*, unless another failure already did."""
        with self._order_lock:
            if failed is self._kv:
                old = self._channel
                self.open(address)
                if old is not None:
                    old.close()
                return
            for index, stub in list(self._node_stubs.items()):
                if stub is failed:
                    del self._node_stubs[index]
                    self._lanes.pop(address, None)

    def submit_ordered(self, op: str, key: str, value: bytes | None,
                       callback: Callable[[Result | ChordError], None],
                       trace: bool = False) -> None:
        """Like submit, but operations on the same key are sent one after another.

        Concurrent gRPC calls may be served in any order; a pipelining client
        (the shell) still wants `create 1 a` before `read 1`. Each key gets its
        own little queue: the next operation on a key is sent when the previous
        one's reply arrives; different keys still travel concurrently.
        """
        self.check(op, key, value)
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

    def call(self, op: str, key: str, value: bytes | None = None,
             trace: bool = False) -> Result:
        """One operation, waiting for its reply; raises ChordError on failure."""
        box: list = []
        done = threading.Event()

        def got(outcome):
            box.append(outcome)
            done.set()

        self.submit(op, key, value, trace, callback=got)
        done.wait()
        out = box[0]
        if isinstance(out, ChordError):
            raise out
        return out

    def create(self, key: str, value: bytes, trace: bool = False) -> Result:
        return self.call("create", key, value, trace)

    def read(self, key: str, trace: bool = False) -> Result:
        return self.call("read", key, None, trace)

    def update(self, key: str, value: bytes, trace: bool = False) -> Result:
        return self.call("update", key, value, trace)

    def delete(self, key: str, trace: bool = False) -> Result:
        return self.call("delete", key, None, trace)

    def batch(self, ops: Sequence[tuple[str, str, bytes | None]],
              timeout: float | None = None) -> list[Result | ChordError]:
        """Many operations in one call; one Result or ChordError per operation, in order."""
        self.connect()
        msgs = []
        for op, key, value in ops:
            if op not in OPS:
                raise unknown_operation(op)
            msgs.append(pb.Operation(op=OPS[op], key=key, value=value or b""))
        t = timeout if timeout is not None else self.timeout
        try:
            reply = self._kv.Batch(pb.BatchRequest(ops=msgs), timeout=t)
        except grpc.RpcError as e:
            raise error_for(e.code(), e.details() or "", self.address, t) from None
        return [_batch_outcome(res, op, key, self.address)
                for (op, key, _), res in zip(ops, reply.results)]

    # -- scan and count (chordctl/scan.py) ------------------------------------

    def _each_node(self, start: str = "", end: str = ""
                   ) -> list[tuple[int | None, str, str, pb_grpc.KeyValueStub, str]]:
        """(index, label, address, stub, ring id) of every node a scan asks: the
        config's that can hold keys in [start, end), or only the --target node
        (which answers for its own keys)."""
        if self.target or self.config is None:
            self.connect()
            return [(None, "the node", self.address, self._kv, "")]
        from chordctl.scan import nodes_for_range
        ring = self._ring or Ring.from_config(self.config)
        out = []
        for i in nodes_for_range(ring, int(start or 0), int(end) if end else None):
            ring_id = str(ring.ids[i])
            out.append((i, f"node {i} (id {ring_id})", self.config.nodes[i].address,
                        self._node_stub(i), ring_id))
        return out

    def _key_bound(self, key: str | None, what: str) -> str:
        if key is None or key == "":
            return ""
        try:
            parse_key(key, self.max_digits)
        except ValueError as e:
            raise InvalidInputError(f"scan: {what}: {e}") from None
        return key

    def scan(self, start: str | None = None, end: str | None = None, limit: int = 1000,
             keys_only: bool = False, partial: bool = False, page_size: int = 0):
        """A scan.Scan of the keys in [start, end) across the ring, ascending by key.

        Iterate it for scan.Entry objects (at most *limit*; 0: all); it holds
        about (nodes x 3) pages at a time. See chordctl/scan.py.
        """
        from chordctl import scan as scan_mod
        request = pb.ScanRequest(start=self._key_bound(start, "--from"),
                                 end=self._key_bound(end, "--to"),
                                 limit=limit + 1 if limit else 0, keys_only=keys_only,
                                 page_size=page_size)
        streams = [scan_mod.NodeStream(stub, request, label, address, self.timeout, index,
                                       to_error=error_for)
                   for index, label, address, stub, _id in self._each_node(request.start,
                                                                            request.end)]
        return scan_mod.Scan(streams, limit, partial).open()

    def count(self, start: str | None = None, end: str | None = None) -> list:
        """One scan.NodeCount per node (in parallel): its keys in [start, end), or its error."""
        from chordctl import scan as scan_mod
        request = pb.CountRequest(start=self._key_bound(start, "--from"),
                                  end=self._key_bound(end, "--to"))
        calls = [(index, label, address, ring_id,
                  stub.Count.future(request, timeout=self.timeout))
                 for index, label, address, stub, ring_id in self._each_node(request.start,
                                                                             request.end)]
        out = []
        for index, label, address, ring_id, fut in calls:
            try:
                reply = fut.result()
            except grpc.RpcError as e:
                err = error_for(e.code(), e.details() or "", address)
                out.append(scan_mod.NodeCount(index, ring_id, address, error=type(err)(
                    f"count: {label} at {address} failed: {err}")))
                continue
            out.append(scan_mod.NodeCount(reply.node_index, reply.node_id, address, reply.keys,
                                          reply.last_seq))
        return out

    # -- admin ----------------------------------------------------------------

    def _admin_call(self, method: str, request, timeout: float | None):
        self.connect()
        t = timeout if timeout is not None else self.timeout
        try:
            return getattr(self._admin, method)(request, timeout=t)
        except grpc.RpcError as e:
            raise error_for(e.code(), e.details() or "", self.address, t) from None

    def health(self, timeout: float | None = None) -> str:
        """The node's grpc.health.v1 status for service "": SERVING, NOT_SERVING, ..."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc
        self.connect()
        t = timeout if timeout is not None else self.timeout
        try:
            reply = health_pb2_grpc.HealthStub(self._channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=t)
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


def _never_sent(fut: grpc.Future) -> bool:
    """True when the call failed before leaving this process (no connection)."""
    try:
        fut.result()
    except grpc.RpcError as e:
        return never_sent(e.code().value[0], e.details() or "")
    except Exception:
        return False
    return False


def _batch_outcome(res: pb.Result, op: str, key: str, address: str) -> Result | ChordError:
    """One result of a Batch call. Batch results leave out the sentence of a
    success (it is derivable)."""
    if res.code:
        return error_for(res.code, res.message, address)
    message = res.message or describe(OPS[op], key, 0, f"node {res.node_index} (id {res.node_id})")
    return Result(op, key, res.value if op == "read" else None, res.node_index, res.node_id,
                  message, tuple(res.route))


def _probe(channel: grpc.Channel, address: str) -> str | None:
    """None if the node at *address* answers within CONNECT_TIMEOUT, else why not.

    Any reply counts, even an error status: the node is there. Without
    wait_for_ready a refused connection fails at once instead of retrying.
    """
    try:
        channel.unary_unary("/grpc.health.v1.Health/Check")(b"", timeout=CONNECT_TIMEOUT)
    except grpc.RpcError as e:
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


def _outcome(fut: grpc.Future, op: str, key: str, address: str | None,
             waited: float | None = None) -> Result | ChordError:
    try:
        reply = fut.result()
    except grpc.RpcError as e:
        return error_for(e.code(), e.details() or "", address or "?", waited)
    except grpc.FutureCancelledError:
        return UnavailableError(f"client: {op} {key} was cancelled")
    return Result(op, key, reply.value if op == "read" else None, reply.node_index,
                  reply.node_id, reply.message, tuple(reply.route))
