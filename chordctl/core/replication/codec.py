"""PySyncObj's messages <-> chord.raft.v1.Message, with no pickle anywhere.

PySyncObj hands its transport plain dicts (``{'type': 'append_entries',
'term': 3, 'entries': [(command, idx, term), ...], ...}``) and expects the
same dicts back. The typed protobuf carries each key in a field of its own
and keeps the presence of every key (PySyncObj tests ``'prevLogIdx' in
message`` and ``'request_id' in message``), so decode(encode(m)) == m for
every message PySyncObj sends in the configuration the engine runs it in.

One kind is refused: an append_entries ``transmission`` (an entry too big
for one message, which PySyncObj pickles and its receiver unpickles). The
engine keeps every command under the batch size, so it is never sent; a
peer that sends one anyway is dropped (``UnsupportedMessage``).
"""

from __future__ import annotations

from chordctl.pb import raft_pb2 as rpb

KINDS = {
    "request_vote": rpb.REQUEST_VOTE,
    "response_vote": rpb.RESPONSE_VOTE,
    "append_entries": rpb.APPEND_ENTRIES,
    "next_node_idx": rpb.NEXT_NODE_IDX,
    "apply_command": rpb.APPLY_COMMAND,
    "apply_command_response": rpb.APPLY_COMMAND_RESPONSE,
    "timeout_now": rpb.TIMEOUT_NOW,
}
TYPES = {v: k for k, v in KINDS.items()}

# PySyncObj's key -> the Message field that carries it (scalars: presence kept).
SCALARS = {
    "term": "term",
    "last_log_index": "last_log_index",
    "last_log_term": "last_log_term",
    "commit_index": "commit_index",
    "prevLogIdx": "prev_log_idx",
    "prevLogTerm": "prev_log_term",
    "next_node_idx": "next_node_idx",
    "reset": "reset",
    "success": "success",
    "command": "command",
    "request_id": "request_id",
    "log_idx": "log_idx",
    "log_term": "log_term",
    "error": "error",
    # Ours, not PySyncObj's (engine.py, "Reads"): it ignores the keys.
    "probe": "probe",
    "probe_term": "probe_term",
}
_FIELDS = tuple(SCALARS.items())
_KEYS = tuple((f, k) for k, f in SCALARS.items())


class UnsupportedMessage(ValueError):
    """A message this codec will not carry (a pickled transmission, an unknown kind)."""


def encode(group: int, message: dict, out: rpb.Message | None = None) -> rpb.Message:
    """The protobuf for PySyncObj's *message* of *group* (into *out* if given)."""
    m = rpb.Message() if out is None else out
    m.group = group
    try:
        m.kind = KINDS[message["type"]]
    except KeyError:
        raise UnsupportedMessage(f"raft: no encoding for a {message.get('type')!r} message") \
            from None
    for key, field in _FIELDS:
        value = message.get(key)
        if value is not None:
            setattr(m, field, value)
    entries = message.get("entries")
    if entries:
        add = m.entries.add
        for command, idx, term in entries:
            add(command=command, idx=idx, term=term)
    if "serialized" in message:
        chunk = message["serialized"]
        if chunk:      # None or False: PySyncObj had no chunk to send
            data, first, last = chunk
            m.serialized.data = data
            m.serialized.first = first
            m.serialized.last = last
    if "transmission" in message:
        raise UnsupportedMessage("raft: an entry larger than one append_entries message "
                                 "(PySyncObj would pickle it); the engine splits commands "
                                 "under appendEntriesBatchSizeBytes")
    return m


def decode(m: rpb.Message) -> dict:
    """PySyncObj's dict for a received Message (its group is m.group)."""
    kind = TYPES.get(m.kind)
    if kind is None:
        raise UnsupportedMessage(f"raft: unknown message kind {m.kind}")
    message: dict = {"type": kind}
    has = m.HasField
    for field, key in _KEYS:
        if has(field):
            message[key] = getattr(m, field)
    # PySyncObj's regular append_entries (the one with prevLogIdx) always
    # carries an entries list, empty for a heartbeat.
    if m.entries or (m.kind == rpb.APPEND_ENTRIES and has("prev_log_idx")):
        message["entries"] = [(e.command, e.idx, e.term) for e in m.entries]
    if has("serialized"):
        s = m.serialized
        message["serialized"] = (s.data, s.first, s.last)
    return message
