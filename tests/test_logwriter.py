"""F2, the log writer (core/logwriter.py): what it completes and what it only writes."""

from __future__ import annotations

import os
import queue
import threading
import time
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


def _windows(monkeypatch, during: list) -> list[float]:
    """The writer's sleeps (its windows), recorded; the first puts *during*
    (queue, item) pairs in, as if they arrived within that window."""
    from chordctl.core import logwriter
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        if len(slept) == 1:
            for q, item in during:
                q.put(item)

    monkeypatch.setattr(logwriter, "time", types.SimpleNamespace(
        sleep=sleep, monotonic=time.monotonic, perf_counter=time.perf_counter))
    return slept


def _run_until_stopped(w: LogWriter, q: queue.SimpleQueue) -> None:
    """Run the writer until STOP; fail if it raised or did not stop."""
    raised: list[BaseException] = []

    def run() -> None:
        try:
            w.run(q)
        except BaseException as e:
            raised.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(10)
    if t.is_alive():
        q.put(STOP)
        raise AssertionError("the log writer did not stop")
    assert raised == []


def test_committed_entries_behind_the_journal_are_written_by_windows(tmp_path, monkeypatch):
    """A replica's committed entries (nobody waits for them) that arrive
    within one window of the first are written with one append, in order;
    while entries keep coming the writer sleeps a window before each write;
    after a window that brought nothing it blocks again (and STOP, arriving
    after that, ends it)."""
    appends: list[int] = []
    w = _writer(tmp_path, 0.005, appends, monkeypatch)
    q: queue.SimpleQueue = queue.SimpleQueue()
    done: list[int] = []
    slept = _windows(monkeypatch, [(q, _batch(2, 11, done, stages=1, waits_for_log=False)),
                                   (q, _batch(3, 12, done, stages=1, waits_for_log=False))])
    q.put(_batch(1, 10, done, stages=1, waits_for_log=False))
    stop_later = threading.Timer(0.5, q.put, args=(STOP,))
    stop_later.start()
    try:
        _run_until_stopped(w, q)
    finally:
        stop_later.cancel()
    assert appends == [3]
    # The first window, the next (it brought nothing), then a blocking get: STOP.
    assert slept == [0.005, 0.005]
    with open(os.path.join(tmp_path, "log.1"), "rb") as f:
        logged = records.scan(f.read()).records
    assert [r.seq for r in logged] == [1, 2, 3]


def test_a_marker_or_stop_arriving_in_a_window_is_written_after_what_came_before(
        tmp_path, monkeypatch):
    """What waits for the log and arrives within a window is taken at the
    window's end, after the entries before it: STOP there writes them all
    and ends the writer."""
    appends: list[int] = []
    w = _writer(tmp_path, 0.005, appends, monkeypatch)
    q: queue.SimpleQueue = queue.SimpleQueue()
    done: list[int] = []
    _windows(monkeypatch, [(q, _batch(2, 11, done, stages=1, waits_for_log=False)), (q, STOP)])
    q.put(_batch(1, 10, done, stages=1, waits_for_log=False))
    _run_until_stopped(w, q)
    assert sum(appends) == 2
    with open(os.path.join(tmp_path, "log.1"), "rb") as f:
        logged = records.scan(f.read()).records
    assert [r.seq for r in logged] == [1, 2]


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
