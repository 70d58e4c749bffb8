"""The inventory behind Admin.Files and `snapshot list`: cached, bounded, race-proof.

A running node's Files call must not decode every log and the whole snapshot
each time (6 concurrent calls on 150k x 1 KB keys took reads from 2.5 to 430 ms
p99 and the node to 2 GB), and a file pruned while it is listed is simply gone
from the answer, not a FileNotFoundError.
"""

from __future__ import annotations

import asyncio
import os
import threading

import grpc
import pytest

from chordctl import config as config_mod
from chordctl.core import servicer as servicer_mod
from chordctl.core.storage import files, inventory, records, snapshot
from chordctl.core.storage.recovery import RecoveryReport
from chordctl.core.servicer import AdminServicer
from chordctl.errors import CorruptRecordError
from chordctl.protocol import OP_CREATE


def make_dir(d) -> str:
    """snap.1, snap.2 and log.0 .. log.2 (log.2 being the current one)."""
    d = str(d)
    seq = 0
    for c in range(3):
        recs = []
        for k in range(5):
            seq += 1
            recs.append((seq, OP_CREATE, str(c * 10 + k).encode(), b"v"))
        with open(os.path.join(d, files.log_name(c)), "wb") as f:
            f.write(records.encode_many(recs))
    snapshot.write(d, 1, 5, [{k: b"v" for k in range(5)}], pause_ratio=0)
    snapshot.write(d, 2, 10, [{k: b"v" for k in range(10)}], pause_ratio=0)
    return d


class Counting:
    """Counts calls of a function it wraps (monkeypatched in)."""

    def __init__(self, fn):
        self.fn = fn
        self.calls = 0

    def __call__(self, *a, **kw):
        self.calls += 1
        return self.fn(*a, **kw)


@pytest.fixture
def reads(monkeypatch):
    counters = {"snapshot": Counting(snapshot.read), "scan": Counting(inventory.count_records)}
    monkeypatch.setattr(inventory.snapshot, "read", counters["snapshot"])
    monkeypatch.setattr(inventory, "count_records", counters["scan"])
    return counters


def summary(docs: list[dict]) -> list[tuple]:
    return [(d["file"], d["records"], d["in_use"], d["status"], d.get("current", False))
            for d in docs]


def test_offline_describe_reads_every_file(tmp_path, reads) -> None:
    d = make_dir(tmp_path)
    docs = inventory.describe(d)
    assert summary(docs) == [
        ("snap.1", 5, False, "ok", False), ("snap.2", 10, True, "ok", False),
        ("log.0", 5, False, "ok", False), ("log.1", 5, False, "ok", False),
        ("log.2", 5, True, "ok", True)]
    assert reads["snapshot"].calls == 1 and reads["scan"].calls == 3


def test_files_cache_reads_each_unchanged_file_once(tmp_path, reads) -> None:
    d = make_dir(tmp_path)
    cache = inventory.Cache()
    first = inventory.describe(d, cache)
    calls = (reads["snapshot"].calls, reads["scan"].calls)
    for _ in range(5):
        assert summary(inventory.describe(d, cache)) == summary(first)
    # Only the newest log, which may still grow, is scanned again.
    assert reads["snapshot"].calls == calls[0]
    assert reads["scan"].calls == calls[1] + 5


def test_files_of_a_running_node_decode_nothing(tmp_path, reads) -> None:
    """The current log's records come from the node's counters; the snapshot
    the node wrote is known whole: no decoding at all, from the first call."""
    d = make_dir(tmp_path)
    cache = inventory.Cache()
    docs = inventory.describe(d, cache, current=(2, 42), trusted=(2,))
    assert reads["snapshot"].calls == 0
    assert reads["scan"].calls == 2       # log.0 and log.1, once, then cached
    assert summary(docs)[-1] == ("log.2", 42, True, "ok", True)
    assert [x["in_use"] for x in docs if x["kind"] == "snapshot"] == [False, True]
    inventory.describe(d, cache, current=(2, 43), trusted=(2,))
    assert reads["scan"].calls == 2


def test_closed_logs_the_node_replayed_or_wrote_are_not_read(tmp_path, reads) -> None:
    """A cold cache on a big node read every closed log whole (seconds, and
    the file's size in memory): a log the node replayed at start or closed
    itself is counted from what the node knows."""
    d = make_dir(tmp_path)
    docs = inventory.describe(d, inventory.Cache(), current=(2, 42), trusted=(2,),
                              known={0: 5, 1: 7})
    assert reads["scan"].calls == 0 and reads["snapshot"].calls == 0
    assert [(x["file"], x["records"], x["status"]) for x in docs if x["kind"] == "log"] == [
        ("log.0", 5, "ok"), ("log.1", 7, "ok"), ("log.2", 42, "ok")]


def test_counting_a_log_maps_it_and_checks_it_as_recovery_does(tmp_path) -> None:
    d = make_dir(tmp_path)
    path = os.path.join(d, "log.0")
    assert inventory.count_records(path, allow_torn=False) == (5, 0)
    with open(path, "ab") as f:
        f.write(records.encode_many([(6, OP_CREATE, b"9", b"v")])[:-3])   # cut short
    assert inventory.count_records(path, allow_torn=True)[0] == 5
    assert inventory.count_records(path, allow_torn=True)[1] > 0
    with pytest.raises(CorruptRecordError, match="only the newest log may end torn"):
        inventory.count_records(path, allow_torn=False)
    data = bytearray(open(path, "rb").read())
    data[20] ^= 0xFF                                   # a flipped bit in the first record
    open(path, "wb").write(bytes(data))
    with pytest.raises(CorruptRecordError) as damaged:
        inventory.count_records(path, allow_torn=True)
    assert damaged.value.offset == 0 and damaged.value.path == path
    open(path, "wb").close()
    assert inventory.count_records(path, allow_torn=False) == (0, 0)


def test_files_counts_the_logs_the_node_closed_and_replayed(tmp_path, monkeypatch) -> None:
    d = make_dir(tmp_path)
    node = FakeNode(d)
    node.log = FakeLog(3, 4)              # log.2 was rotated: 5 replayed + 2 appended
    node.writer.closed = {2: 2}
    open(os.path.join(d, files.log_name(3)), "wb").close()
    counted = Counting(inventory.count_records)
    monkeypatch.setattr(inventory, "count_records", counted)

    async def run():
        return await AdminServicer(node, asyncio.get_running_loop()).Files(None, FakeContext())

    reply = asyncio.run(run())
    assert [(f.name, f.records) for f in reply.files if f.kind == "log"] == [
        ("log.0", 5), ("log.1", 5), ("log.2", 7), ("log.3", 4)]
    assert counted.calls == 1             # log.0 only: the node neither replayed nor wrote it


def test_changed_file_is_read_again(tmp_path, reads) -> None:
    d = make_dir(tmp_path)
    cache = inventory.Cache()
    inventory.describe(d, cache)
    path = os.path.join(d, "log.0")
    with open(path, "ab") as f:
        f.write(records.encode_many([(99, OP_CREATE, b"7", b"x")]))
    [doc] = [x for x in inventory.describe(d, cache) if x["file"] == "log.0"]
    assert doc["records"] == 6


def test_file_pruned_while_listed_is_left_out(tmp_path, monkeypatch) -> None:
    d = make_dir(tmp_path)
    listed = files.list_counters(d)
    os.unlink(os.path.join(d, "snap.1"))
    os.unlink(os.path.join(d, "log.0"))
    # The listing was taken before the prune.
    monkeypatch.setattr(inventory.files, "list_counters", lambda _d: listed)
    names = [x["file"] for x in inventory.describe(d, inventory.Cache())]
    assert names == ["snap.2", "log.1", "log.2"]


def test_snapshot_pruned_between_header_and_verification_is_left_out(tmp_path,
                                                                      monkeypatch) -> None:
    d = make_dir(tmp_path)
    real = snapshot.read

    def read_after_prune(path):
        if path.endswith("snap.2"):
            os.unlink(path)
        return real(path)

    monkeypatch.setattr(inventory.snapshot, "read", read_after_prune)
    docs = inventory.describe(d)
    assert [x["file"] for x in docs if x["kind"] == "snapshot"] == ["snap.1"]
    assert [x for x in docs if x["file"] == "snap.1"][0]["in_use"]


# -- Admin.Files: one computation at a time -----------------------------------------

class FakeLog:
    def __init__(self, counter, records_):
        self.counter, self.records = counter, records_


class FakeWriter:
    def __init__(self):
        self.closed = {}


class FakeNode:
    def __init__(self, directory):
        self.config = config_mod.from_dict({"ring": {"bits": 8},
                                            "nodes": [{"host": "127.0.0.1", "port": 1}]})
        self.directory = directory
        self.label = "node 0 (id 255)"
        self.log = FakeLog(2, 3)
        self.writer = FakeWriter()
        self.report = RecoveryReport(directory=directory, logs=[(1, 5), (2, 5)],
                                     current_log=2)
        self.snapshot_counter = 2
        self.failed = None
        self.on_failed = []


class FakeContext:
    def peer(self):
        return "ipv4:127.0.0.1:1000"

    def auth_context(self):
        return {}

    async def abort(self, code, details):
        raise grpc.RpcError(f"{code}: {details}")


def test_concurrent_files_calls_share_one_computation(tmp_path, monkeypatch) -> None:
    d = make_dir(tmp_path)
    release = threading.Event()
    running = []
    calls = []
    real = inventory.describe

    def slow(*args, **kwargs):
        running.append(1)
        calls.append(1)
        try:
            assert len(running) == 1, "two computations at once"
            release.wait(10)
            return real(*args, **kwargs)
        finally:
            running.pop()

    monkeypatch.setattr(servicer_mod.inventory, "describe", slow)

    async def run():
        admin = AdminServicer(FakeNode(d), asyncio.get_running_loop())
        calls = [asyncio.ensure_future(admin.Files(None, FakeContext())) for _ in range(6)]
        for _ in range(3):           # let all six arrive while the first computes
            await asyncio.sleep(0)
        release.set()
        replies = await asyncio.gather(*calls)
        again = await admin.Files(None, FakeContext())
        return replies, again

    replies, again = asyncio.run(run())
    assert len(calls) == 2               # six callers shared one; the later call ran anew
    [current] = [f for f in replies[0].files if f.current]
    assert (current.name, current.records) == ("log.2", 8)   # 5 replayed + 3 appended
    assert all(r == replies[0] for r in replies)
    assert again.files == replies[0].files


def test_files_of_an_unlistable_directory_is_a_clear_error(tmp_path, monkeypatch) -> None:
    d = make_dir(tmp_path)
    real = os.listdir

    def listdir(p="."):
        if os.path.abspath(p) == os.path.abspath(d):
            raise PermissionError(13, "Permission denied", p)
        return real(p)

    monkeypatch.setattr(os, "listdir", listdir)

    async def run():
        admin = AdminServicer(FakeNode(d), asyncio.get_running_loop())
        with pytest.raises(grpc.RpcError) as refused:
            await admin.Files(None, FakeContext())
        return str(refused.value)

    text = asyncio.run(run())
    assert "INTERNAL" in text and f"storage: node 0 (id 255) cannot list {d}: Permission denied" \
        in text, text


def test_unreadable_closed_log_is_reported_not_raised(tmp_path, monkeypatch) -> None:
    d = make_dir(tmp_path)
    real_open = open

    def deny_log0(path, *a, **kw):
        if str(path).endswith("log.0"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *a, **kw)

    monkeypatch.setattr("builtins.open", deny_log0)
    [doc] = [x for x in inventory.describe(d) if x["file"] == "log.0"]
    assert doc["status"] == "unreadable: Permission denied" and doc["records"] is None
