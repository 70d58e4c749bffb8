from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Op(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OP_UNSPECIFIED: _ClassVar[Op]
    CREATE: _ClassVar[Op]
    READ: _ClassVar[Op]
    UPDATE: _ClassVar[Op]
    DELETE: _ClassVar[Op]
OP_UNSPECIFIED: Op
CREATE: Op
READ: Op
UPDATE: Op
DELETE: Op

class KeyRequest(_message.Message):
    __slots__ = ("key", "trace")
    KEY_FIELD_NUMBER: _ClassVar[int]
    TRACE_FIELD_NUMBER: _ClassVar[int]
    key: str
    trace: bool
    def __init__(self, key: _Optional[str] = ..., trace: _Optional[bool] = ...) -> None: ...

class WriteRequest(_message.Message):
    __slots__ = ("key", "value", "trace")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    TRACE_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: bytes
    trace: bool
    def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ..., trace: _Optional[bool] = ...) -> None: ...

class Reply(_message.Message):
    __slots__ = ("value", "node_index", "node_id", "message", "route")
    VALUE_FIELD_NUMBER: _ClassVar[int]
    NODE_INDEX_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    value: bytes
    node_index: int
    node_id: str
    message: str
    route: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, value: _Optional[bytes] = ..., node_index: _Optional[int] = ..., node_id: _Optional[str] = ..., message: _Optional[str] = ..., route: _Optional[_Iterable[str]] = ...) -> None: ...

class Operation(_message.Message):
    __slots__ = ("op", "key", "value", "trace", "hops", "route")
    OP_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    TRACE_FIELD_NUMBER: _ClassVar[int]
    HOPS_FIELD_NUMBER: _ClassVar[int]
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    op: Op
    key: str
    value: bytes
    trace: bool
    hops: int
    route: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, op: _Optional[_Union[Op, str]] = ..., key: _Optional[str] = ..., value: _Optional[bytes] = ..., trace: _Optional[bool] = ..., hops: _Optional[int] = ..., route: _Optional[_Iterable[str]] = ...) -> None: ...

class BatchRequest(_message.Message):
    __slots__ = ("ops", "seq", "timeout_ms", "unordered")
    OPS_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    UNORDERED_FIELD_NUMBER: _ClassVar[int]
    ops: _containers.RepeatedCompositeFieldContainer[Operation]
    seq: int
    timeout_ms: int
    unordered: bool
    def __init__(self, ops: _Optional[_Iterable[_Union[Operation, _Mapping]]] = ..., seq: _Optional[int] = ..., timeout_ms: _Optional[int] = ..., unordered: _Optional[bool] = ...) -> None: ...

class Result(_message.Message):
    __slots__ = ("code", "message", "value", "node_index", "node_id", "route")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    NODE_INDEX_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    value: bytes
    node_index: int
    node_id: str
    route: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., value: _Optional[bytes] = ..., node_index: _Optional[int] = ..., node_id: _Optional[str] = ..., route: _Optional[_Iterable[str]] = ...) -> None: ...

class BatchReply(_message.Message):
    __slots__ = ("results", "seq", "code", "message")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[Result]
    seq: int
    code: int
    message: str
    def __init__(self, results: _Optional[_Iterable[_Union[Result, _Mapping]]] = ..., seq: _Optional[int] = ..., code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class ScanRequest(_message.Message):
    __slots__ = ("start", "end", "limit", "keys_only", "page_size", "arc")
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    KEYS_ONLY_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    ARC_FIELD_NUMBER: _ClassVar[int]
    start: str
    end: str
    limit: int
    keys_only: bool
    page_size: int
    arc: int
    def __init__(self, start: _Optional[str] = ..., end: _Optional[str] = ..., limit: _Optional[int] = ..., keys_only: _Optional[bool] = ..., page_size: _Optional[int] = ..., arc: _Optional[int] = ...) -> None: ...

class Entry(_message.Message):
    __slots__ = ("key", "value")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: bytes
    def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...

class ScanPage(_message.Message):
    __slots__ = ("entries", "node_index", "node_id", "keys", "last_seq")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    NODE_INDEX_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[Entry]
    node_index: int
    node_id: str
    keys: int
    last_seq: int
    def __init__(self, entries: _Optional[_Iterable[_Union[Entry, _Mapping]]] = ..., node_index: _Optional[int] = ..., node_id: _Optional[str] = ..., keys: _Optional[int] = ..., last_seq: _Optional[int] = ...) -> None: ...

class CountRequest(_message.Message):
    __slots__ = ("start", "end", "arc")
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    ARC_FIELD_NUMBER: _ClassVar[int]
    start: str
    end: str
    arc: int
    def __init__(self, start: _Optional[str] = ..., end: _Optional[str] = ..., arc: _Optional[int] = ...) -> None: ...

class CountReply(_message.Message):
    __slots__ = ("keys", "node_index", "node_id", "last_seq")
    KEYS_FIELD_NUMBER: _ClassVar[int]
    NODE_INDEX_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    keys: int
    node_index: int
    node_id: str
    last_seq: int
    def __init__(self, keys: _Optional[int] = ..., node_index: _Optional[int] = ..., node_id: _Optional[str] = ..., last_seq: _Optional[int] = ...) -> None: ...

class Membership(_message.Message):
    __slots__ = ("epoch", "bits", "placement", "routing", "replicas", "addresses", "since")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    BITS_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_FIELD_NUMBER: _ClassVar[int]
    ROUTING_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    bits: int
    placement: str
    routing: str
    replicas: int
    addresses: _containers.RepeatedScalarFieldContainer[str]
    since: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, epoch: _Optional[int] = ..., bits: _Optional[int] = ..., placement: _Optional[str] = ..., routing: _Optional[str] = ..., replicas: _Optional[int] = ..., addresses: _Optional[_Iterable[str]] = ..., since: _Optional[_Iterable[int]] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RoutingEntry(_message.Message):
    __slots__ = ("role", "node_index", "node_id", "address")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    NODE_INDEX_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    role: str
    node_index: int
    node_id: str
    address: str
    def __init__(self, role: _Optional[str] = ..., node_index: _Optional[int] = ..., node_id: _Optional[str] = ..., address: _Optional[str] = ...) -> None: ...

class NodeStatus(_message.Message):
    __slots__ = ("node_index", "node_id", "arc_low", "address", "keys", "snapshot_counter", "log_counter", "last_seq", "routing", "fsync", "uptime_seconds", "pid", "placement", "routing_mode", "rss_bytes", "ready_seconds", "recovery_seconds", "in_flight", "cpus", "event_loop", "failed", "replicas", "groups", "membership")
    NODE_INDEX_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ARC_LOW_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_COUNTER_FIELD_NUMBER: _ClassVar[int]
    LOG_COUNTER_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    ROUTING_FIELD_NUMBER: _ClassVar[int]
    FSYNC_FIELD_NUMBER: _ClassVar[int]
    UPTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_FIELD_NUMBER: _ClassVar[int]
    ROUTING_MODE_FIELD_NUMBER: _ClassVar[int]
    RSS_BYTES_FIELD_NUMBER: _ClassVar[int]
    READY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    RECOVERY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    CPUS_FIELD_NUMBER: _ClassVar[int]
    EVENT_LOOP_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    MEMBERSHIP_FIELD_NUMBER: _ClassVar[int]
    node_index: int
    node_id: str
    arc_low: str
    address: str
    keys: int
    snapshot_counter: int
    log_counter: int
    last_seq: int
    routing: _containers.RepeatedCompositeFieldContainer[RoutingEntry]
    fsync: str
    uptime_seconds: float
    pid: int
    placement: str
    routing_mode: str
    rss_bytes: int
    ready_seconds: float
    recovery_seconds: float
    in_flight: int
    cpus: str
    event_loop: str
    failed: str
    replicas: int
    groups: _containers.RepeatedCompositeFieldContainer[GroupStatus]
    membership: Membership
    def __init__(self, node_index: _Optional[int] = ..., node_id: _Optional[str] = ..., arc_low: _Optional[str] = ..., address: _Optional[str] = ..., keys: _Optional[int] = ..., snapshot_counter: _Optional[int] = ..., log_counter: _Optional[int] = ..., last_seq: _Optional[int] = ..., routing: _Optional[_Iterable[_Union[RoutingEntry, _Mapping]]] = ..., fsync: _Optional[str] = ..., uptime_seconds: _Optional[float] = ..., pid: _Optional[int] = ..., placement: _Optional[str] = ..., routing_mode: _Optional[str] = ..., rss_bytes: _Optional[int] = ..., ready_seconds: _Optional[float] = ..., recovery_seconds: _Optional[float] = ..., in_flight: _Optional[int] = ..., cpus: _Optional[str] = ..., event_loop: _Optional[str] = ..., failed: _Optional[str] = ..., replicas: _Optional[int] = ..., groups: _Optional[_Iterable[_Union[GroupStatus, _Mapping]]] = ..., membership: _Optional[_Union[Membership, _Mapping]] = ...) -> None: ...

class GroupStatus(_message.Message):
    __slots__ = ("group", "members", "leader", "state", "term", "commit_index", "last_applied", "log_index", "match_index", "elections", "learning", "log_start", "installs", "compactions")
    class MatchIndexEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: int
        def __init__(self, key: _Optional[int] = ..., value: _Optional[int] = ...) -> None: ...
    GROUP_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    LEADER_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    COMMIT_INDEX_FIELD_NUMBER: _ClassVar[int]
    LAST_APPLIED_FIELD_NUMBER: _ClassVar[int]
    LOG_INDEX_FIELD_NUMBER: _ClassVar[int]
    MATCH_INDEX_FIELD_NUMBER: _ClassVar[int]
    ELECTIONS_FIELD_NUMBER: _ClassVar[int]
    LEARNING_FIELD_NUMBER: _ClassVar[int]
    LOG_START_FIELD_NUMBER: _ClassVar[int]
    INSTALLS_FIELD_NUMBER: _ClassVar[int]
    COMPACTIONS_FIELD_NUMBER: _ClassVar[int]
    group: int
    members: _containers.RepeatedScalarFieldContainer[int]
    leader: int
    state: str
    term: int
    commit_index: int
    last_applied: int
    log_index: int
    match_index: _containers.ScalarMap[int, int]
    elections: int
    learning: bool
    log_start: int
    installs: int
    compactions: int
    def __init__(self, group: _Optional[int] = ..., members: _Optional[_Iterable[int]] = ..., leader: _Optional[int] = ..., state: _Optional[str] = ..., term: _Optional[int] = ..., commit_index: _Optional[int] = ..., last_applied: _Optional[int] = ..., log_index: _Optional[int] = ..., match_index: _Optional[_Mapping[int, int]] = ..., elections: _Optional[int] = ..., learning: _Optional[bool] = ..., log_start: _Optional[int] = ..., installs: _Optional[int] = ..., compactions: _Optional[int] = ...) -> None: ...

class SnapshotRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SnapshotReply(_message.Message):
    __slots__ = ("counter", "path", "bytes", "keys", "skipped", "seconds", "capture_ms")
    COUNTER_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    CAPTURE_MS_FIELD_NUMBER: _ClassVar[int]
    counter: int
    path: str
    bytes: int
    keys: int
    skipped: bool
    seconds: float
    capture_ms: float
    def __init__(self, counter: _Optional[int] = ..., path: _Optional[str] = ..., bytes: _Optional[int] = ..., keys: _Optional[int] = ..., skipped: _Optional[bool] = ..., seconds: _Optional[float] = ..., capture_ms: _Optional[float] = ...) -> None: ...

class FilesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class FileInfo(_message.Message):
    __slots__ = ("name", "kind", "counter", "bytes", "mtime", "records", "in_use", "status", "current")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    COUNTER_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    MTIME_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    IN_USE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CURRENT_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: str
    counter: int
    bytes: int
    mtime: float
    records: int
    in_use: bool
    status: str
    current: bool
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[str] = ..., counter: _Optional[int] = ..., bytes: _Optional[int] = ..., mtime: _Optional[float] = ..., records: _Optional[int] = ..., in_use: _Optional[bool] = ..., status: _Optional[str] = ..., current: _Optional[bool] = ...) -> None: ...

class FilesReply(_message.Message):
    __slots__ = ("directory", "files")
    DIRECTORY_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    directory: str
    files: _containers.RepeatedCompositeFieldContainer[FileInfo]
    def __init__(self, directory: _Optional[str] = ..., files: _Optional[_Iterable[_Union[FileInfo, _Mapping]]] = ...) -> None: ...
