"""The ring's state as its nodes report it: polling every node, and its table rows.

Library code shared by ``chordctl ring show``, ``cluster up`` (cli/ring.py,
cli/cluster.py), ``snapshot list`` (cli/snapshot.py) and the shell's
``ring``/``locate`` (shell.py); the CLI only renders the rows and maps
"not up" to exit 3.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

from chordctl.client import Client
from chordctl.config import Config
from chordctl.core import membership
from chordctl.core.membership import Membership, MembershipError
from chordctl.core.ring import Ring
from chordctl.errors import ChordError
from chordctl.pb import chord_pb2 as pb

# A node that is down refuses the connection at once; this bounds only a node
# that accepts but does not answer (hung, or starved on a loaded machine: 1 s
# marked freshly started nodes down under load).
STATUS_TIMEOUT = 3.0


class NotServing(Exception):
    """The node answers health checks but is not serving (replaying, stopping)."""

    def __init__(self, health: str):
        super().__init__(f"health {health}: the node is recovering or shutting down")
        self.health = health


class AdminDenied(Exception):
    """The node is serving but refuses this client Admin.Status (admin.allow)."""


def poll_nodes(cfg: Config, timeout: float = STATUS_TIMEOUT) -> list[object]:
    """Health, then Admin.Status, of every node in parallel: a NodeStatus, or why not."""

    def one(address: str):
        try:
            with Client(cfg, target=address, timeout=timeout) as c:
                health = c.health(timeout=timeout)
                if health != "SERVING":
                    # A fail-stopped node still answers Status, with why.
                    try:
                        st = c.status(timeout=timeout)
                    except ChordError:
                        return NotServing(health)
                    return st if st.failed else NotServing(health)
                try:
                    return c.status(timeout=timeout)
                except ChordError as e:
                    if str(e).startswith("admin:"):
                        return AdminDenied(str(e))
                    raise
        except ChordError as e:
            return e

    with ThreadPoolExecutor(max_workers=min(32, len(cfg.nodes))) as pool:
        statuses = list(pool.map(one, [n.address for n in cfg.nodes]))
        # A node that moved (membership.py) is asked where its peers say it
        # is (also one whose old address another node took: a swap).
        view = ring_view(cfg, statuses)
        _as_indexed(statuses)
        moved = [i for i, st in enumerate(statuses) if isinstance(st, Exception)
                 and view is not None and view.address(i) != cfg.nodes[i].address]
        for i, st in zip(moved, pool.map(one, [view.address(i) for i in moved])):
            statuses[i] = st
    return _as_indexed(statuses)


def _as_indexed(statuses: list[object]) -> list[object]:
    """A Status answered as another node than its row's is no answer of that node."""
    for i, st in enumerate(statuses):
        if isinstance(st, pb.NodeStatus) and st.node_index != i:
            statuses[i] = ChordError(f"ring: {st.address} answers as node {st.node_index}, "
                                     f"not as node {i}: check nodes[{i}] in the config")
    return statuses


def ring_view(cfg: Config, statuses: list[object]) -> Membership | None:
    """The ring's membership as its answering nodes know it (their views
    merged), or None when none said (older nodes) or one of another shape."""
    mine = Membership.from_config(cfg)
    view = None
    for st in statuses:
        if isinstance(st, Exception) or not st.HasField("membership"):
            continue
        try:
            theirs = membership.from_pb(st.membership)
            if theirs is None:
                continue
            view = theirs if view is None else view.merge(theirs)
            mine.check_shape(view, "a node's membership")
        except MembershipError:
            return None
    return view


def moved_nodes(cfg: Config, view: Membership | None) -> list[tuple[int, str, str]]:
    """(index, where the ring has it, where the config says) of each node
    whose config address is not the ring's."""
    if view is None:
        return []
    return [(i, view.address(i), n.address) for i, n in enumerate(cfg.nodes)
            if view.address(i) != n.address]


def poll_files(cfg: Config, timeout: float = 10.0) -> list[object]:
    """Admin.Files of every node in parallel: its reply, or the ChordError why not."""

    def one(address: str):
        try:
            with Client(cfg, target=address) as c:
                return c.files(timeout=timeout)
        except ChordError as e:
            return e

    with ThreadPoolExecutor(max_workers=min(16, len(cfg.nodes))) as pool:
        return list(pool.map(one, [n.address for n in cfg.nodes]))


def short_reason(reason: str, width: int = 48) -> str:
    """A failure reason for a table cell: its first clause, paths cut to file names."""
    text = re.sub(r"(?:[^\s:]*/)+([^\s/:]+)", r"\1", reason.split(";")[0]).strip()
    return text if len(text) <= width else text[:width - 3] + "..."


def node_state(st: object) -> str:
    """up | failed | recovering | down: what `ring show` says of a poll_nodes answer."""
    if isinstance(st, NotServing):
        return "recovering"
    if isinstance(st, AdminDenied):
        return "up"
    if isinstance(st, Exception):
        return "down"
    return "failed" if st.failed else "up"


def ring_rows(cfg: Config, statuses: list[object]) -> tuple[list[list], list[dict]]:
    ring = Ring.from_config(cfg)
    view = ring_view(cfg, statuses)
    rows, docs = [], []
    for i, node in enumerate(cfg.nodes):
        low, high = ring.arc(i)
        st = statuses[i]
        state = node_state(st)
        answered = not isinstance(st, Exception)    # Status answered: its fields are known
        arc = f"({low}, {high}]"
        cell = f"failed: {short_reason(st.failed)}" if state == "failed" else state
        address = view.address(i) if view is not None else node.address
        rows.append([i, ring.ids[i], arc, address if address == node.address else f"{address} *",
                     cell, st.keys if answered else "-",
                     st.snapshot_counter if answered else "-",
                     st.log_counter if answered else "-"])
        doc = {"index": i, "id": str(ring.ids[i]), "arc": [str(low), str(high)],
               "arc_size": str(ring.arc_size(i)), "address": address,
               "up": state == "up", "state": state}
        if address != node.address:
            doc["config_address"] = node.address
        if view is not None:
            doc["epoch"] = view.epoch
        if answered:
            doc.update({"keys": st.keys, "snapshot": st.snapshot_counter,
                        "log": st.log_counter, "last_seq": st.last_seq, "pid": st.pid,
                        "uptime_seconds": round(st.uptime_seconds, 3),
                        "rss_bytes": st.rss_bytes, "ready_seconds": round(st.ready_seconds, 3),
                        "recovery_seconds": round(st.recovery_seconds, 3),
                        "cpus": st.cpus, "event_loop": st.event_loop,
                        "routing": [{"role": e.role, "index": e.node_index, "id": e.node_id}
                                    for e in st.routing]})
            if state == "failed":
                doc["failed"] = st.failed
        else:
            doc["error"] = str(st)
        docs.append(doc)
    if cfg.ring.replicas > 1:
        # Each arc's replication state goes with its owner's entry (known even
        # when the owner is down, from its other replicas).
        for doc, arc in zip(docs, arc_rows(cfg, statuses)[1]):
            doc["replication"] = arc
    return rows, docs


HEADERS = ["index", "id", "arc (low, id]", "address", "state", "keys", "snapshot", "log"]

# ring.replicas > 1: one row per arc, from every replica's view of its group.
# Its state: serving (a leader, every replica up), degraded (a leader, a
# replica down, catching up or learning), no leader, cannot elect (learners
# leave too few full replicas for a majority); the last two serve nothing.
ARC_HEADERS = ["arc", "(low, id]", "leader", "term", "replicas (state, entries behind)",
               "state"]
UNSERVED = ("no leader", "cannot elect")
# A follower this many entries or fewer behind the leader's commit is "up"
# (under load every follower is a round or two behind); more: "catching up".
CAUGHT_UP = 8


def arc_rows(cfg: Config, statuses: list[object]) -> tuple[list[list], list[dict]]:
    """Each arc's replicas, leader and per-replica state, as the nodes report them."""
    ring = Ring.from_config(cfg)
    r = cfg.ring.replicas
    rows, docs = [], []
    for g in range(ring.n):
        members = ring.replicas(g, r)
        views = {}
        for m in members:
            st = statuses[m]
            if isinstance(st, Exception):
                continue
            for gs in st.groups:
                if gs.group == g:
                    views[m] = gs
        leaders = [m for m, v in views.items() if v.state == "leader"]
        leader = max(leaders, key=lambda m: views[m].term) if leaders else None
        lead = views.get(leader)
        commit = lead.commit_index if lead else max(
            (v.commit_index for v in views.values()), default=0)
        cells, replicas = [], []
        for m in members:
            v = views.get(m)
            behind = None
            if v is None:
                state = node_state(statuses[m])
                state = "down" if state == "up" else state   # up, but no view of the group
            elif m == leader:
                state, behind = "leader", 0
            else:
                behind = max(0, commit - v.last_applied)
                state = ("learning" if v.learning else
                         "up" if behind <= CAUGHT_UP else "catching up")
            cells.append(f"{m} {state}" + (f" {behind}" if behind else ""))
            replicas.append({"index": m, "state": state, "behind": behind})
        arc_state = _arc_state(leader, replicas)
        low, high = ring.arc(g)
        rows.append([g, f"({low}, {high}]", "none" if leader is None else leader,
                     lead.term if lead else "-", ", ".join(cells), arc_state])
        docs.append({"arc": g, "range": [str(low), str(high)], "leader": leader,
                     "term": lead.term if lead else None, "commit_index": commit,
                     "state": arc_state, "replicas": replicas})
    return rows, docs


def _arc_state(leader: int | None, replicas: list[dict]) -> str:
    """serving | degraded | no leader | cannot elect (ARC_HEADERS), from arc_rows'
    replicas. Cannot elect: a learner neither votes nor stands, and with the
    replicas not learning (down ones too: they may be full) no majority, no
    leader can ever be elected (core/replica.py's _stuck, as the ring sees it)."""
    if leader is not None:
        return "serving" if all(r["state"] in ("leader", "up") for r in replicas) \
            else "degraded"
    full = [r for r in replicas if r["state"] != "learning"]
    return "cannot elect" if len(full) <= len(replicas) // 2 else "no leader"


def unserved_arcs(arcs: list[dict]) -> str:
    """One line naming the arcs of arc_rows' *arcs* that cannot serve, why, and
    what brings each back; "" when every arc has a leader."""
    said: dict[str, list[int]] = {}     # why -> the arcs it is said of
    for a in arcs:
        if a["state"] not in UNSERVED:
            continue
        reps = a["replicas"]
        majority = len(reps) // 2 + 1

        def named(states: tuple[str, ...]) -> list[int]:
            return [r["index"] for r in reps if r["state"] in states]

        if a["state"] == "cannot elect":
            why = (f"cannot elect: {_nodes(sorted(named(('learning',))))} learning (started on "
                   f"empty directories) and the full replicas are no majority; start one of "
                   f"its lost replicas on its old directory (or one restored from a backup)")
        else:
            away = named(("down", "recovering")) + [r["index"] for r in reps
                                                     if r["state"].startswith("failed")]
            if len(reps) - len(away) < majority:
                why = (f"no leader: {_nodes(sorted(away))} not up, and electing one takes "
                       f"{majority} of its {len(reps)} replicas; bring "
                       f"{'it' if len(away) == 1 else 'them'} back (`chordctl cluster up` "
                       f"starts the nodes not running)")
            else:
                why = (f"no leader, though {len(reps) - len(away)} of its {len(reps)} "
                       f"replicas are up: an election under way, or they cannot reach each "
                       f"other; one is elected within a few election timeouts once they can")
        said.setdefault(why, []).append(a["arc"])
    return "; ".join(("arc " if len(g) == 1 else "arcs ") + ", ".join(map(str, g)) +
                     f" cannot serve ({why})" for why, g in said.items())


def _nodes(indexes: list[int]) -> str:
    if len(indexes) == 1:
        return f"node {indexes[0]} is"
    return "nodes " + ", ".join(str(i) for i in indexes) + " are"


def node_at(cfg: Config, address: str) -> int | None:
    """The index of the config's node at *address* (HOST:PORT as written), or None."""
    for i, n in enumerate(cfg.nodes):
        if n.address == address:
            return i
    return None
