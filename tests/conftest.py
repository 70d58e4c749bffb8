"""Shared fixtures: free loopback ports, configs, real node processes, the CLI."""

from __future__ import annotations

import itertools
import os
import random
import signal
import socket
import subprocess
import sys
import time
from contextlib import closing

import pytest
import yaml
from click.testing import CliRunner

from chordctl import config as config_mod
from chordctl.localcluster import wait_exit, wait_serving
from chordctl.cli.main import cli
from chordctl.client import Client

READY_TIMEOUT = 30.0


# Each pytest-xdist worker takes its nodes' ports from a range of its own,
# below the kernel's ephemeral range: a port the kernel hands out for
# bind(0) or an outgoing connection, or that another worker picked, is never
# one of them. (With bind(0), two workers were once given the same port
# between one writing its config and its node binding it.)
_PORTS_PER_WORKER = 1500
_worker = int("".join(ch for ch in os.environ.get("PYTEST_XDIST_WORKER", "gw0")
                      if ch.isdigit()) or 0)
_PORT_BASE = 20000 + (_worker % 8) * _PORTS_PER_WORKER
_port_seq = itertools.count(random.randrange(_PORTS_PER_WORKER))


def free_ports(n: int) -> list[int]:
    """n distinct TCP ports on 127.0.0.1 that are free now (each bound, then
    released), from this worker's range; a port still in use is skipped."""
    socks: list[socket.socket] = []
    try:
        for _ in range(_PORTS_PER_WORKER):
            if len(socks) == n:
                break
            port = _PORT_BASE + next(_port_seq) % _PORTS_PER_WORKER
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                s.close()
                continue
            socks.append(s)
        assert len(socks) == n, f"no {n} free ports in {_PORT_BASE}+{_PORTS_PER_WORKER}"
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def write_config(directory, n: int = 1, *, bits: int = 16, placement: str = "direct",
                 routing: str = "fingers", fsync: str = "batch", snapshot_interval: float = 0,
                 timeout: float = 5, grace: float = 2, limits: dict | None = None,
                 snapshot_on_shutdown: bool = True, name: str = "chordctl.yaml",
                 cpus: list[str] | None = None, replicas: int = 1,
                 replication: dict | None = None) -> str:
    """Write a config with n nodes on free loopback ports; returns its path.

    *cpus*: node i gets ``cpus[i % len(cpus)]`` (pinned, as `cluster up` does).
    """
    directory = str(directory)
    nodes = [{"host": "127.0.0.1", "port": p} for p in free_ports(n)]
    for i, node in enumerate(nodes):
        if cpus:
            node["cpus"] = cpus[i % len(cpus)]
    doc = {
        "ring": {"bits": bits, "placement": placement, "routing": routing},
        "nodes": nodes,
        "storage": {"data_dir": os.path.join(directory, "data"),
                    "snapshot_interval": snapshot_interval, "fsync": fsync,
                    "snapshot_on_shutdown": snapshot_on_shutdown},
        "client": {"timeout": timeout, "grace": grace},
    }
    if limits:
        doc["limits"] = limits
    if replicas != 1:
        doc["ring"]["replicas"] = replicas
        # Short timers: a lost leader is replaced in well under a second.
        doc["replication"] = replication or {"election_timeout": 0.5, "heartbeat": 0.05}
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        yaml.safe_dump(doc, f)
    return path


HELD_NODE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "held_node.py")


class NodeProc:
    """One real `chordctl node serve` process that this test started.

    With *hold* ("KEY:SECONDS": requests for KEY wait that long before the
    pipeline) or *replay_delay* (seconds "recovering" before the replay) it
    runs tests/held_node.py instead: the same server, a held stage injected.
    With *journal_fault* (a path) raft.journal writes fail with ENOSPC once
    that file exists.
    """

    def __init__(self, config_path: str, index: int, env: dict | None = None,
                 hold: str | None = None, replay_delay: float = 0.0,
                 journal_fault: str | None = None, args: tuple[str, ...] = ()):
        self.config_path = config_path
        self.args = args          # more `node serve` options
        self.index = index
        self.hold = hold
        self.replay_delay = replay_delay
        self.journal_fault = journal_fault
        self.config = config_mod.load(config_path)
        self.address = self.config.nodes[index].address
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.log_path = os.path.join(os.path.dirname(config_path), f"node-{index}.stderr")

    def start(self, wait: bool = True, preexec_fn=None) -> "NodeProc":
        """Start the node; *preexec_fn* runs in the child before exec (e.g. setrlimit)."""
        env = dict(os.environ)
        if self.env:
            env.update(self.env)
        if self.hold or self.replay_delay or self.journal_fault:
            argv = [sys.executable, HELD_NODE, self.config_path, str(self.index),
                    "--replay-delay", str(self.replay_delay)]
            if self.hold:
                argv += ["--hold", self.hold]
            if self.journal_fault:
                argv += ["--journal-fault", self.journal_fault]
        else:
            argv = [sys.executable, "-m", "chordctl", "-c", self.config_path, "node", "serve",
                    "--node", str(self.index), *self.args]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                preexec_fn=preexec_fn)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        try:
            wait_serving(self.address, self.proc, timeout)
            # The port was free when the config was written; make sure the
            # node answering is ours, not another test run's that took it.
            with Client(self.config, target=self.address) as c:
                pid = c.status(timeout=10).pid
        except Exception as e:
            raise AssertionError(f"node {self.index} not ready: {e}\n{self.log()}") from None
        if pid != self.proc.pid:
            raise AssertionError(f"node {self.index}: {self.address} is served by pid {pid}, "
                                 f"not by our node (pid {self.proc.pid}): a port collision "
                                 f"with another test run\n{self.log()}")

    def log(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return f.read()[-5000:]
        except OSError:
            return ""

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send *sig*; for SIGKILL/SIGTERM wait for the process to be gone."""
        if not self.alive:
            return
        self.proc.send_signal(sig)
        if sig in (signal.SIGKILL, signal.SIGTERM):
            self.proc.wait(timeout=30)

    def stop(self) -> int:
        if self.alive:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode if self.proc else 0

    def restart(self) -> "NodeProc":
        self.kill()
        return self.start()


def owners_lead(config) -> bool:
    """ring.replicas > 1: whether every arc's owner leads its group (as it does
    once the ring settled after a start: engine.py), by every node's Status."""
    for i, node in enumerate(config.nodes):
        try:
            with Client(config, target=node.address, timeout=3) as c:
                groups = {g.group: g for g in c.status(timeout=3).groups}
        except Exception:
            return False
        if groups.get(i) is None or groups[i].state != "leader":
            return False
    return True


class Cluster:
    def __init__(self, config_path: str, env: dict | None = None, hold: str | None = None):
        self.config_path = config_path
        self.config = config_mod.load(config_path)
        self.nodes = [NodeProc(config_path, i, env, hold=hold)
                      for i in range(len(self.config.nodes))]

    def start(self) -> "Cluster":
        for n in self.nodes:
            n.start(wait=False)
        for n in self.nodes:
            n.wait_ready()
        return self

    def stop(self) -> None:
        for n in self.nodes:
            if n.alive:
                n.proc.send_signal(signal.SIGTERM)
        for n in self.nodes:
            if n.proc is not None:
                try:
                    n.proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    n.proc.kill()
                    n.proc.wait()

    def restart(self, sig: int = signal.SIGKILL) -> "Cluster":
        """Every node killed with *sig* at once, then every node started again."""
        for n in self.nodes:
            n.kill(sig)
        for n in self.nodes:
            n.start(wait=False)
        for n in self.nodes:
            n.wait_ready()
        return self

    def address(self, i: int) -> str:
        return self.config.nodes[i].address

    def settled(self, timeout: float = 20.0) -> "Cluster":
        """ring.replicas > 1: wait until every arc is led by its owner."""
        wait_until(lambda: owners_lead(self.config), timeout=timeout, interval=0.05,
                   what="every arc led by its owner")
        return self


@pytest.fixture
def make_cluster(tmp_path):
    """make_cluster(n, **config options) -> a started Cluster, stopped at teardown."""
    made: list[Cluster] = []

    def make(n: int = 1, env: dict | None = None, start: bool = True, hold: str | None = None,
             **options) -> Cluster:
        path = write_config(tmp_path, n, name=f"chordctl-{len(made)}.yaml", **options)
        c = Cluster(path, env, hold=hold)
        made.append(c)
        return c.start() if start else c

    yield make
    for c in made:
        c.stop()


class CLI:
    """Runs chordctl in-process with click's CliRunner against a config."""

    def __init__(self, config_path: str | None):
        self.config_path = config_path
        self.runner = CliRunner()

    def __call__(self, *args: str, input: bytes | str | None = None, target: str | None = None,
                 output: str | None = None):
        argv: list[str] = []
        if self.config_path:
            argv += ["-c", self.config_path]
        if target:
            argv += ["--target", target]
        if output:
            argv += ["-o", output]
        argv += list(args)
        return self.runner.invoke(cli, argv, input=input, catch_exceptions=False)


@pytest.fixture
def run_cli():
    """run_cli(config_path) -> a CLI runner bound to that config."""
    return CLI


def run_chordctl(*args: str, input: bytes | None = None, timeout: float = 60,
                 env: dict | None = None, cwd: str | None = None) -> subprocess.CompletedProcess:
    """chordctl as a real process (for exit codes, stdout/stderr as a user sees them)."""
    e = dict(os.environ)
    if env:
        e.update(env)
    return subprocess.run([sys.executable, "-m", "chordctl", *args], input=input,
                          capture_output=True, timeout=timeout, env=e, cwd=cwd)


def deny_open(monkeypatch, module, suffix: str) -> None:
    """*module*'s open() refuses paths ending in *suffix* (PermissionError):
    as root, chmod cannot deny a read, so tests inject the denial."""
    import builtins
    real_open = builtins.open

    def fake_open(path, *a, **kw):
        if str(path).endswith(suffix):
            raise PermissionError(13, "Permission denied", path)
        return real_open(path, *a, **kw)
    monkeypatch.setattr(module, "open", fake_open, raising=False)


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.02, what: str = "") -> None:
    """Await a condition that has no event to wait on (e.g. a file appearing)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


__all__ = ["free_ports", "write_config", "NodeProc", "Cluster", "CLI", "run_chordctl",
           "wait_until", "wait_exit", "closing"]
