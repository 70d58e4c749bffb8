"""What every command shares: the global options' state, config and client access."""

from __future__ import annotations

import dataclasses
import math
import os
import re

import click

from chordctl import config as config_mod
from chordctl.client import Client
from chordctl.config import Config
from chordctl.protocol import allow_key_digits


@dataclasses.dataclass
class State:
    config_path: str | None
    target: str | None
    output: str | None
    _config: Config | None = None

    def config(self) -> Config:
        if self._config is None:
            self._config = config_mod.load(self.config_path)
            allow_key_digits(self._config.limits.max_key_digits)
        return self._config

    def config_or_none(self) -> Config | None:
        """The config, or None when only --target was given and no file exists."""
        path = self.config_path or os.environ.get(config_mod.ENV_CONFIG) \
            or config_mod.DEFAULT_CONFIG
        if self.target and not os.path.exists(path):
            return None
        return self.config()

    def client(self) -> Client:
        return Client(self.config_or_none(), self.target)

    def fmt(self, default: str) -> str:
        return self.output or default


_get_state = click.make_pass_decorator(State)

CONFIG_HELP = "Config file [default: ./chordctl.yaml, or $CHORDCTL_CONFIG]."
TARGET_HELP = "Talk to this node instead of the config's first reachable one."
OUTPUT_HELP = "Output format [default: per command]."


def _override(field: str):
    def callback(ctx: click.Context, _param, value):
        if value is not None:
            setattr(ctx.find_object(State), field, value)
        return value
    return callback


def shared_options(f):
    """-c/--config, --target and -o/--output, accepted after the command name too
    (``chordctl kv read 10 --target 127.0.0.1:50062``), overriding the global ones."""
    from chordctl.render import FORMATS
    f = click.option("-o", "--output", type=click.Choice(FORMATS), expose_value=False,
                     callback=_override("output"), help=OUTPUT_HELP)(f)
    f = click.option("--target", metavar="HOST:PORT", expose_value=False,
                     callback=_override("target"), help=TARGET_HELP)(f)
    f = click.option("-c", "--config", metavar="PATH", expose_value=False,
                     callback=_override("config_path"), help=CONFIG_HELP)(f)
    return f


def pass_state(f):
    """Pass the State, and accept the shared options on this command as well."""
    return shared_options(_get_state(f))


_NUMBER_LIKE = re.compile(r"-\d")


class KeyCommand(click.Command):
    """A command whose first argument is a KEY: unknown options are usage errors.

    A first argument that looks like a negative number (``-5``) is the KEY,
    so the key parser can say that keys are non-negative; any other token
    that begins with ``-`` before ``--`` is an option, and an unknown one is
    an error (exit 2) -- it never becomes a value. A value that begins with
    ``-`` goes after ``--``, as in every POSIX tool.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        takes_value = {}
        for p in self.get_params(ctx):
            if isinstance(p, click.Option):
                for name in (*p.opts, *p.secondary_opts):
                    takes_value[name] = not (p.is_flag or p.count)
        opts: list[str] = []
        positional: list[str] = []
        i = 0
        while i < len(args):
            a = args[i]
            i += 1
            if a == "--":
                positional.extend(args[i:])
                break
            if not a.startswith("-") or a == "-":
                positional.append(a)
            elif not positional and _NUMBER_LIKE.match(a):
                positional.append(a)         # KEY "-5": the key parser explains
            else:
                opts.append(a)
                attached = "=" in a if a.startswith("--") else len(a) > 2
                if takes_value.get(a) and not attached and i < len(args):
                    opts.append(args[i])
                    i += 1
        try:
            return super().parse_args(ctx, opts + ["--"] + positional if positional else opts)
        except click.NoSuchOption as e:
            if len(positional) != 1 or not any(p.name == "value" for p in self.params):
                raise
            token = next((a for a in opts if a.startswith(e.option_name)), e.option_name)
            raise click.UsageError(
                f"{e.format_message()} A value that begins with '-' goes after '--': "
                f"{ctx.command_path} {positional[0]} -- {token}", ctx) from None


class Seconds(click.ParamType):
    """A number of seconds for an option: finite, 0 (or above 0 with
    *positive*) up to a day. A NaN would wait forever (``cluster up --wait``)
    or not at all (``cluster down --timeout`` killing every node at once)."""

    name = "seconds"

    def __init__(self, positive: bool = False):
        self.positive = positive

    def convert(self, value, param, ctx):
        try:
            x = float(value)
        except (TypeError, ValueError):
            x = math.nan
        low_ok = x > 0 if self.positive else x >= 0
        if not (math.isfinite(x) and low_ok and x <= config_mod.MAX_SECONDS):
            low = "above 0" if self.positive else "0"
            self.fail(f"{value!r} is not a number of seconds from {low} to "
                      f"{config_mod.MAX_SECONDS} (a day)", param, ctx)
        return x
