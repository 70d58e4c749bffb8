"""``chordctl cluster``: run every node of the config as local processes."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time

import click
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from chordctl import security
from chordctl.cli.common import State, pass_state
from chordctl.cli.ring import print_ring
from chordctl.client import Client
from chordctl.config import Config
from chordctl.core import affinity
from chordctl.core.storage import files
from chordctl.errors import ChordError, UnavailableError

PID_FILE = "node.pid"
LOG_FILE = "node.log"
STOP_TIMEOUT = 15.0


def pid_path(cfg: Config, i: int) -> str:
    return os.path.join(cfg.node_dir(i), PID_FILE)


def log_path(cfg: Config, i: int) -> str:
    return os.path.join(cfg.node_dir(i), LOG_FILE)


def _is_our_node(pid: int, i: int) -> bool:
    """True when *pid* is a `chordctl node serve --node i` process."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return False
    return b"serve" in argv and b"chordctl" in b" ".join(argv) and \
        b"--node" in argv and str(i).encode() in argv


def running_pid(cfg: Config, i: int) -> int | None:
    try:
        with open(pid_path(cfg, i)) as f:
            pid = int(f.read().strip())
    except (OSError, ValueError):
        return None
    return pid if _is_our_node(pid, i) else None


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


def _tail(path: str, lines: int = 8) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read()[-4000:]
    except OSError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


def stop_pids(pids: dict[int, int], timeout: float = STOP_TIMEOUT) -> dict[int, str]:
    """SIGTERM each node, wait for it; SIGKILL what outlives *timeout*."""
    outcome: dict[int, str] = {}
    for i, pid in pids.items():
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            outcome[i] = "already gone"
    deadline = time.monotonic() + timeout
    for i, pid in pids.items():
        if i in outcome:
            continue
        if wait_exit(pid, max(0.0, deadline - time.monotonic())):
            outcome[i] = "stopped"
        else:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            wait_exit(pid, 5.0)
            outcome[i] = "killed (did not stop in time)"
    return outcome


@click.group()
def cluster() -> None:
    """Start or stop every node of the config on this machine."""


@cluster.command()
@click.option("--detach", is_flag=True,
              help="Return once every node is ready, leaving them running.")
@click.option("--wait", "wait_s", type=float, default=60.0, show_default=True,
              help="Seconds to wait for each node to be ready.")
@click.option("--cpus", "cpus_mode", type=click.Choice(["auto", "none"]), default="auto",
              show_default=True,
              help="auto: pin each node without `cpus` in the config to one CPU, round "
                   "robin (on a machine with 2 or more); none: pin no node.")
@pass_state
def up(state: State, detach: bool, wait_s: float, cpus_mode: str) -> None:
    """Start every node of the config as local processes and wait until all are ready.

    Each node logs to <data_dir>/node-<i>/node.log. In the foreground it
    runs until Ctrl-C (or `chordctl cluster down` from another terminal),
    then stops every node cleanly.

    Each node is one Python process; pinned to one CPU its threads hand
    requests to each other without waking another CPU (BENCHMARKS.md).

    \b
    Example:
        chordctl -c examples/configs/ring4.yaml cluster up
        chordctl -c examples/configs/ring4.yaml cluster up --detach
    """
    cfg = state.config()
    config_path = os.path.abspath(cfg.path)
    for i in range(len(cfg.nodes)):
        pid = running_pid(cfg, i)
        if pid:
            raise ChordError(f"cluster: node {i} is already running (pid {pid}); "
                             f"run `chordctl cluster down` first")
    procs: dict[int, subprocess.Popen] = {}
    pins = None
    if cpus_mode == "auto":
        pins = affinity.round_robin(len(cfg.nodes))
        if pins is not None and not affinity.can_pin():
            click.echo("cluster: this system does not let processes choose their CPUs; "
                       "the nodes run unpinned", err=True)
            pins = None
    try:
        for i, node in enumerate(cfg.nodes):
            files.makedirs_durable(cfg.node_dir(i))   # the node finds it made: sync it here
            pin: list[str] = []
            if cpus_mode == "none":
                pin = ["--cpus", affinity.NONE]
            elif pins is not None and node.cpus is None:
                pin = ["--cpus", affinity.format_cpulist(pins[i])]
            with open(log_path(cfg, i), "ab") as log:
                procs[i] = subprocess.Popen(
                    [sys.executable, "-m", "chordctl", "-c", config_path, "node", "serve",
                     "--node", str(i), *pin],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True)
            with open(pid_path(cfg, i), "w") as f:
                f.write(f"{procs[i].pid}\n")
        for i, node in enumerate(cfg.nodes):
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
                                 f"{_tail(log_path(cfg, i))}") from None
            click.echo(f"node {i} ready on {node.address} (pid {procs[i].pid})", err=True)
    except BaseException:
        stop_pids({i: p.pid for i, p in procs.items()}, timeout=5.0)
        _remove_pidfiles(cfg, procs)
        raise
    print_ring(cfg, state.fmt("table"))
    name = cfg.path
    if detach:
        click.echo(f"\nthe ring is up; stop it with: chordctl -c {name} cluster down", err=True)
        return
    click.echo(f"\nthe ring is up. In another terminal try:\n"
               f"  chordctl -c {name} kv create 10 hello\n"
               f"  chordctl -c {name} kv read 10 --trace\n"
               f"  chordctl -c {name} shell\n"
               f"Ctrl-C here stops every node.", err=True)
    stopping = {"signal": False}

    def on_term(signum, frame):
        stopping["signal"] = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        for i, p in procs.items():
            p.wait()
            if not stopping["signal"]:
                click.echo(f"node {i} exited with code {p.returncode}", err=True)
    except KeyboardInterrupt:
        click.echo("\nstopping every node...", err=True)
    finally:
        outcome = stop_pids({i: p.pid for i, p in procs.items() if p.poll() is None})
        for p in procs.values():
            p.wait()
        _remove_pidfiles(cfg, procs)
        for i, what in sorted(outcome.items()):
            click.echo(f"node {i}: {what}", err=True)


def _remove_pidfiles(cfg: Config, procs: dict[int, subprocess.Popen]) -> None:
    for i in procs:
        try:
            os.unlink(pid_path(cfg, i))
        except FileNotFoundError:
            pass


@cluster.command()
@click.option("--timeout", type=float, default=STOP_TIMEOUT, show_default=True,
              help="Seconds each node gets to stop cleanly before it is killed.")
@pass_state
def down(state: State, timeout: float) -> None:
    """Stop the nodes that `cluster up` started (SIGTERM, then wait).

    Only processes recorded in the nodes' pid files and still running
    `chordctl node serve` are signalled.

    \b
    Example:
        chordctl -c examples/configs/ring4.yaml cluster down
    """
    cfg = state.config()
    pids = {i: pid for i in range(len(cfg.nodes)) if (pid := running_pid(cfg, i))}
    if not pids:
        click.echo("cluster: no node of this config is running", err=True)
        return
    outcome = stop_pids(pids, timeout)
    for i, what in sorted(outcome.items()):
        try:
            os.unlink(pid_path(cfg, i))
        except FileNotFoundError:
            pass
        click.echo(f"node {i} (pid {pids[i]}): {what}")
