"""``chordctl ring``: the ring as the nodes report it, and where a key lives."""

from __future__ import annotations

import click

from chordctl import render
from chordctl.cli.common import KeyCommand, Seconds, State, pass_state
from chordctl.config import Config
from chordctl.core.ring import Ring
from chordctl.errors import ExitStatus, InvalidInputError
from chordctl.protocol import check_key
from chordctl.status import (ARC_HEADERS, HEADERS, STATUS_TIMEOUT, arc_rows, moved_nodes,
                             node_at, node_state, poll_nodes, ring_rows, ring_view,
                             unserved_arcs)


def print_ring(cfg: Config, fmt: str, timeout: float = STATUS_TIMEOUT) -> tuple[int, str]:
    """Print the ring table; returns how many nodes are not up, and (ring.replicas
    > 1) a line naming the arcs that cannot serve ("" when every arc has a leader)."""
    statuses = poll_nodes(cfg, timeout)
    rows, docs = ring_rows(cfg, statuses)
    click.echo(render.render_rows(rows, HEADERS, fmt, docs))
    view = ring_view(cfg, statuses)
    for i, there, config_says in moved_nodes(cfg, view):
        # (stderr: the tables stay parseable; not an error, the exit code is the state's)
        click.secho(f"chordctl: ring: * node {i} is at {there} by the ring's membership "
                    f"(epoch {view.epoch}), not at {config_says} as this config says: it "
                    f"moved, and its peers route there; update nodes[{i}] in the config",
                    fg="yellow", err=True)
    unserved = ""
    if cfg.ring.replicas > 1:
        arcs, arc_docs = arc_rows(cfg, statuses)
        if fmt != "json":       # json: in each owner's "replication"
            click.echo("")
            click.echo(render.render_rows(arcs, ARC_HEADERS, fmt))
        unserved = unserved_arcs(arc_docs)
    return sum(1 for s in statuses if node_state(s) != "up"), unserved


@click.group()
def ring() -> None:
    """Inspect the ring; move a stopped ring's keys to another ring.

    \b
    Example:
        chordctl ring show
        chordctl ring locate 40000
        chordctl ring migrate --from ring4.yaml --to ring3.yaml
    """


@ring.command()
@click.option("--timeout", type=Seconds(positive=True), default=STATUS_TIMEOUT, show_default=True,
              help="Seconds to wait for each node before marking it down.")
@pass_state
def show(state: State, timeout: float) -> None:
    """Every node of the config: id, owned arc, address, up/down, keys, snapshot.

    Nodes are asked in parallel (gRPC health, then Admin.Status); one that
    does not answer within --timeout is marked down, one whose health is not
    SERVING (replaying its log, shutting down) is marked recovering, one that
    fail-stopped (it could not write its log) `failed: <why>` (the whole
    reason under -o json), and the others are still shown. Exit 3 if any
    node is not up.

    With ring.replicas > 1 a second table shows each arc: its leader, term,
    each replica's state, and the arc's: serving, degraded (a leader, but a
    replica down, catching up or learning: it still serves), no leader, or
    cannot elect (its learners leave too few full replicas). Exit 3 too if
    any arc has no leader, even with every node up; a line on stderr names
    those arcs and what brings each back.

    \b
    Example:
        chordctl -c examples/configs/ring4.yaml ring show
        chordctl -o json ring show
    """
    cfg = state.config()
    down, unserved = print_ring(cfg, state.fmt("table"), timeout)
    if down:
        click.secho(f"chordctl: ring: {down} of {len(cfg.nodes)} node(s) not up; "
                    "`chordctl cluster up` starts the ones not running", fg="red", err=True)
    if unserved:
        click.secho(f"chordctl: ring: {unserved}", fg="red", err=True)
    if down or unserved:
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
    k, _ = check_key(key, cfg.limits.max_key_digits)
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
    r = Ring.from_config(cfg)
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


MIGRATE_HEADERS = ["node", "id", "arc (low, id]", "keys", "kept", "moved in", "from old nodes"]


@ring.command()
@click.option("--from", "old_path", required=True, metavar="OLD.yaml",
              help="The config the data was written under (every node stopped).")
@click.option("--to", "new_path", required=True, metavar="NEW.yaml",
              help="The config of the new ring.")
@click.option("--progress/--no-progress", "show", default=None,
              help="Show a progress bar on stderr [default: when stderr is a terminal].")
@pass_state
def migrate(state: State, old_path: str, new_path: str, show: bool | None) -> None:
    """Move every key of a stopped ring to the nodes that own it under another ring.

    Offline: every node of the OLD ring must be stopped (a running node
    holds its directory's lock, and the migration is refused). Each old
    node's state is read as a restart would read it, each key goes to its
    owner under NEW (other number of nodes, ring.bits or ring.placement), and
    each new node gets a fresh snapshot and the new ring identity.

    With the same storage.data_dir in both configs the new ring replaces the
    old one in place, and the old directories are kept, unchanged, in
    `<data_dir>.old-<timestamp>` (delete it once the new ring is checked).
    With another data_dir the old directories are left as they are. Until
    the new ring is in place, nothing of the old one is changed: an
    interrupted migration leaves the old ring as it was.

    Prints, per new node, its keys, how many stayed on the node of the same
    index, and how many moved in (and from where).

    \b
    Example:
        chordctl cluster down -c ring4.yaml
        chordctl ring migrate --from ring4.yaml --to ring3.yaml
        chordctl cluster up -c ring3.yaml
    """
    import sys

    from chordctl import config as config_mod
    from chordctl.core.storage import migrate as migration

    old, new = config_mod.load(old_path), config_mod.load(new_path)
    if show is None:
        show = sys.stderr.isatty()
    bars: dict[str, object] = {}

    def progress(phase: str, advance: int, total: int) -> None:
        if not show:
            return
        bar = bars.get(phase)
        if bar is None:
            for other in bars.values():
                other.render_finish()
            label = "reading old nodes" if phase == "read" else "writing new nodes"
            bar = bars[phase] = click.progressbar(length=max(total, 1), label=label,
                                                  file=sys.stderr)
        bar.update(advance)

    try:
        rep = migration.migrate(old, new, progress)
    finally:
        for bar in bars.values():
            bar.render_finish()
    for w in rep.warnings:
        click.secho(w, fg="yellow", err=True)
    rows, docs = [], []
    for n in rep.new_nodes:
        low, high = n.arc
        rows.append([n.index, n.id, f"({low}, {high}]", n.keys, n.kept, n.moved_in,
                     ", ".join(f"{i}: {c}" for i, c in sorted(n.sources.items())) or "-"])
        docs.append({"index": n.index, "id": str(n.id), "arc": [str(low), str(high)],
                     "directory": n.directory, "keys": n.keys, "kept": n.kept,
                     "moved_in": n.moved_in,
                     "from": {str(i): c for i, c in sorted(n.sources.items())}})
    fmt = state.fmt("table")
    if fmt == "json":
        click.echo(render.to_json({
            "from": {"config": old_path, "data_dir": rep.old_data_dir,
                     "nodes": rep.old_ring.nodes, "bits": rep.old_ring.bits,
                     "placement": rep.old_ring.placement,
                     "fingerprint": rep.old_ring.fingerprint},
            "to": {"config": new_path, "data_dir": rep.new_data_dir,
                   "nodes": rep.new_ring.nodes, "bits": rep.new_ring.bits,
                   "placement": rep.new_ring.placement,
                   "fingerprint": rep.new_ring.fingerprint},
            "keys": rep.keys, "moved": rep.moved, "old_kept_at": rep.kept_at,
            "seconds": round(rep.seconds, 3), "warnings": rep.warnings,
            "old_nodes": [{"index": o.index, "directory": o.directory, "keys": o.keys,
                           "moved_out": o.moved_out,
                           "snapshot": f"snap.{o.snapshot}" if o.snapshot else None,
                           "log_records": o.records} for o in rep.old_nodes],
            "nodes": docs}))
        return
    click.echo(render.render_rows(rows, MIGRATE_HEADERS, fmt, docs))
    where = (f"the old ring is kept in {rep.kept_at}" if rep.kept_at
             else f"the old directories in {rep.old_data_dir} are unchanged")
    click.echo(f"migrated {rep.keys} keys from {rep.old_ring.nodes} to {rep.new_ring.nodes} "
               f"node(s) in {rep.seconds:.2f}s, {rep.moved} moved to another node; {where}. "
               f"Start the new ring: chordctl -c {new_path} cluster up", err=True)
