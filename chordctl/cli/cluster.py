"""``chordctl cluster``: run every node of the config as local processes.

The process work (finding, starting, awaiting and stopping nodes) lives in
chordctl.localcluster; this module parses, reports and maps errors.
"""

from __future__ import annotations

import os
import signal
import subprocess

import click

from chordctl.cli.common import Seconds, State, pass_state
from chordctl.cli.ring import print_ring
from chordctl.config import Config, replicas_warning
from chordctl.localcluster import (STOP_TIMEOUT, find_nodes, refuse_strangers, remove_pid_file,
                                   starting,
                                   start_missing, stop_pids, wait_arcs_led, wait_serving)


def _names(indexes) -> str:
    return ", ".join(str(i) for i in indexes)


@click.group()
def cluster() -> None:
    """Start or stop every node of the config on this machine.

    \b
    Example:
        chordctl -c examples/configs/ring4.yaml cluster up --detach
        chordctl -c examples/configs/ring4.yaml cluster down
    """


@cluster.command()
@click.option("--detach", is_flag=True,
              help="Return once every node is ready, leaving them running.")
@click.option("--wait", "wait_s", type=Seconds(positive=True), default=60.0, show_default=True,
              help="Seconds to wait for each node to be ready.")
@click.option("--cpus", "cpus_mode", type=click.Choice(["auto", "none"]), default="auto",
              show_default=True,
              help="auto: pin each node without `cpus` in the config to one CPU, round "
                   "robin (on a machine with 2 or more); none: pin no node.")
@pass_state
def up(state: State, detach: bool, wait_s: float, cpus_mode: str) -> None:
    """Start the nodes of the config that are not running, and wait until all are ready.

    Nodes already running (started by an earlier `cluster up` or by hand
    with `node serve`) are left as they are and named. Each node started
    logs to <data_dir>/node-<i>/node.log. In the foreground this command
    runs until Ctrl-C (or `chordctl cluster down` from another terminal),
    then stops the nodes it started.

    Each node is one Python process; pinned to one CPU its threads hand
    requests to each other without waking another CPU (BENCHMARKS.md).

    \b
    Example:
        chordctl -c examples/configs/ring4.yaml cluster up
        chordctl -c examples/configs/ring4.yaml cluster up --detach
    """
    cfg = state.config()
    even = replicas_warning(cfg.ring.replicas)
    if even:
        click.secho(f"chordctl: warning: {even}", fg="yellow", err=True)
    notify = lambda line: click.echo(line, err=True)   # noqa: E731
    procs: dict[int, subprocess.Popen] = {}
    with starting(cfg, wait_s * max(1, len(cfg.nodes)), notify):
        found = find_nodes(cfg)
        refuse_strangers(cfg, found)
        already = [f.index for f in found if f.running]
        missing = [f.index for f in found if not f.running]
        for f in found:
            if f.running:
                click.echo(f"node {f.index} already running on {cfg.nodes[f.index].address} "
                           f"(pid {f.pid})", err=True)
        try:
            start_missing(cfg, missing, cpus_mode, wait_s, procs, notify=notify)
            for i in already:     # one may still be replaying its log
                wait_serving(cfg.nodes[i].address, None, wait_s, cfg)
        except BaseException:
            stop_pids({i: p.pid for i, p in procs.items()}, timeout=5.0)
            for i in procs:
                remove_pid_file(cfg, i)
            raise
    if cfg.ring.replicas > 1:
        # Elections take one or two election timeouts: show arcs with leaders.
        wait_arcs_led(cfg, min(wait_s, 10 * cfg.replication.election_timeout + 2))
    print_ring(cfg, state.fmt("table"))
    name = cfg.path
    if not missing:
        click.echo(f"\nevery node of this config was already running; stop them with: "
                   f"chordctl -c {name} cluster down", err=True)
        return
    if detach:
        click.echo(f"\nthe ring is up; stop it with: chordctl -c {name} cluster down", err=True)
        return
    others = (f"; nodes {_names(already)} were already running and keep running"
              if already else "")
    click.echo(f"\nthe ring is up. In another terminal try:\n"
               f"  chordctl -c {name} kv create 10 hello\n"
               f"  chordctl -c {name} kv read 10 --trace\n"
               f"  chordctl -c {name} shell\n"
               f"Ctrl-C here stops every node it started{others}.", err=True)
    _run_foreground(cfg, procs)


def _run_foreground(cfg: Config, procs: dict[int, subprocess.Popen]) -> None:
    stopping = {"signal": False}

    def on_term(signum, frame):
        stopping["signal"] = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        alive = dict(procs)
        while alive:
            # Each node's end is told as it happens, whichever ends first.
            _wait_any_child(alive)
            for i, p in list(alive.items()):
                if p.poll() is None:
                    continue
                del alive[i]
                if not stopping["signal"]:
                    click.echo(f"node {i} (pid {p.pid}) {_ended(p.returncode)}"
                               + (f"; the others keep running (start it again in another "
                                  f"terminal: chordctl -c {cfg.path} cluster up --detach, "
                                  f"which starts only the nodes not running)" if alive else
                                  "; no node of this ring is left running"), err=True)
    except KeyboardInterrupt:
        click.echo("\nstopping every node...", err=True)
    finally:
        outcome = stop_pids({i: p.pid for i, p in procs.items() if p.poll() is None})
        for i, p in procs.items():
            p.wait()
            remove_pid_file(cfg, i)
        for i, what in sorted(outcome.items()):
            click.echo(f"node {i}: {what}", err=True)


def _wait_any_child(procs: dict[int, subprocess.Popen]) -> None:
    """Until one of this process's children ended, left for Popen to reap
    (WNOWAIT) so that it keeps its exit code; any other child is reaped."""
    try:
        info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOWAIT)
    except ChildProcessError:
        return
    if info is not None and all(p.pid != info.si_pid for p in procs.values()):
        try:
            os.waitpid(info.si_pid, os.WNOHANG)
        except ChildProcessError:
            pass


def _ended(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


@cluster.command()
@click.option("--timeout", type=Seconds(), default=STOP_TIMEOUT, show_default=True,
              help="Seconds each node gets to stop cleanly before it is killed.")
@pass_state
def down(state: State, timeout: float) -> None:
    """Stop every node of the config running on this machine (SIGTERM, then wait).

    A node is found through the node.pid it writes in its directory, the
    directory's lock, or the pid it reports on its port, so nodes started
    by hand with `node serve` are stopped too. Only a process verified to
    be `chordctl node serve --node I` holding node I's directory is
    signalled; each node is reported.

    \b
    Example:
        chordctl -c examples/configs/ring4.yaml cluster down
    """
    cfg = state.config()
    found = find_nodes(cfg)
    running = {f.index: f for f in found if f.running}
    outcome = stop_pids({i: f.pid for i, f in running.items()}, timeout) if running else {}
    for f in found:
        remove_pid_file(cfg, f.index)       # the node is gone, or the file was stale
        address = cfg.nodes[f.index].address
        if f.running:
            click.echo(f"node {f.index} (pid {f.pid}) on {address}: {outcome[f.index]} "
                       f"(found by {', '.join(f.found_by)})")
        elif f.stranger is not None:
            click.echo(f"node {f.index}: not running; {address} answers as pid "
                       f"{f.stranger}, which is not node {f.index} of this config (left alone)")
        else:
            click.echo(f"node {f.index}: not running")
    if not running:
        click.echo("cluster: no node of this config is running", err=True)
