"""Snapshot machinery of one node: the timer and the snapshot writer.

The dispatcher turns a SnapshotMarker into a cut (counter X, the last
sequence number before it; see node.py), the log writer rotates to ``log.X``
at it and the applier freezes the map there and puts ``(marker, chunks)``
into the snapshot writer's queue. The writer waits for the rotation, writes
``snap.X`` (storage/snapshot.py), then applies the retention
(``files.prune``: the last 3 snapshots and the logs they need) and
finishes the marker. One snapshot at a time: the dispatcher takes ``busy``
for a cut, the writer releases it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Callable

from chordctl.core.markers import STOP
from chordctl.core.storage import files, snapshot

logger = logging.getLogger("chordctl.node")


def timer(interval: float, stopping: threading.Event, request: Callable[[], None]) -> None:
    """The snapshot-timer thread: *request* a snapshot every *interval* seconds."""
    while not stopping.wait(interval):
        request()


class SnapshotWriter:
    """Writes snap.X from a frozen map, off the request path.

    *failstop* is the node's fail-stop state (``.failed``): a failed node
    writes no snapshot.
    """

    def __init__(self, directory: str, label: str, identity, metrics, failstop):
        self.directory = directory
        self.label = label
        self.identity = identity
        self.metrics = metrics
        self.failstop = failstop
        self.busy = threading.Lock()   # held from the cut until snap.X is done
        self.counter = 0               # newest snap.X written or recovered
        self.unwritten: int | None = None   # a cut whose log.X could not be created
        self.retry = False             # the last snap.X failed: the next cut is not skipped
        # Called with (marker, chunks) once snap.X is durable (writer thread):
        # ring.replicas > 1 writes the groups' dumps from the same frozen map.
        self.after: Callable | None = None

    def run(self, to_snap: queue.SimpleQueue) -> None:
        while True:
            item = to_snap.get()
            if item is STOP:
                return
            marker, chunks = item
            # The applier can reach the marker before the log writer does: wait
            # until every record up to the cut is durable in log.(X-1), or a
            # crash could leave a snap.X holding operations that no log holds.
            marker.rotated.wait()
            if marker.error:
                # The log writer could not open log.X: nothing of this snapshot
                # is on disk, and the next cut takes counter X again.
                self.unwritten = marker.counter
                self.busy.release()
                marker.finish()
                continue
            failed = self.failstop.failed
            if failed:
                marker.error = f"snapshot: snap.{marker.counter} not written: {failed}"
                self.busy.release()
                marker.finish()
                continue
            try:
                t0 = time.monotonic()
                path, size = snapshot.write(self.directory, marker.counter, marker.last_seq,
                                            chunks, identity=self.identity)
                keys = sum(len(c) for c in chunks)
                self.counter = marker.counter
                elapsed = time.monotonic() - t0
                self.metrics.snapshot.observe(elapsed)
                self.metrics.snapshot_bytes = size
                marker.result = (path, size, keys)
                marker.seconds = elapsed
                logger.info("%s: wrote %s (%d keys, %d bytes) in %.3fs", self.label, path, keys,
                            size, elapsed)
                files.prune(self.directory, marker.counter)
                if self.after is not None:
                    try:
                        self.after(marker, chunks)
                    except Exception:       # a bug there must not end the writer
                        logger.exception("%s: after snap.%d", self.label, marker.counter)
            except OSError as e:
                marker.error = (f"snapshot: cannot write snap.{marker.counter}: {e.strerror}; "
                                f"nothing is lost (the logs hold every write) -- free space; "
                                f"the next snapshot tries again")
                self.retry = True
                logger.error("%s: %s", self.label, marker.error)
            finally:
                self.busy.release()
                marker.finish()
