"""PySyncObj's message dicts <-> chord.raft.v1.Message (core/replication/codec.py):
every message a running group sends comes back equal, key presence kept,
and what would need pickle is refused."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
from hypothesis import given, strategies as st
from pysyncobj.config import FAIL_REASON

from chordctl.core.replication import codec, engine as enginemod
from chordctl.pb import raft_pb2 as rpb

from test_raft_engine import Ring, until


EXAMPLES = [
    {"type": "request_vote", "term": 4, "last_log_index": 9, "last_log_term": 3},
    {"type": "response_vote", "term": 4},
    {"type": "append_entries", "term": 4, "commit_index": 7},   # heartbeat, no prevLogIdx
    {"type": "append_entries", "term": 4, "commit_index": 7, "prevLogIdx": 0,
     "prevLogTerm": 0, "entries": [(b"\x00cmd", 1, 4), (b"\x01", 2, 4)]},
    {"type": "append_entries", "term": 4, "commit_index": 7,
     "serialized": (b"chunk", True, False)},
    {"type": "next_node_idx", "next_node_idx": 8, "reset": False, "success": True},
    {"type": "apply_command", "command": b"\x00abc"},
    {"type": "apply_command", "command": b"\x00abc", "request_id": 12},
    {"type": "apply_command_response", "request_id": 12, "log_idx": 30, "log_term": 4},
    {"type": "apply_command_response", "request_id": 12, "error": FAIL_REASON.NOT_LEADER},
    {"type": "timeout_now", "term": 4},
]


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: m["type"])
def test_every_kind_round_trips_with_its_keys(message):
    wire = codec.encode(5, message).SerializeToString()
    back = rpb.Message.FromString(wire)
    assert back.group == 5
    assert codec.decode(back) == message


def test_absent_keys_stay_absent():
    d = codec.decode(codec.encode(0, {"type": "apply_command", "command": b""}))
    assert "request_id" not in d and d["command"] == b""
    d = codec.decode(codec.encode(0, {"type": "append_entries", "term": 1, "commit_index": 1}))
    assert "prevLogIdx" not in d and "entries" not in d and "serialized" not in d


def test_a_pickled_transmission_is_never_encoded():
    with pytest.raises(codec.UnsupportedMessage, match="pickle"):
        codec.encode(0, {"type": "append_entries", "term": 1, "commit_index": 1,
                         "prevLogIdx": 1, "prevLogTerm": 1, "transmission": "start",
                         "data": b"\x80\x04..."})


def test_unknown_kinds_are_refused_both_ways():
    with pytest.raises(codec.UnsupportedMessage):
        codec.encode(0, {"type": "status"})
    with pytest.raises(codec.UnsupportedMessage):
        codec.decode(rpb.Message(kind=99))


@given(term=st.integers(0, 2**63), idx=st.integers(0, 2**63),
       entries=st.lists(st.tuples(st.binary(max_size=64), st.integers(0, 2**63),
                                  st.integers(0, 2**63)), max_size=5))
def test_append_entries_round_trips_for_any_numbers(term, idx, entries):
    m = {"type": "append_entries", "term": term, "commit_index": idx,
         "prevLogIdx": idx, "prevLogTerm": term, "entries": entries}
    assert codec.decode(rpb.Message.FromString(codec.encode(1, m).SerializeToString())) == m


def test_every_message_a_running_group_sends_round_trips(monkeypatch):
    seen = []
    original = enginemod.Engine._outgoing

    def spy(self, peer, group, message):
        seen.append(message["type"])
        assert codec.decode(codec.encode(group, message)) == message, message
        original(self, peer, group, message)

    monkeypatch.setattr(enginemod.Engine, "_outgoing", spy)
    r = Ring(3)
    try:
        leader = r.wait_leader()
        follower = next(e for e in r.engines.values() if e is not leader)
        assert r.commit(leader, 0, b"a")[1] == FAIL_REASON.SUCCESS
        assert r.commit(follower, 0, b"b")[1] == FAIL_REASON.SUCCESS
        r.crash(leader.index)
        r.wait_leader()
    finally:
        r.stop()
    assert {"request_vote", "response_vote", "append_entries", "next_node_idx",
            "apply_command", "apply_command_response"} <= set(seen)


@pytest.mark.skipif(importlib.util.find_spec("grpc_tools") is None,
                    reason="grpc_tools is not installed -- cannot recompile the proto")
def test_committed_raft_pb2_matches_proto_raft_proto(tmp_path):
    from google.protobuf import descriptor_pb2
    from test_proto import PROTO_DIR, normalize
    out = tmp_path / "raft.desc"
    p = subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-Ichordctl/pb={PROTO_DIR}",
                        f"--descriptor_set_out={out}", "chordctl/pb/raft.proto"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    fresh = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file[0]
    committed = descriptor_pb2.FileDescriptorProto.FromString(rpb.DESCRIPTOR.serialized_pb)
    assert normalize(fresh) == normalize(committed), \
        "chordctl/pb/raft_pb2.py is stale: regenerate it (see chordctl/pb/__init__.py)"
