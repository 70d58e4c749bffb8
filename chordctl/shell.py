"""``chordctl shell``: the assignment's asynchronous client, made comfortable.

Two threads, as the assignment asks: the *reader* (the caller's thread) reads
a command, validates it and sends it without waiting; the *printer* prints
each reply as it arrives, tagged with the request it answers. With a terminal,
prompt_toolkit keeps the line being typed intact while replies print
(patch_stdout), keeps history in a file, completes command names with TAB and
shows the arguments still to type greyed after the cursor. Without one (a
pipe, a script) commands are read line by line.

The commands are the table SPECS: each one's syntax drives parsing (one
parser per argument shape in _PARSERS), ``help``, ``help COMMAND``, the hints
and completion, so a new command is one entry there.

After input ends (``sair``, ``exit``, ``quit``, Ctrl-D or end of file) the
shell waits for pending replies, at most ``client.grace`` seconds. Piped input
exits 1 if any request failed or any line was invalid; an interactive session
exits 0 (it showed each failure as it came).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import queue
import sys
import threading
import time
from typing import Callable, TextIO

from chordctl.client import Client, Result
from chordctl.config import ClientConfig, Config, LimitsConfig
from chordctl.errors import ChordError, InvalidInputError
from chordctl.protocol import check_key, check_value, parse_key

EXIT_WORDS = ("sair", "exit", "quit")
HISTORY_ENV = "CHORDCTL_HISTORY"
NOTICE_AFTER = 0.5   # say that we are waiting only when replies are slow
SCAN_SHOWN = 100     # entries a shell scan prints (chordctl kv scan lists more)


@dataclasses.dataclass(frozen=True)
class Spec:
    """One shell command: its syntax (for help, hints and parsing) and what it does.

    *args* names the arguments' shape, which picks the parser in _PARSERS:
    ``"KEY VALUE"``, ``"KEY"``, ``"[FROM [TO]]"``, ``""`` (none) or
    ``"[COMMAND]"``. A new
    command is one Spec here (and, for a new shape, one parser).
    """

    name: str
    args: str
    summary: str
    example: str
    aliases: tuple[str, ...] = ()

    @property
    def syntax(self) -> str:
        return f"{self.name} {self.args}".rstrip()


SPECS: dict[str, Spec] = {s.name: s for s in (
    Spec("create", "KEY VALUE", "create KEY; fails if it exists", "create 10 hello world"),
    Spec("read", "KEY", "print KEY's value", "read 10"),
    Spec("update", "KEY VALUE", "replace KEY's value", "update 10 bye"),
    Spec("delete", "KEY", "delete KEY", "delete 10"),
    Spec("locate", "KEY", "KEY's position, owner and route", "locate 10"),
    Spec("scan", "[FROM [TO]]", f"keys in [FROM, TO) in key order (the first {SCAN_SHOWN})",
         "scan 10 20"),
    Spec("count", "[FROM [TO]]", "keys in [FROM, TO): per node and in total", "count"),
    Spec("ring", "", "the nodes, their arcs and state", "ring"),
    Spec("help", "[COMMAND]", "the commands, or one command's syntax", "help create",
         aliases=("?",)),
    Spec("sair", "", "end input; pending replies are awaited", "sair",
         aliases=("exit", "quit")),
)}
ALIASES = {alias: spec.name for spec in SPECS.values() for alias in spec.aliases}
COMMANDS = tuple(SPECS) + tuple(ALIASES)


def _help_text() -> str:
    def names(s: Spec) -> str:
        return " | ".join((s.name, *s.aliases)) if s.aliases and not s.args else s.syntax
    width = max(len(names(s)) for s in SPECS.values()) + 2
    summary = max(len(s.summary) for s in SPECS.values()) + 2
    lines = ["Commands (case-insensitive; replies arrive tagged [n] as they come):"]
    lines += [f"  {names(s):<{width}}{s.summary:<{summary}}{s.example}" for s in SPECS.values()]
    lines.append("KEY is a non-negative integer; VALUE is the rest of the line; Ctrl-D "
                 "also ends input.\nhelp COMMAND shows one command's syntax.")
    return "\n".join(lines)


HELP = _help_text()


def command_help(name: str) -> str:
    """``help NAME``: the command's syntax, what it does, an example."""
    spec = SPECS[ALIASES.get(name, name)]
    also = f" (also {', '.join(spec.aliases)})" if spec.aliases else ""
    return f"usage: {spec.syntax}{also}\n  {spec.summary}\n  example: {spec.example}"


def arg_hint(text: str) -> str:
    """The arguments still to type, shown greyed after the cursor (as redis-cli does):
    ``"create "`` -> ``"KEY VALUE"``, ``"create 10"`` -> ``" VALUE"``."""
    words = text.split()
    if not words:
        return ""
    name = words[0].lower()
    spec = SPECS.get(ALIASES.get(name, name))
    if spec is None or not spec.args:
        return ""
    trailing = text[-1:].isspace()
    given = len(words) - 1
    # Optional arguments are hinted one level at a time.
    wanted = {"[FROM [TO]]": ["[FROM [TO]]", "[TO]"],
              "[COMMAND]": ["[COMMAND]"]}.get(spec.args) or spec.args.split()
    if spec.args.startswith("["):
        wanted = wanted[:given + 1]
    if spec.args == "KEY VALUE" and given >= 2:   # VALUE is the rest of the line
        return ""
    remaining = wanted[given:]
    if not remaining:
        return ""
    return ("" if trailing else " ") + " ".join(remaining)


@dataclasses.dataclass(frozen=True)
class Command:
    name: str                 # a Spec name (create | read | ... | help), or exit
    key: str | None = None
    value: bytes | None = None
    topic: str | None = None  # help TOPIC
    start: str | None = None  # scan / count: [start, end)
    end: str | None = None


def _usage(spec: Spec) -> str:
    return f"usage: {spec.syntax}"


def _parse_key_value(spec: Spec, rest: str, max_digits: int, max_value: int) -> Command:
    key, _, value = rest.partition(" ")
    _check_key(spec, key, max_digits)
    if not value.strip():
        raise InvalidInputError(f"{spec.name} needs a value; {_usage(spec)}")
    data = value.strip().encode("utf-8", "surrogateescape")
    check_value(spec.name, data, max_value)
    return Command(spec.name, key, data)


def _parse_key(spec: Spec, rest: str, max_digits: int, max_value: int) -> Command:
    key, _, extra = rest.partition(" ")
    _check_key(spec, key, max_digits)
    if extra.strip():
        raise InvalidInputError(f"{spec.name} takes only a key; {_usage(spec)}")
    return Command(spec.name, key)


def _check_key(spec: Spec, key: str, max_digits: int) -> None:
    if not key:
        raise InvalidInputError(f"{spec.name} needs a key; {_usage(spec)}")
    check_key(key, max_digits)


def _parse_range(spec: Spec, rest: str, max_digits: int, max_value: int) -> Command:
    bounds = rest.split()
    if len(bounds) > 2:
        raise InvalidInputError(f"{spec.name} takes at most two keys; {_usage(spec)}")
    for b in bounds:
        check_key(b, max_digits)
    if len(bounds) == 2 and parse_key(bounds[0], max_digits)[0] > \
            parse_key(bounds[1], max_digits)[0]:
        raise InvalidInputError(f"{spec.name}: FROM {bounds[0]} is past TO {bounds[1]}")
    start, end = (bounds + [None, None])[:2]
    return Command(spec.name, start=start, end=end)


def _parse_none(spec: Spec, rest: str, max_digits: int, max_value: int) -> Command:
    if rest:
        raise InvalidInputError(f"{spec.name} takes no arguments")
    return Command("exit" if spec.name == "sair" else spec.name)


def _parse_topic(spec: Spec, rest: str, max_digits: int, max_value: int) -> Command:
    if not rest:
        return Command(spec.name)
    topic = rest.lower()
    if topic not in SPECS and topic not in ALIASES:
        raise InvalidInputError(f"no command {rest!r}; commands: {', '.join(SPECS)}")
    return Command(spec.name, topic=topic)


_PARSERS: dict[str, Callable[[Spec, str, int, int], Command]] = {
    "KEY VALUE": _parse_key_value,
    "KEY": _parse_key,
    "[FROM [TO]]": _parse_range,
    "": _parse_none,
    "[COMMAND]": _parse_topic,
}


def parse_command(line: str, max_digits: int = LimitsConfig.max_key_digits,
                  max_value: int = LimitsConfig.max_value_bytes) -> Command | None:
    """One input line -> a Command, None for a blank line; InvalidInputError otherwise."""
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    word, _, rest = text.partition(" ")
    name = word.lower()
    name = ALIASES.get(name, name)
    spec = SPECS.get(name)
    if spec is None:
        raise InvalidInputError(f"unknown command {word!r}; type help for the list")
    return _PARSERS[spec.args](spec, rest.strip(), max_digits, max_value)


def format_result(tag: int, cmd: Command, outcome: Result | ChordError) -> str:
    if isinstance(outcome, ChordError):
        return f"[{tag}] ERR {cmd.name} {cmd.key}: {outcome}"
    if cmd.name == "read":
        value = (outcome.value or b"").decode("utf-8", "backslashreplace")
        return f"[{tag}] OK read {cmd.key} -> {value}  (node {outcome.node_index})"
    return f"[{tag}] OK {outcome.message}"


class Shell:
    """The session: one client (one channel), a reader and a printer thread."""

    def __init__(self, client: Client, config: Config | None, out: TextIO | None = None,
                 err: TextIO | None = None, grace: float | None = None):
        self.client = client
        self.config = config
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.grace = grace if grace is not None else (
            config.client.grace if config else ClientConfig.grace)
        self.max_digits = client.max_digits
        self.max_value = client.max_value
        self._replies: queue.SimpleQueue = queue.SimpleQueue()
        self._pending = 0
        self._cond = threading.Condition()
        self._tag = 0
        self.failed = 0
        self.invalid = 0
        self._printer = threading.Thread(target=self._print_loop, name="shell-printer",
                                         daemon=True)

    # -- printer thread -------------------------------------------------------

    def _print_loop(self) -> None:
        while True:
            item = self._replies.get()
            if item is None:
                return
            text, to_err = item
            stream = self.err if to_err else self.out
            print(text, file=stream, flush=True)

    def say(self, text: str, error: bool = False) -> None:
        """Print through the printer thread, so output never interleaves mid-line."""
        self._replies.put((text, error))

    # -- reader side ----------------------------------------------------------

    def handle(self, line: str) -> bool:
        """Validate and send one line; False when input should end."""
        try:
            cmd = parse_command(line, self.max_digits, self.max_value)
        except InvalidInputError as e:
            self.invalid += 1
            self.say(f"error: {e} (not sent)", error=True)
            return True
        if cmd is None:
            return True
        if cmd.name == "exit":
            return False
        if cmd.name == "help":
            self.say(command_help(cmd.topic) if cmd.topic else HELP)
            return True
        if cmd.name in ("ring", "locate"):
            self.say(self._local_view(cmd))
            return True
        if cmd.name in ("scan", "count"):
            self._range(cmd)
            return True
        self._tag += 1
        tag = self._tag
        with self._cond:
            self._pending += 1
        try:
            self.client.submit_ordered(
                cmd.name, cmd.key, cmd.value,
                callback=lambda out, t=tag, c=cmd: self._on_reply(t, c, out))
        except ChordError as e:
            self._on_reply(tag, cmd, e)
        return True

    def _on_reply(self, tag: int, cmd: Command, outcome: Result | ChordError) -> None:
        failed = isinstance(outcome, ChordError)
        # Replies, failed or not, are the session's output: all on stdout, in
        # arrival order; stderr is for the shell's own notices.
        self._replies.put((format_result(tag, cmd, outcome), False))
        with self._cond:
            self._pending -= 1
            if failed:
                self.failed += 1
            self._cond.notify_all()

    def _range(self, cmd: Command) -> None:
        """scan / count, on the reader's thread: after every reply still
        pending (so it sees what this session wrote before it), then printed
        whole; a failure counts as a failed request."""
        from chordctl import render
        self.wait_pending(self.client.timeout + self.grace)
        self._tag += 1
        tag = self._tag
        where = f"[{cmd.start or 0}, {cmd.end if cmd.end is not None else 'end'})"
        try:
            if cmd.name == "count":
                counts = self.client.count(cmd.start, cmd.end)
                down = [n for n in counts if n.error is not None]
                total = sum(n.keys for n in counts if n.error is None)
                keys = [n.state.upper() if n.error else n.keys for n in counts]
                who = ["-" if n.index is None else n.index for n in counts]
                if any(n.arc is not None for n in counts):   # ring.replicas > 1
                    table = render.table([[n.arc, w, k] for n, w, k in zip(counts, who, keys)],
                                         ["arc", "answered by", "keys"])
                else:
                    table = render.table([[w, k] for w, k in zip(who, keys)], ["node", "keys"])
                text = (f"[{tag}] {'ERR' if down else 'OK'} count {where}: {total} keys"
                        + (" (incomplete)" if down else "") + "\n" + table)
                for n in down:
                    text += f"\n  {n.error}"
                if down:
                    self.failed += 1
                self.say(text)
                return
            entries = []
            for e in self.client.scan(cmd.start, cmd.end, limit=SCAN_SHOWN + 1):
                entries.append(e)
            more = len(entries) > SCAN_SHOWN
            lines = [f"[{tag}] OK scan {where}: "
                     + (f"the first {SCAN_SHOWN} keys (chordctl kv scan lists them all)"
                        if more else f"{len(entries)} keys")]
            lines += [f"  {e.key} -> {e.value.decode('utf-8', 'backslashreplace')}"
                      for e in entries[:SCAN_SHOWN]]
            self.say("\n".join(lines))
        except ChordError as e:
            self.failed += 1
            self.say(f"[{tag}] ERR {cmd.name} {where}: {e}")

    def _local_view(self, cmd: Command) -> str:
        from chordctl import render
        from chordctl.core.ring import Ring
        from chordctl.status import HEADERS, node_at, poll_nodes, ring_rows
        if self.config is None:
            return "error: ring and locate need a config (-c PATH)"
        if cmd.name == "ring":
            rows, _ = ring_rows(self.config, poll_nodes(self.config))
            return render.table(rows, HEADERS)
        r = Ring.from_config(self.config)
        k, _ = parse_key(cmd.key, self.max_digits)
        owner = r.owner(k)
        # The route from the node this session talks to (--target), as its requests go.
        address = self.client.address or self.client.addresses[0]
        entry = node_at(self.config, address)
        where = f"node {entry}" if entry is not None else f"node 0 ({address} is not in the config)"
        route = " -> ".join(str(r.ids[i]) for i in r.route(entry or 0, k))
        return (f"key {cmd.key}: position {r.position(k)}, owner node {owner} "
                f"(id {r.ids[owner]}, {self.config.nodes[owner].address}); "
                f"route from {where}: {route}")

    def wait_pending(self, seconds: float) -> int:
        """Wait for replies still pending, at most *seconds*; returns how many never came."""
        deadline = time.monotonic() + seconds
        with self._cond:
            while self._pending > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return self._pending

    # -- sessions -------------------------------------------------------------

    def run(self, lines: Callable[[], str], strict: bool = True) -> int:
        """Feed lines from *lines* (raises EOFError at the end); returns the exit code.

        *strict* (piped input, scripts): 1 if any request failed, any line was
        invalid or any reply never came. An interactive session has already
        shown each of those as it happened, so leaving it exits 0.
        """
        self._printer.start()
        try:
            while True:
                try:
                    line = lines()
                except EOFError:
                    break
                except KeyboardInterrupt:
                    continue   # Ctrl-C clears the line
                if not self.handle(line):
                    break
        finally:
            missing = self.wait_pending(min(NOTICE_AFTER, self.grace))
            if missing:
                self.say(f"waiting up to {self.grace:g}s for {missing} pending "
                         f"repl{'y' if missing == 1 else 'ies'}...", error=True)
                missing = self.wait_pending(max(0.0, self.grace - NOTICE_AFTER))
            if missing:
                self.say(f"{missing} repl{'y' if missing == 1 else 'ies'} never came "
                         f"(gave up after {self.grace:g}s)", error=True)
            self._replies.put(None)
            self._printer.join(5.0)
        return 1 if strict and (self.failed or missing or self.invalid) else 0


def _history_path() -> str:
    return os.environ.get(HISTORY_ENV) or os.path.join(os.path.expanduser("~"),
                                                        ".chordctl_history")


def completions(text: str) -> list[str]:
    """What TAB offers for the text before the cursor: command names for the
    first word (and for ``help``'s argument), nothing inside arguments."""
    words = text.lstrip().split(" ")
    if len(words) == 1:
        return [n for n in COMMANDS if n.startswith(words[0].lower())]
    if len(words) == 2 and ALIASES.get(words[0].lower(), words[0].lower()) == "help":
        return [n for n in SPECS if n.startswith(words[1].lower())]
    return []


@contextlib.contextmanager
def _no_echo(fd: int):
    """Keep the terminal from echoing keys typed while no prompt is reading.

    Between two prompts (a command being handled, a reply printing) the
    terminal is back in its own mode, which echoes what is typed ahead
    wherever the cursor is, in among the replies; prompt_toolkit then reads
    the same keys and shows them again. With echo off they appear only once,
    in the next prompt's line. prompt_toolkit's raw mode restores this mode
    after each prompt; the original one is restored when the session ends.
    """
    import termios
    try:
        old = termios.tcgetattr(fd)
    except (termios.error, OSError):
        yield
        return
    quiet = list(old)
    quiet[3] &= ~(termios.ECHO | termios.ECHONL)
    termios.tcsetattr(fd, termios.TCSANOW, quiet)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSANOW, old)


def run_interactive(shell: Shell, target: str) -> int:
    from prompt_toolkit import PromptSession
    from prompt_toolkit.completion import Completer, Completion
    from prompt_toolkit.history import FileHistory
    from prompt_toolkit.layout.processors import Processor, Transformation
    from prompt_toolkit.patch_stdout import patch_stdout
    from prompt_toolkit.styles import Style

    class ShellCompleter(Completer):
        def get_completions(self, document, complete_event):
            text = document.text_before_cursor
            word = text.split(" ")[-1]
            for name in completions(text):
                spec = SPECS[ALIASES.get(name, name)]
                # The space after the name starts the arguments (and the hint).
                yield Completion(name + " ", -len(word), display=name,
                                 display_meta=spec.summary)

    class ArgHint(Processor):
        """Grey text after the cursor: the arguments the command still needs."""

        def apply_transformation(self, ti):
            doc = ti.document
            if ti.lineno == doc.line_count - 1 and doc.is_cursor_at_the_end:
                text = arg_hint(doc.text)
                if text:
                    return Transformation(ti.fragments + [("class:arg-hint", text)])
            return Transformation(ti.fragments)

    try:
        history = FileHistory(_history_path())
    except OSError:
        history = None
    session: PromptSession = PromptSession(
        history=history, completer=ShellCompleter(), input_processors=[ArgHint()],
        style=Style.from_dict({"arg-hint": "#888888"}))
    shell.say(f"connected to {target}; type help for commands, sair to leave")
    with _no_echo(sys.stdin.fileno()), patch_stdout(raw=True):
        # patch_stdout swaps sys.stdout; the printer must write to the patched one.
        shell.out = sys.stdout
        shell.err = sys.stdout
        return shell.run(lambda: session.prompt(f"chordctl {target}> "), strict=False)


def run_piped(shell: Shell, stream: TextIO) -> int:
    def next_line() -> str:
        line = stream.readline()
        if not line:
            raise EOFError
        return line

    return shell.run(next_line)
