"""F2, the log writer (core/logwriter.py): what it completes and what it only writes."""

from __future__ import annotations

import os
import queue
import threading
import types

from chordctl.core.logwriter import LogWriter
from chordctl.core.markers import STOP
from chordctl.core.metrics import NodeMetrics
from chordctl.core.node import OwnedBatch
from chordctl.core.request import Request
from chordctl.core.storage import records
from chordctl.core.storage.log import LogFile
from chordctl.protocol import OP_CREATE


def _batch(seq: int, key: int, done: list, **kw) -> OwnedBatch:
    r = Request(OP_CREATE, key, str(key).encode(), b"v%d" % key, 0.0)
    r.seq = seq
    return OwnedBatch([r], 1, seq, lambda b: done.append(b.seq), **kw)


def _run(tmp_path, *items) -> LogWriter:
    w = LogWriter(str(tmp_path), "test", "batch", NodeMetrics(),
                  types.SimpleNamespace(failed=None))
    w.log = LogFile(str(tmp_path), 1)
    q: queue.SimpleQueue = queue.SimpleQueue()
    for item in (*items, STOP):
        q.put(item)
    t = threading.Thread(target=w.run, args=(q,))
    t.start()
    t.join(10)
    assert not t.is_alive()
    return w


def test_a_replicas_committed_entry_is_written_but_not_completed_by_the_log_writer(tmp_path):
    """A batch that waits for the log writer (R = 1) is one stage short of its
    answer after the write; a replica's committed entry (waits_for_log=False,
    answered by the applier alone) is written as well, and the writer leaves
    its answer to the applier: its on_done runs once, from the applier's
    stage_done, never twice."""
    done: list[int] = []
    owned = _batch(1, 10, done)
    behind = _batch(2, 11, done, stages=1, waits_for_log=False)
    w = _run(tmp_path, owned, behind)
    assert done == [] and w.durable_seq == 2
    owned.stage_done()          # the applier's turn: each is answered once
    behind.stage_done()
    assert done == [1, 2]
    with open(os.path.join(tmp_path, "log.1"), "rb") as f:
        logged = records.scan(f.read()).records
    assert [(r.seq, r.key, r.value) for r in logged] == [(1, b"10", b"v10"), (2, b"11", b"v11")]


def test_a_failed_write_refuses_what_waits_for_it_and_leaves_a_committed_entry_alone(
        tmp_path, monkeypatch):
    """The log write fails: a batch that waits for the log writer gets its
    verdict; a replica's committed entry (durable on a majority, answered by
    the applier) gets no error, so its answer stays the applied result."""
    done: list[int] = []
    owned = _batch(1, 10, done)
    behind = _batch(2, 11, done, stages=1, waits_for_log=False)
    failed: list[str] = []

    def fail(_lf, _data, _count):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(LogFile, "append", fail)
    stop = types.SimpleNamespace(failed=None)

    def failstop(reason):
        stop.failed = reason
        failed.append(reason)

    stop.fail = failstop
    w = LogWriter(str(tmp_path), "test", "batch", NodeMetrics(), stop)
    w.log = LogFile(str(tmp_path), 1)
    q: queue.SimpleQueue = queue.SimpleQueue()
    for item in (owned, behind, STOP):
        q.put(item)
    t = threading.Thread(target=w.run, args=(q,))
    t.start()
    t.join(10)
    assert not t.is_alive() and failed
    assert owned.error is not None and owned.error[1].startswith("test: ")
    assert behind.error is None
    behind.stage_done()
    assert done == [2]


def _writer(tmp_path, behind: float, appends: list, monkeypatch) -> LogWriter:
    real = LogFile.append

    def append(lf, data, count):
        appends.append(count)
        return real(lf, data, count)

    monkeypatch.setattr(LogFile, "append", append)
    w = LogWriter(str(tmp_path), "test", "everysec", NodeMetrics(),
                  types.SimpleNamespace(failed=None))
    w.behind = behind
    w.log = LogFile(str(tmp_path), 1)
    return w


def test_committed_entries_behind_the_journal_are_written_by_windows(tmp_path, monkeypatch):
    """A replica's committed entries (nobody waits for them) that arrive
    within one window of the first are written with one append; the records
    are all there, in order."""
    appends: list[int] = []
    w = _writer(tmp_path, 0.5, appends, monkeypatch)
    q: queue.SimpleQueue = queue.SimpleQueue()
    done: list[int] = []
    t = threading.Thread(target=w.run, args=(q,))
    t.start()
    q.put(_batch(1, 10, done, stages=1, waits_for_log=False))
    taken = threading.Event()
    for _ in range(1000):                 # the writer took the first: its window runs
        if q.empty():
            taken.set()
            break
        taken.wait(0.005)
    assert taken.is_set()
    q.put(_batch(2, 11, done, stages=1, waits_for_log=False))
    q.put(_batch(3, 12, done, stages=1, waits_for_log=False))
    q.put(STOP)
    t.join(10)
    assert not t.is_alive()
    assert appends == [3]
    with open(os.path.join(tmp_path, "log.1"), "rb") as f:
        logged = records.scan(f.read()).records
    assert [r.seq for r in logged] == [1, 2, 3]


def test_what_waits_for_the_log_is_written_at_once_whatever_the_window(tmp_path, monkeypatch):
    """A batch that waits for the log writer is not held for a window (here
    far longer than the test waits)."""
    appends: list[int] = []
    w = _writer(tmp_path, 60.0, appends, monkeypatch)
    q: queue.SimpleQueue = queue.SimpleQueue()
    written = threading.Event()
    r = Request(OP_CREATE, 10, b"10", b"v10", 0.0)
    r.seq = 1
    q.put(OwnedBatch([r], 1, 1, lambda b: written.set(), stages=1))
    t = threading.Thread(target=w.run, args=(q,), daemon=True)
    t.start()
    assert written.wait(10)
    assert appends == [1]
    q.put(STOP)
    t.join(10)
    assert not t.is_alive()
