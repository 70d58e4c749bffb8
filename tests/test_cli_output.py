"""What the one-shot commands print: short table cells, -o json details."""

from __future__ import annotations

import json

from conftest import NodeProc, run_chordctl, write_config

WIDEST_ROW = 120      # a table row must fit a wide terminal


def test_snapshot_list_with_the_ring_down_keeps_rows_short(tmp_path):
    path = write_config(tmp_path, 3)          # never started
    p = run_chordctl("-c", path, "snapshot", "list")
    assert p.returncode == 3, p.stderr
    lines = p.stdout.decode().splitlines()
    assert len(lines) == 2 + 3, lines
    assert max(len(line) for line in lines) <= WIDEST_ROW, lines
    assert all(line.rstrip().endswith("down: unreachable") for line in lines[2:]), lines
    p = run_chordctl("-c", path, "-o", "json", "snapshot", "list")
    docs = json.loads(p.stdout)
    assert [d["state"] for d in docs] == ["down"] * 3
    assert all("cannot connect" in d["error"] and "is the ring up?" in d["error"] for d in docs)



def test_snapshot_create_with_the_ring_down_keeps_rows_short_and_says_why(tmp_path):
    path = write_config(tmp_path, 2)          # never started
    p = run_chordctl("-c", path, "snapshot", "create")
    assert p.returncode == 3, p.stderr
    lines = p.stdout.decode().splitlines()
    assert max(len(line) for line in lines) <= WIDEST_ROW, lines
    assert all(line.rstrip().endswith("failed: unreachable") for line in lines[2:]), lines
    assert b"2 node(s) took no snapshot" in p.stderr and b"is the ring up?" in p.stderr


# -- --target names the entry node of `ring locate` and the shell's `locate` ------------


def _ring(tmp_path, n=4):
    from chordctl import config as config_mod
    from chordctl.core.ring import Ring
    path = write_config(tmp_path, n)          # never started: locate needs only the config
    cfg = config_mod.load(path)
    r = Ring.from_config(cfg)
    entry = 2
    key = next(k for k in range(1, 65536, 97) if len(r.route(entry, k)) >= 2
               and r.route(entry, k) != r.route(0, k))
    return path, cfg, r, entry, key


def test_ring_locate_starts_the_route_at_the_target(tmp_path, run_cli):
    path, cfg, r, entry, key = _ring(tmp_path)
    cli = run_cli(path)
    res = cli("ring", "locate", str(key), target=cfg.nodes[entry].address, output="json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["entry"] == entry
    assert [h["index"] for h in doc["route"]] == r.route(entry, key)
    res = cli("ring", "locate", str(key), "--target", cfg.nodes[entry].address)
    assert f"node {entry} (id {r.ids[entry]}, {cfg.nodes[entry].address})" in res.stdout
    assert " -> ".join(str(r.ids[i]) for i in r.route(entry, key)) in res.stdout, res.stdout


def test_ring_locate_refuses_a_target_outside_the_config(tmp_path, run_cli):
    path, cfg, r, entry, key = _ring(tmp_path)
    res = run_cli(path)("ring", "locate", str(key), target="127.0.0.1:1")
    assert res.exit_code == 2
    assert "not a node of the config" in res.stderr
    res = run_cli(path)("ring", "locate", str(key), "--from", "0",
                        target=cfg.nodes[entry].address)
    assert res.exit_code == 2 and "different entry nodes" in res.stderr


def test_ring_locate_refuses_a_bad_key_in_the_words_of_parse_key(tmp_path, run_cli):
    path, *_ = _ring(tmp_path)
    res = run_cli(path)("ring", "locate", "12a")
    assert res.exit_code == 2, res.output
    assert "key '12a' is not a non-negative decimal integer" in res.stderr
    assert "Traceback" not in res.stderr


def test_shell_locate_starts_the_route_at_the_target(tmp_path, run_cli):
    path, cfg, r, entry, key = _ring(tmp_path)
    # The shell checks that the node it talks to answers; locate itself
    # needs only the config.
    node = NodeProc(path, entry).start()
    try:
        res = run_cli(path)("shell", input=f"locate {key}\n", target=cfg.nodes[entry].address)
    finally:
        node.stop()
    route = " -> ".join(str(r.ids[i]) for i in r.route(entry, key))
    assert f"route from node {entry}: {route}" in res.stdout, res.output


def test_every_kv_snapshot_bench_and_locate_command_has_an_example_and_option_help():
    import click

    from chordctl.cli.main import cli
    commands = [cli, cli.commands["bench"], cli.commands["ring"].commands["locate"]]
    for group in ("kv", "snapshot"):
        commands += [cli.commands[group], *cli.commands[group].commands.values()]
    for cmd in commands:
        assert "Example:" in (cmd.help or ""), cmd.name
        for p in cmd.params:
            if isinstance(p, click.Option):
                assert p.help, f"{cmd.name} {p.name}"


def test_snapshot_create_that_fails_on_a_reachable_node_exits_1_not_unreachable(
        tmp_path, run_cli, monkeypatch):
    """The node answered (its disk is full): the snapshot failed, exit 1 and its
    reason in the cell -- not 'unreachable' and exit 3, which send the operator
    looking for a ring that is down."""
    from chordctl.client import Client
    from chordctl.errors import UnavailableError

    def take_snapshot(self, timeout=None):
        raise UnavailableError("node 0 (id 65535): snapshot: cannot write snap.3: "
                               "No space left on device")

    monkeypatch.setattr(Client, "take_snapshot", take_snapshot)
    path = write_config(tmp_path, 1)
    r = run_cli(path)("snapshot", "create")
    assert r.exit_code == 1, r.output
    row = r.stdout.splitlines()[2]
    assert "failed: snapshot: cannot write snap.3" in row and "unreachable" not in row, row
    assert len(row) <= WIDEST_ROW, row
    assert "No space left on device" in r.output


def test_seconds_options_refuse_nan_inf_and_negative_with_exit_2(tmp_path, run_cli):
    """`cluster up --wait nan` waited forever; `cluster down --timeout nan` killed
    every node at once (no clean stop, no final snapshot)."""
    path = write_config(tmp_path, 1)            # never started
    cli = run_cli(path)
    for args in (("cluster", "up", "--wait"), ("cluster", "down", "--timeout"),
                 ("ring", "show", "--timeout"), ("shell", "--grace")):
        for bad in ("nan", "inf", "-1", "1e300", "soon"):
            r = cli(*args, bad)
            assert r.exit_code == 2, (args, bad, r.output)
            assert "seconds" in r.output and "Traceback" not in r.output, (args, bad, r.output)


def test_bench_value_size_past_the_value_limit_is_exit_2_not_overflow(tmp_path, run_cli):
    path = write_config(tmp_path, 1)
    for size in ("99999999999999999999", str(64 * 1024 * 1024 + 1)):
        r = run_cli(path)("bench", "--value-size", size, "--records", "10", "--ops", "10")
        assert r.exit_code == 2, r.output
        assert "--value-size" in r.output and "Traceback" not in r.output, r.output
