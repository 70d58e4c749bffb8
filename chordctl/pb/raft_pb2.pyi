from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    KIND_UNSPECIFIED: _ClassVar[Kind]
    REQUEST_VOTE: _ClassVar[Kind]
    RESPONSE_VOTE: _ClassVar[Kind]
    APPEND_ENTRIES: _ClassVar[Kind]
    NEXT_NODE_IDX: _ClassVar[Kind]
    APPLY_COMMAND: _ClassVar[Kind]
    APPLY_COMMAND_RESPONSE: _ClassVar[Kind]
    TIMEOUT_NOW: _ClassVar[Kind]
    TERM_QUERY: _ClassVar[Kind]
    TERM_REPLY: _ClassVar[Kind]
KIND_UNSPECIFIED: Kind
REQUEST_VOTE: Kind
RESPONSE_VOTE: Kind
APPEND_ENTRIES: Kind
NEXT_NODE_IDX: Kind
APPLY_COMMAND: Kind
APPLY_COMMAND_RESPONSE: Kind
TIMEOUT_NOW: Kind
TERM_QUERY: Kind
TERM_REPLY: Kind

class Entry(_message.Message):
    __slots__ = ("command", "idx", "term")
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    IDX_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    command: bytes
    idx: int
    term: int
    def __init__(self, command: _Optional[bytes] = ..., idx: _Optional[int] = ..., term: _Optional[int] = ...) -> None: ...

class Chunk(_message.Message):
    __slots__ = ("data", "first", "last")
    DATA_FIELD_NUMBER: _ClassVar[int]
    FIRST_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    first: bool
    last: bool
    def __init__(self, data: _Optional[bytes] = ..., first: _Optional[bool] = ..., last: _Optional[bool] = ...) -> None: ...

class Message(_message.Message):
    __slots__ = ("group", "kind", "term", "last_log_index", "last_log_term", "commit_index", "prev_log_idx", "prev_log_term", "entries", "serialized", "next_node_idx", "reset", "success", "command", "request_id", "log_idx", "log_term", "error", "probe", "probe_term")
    GROUP_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    LAST_LOG_INDEX_FIELD_NUMBER: _ClassVar[int]
    LAST_LOG_TERM_FIELD_NUMBER: _ClassVar[int]
    COMMIT_INDEX_FIELD_NUMBER: _ClassVar[int]
    PREV_LOG_IDX_FIELD_NUMBER: _ClassVar[int]
    PREV_LOG_TERM_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    SERIALIZED_FIELD_NUMBER: _ClassVar[int]
    NEXT_NODE_IDX_FIELD_NUMBER: _ClassVar[int]
    RESET_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    LOG_IDX_FIELD_NUMBER: _ClassVar[int]
    LOG_TERM_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    PROBE_FIELD_NUMBER: _ClassVar[int]
    PROBE_TERM_FIELD_NUMBER: _ClassVar[int]
    group: int
    kind: Kind
    term: int
    last_log_index: int
    last_log_term: int
    commit_index: int
    prev_log_idx: int
    prev_log_term: int
    entries: _containers.RepeatedCompositeFieldContainer[Entry]
    serialized: Chunk
    next_node_idx: int
    reset: bool
    success: bool
    command: bytes
    request_id: int
    log_idx: int
    log_term: int
    error: int
    probe: int
    probe_term: int
    def __init__(self, group: _Optional[int] = ..., kind: _Optional[_Union[Kind, str]] = ..., term: _Optional[int] = ..., last_log_index: _Optional[int] = ..., last_log_term: _Optional[int] = ..., commit_index: _Optional[int] = ..., prev_log_idx: _Optional[int] = ..., prev_log_term: _Optional[int] = ..., entries: _Optional[_Iterable[_Union[Entry, _Mapping]]] = ..., serialized: _Optional[_Union[Chunk, _Mapping]] = ..., next_node_idx: _Optional[int] = ..., reset: _Optional[bool] = ..., success: _Optional[bool] = ..., command: _Optional[bytes] = ..., request_id: _Optional[int] = ..., log_idx: _Optional[int] = ..., log_term: _Optional[int] = ..., error: _Optional[int] = ..., probe: _Optional[int] = ..., probe_term: _Optional[int] = ...) -> None: ...

class Command(_message.Message):
    __slots__ = ("origin", "id", "ops", "incarnation", "retry")
    class Op(_message.Message):
        __slots__ = ("op", "key", "value")
        OP_FIELD_NUMBER: _ClassVar[int]
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        op: int
        key: bytes
        value: bytes
        def __init__(self, op: _Optional[int] = ..., key: _Optional[bytes] = ..., value: _Optional[bytes] = ...) -> None: ...
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    OPS_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    RETRY_FIELD_NUMBER: _ClassVar[int]
    origin: int
    id: int
    ops: _containers.RepeatedCompositeFieldContainer[Command.Op]
    incarnation: int
    retry: bool
    def __init__(self, origin: _Optional[int] = ..., id: _Optional[int] = ..., ops: _Optional[_Iterable[_Union[Command.Op, _Mapping]]] = ..., incarnation: _Optional[int] = ..., retry: _Optional[bool] = ...) -> None: ...

class RaftBatch(_message.Message):
    __slots__ = ("sender", "ring", "messages")
    SENDER_FIELD_NUMBER: _ClassVar[int]
    RING_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    sender: int
    ring: str
    messages: _containers.RepeatedCompositeFieldContainer[Message]
    def __init__(self, sender: _Optional[int] = ..., ring: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[Message, _Mapping]]] = ...) -> None: ...

class PushSummary(_message.Message):
    __slots__ = ("batches", "message")
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    batches: int
    message: str
    def __init__(self, batches: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class DumpHeader(_message.Message):
    __slots__ = ("group", "prev", "last", "keys", "chunks", "recent")
    GROUP_FIELD_NUMBER: _ClassVar[int]
    PREV_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    RECENT_FIELD_NUMBER: _ClassVar[int]
    group: int
    prev: Entry
    last: Entry
    keys: int
    chunks: int
    recent: _containers.RepeatedCompositeFieldContainer[Seen]
    def __init__(self, group: _Optional[int] = ..., prev: _Optional[_Union[Entry, _Mapping]] = ..., last: _Optional[_Union[Entry, _Mapping]] = ..., keys: _Optional[int] = ..., chunks: _Optional[int] = ..., recent: _Optional[_Iterable[_Union[Seen, _Mapping]]] = ...) -> None: ...

class Seen(_message.Message):
    __slots__ = ("digest", "idx", "term")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    IDX_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    digest: bytes
    idx: int
    term: int
    def __init__(self, digest: _Optional[bytes] = ..., idx: _Optional[int] = ..., term: _Optional[int] = ...) -> None: ...

class DumpChunk(_message.Message):
    __slots__ = ("keys", "values")
    KEYS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedScalarFieldContainer[bytes]
    values: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, keys: _Optional[_Iterable[bytes]] = ..., values: _Optional[_Iterable[bytes]] = ...) -> None: ...
