"""A full disk (or a failing fsync) under the log writer: never lose, never resurrect.

In-process nodes with an injected write failure check the log writer's
contract exactly; real node processes on a small tmpfs check it end to end
(skipped where this machine cannot mount one):

* a failed append is cut back to the log's last good length; when that cut
  is durable the replies say "not applied; safe to retry" and nothing of the
  write survives a restart;
* when the cut fails, or the append was whole and its fsync failed, the
  replies say "outcome unknown";
* after the failure the log writer never rotates (a snapshot marker already
  in F2 must not create log.X) and the snapshot writer writes nothing;
* once space is back the node restarts cleanly and holds exactly the
  acknowledged writes plus, at most, those whose outcome was unknown.
"""

from __future__ import annotations

import errno
import os
import subprocess
import threading
import time

import pytest

from chordctl import config as config_mod
from chordctl.client import Client
from chordctl.core.markers import SnapshotMarker
from chordctl.core.node import Node, Replies
from chordctl.core.request import Request
from chordctl.errors import ChordError, NotFoundError
from chordctl.protocol import OK, OP_CREATE, OP_READ, UNAVAILABLE
from conftest import NodeProc, write_config

ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
EIO = OSError(errno.EIO, os.strerror(errno.EIO))


class Pipeline:
    """One in-process Node on tmp_path; run() submits requests and waits for replies."""

    def __init__(self, tmp_path):
        self.cfg = config_mod.load(write_config(tmp_path, 1))
        self.dir = self.cfg.node_dir(0)
        self.node = Node(self.cfg, 0, Replies(self._complete, self._complete))
        self.node.recover()
        self.done: list[Request] = []
        self.cond = threading.Condition()
        self.node.start()

    def _complete(self, reqs: list[Request]) -> None:
        with self.cond:
            self.done.extend(reqs)
            self.cond.notify_all()

    def wait(self, reqs: list[Request], timeout: float = 30) -> None:
        ids = {id(r) for r in reqs}
        with self.cond:
            ok = self.cond.wait_for(
                lambda: ids <= {id(r) for r in self.done}, timeout=timeout)
        assert ok, "requests were never answered"

    def run(self, reqs: list[Request]) -> list[Request]:
        self.node.submit(reqs)
        self.wait(reqs)
        return reqs

    def stop(self) -> None:
        self.node.stop(final_snapshot=False)


def creates(keys, tag: str = "v", size: int = 0) -> list[Request]:
    deadline = time.monotonic() + 60
    return [Request(OP_CREATE, k, str(k).encode(), f"{tag}{k}".encode().ljust(size, b"."),
                    deadline) for k in keys]


def read(key: int) -> Request:
    return Request(OP_READ, key, str(key).encode(), b"", time.monotonic() + 60)


def restart(cfg) -> tuple[dict[int, bytes], object]:
    """Recover a new Node from the directory, as a restarted process would."""
    node = Node(cfg, 0)
    report = node.recover()
    data = dict(node.store.items())
    node.log.close()
    return data, report


def files_in(directory: str) -> list[str]:
    return sorted(n for n in os.listdir(directory) if n not in ("LOCK", "IDENTITY"))


def fail_append(lf, marker: SnapshotMarker | None, *, cut_fails: bool = False) -> None:
    """The next append writes half its data, then fails with ENOSPC (a full
    disk mid-write). With *marker*, it first waits until the dispatcher has
    put the marker into F2, so the marker is queued behind the failing write."""
    real_rollback = getattr(lf, "rollback", None)   # None before the fix

    def append(data: bytes, count: int) -> None:
        if marker is not None:
            deadline = time.monotonic() + 10
            while not marker.counter and time.monotonic() < deadline:
                time.sleep(0.001)
            assert marker.counter, "the dispatcher never took the marker"
        os.write(lf._fd, data[:len(data) // 2])
        raise ENOSPC

    def rollback(size: int) -> None:
        if cut_fails:
            raise EIO
        real_rollback(size)

    lf.append = append
    lf.rollback = rollback


def test_failed_append_is_cut_back_refused_as_safe_to_retry_and_never_rotated(tmp_path):
    p = Pipeline(tmp_path)
    try:
        acked = p.run(creates(range(20)))
        assert all(r.code == OK for r in acked)
        good = os.path.getsize(os.path.join(p.dir, "log.0"))
        marker = SnapshotMarker(force=True)
        fail_append(p.node.log, marker)
        batch = creates(range(100, 1100), size=100)
        p.node.submit(batch)
        p.node.incoming.put(marker)
        p.wait(batch)
        assert marker.rotated.wait(10)
        for r in batch:
            assert r.code == UNAVAILABLE, r.message
            assert "No space left on device" in r.message
            assert "not applied; safe to retry" in r.message, r.message
            assert "outcome unknown" not in r.message
        assert p.node.failed
        # Cut back: nothing of the failed write is on disk, and no log.1.
        assert os.path.getsize(os.path.join(p.dir, "log.0")) == good
        # A read after the failure is refused, never served from the map
        # that applied the failed batch.
        after = p.run([read(100), read(5)])
        assert all(r.code == UNAVAILABLE and r.result is None for r in after)
    finally:
        p.stop()
    assert marker.result is None and marker.error and "not written" in marker.error
    assert files_in(p.dir) == ["log.0"], "the log rotated (or a snapshot was written) " \
                                         "after the node failed"
    data, report = restart(p.cfg)
    assert data == {r.key: r.value for r in acked}
    assert report.torn_bytes == 0 and report.warnings == []


def test_failed_cut_back_says_outcome_unknown_and_restart_repairs_the_torn_tail(tmp_path):
    p = Pipeline(tmp_path)
    try:
        acked = p.run(creates(range(10)))
        marker = SnapshotMarker(force=True)
        fail_append(p.node.log, marker, cut_fails=True)
        batch = creates(range(50, 300), size=50)
        p.node.submit(batch)
        p.node.incoming.put(marker)
        p.wait(batch)
        assert marker.rotated.wait(10)
        for r in batch:
            assert r.code == UNAVAILABLE and "outcome unknown" in r.message, r.message
            assert "safe to retry" not in r.message
    finally:
        p.stop()
    # log.0 still ends torn but stays the newest log: a restart cuts the
    # tail (keeping a copy) instead of calling it corruption.
    assert files_in(p.dir) == ["log.0"]
    data, report = restart(p.cfg)
    assert report.torn_bytes > 0
    assert "log.0.broken" in os.listdir(p.dir)
    assert any("log.0.broken" in m for m in report.repairs)
    unknown = {r.key: r.value for r in batch}
    acked_map = {r.key: r.value for r in acked}
    assert {k: v for k, v in data.items() if k in acked_map} == acked_map
    assert all(k in unknown and unknown[k] == v for k, v in data.items() if k not in acked_map)


def test_failed_fsync_says_outcome_unknown(tmp_path):
    p = Pipeline(tmp_path)
    try:
        acked = p.run(creates(range(10)))

        def sync() -> None:
            raise EIO
        p.node.log.sync = sync
        batch = p.run(creates(range(10, 20)))
        for r in batch:
            assert r.code == UNAVAILABLE, r.message
            assert "cannot fsync" in r.message and "outcome unknown" in r.message, r.message
        refused = p.run(creates([99]))
        # Refused by a failed node: nothing of it can reach the disk.
        assert refused[0].code == UNAVAILABLE
        assert "refuses requests" in refused[0].message
    finally:
        p.node.log.sync = lambda: None
        p.stop()
    data, _ = restart(p.cfg)
    acked_map = {r.key: r.value for r in acked}
    assert {k: v for k, v in data.items() if k in acked_map} == acked_map
    assert 99 not in data
    assert set(data) <= set(acked_map) | {r.key for r in batch}


def test_failed_snapshot_removes_its_tmp_file(tmp_path, monkeypatch):
    import marshal
    import types

    from chordctl.core.storage import snapshot

    def dumps(_chunk):
        raise ENOSPC          # the disk fills while snap.X.tmp is being written

    p = Pipeline(tmp_path)
    try:
        p.run(creates(range(10)))
        monkeypatch.setattr(snapshot, "marshal", types.SimpleNamespace(dumps=dumps,
                                                                       loads=marshal.loads))
        done = threading.Event()
        marker = SnapshotMarker(force=True, on_done=lambda m: done.set())
        p.node.incoming.put(marker)
        assert done.wait(30)
        assert marker.error and "No space left" in marker.error
        assert not [n for n in os.listdir(p.dir) if n.endswith(".tmp")], os.listdir(p.dir)
        # The node goes on: a failed snapshot is not a failed log.
        assert not p.node.failed
        assert all(r.code == OK for r in p.run(creates(range(10, 12))))
    finally:
        p.stop()


def test_failed_log_rotation_fails_only_the_snapshot_not_the_node(tmp_path, monkeypatch):
    """No room for a new log.X (no inode, a quota): log.(X-1) is still whole
    and open, so the node keeps appending to it and only the snapshot fails;
    the next snapshot takes the same counter, and a restart holds every write."""
    from chordctl.core import logwriter as node_mod   # the log writer opens log.X

    real = node_mod.LogFile
    refuse = {"on": True}

    def log_file(directory, counter):
        if refuse["on"]:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC),
                          os.path.join(directory, f"log.{counter}"))
        return real(directory, counter)

    p = Pipeline(tmp_path)
    try:
        p.run(creates(range(10)))
        monkeypatch.setattr(node_mod, "LogFile", log_file)
        done = threading.Event()
        marker = SnapshotMarker(force=True, on_done=lambda m: done.set())
        p.node.incoming.put(marker)
        assert done.wait(30)
        assert marker.error and "No space left" in marker.error and "log.1" in marker.error
        assert marker.result is None
        assert not p.node.failed, p.node.failed
        assert "log.1" not in os.listdir(p.dir) and "snap.1" not in os.listdir(p.dir)
        assert all(r.code == OK for r in p.run(creates(range(10, 20))))
        # Space is back: the next snapshot uses counter 1, as if the failed one never was.
        refuse["on"] = False
        done2 = threading.Event()
        again = SnapshotMarker(force=True, on_done=lambda m: done2.set())
        p.node.incoming.put(again)
        assert done2.wait(30)
        assert again.error is None and again.counter == 1, (again.error, again.counter)
        assert all(r.code == OK for r in p.run(creates(range(20, 25))))
    finally:
        p.stop()
    data, report = restart(p.cfg)
    assert sorted(data) == list(range(25))
    assert report.snapshot == 1


def test_failed_snapshot_write_is_retried_by_the_next_timer_tick(tmp_path, monkeypatch):
    """A snap.X that could not be written (ENOSPC) must not count as taken:
    the next scheduled (non-forced) snapshot writes one even with no new
    writes, instead of skipping because "nothing changed"."""
    from chordctl.core import snapshots as snapshots_mod

    real = snapshots_mod.snapshot.write
    refuse = {"on": True}

    def write(*args, **kwargs):
        if refuse["on"]:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(*args, **kwargs)

    def snap(force: bool) -> SnapshotMarker:
        done = threading.Event()
        marker = SnapshotMarker(force=force, on_done=lambda m: done.set())
        p.node.incoming.put(marker)
        assert done.wait(30)
        return marker

    p = Pipeline(tmp_path)
    try:
        p.run(creates(range(10)))
        monkeypatch.setattr(snapshots_mod.snapshot, "write", write)
        failed = snap(force=True)
        assert failed.error and "No space left" in failed.error and "nothing is lost" in failed.error
        assert not p.node.failed, p.node.failed
        refuse["on"] = False
        again = snap(force=False)          # what the timer sends
        assert not again.skipped and again.error is None and again.result, again.error
        assert again.counter == failed.counter + 1
        assert snap(force=False).skipped   # and now nothing changed: skipped again
    finally:
        p.stop()
    data, report = restart(p.cfg)
    assert sorted(data) == list(range(10)) and report.snapshot == failed.counter + 1


# -- real processes on a small tmpfs ------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """tmp_path/data on a 2 MiB tmpfs; yields (mount point, remount(size))."""
    mnt = tmp_path / "data"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or r.returncode}); "
                    f"a full disk needs one")

    def remount(size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(mnt)], check=True)

    try:
        yield str(mnt), remount
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_full_disk_batch_and_snapshot_then_restart_with_space_freed(tmp_path, small_disk):
    """The reproduction of issue #11: a 10,000-op Batch plus TakeSnapshot on a
    2 MB data dir. Before the fix the node could never restart, and 6,685
    "refused" writes came back."""
    mnt, remount = small_disk
    path = write_config(tmp_path, 1, timeout=30)
    node = NodeProc(path, 0).start()
    cfg = node.config
    big = b"v" * 250          # 10,000 records of ~280 bytes: more than the 2 MiB
    try:
        with Client(cfg) as c:
            for k in range(50):
                c.create(str(k), b"acked-%d" % k)
            results: list = []
            t = threading.Thread(target=lambda: results.extend(
                c.batch([("create", str(1000 + i), big) for i in range(10_000)])))
            t.start()
            try:
                snap = c.take_snapshot(timeout=30)
                snap_error = None
            except ChordError as e:
                snap, snap_error = None, str(e)
            t.join(60)
            assert not t.is_alive()
        assert len(results) == 10_000
        outcome = {}
        for i, res in enumerate(results):
            assert isinstance(res, ChordError), f"op {i} was acknowledged on a full disk"
            text = str(res)
            assert "not applied; safe to retry" in text or "outcome unknown" in text, text
            outcome[1000 + i] = "refused" if "safe to retry" in text else "unknown"
        assert not [n for n in os.listdir(cfg.node_dir(0)) if n.endswith(".tmp")]
        names = sorted(os.listdir(cfg.node_dir(0)))
        if snap is not None and snap.counter:
            # The snapshot came before the batch: snap.1 and log.1, nothing more.
            assert "log.2" not in names, names
        else:
            assert snap_error is not None
            assert "log.1" not in names, f"rotated after the failure: {names}"
        assert node.alive
    finally:
        node.stop()
    remount("64m")
    node.start()
    try:
        with Client(cfg, timeout=30) as c:
            for k in range(50):
                assert c.read(str(k)).value == b"acked-%d" % k
            back = c.batch([("read", str(k), None) for k in outcome])
            for k, res in zip(outcome, back):
                if outcome[k] == "refused":
                    assert isinstance(res, NotFoundError), f"refused create of {k}: {res}"
            c.create("777", b"after")
            assert c.read("777").value == b"after"
    finally:
        node.stop()
