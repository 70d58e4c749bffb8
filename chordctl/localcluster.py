"""The nodes of a config as processes on this machine: find, start, await, stop.

``chordctl cluster up/down`` is a thin layer over this module. A node counts
as running when a process is *verified* to be it: its command line is
``chordctl ... node serve --node I`` and it holds node I's directory -- the
directory lock (``storage/lock.py``), a file open inside the directory, or
the same config file as ours. Candidates come from three places: the pid
file (``node.pid``, which every ``node serve`` writes once it holds its
directory), the lock holder, and the pid the node reports in
``Admin.Status`` on its port. Only a verified pid is ever signalled.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import select
import signal
import subprocess
import sys
import time
from typing import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from chordctl import cpulist, security
from chordctl.config import ENV_CONFIG, DEFAULT_CONFIG, Config
from chordctl.core import affinity
from chordctl.core.storage import files, lock
from chordctl.errors import ChordError, StorageAccessError, UnavailableError

PID_FILE = lock.PID_FILE      # written by the node itself once it holds its directory
LOG_FILE = "node.log"
STOP_TIMEOUT = 15.0
PROBE_TIMEOUT = 1.0   # seconds a node gets to answer Admin.Status when we look for it


def pid_path(cfg: Config, i: int) -> str:
    return lock.pid_file_path(cfg.node_dir(i))


def log_path(cfg: Config, i: int) -> str:
    return os.path.join(cfg.node_dir(i), LOG_FILE)


# -- what a process is ----------------------------------------------------------

def _argv(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    return [a.decode("utf-8", "surrogateescape") for a in raw.split(b"\0") if a]


def _option(argv: list[str], *names: str) -> str | None:
    """The value of the last ``--name VALUE`` / ``--name=VALUE`` in *argv*."""
    found = None
    for k, arg in enumerate(argv):
        for name in names:
            if arg == name and k + 1 < len(argv):
                found = argv[k + 1]
            elif arg.startswith(name + "=") and name.startswith("--"):
                found = arg[len(name) + 1:]
    return found


def is_node_process(pid: int, i: int) -> bool:
    """True when *pid* runs ``chordctl ... node serve --node i``."""
    argv = _argv(pid)
    if not argv:
        return False
    chordctl = any(os.path.basename(a) == "chordctl" for a in argv[:3])
    serve = any(argv[k:k + 2] == ["node", "serve"] for k in range(len(argv)))
    return chordctl and serve and _option(argv, "--node") == str(i)


def _config_of(pid: int) -> str | None:
    """The config file a chordctl process reads, as an absolute path (best effort)."""
    argv = _argv(pid) or []
    path = _option(argv, "-c", "--config")
    if path is None:
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = dict(e.split(b"=", 1) for e in f.read().split(b"\0") if b"=" in e)
        except OSError:
            return None
        path = env.get(ENV_CONFIG.encode(), DEFAULT_CONFIG.encode()).decode(
            "utf-8", "surrogateescape")
    try:
        return os.path.join(os.readlink(f"/proc/{pid}/cwd"), path)
    except OSError:
        return None


def _has_open_file_under(pid: int, directory: str) -> bool:
    prefix = os.path.realpath(directory) + os.sep
    fd_dir = f"/proc/{pid}/fd"
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return False
    for name in names:
        try:
            if os.readlink(os.path.join(fd_dir, name)).startswith(prefix):
                return True
        except OSError:
            continue
    return False


def _same_file(a: str | None, b: str | None) -> bool:
    try:
        return a is not None and b is not None and os.path.samefile(a, b)
    except OSError:
        return False


def is_our_node(pid: int, cfg: Config, i: int) -> bool:
    """True when *pid* is node *i* of *cfg*: a `node serve --node i` holding its directory."""
    if pid <= 0 or not is_node_process(pid, i):
        return False
    node_dir = cfg.node_dir(i)
    return (lock.holder(node_dir) == pid or _has_open_file_under(pid, node_dir)
            or _same_file(_config_of(pid), cfg.path))


# -- finding the nodes of a config ------------------------------------------------

@dataclasses.dataclass(frozen=True)
class NodeProcess:
    """What runs for node *index*: our node's pid (None: not running), how we know,
    and the pid of a process that answers on the node's port but is not ours."""

    index: int
    pid: int | None = None
    found_by: tuple[str, ...] = ()   # "pid file", "lock", "port"
    stranger: int | None = None      # pid reported on our port by another process

    @property
    def running(self) -> bool:
        return self.pid is not None


def _pid_file(cfg: Config, i: int) -> int | None:
    try:
        with open(pid_path(cfg, i)) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def _status_pid(cfg: Config, i: int, timeout: float) -> int | None:
    from chordctl.client import Client
    try:
        with Client(cfg, target=cfg.nodes[i].address) as c:
            return c.status(timeout=timeout).pid or None
    except ChordError:
        return None


def find_node(cfg: Config, i: int, probe_timeout: float = PROBE_TIMEOUT) -> NodeProcess:
    """Look for node *i* of *cfg* among this machine's processes."""
    candidates: dict[int, list[str]] = {}
    for how, pid in (("pid file", _pid_file(cfg, i)), ("lock", lock.holder(cfg.node_dir(i))),
                     ("port", _status_pid(cfg, i, probe_timeout))):
        if pid is not None and pid > 0:
            candidates.setdefault(pid, []).append(how)
    ours = [pid for pid in candidates if is_our_node(pid, cfg, i)]
    port_pid = next((p for p, hows in candidates.items() if "port" in hows), None)
    stranger = port_pid if port_pid is not None and port_pid not in ours else None
    if not ours:
        return NodeProcess(i, stranger=stranger)
    # Two verified pids cannot both hold the directory; prefer the one on the port.
    pid = port_pid if port_pid in ours else ours[0]
    return NodeProcess(i, pid, tuple(candidates[pid]), stranger)


def find_nodes(cfg: Config, probe_timeout: float = PROBE_TIMEOUT) -> list[NodeProcess]:
    """find_node for every node of *cfg*, the ports probed in parallel."""
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(max_workers=min(32, len(cfg.nodes))) as pool:
        return list(pool.map(lambda i: find_node(cfg, i, probe_timeout),
                             range(len(cfg.nodes))))


def running_pid(cfg: Config, i: int) -> int | None:
    """The pid of node *i* of *cfg* running on this machine, or None."""
    return find_node(cfg, i).pid


# -- starting -------------------------------------------------------------------

def is_new_ring(cfg: Config) -> bool:
    """Whether no node of *cfg* has ever started as a replica (ring.replicas
    > 1, and no node directory holds a raft journal): `cluster up` then
    starts the nodes with --new-ring, each a full replica at once. A
    directory that lost its journal while another kept one is a
    replacement, and must learn its arcs first."""
    return cfg.ring.replicas > 1 and not any(
        os.path.exists(os.path.join(cfg.node_dir(i), files.RAFT_JOURNAL))
        for i in range(len(cfg.nodes)))


def start_node(cfg: Config, i: int, cpus: str | None = None,
               new_ring: bool = False) -> subprocess.Popen:
    """Start node *i* as a detached `chordctl node serve` logging to its node.log."""
    files.makedirs_durable(cfg.node_dir(i))   # the node finds it made: sync it here
    pin = ["--cpus", cpus] if cpus is not None else []
    if new_ring:
        pin.append("--new-ring")
    with open(log_path(cfg, i), "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "chordctl", "-c", os.path.abspath(cfg.path), "node",
             "serve", "--node", str(i), *pin],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
    # node.pid: the node writes it itself once it holds the directory lock.
    return proc


def remove_pid_file(cfg: Config, i: int) -> None:
    """A stale node.pid (the node is gone: killed, or it never got the lock)."""
    lock.remove_pid_file(cfg.node_dir(i))


def tail(path: str, lines: int = 8) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read()[-4000:]
    except OSError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


def wait_serving(address: str, proc: subprocess.Popen | None, timeout: float,
                 config: Config | None = None) -> None:
    """Block until the node at *address* reports SERVING, or fail with its reason.

    *config* gives the channel its TLS settings (plaintext without one).
    """
    deadline = time.monotonic() + timeout
    with security.channel(config, address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise UnavailableError(f"cluster: {address} did not become ready within "
                                       f"{timeout:.0f}s")
            fut = stub.Check.future(health_pb2.HealthCheckRequest(service=""),
                                    timeout=min(left, 0.5), wait_for_ready=True)
            try:
                if fut.result().status == health_pb2.HealthCheckResponse.SERVING:
                    return
                # NOT_SERVING: the node answers but is still replaying its log.
                time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
            except grpc.RpcError:
                pass
            if proc is not None and proc.poll() is not None:
                raise ChordError(f"cluster: the node at {address} exited with code "
                                 f"{proc.returncode} before it was ready")


def wait_arcs_led(config: Config, timeout: float) -> bool:
    """ring.replicas > 1: block until every arc's group has a leader (health
    "arc/<g>" SERVING on its owner), at most *timeout* seconds; False if not
    all did (the ring table then shows which)."""
    deadline = time.monotonic() + timeout
    for i, node in enumerate(config.nodes):
        with security.channel(config, node.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(service=f"arc/{i}"),
                                       timeout=min(left, 0.5))
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        break
                except grpc.RpcError:
                    pass
                time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
    return True


# -- stopping -------------------------------------------------------------------

def wait_exit(pid: int, timeout: float) -> bool:
    """Wait for a process (not necessarily our child) to exit, without polling."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        ready, _, _ = select.select([fd], [], [], timeout)
        return bool(ready)
    finally:
        os.close(fd)


def _wait_fd(fd: int, timeout: float) -> bool:
    ready, _, _ = select.select([fd], [], [], timeout)
    return bool(ready)


def stop_pids(pids: dict[int, int], timeout: float = STOP_TIMEOUT) -> dict[int, str]:
    """SIGTERM each node, wait for it; SIGKILL what outlives *timeout*.

    Each process is held by a pidfd from the first signal on, so neither
    signal can reach another process that reused the pid meanwhile.
    """
    outcome: dict[int, str] = {}
    fds: dict[int, int] = {}
    try:
        for i, pid in pids.items():
            try:
                fds[i] = os.pidfd_open(pid)
                signal.pidfd_send_signal(fds[i], signal.SIGTERM)
            except ProcessLookupError:
                outcome[i] = "already gone"
        deadline = time.monotonic() + timeout
        for i, fd in fds.items():
            if i in outcome:
                continue
            if _wait_fd(fd, max(0.0, deadline - time.monotonic())):
                outcome[i] = "stopped"
                continue
            try:
                signal.pidfd_send_signal(fd, signal.SIGKILL)
            except ProcessLookupError:
                pass
            _wait_fd(fd, 5.0)
            outcome[i] = "killed (did not stop in time)"
    finally:
        for fd in fds.values():
            os.close(fd)
    return outcome


def refuse_strangers(cfg: Config, found: list[NodeProcess]) -> None:
    """ChordError when another process serves the port of a node of *cfg* that is not running."""
    for f in found:
        if not f.running and f.stranger is not None:
            node = cfg.nodes[f.index]
            raise ChordError(
                f"cluster: {node.address} (node {f.index}) is served by another process "
                f"(pid {f.stranger}), not by node {f.index} of this config; stop it "
                f"(`chordctl cluster down` with its own config) or change the port")


@contextlib.contextmanager
def starting(cfg: Config, timeout: float, notify: Callable[[str], None] = lambda line: None):
    """Hold the ring's start lock (``<data_dir>/.cluster-up.lock``, flock)
    while a `cluster up` finds and starts its nodes: two at once would each
    win some ports and stop what they started, or remove the other's pid
    files. A second one waits (at most *timeout* seconds, telling why) and
    then finds the nodes running."""
    directory = cfg.storage.data_dir
    path = os.path.join(directory, files.CLUSTER_LOCK)
    try:
        files.makedirs_durable(directory)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise StorageAccessError.of(e, path, "open") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            notify(f"cluster: another `cluster up` of this ring (pid {holder}) is starting "
                   f"it; waiting for it")
            deadline = time.monotonic() + timeout
            while True:
                time.sleep(0.05)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise ChordError(
                            f"cluster: another `cluster up` of this ring (pid {holder}) has "
                            f"been starting it for {timeout:g}s; wait for it, or stop it") \
                            from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)        # releases the lock


def start_missing(cfg: Config, missing: list[int], cpus_mode: str, wait_s: float,
                  procs: dict[int, subprocess.Popen],
                  notify: Callable[[str], None] = lambda line: None) -> None:
    """Start nodes *missing* (into *procs*, as they start) and wait until each serves.

    *cpus_mode* auto pins each node without ``cpus`` in the config to one CPU,
    round robin; none pins no node. *notify* gets a line per node ready, and
    one if this system refuses pinning. ChordError, with the end of the
    node's log, when a node does not come up or another process answers.
    """
    from chordctl.client import Client

    pins = None
    if cpus_mode == "auto":
        pins = affinity.round_robin(len(cfg.nodes))
        if pins is not None and not affinity.can_pin():
            notify("cluster: this system does not let processes choose their CPUs; "
                   "the nodes run unpinned")
            pins = None
    # Every node starting, none ever started: a new ring (is_new_ring).
    new_ring = len(missing) == len(cfg.nodes) and is_new_ring(cfg)
    for i in missing:
        cpus = None
        if cpus_mode == "none":
            cpus = cpulist.NONE
        elif pins is not None and cfg.nodes[i].cpus is None:
            cpus = cpulist.format_cpulist(pins[i])
        procs[i] = start_node(cfg, i, cpus, new_ring)
    for i in missing:
        node = cfg.nodes[i]
        try:
            wait_serving(node.address, procs[i], wait_s, cfg)
            # SERVING may come from another process holding the port (an
            # older ring): only our own node counts.
            with Client(cfg, target=node.address) as c:
                pid = c.status().pid
            if pid != procs[i].pid:
                raise ChordError(
                    f"cluster: {node.address} (node {i}) is served by another process "
                    f"(pid {pid}), not by the node just started; stop it (`chordctl "
                    f"cluster down` with its config) or change the port")
        except ChordError as e:
            raise ChordError(f"{e}\n--- last lines of {log_path(cfg, i)} ---\n"
                             f"{tail(log_path(cfg, i))}") from None
        notify(f"node {i} ready on {node.address} (pid {procs[i].pid})")
