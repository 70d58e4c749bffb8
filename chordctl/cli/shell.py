"""``chordctl shell``: the interactive session."""

from __future__ import annotations

import sys

import click

from chordctl.cli.common import Seconds, State, pass_state
from chordctl.client import CONNECT_TIMEOUT
from chordctl.errors import UnavailableError
from chordctl.shell import Shell, run_interactive, run_piped


@click.command()
@click.option("--grace", type=Seconds(), default=None,
              help="Seconds to wait for pending replies on exit [default: client.grace].")
@pass_state
def shell(state: State, grace: float | None) -> None:
    """Interactive session: commands are sent without waiting, replies print as they come.

    Type `help` for the commands, `help COMMAND` for one; TAB completes
    command names and the syntax of the command being typed shows below the
    prompt. History is kept in ~/.chordctl_history ($CHORDCTL_HISTORY).
    Commands can be piped in: then the exit code is 1 if any request failed
    or any line was invalid (an interactive session exits 0). Exit 3 if no
    node answers at start.

    \b
    Example:
        chordctl -c examples/configs/ring4.yaml shell
        printf 'create 1 a\\nread 1\\n' | chordctl shell
    """
    client = state.client()
    try:
        target = client.connect()
        if len(client.addresses) == 1:
            # connect() does not check a single address: ask it, so a ring
            # that is down is said once, with exit 3, not after a prompt.
            client.health(timeout=CONNECT_TIMEOUT)
    except UnavailableError as e:
        client.close()
        raise UnavailableError(f"shell: no node answered; {e}") from None
    sh = Shell(client, state.config_or_none(), grace=grace)
    try:
        if sys.stdin.isatty() and sys.stdout.isatty():
            code = run_interactive(sh, target)
        else:
            code = run_piped(sh, sys.stdin)
    finally:
        client.close()
    click.get_current_context().exit(code)
