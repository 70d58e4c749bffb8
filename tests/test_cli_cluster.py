"""`chordctl cluster up/down` as real processes, and `ring locate` against the ring model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import yaml

from chordctl import config as config_mod
from chordctl import cpulist
from chordctl.localcluster import log_path, pid_path, wait_exit
from chordctl.client import Client
from chordctl.core import affinity
from chordctl.core.ring import Ring
from conftest import run_chordctl, wait_until, write_config

UP_TIMEOUT = 120   # seconds for `cluster up` to start 4 nodes on a busy 2-core machine
EXIT_TIMEOUT = 30


def read_pids(cfg) -> dict[int, int]:
    pids = {}
    for i in range(len(cfg.nodes)):
        try:
            with open(pid_path(cfg, i)) as f:
                pids[i] = int(f.read().strip())
        except (OSError, ValueError):
            pass
    return pids


def is_our_chordctl(pid: int, config_path: str) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read()
    except OSError:
        return False
    return b"chordctl" in argv and os.path.abspath(config_path).encode() in argv


def kill_leftovers(cfg, config_path: str, pids: dict[int, int]) -> None:
    """Never leave a node running: SIGKILL what the pid files name, if it is still ours."""
    pids = {**pids, **read_pids(cfg)}
    for pid in pids.values():
        if is_our_chordctl(pid, config_path):
            os.kill(pid, signal.SIGKILL)
            wait_exit(pid, EXIT_TIMEOUT)


def ring_rows(table: str) -> dict[int, str]:
    """The data rows of a `ring show` table, by node index."""
    rows = {}
    for line in table.splitlines():
        words = line.split()
        if words and words[0].isdigit():
            rows[int(words[0])] = line
    return rows


@pytest.fixture
def config4(tmp_path):
    path = write_config(tmp_path, 4, timeout=5)
    cfg = config_mod.load(path)
    started: dict[int, int] = {}
    yield path, cfg, started
    kill_leftovers(cfg, path, started)


def up_detached(path: str, cfg, started: dict[int, int]) -> subprocess.CompletedProcess:
    r = run_chordctl("-c", path, "cluster", "up", "--detach", timeout=UP_TIMEOUT)
    started.update(read_pids(cfg))
    return r


def test_cluster_up_detach_runs_every_node_and_down_stops_them(config4, run_cli):
    path, cfg, started = config4
    r = up_detached(path, cfg, started)
    assert r.returncode == 0, r.stderr.decode()
    rows = ring_rows(r.stdout.decode())
    assert sorted(rows) == [0, 1, 2, 3], r.stdout.decode()
    for i, line in rows.items():
        assert " up " in line and cfg.nodes[i].address in line, line
    assert sorted(started) == [0, 1, 2, 3]
    assert all(is_our_chordctl(pid, path) for pid in started.values())

    cli = run_cli(path)
    for key in ("10", "40000", "65535", "70000"):
        c = cli("kv", "create", key, f"v{key}")
        assert c.exit_code == 0, c.output
        c = cli("kv", "read", key)
        assert (c.exit_code, c.stdout) == (0, f"v{key}"), c.output

    r = run_chordctl("-c", path, "cluster", "down", timeout=UP_TIMEOUT)
    assert r.returncode == 0, r.stderr.decode()
    for i, pid in started.items():
        assert wait_exit(pid, EXIT_TIMEOUT), f"node {i} (pid {pid}) still running"
        assert f"node {i} (pid {pid})" in r.stdout.decode()
        assert not os.path.exists(pid_path(cfg, i))
        # Each node logged into its own directory.
        with open(log_path(cfg, i), encoding="utf-8", errors="replace") as f:
            assert f"node-{i}" in f.read()
    # Gone for good: ring show sees every node down.
    r = run_chordctl("-c", path, "ring", "show", timeout=UP_TIMEOUT)
    assert r.returncode == 3
    assert all(" down " in line for line in ring_rows(r.stdout.decode()).values())


def test_cluster_up_twice_leaves_the_running_ring_alone(config4):
    path, cfg, started = config4
    assert up_detached(path, cfg, started).returncode == 0
    first = dict(started)

    r = run_chordctl("-c", path, "cluster", "up", "--detach", timeout=UP_TIMEOUT)
    err = r.stderr.decode()
    assert r.returncode == 0, err
    for i, pid in first.items():
        assert f"node {i} already running on {cfg.nodes[i].address} (pid {pid})" in err, err
    assert "every node of this config was already running" in err
    # The first ring is untouched: same processes, still serving.
    assert read_pids(cfg) == first
    with Client(cfg, target=cfg.nodes[3].address) as c:
        assert c.create("12345", b"still here").node_index == Ring(16, 4).owner(12345)
    assert run_chordctl("-c", path, "cluster", "down", timeout=UP_TIMEOUT).returncode == 0


def test_cluster_up_in_foreground_stops_every_node_on_sigint(config4, tmp_path):
    path, cfg, started = config4
    out_path, err_path = tmp_path / "up.out", tmp_path / "up.err"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "chordctl", "-c", path, "cluster", "up"],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                start_new_session=True)
    try:
        wait_until(lambda: "Ctrl-C here stops every node" in err_path.read_text()
                   or proc.poll() is not None, timeout=UP_TIMEOUT, what="the ring to be up")
        assert proc.poll() is None, err_path.read_text()
        started.update(read_pids(cfg))
        assert sorted(started) == [0, 1, 2, 3]
        rows = ring_rows(out_path.read_text())
        assert sorted(rows) == [0, 1, 2, 3] and all(" up " in r for r in rows.values())

        # A node that dies is told at once, whichever it is (the wait used to
        # take the nodes in order: node 2's end went unsaid while node 0 ran).
        os.kill(started[2], signal.SIGKILL)
        told = f"node 2 (pid {started[2]}) was killed by SIGKILL; the others keep running"
        wait_until(lambda: told in err_path.read_text(), timeout=30, what="node 2's end told")
        assert proc.poll() is None
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=UP_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code in (0, 130), err_path.read_text()
    for i, pid in started.items():
        assert wait_exit(pid, EXIT_TIMEOUT), f"node {i} (pid {pid}) outlived cluster up"
        assert not os.path.exists(pid_path(cfg, i))
    assert "stopping every node" in err_path.read_text()


@pytest.mark.parametrize("routing", ["fingers", "neighbors"])
def test_ring_locate_matches_the_simulated_route(tmp_path, run_cli, routing):
    path = write_config(tmp_path, 8, routing=routing)
    ring = Ring(16, 8, "direct", routing)
    cli = run_cli(path)
    for key in (0, 8191, 8192, 40000, 65535, 65536, 2**100 + 3):
        for entry in range(8):
            route = ring.route(entry, key)
            owner = ring.owner(key)
            r = cli("ring", "locate", str(key), "--from", str(entry), output="json")
            assert r.exit_code == 0, r.output
            doc = json.loads(r.stdout)
            assert doc["owner"]["index"] == owner
            assert doc["owner"]["address"] == cli_address(path, owner)
            assert [h["index"] for h in doc["route"]] == route
            assert [h["id"] for h in doc["route"]] == [str(ring.ids[i]) for i in route]
            assert doc["hops"] == len(route) - 1
            assert doc["position"] == str(key % 65536)

            r = cli("ring", "locate", str(key), "--from", str(entry))
            assert r.exit_code == 0, r.output
            fields = table_fields(r.stdout)
            assert fields["route"] == " -> ".join(str(ring.ids[i]) for i in route)
            assert fields["hops"] == str(len(route) - 1)
            assert fields["owner"].startswith(f"node {owner} (id {ring.ids[owner]}")


def table_fields(text: str) -> dict[str, str]:
    """A two-column `field value` table as a dict (labels may contain spaces)."""
    lines = text.splitlines()
    width = len(lines[1].split()[0]) + 2  # the dashes under the first column
    return {line[:width].strip(): line[width:].strip() for line in lines[2:] if line.strip()}


def cli_address(path: str, i: int) -> str:
    return config_mod.load(path).nodes[i].address



def test_cluster_up_refuses_a_port_held_by_another_ring(tmp_path):
    """A node of another config on the same port answers SERVING; `up` must not take it
    for its own node, and must stop what it started."""
    from conftest import Cluster, run_chordctl, write_config
    other = tmp_path / "other"
    other.mkdir()
    path_a = write_config(other, 1)
    held = Cluster(path_a).start()
    try:
        mine = tmp_path / "mine"
        mine.mkdir()
        path_b = write_config(mine, 1)
        import yaml
        doc = yaml.safe_load(open(path_b))
        doc["nodes"][0]["port"] = held.config.nodes[0].port
        yaml.safe_dump(doc, open(path_b, "w"))
        res = run_chordctl("-c", path_b, "cluster", "up", "--detach", "--wait", "20")
        err = res.stderr.decode()
        assert res.returncode != 0
        assert "served by another process" in err or "cannot listen" in err, err
        assert "Traceback" not in err
        assert held.nodes[0].alive     # the other ring's node is untouched
    finally:
        held.stop()


def _cpus_of_nodes(path: str) -> list[str]:
    r = run_chordctl("-c", path, "-o", "json", "ring", "show", timeout=UP_TIMEOUT)
    assert r.returncode == 0, r.stderr.decode()
    return [n["cpus"] for n in json.loads(r.stdout)]


@pytest.mark.skipif(len(affinity.available()) < 2, reason="pinning needs 2 or more CPUs")
def test_cluster_up_pins_nodes_round_robin_and_keeps_configured_cpus(tmp_path):
    path = write_config(tmp_path, 3, timeout=5)
    cpus = affinity.available()
    with open(path) as f:
        doc = yaml.safe_load(f)
    doc["nodes"][2]["cpus"] = str(cpus[-1])        # the config's own choice wins
    with open(path, "w") as f:
        yaml.safe_dump(doc, f)
    cfg = config_mod.load(path)
    started: dict[int, int] = {}
    try:
        r = up_detached(path, cfg, started)
        assert r.returncode == 0, r.stderr.decode()
        assert _cpus_of_nodes(path) == [str(cpus[0]), str(cpus[1 % len(cpus)]), str(cpus[-1])]
        # Every thread of the process is pinned and SCHED_BATCH, not just the
        # main one; only the log writer runs anywhere (affinity.py says why).
        tids = [int(t) for t in os.listdir(f"/proc/{started[1]}/task")]
        masks = sorted((os.sched_getaffinity(t) for t in tids), key=len)
        assert masks[:-1] == [{cpus[1 % len(cpus)]}] * (len(tids) - 1)
        assert masks[-1] == set(cpus)
        assert all(os.sched_getscheduler(t) == os.SCHED_BATCH for t in tids)
        assert run_chordctl("-c", path, "cluster", "down", timeout=UP_TIMEOUT).returncode == 0

        r = run_chordctl("-c", path, "cluster", "up", "--detach", "--cpus", "none",
                         timeout=UP_TIMEOUT)
        started.update(read_pids(cfg))
        assert r.returncode == 0, r.stderr.decode()
        assert _cpus_of_nodes(path) == [cpulist.format_cpulist(cpus)] * 3
    finally:
        kill_leftovers(cfg, path, started)


@pytest.mark.parametrize(("args", "env", "message"), [
    (["--cpus", "99999"], {}, "CPU 99999 is not available to this process"),
    (["--cpus", "zero"], {}, "node: --cpus has 'zero'"),
    ([], {"CHORDCTL_EVENT_LOOP": "twisted"}, "CHORDCTL_EVENT_LOOP='twisted' is not one of"),
])
def test_node_serve_refuses_bad_placement_with_exit_2(tmp_path, args, env, message):
    path = write_config(tmp_path, 1)
    r = run_chordctl("-c", path, "node", "serve", "--node", "0", *args, env=env, timeout=60)
    err = r.stderr.decode()
    assert r.returncode == 2, err
    assert message in err and "Traceback" not in err


def test_cluster_up_runs_unpinned_where_the_system_refuses_pinning(tmp_path, run_cli,
                                                                  monkeypatch):
    """`--cpus auto` is a default, not a demand: a sandbox that forbids
    sched_setaffinity gets a warning and unpinned nodes, not a failed start."""
    def refuse(*_args):
        raise PermissionError(1, "Operation not permitted")
    monkeypatch.setattr(os, "sched_setaffinity", refuse)
    assert not affinity.can_pin()
    path = write_config(tmp_path, 2, timeout=5)
    cfg = config_mod.load(path)
    started: dict[int, int] = {}
    try:
        res = run_cli(path)("cluster", "up", "--detach")
        started.update(read_pids(cfg))
        assert res.exit_code == 0, res.output
        assert "does not let processes choose their CPUs" in res.stderr
        # The nodes (real processes, not patched) were started without --cpus.
        assert _cpus_of_nodes(path) == [cpulist.format_cpulist(affinity.available())] * 2
    finally:
        kill_leftovers(cfg, path, started)


def test_can_pin_here():
    assert affinity.can_pin() == hasattr(os, "sched_setaffinity")


# -- nodes found whatever the current directory, however they were started --------

def _relative_config(tmp_path, n: int) -> tuple[str, object]:
    """A config in tmp_path/conf whose data_dir is relative (./data)."""
    conf = tmp_path / "conf"
    conf.mkdir()
    path = write_config(conf, n, timeout=5)
    with open(path) as f:
        doc = yaml.safe_load(f)
    doc["storage"]["data_dir"] = "./data"
    with open(path, "w") as f:
        yaml.safe_dump(doc, f)
    return path, config_mod.load(path)


def test_cluster_down_from_another_directory_stops_every_node(tmp_path):
    path, cfg = _relative_config(tmp_path, 2)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    started: dict[int, int] = {}
    try:
        r = run_chordctl("-c", path, "cluster", "up", "--detach", timeout=UP_TIMEOUT,
                         cwd=str(elsewhere))
        started.update(read_pids(cfg))
        assert r.returncode == 0, r.stderr.decode()
        # The data lives beside the config, not in the directory up ran from.
        assert cfg.node_dir(0) == str(tmp_path / "conf" / "data" / "node-0")
        assert os.path.isfile(log_path(cfg, 1))
        assert not os.path.exists(elsewhere / "data")

        r = run_chordctl("-c", path, "cluster", "down", timeout=UP_TIMEOUT, cwd=str(tmp_path))
        out = r.stdout.decode()
        assert r.returncode == 0, r.stderr.decode()
        assert "no node of this config is running" not in r.stderr.decode()
        for i, pid in started.items():
            assert f"node {i} (pid {pid})" in out and "stopped" in out, out
            assert wait_exit(pid, EXIT_TIMEOUT), f"node {i} (pid {pid}) still running"
    finally:
        kill_leftovers(cfg, path, started)


def test_cluster_down_stops_a_node_started_by_hand(tmp_path):
    from conftest import NodeProc
    path = write_config(tmp_path, 2, timeout=5)
    hand = NodeProc(path, 1).start()
    try:
        r = run_chordctl("-c", path, "cluster", "down", timeout=UP_TIMEOUT)
        out = r.stdout.decode()
        assert r.returncode == 0, r.stderr.decode()
        assert f"node 1 (pid {hand.proc.pid}) on {hand.address}: stopped" in out, out
        assert "found by" in out and "port" in out
        assert "node 0: not running" in out
        assert hand.proc.wait(timeout=EXIT_TIMEOUT) == 0
    finally:
        hand.stop()


def test_cluster_up_starts_only_the_missing_nodes(tmp_path):
    from conftest import NodeProc
    path = write_config(tmp_path, 3, timeout=5)
    cfg = config_mod.load(path)
    hand = NodeProc(path, 1).start()
    started: dict[int, int] = {}
    try:
        r = run_chordctl("-c", path, "cluster", "up", "--detach", timeout=UP_TIMEOUT)
        pids = read_pids(cfg)
        started.update({i: pid for i, pid in pids.items() if i != 1})
        err = r.stderr.decode()
        assert r.returncode == 0, err
        assert f"node 1 already running on {hand.address} (pid {hand.proc.pid})" in err
        assert sorted(started) == [0, 2]
        assert pids[1] == hand.proc.pid                # the hand's node wrote its own
        rows = ring_rows(r.stdout.decode())
        assert all(" up " in line for line in rows.values()) and sorted(rows) == [0, 1, 2]
        assert hand.alive
        r = run_chordctl("-c", path, "cluster", "down", timeout=UP_TIMEOUT)
        assert r.returncode == 0, r.stderr.decode()
        for pid in (*started.values(), hand.proc.pid):
            assert f"(pid {pid})" in r.stdout.decode()
            assert wait_exit(pid, EXIT_TIMEOUT)
    finally:
        kill_leftovers(cfg, path, started)
        hand.stop()


def test_cluster_down_leaves_another_rings_node_on_its_port_alone(tmp_path):
    """A node of another config answers on our port with its pid: it is not ours
    (another data directory), so `down` names it and does not signal it."""
    from conftest import Cluster
    other = tmp_path / "other"
    other.mkdir()
    held = Cluster(write_config(other, 1)).start()
    try:
        mine = tmp_path / "mine"
        mine.mkdir()
        path = write_config(mine, 1)
        with open(path) as f:
            doc = yaml.safe_load(f)
        doc["nodes"][0]["port"] = held.config.nodes[0].port
        with open(path, "w") as f:
            yaml.safe_dump(doc, f)
        r = run_chordctl("-c", path, "cluster", "down", timeout=UP_TIMEOUT)
        out = r.stdout.decode()
        assert r.returncode == 0, r.stderr.decode()
        assert f"answers as pid {held.nodes[0].proc.pid}, which is not node 0" in out, out
        assert "no node of this config is running" in r.stderr.decode()
        assert held.nodes[0].alive
    finally:
        held.stop()


def test_a_pid_file_naming_another_process_is_not_signalled(tmp_path):
    """A stale pid file whose pid now belongs to some other process: never signalled."""
    path = write_config(tmp_path, 1)
    cfg = config_mod.load(path)
    os.makedirs(cfg.node_dir(0))
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with open(pid_path(cfg, 0), "w") as f:
            f.write(f"{bystander.pid}\n")
        r = run_chordctl("-c", path, "cluster", "down", timeout=UP_TIMEOUT)
        assert r.returncode == 0, r.stderr.decode()
        assert "node 0: not running" in r.stdout.decode()
        assert bystander.poll() is None
        assert not os.path.exists(pid_path(cfg, 0))
    finally:
        bystander.kill()
        bystander.wait()


def test_cluster_down_stops_a_node_serving_a_copy_of_the_config(tmp_path):
    """Started by hand from another file naming the same ports and data directory:
    still this config's node (it holds the node's files), so `down` stops it."""
    import shutil
    from conftest import NodeProc
    path = write_config(tmp_path, 1, timeout=5)
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(path, copy / "same.yaml")
    hand = NodeProc(str(copy / "same.yaml"), 0).start()
    try:
        r = run_chordctl("-c", path, "cluster", "down", timeout=UP_TIMEOUT)
        assert r.returncode == 0, r.stderr.decode()
        assert f"node 0 (pid {hand.proc.pid})" in r.stdout.decode(), r.stdout.decode()
        assert hand.proc.wait(timeout=EXIT_TIMEOUT) == 0
    finally:
        hand.stop()


def test_cluster_up_of_an_even_ring_replicas_warns_the_operator(tmp_path):
    """README: an even R is allowed and warned about -- on the terminal of
    whoever starts the ring, not only in each node's log."""
    from chordctl.config import replicas_warning
    assert replicas_warning(3) is None and replicas_warning(1) is None
    assert "survives the loss of no replica" in replicas_warning(2)
    assert "(5 survives the loss of 2)" in replicas_warning(4)
    path = write_config(tmp_path, 2, timeout=5, replicas=2)
    cfg = config_mod.load(path)
    started: dict[int, int] = {}
    try:
        r = up_detached(path, cfg, started)
        err = r.stderr.decode()
        assert r.returncode == 0, err
        assert "warning: ring.replicas 2 is even" in err and "use an odd number" in err
    finally:
        kill_leftovers(cfg, path, started)


def _cmdline(pid: int) -> list[str]:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().decode().split("\0")


def test_cluster_up_starts_a_new_replicated_ring_with_new_ring_and_never_a_replacement(
        tmp_path):
    """`cluster up` passes --new-ring (each node a full replica at once) only
    when no node of the config has started before: not on a restart, and
    not to a node whose directory was lost (a replacement learns first)."""
    import shutil

    from chordctl.localcluster import is_new_ring
    path = write_config(tmp_path, 3, timeout=5, replicas=3)
    cfg = config_mod.load(path)
    assert is_new_ring(cfg)
    single = tmp_path / "r1"
    single.mkdir()
    assert not is_new_ring(config_mod.load(write_config(single, 3, timeout=5)))
    started: dict[int, int] = {}
    try:
        r = up_detached(path, cfg, started)
        assert r.returncode == 0, r.stderr.decode()
        assert all("--new-ring" in _cmdline(pid) for pid in started.values()), started
        assert not is_new_ring(cfg)
        r = run_chordctl("-c", path, "cluster", "down", timeout=UP_TIMEOUT)
        assert r.returncode == 0, r.stderr.decode()
        shutil.rmtree(cfg.node_dir(2))        # node 2's disk is lost: a replacement
        started.clear()
        r = up_detached(path, cfg, started)
        assert r.returncode == 0, r.stderr.decode()
        assert sorted(started) == [0, 1, 2]
        assert not any("--new-ring" in _cmdline(pid) for pid in started.values()), started
        wait_until(lambda: not os.path.exists(os.path.join(cfg.node_dir(2), "LEARNING")),
                   timeout=30, what="the replacement learned its arcs")

        def logged(i: int) -> str:
            with open(log_path(cfg, i)) as f:
                return f.read()
        assert "--new-ring: a new ring's first start" in logged(0)
        wait_until(lambda: logged(2).count("node 2 is a full replica") == 3, timeout=10,
                   what="node 2 learned each of its 3 groups")
        assert "--new-ring" not in logged(2)
    finally:
        kill_leftovers(cfg, path, started)


def test_two_cluster_up_at_once_leave_one_running_ring(config4):
    """Two `cluster up --detach` of one config at the same moment: each won
    some ports and lost others, then stopped what it had started (or the
    loser removed the winner's pid files). Now the second waits for the
    first, finds every node running, and every pid file names its node."""
    path, cfg, started = config4
    cmd = [sys.executable, "-m", "chordctl", "-c", path, "cluster", "up", "--detach"]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    second = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    outs = [p.communicate(timeout=UP_TIMEOUT) for p in (first, second)]
    started.update(read_pids(cfg))
    errs = [e.decode() for _o, e in outs]
    assert (first.returncode, second.returncode) == (0, 0), errs
    assert any("every node of this config was already running" in e for e in errs), errs
    assert sorted(started) == [0, 1, 2, 3]
    for i, pid in started.items():
        with Client(cfg, target=cfg.nodes[i].address) as c:
            assert c.status().pid == pid
