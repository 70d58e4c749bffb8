"""One real node killed and damaged: acknowledged writes survive `kill -9`, a torn
log tail is dropped with a warning, corruption in the middle stops the node."""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import NodeProc, write_config
from chordctl.client import Client, Result
from chordctl.core.storage import files, records
from chordctl.errors import NotFoundError, UnavailableError
from chordctl.protocol import OP_CREATE

KEYS_PER_ROUND = 300
WRITERS = 8
KILL_AFTER_ACKS = 600        # every key created, and some updated, on most runs
MAX_OPS_PER_WRITER = 5000    # bounds each writer if the kill never comes
WRITE_SECONDS = 60.0
ROUNDS = 3


def node_dir(n: NodeProc) -> str:
    return n.config.node_dir(0)


def newest_log(n: NodeProc) -> str:
    logs, _ = files.list_counters(node_dir(n))
    assert logs, os.listdir(node_dir(n))
    return os.path.join(node_dir(n), files.log_name(logs[-1]))


def full_log(n: NodeProc) -> str:
    """Everything the node process wrote to stderr, across restarts."""
    with open(n.log_path, encoding="utf-8", errors="replace") as f:
        return f.read()


def torn_warnings(n: NodeProc, text: str) -> list[str]:
    """WARNING lines that speak of a torn record (the test's own path says "torn" too)."""
    base = os.path.dirname(n.config_path)
    return [line for line in text.splitlines()
            if "WARNING" in line and "torn" in line.replace(base, "<dir>")]


def read_all(n: NodeProc, keys: list[str]) -> dict[str, bytes | None]:
    with Client(n.config) as c:
        results = c.batch([("read", k, None) for k in keys], timeout=60)
    out = {}
    for k, r in zip(keys, results):
        if isinstance(r, Result):
            out[k] = r.value
        else:
            assert isinstance(r, NotFoundError), (k, r)
            out[k] = None
    return out


# -- kill -9 while writes continue ----------------------------------------------------


class Writer:
    """One client owning a set of keys: creates them all, then updates them in turn.

    ``acked`` holds each key's last acknowledged value; ``in_flight`` the one
    write that got no answer because the node died (key, value).
    """

    def __init__(self, n: NodeProc, keys: list[str], counter: "AckCounter"):
        self.n = n
        self.keys = keys
        self.counter = counter
        self.acked: dict[str, bytes] = {}
        self.in_flight: tuple[str, bytes] | None = None

    def run(self) -> None:
        deadline = time.monotonic() + WRITE_SECONDS
        ops = 0
        version = 0
        with Client(self.n.config) as c:
            while ops < MAX_OPS_PER_WRITER and time.monotonic() < deadline:
                for key in self.keys:
                    value = f"{key}:{version}".encode()
                    try:
                        c.call("create" if version == 0 else "update", key, value)
                    except UnavailableError:
                        self.in_flight = (key, value)
                        return
                    self.acked[key] = value
                    self.counter.tick()
                    ops += 1
                version += 1


class AckCounter:
    def __init__(self, target: int):
        self.target = target
        self.count = 0
        self.lock = threading.Lock()
        self.reached = threading.Event()

    def tick(self) -> None:
        with self.lock:
            self.count += 1
            if self.count >= self.target:
                self.reached.set()


def test_kill_9_loses_no_acknowledged_write(tmp_path):
    path = write_config(tmp_path, 1, fsync="batch")
    n = NodeProc(path, 0).start()
    expected: dict[str, bytes] = {}     # every key of every round -> its durable value
    try:
        for rnd in range(ROUNDS):
            keys = [str(rnd * 1_000_000 + i) for i in range(KEYS_PER_ROUND)]
            counter = AckCounter(KILL_AFTER_ACKS)
            writers = [Writer(n, keys[w::WRITERS], counter) for w in range(WRITERS)]
            with ThreadPoolExecutor(WRITERS) as pool:
                futures = [pool.submit(w.run) for w in writers]
                reached = counter.reached.wait(WRITE_SECONDS)
                n.kill()                              # SIGKILL, then wait for the exit
                for f in futures:
                    f.result(timeout=WRITE_SECONDS)
            assert reached, f"round {rnd}: only {counter.count} acks before the deadline"
            interrupted = [w for w in writers if w.in_flight]
            assert interrupted, f"round {rnd}: every writer had finished before the kill"

            n.start()
            check = sorted(set(expected) | set(keys), key=int)
            got = read_all(n, check)
            lost = []
            for w in writers:
                for key, value in w.acked.items():
                    if w.in_flight and w.in_flight[0] == key:
                        continue
                    if got[key] != value:
                        lost.append((key, value, got[key]))
                if w.in_flight:
                    key, value = w.in_flight
                    allowed = {value, w.acked.get(key)}     # None: a create never applied
                    if got[key] not in allowed:
                        lost.append((key, sorted(map(repr, allowed)), got[key]))
            never_written = [k for k in keys
                             if all(k not in w.acked and (not w.in_flight or w.in_flight[0] != k)
                                    for w in writers)]
            assert all(got[k] is None for k in never_written), "unwritten keys appeared"
            assert not lost, f"round {rnd}: {len(lost)} acknowledged writes wrong, e.g. {lost[:5]}"
            gone = {k: v for k, v in expected.items() if got[k] != v}
            assert not gone, f"round {rnd}: keys of earlier rounds changed: {list(gone)[:5]}"
            # What the restarted node now serves is durable (reads wait for the
            # log too), so it is what later rounds must find.
            expected.update({k: got[k] for k in keys if got[k] is not None})
            assert "Traceback" not in full_log(n)
    finally:
        n.stop()
    assert len(expected) >= ROUNDS * (KEYS_PER_ROUND // 2)


# -- a torn tail --------------------------------------------------------------------


def test_replay_drops_torn_tail_and_keeps_serving(tmp_path):
    path = write_config(tmp_path, 1, snapshot_on_shutdown=False)
    n = NodeProc(path, 0).start()
    try:
        with Client(n.config) as c:
            for i in range(50):
                c.create(str(i), f"v{i}".encode())
            for i in range(0, 50, 3):
                c.update(str(i), f"u{i}".encode())
        assert n.stop() == 0, n.log()

        log = newest_log(n)
        with open(log, "rb") as f:
            scan = records.scan(f.read(), log, allow_torn=False)
        last_seq = scan.records[-1].seq
        record = records.encode_many([(last_seq + 1, OP_CREATE, b"777", b"t" * 100)])
        half = record[: len(record) // 2]
        with open(log, "ab") as f:
            f.write(half)

        n.start()
        warnings = torn_warnings(n, n.log())
        # What recovery found (reading only), then what the repair step did.
        assert len(warnings) == 2, n.log()
        assert f"{len(half)} bytes" in warnings[0] and "not replayed" in warnings[0]
        assert f"{len(half)} bytes" in warnings[1] and "log.0.broken" in warnings[1]
        with open(log + ".broken", "rb") as f:
            assert f.read().endswith(half)       # the file as it was, kept
        got = read_all(n, [str(i) for i in range(50)] + ["777"])
        assert got.pop("777") is None
        assert got == {str(i): (f"u{i}" if i % 3 == 0 else f"v{i}").encode() for i in range(50)}

        with Client(n.config) as c:
            for i in range(50, 60):
                c.create(str(i), f"new{i}".encode())
            c.update("1", b"after the tear")
            c.delete("2")
        assert n.stop() == 0, n.log()
        with open(log, "rb") as f:
            after = records.scan(f.read(), log, allow_torn=False)   # no garbage inside
        assert [r.seq for r in after.records] == list(range(1, last_seq + 13))

        n.start()
        assert len(torn_warnings(n, full_log(n))) == 2, "the tail was not cut off the file"
        got = read_all(n, ["1", "2"] + [str(i) for i in range(50, 60)])
        assert got["1"] == b"after the tear" and got["2"] is None
        assert all(got[str(i)] == f"new{i}".encode() for i in range(50, 60))
    finally:
        n.stop()


# -- corruption in the middle -------------------------------------------------------


@pytest.mark.parametrize("where", ["payload", "header"])
def test_corrupt_middle_record_stops_node_naming_file_and_offset(tmp_path, where):
    path = write_config(tmp_path, 1, snapshot_on_shutdown=False)
    n = NodeProc(path, 0).start()
    try:
        with Client(n.config) as c:
            for i in range(20):
                c.create(str(100 + i), f"value-{i}".encode())
    finally:
        assert n.stop() == 0, n.log()

    log = newest_log(n)
    with open(log, "rb") as f:
        data = bytearray(f.read())
    scan = records.scan(bytes(data), log, allow_torn=False)
    offset = 0
    for r in scan.records[:10]:
        offset += records.HEADER_SIZE + records.PAYLOAD_HEAD_SIZE + len(r.key) + len(r.value)
    victim = scan.records[10]
    if where == "payload":
        pos = offset + records.HEADER_SIZE + records.PAYLOAD_HEAD_SIZE + len(victim.key) + 2
    else:
        pos = offset    # the length field
    data[pos] ^= 0xFF
    with open(log, "wb") as f:
        f.write(data)

    n.start(wait=False)
    try:
        try:
            n.wait_ready()
        except AssertionError:
            pass          # it exited before serving, as it must
        else:
            pytest.fail(f"the node started on a corrupt log\n{n.log()}")
        code = n.proc.wait(timeout=30)
    finally:
        n.stop()
    assert code != 0, n.log()
    text = n.log()
    assert log in text or os.path.basename(log) in text, text
    assert f"offset {offset}" in text, text
    assert "Traceback" not in text, text
    with open(log, "rb") as f:
        assert f.read() == bytes(data), "the node changed a corrupt log instead of stopping"
