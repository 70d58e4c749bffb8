"""Storage of a replicated node (ring.replicas > 1): raft records in log.X,
an entry cut short dropped whole, replicas in IDENTITY and snap.X headers,
and the config's replication fields."""

from __future__ import annotations

import json
import os

import pytest

from chordctl import config as configmod
from chordctl.core.storage import identity, recovery, records, snapshot
from chordctl.core.storage.identity import RingIdentity
from chordctl.core.storage.log import LogFile
from chordctl.core.store import Store
from chordctl.errors import ConfigError, CorruptRecordError, RingMismatchError
from chordctl.protocol import OP_CREATE, OP_UPDATE


def write_log(directory, counter: int, recs: list[tuple]) -> None:
    lf = LogFile(str(directory), counter)
    try:
        lf.append(records.encode_many(recs), len(recs))
        lf.sync()
    finally:
        lf.close()


def entry(seq: int, group: int, idx: int, *muts: tuple[int, bytes]) -> list[tuple]:
    """Mutations (key, value) as creates with seqs from *seq*, closed by a raft record."""
    out = [(seq + i, OP_CREATE, str(k).encode(), v) for i, (k, v) in enumerate(muts)]
    out.append(records.raft_record(seq + len(muts), group, idx))
    return out


def test_an_entry_cut_short_at_the_end_of_the_newest_log_is_dropped_whole(tmp_path):
    recs = entry(1, 0, 5, (10, b"a"), (11, b"b"))
    recs += [(4, OP_CREATE, b"12", b"c"), (5, OP_UPDATE, b"10", b"z")]   # no raft record
    write_log(tmp_path, 0, recs)
    store = Store()
    rep = recovery.recover(str(tmp_path), store, replicated=True)
    assert dict(store.items()) == {10: b"a", 11: b"b"}
    assert rep.raft_applied == {0: 5}
    assert rep.last_seq == 3
    whole = len(records.encode_many(recs[:3]))
    assert (rep.torn_offset, rep.torn_bytes) == (whole, len(records.encode_many(recs)) - whole)
    # repair cuts it, keeping a copy; the next start sees a clean log.
    recovery.repair(str(tmp_path), rep)
    assert os.path.getsize(tmp_path / "log.0") == whole
    assert os.path.exists(tmp_path / "log.0.broken")
    again = recovery.recover(str(tmp_path), Store(), replicated=True)
    assert again.torn_bytes == 0 and again.raft_applied == {0: 5}


def test_without_replication_every_whole_record_is_replayed(tmp_path):
    recs = [(1, OP_CREATE, b"10", b"a"), (2, OP_CREATE, b"11", b"b")]
    write_log(tmp_path, 0, recs)
    store = Store()
    rep = recovery.recover(str(tmp_path), store, replicated=False)
    assert dict(store.items()) == {10: b"a", 11: b"b"} and rep.torn_bytes == 0


def test_offline_tools_read_replication_from_the_identity(tmp_path):
    identity.write(str(tmp_path), RingIdentity(16, "direct", 3, 0, replicas=3))
    write_log(tmp_path, 0, entry(1, 0, 1, (10, b"a")) + [(3, OP_CREATE, b"11", b"b")])
    store = Store()
    rep = recovery.recover(str(tmp_path), store)        # replicated=None: from IDENTITY
    assert dict(store.items()) == {10: b"a"} and rep.torn_bytes > 0


def test_an_open_entry_before_the_newest_log_is_corruption(tmp_path):
    write_log(tmp_path, 0, entry(1, 0, 1, (10, b"a")) + [(3, OP_CREATE, b"11", b"b")])
    write_log(tmp_path, 1, entry(4, 0, 2, (12, b"c")))
    with pytest.raises(CorruptRecordError, match="without their raft record"):
        recovery.recover(str(tmp_path), Store(), replicated=True)


def test_log_x_head_records_give_each_group_its_index_at_the_snapshot(tmp_path):
    write_log(tmp_path, 0, entry(1, 0, 7, (10, b"a")))
    store = Store()
    store.apply(OP_CREATE, 10, b"a")
    snapshot.write(str(tmp_path), 1, 2, store.freeze())
    write_log(tmp_path, 1, [records.raft_record(3, 0, 7), records.raft_record(4, 2, 3)]
              + entry(5, 2, 4, (20, b"b")))
    store = Store()
    rep = recovery.recover(str(tmp_path), store, replicated=True)
    assert rep.raft_applied == {0: 7, 2: 4}
    assert dict(store.items()) == {10: b"a", 20: b"b"} and rep.last_seq == 6


def test_a_malformed_raft_record_is_corruption(tmp_path):
    write_log(tmp_path, 0, [(1, 8, b"0", b"\x01\x02")])
    with pytest.raises(CorruptRecordError, match="malformed raft record"):
        recovery.recover(str(tmp_path), Store(), replicated=True)


def test_identity_keeps_replicas_and_leaves_r1_files_as_they_were(tmp_path):
    one = RingIdentity(16, "direct", 3, 1)
    three = RingIdentity(16, "direct", 3, 1, replicas=3)
    assert one.fingerprint == RingIdentity(16, "direct", 3, 1).fingerprint != three.fingerprint
    identity.write(str(tmp_path), one)
    assert "replicas" not in json.loads((tmp_path / "IDENTITY").read_text())
    identity.write(str(tmp_path), three)
    found = identity.read(str(tmp_path)).identity
    assert found == three
    with pytest.raises(RingMismatchError, match="ring.replicas is 3 there but 1"):
        identity.check(found, one, str(tmp_path / "IDENTITY"))


def test_snapshot_headers_carry_replicas_and_old_ones_read_as_one(tmp_path):
    three = RingIdentity(16, "hash", 5, 4, replicas=3)
    path, _ = snapshot.write(str(tmp_path), 1, 0, [{}], identity=three)
    assert snapshot.read_info(path).identity == three
    path, _ = snapshot.write(str(tmp_path), 2, 0, [{}], identity=RingIdentity(16, "hash", 5, 4))
    assert snapshot.read_info(path).identity.replicas == 1


def nodes(n):
    return [{"host": "127.0.0.1", "port": 7000 + i} for i in range(n)]


def test_config_replicas_default_and_range():
    assert configmod.from_dict({"ring": {"bits": 8}, "nodes": nodes(3)}).ring.replicas == 1
    cfg = configmod.from_dict({"ring": {"bits": 8, "replicas": 3}, "nodes": nodes(5)})
    assert cfg.ring.replicas == 3 and cfg.replication.election_timeout == 1.0
    with pytest.raises(ConfigError, match="ring.replicas: must be <= the number of nodes, 3"):
        configmod.from_dict({"ring": {"bits": 8, "replicas": 4}, "nodes": nodes(3)})
    with pytest.raises(ConfigError, match="ring.replicas: must be an integer >= 1"):
        configmod.from_dict({"ring": {"bits": 8, "replicas": 0}, "nodes": nodes(3)})
    with pytest.raises(ConfigError, match="ring.replicas: must be an integer"):
        configmod.from_dict({"ring": {"bits": 8, "replicas": "three"}, "nodes": nodes(3)})


def test_config_replication_timers():
    cfg = configmod.from_dict({"ring": {"bits": 8, "replicas": 3}, "nodes": nodes(3),
                               "replication": {"election_timeout": 0.5, "heartbeat": 0.1}})
    assert (cfg.replication.election_timeout, cfg.replication.heartbeat) == (0.5, 0.1)
    with pytest.raises(ConfigError, match="more than 3 x replication.heartbeat"):
        configmod.from_dict({"ring": {"bits": 8}, "nodes": nodes(3),
                             "replication": {"election_timeout": 0.3, "heartbeat": 0.1}})
    with pytest.raises(ConfigError, match="replication.heartbeat: must be > 0"):
        configmod.from_dict({"ring": {"bits": 8}, "nodes": nodes(3),
                             "replication": {"heartbeat": 0}})
    with pytest.raises(ConfigError, match="replication.bogus"):
        configmod.from_dict({"ring": {"bits": 8}, "nodes": nodes(3),
                             "replication": {"bogus": 1}})


def test_config_replication_reads():
    base = {"ring": {"bits": 8, "replicas": 3}, "nodes": nodes(3)}
    assert configmod.from_dict(base).replication.reads == "index"
    cfg = configmod.from_dict({**base, "replication": {"reads": "log"}})
    assert cfg.replication.reads == "log"
    with pytest.raises(ConfigError, match=r"replication.reads: must be one of index \| log"):
        configmod.from_dict({**base, "replication": {"reads": "lease"}})


@pytest.mark.parametrize("damaged", ["raft.journal", "log.0"])
def test_a_damaged_replica_is_told_to_rejoin_not_only_to_restore_a_backup(tmp_path, damaged):
    """A replica's other copies are its backup: the refusal names the way back
    that needs none (an empty directory catches up), and when it is safe."""
    from chordctl.core.replica import ReplicatedNode
    from chordctl.core.storage import raftjournal
    cfg = configmod.from_dict({
        "ring": {"bits": 8, "replicas": 3},
        "nodes": [{"host": "127.0.0.1", "port": 1 + i} for i in range(3)],
        "storage": {"data_dir": str(tmp_path / "data")}})
    d = cfg.node_dir(0)
    os.makedirs(d)
    write_log(d, 0, entry(1, 0, 2, (255, b"x")))
    j = raftjournal.RaftJournal(d)
    j.group(0).add(b"\x00", 1, 1)
    j.group(0).add(b"\x01cmd", 2, 1)
    j.sync()
    j.close()
    path = os.path.join(d, damaged)
    data = bytearray(open(path, "rb").read())
    data[20] ^= 0xFF                       # inside the first record
    open(path, "wb").write(bytes(data))
    with pytest.raises(CorruptRecordError) as err:
        ReplicatedNode(cfg, 0).recover()
    text = str(err.value)
    assert err.value.path == path and err.value.exit_status == 1
    assert "start the node again on an empty one: it rejoins its groups" in text
    assert "while a majority of each of its groups is up" in text


def test_a_command_not_committed_is_answered_just_before_its_deadline():
    """The sweep answers SWEEP_AHEAD (0.15 s) before the deadline, so that the
    answer reaches a forwarding node or the client before they give up; a
    command of a short deadline keeps three quarters of its time."""
    from chordctl.core.replica import SWEEP_AHEAD, sweep_due
    assert SWEEP_AHEAD == 0.15
    assert not sweep_due(10.0, 5.0, 9.80) and sweep_due(10.0, 5.0, 9.86)
    assert not sweep_due(10.2, 10.0, 10.1) and sweep_due(10.2, 10.0, 10.16)   # 0.2 s: 0.05 lead
    assert not sweep_due(float("inf"), 0.0, 1e9)           # a scan's barrier has no deadline


def test_a_replica_restarted_before_it_finished_learning_learns_again(tmp_path):
    """A new replica marks its directory LEARNING until it is a full replica: a
    restart meanwhile (raft.journal exists by then) is a learner's again, not
    a full replica's with votes and acknowledgements it cannot vouch for."""
    from chordctl.core.replica import ReplicatedNode
    from chordctl.core.storage import files
    cfg = configmod.from_dict({
        "ring": {"bits": 8, "replicas": 3},
        "nodes": [{"host": "127.0.0.1", "port": 1 + i} for i in range(3)],
        "storage": {"data_dir": str(tmp_path / "data")}})
    d = cfg.node_dir(0)
    mark = os.path.join(d, files.LEARNING)
    node = ReplicatedNode(cfg, 0)
    node.recover()
    assert node.fresh and os.path.exists(mark)
    node.journal.close()
    node.lock.release()
    assert os.path.exists(os.path.join(d, "raft.journal"))
    groups = set(node.groups)
    assert node.learners == groups and len(groups) == 3
    again = ReplicatedNode(cfg, 0)
    again.recover()
    assert again.fresh and again.learners == groups    # still learning: the mark says so
    one = min(groups)
    again._learned(frozenset(groups - {one}))    # what the engine calls as a group is learned
    again.journal.close()
    again.lock.release()
    # A restart now learns the other groups again, not the one it is full in
    # (were it a learner there too, and so the group's other members, no one
    # would vote: the group would never lead again).
    partly = ReplicatedNode(cfg, 0)
    partly.recover()
    assert partly.fresh and partly.learners == groups - {one}
    partly._learned(frozenset())               # every group learned
    assert not os.path.exists(mark)
    partly.journal.close()
    partly.lock.release()
    full = ReplicatedNode(cfg, 0)
    full.recover()
    assert not full.fresh and not full.learners
    full.journal.close()
    full.lock.release()


def test_a_learning_mark_of_an_older_release_learns_every_group_again_and_an_empty_list_none(tmp_path):
    from chordctl.core.replica import ReplicatedNode
    from chordctl.core.storage import files
    cfg = configmod.from_dict({
        "ring": {"bits": 8, "replicas": 3},
        "nodes": [{"host": "127.0.0.1", "port": 1 + i} for i in range(3)],
        "storage": {"data_dir": str(tmp_path / "data")}})
    node = ReplicatedNode(cfg, 0)
    node.recover()
    node.journal.close()
    node.lock.release()
    with open(os.path.join(cfg.node_dir(0), files.LEARNING), "wb") as f:
        f.write(b"learning its replica groups; removed once it is a full replica\n")
    again = ReplicatedNode(cfg, 0)
    again.recover()
    assert again.learners == set(again.groups)
    again.journal.close()
    again.lock.release()
    mark = os.path.join(cfg.node_dir(0), files.LEARNING)
    with open(mark, "wb") as f:            # a flipped byte in the list: learn every group
        f.write(b"learning its replica groups; removed once it is a full replica\ngroups: 1 \xb2\n")
    damaged = ReplicatedNode(cfg, 0)
    damaged.recover()
    assert damaged.learners == set(damaged.groups)
    damaged.journal.close()
    damaged.lock.release()
    with open(mark, "wb") as f:            # listing none: every group learned
        f.write(b"learning its replica groups; removed once it is a full replica\ngroups: \n")
    full = ReplicatedNode(cfg, 0)
    full.recover()
    assert not full.learners and not full.fresh and not os.path.exists(mark)
    full.journal.close()
    full.lock.release()


def test_a_learner_that_cannot_write_its_learning_mark_refuses_to_start(tmp_path, monkeypatch):
    import builtins
    import errno
    from chordctl.core.replica import ReplicatedNode
    from chordctl.core.storage import files
    from chordctl.errors import StorageError
    cfg = configmod.from_dict({
        "ring": {"bits": 8, "replicas": 3},
        "nodes": [{"host": "127.0.0.1", "port": 1 + i} for i in range(3)],
        "storage": {"data_dir": str(tmp_path / "data")}})
    real_open = builtins.open

    def full_disk(path, *a, **kw):
        if os.path.basename(str(path)).startswith(files.LEARNING):    # LEARNING(.tmp)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, *a, **kw)
    monkeypatch.setattr(builtins, "open", full_disk)
    node = ReplicatedNode(cfg, 0)
    with pytest.raises(StorageError, match="LEARNING: cannot write: No space left on device"):
        node.recover()
    if node.lock is not None:
        node.lock.release()


def test_a_replicas_view_goes_to_the_applier_alone_not_behind_the_log_writer(tmp_path):
    """At R > 1 an applied entry is durable already (the journals of a
    majority), and log.X is written behind by windows: a scan's view waits
    for the applier only, even when log.X lags the map. Its log writer takes
    the committed entries by windows (logwriter.py)."""
    from chordctl.core.markers import ReadMarker
    from chordctl.core.replica import BEHIND, ReplicatedNode
    cfg = configmod.from_dict({
        "ring": {"bits": 8, "replicas": 3},
        "nodes": [{"host": "127.0.0.1", "port": 1 + i} for i in range(3)],
        "storage": {"data_dir": str(tmp_path / "data")}})
    node = ReplicatedNode(cfg, 0)
    assert node.writer.behind == BEHIND > 0
    node.seq, node.writer.durable_seq = 10, 4     # log.X behind the map
    marker = ReadMarker(False, lambda m: None)
    node._dispatch_read(marker)
    assert node.to_log.empty()
    assert node.to_apply.get_nowait() is marker and marker.seq == 10
    # A fail-stopped node refuses the view at once, as at R = 1.
    node.failed = "storage: the disk is full"
    refused: list = []
    node._dispatch_read(ReadMarker(False, refused.append))
    assert [m.error[1] for m in refused] == [f"{node.label}: storage: the disk is full"]
    assert node.to_log.empty() and node.to_apply.empty()
