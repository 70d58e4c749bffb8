"""Admission: whether a call may enter a node's handlers, checked in one place.

The gRPC server starts before the node replays its snapshot and log, so that
the health service can say NOT_SERVING meanwhile (instead of a port that
accepts connections and answers nothing). gRPC cannot add services to a
running server, so KeyValue and Admin are registered from the start and their
handlers ask the node's ``Admission`` first; health and reflection are not
gated. Plain attribute tests per call, not a server interceptor: an aio
interceptor costs ~8% of a unary call.

    refusal            status               who asks
    recovering         UNAVAILABLE          every handler (the ReadinessGate)
    fail-stopped       UNAVAILABLE, reason  KeyValue (open, refuse)
    in-flight limit    RESOURCE_EXHAUSTED   Create/Read/Update/Delete/Batch (full)
    admin.allow        PERMISSION_DENIED    Admin (admin)
"""

from __future__ import annotations

import grpc

from chordctl import security


class ReadinessGate:
    def __init__(self, label: str):
        self.ready = False
        self.message = (f"{label} is recovering (replaying its snapshot and log), "
                        f"retry shortly")
        self.on_open: list = []     # called once open (Admission)

    def open(self) -> None:
        self.ready = True
        for listener in self.on_open:
            listener()

    async def refuse(self, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAVAILABLE, self.message)


OPEN = ReadinessGate("node")   # a servicer built without a gate (tests) is ready
OPEN.open()


class Admission:
    """One node's admission: its readiness gate, fail-stop, in-flight count
    and admin.allow. KeyValue and Admin share one (server.py builds it), so
    Admin.Status reports the in-flight count the limit judges.

    The hot path tests two attributes and awaits nothing unless it refuses:

        if not admission.open: await admission.refuse(context)
        if admission.in_flight + n > admission.max_in_flight: await admission.full(context)

    ``open`` is kept by the transitions (the gate opening, Node.fail), so it
    is one flag for both. ``in_flight`` is counted by the KeyValue handlers
    around their wait. Each refusal aborts the call (``context.abort`` raises).
    """

    __slots__ = ("node", "gate", "open", "max_in_flight", "in_flight", "allow", "_admin_der")

    def __init__(self, node, gate: ReadinessGate | None = None):
        self.node = node
        self.gate = gate or OPEN
        self.open = False           # ready and not fail-stopped
        self.max_in_flight = node.config.limits.max_in_flight
        self.in_flight = 0
        self.allow = node.config.admin.allow
        self._admin_der = (security.admin_certificate(node.config)
                           if self.allow == "tls-client" else b"")
        node.on_failed.append(self._failed)
        if self.gate.ready:
            self._opened()
        else:
            self.gate.on_open.append(self._opened)

    def _opened(self) -> None:
        self.open = True
        if self.node.failed:        # failed meanwhile (Node.fail sets it before its listeners)
            self.open = False

    def _failed(self, _reason: str) -> None:
        self.open = False           # from a pipeline thread; never set back

    def refusal(self) -> str:
        """Why a call is refused while not ``open`` (UNAVAILABLE)."""
        if not self.gate.ready:
            return self.gate.message
        return f"{self.node.label}: {self.node.failed}"

    async def refuse(self, context: grpc.aio.ServicerContext) -> None:
        """UNAVAILABLE: recovering, or fail-stopped with the reason."""
        await context.abort(grpc.StatusCode.UNAVAILABLE, self.refusal())

    async def admit(self, context: grpc.aio.ServicerContext) -> None:
        """Scan and Count: open, or refused."""
        if not self.open:
            await self.refuse(context)

    def full_message(self) -> str:
        return (f"{self.node.label} has {self.in_flight} requests in flight "
                f"(limits.max_in_flight); retry later")

    async def full(self, context: grpc.aio.ServicerContext) -> None:
        """RESOURCE_EXHAUSTED: no room for more requests in flight (limits.max_in_flight)."""
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, self.full_message())

    async def admin(self, context: grpc.aio.ServicerContext, method: str) -> None:
        """An Admin call: a client admin.allow admits, and a ready node.

        Not refused when fail-stopped: Status says why, Files lists the files,
        TakeSnapshot answers the failure from the pipeline."""
        if self.allow != "any":
            await self._allowed(context, method)
        if not self.gate.ready:
            await self.gate.refuse(context)

    async def peer(self, context: grpc.aio.ServicerContext) -> None:
        """A call nodes make to each other (Admin.Members): a ready node.
        Not limited by admin.allow: peer traffic, like Raft.Push, which
        every node of the ring sends from wherever it runs."""
        if not self.gate.ready:
            await self.gate.refuse(context)

    async def _allowed(self, context: grpc.aio.ServicerContext, method: str) -> None:
        if self.allow == "loopback":
            if security.peer_is_loopback(context.peer()):
                return
            why = ("from this host only (admin.allow: loopback); run the command on the "
                   "node's host")
        else:
            if security.peer_presents(context.auth_context(), self._admin_der):
                return
            why = ("only to clients presenting tls.client_cert (admin.allow: tls-client); "
                   "use a config with that certificate")
        await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                            f"admin: {self.node.label} answers Admin.{method} {why}")
