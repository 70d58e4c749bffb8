"""The ``chordctl`` entry point: global options, error -> exit code mapping."""

from __future__ import annotations

import chordctl.grpcenv  # noqa: F401  (first: gRPC's environment, before grpc loads)

import logging
import sys

import click

from chordctl import __version__
from chordctl.cli.common import CONFIG_HELP, OUTPUT_HELP, TARGET_HELP, State
from chordctl.errors import ChordError
from chordctl.render import FORMATS, failure_json


_ARGV = "chordctl.argv"


def _wants_json(ctx: click.Context) -> bool:
    """Whether -o json was asked for, globally or after the command name.

    Read from the command line itself, so a command whose own arguments
    failed to parse (its -o never processed) still answers in JSON.
    """
    fmt = None
    args = ctx.meta.get(_ARGV, [])
    for i, a in enumerate(args):
        if a == "--":
            break
        if a in ("-o", "--output") and i + 1 < len(args):
            fmt = args[i + 1]
        elif a.startswith("--output="):
            fmt = a.split("=", 1)[1]
        elif a.startswith("-o") and not a.startswith("--") and len(a) > 2:
            fmt = a[2:]
    if fmt is None:
        state = ctx.find_object(State)
        fmt = state.output if state is not None else None
    return fmt == "json"


def _fail_json(ctx: click.Context, message: str, code: int) -> None:
    """Under -o json, a failure is a document on stdout too: ok false, error, exit."""
    if _wants_json(ctx):
        click.echo(failure_json(message, code))


class ChordGroup(click.Group):
    """Turns every ChordError into its message and exit code, never a traceback.

    The one place failures are reported: on stderr for people and, under
    ``-o json``, as ``{"ok": false, "error": ..., "exit": N}`` on stdout.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta[_ARGV] = list(args)
        try:
            return super().parse_args(ctx, args)
        except click.ClickException as e:
            _fail_json(ctx, e.format_message(), e.exit_code)
            raise

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ChordError as e:
            _fail_json(ctx, str(e), int(e.exit_status))
            click.secho(f"chordctl: {e}", fg="red", err=True)
            ctx.exit(int(e.exit_status))
        except click.ClickException as e:       # usage errors of the subcommands
            _fail_json(ctx, e.format_message(), e.exit_code)
            raise
        except KeyboardInterrupt:
            _fail_json(ctx, "interrupted", 130)
            click.echo("chordctl: interrupted", err=True)
            ctx.exit(130)
        except BrokenPipeError:
            sys.stderr.close()
            ctx.exit(0)


LOG_LEVELS = ("debug", "info", "warning", "error")


def setup_logging(level: str | None) -> None:
    """--log-level: the client's log (e.g. gRPC's own reason for a failure) on stderr."""
    if level is None:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("chordctl: %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


@click.group(cls=ChordGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-c", "--config", "config_path", metavar="PATH", envvar="CHORDCTL_CONFIG",
              help=CONFIG_HELP)
@click.option("--target", metavar="HOST:PORT", help=TARGET_HELP)
@click.option("-o", "--output", type=click.Choice(FORMATS), default=None, help=OUTPUT_HELP)
@click.option("--log-level", type=click.Choice(LOG_LEVELS), default=None,
              help="Log to stderr at this level; debug adds gRPC's own words to failures.")
@click.version_option(__version__, prog_name="chordctl")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, target: str | None,
        output: str | None, log_level: str | None) -> None:
    """chordctl: a sharded, durable key-value store on a Chord ring.

    \b
    Exit codes: 0 ok, 1 the operation failed (not found, already exists),
    2 usage or invalid input, 3 cluster unreachable or timed out.
    Under -o json every command prints one JSON document on stdout, a
    failure too: {"ok": false, "error": "...", "exit": N}; indented on a
    terminal, on one line otherwise.

    \b
    Example:
        chordctl -c examples/configs/ring4.yaml cluster up
        chordctl -c examples/configs/ring4.yaml kv create 10 hello
    """
    setup_logging(log_level)
    ctx.obj = State(config_path=config_path, target=target, output=output)


def _register() -> None:
    from chordctl.cli import bench, cluster, kv, logs, node, ring, shell, snapshot
    for group in (node.node, kv.kv, ring.ring, cluster.cluster, snapshot.snapshot, logs.log,
                  shell.shell, bench.bench):
        cli.add_command(group)


_register()


def main() -> None:
    cli(prog_name="chordctl")
