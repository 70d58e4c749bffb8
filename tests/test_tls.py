"""TLS from the config (chordctl.security): rings that talk TLS, mutual TLS, refusals.

Certificates are made at run time with the ``openssl`` command line: a CA, a
server certificate for IP:127.0.0.1 and DNS:localhost, a second server
certificate (node 1's own, through ``nodes[1].cert``), a client certificate,
and a second CA with a client certificate of its own that the nodes must not
trust. The ``cryptography`` package is not installed in this environment,
so the tests do not depend on it.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import yaml

from chordctl import config as config_mod
from chordctl import security
from chordctl.client import Client
from chordctl.config import ConfigError, from_dict
from chordctl.errors import ChordError, NotFoundError
from chordctl.localcluster import wait_serving
from conftest import READY_TIMEOUT, NodeProc, free_ports, run_chordctl, write_config

pytestmark = pytest.mark.skipif(
    shutil.which("openssl") is None,
    reason="TLS tests need test certificates: neither the `openssl` command nor the "
           "`cryptography` package is available to make them")

OWNED_BY_1 = "10"        # 2 nodes, 16 bits: node 1 (id 32767) owns 0..32767
OWNED_BY_0 = "40000"     # node 0 (id 65535) owns 32768..65535

SERVER_EXT = ("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
              "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n")
CLIENT_EXT = ("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
              "extendedKeyUsage=clientAuth\n")


# -- certificates ------------------------------------------------------------------

def _openssl(directory: str, *args: str) -> None:
    p = subprocess.run(["openssl", *args], cwd=directory, capture_output=True, timeout=60)
    assert p.returncode == 0, f"openssl {' '.join(args)}: {p.stderr.decode()}"


EC = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")


def _make_ca(d: str, name: str) -> None:
    _openssl(d, "req", "-x509", *EC, "-keyout", f"{name}.key", "-out", f"{name}.pem",
             "-days", "2", "-subj", f"/CN=chordctl test {name}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")


def _make_leaf(d: str, name: str, ca: str, ext: str, serial: int) -> None:
    with open(os.path.join(d, f"{name}.ext"), "w") as f:
        f.write(ext)
    _openssl(d, "req", *EC, "-keyout", f"{name}.key", "-out", f"{name}.csr",
             "-subj", f"/CN=chordctl {name}")
    _openssl(d, "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey",
             f"{ca}.key", "-set_serial", str(serial), "-days", "2", "-out", f"{name}.pem",
             "-extfile", f"{name}.ext")


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> dict[str, str]:
    """name -> absolute path of every PEM file made for this module."""
    d = str(tmp_path_factory.mktemp("certs"))
    _make_ca(d, "ca")
    _make_ca(d, "other-ca")
    _make_leaf(d, "server", "ca", SERVER_EXT, 1)
    _make_leaf(d, "node1", "ca", SERVER_EXT, 2)
    _make_leaf(d, "client", "ca", CLIENT_EXT, 3)
    _make_leaf(d, "stranger", "other-ca", CLIENT_EXT, 4)
    _make_leaf(d, "app", "ca", CLIENT_EXT, 5)     # a client the CA signed, not the operators'
    return {f[:-4] if f.endswith(".pem") else f: os.path.join(d, f)
            for f in os.listdir(d) if f.endswith((".pem", ".key"))}


# -- configs and rings -------------------------------------------------------------

def edit_config(path: str, change) -> str:
    with open(path) as f:
        doc = yaml.safe_load(f)
    change(doc)
    with open(path, "w") as f:
        yaml.safe_dump(doc, f)
    return path


def derived_config(source: str, directory, name: str, tls: dict | None) -> str:
    """The nodes of *source* with another tls section (None: none), as a client sees them."""
    with open(source) as f:
        doc = yaml.safe_load(f)
    doc.pop("tls", None)
    for node in doc["nodes"]:
        node.pop("cert", None)
        node.pop("key", None)
    if tls is not None:
        doc["tls"] = tls
    path = os.path.join(str(directory), name)
    with open(path, "w") as f:
        yaml.safe_dump(doc, f)
    return path


def start_nodes(path: str) -> list[NodeProc]:
    """Start every node of *path* and wait until each says SERVING over its own TLS."""
    cfg = config_mod.load(path)
    procs = [NodeProc(path, i) for i in range(len(cfg.nodes))]
    try:
        for p in procs:
            p.start(wait=False)
        for p in procs:
            try:
                wait_serving(p.address, p.proc, READY_TIMEOUT, cfg)
            except Exception as e:
                raise AssertionError(f"node {p.index} not ready: {e}\n{p.log()}") from None
            with Client(cfg, target=p.address) as c:
                pid = c.status().pid
            # A port taken by a parallel test between write_config and bind:
            # the address would be answered by someone else's node.
            assert pid == p.proc.pid and p.alive, f"{p.address} answered by pid {pid}"
    except BaseException:
        stop_nodes(procs)
        raise
    return procs


def stop_nodes(procs: list[NodeProc]) -> None:
    for p in procs:
        p.stop()


def start_ring(directory, tls) -> tuple[str, list[NodeProc]]:
    """A 2-node ring whose config gets tls(doc) applied; retried on fresh ports."""
    problems = []
    for attempt in range(3):
        sub = os.path.join(str(directory), f"try-{attempt}")
        os.makedirs(sub)
        path = edit_config(write_config(sub, 2), tls)
        try:
            return path, start_nodes(path)
        except AssertionError as e:
            problems.append(str(e))
    raise AssertionError("could not start the ring:\n" + "\n".join(problems))


@pytest.fixture(scope="module")
def tls_ring(tmp_path_factory, certs):
    """2 nodes, server TLS only: both use tls.cert, clients verify with tls.ca."""
    def tls(doc):
        doc["tls"] = {"cert": certs["server"], "key": certs["server.key"], "ca": certs["ca"]}

    path, procs = start_ring(tmp_path_factory.mktemp("tls-ring"), tls)
    yield path, procs
    stop_nodes(procs)


@pytest.fixture(scope="module")
def mtls_ring(tmp_path_factory, certs):
    """2 nodes, mutual TLS; node 1 serves its own certificate (nodes[1].cert)."""
    def tls(doc):
        doc["tls"] = {"cert": certs["server"], "key": certs["server.key"], "ca": certs["ca"],
                      "require_client_cert": True, "client_cert": certs["client"],
                      "client_key": certs["client.key"]}
        doc["nodes"][1].update(cert=certs["node1"], key=certs["node1.key"])

    path, procs = start_ring(tmp_path_factory.mktemp("mtls-ring"), tls)
    yield path, procs
    stop_nodes(procs)


def crud_through_forward(cfg, entry: str, key: str, owner: int) -> None:
    """The whole CRUD cycle of *key* entered at *entry*, each answered by *owner*."""
    ids = [str(i) for i in config_ring_ids(cfg)]
    with Client(cfg, target=entry) as c:
        r = c.create(key, b"v1", trace=True)
        assert r.node_index == owner
        assert len(r.route) == 2 and r.route[-1] == ids[owner], r.route
        assert c.read(key).value == b"v1"
        assert c.update(key, b"v2").node_index == owner
        r = c.read(key)
        assert (r.value, r.node_index) == (b"v2", owner)
        assert c.delete(key).node_index == owner
        with pytest.raises(NotFoundError):
            c.read(key)


def config_ring_ids(cfg) -> list[int]:
    from chordctl.core.ring import Ring
    return Ring(cfg.ring.bits, len(cfg.nodes)).ids


def output(p: subprocess.CompletedProcess) -> str:
    return p.stdout.decode(errors="replace") + p.stderr.decode(errors="replace")


# -- rings -------------------------------------------------------------------------

def test_tls_ring_serves_crud_through_a_forward(tls_ring, run_cli) -> None:
    path, procs = tls_ring
    cfg = config_mod.load(path)
    crud_through_forward(cfg, procs[0].address, OWNED_BY_1, owner=1)
    crud_through_forward(cfg, procs[1].address, OWNED_BY_0, owner=0)
    cli = run_cli(path)
    assert cli("kv", "create", "11", "hello").exit_code == 0
    r = cli("kv", "read", "11")
    assert (r.exit_code, r.output.strip()) == (0, "hello")
    for p in procs:
        log = p.log()
        assert "TLS" in log and "without TLS" not in log, log


def test_plaintext_client_against_tls_node_exits_3_naming_tls(tls_ring, tmp_path) -> None:
    path, procs = tls_ring
    plain = derived_config(path, tmp_path, "plain.yaml", tls=None)
    for args in (("-c", plain), ("--target", procs[1].address)):
        p = run_chordctl(*args, "kv", "read", OWNED_BY_1, timeout=60)
        text = output(p)
        assert p.returncode == 3, text
        assert "Traceback" not in text
        assert procs[0].address in text or procs[1].address in text, text
        assert "TLS" in text and "tls section" in text, text
    # The refused handshakes did the nodes no harm.
    with Client(config_mod.load(path), target=procs[0].address) as c:
        assert c.status().node_index == 0


def test_client_trusting_another_ca_fails_the_handshake(tls_ring, tmp_path, certs) -> None:
    path, procs = tls_ring
    other = derived_config(path, tmp_path, "other-ca.yaml", tls={"ca": certs["other-ca"]})
    p = run_chordctl("-c", other, "--target", procs[0].address, "kv", "read", OWNED_BY_1)
    text = output(p)
    assert p.returncode == 3, text
    assert "TLS handshake failed" in text and "CERTIFICATE_VERIFY_FAILED" in text, text
    assert "tls.ca" in text


def test_mutual_tls_refuses_a_client_without_certificate(mtls_ring, tmp_path, certs) -> None:
    path, procs = mtls_ring
    bare = derived_config(path, tmp_path, "no-cert.yaml", tls={"ca": certs["ca"]})
    stranger = derived_config(path, tmp_path, "stranger.yaml", tls={
        "ca": certs["ca"], "client_cert": certs["stranger"],
        "client_key": certs["stranger.key"]})
    for refused in (bare, stranger):
        p = run_chordctl("-c", refused, "--target", procs[0].address, "kv", "create",
                         OWNED_BY_0, "x")
        text = output(p)
        assert p.returncode == 3, text
        assert "closed the connection" in text and "tls.client_cert" in text, text
    with Client(config_mod.load(path), target=procs[0].address) as c:
        with pytest.raises(NotFoundError):
            c.read(OWNED_BY_0)      # the refused creates never arrived


def test_mutual_tls_ring_serves_a_client_with_certificate(mtls_ring, run_cli) -> None:
    path, procs = mtls_ring
    cfg = config_mod.load(path)
    # Node 0 forwards to node 1 presenting tls.client_cert; node 1 answers with
    # its own certificate (nodes[1].cert), which the client also verifies.
    crud_through_forward(cfg, procs[0].address, OWNED_BY_1, owner=1)
    crud_through_forward(cfg, procs[1].address, OWNED_BY_0, owner=0)
    r = run_cli(path)("kv", "create", "12", "x", target=procs[1].address)
    assert r.exit_code == 0, r.output


def test_aio_client_works_over_mutual_tls_on_both_routings(mtls_ring) -> None:
    import asyncio

    import chordctl.aio
    path, _procs = mtls_ring

    async def main():
        for route in ("entry", "direct"):
            async with await chordctl.aio.connect(path, route=route) as db:
                await db.create(OWNED_BY_1, b"aio")
                assert (await db.read(OWNED_BY_1)).node_index == 1
                assert (await db.delete(OWNED_BY_1)).value is None
    asyncio.run(main())


def test_coalesced_batches_stream_over_mutual_tls(mtls_ring) -> None:
    """The sync lane's BatchStream rides the node's TLS channel like its calls."""
    import chordctl
    from chordctl.client import _Op
    path, _procs = mtls_ring
    with chordctl.connect(path, route="direct", stream=True) as db:
        lane = db._lane(str(OWNED_BY_1))
        key = str(OWNED_BY_1)
        outs = lane._send_stream([_Op("create", key, b"s", False, 5.0),
                                  _Op("read", key, None, False, 5.0),
                                  _Op("delete", key, None, False, 5.0)])
        assert [o.node_index for o in outs] == [1, 1, 1], outs
        assert outs[1].value == b"s"
        assert len(lane.streams) == 1 and lane.streaming


def test_admin_tls_client_serves_only_the_configs_client_certificate(tmp_path, certs,
                                                                      run_cli) -> None:
    """admin.allow: tls-client: Admin answers clients presenting tls.client_cert
    (operators, `ring show`, readiness); another certificate the CA signed may
    use KeyValue but not Admin."""
    def tls(doc):
        doc["tls"] = {"cert": certs["server"], "key": certs["server.key"], "ca": certs["ca"],
                      "require_client_cert": True, "client_cert": certs["client"],
                      "client_key": certs["client.key"]}
        doc["admin"] = {"allow": "tls-client"}

    path, procs = start_ring(tmp_path, tls)    # readiness itself calls Admin.Status
    try:
        r = run_cli(path)("ring", "show")
        assert r.exit_code == 0 and r.stdout.count(" up ") == 2, r.output
        app = derived_config(path, tmp_path, "app.yaml", tls={
            "ca": certs["ca"], "client_cert": certs["app"], "client_key": certs["app.key"]})
        app_cfg = config_mod.load(app)
        with Client(app_cfg, target=procs[0].address) as c:
            c.create(OWNED_BY_1, b"v")                # KeyValue: open to every client cert
            assert c.read(OWNED_BY_1).value == b"v"
            for call in (c.status, c.files, c.take_snapshot):
                with pytest.raises(ChordError) as refused:
                    call()
                assert "admin.allow: tls-client" in str(refused.value), refused.value
        p = run_chordctl("-c", app, "ring", "show")
        text = output(p)
        assert "Traceback" not in text and text.count(" up ") == 2, text
    finally:
        stop_nodes(procs)


# -- node start --------------------------------------------------------------------

def test_plaintext_node_on_all_interfaces_warns_in_its_log(tmp_path) -> None:
    port = free_ports(1)[0]
    path = edit_config(write_config(tmp_path, 1),
                       lambda doc: doc["nodes"][0].update(host="0.0.0.0", port=port))
    node = NodeProc(path, 0)
    node.start(wait=False)
    try:
        wait_serving(f"127.0.0.1:{port}", node.proc, READY_TIMEOUT)
        log = node.log()
        warning = [line for line in log.splitlines() if "without TLS" in line]
        assert warning, log
        assert "WARNING" in warning[0] and f"0.0.0.0:{port}" in warning[0], warning
    finally:
        node.stop()


def test_node_refuses_a_certificate_that_is_not_pem(tmp_path, certs) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    path = edit_config(write_config(tmp_path, 1), lambda doc: doc.update(tls={
        "cert": str(junk), "key": certs["server.key"], "ca": certs["ca"]}))
    p = run_chordctl("-c", path, "node", "serve", "--node", "0", timeout=60)
    text = output(p)
    assert p.returncode == 2, text
    assert "tls.cert" in text and "not a PEM file" in text and "Traceback" not in text, text


@pytest.mark.parametrize("host, tls, warns", [
    ("127.0.0.1", False, False), ("127.0.0.2", False, False), ("::1", False, False),
    ("localhost", False, False), ("0.0.0.0", False, True), ("::", False, True),
    ("10.1.2.3", False, True), ("db.example.com", False, True), ("0.0.0.0", True, False),
])
def test_plaintext_warning_only_off_loopback_without_tls(host, tls, warns, certs) -> None:
    doc = {"ring": {"bits": 8}, "nodes": [{"host": host, "port": 5000}]}
    if tls:
        doc["tls"] = {"ca": certs["ca"], "cert": certs["server"], "key": certs["server.key"]}
    warning = security.plaintext_warning(from_dict(doc), 0)
    assert bool(warning) == warns, warning
    if warns:
        assert host in warning and "without TLS" in warning


def test_server_credentials_prefer_the_node_certificate(certs, monkeypatch) -> None:
    seen = []
    monkeypatch.setattr(security.grpc, "ssl_server_credentials",
                        lambda pairs, **kw: seen.append((pairs, kw)))
    cfg = from_dict({"ring": {"bits": 8},
                     "nodes": [{"host": "127.0.0.1", "port": 5000},
                               {"host": "127.0.0.1", "port": 5001, "cert": certs["node1"],
                                "key": certs["node1.key"]}],
                     "tls": {"cert": certs["server"], "key": certs["server.key"],
                             "ca": certs["ca"], "require_client_cert": True,
                             "client_cert": certs["client"], "client_key": certs["client.key"]}})
    security.server_credentials(cfg, 0)
    security.server_credentials(cfg, 1)

    def read(name):
        with open(certs[name], "rb") as f:
            return f.read()

    assert seen[0][0] == [(read("server.key"), read("server"))]
    assert seen[1][0] == [(read("node1.key"), read("node1"))]
    for _, kw in seen:
        assert kw == {"root_certificates": read("ca"), "require_client_auth": True}


def test_config_without_tls_makes_plaintext_channels_and_no_server_credentials() -> None:
    cfg = from_dict({"ring": {"bits": 8}, "nodes": [{"host": "127.0.0.1", "port": 5000}]})
    assert cfg.tls is None and security.server_credentials(cfg, 0) is None


def test_client_only_tls_config_cannot_serve_a_node(certs) -> None:
    cfg = from_dict({"ring": {"bits": 8}, "nodes": [{"host": "127.0.0.1", "port": 5000}],
                     "tls": {"ca": certs["ca"]}})
    with pytest.raises(ConfigError, match=r"tls\.cert: node 0 has no server certificate"):
        security.server_credentials(cfg, 0)


# -- config errors -----------------------------------------------------------------

def _bad_configs(c: dict[str, str]) -> list[tuple[str, dict, str]]:
    """(case, changes to a valid 2-node document, text the error must contain)."""
    pair = {"cert": c["server"], "key": c["server.key"]}
    return [
        ("missing file", {"tls": {"cert": "/nonexistent/x.pem", "key": c["server.key"]}},
         "tls.cert: '/nonexistent/x.pem': no such file"),
        ("cert without key", {"tls": {"cert": c["server"]}}, "tls.key: missing"),
        ("key without cert", {"tls": {"key": c["server.key"]}}, "tls.cert: missing"),
        ("ca is a directory", {"tls": {"ca": os.path.dirname(c["ca"])}},
         "tls.ca: "),
        ("path not a string", {"tls": {"cert": 5, "key": c["server.key"]}},
         "tls.cert: must be a file path"),
        ("flag not a bool", {"tls": {**pair, "ca": c["ca"], "require_client_cert": "yes"}},
         "tls.require_client_cert: must be true or false"),
        ("mutual without ca", {"tls": {**pair, "require_client_cert": True,
                                       "client_cert": c["client"],
                                       "client_key": c["client.key"]}},
         "tls.ca: missing"),
        ("mutual without client cert", {"tls": {**pair, "ca": c["ca"],
                                                "require_client_cert": True}},
         "tls.client_cert: missing"),
        ("client cert without key", {"tls": {"ca": c["ca"], "client_cert": c["client"]}},
         "tls.client_key: missing"),
        ("misspelt field", {"tls": {"client_crt": c["client"]}},
         "tls.client_crt: unknown field (did you mean tls.client_cert?)"),
        ("not a mapping", {"tls": "on"}, "tls: must be a mapping"),
        ("node cert without tls", {"node1": {"cert": c["node1"], "key": c["node1.key"]}},
         "nodes[1].cert: a node certificate needs a tls section"),
        ("node key without cert", {"tls": {"ca": c["ca"]}, "node1": {"key": c["node1.key"]}},
         "nodes[1].cert: missing"),
        ("some nodes without cert", {"tls": {"ca": c["ca"]},
                                     "node0": {"cert": c["server"], "key": c["server.key"]}},
         "nodes[1].cert: missing: nodes[0] has its own certificate"),
        ("node cert missing file", {"tls": {"ca": c["ca"]},
                                    "node1": {"cert": "/nonexistent/n.pem",
                                              "key": c["node1.key"]}},
         "nodes[1].cert: '/nonexistent/n.pem': no such file"),
    ]


def _document(changes: dict) -> dict:
    doc = {"ring": {"bits": 8},
           "nodes": [{"host": "127.0.0.1", "port": 5000}, {"host": "127.0.0.1", "port": 5001}]}
    for name, value in changes.items():
        if name.startswith("node"):
            doc["nodes"][int(name[-1])].update(value)
        else:
            doc[name] = value
    return doc


CASES = [case for case, _, _ in _bad_configs({k: "" for k in (
    "server", "server.key", "node1", "node1.key", "ca", "client", "client.key")})]


@pytest.mark.parametrize("case", CASES)
def test_config_errors_name_the_tls_field(case, certs) -> None:
    changes, expected = {c: (d, e) for c, d, e in _bad_configs(certs)}[case]
    with pytest.raises(ConfigError) as info:
        from_dict(_document(changes))
    assert expected in str(info.value), str(info.value)


def test_config_error_in_tls_exits_2_from_the_cli(tmp_path) -> None:
    path = edit_config(write_config(tmp_path, 1),
                       lambda doc: doc.update(tls={"ca": str(tmp_path / "absent.pem")}))
    p = run_chordctl("-c", path, "kv", "read", "1")
    text = output(p)
    assert p.returncode == 2, text
    assert "tls.ca" in text and "no such file" in text and "Traceback" not in text, text


def test_valid_tls_config_is_frozen_and_complete(certs) -> None:
    cfg = from_dict(_document({"tls": {"cert": certs["server"], "key": certs["server.key"],
                                       "ca": certs["ca"], "client_cert": certs["client"],
                                       "client_key": certs["client.key"]},
                               "node1": {"cert": certs["node1"], "key": certs["node1.key"]}}))
    assert cfg.tls.ca == certs["ca"] and cfg.tls.require_client_cert is False
    assert cfg.nodes[1].cert == certs["node1"] and cfg.nodes[0].cert is None
    with pytest.raises(Exception):
        cfg.tls.ca = "x"


@pytest.mark.parametrize("details, blames", [
    ("failed to connect to all addresses; last error: UNAVAILABLE: ipv4:127.0.0.1:5: "
     "Socket closed", "closed the connection"),
    ("failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:5: Tls "
     "handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:1000007d:SSL routines:"
     "OPENSSL_internal:CERTIFICATE_VERIFY_FAILED: unable to get local issuer certificate: OK",
     "TLS handshake failed (CERTIFICATE_VERIFY_FAILED: unable to get local issuer "
     "certificate)"),
    ("failed to connect to all addresses; last error: UNKNOWN: ipv4:10.0.0.3:5: "
     "tcp handshaker shutdown", "(tcp handshaker shutdown); is the node running?"),
    ("failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:5: "
     "Failed to connect to remote host: Connection refused",
     "(Failed to connect to remote host: Connection refused); is the node running?"),
    ("failed to connect", "; is the node running?"),
])
def test_connect_failure_blames_tls_only_for_tls_errors(details, blames) -> None:
    text = security.connect_failure(details)
    assert blames in text, text
    if "is the node running" in blames:
        assert "TLS" not in text and "tls" not in text, text
