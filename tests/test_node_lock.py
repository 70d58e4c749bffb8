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
