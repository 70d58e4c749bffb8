"""gRPC's environment for chordctl's own processes, set before grpc loads.

Imported first by the programs chordctl runs -- the CLI and the nodes it
starts (``chordctl.cli.main``), the benchmark's echo servers
(``chordctl.bench.echo``) -- and by nothing a library user imports: a
process that only uses ``chordctl.connect`` keeps gRPC as it found it.
Every setting is a default (``os.environ.setdefault``): a value in the
environment, even an empty one, wins.

``GRPC_EXPERIMENTS=-event_engine_listener`` (grpcio 1.80 to 1.89): since
1.80, grpcio reads the connections a server accepted through its
EventEngine, whose own threads hand each message to the completion queue
that grpc.aio's poller thread drains: one thread hop more per message
received than iomgr's endpoints, which that poller reads itself. A node
receives a message for every request and, with ``ring.replicas: 3``, for
every step of a write's Raft round. Measured here (BENCHMARKS.md): a round
trip of two messages between two aio processes 265 -> 170 us; sequential
creates R = 1 0.76 -> 0.71 ms, R = 3 1.53 -> 1.41 ms; YCSB A at 16 threads
R = 3 +7%. gRPC plans to remove its EventEngine experiments
(grpc/grpc#42150), and a grpcio without this one logs "Unknown experiment"
at start: the default is given only to the releases known to have it.
"""

from __future__ import annotations

import importlib.util
import os
import re

LISTENER = "-event_engine_listener"
# grpcio releases (major, minor) that have the experiment (1.85 is tested).
LISTENER_RELEASES = ((1, 80), (1, 90))


def grpcio_release() -> tuple[int, int] | None:
    """The installed grpcio's (major, minor), read without importing grpc
    (importlib.metadata costs ~35 ms here; its version file costs nothing)."""
    try:
        spec = importlib.util.find_spec("grpc")
        if spec is None or not spec.submodule_search_locations:
            return None
        path = os.path.join(list(spec.submodule_search_locations)[0], "_grpcio_metadata.py")
        with open(path, encoding="utf-8") as f:
            m = re.search(r"(\d+)\.(\d+)", f.read())
    except (OSError, ImportError, ValueError):
        return None
    return (int(m.group(1)), int(m.group(2))) if m else None


def defaults(environ=os.environ, release: tuple[int, int] | None = None) -> None:
    """Set gRPC's environment defaults in *environ* (the process's)."""
    release = release or grpcio_release()
    low, high = LISTENER_RELEASES
    if release is not None and low <= release < high:
        environ.setdefault("GRPC_EXPERIMENTS", LISTENER)


defaults()
