"""``chordctl ring``: the ring as the nodes report it, and where a key lives."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import click

from chordctl import render
from chordctl.cli.common import KeyCommand, State, pass_state
from chordctl.client import Client
from chordctl.config import Config
from chordctl.core.ring import Ring
from chordctl.core.request import parse_key
from chordctl.errors import ChordError, ExitStatus, InvalidInputError

STATUS_TIMEOUT = 1.0


def ring_of(cfg: Config) -> Ring:
    return Ring(cfg.ring.bits, len(cfg.nodes), cfg.ring.placement, cfg.ring.routing)


class NotServing(Exception):
    """The node answers health checks but is not serving (replaying, stopping)."""

    def __init__(self, health: str):
        super().__init__(f"health {health}: the node is recovering or shutting down")
        self.health = health


def poll_nodes(cfg: Config, timeout: float = STATUS_TIMEOUT) -> list[object]:
    """Health, then Admin.Status, of every node in parallel: a NodeStatus, or why not."""

    def one(address: str):
        try:
            with Client(cfg, target=address, timeout=timeout) as c:
                health = c.health(timeout=timeout)
                if health != "SERVING":
                    return NotServing(health)
                return c.status(timeout=timeout)
        except ChordError as e:
            return e

    with ThreadPoolExecutor(max_workers=min(32, len(cfg.nodes))) as pool:
        return list(pool.map(one, [n.address for n in cfg.nodes]))


def ring_rows(cfg: Config, statuses: list[object]) -> tuple[list[list], list[dict]]:
    ring = ring_of(cfg)
    rows, docs = [], []
    for i, node in enumerate(cfg.nodes):
        low, high = ring.arc(i)
        st = statuses[i]
        up = not isinstance(st, Exception)
        arc = f"({low}, {high}]"
        state = "up" if up else ("recovering" if isinstance(st, NotServing) else "down")
        rows.append([i, ring.ids[i], arc, node.address, state,
                     st.keys if up else "-", st.snapshot_counter if up else "-",
                     st.log_counter if up else "-"])
        doc = {"index": i, "id": str(ring.ids[i]), "arc": [str(low), str(high)],
               "arc_size": str(ring.arc_size(i)), "address": node.address, "up": up,
               "state": state}
        if up:
            doc.update({"keys": st.keys, "snapshot": st.snapshot_counter,
                        "log": st.log_counter, "last_seq": st.last_seq, "pid": st.pid,
                        "uptime_seconds": round(st.uptime_seconds, 3),
                        "rss_bytes": st.rss_bytes, "ready_seconds": round(st.ready_seconds, 3),
                        "recovery_seconds": round(st.recovery_seconds, 3),
                        "cpus": st.cpus, "event_loop": st.event_loop,
                        "routing": [{"role": e.role, "index": e.node_index, "id": e.node_id}
                                    for e in st.routing]})
        else:
            doc["error"] = str(st)
        docs.append(doc)
    return rows, docs


HEADERS = ["index", "id", "arc (low, id]", "address", "state", "keys", "snapshot", "log"]


def print_ring(cfg: Config, fmt: str, timeout: float = STATUS_TIMEOUT) -> int:
    """Print the ring table; returns how many nodes are down."""
    statuses = poll_nodes(cfg, timeout)
    rows, docs = ring_rows(cfg, statuses)
    click.echo(render.render_rows(rows, HEADERS, fmt, docs))
    return sum(1 for s in statuses if isinstance(s, Exception))


def node_at(cfg: Config, address: str) -> int | None:
    """The index of the config's node at *address* (HOST:PORT as written), or None."""
    for i, n in enumerate(cfg.nodes):
        if n.address == address:
            return i
    return None


@click.group()
def ring() -> None:
    """Inspect the ring."""


@ring.command()
@click.option("--timeout", type=float, default=STATUS_TIMEOUT, show_default=True,
              help="Seconds to wait for each node before marking it down.")
@pass_state
def show(state: State, timeout: float) -> None:
    """Every node of the config: id, owned arc, address, up/down, keys, snapshot.

    Nodes are asked in parallel (gRPC health, then Admin.Status); one that
    does not answer within --timeout is marked down, one whose health is not
    SERVING (replaying its log, shutting down) is marked recovering, and the
    others are still shown. Exit 3 if any node is not up.

    \b
    Example:
        chordctl -c examples/configs/ring4.yaml ring show
        chordctl -o json ring show
    """
    cfg = state.config()
    down = print_ring(cfg, state.fmt("table"), timeout)
    if down:
        click.secho(f"chordctl: {down} of {len(cfg.nodes)} node(s) down", fg="red", err=True)
        click.get_current_context().exit(int(ExitStatus.UNAVAILABLE))


@ring.command(cls=KeyCommand)
@click.argument("key")
@click.option("--from", "entry", type=int, default=None, metavar="I",
              help="Entry node index the route starts from [default: the --target node, "
                   "else node 0].")
@pass_state
def locate(state: State, key: str, entry: int | None) -> None:
    """KEY's ring position, its owner, and the route from an entry node.

    Computed from the config alone (the same pure ring arithmetic the nodes
    use); `kv read KEY --trace` shows the route a live request takes. The
    route starts at --from I, or at the node --target names, or at node 0.

    \b
    Example:
        chordctl ring locate 10
        chordctl ring locate 10 --from 2
        chordctl ring locate 10 --target 127.0.0.1:50052
    """
    cfg = state.config()
    try:
        k, _ = parse_key(key, cfg.limits.max_key_digits)
    except ValueError as e:
        raise InvalidInputError(str(e)) from None
    if state.target:
        at = node_at(cfg, state.target)
        if at is None:
            raise InvalidInputError(
                f"ring: --target {state.target} is not a node of the config (nodes: "
                f"{', '.join(n.address for n in cfg.nodes)}); give one of them, or --from I")
        if entry is not None and entry != at:
            raise InvalidInputError(f"ring: --from {entry} and --target {state.target} "
                                    f"(node {at}) name different entry nodes; give one")
        entry = at
    entry = 0 if entry is None else entry
    cfg.node(entry)
    r = ring_of(cfg)
    pos = r.position(k)
    owner = r.owner_of_position(pos)
    route = r.route(entry, k)
    low, high = r.arc(owner)
    fmt = state.fmt("table")
    if fmt == "json":
        click.echo(render.to_json({
            "key": key, "position": str(pos), "placement": r.placement,
            "owner": {"index": owner, "id": str(r.ids[owner]),
                      "address": cfg.nodes[owner].address, "arc": [str(low), str(high)]},
            "entry": entry,
            "route": [{"index": i, "id": str(r.ids[i])} for i in route],
            "hops": len(route) - 1}))
        return
    rows = [["key", key], ["position", f"{pos} ({r.placement} placement, m={r.bits})"],
            ["owner", f"node {owner} (id {r.ids[owner]}, {cfg.nodes[owner].address})"],
            ["owner arc", f"({low}, {high}]"],
            ["entry", f"node {entry} (id {r.ids[entry]}, {cfg.nodes[entry].address})"],
            ["route", " -> ".join(f"{r.ids[i]}" for i in route)],
            ["hops", str(len(route) - 1)]]
    if fmt == "plain":
        click.echo(render.plain(rows))
    else:
        click.echo(render.table(rows, ["field", "value"]))
