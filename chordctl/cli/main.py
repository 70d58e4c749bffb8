"""The ``chordctl`` entry point: global options, error -> exit code mapping."""

from __future__ import annotations

import sys

import click

from chordctl import __version__
from chordctl.cli.common import CONFIG_HELP, OUTPUT_HELP, TARGET_HELP, State
from chordctl.errors import ChordError
from chordctl.render import FORMATS


class ChordGroup(click.Group):
    """Turns every ChordError into its message and exit code, never a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ChordError as e:
            click.secho(f"chordctl: {e}", fg="red", err=True)
            ctx.exit(int(e.exit_status))
        except KeyboardInterrupt:
            click.echo("chordctl: interrupted", err=True)
            ctx.exit(130)
        except BrokenPipeError:
            sys.stderr.close()
            ctx.exit(0)


@click.group(cls=ChordGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-c", "--config", "config_path", metavar="PATH", envvar="CHORDCTL_CONFIG",
              help=CONFIG_HELP)
@click.option("--target", metavar="HOST:PORT", help=TARGET_HELP)
@click.option("-o", "--output", type=click.Choice(FORMATS), default=None, help=OUTPUT_HELP)
@click.version_option(__version__, prog_name="chordctl")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, target: str | None,
        output: str | None) -> None:
    """chordctl: a sharded, durable key-value store on a Chord ring.

    \b
    Exit codes: 0 ok, 1 the operation failed (not found, already exists),
    2 usage or invalid input, 3 cluster unreachable or timed out.

    \b
    Example:
        chordctl -c examples/configs/ring4.yaml cluster up
        chordctl -c examples/configs/ring4.yaml kv create 10 hello
    """
    ctx.obj = State(config_path=config_path, target=target, output=output)


def _register() -> None:
    from chordctl.cli import bench, cluster, kv, logs, node, ring, shell, snapshot
    for group in (node.node, kv.kv, ring.ring, cluster.cluster, snapshot.snapshot, logs.log,
                  shell.shell, bench.bench):
        cli.add_command(group)


_register()


def main() -> None:
    cli(prog_name="chordctl")
