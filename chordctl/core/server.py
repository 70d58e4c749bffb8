"""Start one node: bind, serve (NOT_SERVING), recover, SERVING; stop cleanly.

``NodeServer(config, index)`` builds a node and its gRPC server, unstarted;
``start()`` binds, recovers and turns SERVING, ``stop()`` drains and flushes.
``serve(config, index)`` is the foreground life of ``chordctl node serve``.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
import socket
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from chordctl import cpulist, protocol, security
from chordctl.config import Config
from chordctl.core import affinity, eventloop, metrics, procinfo
from chordctl.core.announce import Announcer, join
from chordctl.core.gate import Admission, ReadinessGate
from chordctl.core.node import Node, Replies
from chordctl.core.replica import ReplicatedNode
from chordctl.core.replication.exchange import Exchange, RaftServicer
from chordctl.core.router import Router, message_limit
from chordctl.core.servicer import AdminServicer, KeyValueServicer, add_key_value_servicer
from chordctl.errors import ChordError, StorageAccessError, StorageError
from chordctl.pb import chord_pb2 as pb
from chordctl.pb import chord_pb2_grpc as pb_grpc
from chordctl.pb import raft_pb2_grpc as rpb_grpc
from chordctl.protocol import allow_key_digits

logger = logging.getLogger("chordctl.server")

SERVICES = ("chord.v1.KeyValue", "chord.v1.Admin")
SHUTDOWN_GRACE = 5.0
ARC_HEALTH_EVERY = 0.2    # seconds between looks at each arc's group (ring.replicas > 1)


def arc_service(group: int) -> str:
    """The health service name of arc *group* on a replicated node."""
    return f"arc/{group}"
# What the user running the node can fix (exit 2), unlike a failing disk.
ACCESS_ERRORS = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR)


def check_listen(host: str, port: int, index: int) -> None:
    """ChordError, in our words, if this process cannot listen on host:port."""
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise ChordError(f"node: cannot listen on {address}: {host} does not resolve "
                         f"({e.strerror}); fix nodes[{index}].host") from None
    for family, kind, proto, _name, sockaddr in infos:
        try:
            sock = socket.socket(family, kind, proto)
        except OSError:
            continue          # an address family this host lacks; gRPC skips it too
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # as gRPC binds
            sock.bind(sockaddr)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                holder = procinfo.port_listener(port)
                who = "another process" if holder is None else \
                    f"another process (pid {holder[0]}: {' '.join(holder[1].split())[:120]})"
                why = (f"the port is in use by {who}; stop it, or change "
                       f"nodes[{index}].port")
            elif e.errno == errno.EADDRNOTAVAIL:
                why = (f"{host} is not an address of this machine; fix nodes[{index}].host "
                       f"(or run node {index} on the machine that has it)")
            elif e.errno == errno.EACCES:
                why = (f"port {port} needs privileges this user lacks; use a port above 1023 "
                       f"in nodes[{index}].port")
            else:
                why = f"{e.strerror}; check nodes[{index}].host and .port"
            raise ChordError(f"node: cannot listen on {address}: {why}") from None
        finally:
            sock.close()


class NodeServer:
    """A node, its router and its gRPC server, wired on one event loop.

    Construct it on the loop it serves on. The wiring, one way each:

        Admission (gate.py): may the call enter (KeyValue's and Admin's)
        KeyValueServicer --submit--> Node (F1 .. F4) --replies.send--> loop
        Router (F4's consumer) --replies.send / replies.deliver--> loop
        loop: Replies.deliver wakes each request's waiter in the servicer

    *node_class* builds the Node (a subclass in tests: a stage that holds
    requests, a slow replay).
    """

    def __init__(self, config: Config, index: int, node_class: type[Node] = Node,
                 pid_file: bool = False, take_over: bool = False, new_ring: bool = False):
        self.config = config
        self.index = index
        self.take_over = take_over     # announce.join: the old address may not answer
        allow_key_digits(config.limits.max_key_digits)   # before the replay parses keys
        self.loop = asyncio.get_running_loop()
        self.replies = Replies.over(self.loop)   # pipeline and router -> waiting receivers
        if config.ring.replicas > 1 and node_class is Node:
            node_class = ReplicatedNode
        self.node = node_class(config, index, self.replies)
        if isinstance(self.node, ReplicatedNode):
            self.node.new_ring = new_ring      # read by its recovery (replica.py)
        # The process's own node (serve()) writes node.pid once it holds the directory.
        self.node.writes_pid_file = pid_file
        self.exchange: Exchange | None = None
        self.raft: RaftServicer | None = None
        self._arc_health: asyncio.Task | None = None
        self._announce: asyncio.Task | None = None     # announce.py
        self.router = Router(config, index, self.node.membership, self.loop, self.replies,
                             self.node.metrics)
        self.server: grpc.aio.Server | None = None
        self.kv: KeyValueServicer | None = None
        self.health = HealthServicer()
        self.gate = ReadinessGate(self.node.label)
        self.port = 0

    async def start(self) -> int:
        loop = self.loop
        cfg = self.config
        address = cfg.node(self.index).address
        warning = security.plaintext_warning(cfg, self.index)
        if warning:
            logger.warning("%s", warning)
        credentials = security.server_credentials(cfg, self.index)
        limit = message_limit(cfg)
        server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", limit),
            # A Batch of reads answers with their values (clients and routers
            # keep each call's reply under it: protocol.BatchFit, router.split).
            ("grpc.max_send_message_length", max(limit, protocol.REPLY_LIMIT)),
            ("grpc.so_reuseport", 0),
        ])
        node_cfg = cfg.node(self.index)
        # Before gRPC tries: its C core prints its own line (add_port.cc) to
        # stderr on a failed bind, which only GRPC_VERBOSITY set before import
        # silences; the check says what happened in our words.
        check_listen(node_cfg.host, node_cfg.port, self.index)
        try:
            if credentials is None:
                self.port = server.add_insecure_port(address)
            else:
                self.port = server.add_secure_port(address, credentials)
        except RuntimeError as e:
            logger.debug("grpc: add_port %s: %s", address, e)
            self.port = 0
        if self.port == 0:   # taken between the check and the bind
            raise ChordError(f"node: cannot listen on {address}: the port was taken by another "
                             f"process as this node started; stop it, or change "
                             f"nodes[{self.index}].port")

        def on_failed(reason: str) -> None:
            # From a pipeline thread (Node.fail): health follows on the loop,
            # and the node stops telling peers its membership.
            try:
                loop.call_soon_threadsafe(lambda: loop.create_task(self._not_serving()))
                loop.call_soon_threadsafe(self._stop_announcing)
            except RuntimeError:   # the loop is closed: the process is ending anyway
                pass

        self.node.on_failed.append(on_failed)

        admission = Admission(self.node, self.gate)   # KeyValue's and Admin's
        self.kv = KeyValueServicer(self.node, loop, admission)
        add_key_value_servicer(self.kv, server)   # malformed bodies: INVALID_ARGUMENT
        pb_grpc.add_AdminServicer_to_server(AdminServicer(self.node, loop, admission), server)
        if isinstance(self.node, ReplicatedNode):
            node = self.node
            peers = {m for g in node.members.values() for m in g} - {self.index}
            fingerprint = node.identity.fingerprint
            self.exchange = Exchange(cfg, self.index, fingerprint, loop, peers,
                                     retry_max=cfg.replication.heartbeat,
                                     members=node.membership)
            node.raft_send = self.exchange.send

            def deliver(sender: int, messages) -> None:
                engine = node.engine
                if engine is not None:      # before recovery ends, Raft waits for us
                    engine.deliver(sender, messages)

            self.raft = RaftServicer(self.index, fingerprint, peers, deliver)
            rpb_grpc.add_RaftServicer_to_server(self.raft, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            SERVICES + (health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                        reflection.SERVICE_NAME), server)
        # Serve before replaying: health answers NOT_SERVING and the gate
        # answers UNAVAILABLE ("recovering") until the node is ready.
        for name in ("",) + SERVICES:
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await server.start()
        self.server = server
        try:
            # In a thread: the event loop keeps answering health checks meanwhile.
            try:
                await loop.run_in_executor(None, self.node.recover)
            except OSError as e:
                if e.errno in ACCESS_ERRORS:
                    raise StorageAccessError.of(e, self.node.directory) from None
                raise StorageError(f"storage: {self.node.label} cannot start: "
                                   f"{e.filename or self.node.directory}: {e.strerror or e}; "
                                   f"fix the disk or the directory and start it again") from None
            await join(self.node, cfg, self.take_over)   # the ring's membership (announce.py)
            self.node.start(self.router)
        except BaseException:
            await server.stop(None)
            self.server = None
            raise
        self.gate.open()
        self.node.ready_seconds = procinfo.seconds_since_start()
        if node_cfg.metrics_port:
            try:
                metrics.start_server(self.node, self.node.metrics, node_cfg.host,
                                     node_cfg.metrics_port)
            except OSError as e:
                logger.error("%s: cannot serve metrics on port %d: %s", self.node.label,
                             node_cfg.metrics_port, e.strerror)
        for name in ("",) + SERVICES:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if self.node.failed:   # it failed before health said SERVING
            await self._not_serving()
        if isinstance(self.node, ReplicatedNode):
            self._arc_health = loop.create_task(self._watch_arcs(), name="arc-health")
        if self.node.ring.n > 1:
            announcer = Announcer(cfg, self.index, self.node.membership, self.node.label, loop)
            self._announce = loop.create_task(announcer.run(), name="membership")
        experiments = os.environ.get("GRPC_EXPERIMENTS")
        logger.info("%s serving on %s (pid %d, cpus %s, %s, grpc %s%s, fsync %s, %s, %d keys, "
                    "ready %.2fs after process start, rss %.1f MB)", self.node.label,
                    address, os.getpid(), cpulist.format_cpulist(affinity.available()),
                    eventloop.name(asyncio.get_running_loop()), grpc.__version__,
                    f" (GRPC_EXPERIMENTS={experiments})" if experiments else "",
                    cfg.storage.fsync,
                    "TLS" if credentials is not None else "plaintext", len(self.node.store),
                    self.node.ready_seconds, procinfo.rss_bytes() / 1e6)
        return self.port

    def _stop_announcing(self) -> None:
        if self._announce is not None:
            self._announce.cancel()

    async def _watch_arcs(self) -> None:
        """Health "arc/<g>" for each arc this node holds a copy of: SERVING while
        the arc's group has a leader this node knows (it can commit), else
        NOT_SERVING (no majority reachable, or an election going on)."""
        shown: dict[int, int] = {}
        serving = health_pb2.HealthCheckResponse.SERVING
        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        while True:
            for g, st in self.node.raft_status().items():
                want = serving if st["leader"] is not None and not self.node.failed \
                    else not_serving
                if shown.get(g) != want:
                    await self.health.set(arc_service(g), want)
                    shown[g] = want
            await asyncio.sleep(ARC_HEALTH_EVERY)

    async def _not_serving(self) -> None:
        """A fail-stopped node refuses every request: health must say so (its
        reason is in Admin.Status `failed`, `ring show` and the node's log)."""
        for name in ("",) + SERVICES:
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)

    async def _requests_answered(self, timeout: float) -> None:
        """Wait (at most *timeout*) until no client request, and no scan's or
        count's view, is waiting on this node."""
        deadline = time.monotonic() + timeout
        while (self.kv is not None and (self.kv.admission.in_flight or self.kv.views)
               and time.monotonic() < deadline):
            await asyncio.sleep(0.01)

    async def stop(self, grace: float = SHUTDOWN_GRACE) -> None:
        for task in (self._arc_health, self._announce):
            if task is not None:
                task.cancel()
        await self.health.enter_graceful_shutdown()
        if self.kv is not None:
            self.kv.end_streams()   # BatchStream calls end between messages, with OK
        if self.server is not None:
            stopped = asyncio.ensure_future(self.server.stop(grace))
            if self.raft is not None:
                # The peers' Raft.Push streams never end by themselves: keep
                # them while a request this node let in may still wait for a
                # commit (its acknowledgements arrive on them), then end them
                # so that the stop does not wait out the whole grace.
                await self._requests_answered(grace)
                self.raft.end_streams()
            await stopped
        # Every request the server let in has its reply by now (or was
        # cancelled); drain the pipeline and fsync the log.
        await asyncio.get_running_loop().run_in_executor(
            None, self.node.stop, self.config.storage.snapshot_on_shutdown)
        if self.exchange is not None:
            await self.exchange.close()
        logger.info("%s stopped; log flushed", self.node.label)


async def serve(config: Config, index: int, node_class: type[Node] = Node,
                take_over: bool = False, new_ring: bool = False) -> None:
    """Run node *index* until SIGTERM or SIGINT; a second signal exits at once."""
    loop = asyncio.get_running_loop()
    ns = NodeServer(config, index, node_class, pid_file=True, take_over=take_over,
                    new_ring=new_ring)
    await ns.start()
    stop = asyncio.Event()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            logger.warning("second signal: exiting now")
            os._exit(1)
        logger.info("%s: %s received, shutting down", ns.node.label, signal.Signals(signum).name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    await stop.wait()
    await ns.stop()


__all__ = ["NodeServer", "serve", "pb"]
