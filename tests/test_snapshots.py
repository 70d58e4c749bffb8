"""Snapshots and logs on real node processes.

Each test runs `chordctl node serve` processes and checks the files they
leave: the first files (log.0, then snap.1), rotation and pruning to the last
three snapshots and logs, the exact cut under concurrent writes, the
`snapshot` and `log replay` commands, and the fallback from a corrupt newest
snapshot.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import threading
import time

import pytest

from chordctl.client import Client
from chordctl.core.storage import files, records, snapshot
from chordctl.core.store import Store
from chordctl.errors import AlreadyExistsError, ChordError, NotFoundError
from chordctl.protocol import OP_CREATE
from conftest import NodeProc, run_chordctl, wait_until, write_config

LOAD_SECONDS = 30.0      # upper bound of every write loop
LOAD_OPS = 50_000        # and its count bound


# -- reading a node directory ---------------------------------------------------


def listing(directory: str) -> tuple[list[int], list[int]]:
    """(log counters, snapshot counters) present, ascending; .tmp files excluded."""
    return files.list_counters(directory)


def read_log(directory: str, counter: int, allow_torn: bool = False) -> list[records.Record]:
    path = os.path.join(directory, files.log_name(counter))
    with open(path, "rb") as f:
        return records.scan(f.read(), path, allow_torn=allow_torn).records


def read_snap(directory: str, counter: int) -> tuple[dict[int, bytes], int]:
    """(state, last_seq) of snap.<counter>, read on its own."""
    snap = snapshot.read(os.path.join(directory, files.snap_name(counter)))
    assert snap.info.counter == counter
    state: dict[int, bytes] = {}
    for chunk in snap.chunks:
        state.update(chunk)
    return state, snap.info.last_seq


def replay(recs: list[records.Record], start: dict[int, bytes] | None = None) -> dict[int, bytes]:
    """The state after applying *recs* in order to *start* with a Store."""
    store = Store()
    if start:
        for k, v in start.items():
            store.apply(OP_CREATE, k, v)
    for r in recs:
        store.apply(r.op, int(r.key), r.value)
    return dict(store.items())


def rotation_states(x: int) -> list[tuple[list[int], list[int]]]:
    """Every (logs, snaps) listing a node passes through while snap.x is the newest.

    Rotation to log.x happens before snap.x is written; after the rename the
    oldest snapshot, then the oldest log, are pruned; then the next marker
    rotates to log.(x+1).
    """
    def r(lo: int, hi: int) -> list[int]:
        return list(range(lo, hi + 1))

    return [
        (r(max(0, x - 3), x), r(max(1, x - 3), x)),      # snap.x renamed, nothing pruned
        (r(max(0, x - 3), x), r(max(1, x - 2), x)),      # oldest snapshot pruned
        (r(max(0, x - 2), x), r(max(1, x - 2), x)),      # oldest log pruned: steady
        (r(max(0, x - 2), x + 1), r(max(1, x - 2), x)),  # next marker rotated the log
    ]


def check_listing(logs: list[int], snaps: list[int]) -> None:
    if not snaps:
        assert logs in ([0], [0, 1]), f"before snap.1 the directory holds logs {logs}"
        return
    assert (logs, snaps) in rotation_states(snaps[-1]), \
        f"listing logs {logs}, snaps {snaps} is no state of the rotation"


def check_cut(directory: str, a: int, b: int) -> None:
    """snap.b == snap.a + log.a .. log.(b-1), and those logs continue a's sequence."""
    state, seq = read_snap(directory, a)
    recs = [r for c in range(a, b) for r in read_log(directory, c)]
    assert [r.seq for r in recs] == list(range(seq + 1, seq + 1 + len(recs))), \
        f"log.{a}..log.{b - 1} do not continue snap.{a}'s sequence {seq}"
    want, want_seq = read_snap(directory, b)
    assert want_seq == seq + len(recs)
    assert replay(recs, state) == want, f"snap.{a} + log.{a}..log.{b - 1} != snap.{b}"


# -- load ------------------------------------------------------------------------


class Writers:
    """Client threads doing create/update/delete on their own keys, tracking the result.

    Each thread owns disjoint keys, so its own model says what every
    operation must return and what state the acknowledged operations leave.
    A few creates on existing keys are sent on purpose: they fail, are still
    logged, and must replay to the same failure.
    """

    def __init__(self, config, threads: int = 4, keys_per_thread: int = 40, seed: int = 1):
        self.config = config
        self.stop = threading.Event()
        self.acked = 0
        self.errors: list[str] = []
        self.models: list[dict[int, bytes]] = [{} for _ in range(threads)]
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, name=f"writer-{t}",
                             args=(t, list(range(t * 1000, t * 1000 + keys_per_thread)),
                                   random.Random(seed * 100 + t)))
            for t in range(threads)]

    def __enter__(self) -> "Writers":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self._threads:
            t.join(60)
        assert not any(t.is_alive() for t in self._threads), "a writer thread hung"

    def state(self) -> dict[int, bytes]:
        out: dict[int, bytes] = {}
        for m in self.models:
            out.update(m)
        return out

    def _run(self, t: int, keys: list[int], rng: random.Random) -> None:
        model = self.models[t]
        deadline = time.monotonic() + LOAD_SECONDS
        try:
            with Client(self.config, timeout=10) as c:
                for n in range(LOAD_OPS):
                    if self.stop.is_set() or time.monotonic() > deadline:
                        return
                    k = rng.choice(keys)
                    value = f"t{t}-n{n}".encode()
                    if k not in model:
                        c.create(str(k), value)
                        model[k] = value
                    elif rng.random() < 0.05:
                        try:
                            c.create(str(k), value)
                        except AlreadyExistsError:
                            pass
                        else:
                            self.errors.append(f"create of existing key {k} succeeded")
                            return
                    elif rng.random() < 0.3:
                        c.delete(str(k))
                        del model[k]
                    else:
                        c.update(str(k), value)
                        model[k] = value
                    with self._lock:
                        self.acked += 1
        except ChordError as e:
            self.errors.append(f"writer {t}: {type(e).__name__}: {e}")


def wait_progress(writers: Writers, ops: int, timeout: float = 30.0) -> None:
    start = writers.acked
    wait_until(lambda: writers.acked >= start + ops or writers.errors, timeout=timeout,
               what=f"{ops} more acknowledged writes")
    assert not writers.errors, writers.errors


def read_all(client: Client, keys) -> dict[int, bytes]:
    """Every present key among *keys* with its value, read through the client."""
    keys = list(keys)
    out: dict[int, bytes] = {}
    for i in range(0, len(keys), 1000):
        part = keys[i:i + 1000]
        for k, res in zip(part, client.batch([("read", str(k), None) for k in part])):
            if isinstance(res, NotFoundError):
                continue
            assert not isinstance(res, ChordError), f"read {k}: {res}"
            out[k] = res.value
    return out


@pytest.fixture
def node_factory(tmp_path):
    started: list[NodeProc] = []

    def make(snapshot_interval: float = 0, **options) -> NodeProc:
        path = write_config(tmp_path, 1, snapshot_interval=snapshot_interval,
                            name=f"chordctl-{len(started)}.yaml", **options)
        n = NodeProc(path, 0)
        started.append(n)
        return n.start()

    yield make
    for n in started:
        n.stop()


# -- rotation and pruning ----------------------------------------------------------


def test_rotation_keeps_only_last_three_snapshots_and_logs(node_factory):
    node = node_factory(snapshot_interval=0.2)
    directory = node.config.node_dir(0)
    seen: list[tuple[list[int], list[int]]] = []

    def far_enough() -> bool:
        if writers.errors:
            return True
        logs, snaps = listing(directory)
        seen.append((logs, snaps))
        return bool(snaps) and snaps[-1] >= 6

    with Writers(node.config, threads=2, keys_per_thread=200) as writers:
        wait_until(far_enough, timeout=40, interval=0.005, what="snap.6")
    assert not writers.errors, writers.errors
    for logs, snaps in seen:
        check_listing(logs, snaps)

    # Writes stopped: the timer's next snapshot covers the last of them, the
    # later ones are skipped, and the directory settles.
    def settled() -> bool:
        logs, snaps = listing(directory)
        if not snaps or logs != snaps or len(snaps) != 3:
            return False
        try:
            info = snapshot.read_info(os.path.join(directory, files.snap_name(snaps[-1])))
        except FileNotFoundError:
            return False
        return info.last_seq == writers.acked

    wait_until(settled, timeout=20, what="a snapshot of the last write, and pruning")
    x = listing(directory)[1][-1]
    assert x >= 6
    steady = (list(range(x - 2, x + 1)), list(range(x - 2, x + 1)))
    with Client(node.config) as c:
        st = c.status()
        assert (st.snapshot_counter, st.log_counter, st.last_seq) == (x, x, writers.acked)
    assert node.stop() == 0
    assert listing(directory) == steady
    assert not [n for n in os.listdir(directory) if n.endswith(files.TMP_SUFFIX)]

    # The kept snapshots are exact cuts of the kept logs.
    check_cut(directory, x - 2, x - 1)
    check_cut(directory, x - 1, x)
    state, seq = read_snap(directory, x)
    assert read_log(directory, x) == []
    assert seq == writers.acked
    assert state == writers.state()


def test_first_files_are_log_0_then_snap_1(node_factory, run_cli):
    node = node_factory()
    directory = node.config.node_dir(0)
    cli = run_cli(node.config_path)
    assert listing(directory) == ([0], [])
    for k in range(10):
        assert cli("kv", "create", str(k), f"v{k}").exit_code == 0
    assert listing(directory) == ([0], [])

    r = cli("snapshot", "create", "--node", "0")
    assert r.exit_code == 0, r.output
    assert "snap.1" in r.output
    assert listing(directory) == ([0, 1], [1])

    for k in range(10, 15):
        assert cli("kv", "create", str(k), f"v{k}").exit_code == 0
    r = cli("snapshot", "create", "--node", "0", output="json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert [(d["node"], d["counter"], d["keys"]) for d in doc] == [(0, 2, 15)]
    assert doc[0]["path"].endswith(os.path.join("node-0", "snap.2"))
    assert listing(directory) == ([0, 1, 2], [1, 2])

    assert [r.seq for r in read_log(directory, 0)] == list(range(1, 11))
    assert [r.seq for r in read_log(directory, 1)] == list(range(11, 16))
    assert read_snap(directory, 1) == ({k: f"v{k}".encode() for k in range(10)}, 10)
    assert read_snap(directory, 2) == ({k: f"v{k}".encode() for k in range(15)}, 15)


def test_idle_node_takes_no_new_snapshots(node_factory):
    interval = 0.2
    node = node_factory(snapshot_interval=interval)
    directory = node.config.node_dir(0)
    with Client(node.config) as c:
        # One Batch: the 0.2 s timer can cut before it or after it, never
        # inside it (five creates one by one took longer than an interval
        # on a loaded machine, and snap.2 followed).
        c.batch([("create", str(k), b"x") for k in range(5)])
        wait_until(lambda: listing(directory) == ([0, 1], [1]), timeout=10, what="snap.1")
        before = {n: os.stat(os.path.join(directory, n)).st_mtime_ns
                  for n in os.listdir(directory)}
        # Nothing happens here by design, so only time can pass: let the
        # node's own clock run five intervals.
        up = c.status().uptime_seconds
        wait_until(lambda: c.status().uptime_seconds >= up + 5 * interval, timeout=10,
                   what="five snapshot intervals")
        st = c.status()
        assert (st.snapshot_counter, st.log_counter) == (1, 1)
        after = {n: os.stat(os.path.join(directory, n)).st_mtime_ns
                 for n in os.listdir(directory)}
        assert after == before

        # The timer was running all along: one write is snapshotted again.
        c.update("0", b"y")
        wait_until(lambda: listing(directory) == ([0, 1, 2], [1, 2]), timeout=10,
                   what="snap.2 after a write")
    assert read_snap(directory, 2)[0][0] == b"y"


def test_snapshot_list_marks_in_use_snapshot_and_writing_log(node_factory, run_cli):
    node = node_factory(snapshot_on_shutdown=False)
    directory = node.config.node_dir(0)
    cli = run_cli(node.config_path)
    for k in range(4):
        cli("kv", "create", str(k), "a")
    assert cli("snapshot", "create", "--node", "0").exit_code == 0
    for k in range(4, 7):
        cli("kv", "create", str(k), "b")
    cli("kv", "delete", "0")
    assert cli("snapshot", "create", "--node", "0").exit_code == 0
    cli("kv", "update", "1", "c")

    expected = {  # file -> (kind, counter, records, in use, current)
        "snap.1": ("snapshot", 1, 4, False, False),
        "snap.2": ("snapshot", 2, 6, True, False),
        "log.0": ("log", 0, 4, False, False),
        "log.1": ("log", 1, 4, False, False),
        "log.2": ("log", 2, 1, True, True),
    }

    def check_docs(docs: list[dict]) -> None:
        got = {d["file"]: (d["kind"], d["counter"], d["records"], d["in_use"],
                           d.get("current", False)) for d in docs}
        assert got == expected
        for d in docs:
            assert d["status"] == "ok"
            assert d["bytes"] == os.path.getsize(os.path.join(directory, d["file"]))
            assert d["mtime"] > 0

    r = cli("snapshot", "list", output="json")
    assert r.exit_code == 0, r.output
    running = json.loads(r.stdout)
    assert {d["node"] for d in running} == {0}
    check_docs(running)

    r = cli("snapshot", "list")
    assert r.exit_code == 0, r.output
    lines = {line.split()[1]: line for line in r.output.splitlines()[2:] if line.strip()}
    assert set(lines) == set(expected)
    assert "*" in lines["snap.2"].split() and "*" not in lines["snap.1"].split()
    assert "(writing)" in lines["log.2"]
    assert "(writing)" not in lines["log.1"]
    for name, (_kind, counter, recs, _use, _cur) in expected.items():
        cells = lines[name].split()  # node file kind counter bytes date time records ...
        assert (cells[3], cells[7]) == (str(counter), str(recs))

    assert node.stop() == 0
    r = cli("snapshot", "list", "--data-dir", directory, output="json")
    assert r.exit_code == 0, r.output
    offline = json.loads(r.stdout)
    check_docs(offline)
    r = cli("snapshot", "list", "--data-dir", directory)
    assert r.exit_code == 0, r.output
    assert "snap.2" in r.output and "(writing)" in r.output


# -- the exact cut ---------------------------------------------------------------------


def test_snapshot_cut_is_exact_under_concurrent_writes(node_factory, run_cli):
    node = node_factory(snapshot_on_shutdown=True)
    directory = node.config.node_dir(0)
    cli = run_cli(node.config_path)
    logs: dict[int, list[records.Record]] = {}
    snaps: dict[int, tuple[dict[int, bytes], int]] = {}
    with Writers(node.config, threads=4, keys_per_thread=40, seed=7) as writers:
        for x in range(1, 6):
            wait_progress(writers, 150)
            r = cli("snapshot", "create", "--node", "0", output="json")
            assert r.exit_code == 0, r.output
            assert json.loads(r.stdout)[0]["counter"] == x
            # snap.x is complete and log.(x-1) closed; read both before
            # later snapshots prune them.
            snaps[x] = read_snap(directory, x)
            logs[x - 1] = read_log(directory, x - 1)
        wait_progress(writers, 150)
    assert not writers.errors, writers.errors
    assert node.stop() == 0
    # The clean stop took snap.6 of what followed snap.5.
    assert listing(directory) == ([4, 5, 6], [4, 5, 6])
    logs[5] = read_log(directory, 5)
    assert read_log(directory, 6) == []
    snaps[6] = read_snap(directory, 6)

    # Every operation is in exactly one log, in order, with no hole.
    seqs = [r.seq for c in range(6) for r in logs[c]]
    assert seqs == list(range(1, len(seqs) + 1))
    assert all(logs[c] for c in range(6)), "every log should hold writes"
    for x, (state, last_seq) in snaps.items():
        before = [r for c in range(x) for r in logs[c]]
        assert last_seq == before[-1].seq, f"snap.{x} does not end where log.{x - 1} ends"
        assert state == replay(before), f"snap.{x} differs from replaying log.0..log.{x - 1}"
    everything = [r for c in range(6) for r in logs[c]]
    assert replay(everything) == writers.state()
    assert len(everything) == writers.acked  # failed creates are logged too


# -- log replay ------------------------------------------------------------------------


def populate(cli) -> set[int]:
    """Creates, updates and deletes around two snapshots; returns every key touched."""
    for k in range(40):
        assert cli("kv", "create", str(k), f"first-{k}").exit_code == 0
    for k in range(0, 40, 3):
        assert cli("kv", "update", str(k), f"second-{k}").exit_code == 0
    assert cli("snapshot", "create", "--node", "0").exit_code == 0
    for k in range(0, 40, 5):
        assert cli("kv", "delete", str(k)).exit_code == 0
    for k in range(40, 60):
        assert cli("kv", "create", str(k), f"first-{k}").exit_code == 0
    assert cli("snapshot", "create", "--node", "0").exit_code == 0
    for k in (1, 8, 22, 29, 36, 43, 50, 57):
        assert cli("kv", "update", str(k), f"third-{k}").exit_code == 0
    for k in (2, 41):
        assert cli("kv", "delete", str(k)).exit_code == 0
    assert cli("kv", "create", "10**30", "big").exit_code == 2  # refused, not logged
    assert cli("kv", "create", str(10**30), "big").exit_code == 0
    return set(range(60)) | {10**30}


def dir_bytes(directory: str) -> dict[str, bytes]:
    out = {}
    for name in sorted(os.listdir(directory)):
        with open(os.path.join(directory, name), "rb") as f:
            out[name] = f.read()
    return out


def test_log_replay_matches_restarted_node(node_factory, run_cli):
    node = node_factory(snapshot_on_shutdown=False)
    directory = node.config.node_dir(0)
    cli = run_cli(node.config_path)
    keys = populate(cli)
    assert node.stop() == 0
    untouched = dir_bytes(directory)

    r = cli("log", "replay", "--data-dir", directory, "--dump", output="json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["snapshot"] == "snap.2"
    assert doc["logs"] == [{"file": "log.2", "records": 11}]
    assert doc["torn_bytes"] == 0 and doc["fallbacks"] == []
    dumped = {int(d["key"]): d["value"].encode() for d in doc["data"]}
    assert all(d["encoding"] == "utf-8" for d in doc["data"])
    assert doc["keys"] == len(dumped)

    r = cli("log", "replay", "--data-dir", directory)
    assert r.exit_code == 0, r.output
    assert "snap.2" in r.output and "log.2 (11 records)" in r.output
    assert str(len(dumped)) in r.output

    p = run_chordctl("log", "replay", "--data-dir", directory, "--dump")
    assert p.returncode == 0, p.stderr
    lines = [ln for ln in p.stdout.split(b"\n") if b"\t" in ln]
    assert {int(k): v for k, v in (ln.split(b"\t", 1) for ln in lines)} == dumped

    r = cli("log", "replay", "--data-dir", directory, "--verify")
    assert r.exit_code == 0, r.output
    assert dir_bytes(directory) == untouched, "log replay changed the directory"

    node.start()
    with Client(node.config) as c:
        served = read_all(c, sorted(keys))
    assert served == dumped
    assert served[1] == b"third-1" and served[3] == b"second-3" and served[10**30] == b"big"
    assert 0 not in served and 2 not in served and 41 not in served


def test_log_replay_verify_flags_torn_tail_and_corrupt_snapshot(node_factory, run_cli,
                                                                 tmp_path):
    node = node_factory(snapshot_on_shutdown=False)
    directory = node.config.node_dir(0)
    cli = run_cli(node.config_path)
    populate(cli)
    assert node.stop() == 0

    p = run_chordctl("log", "replay", "--data-dir", directory, "--verify")
    assert p.returncode == 0, p.stderr

    torn = str(tmp_path / "torn")
    shutil.copytree(directory, torn)
    with open(os.path.join(torn, "log.2"), "ab") as f:
        f.write(records.encode_many([(999, OP_CREATE, b"77", b"never acknowledged")])[:-3])
    p = run_chordctl("log", "replay", "--data-dir", torn, "--verify")
    assert p.returncode == 1, p.stdout + p.stderr
    r = cli("log", "replay", "--data-dir", torn, output="json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["torn_bytes"] > 0

    corrupt = str(tmp_path / "corrupt")
    shutil.copytree(directory, corrupt)
    flip_byte(os.path.join(corrupt, "snap.2"))
    r = cli("log", "replay", "--data-dir", corrupt, "--verify", output="json")
    assert r.exit_code == 1, r.output
    doc = json.loads(r.stdout)
    assert doc["snapshot"] == "snap.1" and doc["fallbacks"]


# -- a corrupt newest snapshot ---------------------------------------------------------------


def flip_byte(path: str) -> None:
    """Invert one byte in the middle of a snapshot, and check the damage is detectable."""
    with open(path, "r+b") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(size // 2)
        b = f.read(1)
        f.seek(size // 2)
        f.write(bytes([b[0] ^ 0xFF]))
    with pytest.raises(ChordError):
        snapshot.read(path)


def test_corrupt_newest_snapshot_falls_back_without_loss(node_factory):
    node = node_factory(snapshot_on_shutdown=False)
    directory = node.config.node_dir(0)
    acked: dict[int, bytes] = {}
    with Client(node.config) as c:
        for phase in range(3):
            ops = [("create", str(k), f"p{phase}-{k}".encode())
                   for k in range(phase * 300, phase * 300 + 300)]
            ops += [("update", str(k), f"u{phase}-{k}".encode())
                    for k in range(phase * 300, phase * 300 + 300, 4)]
            results = c.batch(ops)
            assert not [r for r in results if isinstance(r, ChordError)]
            for _op, k, v in ops:
                acked[int(k)] = v
            if phase < 2:
                assert c.take_snapshot().counter == phase + 1
    assert node.stop() == 0
    assert listing(directory) == ([0, 1, 2], [1, 2])
    flip_byte(os.path.join(directory, "snap.2"))

    node.start()
    assert "falling back" in node.log()
    with Client(node.config) as c:
        assert read_all(c, sorted(acked)) == acked
        st = c.status()
        assert st.keys == len(acked)
        # The next snapshot must not reuse a counter already on disk.
        newest_on_disk = max(listing(directory)[1])
        taken = c.take_snapshot()
        assert taken.counter > newest_on_disk
        assert taken.keys == len(acked)
    assert read_snap(directory, taken.counter)[0] == acked
    assert node.stop() == 0
    node.start()
    with Client(node.config) as c:
        assert c.status().snapshot_counter == taken.counter
        assert read_all(c, sorted(acked)) == acked
