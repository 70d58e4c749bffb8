"""``chordctl node``: run one node of the config in the foreground."""

from __future__ import annotations

import json
import logging
import sys

import click

from chordctl.cli.common import State, pass_state
from chordctl.core import affinity, eventloop
from chordctl.errors import InvalidInputError


class _JsonFormatter(logging.Formatter):
    def __init__(self, index: int, node_id: int):
        super().__init__()
        self.index = index
        self.node_id = node_id

    def format(self, record: logging.LogRecord) -> str:
        doc = {"time": self.formatTime(record), "level": record.levelname,
               "node": self.index, "id": str(self.node_id), "logger": record.name,
               "thread": record.threadName, "msg": record.getMessage()}
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc)


def setup_logging(index: int, node_id: int, level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter(index, node_id))
    else:
        handler.setFormatter(logging.Formatter(
            f"%(asctime)s %(levelname)s node-{index} id={node_id} %(threadName)s "
            f"%(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


@click.group()
def node() -> None:
    """Run a node.

    \b
    Example:
        chordctl -c examples/configs/ring4.yaml node serve --node 0
    """


@node.command()
@click.option("--node", "index", type=int, required=True, metavar="I",
              help="Index of this node in the config's nodes list (0-based).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              default="info", show_default=True)
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text",
              show_default=True)
@click.option("--cpus", metavar="LIST|none",
              help="Pin the node process to these CPUs (0, 0-3, 0,2), or `none` to "
                   "leave it unpinned [default: the node's `cpus` in the config, "
                   "else unpinned].")
@pass_state
def serve(state: State, index: int, log_level: str, log_format: str,
          cpus: str | None) -> None:
    """Run node I of the config in the foreground until SIGTERM or Ctrl-C.

    The node replays its snapshot and log before it answers any request.
    A first signal shuts it down cleanly (replies to everything in flight,
    fsyncs the log); a second one exits at once.

    \b
    Example:
        chordctl -c examples/configs/single.yaml node serve --node 0
    """
    from chordctl.core.ring import node_id
    from chordctl.core.server import serve as serve_node

    cfg = state.config()
    node_cfg = cfg.node(index)
    pin = node_cfg.cpus
    if cpus is not None:
        try:
            pin = None if cpus == affinity.NONE else affinity.parse_cpulist(cpus)
        except ValueError as e:
            raise InvalidInputError(f"node: --cpus {e}") from None
    if pin is not None:
        try:
            affinity.pin_process(pin)
        except (OSError, ValueError) as e:
            raise InvalidInputError(f"node: cannot pin node {index} to CPUs "
                                    f"{affinity.format_cpulist(pin)}: {e}; change the node's "
                                    f"`cpus` in the config or pass --cpus none") from None
    try:
        loop = eventloop.choice()
    except ValueError as e:
        raise InvalidInputError(f"node: {e}") from None
    setup_logging(index, node_id(cfg.ring.bits, len(cfg.nodes), index), log_level, log_format)
    try:
        eventloop.run(serve_node(cfg, index), loop)
    except KeyboardInterrupt:
        pass
