"""README.md's ```console blocks, run in order against a real ring.

Every ``$ `` line runs with bash in a scratch directory laid out like the
repository (``examples/configs/ring4.yaml`` and ``ring3.yaml``, every port
replaced by a free one), with this venv's ``bin`` first on PATH. Each line
must exit 0 (a README line that shows a failure ends in ``; echo $?`` and
shows the code). The lines after it, up to the next ``$ ``, are its
expected output: compared line by line with stdout and stderr (in order
within each stream, interleaved in any way between them, as a terminal may
show them), blank lines dropped, runs of whitespace collapsed, the free
ports written back as the README's, ``...`` matching anything within a line
and a line of just ``...`` any number of lines.

Where the README means a foreground ring or a terminal, the test runs an
equivalent and says so below: the first "Two commands" command as
``cluster up --detach``, ``chordctl shell``'s session with its lines piped
in, a JSON document as a terminal shows it (indented), ``export`` as the
environment of the following lines. The config copies disable the snapshot
timer (``snapshot_interval: 0``) so ``ring show``'s counters do not depend
on how long the run takes.

Not run here: the README's ```sh blocks -- "Two commands" (the first one's
ring is the ``cluster up --detach`` above; the second runs this whole
suite) and the shell-completion lines (tests/test_cli_completion.py) --
and the console lines in SKIP, each with its reason.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from conftest import free_ports

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
CONFIGS = ("examples/configs/ring4.yaml", "examples/configs/ring3.yaml")
SHELL_PROMPT = re.compile(r"^chordctl \S+> ?(.*)$")
SKIP = {
    ". .venv/bin/activate": "the test's PATH has this venv's bin first already",
}
TIMEOUT = 30             # seconds per README line (a ring start takes a few)


@dataclass
class Step:
    command: str
    expected: list[str] = field(default_factory=list)


def console_blocks(text: str) -> list[list[Step]]:
    """The ```console blocks of *text*: each a list of $ lines with the lines after them."""
    blocks: list[list[Step]] = []
    current: list[Step] | None = None
    for line in text.splitlines():
        if current is None:
            if line.strip() == "```console":
                current = []
            continue
        if line.strip() == "```":
            blocks.append(current)
            current = None
        elif line.startswith("$ "):
            current.append(Step(line[2:]))
        elif current:
            current[-1].expected.append(line)
    return blocks


def strip_comment(command: str) -> str:
    """The command without a trailing ``# comment`` (outside quotes: good enough here)."""
    return re.sub(r"\s+#\s.*$", "", command).rstrip()


def _norm(line: str) -> str:
    return " ".join(line.split())


def _pattern(expected: str) -> re.Pattern:
    parts = [re.escape(p) for p in _norm(expected).split("...")]
    return re.compile(".*".join(parts) + r"\Z")


def interleaves(expected: list[str], out: list[str], err: list[str]) -> bool:
    """Whether *expected* matches *out* and *err* read in order, interleaved in any way."""
    exp = [_norm(e) for e in expected if e.strip()]
    out = [_norm(o) for o in out if o.strip()]
    err = [_norm(e) for e in err if e.strip()]
    pats = [None if e == "..." else _pattern(e) for e in exp]

    @lru_cache(maxsize=None)
    def match(i: int, j: int, k: int) -> bool:
        if i == len(exp):
            return j == len(out) and k == len(err)
        if pats[i] is None:                 # a line of ...: skip zero or more lines
            return (match(i + 1, j, k) or (j < len(out) and match(i, j + 1, k))
                    or (k < len(err) and match(i, j, k + 1)))
        return ((j < len(out) and pats[i].match(out[j]) is not None and match(i + 1, j + 1, k))
                or (k < len(err) and pats[i].match(err[k]) is not None
                    and match(i + 1, j, k + 1)))

    return match(0, 0, 0)


# -- the extractor and the matcher themselves ----------------------------------

def test_console_blocks_pair_each_command_with_the_lines_after_it():
    text = ("x\n```sh\n$ not this\n```\n```console\n$ a  # note\nout 1\n\nout 2\n$ b\n```\n"
            "prose\n```console\n$ c\n```\n")
    blocks = console_blocks(text)
    assert [[(s.command, s.expected) for s in b] for b in blocks] == [
        [("a  # note", ["out 1", "", "out 2"]), ("b", [])], [("c", [])]]
    assert strip_comment("chordctl kv read 11 > copy.jpg   # not a terminal") == \
        "chordctl kv read 11 > copy.jpg"


def test_matcher_allows_wildcards_and_interleaved_streams_but_not_other_text():
    assert interleaves(["a", "E ...", "b  c"], ["a", "b c"], ["E 1 2"])
    assert interleaves(["x", "...", "z"], ["x", "y1", "y2", "z"], [])
    assert not interleaves(["a", "b"], ["a", "c"], [])
    assert not interleaves(["a"], ["a", "extra"], [])
    assert not interleaves(["b", "a"], ["a", "b"], [])


# -- the README against a real ring ----------------------------------------------

def _layout(tmp_path: Path) -> dict[str, str]:
    """Copy the example configs with free ports; returns {free port: README port}."""
    originals = {c: (REPO / c).read_text() for c in CONFIGS}
    ports = sorted({int(p) for t in originals.values()
                    for p in re.findall(r"\bport:\s*(\d+)", t)})
    mapping = dict(zip(ports, free_ports(len(ports))))
    for name, text in originals.items():
        text = re.sub(r"\b(port:\s*)(\d+)", lambda m: m.group(1) + str(mapping[int(m.group(2))]),
                      text)
        text = re.sub(r"snapshot_interval:\s*\d+", "snapshot_interval: 0", text)
        dest = tmp_path / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(text)
    return {str(new): str(old) for old, new in mapping.items()}


def _normalise_ports(text: str, back: dict[str, str]) -> str:
    return re.sub(r"(?<=:)(\d+)\b", lambda m: back.get(m.group(1), m.group(1)), text)


class Runner:
    def __init__(self, tmp_path: Path, back: dict[str, str]):
        self.cwd = tmp_path
        self.back = back
        self.env = dict(os.environ)
        self.env.pop("CHORDCTL_CONFIG", None)
        self.env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + self.env["PATH"]
        self.pids: set[int] = set()
        self.times: list[tuple[float, str]] = []

    def run(self, command: str, stdin: str | None = None) -> tuple[int, list[str], list[str]]:
        t0 = time.monotonic()
        p = subprocess.run(["bash", "-c", command], cwd=self.cwd, env=self.env, input=stdin,
                           capture_output=True, text=True, errors="replace", timeout=TIMEOUT)
        self.times.append((time.monotonic() - t0, command))
        out = _normalise_ports(p.stdout, self.back)
        err = _normalise_ports(p.stderr, self.back)
        self.pids |= {int(x) for x in re.findall(r"\(pid (\d+)\)", out + err)}
        return p.returncode, out.splitlines(), err.splitlines()

    def stop_everything(self) -> None:
        for cfg in CONFIGS:
            if (self.cwd / cfg).exists():
                try:
                    self.run(f"chordctl -c {cfg} cluster down")
                except subprocess.TimeoutExpired:
                    pass
        for pid in self.pids:
            try:
                os.kill(pid, signal.SIGKILL)    # only pids this test's commands reported
            except ProcessLookupError:
                pass


def _as_on_a_terminal(out: list[str]) -> list[str]:
    """A one-line JSON document as chordctl prints it on a terminal (render.to_json)."""
    if len(out) == 1 and out[0].startswith("{"):
        return json.dumps(json.loads(out[0]), indent=2).splitlines()
    return out


def test_readme_console_blocks_run_as_shown(tmp_path):
    blocks = console_blocks(README.read_text())
    assert len(blocks) >= 5, "the README's console blocks went missing"
    r = Runner(tmp_path, _layout(tmp_path))
    skipped: list[str] = []
    try:
        # The first "Two commands" command runs the ring in the foreground
        # until Ctrl-C; the same ring, in the background:
        code, out, err = r.run("chordctl -c examples/configs/ring4.yaml cluster up --detach")
        assert code == 0, "\n".join(out + err)
        for block in blocks:
            for step in block:
                cmd = strip_comment(step.command)
                where = f"README line `$ {step.command}`"
                if cmd in SKIP:
                    skipped.append(f"{cmd}: {SKIP[cmd]}")
                    continue
                m = re.fullmatch(r"export (\w+)=(\S+)", cmd)
                if m:                       # each line runs in its own bash
                    r.env[m.group(1)] = m.group(2)
                    continue
                if cmd.endswith("chordctl shell"):
                    _shell(r, cmd, step, where)
                    continue
                code, out, err = r.run(cmd)
                assert code == 0, f"{where} exited {code}:\n" + "\n".join(out + err)
                if not [e for e in step.expected if e.strip()]:
                    continue                # the README shows no output: exit code only
                if step.expected[0].strip() == "{" and "|" not in cmd:
                    out = _as_on_a_terminal(out)
                assert interleaves(step.expected, out, err), (
                    f"{where}: the output differs from the README's\n--- README:\n"
                    + "\n".join(step.expected) + "\n--- stdout:\n" + "\n".join(out)
                    + "\n--- stderr:\n" + "\n".join(err))
    finally:
        r.stop_everything()
    print("slowest README lines:", *[f"{t:5.1f}s {c}" for t, c in sorted(r.times)[-6:]],
          sep="\n  ")
    if skipped:
        print("skipped README lines:", *skipped, sep="\n  ")


def _shell(r: Runner, cmd: str, step: Step, where: str) -> None:
    """The README shows an interactive session; the test pipes its lines in.

    Piped, the shell prints no banner or prompts and its replies arrive
    asynchronously (help may print before a reply), so each shown reply
    line must appear, in any order, and the exit code is 1: the session
    has one invalid line ('frob'), which piped input reports by exit status.
    """
    inputs, shown = [], []
    for line in step.expected:
        m = SHELL_PROMPT.match(line)
        if m:
            inputs.append(m.group(1))
        elif line.strip() and not line.startswith("connected to "):
            shown.append(line)
    code, out, err = r.run(cmd, stdin="".join(i + "\n" for i in inputs))
    got = {_norm(x) for x in out + err if x.strip()}
    missing = [s for s in shown if _norm(s) not in got]
    assert not missing, f"{where}: missing {missing}\n--- got:\n" + "\n".join(out + err)
    assert code == 1, f"{where} (piped) exited {code}, expected 1 for the invalid 'frob' line"
