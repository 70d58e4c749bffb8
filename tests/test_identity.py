"""The ring identity of a node directory: IDENTITY, snapshot headers, the arc check.

Issue #11 finding 2: a node restarted under a changed ring (other number of
nodes, bits or placement) served its directory anyway, so acknowledged keys
sat on nodes that no longer owned them and read as not found.
"""

from __future__ import annotations

import json
import os
import struct
import zlib

import pytest

from chordctl import config as config_mod
from chordctl.client import Client
from chordctl.core.node import Node, Replies
from chordctl.core.ring import Ring
from chordctl.core.storage import files, identity, records, snapshot
from chordctl.core.storage.identity import RingIdentity
from chordctl.core.storage.log import LogFile
from chordctl.errors import RingMismatchError, StorageError
from chordctl.protocol import OP_CREATE
from conftest import Cluster, NodeProc, write_config


def make_config(tmp_path, n: int = 4, bits: int = 16, placement: str = "direct",
                routing: str = "fingers"):
    return config_mod.from_dict({
        "ring": {"bits": bits, "placement": placement, "routing": routing},
        "nodes": [{"host": "127.0.0.1", "port": 1 + i} for i in range(n)],
        "storage": {"data_dir": str(tmp_path / "data"), "snapshot_interval": 0},
    })


def start_stop(cfg, index: int, keys=()) -> Node:
    """Recover node *index* in-process, write *keys* straight into its log, stop."""
    node = Node(cfg, index)
    node.recover()
    try:
        for k in keys:
            node.seq += 1
            node.log.append(records.encode_many([(node.seq, OP_CREATE, str(k).encode(), b"v")]), 1)
        node.log.sync()
    finally:
        node.log.close()
        node.stop()
    return node


def owned_keys(cfg, index: int, count: int = 20) -> list[int]:
    ring = Ring(cfg.ring.bits, len(cfg.nodes), cfg.ring.placement)
    return [k for k in range(0, 10**6, 797) if ring.owner(k) == index][:count]   # spread


# -- the IDENTITY file ---------------------------------------------------------------


def test_first_start_writes_identity_file(tmp_path) -> None:
    cfg = make_config(tmp_path, 4)
    start_stop(cfg, 2)
    d = cfg.node_dir(2)
    doc = json.loads(open(os.path.join(d, "IDENTITY")).read())
    assert (doc["bits"], doc["placement"], doc["nodes"], doc["index"], doc["id"]) == \
        (16, "direct", 4, 2, str(65535 - 2 * 16384))
    assert doc["adopted"] is False
    assert doc["fingerprint"] == RingIdentity(16, "direct", 4, 0).fingerprint
    assert not [n for n in os.listdir(d) if n.endswith(".tmp")]


@pytest.mark.parametrize("change, field", [
    (dict(n=3), "number of nodes"),
    (dict(bits=20), "ring.bits"),
    (dict(placement="hash"), "ring.placement"),
])
def test_restart_under_changed_ring_is_refused_naming_the_field(tmp_path, change, field):
    old = make_config(tmp_path, 4)
    start_stop(old, 1, owned_keys(old, 1))
    new = make_config(tmp_path, **{"n": 4, **change})
    with pytest.raises(RingMismatchError) as err:
        Node(new, 1).recover()
    assert err.value.exit_status == 2 and err.value.field == field
    assert field in str(err.value) and "chordctl ring migrate" in str(err.value)
    assert str(err.value).startswith("storage: ")


def test_identity_is_checked_before_replay_changes_anything(tmp_path) -> None:
    old = make_config(tmp_path, 4)
    start_stop(old, 1, owned_keys(old, 1))
    d = old.node_dir(1)
    with open(os.path.join(d, "log.0"), "ab") as f:
        f.write(b"\x07torn")                      # repair would cut this off
    before = open(os.path.join(d, "log.0"), "rb").read()
    with pytest.raises(RingMismatchError):
        Node(make_config(tmp_path, 3), 1).recover()
    assert open(os.path.join(d, "log.0"), "rb").read() == before


def test_routing_change_keeps_the_identity(tmp_path) -> None:
    old = make_config(tmp_path, 4, routing="fingers")
    start_stop(old, 0, owned_keys(old, 0))
    node = start_stop(make_config(tmp_path, 4, routing="neighbors"), 0)
    assert node.report.keys == 20


def test_damaged_identity_file_is_refused(tmp_path) -> None:
    cfg = make_config(tmp_path, 2)
    start_stop(cfg, 0)
    path = os.path.join(cfg.node_dir(0), "IDENTITY")
    doc = json.loads(open(path).read())
    doc["nodes"] = 3                               # checksum no longer matches
    with open(path, "w") as f:
        json.dump(doc, f)
    with pytest.raises(StorageError) as err:
        Node(cfg, 0).recover()
    assert "IDENTITY" in str(err.value) and "damaged" in str(err.value)


def test_identity_file_round_trips() -> None:
    ident = RingIdentity(160, "hash", 7, 6)
    decoded = identity.decode(identity.encode(ident, adopted=True), "x/IDENTITY")
    assert decoded.identity == ident and decoded.adopted
    assert ident.id == 2**160 - 1 - 6 * (2**160 // 7)


# -- directories from before IDENTITY --------------------------------------------------


def legacy_dir(cfg, index: int, keys) -> str:
    """A node directory as an older chordctl left it: log.0, no IDENTITY."""
    d = cfg.node_dir(index)
    os.makedirs(d)
    lf = LogFile(d, 0)
    for seq, k in enumerate(keys, 1):
        lf.append(records.encode_many([(seq, OP_CREATE, str(k).encode(), b"v")]), 1)
    lf.close()
    return d


def test_legacy_directory_is_adopted_after_the_arc_check(tmp_path, caplog) -> None:
    cfg = make_config(tmp_path, 4)
    d = legacy_dir(cfg, 3, owned_keys(cfg, 3))
    node = start_stop(cfg, 3)
    assert node.report.keys == 20
    found = identity.read(d)
    assert found.identity == RingIdentity(16, "direct", 4, 3) and found.adopted
    assert "older chordctl" in caplog.text and "adopted" in caplog.text


def test_legacy_directory_of_another_ring_is_refused(tmp_path) -> None:
    four = make_config(tmp_path, 4)
    d = legacy_dir(four, 1, owned_keys(four, 1))
    with pytest.raises(RingMismatchError) as err:
        Node(make_config(tmp_path, 3), 1).recover()
    assert "7 key(s) that node 1 does not own" in str(err.value)   # of 20
    assert not os.path.exists(os.path.join(d, "IDENTITY"))


def test_key_outside_the_arc_in_a_log_is_refused(tmp_path) -> None:
    cfg = make_config(tmp_path, 4)
    node = start_stop(cfg, 0, owned_keys(cfg, 0, 3) + owned_keys(cfg, 2, 1))
    with pytest.raises(RingMismatchError) as err:
        Node(cfg, 0).recover()
    assert "1 key(s)" in str(err.value) and str(owned_keys(cfg, 2, 1)[0]) in str(err.value)
    assert node.lock is not None and not node.lock.held


def test_snapshot_of_another_ring_is_refused(tmp_path) -> None:
    cfg = make_config(tmp_path, 4)
    start_stop(cfg, 0)
    d = cfg.node_dir(0)
    LogFile(d, 1).close()     # log.X always exists beside snap.X
    snapshot.write(d, 1, 0, [{}], identity=RingIdentity(16, "direct", 2, 0))
    with pytest.raises(RingMismatchError) as err:
        Node(cfg, 0).recover()
    assert "snap.1" in str(err.value) and "number of nodes" in str(err.value)


# -- snapshot headers -------------------------------------------------------------------


def test_snapshot_header_records_the_ring_identity(tmp_path) -> None:
    ident = RingIdentity(20, "hash", 5, 4)
    path, _ = snapshot.write(str(tmp_path), 3, 9, [{1: b"a"}], identity=ident)
    assert snapshot.read_info(path).identity == ident
    assert snapshot.read(path).info.identity == ident


def test_node_snapshots_carry_its_identity(tmp_path) -> None:
    import threading

    cfg = make_config(tmp_path, 4, placement="hash")
    node = Node(cfg, 2, Replies(lambda reqs: None, lambda reqs: None))
    node.recover()
    node.start()
    done = threading.Event()
    node.request_snapshot(force=True, on_done=lambda marker: done.set())
    try:
        assert done.wait(10)
    finally:
        node.stop(final_snapshot=False)
    path = os.path.join(node.directory, "snap.1")
    assert snapshot.read_info(path).identity == RingIdentity(16, "hash", 4, 2)


def write_v1(path: str, counter: int, last_seq: int, chunks: list[dict[int, bytes]]) -> None:
    """A snapshot in the previous format, CHSNAP1, byte for byte."""
    import marshal
    head = struct.pack("<8sQQQI", b"CHSNAP1\n", counter, last_seq,
                       sum(len(c) for c in chunks), len(chunks))
    out = head + struct.pack("<I", zlib.crc32(head))
    for c in chunks:
        data = marshal.dumps(c)
        out += struct.pack("<II", len(data), zlib.crc32(data)) + data
    out += struct.pack("<8sI", b"CHSNEND\n", len(chunks))
    with open(path, "wb") as f:
        f.write(out)


def test_previous_snapshot_format_is_still_read(tmp_path) -> None:
    path = str(tmp_path / "snap.2")
    write_v1(path, 2, 7, [{1: b"a"}, {2: b"b"}])
    snap = snapshot.read(path)
    assert snap.info.identity is None and (snap.info.counter, snap.info.keys) == (2, 2)
    assert snap.chunks == [{1: b"a"}, {2: b"b"}]


def test_node_recovers_from_previous_snapshot_format_after_the_arc_check(tmp_path) -> None:
    cfg = make_config(tmp_path, 2)
    d = cfg.node_dir(1)
    os.makedirs(d)
    keys = owned_keys(cfg, 1, 5)
    LogFile(d, 1).close()     # log.X always exists beside snap.X
    write_v1(os.path.join(d, "snap.1"), 1, 0, [{k: b"v" for k in keys}])
    node = start_stop(cfg, 1)
    assert node.report.keys == 5 and identity.read(d).adopted
    # ... and a CHSNAP1 snapshot of keys this node does not own is refused.
    d0 = cfg.node_dir(0)
    os.makedirs(d0)
    LogFile(d0, 1).close()
    write_v1(os.path.join(d0, "snap.1"), 1, 0, [{k: b"v" for k in keys}])
    with pytest.raises(RingMismatchError):
        Node(cfg, 0).recover()


# -- durable creation ---------------------------------------------------------------------


def test_node_directory_creation_fsyncs_every_new_level(tmp_path, monkeypatch) -> None:
    cfg = config_mod.from_dict({
        "ring": {"bits": 16}, "nodes": [{"host": "127.0.0.1", "port": 1}],
        "storage": {"data_dir": str(tmp_path / "a" / "b")}})
    synced: list[str] = []
    real = files.fsync_dir
    monkeypatch.setattr(files, "fsync_dir", lambda d: (synced.append(os.path.abspath(d)),
                                                        real(d)))
    start_stop(cfg, 0)
    for made in (tmp_path / "a", tmp_path / "a" / "b", tmp_path / "a" / "b" / "node-0"):
        assert str(made.parent) in synced, (made, synced)


def test_makedirs_durable_on_an_existing_directory_does_nothing(tmp_path) -> None:
    assert files.makedirs_durable(str(tmp_path)) == []
    assert files.makedirs_durable(str(tmp_path / "x" / "y")) == [
        str(tmp_path / "x"), str(tmp_path / "x" / "y")]


def test_makedirs_durable_when_another_node_makes_the_directory_meanwhile(tmp_path,
                                                                         monkeypatch) -> None:
    """Nodes of one ring share storage.data_dir and start together: the level
    one of them finds missing may exist when it looks again. That is not a
    file in the way (CI saw a node refuse to start, "not a directory")."""
    target = tmp_path / "data"
    real_isdir = os.path.isdir
    calls = {"n": 0}

    def racing_isdir(p):
        if os.path.abspath(p) == str(target) and calls["n"] == 0:
            calls["n"] += 1
            answer = real_isdir(p)      # missing, as the first look saw it
            os.mkdir(target)            # ... and another node makes it now
            return answer
        return real_isdir(p)

    monkeypatch.setattr(files.os.path, "isdir", racing_isdir)
    assert files.makedirs_durable(str(target / "node-1")) == [str(target / "node-1")]
    assert calls["n"] == 1 and real_isdir(target / "node-1")


def test_makedirs_durable_refuses_a_file_in_the_way(tmp_path) -> None:
    (tmp_path / "data").write_text("x")
    with pytest.raises(NotADirectoryError):
        files.makedirs_durable(str(tmp_path / "data" / "node-1"))
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling")
    with pytest.raises(NotADirectoryError):
        files.makedirs_durable(str(tmp_path / "dangling" / "node-1"))


# -- with real node processes ----------------------------------------------------------------


def test_ring_of_four_restarted_with_three_nodes_refuses_to_start(tmp_path) -> None:
    four = write_config(tmp_path, 4, name="four.yaml")
    ring = Cluster(four).start()
    try:
        with Client(ring.config) as c:
            for k in range(0, 65536, 4099):
                c.create(str(k), b"v%d" % k)
    finally:
        ring.stop()
    three = write_config(tmp_path, 3, name="three.yaml")
    node = NodeProc(three, 1).start(wait=False)
    assert node.proc.wait(timeout=30) == 2
    out = node.log()
    assert "number of nodes is 4 there but 3 in the config" in out, out
    assert "chordctl ring migrate" in out and "Traceback" not in out


def test_directory_without_data_takes_the_new_ring(tmp_path, caplog) -> None:
    start_stop(make_config(tmp_path, 4), 1)                 # started once, never written
    node = start_stop(make_config(tmp_path, 3), 1)
    assert identity.read(node.directory).identity == RingIdentity(16, "direct", 3, 1)
    assert "holds no data" in caplog.text


@pytest.mark.parametrize("found, expected", [(3, 1), (1, 3), (3, 5)])
def test_a_change_of_ring_replicas_is_refused_with_a_way_that_works(found, expected) -> None:
    """`ring migrate` refuses replicated rings: a node written under another
    ring.replicas must not send the operator there, but to the copy through a
    running ring (kv scan, kv load)."""
    with pytest.raises(RingMismatchError) as err:
        identity.check(RingIdentity(16, "direct", 5, 2, found),
                       RingIdentity(16, "direct", 5, 2, expected), "/data/node-2")
    text = str(err.value)
    assert err.value.field == "ring.replicas" and err.value.exit_status == 2
    assert f"ring.replicas is {found} there but {expected} in the config" in text
    assert "ring migrate --from" not in text
    assert "kv export keys.jsonl" in text and "kv load keys.jsonl" in text


def test_ring_migrate_of_a_replicated_ring_says_how_to_copy_it(tmp_path) -> None:
    from chordctl.core.storage import migrate
    from chordctl.errors import ConfigError

    def ring(replicas):
        return config_mod.from_dict({
            "ring": {"bits": 16, "replicas": replicas},
            "nodes": [{"host": "127.0.0.1", "port": 1 + i} for i in range(5)],
            "storage": {"data_dir": str(tmp_path / f"r{replicas}")}})

    for old, new in ((ring(1), ring(3)), (ring(3), ring(1))):
        with pytest.raises(ConfigError) as err:
            migrate.migrate(old, new)
        assert err.value.exit_status == 2
        assert "kv export keys.jsonl" in str(err.value) and "kv load keys.jsonl" in str(err.value)


# -- another ring of the same shape -----------------------------------------------

def _at_ports(tmp_path, first: int, n: int = 4):
    return config_mod.from_dict({
        "ring": {"bits": 16},
        "nodes": [{"host": "127.0.0.1", "port": first + i} for i in range(n)],
        "storage": {"data_dir": str(tmp_path / "data"), "snapshot_interval": 0},
    })


def test_a_directory_of_another_ring_of_the_same_shape_is_refused(tmp_path) -> None:
    """Same bits, placement and nodes, every key in the right arc: only where
    that ring's nodes were tells it apart (etcd's cluster id is made of its
    members' addresses too). A ring that moves some of its nodes keeps the
    others' addresses."""
    a = _at_ports(tmp_path, 52001)
    start_stop(a, 1, owned_keys(a, 1))
    d = a.node_dir(1)
    assert identity.read(d).addresses == tuple(f"127.0.0.1:{52001 + i}" for i in range(4))
    twin = _at_ports(tmp_path, 52021)               # another ring, same shape
    with pytest.raises(RingMismatchError) as err:
        Node(twin, 1).recover()
    assert err.value.exit_status == 2
    assert "127.0.0.1:52001" in str(err.value) and "another ring's directory" in str(err.value)
    # One node moved: the others' addresses are still the ring's. Recovery
    # records no move: the server's join does, once it checked that nothing
    # serves as this node at the old address (tests/test_membership.py).
    moved = config_mod.from_dict({**_doc(a), "nodes": [{"host": "127.0.0.1", "port": p}
                                                      for p in (52001, 52099, 52003, 52004)]})
    start_stop(moved, 1)
    assert identity.read(d).addresses[1] == "127.0.0.1:52002"
    # Every node moved on purpose: delete IDENTITY, as the message says.
    os.unlink(os.path.join(d, "IDENTITY"))
    start_stop(twin, 1)
    assert identity.read(d).addresses[0] == "127.0.0.1:52021"
    # A file from before addresses were recorded gets them, and a one-node
    # ring may move freely.
    identity.write(d, RingIdentity(16, "direct", 4, 1))
    start_stop(a, 1)
    assert identity.read(d).addresses[0] == "127.0.0.1:52001"
    one = _at_ports(tmp_path / "one", 52001, n=1)
    start_stop(one, 0, [5])
    start_stop(_at_ports(tmp_path / "one", 52050, n=1), 0)


def _doc(cfg) -> dict:
    return {"ring": {"bits": cfg.ring.bits},
            "storage": {"data_dir": cfg.storage.data_dir, "snapshot_interval": 0}}


# -- this ring's directories in each other's place --------------------------------


def test_swapped_node_directories_say_whose_each_is_and_where_it_goes(tmp_path) -> None:
    """Node 1 started on node 2's directory (the two swapped, both intact, the
    same ring) was told to `ring migrate`, which moves nothing here: the
    message names the node the directory belongs to and its path in the
    config, and exits 2; put back, the ring serves every key."""
    import shutil
    path = write_config(tmp_path, 3)
    ring = Cluster(path).start()
    keys = {}
    try:
        with Client(ring.config) as c:
            for k in range(0, 65536, 4099):
                keys[k] = b"v%d" % k
                c.create(str(k), keys[k])
    finally:
        ring.stop()
    cfg = ring.config
    one, two, aside = cfg.node_dir(1), cfg.node_dir(2), cfg.node_dir(1) + ".aside"
    os.rename(one, aside)
    os.rename(two, one)
    os.rename(aside, two)
    node = NodeProc(path, 1).start(wait=False)
    assert node.proc.wait(timeout=30) == 2, node.log()
    out = node.log()
    assert f"storage: {one} belongs to node 2 (id {Ring(16, 3).ids[2]}) of this ring" in out, out
    assert f"this one to node 2's path, {two}" in out, out
    assert f"node 1's own directory (there, if the two were swapped) to {one}" in out, out
    assert "ring migrate" not in out and "Traceback" not in out, out
    shutil.move(one, aside)
    shutil.move(two, one)
    shutil.move(aside, two)
    ring = Cluster(path).start()
    try:
        with Client(ring.config) as c:
            for k, v in keys.items():
                assert c.read(str(k)).value == v
    finally:
        ring.stop()


@pytest.mark.parametrize("replicas", [1, 3])
def test_another_node_of_this_ring_is_told_to_go_back_not_to_migrate(replicas) -> None:
    with pytest.raises(RingMismatchError) as err:
        identity.check(RingIdentity(16, "direct", 5, 3, replicas),
                       RingIdentity(16, "direct", 5, 2, replicas), "/data/node-2",
                       node_dir=lambda j: f"/data/node-{j}")
    text = str(err.value)
    assert err.value.exit_status == 2 and err.value.field == "node index"
    assert "belongs to node 3" in text and "node 3's path, /data/node-3" in text
    assert "ring migrate" not in text and "kv export" not in text


def test_a_directory_of_another_ring_still_says_ring_migrate() -> None:
    """Another shape (and another index): the data must move, `ring migrate` stays."""
    with pytest.raises(RingMismatchError) as err:
        identity.check(RingIdentity(16, "direct", 4, 3), RingIdentity(16, "direct", 5, 2),
                       "/data/node-2", node_dir=lambda j: f"/data/node-{j}")
    assert "chordctl ring migrate" in str(err.value)
    assert "belongs to node" not in str(err.value)


def test_another_ring_of_the_same_shape_at_another_index_is_not_called_a_swap(tmp_path) -> None:
    """Same shape, none of this ring's addresses: another ring's directory,
    whatever its index -- not one of this ring's to move back."""
    a = _at_ports(tmp_path, 52101)
    start_stop(a, 1, owned_keys(a, 1))
    os.rename(a.node_dir(1), a.node_dir(2))
    with pytest.raises(RingMismatchError) as err:
        Node(_at_ports(tmp_path, 52121), 2).recover()
    assert "another ring's directory" in str(err.value)
    assert "belongs to node" not in str(err.value)
