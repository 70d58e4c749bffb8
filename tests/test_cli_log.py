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
