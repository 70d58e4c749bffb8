"""``chordctl shell``: the interactive session."""

from __future__ import annotations

import sys

import click

from chordctl.cli.common import State, pass_state
from chordctl.errors import UnavailableError
from chordctl.shell import Shell, run_interactive, run_piped


@click.command()
@click.option("--grace", type=float, default=None,
              help="Seconds to wait for pending replies on exit [default: client.grace].")
@pass_state
def shell(state: State, grace: float | None) -> None:
    """Interactive session: commands are sent without waiting, replies print as they come.

    Type `help` for the commands. History is kept in ~/.chordctl_history
    ($CHORDCTL_HISTORY). Commands can be piped in: the exit code is 1 if
    any request failed or any line was invalid.

    \b
    Example:
        chordctl -c examples/configs/ring4.yaml shell
        printf 'create 1 a\\nread 1\\n' | chordctl shell
    """
    client = state.client()
    try:
        target = client.connect()
    except UnavailableError as e:
        # Stay up: requests fail with a clear message until a node is back.
        click.secho(f"chordctl: {e}", fg="yellow", err=True)
        target = client.addresses[0]
        client.open(target)
    sh = Shell(client, state.config_or_none(), grace=grace)
    try:
        if sys.stdin.isatty() and sys.stdout.isatty():
            code = run_interactive(sh, target)
        else:
            code = run_piped(sh, sys.stdin)
    finally:
        client.close()
    click.get_current_context().exit(code)
