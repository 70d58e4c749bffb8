"""A ring across hosts: each node in its own network namespace with its own address.

Where the machine allows it (root, and `ip netns add` works), the test builds
a private network that exists only inside namespaces it creates: a "switch"
namespace holding a bridge, one namespace per node and one for the client,
each joined to the bridge by a veth pair and given an address in a private
subnet. Nothing is added to the machine's own namespace, so no traffic
leaves the machine. Every name carries this process's pid, so parallel runs
do not collide, and everything is deleted in a finally.

The nodes run as `ip netns exec NS python -m chordctl ... node serve`; the
client side runs in the client namespace (a small driver for the CRUD suite,
the real CLI for exit codes). Then one node's link is cut: requests that
need it fail with exit 3 naming it within the deadline; the others succeed;
once the link is back, so are its keys.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
import yaml

from chordctl.core.ring import Ring

PID = os.getpid()
PREFIX = f"chordctl-{PID}-"
SUBNET = f"10.200.{PID % 200 + 20}"   # any value would do: the namespaces are isolated
PORT = 7000
N = 3
BITS = 16
CLIENT_TIMEOUT = 3.0
OWNER_KEYS = {0: 50000, 1: 30000, 2: 10}   # 3 nodes, 16 bits, direct placement
CUT = 2                                     # the node whose link goes down
RUN_TIMEOUT = 60


def ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


def must(*args: str) -> None:
    p = ip(*args)
    if p.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {p.stderr.strip()}")


class PrivateNet:
    """Namespaces, bridge and veth pairs of one test run; delete() removes them all."""

    def __init__(self):
        self.switch = PREFIX + "sw"
        self.nodes = [f"{PREFIX}n{i}" for i in range(N)]
        self.client = PREFIX + "cl"
        self.created: list[str] = []

    def address(self, i: int) -> str:
        return f"{SUBNET}.{i + 1}"

    def link(self, i: int) -> str:
        return f"cq{PID}n{i}"         # at most 15 characters, as the kernel requires

    def build(self) -> None:
        for ns in [self.switch, *self.nodes, self.client]:
            must("netns", "add", ns)
            self.created.append(ns)
            must("-n", ns, "link", "set", "lo", "up")
        must("-n", self.switch, "link", "add", "br0", "type", "bridge")
        must("-n", self.switch, "link", "set", "br0", "up")
        hosts = [(ns, self.link(i), self.address(i)) for i, ns in enumerate(self.nodes)]
        hosts.append((self.client, f"cq{PID}cl", f"{SUBNET}.100"))
        for j, (ns, name, addr) in enumerate(hosts):
            peer = f"cq{PID}p{j}"
            # Both ends are created directly in their namespaces, never in ours.
            must("link", "add", name, "netns", ns, "type", "veth", "peer", "name", peer,
                 "netns", self.switch)
            must("-n", self.switch, "link", "set", peer, "master", "br0")
            must("-n", self.switch, "link", "set", peer, "up")
            must("-n", ns, "addr", "add", f"{addr}/24", "dev", name)
            must("-n", ns, "link", "set", name, "up")

    def delete(self) -> list[str]:
        """Delete every namespace this run made; returns those that are still listed."""
        for ns in reversed(self.created):
            ip("netns", "del", ns)
        listed = ip("netns", "list").stdout
        return [ns for ns in self.created if ns in listed.split()]


def exec_in(ns: str, *argv: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


def chordctl_in(ns: str, path: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(exec_in(ns, sys.executable, "-m", "chordctl", "-c", path, *args),
                          capture_output=True, text=True, timeout=RUN_TIMEOUT)


# The CRUD suite, run inside the client namespace: every entry node x every
# owner, each step's outcome reported as JSON for the test to check.
DRIVER = r"""
import json, sys, time
from chordctl import config
from chordctl.client import Client
from chordctl.errors import ChordError
from chordctl.localcluster import wait_serving

cfg = config.load(sys.argv[1])
mode = sys.argv[2]
args = json.loads(sys.argv[3])

def outcome(fn):
    try:
        r = fn()
    except ChordError as e:
        return {"error": type(e).__name__, "message": str(e)}
    return {"node": r.node_index, "value": None if r.value is None else r.value.decode(),
            "route": list(r.route)}

if mode == "ready":
    for n in cfg.nodes:
        wait_serving(n.address, None, args["timeout"], cfg)
    print(json.dumps("ready"))
elif mode == "crud":
    out = []
    for entry, key in args["cases"]:
        with Client(cfg, target=cfg.nodes[entry].address) as c:
            steps = [("create", lambda: c.create(key, b"v1", trace=True)),
                     ("read", lambda: c.read(key)),
                     ("update", lambda: c.update(key, b"v2")),
                     ("read", lambda: c.read(key)),
                     ("delete", lambda: c.delete(key)),
                     ("read", lambda: c.read(key))]
            for op, fn in steps:
                out.append([entry, key, op, outcome(fn)])
    with Client(cfg, target=cfg.nodes[0].address) as c:
        for key in args["keep"]:
            out.append([0, key, "create", outcome(lambda: c.create(key, b"kept-" + key.encode()))])
    print(json.dumps(out))
elif mode == "read-until":
    deadline = time.monotonic() + args["timeout"]
    attempts = []
    while True:
        with Client(cfg, target=cfg.nodes[0].address) as c:
            o = outcome(lambda: c.read(args["key"]))
        attempts.append(o)
        if "error" not in o or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    print(json.dumps(attempts))
"""


def drive(ns: str, path: str, mode: str, args: dict):
    p = subprocess.run(exec_in(ns, sys.executable, "-c", DRIVER, path, mode, json.dumps(args)),
                       capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert p.returncode == 0, f"driver {mode} failed:\n{p.stderr}"
    return json.loads(p.stdout)


@pytest.fixture
def netns_ring(tmp_path):
    """(config path, PrivateNet, node processes): a 3-node ring, one node per namespace."""
    if os.geteuid() != 0:
        pytest.skip("multi-host test needs root to create network namespaces")
    if shutil.which("ip") is None:
        pytest.skip("multi-host test needs the `ip` command (iproute2)")
    net = PrivateNet()
    procs: list[subprocess.Popen] = []
    logs = [str(tmp_path / f"node-{i}.log") for i in range(N)]
    try:
        try:
            net.build()
        except (RuntimeError, OSError) as e:
            pytest.skip(f"network namespaces are not usable here: {e}")
        doc = {"ring": {"bits": BITS, "placement": "direct", "routing": "fingers"},
               "nodes": [{"host": net.address(i), "port": PORT} for i in range(N)],
               "storage": {"data_dir": str(tmp_path / "data"), "snapshot_interval": 0},
               "client": {"timeout": CLIENT_TIMEOUT, "grace": 2}}
        path = str(tmp_path / "chordctl.yaml")
        with open(path, "w") as f:
            yaml.safe_dump(doc, f)
        for i, ns in enumerate(net.nodes):
            with open(logs[i], "ab") as log:
                # `ip netns exec` execs the command, so the pid is the node's own.
                procs.append(subprocess.Popen(
                    exec_in(ns, sys.executable, "-m", "chordctl", "-c", path, "node", "serve",
                            "--node", str(i)),
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT))
        try:
            assert drive(net.client, path, "ready", {"timeout": 30}) == "ready"
        except AssertionError as e:
            raise AssertionError(f"{e}\n" + "\n".join(_tail(p) for p in logs)) from None
        yield path, net, procs, logs
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        left = net.delete()
        assert not left, f"network namespaces left behind: {left}"


def _tail(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f"--- {path}\n" + f.read()[-3000:]
    except OSError:
        return ""


def test_ring_across_namespaces_serves_crud_and_reports_a_cut_node(netns_ring) -> None:
    path, net, procs, logs = netns_ring
    ids = Ring(BITS, N).ids

    # Every node listens on a non-loopback address without TLS: each says so.
    for i, log in enumerate(logs):
        text = _tail(log)
        assert f"{net.address(i)}:{PORT} without TLS" in text, text

    # -- CRUD: every entry node x every owner, across the private network ----
    cases = [[entry, str(OWNER_KEYS[owner] + (entry + 1) * (1 << BITS))]
             for entry in range(N) for owner in range(N)]
    keep = {owner: str(OWNER_KEYS[owner] + 10 * (1 << BITS)) for owner in range(N)}
    out = drive(net.client, path, "crud", {"cases": cases, "keep": list(keep.values())})
    ring = Ring(BITS, N)
    expected_values = {"create": None, "read": "v1", "update": None, "delete": None}
    reads = 0
    for entry, key, op, o in out[:-N]:
        owner = ring.owner(int(key))
        if op == "read":
            reads += 1
            if reads % 3 == 0:          # the read after the delete
                assert o.get("error") == "NotFoundError", (entry, key, o)
                continue
            assert o.get("value") == ("v1" if reads % 3 == 1 else "v2"), (entry, key, o)
        assert o.get("node") == owner, (entry, key, op, o)
        if op == "create":
            assert o["route"][0] == str(ids[entry]) and o["route"][-1] == str(ids[owner]), o
        elif op != "read":
            assert o.get("value") == expected_values[op], o
    assert reads == 3 * len(cases)
    for (_, key, op, o), owner in zip(out[-N:], range(N)):
        assert o.get("node") == owner and key == keep[owner], o
    r = chordctl_in(net.client, path, "kv", "read", keep[1])
    assert (r.returncode, r.stdout.strip()) == (0, f"kept-{keep[1]}"), r.stderr

    # -- cut node 2 off the network --------------------------------------------
    must("-n", net.nodes[CUT], "link", "set", net.link(CUT), "down")
    cut_label = f"node {CUT} (id {ids[CUT]}, {net.address(CUT)}:{PORT})"

    r = chordctl_in(net.client, path, "kv", "read", keep[CUT])
    assert r.returncode == 3, (r.returncode, r.stdout, r.stderr)
    assert cut_label in r.stderr and "could not reach" in r.stderr, r.stderr

    r = chordctl_in(net.client, path, "--target", f"{net.address(CUT)}:{PORT}",
                    "kv", "read", keep[CUT])
    assert r.returncode == 3, (r.returncode, r.stdout, r.stderr)
    assert f"{net.address(CUT)}:{PORT}" in r.stderr, r.stderr
    assert "TLS" not in r.stderr, r.stderr    # a silent host is not a TLS problem

    for owner in range(N):
        if owner == CUT:
            continue
        r = chordctl_in(net.client, path, "kv", "read", keep[owner])
        assert (r.returncode, r.stdout.strip()) == (0, f"kept-{keep[owner]}"), r.stderr
        new = str(OWNER_KEYS[owner] + 11 * (1 << BITS))
        r = chordctl_in(net.client, path, "kv", "create", new, "during-cut")
        assert r.returncode == 0, r.stderr
    assert all(p.poll() is None for p in procs), "a node exited during the cut"

    # -- the link comes back: so does node 2's arc -----------------------------
    must("-n", net.nodes[CUT], "link", "set", net.link(CUT), "up")
    attempts = drive(net.client, path, "read-until", {"key": keep[CUT], "timeout": 30})
    assert attempts[-1].get("value") == f"kept-{keep[CUT]}", attempts[-3:]
