"""The committed generated code in chordctl/pb matches proto/chord.proto."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest
from google.protobuf import descriptor_pb2, text_format

from chordctl.pb import chord_pb2, chord_pb2_grpc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROTO_DIR = os.path.join(ROOT, "proto")
PB_DIR = os.path.join(ROOT, "chordctl", "pb")
# The generated module was compiled as chordctl/pb/chord.proto (see its DESCRIPTOR).
PROTO_NAME = "chordctl/pb/chord.proto"

needs_protoc = pytest.mark.skipif(
    importlib.util.find_spec("grpc_tools") is None,
    reason="grpc_tools is not installed (pip install grpcio-tools) -- cannot recompile the proto",
)


def committed() -> descriptor_pb2.FileDescriptorProto:
    fdp = descriptor_pb2.FileDescriptorProto()
    fdp.ParseFromString(chord_pb2.DESCRIPTOR.serialized_pb)
    return fdp


def default_json_name(name: str) -> str:
    """protoc's lowerCamelCase JSON name of a field (ToJsonName)."""
    out, upper = [], False
    for ch in name:
        if ch == "_":
            upper = True
        else:
            out.append(ch.upper() if upper else ch)
            upper = False
    return "".join(out)


def normalize(fdp: descriptor_pb2.FileDescriptorProto) -> descriptor_pb2.FileDescriptorProto:
    """Drop what protoc adds to a descriptor set but python codegen strips.

    --descriptor_set_out fills in every field's derived json_name; the python
    generator leaves derived ones out. A json_name set in the .proto is kept.
    """
    fdp = descriptor_pb2.FileDescriptorProto.FromString(fdp.SerializeToString())
    fdp.ClearField("source_code_info")

    def fix(messages) -> None:
        for m in messages:
            for f in list(m.field) + list(m.extension):
                if f.json_name == default_json_name(f.name):
                    f.ClearField("json_name")
            fix(m.nested_type)

    fix(fdp.message_type)
    for f in fdp.extension:
        if f.json_name == default_json_name(f.name):
            f.ClearField("json_name")
    return fdp


def protoc(tmp_path, *outputs: str) -> subprocess.CompletedProcess:
    # A separate process: grpc_tools.protoc.main is not safe to call twice in one.
    p = subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{os.path.dirname(PROTO_NAME)}={PROTO_DIR}",
         *outputs, PROTO_NAME],
        capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, f"protoc failed:\n{p.stdout}\n{p.stderr}"
    return p


@needs_protoc
def test_generated_descriptor_matches_proto_file(tmp_path) -> None:
    out = tmp_path / "chord.desc"
    protoc(tmp_path, f"--descriptor_set_out={out}")
    fds = descriptor_pb2.FileDescriptorSet()
    fds.ParseFromString(out.read_bytes())
    [fresh] = [normalize(f) for f in fds.file if f.name == PROTO_NAME]
    old = normalize(committed())
    assert old.name == fresh.name == PROTO_NAME
    if old != fresh:
        pytest.fail(
            "chordctl/pb/chord_pb2.py is stale: regenerate it with\n"
            f"  python -m grpc_tools.protoc -Ichordctl/pb=proto --python_out=. "
            f"--pyi_out=. --grpc_python_out=. {PROTO_NAME}\n"
            f"--- committed ---\n{text_format.MessageToString(old)}\n"
            f"--- from proto/chord.proto ---\n{text_format.MessageToString(fresh)}")


@needs_protoc
def test_generated_grpc_stubs_match_proto_file(tmp_path) -> None:
    protoc(tmp_path, f"--grpc_python_out={tmp_path}")
    fresh = (tmp_path / "chordctl" / "pb" / "chord_pb2_grpc.py").read_text()
    with open(os.path.join(PB_DIR, "chord_pb2_grpc.py")) as f:
        old = f.read()

    def body(text: str) -> list[str]:
        # The version guard names the grpcio-tools release that generated the
        # file; everything else must be identical.
        return [line for line in text.splitlines() if "GRPC_GENERATED_VERSION = " not in line]

    assert body(old) == body(fresh), (
        "chordctl/pb/chord_pb2_grpc.py is stale: regenerate it from proto/chord.proto")


def test_key_value_service_has_one_rpc_per_operation() -> None:
    service = chord_pb2.DESCRIPTOR.services_by_name["KeyValue"]
    methods = {m.name: (m.input_type.name, m.output_type.name) for m in service.methods}
    assert methods == {
        "Create": ("WriteRequest", "Reply"),
        "Read": ("KeyRequest", "Reply"),
        "Update": ("WriteRequest", "Reply"),
        "Delete": ("KeyRequest", "Reply"),
        "Batch": ("BatchRequest", "BatchReply"),
        "BatchStream": ("BatchRequest", "BatchReply"),
        "Scan": ("ScanRequest", "ScanPage"),
        "Count": ("CountRequest", "CountReply"),
    }
    for m in service.methods:
        # Scan streams pages of one node's keys; BatchStream is Batch calls as
        # messages of one stream both ways; nothing else streams.
        assert m.client_streaming == (m.name == "BatchStream")
        assert m.server_streaming == (m.name in ("Scan", "BatchStream"))
    assert chord_pb2.DESCRIPTOR.package == "chord.v1"


def test_requests_carry_key_as_string_and_value_as_bytes() -> None:
    FD = descriptor_pb2.FieldDescriptorProto
    write = chord_pb2.WriteRequest.DESCRIPTOR.fields_by_name
    key = chord_pb2.KeyRequest.DESCRIPTOR.fields_by_name
    op = chord_pb2.Operation.DESCRIPTOR.fields_by_name
    for fields in (write, key, op):
        # Keys of any size travel as decimal text.
        assert fields["key"].type == FD.TYPE_STRING
    for fields in (write, op):
        assert fields["value"].type == FD.TYPE_BYTES
    assert "value" not in key
    assert (write["key"].number, write["value"].number) == (1, 2)
    assert key["key"].number == 1


def test_ops_match_protocol_op_numbers() -> None:
    from chordctl import protocol

    assert chord_pb2.CREATE == protocol.OP_CREATE
    assert chord_pb2.READ == protocol.OP_READ
    assert chord_pb2.UPDATE == protocol.OP_UPDATE
    assert chord_pb2.DELETE == protocol.OP_DELETE
    assert chord_pb2.OP_UNSPECIFIED == 0 and 0 not in protocol.OP_NAMES
    assert {name.lower(): number for name, number in chord_pb2.Op.items()
            if number} == protocol.OPS


def test_stubs_expose_every_rpc() -> None:
    for service in chord_pb2.DESCRIPTOR.services_by_name.values():
        stub = getattr(chord_pb2_grpc, f"{service.name}Stub")
        servicer = getattr(chord_pb2_grpc, f"{service.name}Servicer")
        assert hasattr(chord_pb2_grpc, f"add_{service.name}Servicer_to_server")
        for m in service.methods:
            assert hasattr(servicer, m.name), (service.name, m.name)
            assert f"'/{service.full_name}/{m.name}'" in open(chord_pb2_grpc.__file__).read()
        assert callable(stub)


def test_admin_service_exists() -> None:
    admin = chord_pb2.DESCRIPTOR.services_by_name["Admin"]
    assert {m.name for m in admin.methods} == {"Status", "TakeSnapshot", "Files", "Members"}
