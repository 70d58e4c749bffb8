"""chordctl.protocol: the wire rules every side applies (pure, no nodes)."""

from __future__ import annotations

import subprocess
import sys

import grpc
import pytest

from chordctl import protocol
from chordctl.config import LimitsConfig
from chordctl.errors import (AlreadyExistsError, DeadlineExceededError, InternalError,
                             InvalidInputError, NotFoundError, ResourceExhaustedError,
                             UnavailableError)

LIMITS = LimitsConfig(max_value_bytes=8, max_key_digits=5)


def test_protocol_is_a_leaf_without_grpc_or_protobuf() -> None:
    code = ("import sys, chordctl.protocol; "
            "print(sorted(m for m in sys.modules if m.startswith(('grpc', 'google', 'chordctl'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert eval(out) == ["chordctl", "chordctl.errors", "chordctl.protocol"]


def test_status_codes_are_grpc_numbers_and_names() -> None:
    for sc in grpc.StatusCode:
        number, _text = sc.value
        assert protocol.code_name(number) == sc.name
    for name in ("OK", "CANCELLED", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
                 "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "ABORTED",
                 "INTERNAL", "UNAVAILABLE", "UNKNOWN"):
        assert getattr(protocol, name) == grpc.StatusCode[name].value[0]
    assert protocol.code_name(99) == "99"


@pytest.mark.parametrize("code, cls", [
    (protocol.NOT_FOUND, NotFoundError), (protocol.ALREADY_EXISTS, AlreadyExistsError),
    (protocol.INVALID_ARGUMENT, InvalidInputError), (protocol.UNAVAILABLE, UnavailableError),
    (protocol.DEADLINE_EXCEEDED, DeadlineExceededError),
    (protocol.RESOURCE_EXHAUSTED, ResourceExhaustedError), (protocol.ABORTED, UnavailableError),
    (protocol.CANCELLED, UnavailableError), (protocol.INTERNAL, InternalError),
    (protocol.PERMISSION_DENIED, InternalError), (protocol.UNKNOWN, InternalError),
    (99, InternalError)])
def test_each_code_has_one_error_class(code, cls) -> None:
    assert protocol.error_class(code) is cls


def test_client_error_for_takes_a_grpc_code_or_its_number_alike() -> None:
    from chordctl.client import error_for
    for sc in grpc.StatusCode:
        by_code = error_for(sc, "node 1 (id 7): x", "h:1")
        by_number = error_for(sc.value[0], "node 1 (id 7): x", "h:1")
        assert type(by_code) is type(by_number) is protocol.error_class(sc.value[0])
        assert str(by_code) == str(by_number)


@pytest.mark.parametrize("op", [protocol.OP_CREATE, "create", protocol.OP_UPDATE, "update"])
def test_validate_accepts_a_write_by_number_or_name(op) -> None:
    number, key, canon, value = protocol.validate(op, "007", b"12345678", LIMITS)
    assert (number, key, canon, value) == (protocol.OPS.get(op, op), 7, b"7", b"12345678")


@pytest.mark.parametrize("op", [protocol.OP_READ, "read", protocol.OP_DELETE, "delete"])
def test_validate_drops_the_value_of_read_and_delete(op) -> None:
    assert protocol.validate(op, "42", b"x" * 100, LIMITS)[1:] == (42, b"42", b"")
    assert protocol.validate(op, "42", None, LIMITS)[3] == b""


@pytest.mark.parametrize("op, key, value, fragment", [
    (0, "1", b"", "unknown operation 0; expected create, read, update or delete"),
    (7, "1", b"", "unknown operation 7;"),
    ("frob", "1", b"", "unknown operation 'frob'; expected create, read, update or delete"),
    ("create", "", b"v", "key is empty"),
    ("read", "-3", None, "key -3 is negative"),
    ("read", "12a", None, "not a non-negative decimal integer"),
    ("read", "123456", None, "key has 6 digits; the limit is 5 (limits.max_key_digits)"),
    ("create", "1", None, "create needs a value"),
    ("update", "1", b"123456789",
     "value of 9 bytes is over the limit of 8 bytes (limits.max_value_bytes)"),
])
def test_validate_refuses_with_the_reason(op, key, value, fragment) -> None:
    with pytest.raises(InvalidInputError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        protocol.validate(op, key, value, LIMITS)


def test_the_unknown_operation_check_comes_first() -> None:
    with pytest.raises(InvalidInputError, match="unknown operation"):
        protocol.validate(9, "not a key", b"x" * 100, LIMITS)


def test_client_check_is_protocol_validate() -> None:
    from chordctl.client import Client
    c = Client(target="127.0.0.1:1")
    assert c.limits == LimitsConfig()
    for op, key, value in (("frob", "1", b""), ("create", "1", b"x" * (c.max_value + 1)),
                           ("read", "x", None), ("update", "1", None)):
        with pytest.raises(InvalidInputError) as mine:
            c.check(op, key, value)
        with pytest.raises(InvalidInputError) as theirs:
            protocol.validate(op, key, value, LimitsConfig())
        assert str(mine.value) == str(theirs.value)


def test_ring_and_config_share_protocols_ring_parameters() -> None:
    from chordctl import config
    from chordctl.core import ring
    assert config.PLACEMENTS is ring.PLACEMENTS is protocol.PLACEMENTS
    assert config.ROUTINGS is ring.ROUTINGS is protocol.ROUTINGS


def test_log_records_use_the_protocol_op_numbers() -> None:
    from chordctl.core.storage import records
    from chordctl.pb import chord_pb2 as pb
    assert records.LOGGED == protocol.LOGGED == (
        protocol.OP_CREATE, protocol.OP_UPDATE, protocol.OP_DELETE, protocol.OP_RAFT)
    # The raft record's op is no operation a client can send.
    assert protocol.OP_RAFT not in pb.Op.values() and protocol.OP_RAFT not in protocol.OP_NAMES


def test_ring_from_config_is_the_configs_ring() -> None:
    from chordctl.config import from_dict
    from chordctl.core.ring import Ring
    cfg = from_dict({"ring": {"bits": 8, "placement": "hash", "routing": "neighbors"},
                     "nodes": [{"host": "127.0.0.1", "port": p} for p in (1, 2, 3)]})
    r = Ring.from_config(cfg)
    assert (r.bits, r.n, r.placement, r.routing) == (8, 3, "hash", "neighbors")


@pytest.mark.parametrize("code, details, expected", [
    (protocol.UNAVAILABLE, "failed to connect to all addresses; last error: ...", True),
    (protocol.UNAVAILABLE, "Failed to connect to remote host", True),
    (protocol.UNAVAILABLE, "node 0 (id 65535) could not reach node 3: unreachable "
                           "(failed to connect to all addresses)", False),
    (protocol.UNAVAILABLE, "Socket closed", False),
    (protocol.DEADLINE_EXCEEDED, "failed to connect", False)])
def test_never_sent_is_only_grpcs_own_failed_to_connect(code, details, expected) -> None:
    assert protocol.never_sent(code, details) is expected


def test_ring_identity_has_a_stable_code_for_every_placement() -> None:
    from chordctl.core.storage.identity import PLACEMENT_CODES
    assert set(PLACEMENT_CODES) == set(protocol.PLACEMENTS)
    assert PLACEMENT_CODES == {"direct": 1, "hash": 2}    # on disk: never renumber
