"""admin.allow: who may call chord.v1.Admin (Status, TakeSnapshot, Files).

``loopback`` is tested on a node listening on every interface, called once
through 127.0.0.1 (admitted) and once through this host's own non-loopback
address (refused). ``tls-client`` is in test_tls.py, with the certificates.
"""

from __future__ import annotations

import socket

import grpc
import pytest

from chordctl import config as config_mod
from chordctl import security
from chordctl.client import Client
from chordctl.errors import ChordError
from chordctl.localcluster import wait_serving
from conftest import READY_TIMEOUT, NodeProc, free_ports, run_chordctl, write_config
from test_tls import edit_config


def own_address() -> str | None:
    """This host's address on a non-loopback interface, if it has one (no packet is sent)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.connect(("192.0.2.1", 9))
        address = s.getsockname()[0]
    except OSError:
        return None
    finally:
        s.close()
    return None if address.startswith("127.") else address


@pytest.mark.parametrize("peer, loopback", [
    ("ipv4:127.0.0.1:5000", True), ("ipv4:127.8.9.10:1", True),
    ("ipv6:[::1]:5000", True), ("ipv6:%5B::1%5D:5000", True),
    ("ipv6:[::ffff:127.0.0.1]:5000", True), ("unix:/tmp/sock", True),
    ("ipv4:192.0.2.2:5000", False), ("ipv6:[fd00::2]:5000", False),
    ("ipv6:%5Bfd00::2%5D:5000", False), ("", False), ("garbage", False),
])
def test_peer_is_loopback(peer: str, loopback: bool) -> None:
    assert security.peer_is_loopback(peer) is loopback


def test_admin_loopback_refuses_a_remote_client_and_serves_a_local_one(tmp_path) -> None:
    address = own_address()
    if address is None:
        pytest.skip("this host has no non-loopback address to call from")
    port = free_ports(1)[0]
    path = edit_config(write_config(tmp_path, 1), lambda doc: (
        doc["nodes"][0].update(host="0.0.0.0", port=port), doc.update(admin={"allow": "loopback"})))
    cfg = config_mod.load(path)
    node = NodeProc(path, 0)
    node.start(wait=False)
    try:
        wait_serving(f"127.0.0.1:{port}", node.proc, READY_TIMEOUT)
        with Client(cfg, target=f"127.0.0.1:{port}") as c:
            assert c.status().pid == node.proc.pid
            assert c.files().files
        remote = f"{address}:{port}"
        with Client(cfg, target=remote) as c:
            assert c.health() == "SERVING"          # health stays open
            for call in (c.status, c.files, c.take_snapshot):
                with pytest.raises(ChordError) as refused:
                    call()
                text = str(refused.value)
                assert text.startswith("admin: node 0") and "admin.allow: loopback" in text, text
        # KeyValue is not Admin: still open to the remote client.
        with grpc.insecure_channel(remote) as ch:
            from chordctl.pb import chord_pb2 as pb
            from chordctl.pb import chord_pb2_grpc as pb_grpc
            with pytest.raises(grpc.RpcError) as e:
                pb_grpc.KeyValueStub(ch).Read(pb.KeyRequest(key="1"), timeout=10)
            assert e.value.code() == grpc.StatusCode.NOT_FOUND
            with pytest.raises(grpc.RpcError) as e:
                pb_grpc.AdminStub(ch).Files(pb.FilesRequest(), timeout=10)
            assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        node.stop()


def test_admin_tls_client_without_mutual_tls_refuses_to_start(tmp_path) -> None:
    path = edit_config(write_config(tmp_path, 1), lambda doc: doc.update(
        admin={"allow": "tls-client"}))
    p = run_chordctl("-c", path, "node", "serve", "--node", "0", timeout=60)
    text = p.stdout.decode() + p.stderr.decode()
    assert p.returncode == 2, text
    assert "admin.allow: tls-client needs mutual TLS" in text and "Traceback" not in text, text
