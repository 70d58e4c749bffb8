"""``chordctl shell``: the assignment's asynchronous client, made comfortable.

Two threads, as the assignment asks: the *reader* (the caller's thread) reads
a command, validates it and sends it without waiting; the *printer* prints
each reply as it arrives, tagged with the request it answers. With a terminal,
prompt_toolkit keeps the line being typed intact while replies print
(patch_stdout), keeps history in a file and completes commands with TAB.
Without one (a pipe, a script) commands are read line by line.

After input ends (``sair``, ``exit``, ``quit``, Ctrl-D or end of file) the
shell waits for pending replies, at most ``client.grace`` seconds.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import sys
import threading
import time
from typing import Callable, TextIO

from chordctl.client import Client, Result
from chordctl.config import Config
from chordctl.core.request import parse_key
from chordctl.errors import ChordError, InvalidInputError

EXIT_WORDS = ("sair", "exit", "quit")
COMMANDS = ("create", "read", "update", "delete", "ring", "locate", "help") + EXIT_WORDS
HISTORY_ENV = "CHORDCTL_HISTORY"
NOTICE_AFTER = 0.5   # say that we are waiting only when replies are slow

HELP = """\
Commands (case-insensitive; replies arrive tagged [n] as they come):
  create KEY VALUE   create KEY; fails if it exists      create 10 hello world
  read KEY           print KEY's value                   read 10
  update KEY VALUE   replace KEY's value                 update 10 bye
  delete KEY         delete KEY                          delete 10
  locate KEY         KEY's position, owner and route     locate 10
  ring               the nodes, their arcs and state     ring
  help               this menu
  sair | exit | quit end input (also Ctrl-D); pending replies are awaited
KEY is a non-negative integer; VALUE is the rest of the line."""


@dataclasses.dataclass(frozen=True)
class Command:
    name: str                 # create | read | update | delete | ring | locate | help | exit
    key: str | None = None
    value: bytes | None = None


def parse_command(line: str, max_digits: int = 4096,
                  max_value: int = 1024 * 1024) -> Command | None:
    """One input line -> a Command, None for a blank line; InvalidInputError otherwise."""
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    word, _, rest = text.partition(" ")
    name = word.lower()
    rest = rest.strip()
    if name in EXIT_WORDS:
        return Command("exit")
    if name in ("help", "?", "ring"):
        if rest:
            raise InvalidInputError(f"{name} takes no arguments")
        return Command("help" if name == "?" else name)
    if name not in ("create", "read", "update", "delete", "locate"):
        raise InvalidInputError(f"unknown command {word!r}; type help for the list")
    key, _, value = rest.partition(" ")
    if not key:
        usage = f"{name} KEY VALUE" if name in ("create", "update") else f"{name} KEY"
        raise InvalidInputError(f"{name} needs a key; usage: {usage}")
    try:
        parse_key(key, max_digits)
    except ValueError as e:
        raise InvalidInputError(str(e)) from None
    if name in ("create", "update"):
        if not value.strip():
            raise InvalidInputError(f"{name} needs a value; usage: {name} KEY VALUE")
        data = value.strip().encode("utf-8", "surrogateescape")
        if len(data) > max_value:
            raise InvalidInputError(f"value of {len(data)} bytes is over the limit of "
                                    f"{max_value} bytes (limits.max_value_bytes)")
        return Command(name, key, data)
    if value.strip():
        raise InvalidInputError(f"{name} takes only a key; usage: {name} KEY")
    return Command(name, key)


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
        self.grace = grace if grace is not None else (config.client.grace if config else 5.0)
        self.max_digits = client.max_digits
        self.max_value = client.max_value
        self._replies: queue.SimpleQueue = queue.SimpleQueue()
        self._pending = 0
        self._cond = threading.Condition()
        self._tag = 0
        self.failed = 0
        self.sent = 0
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
            self.say(HELP)
            return True
        if cmd.name in ("ring", "locate"):
            self.say(self._local_view(cmd))
            return True
        self._tag += 1
        tag = self._tag
        with self._cond:
            self._pending += 1
        self.sent += 1
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

    def _local_view(self, cmd: Command) -> str:
        from chordctl import render
        from chordctl.cli.ring import HEADERS, node_at, poll_nodes, ring_of, ring_rows
        if self.config is None:
            return "error: ring and locate need a config (-c PATH)"
        if cmd.name == "ring":
            rows, _ = ring_rows(self.config, poll_nodes(self.config))
            return render.table(rows, HEADERS)
        r = ring_of(self.config)
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

    def run(self, lines: Callable[[], str]) -> int:
        """Feed lines from *lines* (raises EOFError at the end); returns the exit code."""
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
        return 1 if (self.failed or missing or self.invalid) else 0


def _history_path() -> str:
    return os.environ.get(HISTORY_ENV) or os.path.join(os.path.expanduser("~"),
                                                        ".chordctl_history")


def run_interactive(shell: Shell, target: str) -> int:
    from prompt_toolkit import PromptSession
    from prompt_toolkit.completion import WordCompleter
    from prompt_toolkit.history import FileHistory
    from prompt_toolkit.patch_stdout import patch_stdout

    try:
        history = FileHistory(_history_path())
    except OSError:
        history = None
    session = PromptSession(history=history,
                            completer=WordCompleter(list(COMMANDS), ignore_case=True))
    shell.say(f"connected to {target}; type help for commands, sair to leave")
    with patch_stdout(raw=True):
        # patch_stdout swaps sys.stdout; the printer must write to the patched one.
        shell.out = sys.stdout
        shell.err = sys.stdout
        return shell.run(lambda: session.prompt(f"chordctl {target}> "))


def run_piped(shell: Shell, stream: TextIO) -> int:
    def next_line() -> str:
        line = stream.readline()
        if not line:
            raise EOFError
        return line

    return shell.run(next_line)
