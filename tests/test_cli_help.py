"""Every command's --help renders, has an Example: block, and its examples parse."""

from __future__ import annotations

import shlex

import click
import pytest
from click.testing import CliRunner

from chordctl.cli.common import State
from chordctl.cli.main import cli


def _commands(cmd: click.Command = cli, path: tuple[str, ...] = ()):
    yield path, cmd
    if isinstance(cmd, click.Group):
        for name, sub in sorted(cmd.commands.items()):
            yield from _commands(sub, path + (name,))


ALL = list(_commands())


def _examples(help_text: str) -> list[str]:
    lines = help_text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "Example:")
    out = []
    for line in lines[start + 1:]:
        if not line.strip() or not line.startswith("    "):
            break
        out.append(line.strip())
    return out


def _chordctl_argv(example: str) -> list[str]:
    """The chordctl command of a shell line: its pipeline stage, without redirections."""
    words = shlex.split(example.split(" # ")[0])
    stages, stage = [], []
    for w in words + ["|"]:
        if w == "|":
            stages.append(stage)
            stage = []
        else:
            stage.append(w)
    argv = next(s for s in stages if s and s[0] == "chordctl")
    out, skip = [], False
    for w in argv[1:]:
        if skip:
            skip = False
        elif w in (">", "<", "2>", ">>"):
            skip = True
        else:
            out.append(w)
    return out


def _parse(argv: list[str]) -> None:
    """Parse argv as chordctl would, down to the leaf command, without running it."""
    cmd: click.Command = cli
    ctx = cmd.make_context("chordctl", argv, obj=State(None, None, None))
    while isinstance(cmd, click.Group):
        rest = [*getattr(ctx, "_protected_args", []), *ctx.args]
        name, cmd, rest = cmd.resolve_command(ctx, rest)
        ctx = cmd.make_context(name, rest, parent=ctx)


@pytest.mark.parametrize("path", [p for p, _ in ALL], ids=lambda p: " ".join(p) or "chordctl")
def test_help_renders_with_an_example_that_parses(path):
    res = CliRunner().invoke(cli, [*path, "--help"])
    assert res.exit_code == 0, res.output
    assert "Traceback" not in res.output
    assert "Example:" in res.output, f"chordctl {' '.join(path)} --help has no Example: block"
    examples = _examples(res.output)
    assert examples, res.output
    for example in examples:
        try:
            _parse(_chordctl_argv(example))
        except click.UsageError as e:
            pytest.fail(f"example `{example}` of chordctl {' '.join(path)} --help: {e}")


def test_readme_commands_table_names_only_options_that_exist():
    import re
    from pathlib import Path
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    table = readme[readme.index("### Commands"):readme.index("Global options")]
    checked = 0
    for row in table.splitlines():
        if not row.startswith("| `"):
            continue
        for spec in re.findall(r"`([^`]+)`", row.split(" | ")[0]):
            words, cmd = spec.split(), cli
            while isinstance(cmd, click.Group) and words and words[0] in cmd.commands:
                cmd = cmd.commands[words.pop(0)]
            assert not isinstance(cmd, click.Group), f"README names no command: {spec}"
            opts = {o for p in cmd.params for o in getattr(p, "opts", [])}
            for o in re.findall(r"--[a-z][a-z-]*", spec):
                assert o in opts, f"README's `{spec}`: {cmd.name} has no {o}"
            checked += 1
    assert checked >= 15


def test_ring_show_and_snapshot_list_of_a_stopped_ring_say_how_to_start_it(tmp_path):
    from conftest import run_chordctl, write_config
    path = write_config(tmp_path, 2)
    show = run_chordctl("-c", path, "ring", "show", "--timeout", "1")
    assert show.returncode == 3
    assert b"chordctl: ring: 2 of 2 node(s) not up; `chordctl cluster up`" in show.stderr
    snap = run_chordctl("-c", path, "snapshot", "list")
    assert snap.returncode == 3
    assert b"chordctl: snapshot: 2 node(s) did not answer; is the ring up?" in snap.stderr
    assert b"--data-dir DIR" in snap.stderr and b"Traceback" not in snap.stderr
