"""What every command shares: the global options' state, config and client access."""

from __future__ import annotations

import dataclasses
import os

import click

from chordctl import config as config_mod
from chordctl.client import Client
from chordctl.config import Config


@dataclasses.dataclass
class State:
    config_path: str | None
    target: str | None
    output: str | None
    _config: Config | None = None

    def config(self) -> Config:
        if self._config is None:
            self._config = config_mod.load(self.config_path)
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


pass_state = click.make_pass_decorator(State)
