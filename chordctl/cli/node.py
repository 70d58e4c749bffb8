"""``chordctl node``: run one node of the config in the foreground."""

from __future__ import annotations

import click

from chordctl import cpulist
from chordctl.cli.common import State, pass_state
from chordctl.core import affinity, eventloop, nodelog
from chordctl.errors import InvalidInputError


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
@click.option("--take-over", is_flag=True,
              help="This node moved to the address the config gives it, and the address "
                   "the ring has it at does not answer at all: its old host is gone for "
                   "good, take its place (a refused connection needs no flag).")
@click.option("--new-ring", is_flag=True,
              help="With ring.replicas > 1: this is the first start of a new ring, whose "
                   "nodes all start on empty directories. A replica is then full once a "
                   "majority of its arc says it is new, and an arc serves once a majority "
                   "of its replicas is up (without it: once all are). Never give it to a "
                   "node replacing one whose directory was lost: that one must learn its "
                   "arcs first (`cluster up` passes it only when no node of the config has "
                   "started before). A node that started before ignores it.")
@pass_state
def serve(state: State, index: int, log_level: str, log_format: str,
          cpus: str | None, take_over: bool, new_ring: bool) -> None:
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
            pin = None if cpus == cpulist.NONE else cpulist.parse_cpulist(cpus)
        except ValueError as e:
            raise InvalidInputError(f"node: --cpus {e}") from None
    if pin is not None:
        try:
            affinity.pin_process(pin)
        except (OSError, ValueError) as e:
            raise InvalidInputError(f"node: cannot pin node {index} to CPUs "
                                    f"{cpulist.format_cpulist(pin)}: {e}; change the node's "
                                    f"`cpus` in the config or pass --cpus none") from None
    try:
        loop = eventloop.choice()
    except ValueError as e:
        raise InvalidInputError(f"node: {e}") from None
    nodelog.setup(index, node_id(cfg.ring.bits, len(cfg.nodes), index), log_level, log_format)
    try:
        eventloop.run(serve_node(cfg, index, take_over=take_over, new_ring=new_ring), loop)
    except KeyboardInterrupt:
        pass
