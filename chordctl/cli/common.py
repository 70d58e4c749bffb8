"""What every command shares: the global options' state, config and client access."""

from __future__ import annotations

import dataclasses
import os

import click

from chordctl import config as config_mod
from chordctl.client import Client
from chordctl.config import Config
from chordctl.core.request import allow_key_digits


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
