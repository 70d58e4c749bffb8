"""`chordctl log replay` / `log repair` on node directories built by hand."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from chordctl.core.storage import records, recovery
from chordctl.protocol import OP_CREATE
from conftest import CLI, deny_open, run_chordctl
from test_recovery import NodeDir, append_raw, build_three_generations, damage


@pytest.fixture
def node(tmp_path) -> NodeDir:
    d = tmp_path / "data" / "node-0"
    d.mkdir(parents=True)
    return NodeDir(d)


def cli(*args: str, output: str | None = None):
    return CLI(None)(*args, output=output)


def snapshot_of(directory: str) -> dict[str, bytes]:
    out = {}
    for name in sorted(os.listdir(directory)):
        with open(os.path.join(directory, name), "rb") as f:
            out[name] = f.read()
    return out


def torn(node: NodeDir) -> None:
    build_three_generations(node)
    tail = records.encode_many([(node.seq + 1, OP_CREATE, b"777", b"never acknowledged")])
    append_raw(node.path("log.2"), tail[:-4])
    with open(node.path("snap.3.tmp"), "wb") as f:
        f.write(b"half a snapshot")


def test_log_replay_refuses_a_directory_without_node_files(node, tmp_path):
    build_three_generations(node)
    parent = str(tmp_path / "data")
    p = run_chordctl("log", "replay", "--data-dir", parent)
    assert p.returncode == 2, p.stdout + p.stderr
    err = p.stderr.decode()
    assert "not a node directory" in err and "node-0" in err and "Traceback" not in err
    assert p.stdout == b""
    empty = tmp_path / "empty"
    empty.mkdir()
    p = run_chordctl("log", "replay", "--data-dir", str(empty))
    assert p.returncode == 2 and b"holds no node files" in p.stderr


def test_log_replay_dump_goes_to_stdout_and_the_summary_to_stderr(node):
    build_three_generations(node)
    p = run_chordctl("log", "replay", "--data-dir", node.dir, "--dump")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.decode().splitlines()
    assert lines and all("\t" in ln for ln in lines), lines[:5]
    assert {int(k): v.encode() for k, v in (ln.split("\t", 1) for ln in lines)} == node.model
    assert b"snap.2" in p.stderr and b"keys" in p.stderr
    # Without --dump the summary is the output.
    p = run_chordctl("log", "replay", "--data-dir", node.dir)
    assert p.returncode == 0 and b"snap.2" in p.stdout


def test_log_replay_refuses_a_directory_a_running_node_holds(node):
    build_three_generations(node)
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys\nfrom chordctl.core.storage.lock import DirectoryLock\n"
         "lock = DirectoryLock(sys.argv[1]).acquire()\nprint('held', flush=True)\n"
         "sys.stdin.read()\n", node.dir],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == b"held\n"
        for cmd in ("replay", "repair"):
            p = run_chordctl("log", cmd, "--data-dir", node.dir)
            assert p.returncode == 2, p.stdout + p.stderr
            assert f"process {holder.pid}".encode() in p.stderr, p.stderr
            assert b"Traceback" not in p.stderr
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    # Released: readers may read side by side.
    assert run_chordctl("log", "replay", "--data-dir", node.dir).returncode == 0


def test_log_replay_permission_denied_is_a_clear_error_exit_2(node, monkeypatch):
    # As root chmod cannot deny a read, so the denial is injected.
    build_three_generations(node)
    deny_open(monkeypatch, recovery, "log.2")
    r = cli("log", "replay", "--data-dir", node.dir)
    assert r.exit_code == 2, r.output
    assert "Permission denied" in r.stderr and node.path("log.2") in r.stderr
    assert "Traceback" not in r.output


def test_log_replay_changes_nothing_and_log_repair_cuts_the_torn_tail(node):
    torn(node)
    before = snapshot_of(node.dir)
    r = cli("log", "replay", "--data-dir", node.dir, output="json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["torn_bytes"] > 0 and doc["tmp_files"] == ["snap.3.tmp"]
    p = run_chordctl("log", "replay", "--data-dir", node.dir, "--verify")
    assert p.returncode == 1
    assert snapshot_of(node.dir) == before, "log replay changed a file"

    p = run_chordctl("log", "repair", "--data-dir", node.dir)
    assert p.returncode == 0, p.stderr
    out = p.stdout.decode()
    assert "log.2.broken" in out and "snap.3.tmp" in out
    assert snapshot_of(node.dir)["log.2.broken"] == before["log.2"]
    assert os.path.getsize(node.path("log.2")) == doc["torn_offset"]
    p = run_chordctl("log", "replay", "--data-dir", node.dir, "--verify")
    assert p.returncode == 0, p.stdout + p.stderr
    p = run_chordctl("log", "repair", "--data-dir", node.dir)
    assert p.returncode == 0 and b"nothing to repair" in p.stdout


def test_log_repair_refuses_corruption_and_changes_nothing(node):
    build_three_generations(node)
    damage(node.path("log.2"), 30)            # inside its first record
    before = snapshot_of(node.dir)
    p = run_chordctl("log", "repair", "--data-dir", node.dir)
    assert p.returncode == 1, p.stdout + p.stderr
    assert b"log.2" in p.stderr and b"Traceback" not in p.stderr
    after = snapshot_of(node.dir)
    after.pop("LOCK", None)
    assert after == before


def test_log_replay_fallback_rows_are_short(node):
    build_three_generations(node)
    damage(node.path("snap.2"), 60)
    r = cli("log", "replay", "--data-dir", node.dir)
    assert r.exit_code == 0, r.output
    rows = [ln for ln in r.stdout.splitlines() if ln.startswith("fallback")]
    assert len(rows) == 1 and "snap.2 skipped" in rows[0], r.stdout
    assert len(rows[0]) < 120 and node.dir not in rows[0]
    doc = json.loads(cli("log", "replay", "--data-dir", node.dir, output="json").stdout)
    assert doc["skipped"][0]["file"] == "snap.2"
    assert node.path("snap.2") in doc["fallbacks"][0]     # the details


def _replicated_dir(d, journal_first: int = 1) -> None:
    """A replicated node's directory (ring.replicas > 1) killed with its
    log.X behind its raft.journal: log.0 holds group 4 up to entry 2 (keys
    1, 2); the journal holds entries 3 (key 3, committed) and 4 (key 4, not
    known committed)."""
    from chordctl.core.storage import raftjournal
    from chordctl.core.storage.log import LogFile
    from chordctl.pb import raft_pb2 as rpb
    from pysyncobj.syncobj import _COMMAND_TYPE

    def command(*keys):
        c = rpb.Command(origin=4, id=keys[0])
        for k in keys:
            c.ops.add(op=OP_CREATE, key=str(k).encode(), value=b"v%d" % k)
        c.ops.add(op=2, key=b"1")                       # a read: changes nothing
        return bytes([_COMMAND_TYPE.REGULAR]) + c.SerializeToString()

    log = LogFile(str(d), 0)
    log.append(records.encode_many([(1, OP_CREATE, b"1", b"v1"), (2, OP_CREATE, b"2", b"v2"),
                                    records.raft_record(3, 4, 2)]), 3)
    log.sync()
    log.close()
    j = raftjournal.RaftJournal(str(d))
    g = j.group(4)
    entries = [(bytes([_COMMAND_TYPE.NO_OP]), 1), (command(1, 2), 2), (command(3), 3),
               (command(4), 4)]
    for c, idx in entries[journal_first - 1:]:
        g.add(c, idx, 1)
    g.setRaftCommitIndex(3)
    j.sync()
    j.close()


def test_log_replay_of_a_replicated_node_applies_its_journal_past_log_x(node):
    """A restart applies what raft.journal holds committed past log.X; `log
    replay` said it rebuilt the state "exactly as a restart would" and left
    those writes out."""
    _replicated_dir(node.dir)
    r = cli("log", "replay", "--data-dir", node.dir, "--dump", output="json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert [d["key"] for d in doc["data"]] == ["1", "2", "3"] and doc["keys"] == 3
    assert doc["raft_journal"] == [{
        "group": 4, "applied": 2, "first": 1, "last": 4, "commit": 3, "replayed": 1,
        "writes": 1, "dump_first": False, "pending": 1, "pending_writes": 1}]
    p = run_chordctl("log", "replay", "--data-dir", node.dir)
    assert p.returncode == 0, p.stderr
    out = p.stdout.decode()
    assert "log.X to entry 2; raft.journal 1..4, committed to 3: replayed 1 entry (1 write); " \
           "1 entry (1 write) after that waits for a leader" in out, out


def test_log_replay_says_when_a_start_installs_the_dump_first(node):
    _replicated_dir(node.dir, journal_first=4)          # compacted past what log.X holds
    r = cli("log", "replay", "--data-dir", node.dir, output="json")
    assert r.exit_code == 0, r.output
    [tail] = json.loads(r.stdout)["raft_journal"]
    assert tail["dump_first"] and tail["replayed"] == 0
    assert json.loads(r.stdout)["keys"] == 2
    p = run_chordctl("log", "replay", "--data-dir", node.dir)
    assert b"a start installs raft-4.dump first" in p.stdout, p.stdout


@pytest.mark.parametrize("damaged", ["raft.journal", "log.0"])
def test_a_damaged_replica_is_told_to_rejoin_by_log_replay_and_repair(node, damaged):
    """A replica's damaged file: `log replay` and `log repair` give the advice a
    start gives (move the directory aside and rejoin on an empty one), not
    only a backup; an unreplicated node's keeps the backup advice."""
    _replicated_dir(node.dir)
    path = os.path.join(node.dir, damaged)
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0xFF                        # inside a whole record
    open(path, "wb").write(bytes(data))
    for command in ("replay", "repair"):
        p = run_chordctl("log", command, "--data-dir", node.dir)
        err = p.stderr.decode()
        assert p.returncode == 1, err
        assert damaged in err and "start the node again on an empty one" in err, err
        assert "Traceback" not in err


def test_an_unreplicated_damaged_log_keeps_the_backup_advice(node):
    from chordctl.core.storage.log import LogFile
    log = LogFile(node.dir, 0)
    log.append(records.encode_many([(1, OP_CREATE, b"1", b"v1"), (2, OP_CREATE, b"2", b"v2")]),
               2)
    log.sync()
    log.close()
    path = os.path.join(node.dir, "log.0")
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(path, "wb").write(bytes(data))
    p = run_chordctl("log", "replay", "--data-dir", node.dir)
    err = p.stderr.decode()
    assert p.returncode == 1 and "restore the node directory from a backup" in err, err
    assert "empty one" not in err


def test_log_repair_of_a_replica_reports_a_torn_journal_tail_and_leaves_it(node):
    _replicated_dir(node.dir)
    path = os.path.join(node.dir, "raft.journal")
    size = os.path.getsize(path) - 3
    os.truncate(path, size)                             # the last record cut short
    p = run_chordctl("log", "repair", "--data-dir", node.dir, "-o", "json")
    assert p.returncode == 0, p.stderr
    [note] = json.loads(p.stdout)["repairs"]
    assert note.startswith("raft.journal: ") and "torn byte(s) at offset" in note, note
    assert os.path.getsize(path) == size                # a start cuts it, not repair
