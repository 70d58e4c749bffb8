"""What travels a node's queues besides requests: the stop sentinel and the
markers that take a point in the request order (see node.py).

A leaf module: node.py, logwriter.py and snapshots.py all recognise these.
"""

from __future__ import annotations

import threading
from typing import Callable

STOP = object()   # ends every queue's consumer, in order behind what came before


class SnapshotMarker:
    """A snapshot's cut: F1 -> F2 (rotate the log) and F3 (freeze the map)."""

    __slots__ = ("force", "counter", "last_seq", "on_done", "skipped", "result", "error",
                 "rotated", "seconds", "capture_ms", "waiter", "head", "dumps")

    def __init__(self, force: bool, on_done: Callable[["SnapshotMarker"], None] | None = None,
                 waiter=None):
        self.force = force
        self.waiter = waiter     # what Replies wakes, when on_done sends it back (servicer)
        self.counter = 0
        self.last_seq = 0
        # Set by the log writer once log.(X-1) is closed and fsynced and log.X
        # exists; snap.X waits for it (see snapshots.SnapshotWriter).
        self.rotated = threading.Event()
        self.on_done = on_done
        self.skipped = False
        self.result: tuple[str, int, int] | None = None   # (path, bytes, keys)
        self.seconds = 0.0       # writing snap.X (snapshot-writer thread)
        self.capture_ms = 0.0    # freezing the map (applier thread, on the request path)
        self.error: str | None = None
        # ring.replicas > 1: raft records log.X starts with (each group's
        # applied index at the cut), written and fsynced before rotated is set.
        self.head: list | None = None
        # ... and group -> (prev, last), the two log entries each group's dump
        # of this cut stands at (replica.py).
        self.dumps: dict | None = None

    def finish(self) -> None:
        if self.on_done is not None:
            self.on_done(self)


class ReadMarker:
    """A point-in-time read of the whole map (scan, count): F1 -> F3, and F2 too
    when a mutation before it is not durable yet (ring.replicas 1 only: a
    replica's applied entries are durable in the journals already). Completes
    like an OwnedBatch without mutations (the log writer treats it as one)."""

    __slots__ = ("freeze", "seq", "mutations", "reqs", "error", "chunks", "keys", "on_done",
                 "_pending", "_lock", "waiter", "arc", "deadline")
    waits_for_log = True          # through F2, the log writer completes it too

    def __init__(self, freeze: bool, on_done: Callable[["ReadMarker"], None], waiter=None,
                 arc: int | None = None, deadline: float = 0.0):
        self.freeze = freeze          # capture the chunks (scan), or only count (count)
        self.arc = arc                # ring.replicas > 1: the view is for this arc's keys
        self.deadline = deadline      # time.monotonic() the caller gives up at (0: none)
        self.waiter = waiter          # what Replies wakes, when on_done sends it back
        self.seq = 0                  # the view holds every mutation up to this one
        self.mutations = 0
        self.reqs = ()
        self.error: tuple[int, str] | None = None
        self.chunks: list | None = None
        self.keys = 0
        self.on_done = on_done
        self._pending = 1
        self._lock: threading.Lock | None = None

    def wait_for_log(self) -> None:
        """The dispatcher: this marker goes to F2 too, so two stages complete it."""
        self._pending = 2
        self._lock = threading.Lock()

    def stage_done(self) -> None:
        if self._lock is not None:
            with self._lock:
                self._pending -= 1
                if self._pending:
                    return
        if self.error:
            self.chunks = None
        self.on_done(self)
