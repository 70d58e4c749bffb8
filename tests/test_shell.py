"""The shell: validation, tagged asynchronous replies, grace period, a real terminal."""

from __future__ import annotations

import io
import os
import queue
import re
import sys
import time

import pexpect
import pytest

from chordctl.client import Client
from chordctl.errors import InvalidInputError
from chordctl.shell import (SPECS, Command, Shell, _no_echo, arg_hint, command_help,
                            completions, parse_command, run_piped)
from conftest import run_chordctl, write_config

TAG = re.compile(r"^\[(\d+)\] (OK|ERR) ", re.M)


# -- parse_command (pure) ----------------------------------------------------

@pytest.mark.parametrize("line, expected", [
    ("create 10 hello world", Command("create", "10", b"hello world")),
    ("CREATE 10 x", Command("create", "10", b"x")),
    ("Read 7", Command("read", "7")),
    ("update 7   spaced  value ", Command("update", "7", b"spaced  value")),
    ("delete 0", Command("delete", "0")),
    ("locate 99", Command("locate", "99")),
    ("ring", Command("ring")),
    ("help", Command("help")),
    ("?", Command("help")),
    ("help create", Command("help", topic="create")),
    ("HELP Exit", Command("help", topic="exit")),
    ("scan", Command("scan")),
    ("scan 10", Command("scan", start="10")),
    ("SCAN 10 20", Command("scan", start="10", end="20")),
    ("count 5 5", Command("count", start="5", end="5")),
    ("sair", Command("exit")),
    ("EXIT", Command("exit")),
    ("quit", Command("exit")),
    ("", None),
    ("   ", None),
    ("# a comment", None),
])
def test_parse_command_accepts(line, expected):
    assert parse_command(line) == expected


@pytest.mark.parametrize("line, fragment", [
    ("frob 1", "unknown command"),
    ("create", "needs a key"),
    ("create 10", "needs a value"),
    ("update 10   ", "needs a value"),
    ("read", "needs a key"),
    ("read -5", "negative"),
    ("read abc", "not a non-negative"),
    ("read 1.5", "not a non-negative"),
    ("read 10 extra", "takes only a key"),
    ("ring now", "takes no arguments"),
    ("sair now", "takes no arguments"),
    ("help frob", "no command 'frob'"),
    ("scan 1 2 3", "at most two keys"),
    ("scan x", "not a non-negative"),
    ("count 20 10", "past TO"),
])
def test_parse_command_rejects_with_reason(line, fragment):
    with pytest.raises(InvalidInputError, match=fragment):
        parse_command(line)


def test_parse_command_rejects_oversized_value():
    with pytest.raises(InvalidInputError, match="over the limit"):
        parse_command("create 1 " + "x" * 65, max_value=64)


# -- piped sessions ------------------------------------------------------------

def _script(n_valid_groups: int = 40) -> tuple[str, int, int, int]:
    """200 mixed lines: (text, valid requests, expected failures, invalid lines)."""
    lines, valid, failures, invalid = [], 0, 0, 0
    for i in range(n_valid_groups):
        k = 1000 + i
        lines += [f"create {k} v{k}", f"read {k}", f"update {k} w{k}", f"create {k} dup"]
        valid += 4
        failures += 1          # the duplicate create
        if i % 4 == 0:
            lines.append(f"read {k + 50000}")   # missing key
            valid += 1
            failures += 1
        else:
            lines.append(f"frob {k}" if i % 2 else f"read -{k}")
            invalid += 1
    assert len(lines) == 200
    return "\n".join(lines) + "\n", valid, failures, invalid


def test_piped_script_gets_one_tagged_reply_per_valid_command(make_cluster):
    cluster = make_cluster(4)
    text, valid, failures, invalid = _script()
    res = run_chordctl("-c", cluster.config_path, "shell", input=text.encode(), timeout=120)
    out = res.stdout.decode() + res.stderr.decode()
    tags = [int(t) for t, _ in TAG.findall(out)]
    assert sorted(tags) == list(range(1, valid + 1)), out
    assert len([1 for _, s in TAG.findall(out) if s == "ERR"]) == failures
    assert out.count("(not sent)") == invalid
    assert res.returncode == 1
    assert "Traceback" not in out
    # Operations on one key keep their order: every read saw its create.
    for i in range(40):
        k = 1000 + i
        assert f"OK read {k} -> v{k}" in out


def test_piped_script_without_failures_exits_zero(make_cluster):
    cluster = make_cluster(1)
    res = run_chordctl("-c", cluster.config_path, "shell",
                       input=b"create 1 a\nread 1\ndelete 1\nsair\nread 1\n")
    out = res.stdout.decode()
    assert res.returncode == 0, res.stderr.decode()
    assert "[1] OK created key 1" in out and "[2] OK read 1 -> a" in out
    assert "[3] OK deleted key 1" in out
    assert "[4]" not in out            # input ended at sair


def test_later_replies_print_before_a_slow_one(make_cluster):
    cluster = make_cluster(1, hold="77:1.5", timeout=10)
    res = run_chordctl("-c", cluster.config_path, "shell",
                       input=b"read 77\ncreate 5 five\nread 5\n", timeout=60)
    out = res.stdout.decode()
    slow = out.index("[1] ERR read 77")
    assert out.index("[2] OK created key 5") < slow
    assert out.index("[3] OK read 5 -> five") < slow


def test_grace_waits_for_a_stalled_reply_then_reports_it(make_cluster):
    cluster = make_cluster(1, hold="77:30", timeout=60, grace=1)
    t0 = time.monotonic()
    res = run_chordctl("-c", cluster.config_path, "shell", input=b"read 77\n", timeout=60)
    elapsed = time.monotonic() - t0
    err = res.stderr.decode()
    assert "1 reply never came" in err, err
    assert res.returncode == 1
    assert elapsed >= 1.0            # it did wait the grace period
    assert elapsed < 20              # and did not wait for the 30 s stall


def test_exits_at_once_with_nothing_pending(make_cluster):
    cluster = make_cluster(1, grace=30)
    client = Client(cluster.config)
    out = io.StringIO()
    shell = Shell(client, cluster.config, out=out, err=out)
    t0 = time.monotonic()
    code = run_piped(shell, io.StringIO("create 3 c\nread 3\n"))
    # The replies came before input ended or right after; no 30 s grace wait.
    assert time.monotonic() - t0 < 10
    assert code == 0
    assert "[2] OK read 3 -> c" in out.getvalue()
    client.close()


def test_node_gone_mid_session_fails_clearly_and_recovers(make_cluster):
    cluster = make_cluster(1, timeout=3)
    node = cluster.nodes[0]
    client = Client(cluster.config)
    out = io.StringIO()
    shell = Shell(client, cluster.config, out=out, err=out, grace=5)
    lines: queue.SimpleQueue = queue.SimpleQueue()
    replies = []

    def next_line():
        line = lines.get()
        if line is None:
            raise EOFError
        return line

    import threading
    t = threading.Thread(target=shell.run, args=(next_line,))
    t.start()
    try:
        lines.put("create 1 one\n")
        _await_text(out, "[1] OK")
        node.kill()
        lines.put("read 1\n")
        _await_text(out, "[2] ERR read 1")
        node.start()
        lines.put("read 1\n")
        _await_text(out, "[3] OK read 1 -> one", timeout=20)
    finally:
        lines.put(None)
        t.join(30)
        client.close()
    text = out.getvalue()
    assert "cannot connect" in text or "lost the connection" in text, text
    del replies


def _await_text(buf: io.StringIO, text: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while text not in buf.getvalue():
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} not printed; output:\n{buf.getvalue()}")
        time.sleep(0.02)


# -- a real terminal -----------------------------------------------------------

def test_interactive_session_in_a_pty(make_cluster, tmp_path):
    cluster = make_cluster(1)
    env = dict(os.environ, CHORDCTL_HISTORY=str(tmp_path / "history"), TERM="xterm",
               PYTHONUNBUFFERED="1")
    child = pexpect.spawn(sys.executable, ["-m", "chordctl", "-c", cluster.config_path, "shell"],
                          env=env, encoding="utf-8", timeout=20, dimensions=(40, 200))
    try:
        child.expect("chordctl 127.0.0.1:")
        child.sendline("create 42 answer")
        child.expect(r"\[1\] OK created key 42")
        child.sendline("read 42")
        child.expect(r"\[2\] OK read 42 -> answer")
        child.sendline("frob")
        child.expect("unknown command")
        # Up arrow recalls the last line sent ("frob"), twice: "read 42".
        child.send("\x1b[A\x1b[A")
        child.send("\r")
        child.expect(r"\[3\] OK read 42 -> answer")
        child.sendline("sair")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    # Interactive: the invalid line was shown when typed; leaving is not a failure.
    assert child.exitstatus == 0
    history = (tmp_path / "history").read_text()
    assert "create 42 answer" in history and "sair" in history


def _spawn_shell(config_path: str, tmp_path, *args: str) -> pexpect.spawn:
    env = dict(os.environ, CHORDCTL_HISTORY=str(tmp_path / "history"), TERM="xterm",
               PYTHONUNBUFFERED="1", PROMPT_TOOLKIT_NO_CPR="1")
    return pexpect.spawn(sys.executable, ["-m", "chordctl", "-c", config_path, "shell", *args],
                         env=env, encoding="utf-8", timeout=20, dimensions=(40, 200))


def test_interactive_session_exits_0_after_a_failed_request(make_cluster, tmp_path):
    cluster = make_cluster(1)
    child = _spawn_shell(cluster.config_path, tmp_path)
    try:
        child.expect("chordctl 127.0.0.1:")
        child.sendline("read 404")
        child.expect(r"\[1\] ERR read 404")
        child.sendline("sair")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0


def test_tab_after_a_command_name_does_not_offer_commands_again(make_cluster, tmp_path):
    cluster = make_cluster(1)
    child = _spawn_shell(cluster.config_path, tmp_path)
    try:
        child.expect("chordctl 127.0.0.1:")
        child.sendline("create 42 answer")
        child.expect(r"\[1\] OK created key 42")
        # Each key waits for the screen to show the last one was handled:
        # completion runs in the background and a TAB that outruns it is lost.
        child.send("cre")
        child.expect("fails if it exists")    # the completion menu is up
        child.send("\t")                      # completes the command name...
        child.expect("KEY VALUE")             # "create " is on the line, with its hint
        child.send("43 second\r")
        child.expect(r"\[2\] OK created key 43")
        child.send("read")
        child.expect("KEY")                   # the argument hint: "read" is known
        child.send(" \t")                     # ...but nothing inside the arguments
        child.send("42\r")
        child.expect(r"\[3\] OK read 42 -> answer")
        child.sendline("sair")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0


def test_shell_shows_the_syntax_of_the_command_being_typed(make_cluster, tmp_path):
    cluster = make_cluster(1)
    child = _spawn_shell(cluster.config_path, tmp_path)
    try:
        child.expect("chordctl 127.0.0.1:")
        child.send("update")
        child.expect("KEY VALUE")             # greyed after the cursor, as redis-cli does
        child.send(" 7")
        child.expect("VALUE")
        child.send("\x15")                   # Ctrl-U: clear the line
        child.sendline("help delete")
        child.expect("usage: delete KEY")
        child.expect("example: delete 10")
        child.sendline("sair")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)


def test_shell_with_the_ring_down_exits_3_without_a_prompt(tmp_path):
    path = write_config(tmp_path, 2)           # free ports, nothing listening
    child = _spawn_shell(path, tmp_path)
    try:
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 3, child.before
    assert "no node" in child.before and "connected to" not in child.before
    assert "Traceback" not in child.before


@pytest.mark.parametrize("nodes, args", [(2, ()), (1, ()), (1, ("--target", "127.0.0.1:1"))])
def test_piped_shell_with_the_ring_down_exits_3(tmp_path, nodes, args):
    path = write_config(tmp_path, nodes)
    res = run_chordctl("-c", path, *args, "shell", input=b"read 1\n")
    err = res.stderr.decode()
    assert res.returncode == 3, err
    assert "shell: no node answered" in err and "Traceback" not in err
    assert "[1]" not in res.stdout.decode()


def test_piped_help_command_prints_its_syntax(tmp_path):
    from chordctl.client import Client
    path = write_config(tmp_path, 1)
    from chordctl import config as config_mod
    cfg = config_mod.load(path)
    out = io.StringIO()
    client = Client(cfg)
    try:
        code = run_piped(Shell(client, cfg, out=out, err=out), io.StringIO("help create\nhelp\n"))
    finally:
        client.close()
    assert code == 0
    text = out.getvalue()
    assert "usage: create KEY VALUE" in text and "example: create 10 hello world" in text
    assert all(spec.syntax in text for spec in SPECS.values())


# -- completion and hints (pure) ---------------------------------------------------

@pytest.mark.parametrize("text, offered", [
    ("", list(SPECS) + ["?", "exit", "quit"]),
    ("re", ["read"]),
    ("RE", ["read"]),
    ("e", ["exit"]),
    ("read ", []),
    ("create 1 ", []),
    ("help ", list(SPECS)),
    ("help up", ["update"]),
    ("frob ", []),
])
def test_completions_offer_command_names_only_for_the_first_word(text, offered):
    assert sorted(completions(text)) == sorted(offered)


@pytest.mark.parametrize("text, shown", [
    ("", ""),
    ("cr", ""),
    ("create", " KEY VALUE"),
    ("create ", "KEY VALUE"),
    ("create 5", " VALUE"),
    ("create 5 ", "VALUE"),
    ("create 5 five", ""),
    ("read", " KEY"),
    ("read 5", ""),
    ("ring", ""),
    ("help ", "[COMMAND]"),
    ("help create", ""),
    ("scan ", "[FROM [TO]]"),
    ("scan 10", " [TO]"),
    ("scan 10 ", "[TO]"),
    ("scan 10 20", ""),
    ("frob ", ""),
])
def test_arg_hint_shows_the_arguments_still_to_type(text, shown):
    assert arg_hint(text) == shown


def test_command_help_names_syntax_aliases_and_example():
    assert command_help("quit").startswith("usage: sair (also exit, quit)")
    assert "example: locate 10" in command_help("locate")


def test_terminal_does_not_echo_between_prompts():
    """Keys typed while the shell handles a command must not be echoed by the
    terminal into the replies (they appear in the next prompt instead)."""
    import pty
    import termios
    master, slave = pty.openpty()
    try:
        assert termios.tcgetattr(slave)[3] & termios.ECHO
        with _no_echo(slave):
            assert not termios.tcgetattr(slave)[3] & termios.ECHO
            os.write(master, b"typed ahead\n")
            # The line discipline takes the input in later (a kernel work
            # item): wait until the line reached the shell's side, or a
            # loaded machine restores the echo first and the test proves nothing.
            import select
            assert select.select([slave], [], [], 10)[0]
        assert termios.tcgetattr(slave)[3] & termios.ECHO
        os.set_blocking(master, False)
        try:
            echoed = os.read(master, 100)
        except BlockingIOError:
            echoed = b""
        assert b"typed ahead" not in echoed
    finally:
        os.close(master)
        os.close(slave)


def test_piped_scan_and_count_see_what_the_session_wrote_before_them(make_cluster):
    cluster = make_cluster(3)
    script = "".join(f"create {k} v{k}\n" for k in range(100, 140))
    script += "scan 110 115\ncount\ncount 100 120\nscan 1000\nsair\n"
    res = run_chordctl("-c", cluster.config_path, "shell", input=script.encode(), timeout=60)
    out = res.stdout.decode()
    assert res.returncode == 0, res.stderr.decode() + out
    assert "[41] OK scan [110, 115): 5 keys" in out
    assert [f"  {k} -> v{k}" in out for k in range(110, 115)] == [True] * 5
    assert "  115 -> v115" not in out
    assert "[42] OK count [0, end): 40 keys" in out
    assert "[43] OK count [100, 120): 20 keys" in out
    assert "[44] OK scan [1000, end): 0 keys" in out


def test_piped_count_with_a_node_down_fails_the_script(make_cluster):
    cluster = make_cluster(2)
    cluster.nodes[1].kill()
    res = run_chordctl("-c", cluster.config_path, "shell", input=b"count\nscan\n", timeout=60)
    out = res.stdout.decode()
    assert res.returncode == 1, out
    assert "ERR count" in out and "(incomplete)" in out and "DOWN" in out
    assert "[2] ERR scan" in out and "Traceback" not in out + res.stderr.decode()
