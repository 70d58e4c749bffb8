"""kill -9 at every stage of logging and snapshotting; nothing acknowledged is lost.

A node with a short snapshot interval takes writes from four clients, each
recording what was acknowledged; it is killed at seeded random moments and
at each stage of a snapshot (right after the log rotated, while snap.X.tmp
is being written, right after the rename), restarted on the same directory,
and every key is read back. Then the assignment's own recovery test on a
four-node ring.
"""

from __future__ import annotations

import os
import random
import threading
import time

from chordctl.client import Client
from chordctl.core.ring import Ring
from chordctl.core.storage import files, records, snapshot
from chordctl.core.store import Store
from chordctl.errors import ChordError, NotFoundError, UnavailableError
from conftest import NodeProc, wait_until, write_config

SEED = 20240605
PRELOAD = 20_000          # keys loaded once, so a snapshot takes a while to write
WRITER_KEYS = 100         # per writer thread
STAGES = ("random", "rotated", "tmp", "renamed", "random", "tmp", "rotated")
ABSENT = None


def read_values(client: Client, keys: list[int]) -> dict[int, bytes | None]:
    """Every key's value (None when absent), read through the client in batches."""
    out: dict[int, bytes | None] = {}
    for i in range(0, len(keys), 5000):
        part = keys[i:i + 5000]
        for k, res in zip(part, client.batch([("read", str(k), None) for k in part],
                                             timeout=30)):
            if isinstance(res, NotFoundError):
                out[k] = ABSENT
            elif isinstance(res, ChordError):
                raise AssertionError(f"read {k} failed: {res}")
            else:
                out[k] = res.value
    return out


class Acked:
    """What the clients were told: the last acknowledged value of every key.

    Each writer thread owns its keys, so it knows what each operation must
    return. When the node dies under a call, the key may hold either its old
    or its new value; the next read settles it.
    """

    def __init__(self):
        self.values: dict[int, bytes | None] = {}
        self.in_flight: dict[int, tuple[bytes | None, bytes | None]] = {}
        self.errors: list[str] = []
        self.ops = 0
        self._lock = threading.Lock()

    def run_writer(self, config, t: int, rnd: int, stop: threading.Event,
                   rng: random.Random) -> None:
        keys = [100_000 + t * 1000 + i for i in range(WRITER_KEYS)]
        deadline = time.monotonic() + 20
        try:
            c = Client(config, timeout=10)
        except ChordError as e:
            self.errors.append(f"writer {t}: {e}")
            return
        with c:
            for n in range(100_000):
                if stop.is_set() or time.monotonic() > deadline:
                    return
                k = rng.choice(keys)
                old = self.values.get(k, ABSENT)
                new = f"r{rnd}-t{t}-n{n}".encode()
                if old is ABSENT:
                    op = "create"
                else:
                    op = "delete" if rng.random() < 0.25 else "update"
                    if op == "delete":
                        new = ABSENT
                try:
                    c.call(op, str(k), new)
                except UnavailableError:
                    self.in_flight[k] = (old, new)   # the node died under this call
                    return
                except ChordError as e:
                    self.errors.append(f"writer {t}: {op} {k}: {type(e).__name__}: {e}")
                    return
                self.values[k] = new
                with self._lock:
                    self.ops += 1

    def settle(self, seen: dict[int, bytes | None], context: str) -> None:
        """Check the restarted node's values against what was acknowledged."""
        wrong = []
        for k, v in seen.items():
            if k in self.in_flight:
                if v not in self.in_flight[k]:
                    wrong.append(f"{k}: {v!r} is neither {self.in_flight[k]!r}")
            elif v != self.values.get(k, ABSENT):
                wrong.append(f"{k}: {v!r} != acknowledged {self.values.get(k, ABSENT)!r}")
        assert not wrong, f"{context}: {len(wrong)} keys wrong, e.g. {wrong[:5]}"
        for k in self.in_flight:
            self.values[k] = seen[k]
        self.in_flight.clear()


def snapshots_are_whole_and_exact(directory: str) -> None:
    """Every snap.X left by the crash loads, and each is the previous one plus its logs."""
    logs, snaps = files.list_counters(directory)
    states = {}
    for x in snaps:
        snap = snapshot.read(os.path.join(directory, files.snap_name(x)))
        assert snap.info.counter == x
        states[x] = snap
    for a, b in zip(snaps, snaps[1:]):
        store = Store()
        store.load_chunks(states[a].chunks)
        seq = states[a].info.last_seq
        for c in range(a, b):
            path = os.path.join(directory, files.log_name(c))
            with open(path, "rb") as f:
                for r in records.scan(f.read(), path, allow_torn=False).records:
                    seq += 1
                    assert r.seq == seq, f"{path}: record {r.seq}, expected {seq}"
                    store.apply(r.op, int(r.key), r.value)
        assert seq == states[b].info.last_seq, f"snap.{b} does not end where log.{b - 1} ends"
        want = Store()
        want.load_chunks(states[b].chunks)
        assert dict(store.items()) == dict(want.items()), \
            f"snap.{a} + log.{a}..log.{b - 1} != snap.{b}"


def kill_at_stage(node: NodeProc, stage: str, rng: random.Random) -> str:
    """kill -9 the node at *stage*; returns what the directory showed at the kill."""
    directory = node.config.node_dir(0)
    time.sleep(rng.uniform(0.05, 0.4))  # let the writers run: the kill moment is random
    if stage == "random":
        node.kill()
        return "random"
    logs, snaps = files.list_counters(directory)
    base_log, base_snap = max(logs), max(snaps, default=0)

    def trigger():
        try:
            with Client(node.config, target=node.address) as c:
                c.take_snapshot(timeout=10)
        except ChordError:
            pass  # killed under it, or the timer's snapshot was in progress

    threading.Thread(target=trigger, daemon=True).start()
    deadline = time.monotonic() + 3
    shown = "nothing (timed out)"
    while time.monotonic() < deadline:
        names = os.listdir(directory)
        if stage == "tmp" and any(n.endswith(files.TMP_SUFFIX) for n in names):
            shown = "snap.X.tmp"
            break
        lg, sn = files.list_counters(directory)
        if stage == "rotated" and lg and lg[-1] > base_log:
            shown = f"log.{lg[-1]}"
            break
        if stage == "renamed" and sn and sn[-1] > base_snap:
            shown = f"snap.{sn[-1]}"
            break
    node.kill()
    return shown


def test_kill_at_every_snapshot_stage_loses_no_acknowledged_write(tmp_path):
    rng = random.Random(SEED)
    path = write_config(tmp_path, 1, snapshot_interval=0.2, timeout=10)
    node = NodeProc(path, 0)
    acked = Acked()
    hits = []
    try:
        node.start()
        preload = {k: f"pre-{k}".encode() for k in range(PRELOAD)}
        with Client(node.config, timeout=30) as c:
            items = list(preload.items())
            for i in range(0, len(items), 5000):
                res = c.batch([("create", str(k), v) for k, v in items[i:i + 5000]])
                assert not [r for r in res if isinstance(r, ChordError)]
        acked.values.update(preload)
        all_keys = sorted(preload) + [100_000 + t * 1000 + i for t in range(4)
                                      for i in range(WRITER_KEYS)]

        for rnd, stage in enumerate(STAGES):
            stop = threading.Event()
            writers = [threading.Thread(target=acked.run_writer,
                                        args=(node.config, t, rnd, stop,
                                              random.Random(rng.random())))
                       for t in range(4)]
            for w in writers:
                w.start()
            try:
                wait_until(lambda: acked.ops > 0 or acked.errors, timeout=20,
                           what="the first acknowledged write")
                hits.append(kill_at_stage(node, stage, rng))
            finally:
                stop.set()
                node.kill()
                for w in writers:
                    w.join(30)
            assert not any(w.is_alive() for w in writers), "a writer hung after the kill"
            assert not acked.errors, acked.errors

            snapshots_are_whole_and_exact(node.config.node_dir(0))
            on_disk = max(files.list_counters(node.config.node_dir(0))[1], default=0)
            node.start()
            with Client(node.config, timeout=30) as c:
                acked.settle(read_values(c, all_keys),
                             f"round {rnd} (kill at {stage}: {hits[-1]})")
                # The counter continues from the files (the timer, U = 0.2 s,
                # may already have written the next snapshot).
                st = c.status()
                after = max(files.list_counters(node.config.node_dir(0))[1], default=0)
                assert on_disk <= st.snapshot_counter <= after
            assert "Traceback" not in node.log()
    finally:
        node.stop()
    assert acked.ops > 100, f"too little load to mean anything: {acked.ops} writes"


# -- the assignment's recovery test on a ring -------------------------------------------------


def test_restarted_owner_serves_its_items_through_another_node(make_cluster, run_cli):
    cluster = make_cluster(4, snapshot_interval=0)
    cfg = cluster.config
    ring = Ring(cfg.ring.bits, len(cfg.nodes), cfg.ring.placement, cfg.ring.routing)
    owner = 2
    low, high = ring.arc(owner)
    rng = random.Random(SEED)
    items: dict[str, bytes] = {}
    victim = cluster.nodes[owner]

    for rnd in range(2):
        if rnd == 1:
            # The second restart recovers from a snapshot plus the log after it.
            r = run_cli(cluster.config_path)("snapshot", "create", "--node", str(owner))
            assert r.exit_code == 0, r.output
        new = {}
        while len(new) < 5:
            k = rng.randrange(low + 1, high + 1)
            if str(k) not in items and str(k) not in new:
                assert ring.owner(k) == owner
                new[str(k)] = f"round {rnd} item {len(new)}".encode()
        with Client(cfg, target=cluster.address(0)) as c:
            for k, v in new.items():
                assert c.create(k, v).node_index == owner
        items.update(new)

        victim.kill()
        victim.start()
        for entry in (1, 3):
            with Client(cfg, target=cluster.address(entry)) as c:
                for k, v in items.items():
                    res = c.read(k)
                    assert (res.value, res.node_index) == (v, owner), f"key {k} via {entry}"
        with Client(cfg, target=victim.address) as c:
            assert c.status().keys == len(items)
            assert c.status().snapshot_counter == rnd
