"""``chordctl ring migrate``: move a stopped ring's data to another ring (issue #11 finding 3)."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys

import pytest

from chordctl import config as config_mod
from chordctl.client import Client
from chordctl.core.node import Node
from chordctl.core.ring import Ring
from chordctl.core.storage import identity, migrate, recovery, records
from chordctl.core.storage.identity import RingIdentity
from chordctl.core.store import Store
from chordctl.errors import DirectoryLockedError, InvalidInputError, RingMismatchError
from chordctl.protocol import OP_CREATE
from conftest import CLI, Cluster, NodeProc, wait_until, write_config

# Keys all over the ring under every (bits, placement) used here, big ones too.
KEYS = sorted({k * 2_741 for k in range(120)} | {2**20 + 7 * k for k in range(20)}
              | {10**30 + k for k in range(10)} | {0, 65535, 65536, 2**20 - 1})


def value(k: int) -> bytes:
    return b"value-%d" % k


def config(tmp_path, n: int, name: str, bits: int = 16, placement: str = "direct",
           data: str = "data"):
    """A config file for n nodes; returns (path, Config). All share tmp_path/<data>."""
    path = write_config(tmp_path, n, bits=bits, placement=placement, name=name)
    if data != "data":
        text = open(path).read().replace(str(tmp_path / "data"), str(tmp_path / data))
        with open(path, "w") as f:
            f.write(text)
    return path, config_mod.load(path)


def fill_offline(cfg, keys=KEYS) -> None:
    """Each node of *cfg* recovers in-process and logs the creates of the keys it owns."""
    ring = Ring(cfg.ring.bits, len(cfg.nodes), cfg.ring.placement)
    for i in range(len(cfg.nodes)):
        node = Node(cfg, i)
        node.recover()
        for k in keys:
            if ring.owner(k) == i:
                node.seq += 1
                node.log.append(records.encode_many(
                    [(node.seq, OP_CREATE, str(k).encode(), value(k))]), 1)
        node.log.close()
        node.stop()


def read_dirs(cfg) -> dict[int, dict[int, bytes]]:
    """node index -> its recovered map, checked to lie in its arc."""
    ring = Ring(cfg.ring.bits, len(cfg.nodes), cfg.ring.placement)
    out = {}
    for i in range(len(cfg.nodes)):
        store = Store()
        recovery.recover(cfg.node_dir(i), store)
        out[i] = dict(store.items())
        assert all(ring.owner(k) == i for k in out[i]), i
    return out


def tree_bytes(directory: str) -> dict[str, bytes]:
    out = {}
    for root, _, names in os.walk(directory):
        for n in names:
            if n != "LOCK":        # the lock records the last holder's pid
                p = os.path.join(root, n)
                out[os.path.relpath(p, directory)] = open(p, "rb").read()
    return out


def read_every_key(cfg_path: str, keys=KEYS) -> None:
    ring = Cluster(cfg_path).start()
    try:
        with Client(ring.config) as c:
            for k in keys:
                assert c.read(str(k)).value == value(k), k
    finally:
        ring.stop()


# -- with real nodes ---------------------------------------------------------------------


def test_migrate_4_to_3_to_5_nodes_then_bits_16_to_20_and_hash_keeps_every_key(tmp_path):
    four, _ = config(tmp_path, 4, "four.yaml")
    ring = Cluster(four).start()
    try:
        with Client(ring.config) as c:
            for k in KEYS:
                c.create(str(k), value(k))
    finally:
        ring.stop()
    steps = [config(tmp_path, 3, "three.yaml")[0], config(tmp_path, 5, "five.yaml")[0],
             config(tmp_path, 5, "five-20-hash.yaml", bits=20, placement="hash")[0]]
    old = four
    for new in steps:
        result = CLI(None)("ring", "migrate", "--from", old, "--to", new, "-o", "json")
        assert result.exit_code == 0, result.output
        doc = json.loads(result.stdout)
        assert doc["keys"] == len(KEYS)
        assert sum(n["keys"] for n in doc["nodes"]) == len(KEYS)
        assert doc["old_kept_at"] and os.path.isdir(doc["old_kept_at"])
        read_every_key(new)
        old = new
    kept = sorted(glob.glob(str(tmp_path / "data.old-*")))
    assert len(kept) == 3
    assert sorted(os.listdir(kept[0])) == ["node-0", "node-1", "node-2", "node-3"]


def test_migrate_refuses_while_an_old_node_runs(tmp_path) -> None:
    two, cfg = config(tmp_path, 2, "two.yaml")
    three, _ = config(tmp_path, 3, "three.yaml")
    fill_offline(cfg)
    node = NodeProc(two, 1).start()
    try:
        result = CLI(None)("ring", "migrate", "--from", two, "--to", three)
        assert result.exit_code == 2
        assert f"in use by process {node.proc.pid}" in result.output
    finally:
        node.stop()
    assert not glob.glob(str(tmp_path / "data.*"))
    assert sorted(os.listdir(tmp_path / "data")) == ["node-0", "node-1"]


def test_interrupted_migration_leaves_the_old_ring_intact(tmp_path) -> None:
    four, cfg = config(tmp_path, 4, "four.yaml")
    three, _ = config(tmp_path, 3, "three.yaml")
    fill_offline(cfg)
    before = tree_bytes(str(tmp_path / "data"))
    env = dict(os.environ, CHORDCTL_TEST_MIGRATE_PAUSE="60")
    proc = subprocess.Popen([sys.executable, "-m", "chordctl", "ring", "migrate", "--from", four,
                             "--to", three], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)
    try:
        # Killed once the first new node is written, in the middle of the migration.
        wait_until(lambda: glob.glob(str(tmp_path / "data.migrating-*/node-0/IDENTITY")),
                   timeout=30, what="the first new node directory")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    assert tree_bytes(str(tmp_path / "data")) == before
    read_every_key(four)
    # Run again to the end: the partial tree is reported and left alone.
    result = CLI(None)("ring", "migrate", "--from", four, "--to", three)
    assert result.exit_code == 0, result.output
    assert "interrupted migration" in result.output
    assert len(glob.glob(str(tmp_path / "data.migrating-*"))) == 1
    read_every_key(three)


# -- the library, offline ------------------------------------------------------------------


def test_migrate_to_another_data_dir_leaves_the_old_directories_alone(tmp_path) -> None:
    _, old = config(tmp_path, 4, "four.yaml")
    _, new = config(tmp_path, 3, "three.yaml", bits=20, placement="hash", data="data2")
    fill_offline(old)
    before = tree_bytes(str(tmp_path / "data"))
    seen = []
    rep = migrate.migrate(old, new, lambda phase, n, total: seen.append((phase, n, total)))
    assert tree_bytes(str(tmp_path / "data")) == before
    assert rep.kept_at is None and rep.keys == len(KEYS)
    assert [s for s in seen if s[0] == "read"] == [("read", 1, 4)] * 4
    assert sum(n for phase, n, _ in seen if phase == "write") == len(KEYS)
    got = read_dirs(new)
    merged = {k: v for m in got.values() for k, v in m.items()}
    assert merged == {k: value(k) for k in KEYS}
    for j in range(3):
        found = identity.read(new.node_dir(j))
        assert found.identity == RingIdentity(20, "hash", 3, j) and not found.adopted
    # moved + kept add up, per new node and in all
    assert sum(n.kept + n.moved_in for n in rep.new_nodes) == len(KEYS)
    assert rep.moved == len(KEYS) - sum(n.kept for n in rep.new_nodes)


def test_migrate_refuses_a_from_config_that_is_not_the_ring_on_disk(tmp_path) -> None:
    _, four = config(tmp_path, 4, "four.yaml")
    _, two = config(tmp_path, 2, "two.yaml")
    _, three = config(tmp_path, 3, "three.yaml")
    fill_offline(four)
    with pytest.raises(RingMismatchError) as err:
        migrate.migrate(two, three)
    assert "number of nodes is 4 there but 2 in --from" in str(err.value)
    assert err.value.exit_status == 2


def test_migrate_refuses_the_same_ring_and_a_full_target(tmp_path) -> None:
    _, four = config(tmp_path, 4, "four.yaml")
    _, again = config(tmp_path, 4, "again.yaml")
    fill_offline(four)
    with pytest.raises(InvalidInputError, match="nothing to move"):
        migrate.migrate(four, again)
    _, other = config(tmp_path, 3, "other.yaml", data="data2")
    os.makedirs(tmp_path / "data2" / "node-0")
    with pytest.raises(InvalidInputError, match="not empty"):
        migrate.migrate(four, other)
    os.makedirs(tmp_path / "data" / "stray")
    _, three = config(tmp_path, 3, "three.yaml")
    with pytest.raises(InvalidInputError, match="stray"):
        migrate.migrate(four, three)


def test_migrate_holds_every_directory_lock(tmp_path, monkeypatch) -> None:
    _, four = config(tmp_path, 4, "four.yaml")
    _, three = config(tmp_path, 3, "three.yaml")
    fill_offline(four)
    from chordctl.core.storage import lock, snapshot
    held = []
    real = snapshot.write

    def spy(directory, *args, **kwargs):
        held.append(sorted(lock.holder(four.node_dir(i)) for i in range(4)))
        held.append(lock.holder(directory))
        return real(directory, *args, **kwargs)
    monkeypatch.setattr(snapshot, "write", spy)
    migrate.migrate(four, three)
    assert held[0] == [os.getpid()] * 4 and held[1] == os.getpid()
    with pytest.raises(DirectoryLockedError):
        with lock.DirectoryLock(three.node_dir(0)):
            lock.DirectoryLock(three.node_dir(0)).acquire()


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_swap_puts_the_new_tree_in_place_and_keeps_the_old(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(migrate, "_exchange", lambda a, b: False)
    old, new, kept = tmp_path / "data", tmp_path / "data.migrating-x", tmp_path / "data.old-x"
    (old / "node-0").mkdir(parents=True)
    (old / "node-0" / "log.0").write_bytes(b"old")
    (new / "node-0").mkdir(parents=True)
    (new / "node-0" / "snap.1").write_bytes(b"new")
    migrate._swap(str(new), str(old), str(kept))
    assert os.listdir(old / "node-0") == ["snap.1"]
    assert os.listdir(kept / "node-0") == ["log.0"]
    assert not new.exists()
