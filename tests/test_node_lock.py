"""One process per node directory (issue #11 finding 7).

Two nodes on different ports but one ``node-i`` directory both acknowledged
writes into the same log, and afterwards neither could restart.
"""

from __future__ import annotations

import os

import pytest
import yaml

from chordctl import config as config_mod
from chordctl.client import Client
from chordctl.core.node import Node
from chordctl.core.storage import lock
from chordctl.errors import DirectoryLockedError
from conftest import NodeProc, free_ports, write_config


def test_second_node_on_one_directory_exits_2_naming_the_holder(tmp_path) -> None:
    first = write_config(tmp_path, 1, name="first.yaml")
    doc = yaml.safe_load(open(first))
    doc["nodes"][0]["port"] = free_ports(1)[0]        # another port, the same node-0
    second = str(tmp_path / "second.yaml")
    with open(second, "w") as f:
        yaml.safe_dump(doc, f)
    holder = NodeProc(first, 0).start()
    intruder = NodeProc(second, 0)
    intruder.log_path = str(tmp_path / "intruder.stderr")
    try:
        with Client(holder.config) as c:
            c.create("1", b"one")
        intruder.start(wait=False)
        assert intruder.proc.wait(timeout=30) == 2
        out = intruder.log()
        assert f"in use by process {holder.proc.pid}" in out, out
        assert out.count("\n") <= 3 and "Traceback" not in out, out
        assert lock.holder(holder.config.node_dir(0)) == holder.proc.pid
        with Client(holder.config) as c:
            assert c.read("1").value == b"one"
    finally:
        intruder.stop()
        holder.stop()
    # The lock died with the holder: the directory starts again, data intact.
    again = NodeProc(second, 0).start()
    try:
        with Client(again.config) as c:
            assert c.read("1").value == b"one"
    finally:
        again.stop()


def read_pid_file(directory: str) -> int | None:
    try:
        with open(os.path.join(directory, "node.pid")) as f:
            return int(f.read().strip())
    except FileNotFoundError:
        return None


def test_node_serve_writes_node_pid_once_it_holds_the_directory(tmp_path) -> None:
    """`node serve` by hand wrote no node.pid (only `cluster up` did, from the
    parent), so the README's `kill -9 $(cat .../node.pid)` could hit a stale
    pid. The node writes it itself, after the lock: an intruder on the same
    directory leaves it alone; a clean stop removes it."""
    from chordctl.localcluster import find_node, is_our_node
    first = write_config(tmp_path, 1, name="first.yaml")
    doc = yaml.safe_load(open(first))
    doc["nodes"][0]["port"] = free_ports(1)[0]        # another port, the same node-0
    second = str(tmp_path / "second.yaml")
    with open(second, "w") as f:
        yaml.safe_dump(doc, f)
    holder = NodeProc(first, 0)
    directory = holder.config.node_dir(0)
    intruder = NodeProc(second, 0)
    intruder.log_path = str(tmp_path / "intruder.stderr")
    try:
        holder.start()
        assert read_pid_file(directory) == holder.proc.pid
        assert is_our_node(holder.proc.pid, holder.config, 0)
        assert "pid file" in find_node(holder.config, 0).found_by
        intruder.start(wait=False)
        assert intruder.proc.wait(timeout=30) == 2, intruder.log()
        assert read_pid_file(directory) == holder.proc.pid
        assert not os.path.exists(os.path.join(directory, "node.pid.tmp"))
        assert holder.stop() == 0, holder.log()
        assert read_pid_file(directory) is None
        # kill -9 leaves it behind, stale; the next start writes its own pid.
        holder.start()
        holder.kill()
        stale = holder.proc.pid
        assert read_pid_file(directory) == stale
        again = NodeProc(second, 0).start()
        try:
            assert read_pid_file(directory) == again.proc.pid != stale
        finally:
            assert again.stop() == 0
        assert read_pid_file(directory) is None
    finally:
        intruder.stop()
        holder.stop()


def test_an_in_process_node_writes_no_pid_file(tmp_path) -> None:
    cfg = config_mod.from_dict({"ring": {"bits": 8}, "nodes": [{"host": "127.0.0.1",
                                                                "port": 1}],
                                "storage": {"data_dir": str(tmp_path / "data")}})
    node = Node(cfg, 0)
    node.recover()
    try:
        assert read_pid_file(node.directory) is None
    finally:
        node.log.close()
        node.stop()


def test_node_holds_its_directory_lock_until_stop(tmp_path) -> None:
    cfg = config_mod.from_dict({"ring": {"bits": 8}, "nodes": [{"host": "127.0.0.1",
                                                                "port": 1}],
                                "storage": {"data_dir": str(tmp_path / "data")}})
    node = Node(cfg, 0)
    node.recover()
    try:
        assert lock.holder(node.directory) == os.getpid()
        with pytest.raises(DirectoryLockedError) as err:
            Node(cfg, 0).recover()
        assert err.value.exit_status == 2 and str(os.getpid()) in str(err.value)
    finally:
        node.log.close()
        node.stop()
    assert lock.holder(node.directory) is None
    other = Node(cfg, 0)
    other.recover()
    other.log.close()
    other.stop()
