"""Ring membership by epoch (core/membership.py, core/announce.py): the value,
its merge, where a node directory keeps it, and a node that moves to another
address while the others keep running."""

from __future__ import annotations

import json
import shutil
import signal

import grpc
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from chordctl.client import Client
from chordctl.core import membership
from chordctl.core.membership import Members, Membership, MembershipError
from chordctl.core.ring import Ring
from chordctl.core.storage import identity
from chordctl.core.storage.identity import RingIdentity
from chordctl.pb import chord_pb2 as pb
from chordctl.pb import chord_pb2_grpc as pb_grpc
from chordctl.errors import ChordError, ExitStatus, StorageError
from conftest import NodeProc, free_ports, run_chordctl, wait_until
from test_replication import writes_all

BITS = 16


def view(n: int = 3, replicas: int = 1) -> Membership:
    return Membership(1, BITS, "direct", "fingers", replicas,
                      tuple(f"127.0.0.1:{7000 + i}" for i in range(n)), (1,) * n)


# -- the value ----------------------------------------------------------------------


def test_a_move_is_the_next_epoch_with_that_entry_set_at_it() -> None:
    m = view()
    moved = m.moved(2, "10.0.0.9:7002")
    assert (moved.epoch, moved.addresses[2], moved.since) == (2, "10.0.0.9:7002", (1, 1, 2))
    assert moved.addresses[:2] == m.addresses[:2]
    assert moved.moved(2, "10.0.0.9:7002") is moved          # no change, no epoch
    assert moved.ring.n == 3 and moved.groups_of(0) == (0,)


def test_two_moves_at_once_merge_to_one_view_whichever_is_heard_first() -> None:
    m = view()
    a, b = m.moved(1, "h1:1"), m.moved(2, "h2:2")
    assert a.epoch == b.epoch == 2
    ab, ba = a.merge(b), b.merge(a)
    assert ab == ba
    assert ab.addresses == (m.addresses[0], "h1:1", "h2:2") and ab.epoch == 3
    # Merging what one holds already changes nothing (the same object back).
    assert ab.merge(a) is ab and a.merge(ab) is ab and a.merge(m) is a and m.merge(a) is a


def test_one_index_claimed_at_two_addresses_at_one_epoch_resolves_the_same_everywhere() -> None:
    m = view()
    a, b = m.moved(1, "h1:1"), m.moved(1, "h9:9")
    assert a.merge(b) == b.merge(a)
    assert a.merge(b).addresses[1] == "h9:9"


def test_a_view_of_another_shape_is_refused_with_what_differs() -> None:
    with pytest.raises(MembershipError) as e:
        view(3).merge(view(4))
    assert "number of nodes is 4 there but 3 here" in str(e.value)
    assert "ring migrate" in str(e.value)
    assert e.value.exit_status == ExitStatus.USAGE
    with pytest.raises(MembershipError, match="ring.replicas is 3 there but 1 here"):
        view(3).merge(view(3, replicas=3))


def test_a_malformed_view_is_refused() -> None:
    with pytest.raises(ValueError):
        Membership(0, BITS, "direct", "fingers", 1, ("a:1",), (1,))
    with pytest.raises(ValueError):
        Membership(2, BITS, "direct", "fingers", 1, ("a:1", "b:2"), (1, 3))
    msg = membership.to_pb(view())
    msg.since.pop()
    with pytest.raises(MembershipError, match="malformed"):
        membership.from_pb(msg)
    msg = membership.to_pb(view())
    msg.placement = "sideways"
    with pytest.raises(MembershipError, match="malformed"):
        membership.from_pb(msg)


def test_a_view_crosses_the_wire_whole_and_epoch_0_is_a_question() -> None:
    m = view().moved(0, "h:1")
    assert membership.from_pb(membership.to_pb(m)) == m
    assert membership.from_pb(pb.Membership()) is None


MOVES = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(1, 5)),
                 min_size=1, max_size=12)


@settings(max_examples=200, deadline=None)
@given(MOVES, st.randoms(use_true_random=False))
def test_views_merged_in_any_order_end_at_one_value(moves, rnd) -> None:
    """Nodes move (each changes its own entry, on its own view), and the views
    are merged pairwise in random orders: every order ends at the same value,
    with every node's last address, and no merge lowers an epoch."""
    start = view(4)
    views = {i: start for i in range(4)}
    last: dict[int, str] = {}
    for mover, learns_from, port in moves:
        v = views[mover].merge(views[learns_from])
        assert v.epoch >= max(views[mover].epoch, views[learns_from].epoch)
        address = f"h{mover}:{port}"
        views[mover] = v.moved(mover, address)
        last[mover] = address
    finals = []
    for _ in range(3):
        order = list(views.values())
        rnd.shuffle(order)
        acc = order[0]
        for other in order[1:]:
            acc = acc.merge(other)
        finals.append(acc)
    assert finals[0].addresses == finals[1].addresses == finals[2].addresses
    for i, address in last.items():
        assert finals[0].addresses[i] == address


def test_members_persist_a_change_before_anyone_reads_it_and_tell_listeners() -> None:
    seen: list[tuple[int, int]] = []
    written: list[int] = []
    members = Members(view())

    def persist(m: Membership) -> None:
        assert members.current.epoch == 1      # not visible yet
        written.append(m.epoch)

    members.restore(view(), persist)
    members.subscribe(lambda old, new: seen.append((old.epoch, new.epoch)))
    assert members.install(view().moved(1, "h:1")) is True
    assert members.install(view()) is False          # older: nothing changes
    assert (written, seen, members.current.addresses[1]) == ([2], [(1, 2)], "h:1")


def test_a_pinned_node_claims_its_entry_back_from_a_view_that_moves_it() -> None:
    """Only a node moves itself: a peer's view with this node elsewhere (a
    tie it lost, or another process claiming its index) is answered with
    the entry claimed back at an epoch past that view's."""
    members = Members(view())
    claims: list[tuple[str, int]] = []
    members.pin(1, view().address(1), lambda there, v: claims.append((there, v.epoch)))
    other = view().moved(1, "intruder:1").moved(2, "h2:2")
    assert members.install(other) is True
    now = members.current
    assert now.address(1) == view().address(1) and now.address(2) == "h2:2"
    assert now.since[1] > other.since[1] and now.epoch > other.epoch
    assert claims == [("intruder:1", 3)]
    # The claim wins at every peer that merges it.
    assert other.merge(now).address(1) == view().address(1)


def test_a_node_whose_entry_is_claimed_again_and_again_fail_stops(tmp_path) -> None:
    from chordctl import config as config_mod
    from chordctl.core import node as node_mod
    from conftest import write_config
    cfg = config_mod.load(write_config(tmp_path, 3))
    n = node_mod.Node(cfg, 1)
    for k in range(node_mod.CLAIMS_BEFORE_FAIL):
        assert not n.failed
        n._claimed(f"intruder:{k}", view())
    assert "another process claims to be node 1" in n.failed
    # It claims no more: the other process's claim settles the entry.
    assert n.membership.install(view().moved(1, "intruder:9")) is True
    assert n.membership.current.address(1) == "intruder:9"


def test_a_view_from_the_wire_is_bounded_before_a_ring_is_built_of_it() -> None:
    for change in ({"bits": (1 << 32) - 1}, {"bits": 0}):
        msg = membership.to_pb(view())
        for k, v in change.items():
            setattr(msg, k, v)
        with pytest.raises(MembershipError, match="malformed"):
            membership.from_pb(msg)
    msg = membership.to_pb(view())
    msg.epoch = 1 << 60
    with pytest.raises(MembershipError, match="malformed"):
        membership.from_pb(msg)


def test_a_view_that_cannot_be_written_is_not_installed() -> None:
    members = Members(view())

    def persist(m: Membership) -> None:
        raise OSError(28, "No space left on device")

    members.restore(view(), persist)
    with pytest.raises(OSError):
        members.install(view().moved(1, "h:1"))
    assert members.current.epoch == 1


# -- IDENTITY keeps it ----------------------------------------------------------------


def test_identity_records_the_epoch_and_each_address_since() -> None:
    ident = RingIdentity(BITS, "direct", 3, 1)
    data = identity.encode(ident, addresses=["a:1", "b:2", "c:3"], epoch=4, since=[1, 4, 2])
    got = identity.decode(data, "x/IDENTITY")
    assert (got.addresses, got.epoch, got.since) == (("a:1", "b:2", "c:3"), 4, (1, 4, 2))


def test_an_identity_from_before_epochs_is_epoch_1() -> None:
    ident = RingIdentity(BITS, "direct", 3, 1)
    got = identity.decode(identity.encode(ident, addresses=["a:1", "b:2", "c:3"]), "x")
    assert (got.epoch, got.since) == (1, None)


@pytest.mark.parametrize("epoch,since", [(0, None), (2, [1, 3, 1]), (2, [1, 2])])
def test_an_identity_with_a_bad_epoch_is_damaged(epoch, since) -> None:
    ident = RingIdentity(BITS, "direct", 3, 1)
    data = identity.encode(ident, addresses=["a:1", "b:2", "c:3"], epoch=epoch, since=since)
    with pytest.raises(StorageError, match="damaged"):
        identity.decode(data, "x/IDENTITY")


# -- a node that moves, with real processes ---------------------------------------------


def moved_config(path: str, index: int, data_dir: str | None = None) -> str:
    """A copy of the config at *path* with node *index* on a new free port
    (and *data_dir* for storage.data_dir, if given)."""
    with open(path) as f:
        doc = yaml.safe_load(f)
    doc["nodes"][index]["port"] = free_ports(1)[0]
    if data_dir is not None:
        doc["storage"]["data_dir"] = data_dir
    out = path.replace(".yaml", f"-moved{index}.yaml")
    with open(out, "w") as f:
        yaml.safe_dump(doc, f)
    return out


def start_moved(cluster, index: int) -> NodeProc:
    """Node *index* started at a new port (its old process stopped by the
    caller); it takes the old one's place in *cluster* (stopped at teardown)."""
    moved = NodeProc(moved_config(cluster.config_path, index), index).start()
    cluster.nodes[index] = moved
    return moved


def ring_with_key(make_cluster, owner: int, value: bytes, n: int = 3):
    """A started n-node ring, its config, and a key of node *owner* written as *value*."""
    cluster = make_cluster(n, bits=BITS)
    k = key_of(n, owner)
    with Client(cluster.config, target=cluster.address(0)) as c:
        c.create(str(k), value)
    return cluster, cluster.config, k


def key_of(n: int, owner: int) -> int:
    return Ring(BITS, n).ids[owner]          # a node's own id lies in its arc


def status_view(config, address) -> Membership:
    with Client(config, target=address, timeout=5) as c:
        return membership.from_pb(c.status(timeout=5).membership)


def reads_as(config, address, key: int, value: bytes) -> bool:
    try:
        with Client(config, target=address, timeout=2) as c:
            return c.read(str(key)).value == value
    except ChordError:
        return False


def test_a_node_that_moves_is_reached_at_its_new_address_without_restarting_the_others(
        make_cluster) -> None:
    cluster, cfg, k = ring_with_key(make_cluster, 2, b"two")
    assert status_view(cfg, cluster.address(0)).epoch == 1
    cluster.nodes[2].stop()
    moved = start_moved(cluster, 2)
    new = moved.address
    for i in (0, 1):
        wait_until(lambda: status_view(cfg, cluster.address(i)).address(2) == new,
                   timeout=15, what=f"node {i} learns where node 2 went")
    for i in (0, 1):
        v = status_view(cfg, cluster.address(i))
        assert (v.epoch, v.address(2)) == (2, new), v
        assert reads_as(cfg, cluster.address(i), k, b"two")
    with Client(cfg, target=cluster.address(1)) as c:
        c.update(str(k), b"two again")
    # `ring show` on the config of before the move finds node 2 where the
    # ring has it, marks the address and says to update the config.
    r = run_chordctl("-c", cluster.config_path, "ring", "show")
    out, err = r.stdout.decode(), r.stderr.decode()
    assert r.returncode == 0, out + err
    assert f"{new} *" in out and "down" not in out, out
    assert (f"node 2 is at {new} by the ring's membership (epoch 2), not at "
            f"{cfg.nodes[2].address} as this config says") in err, err
    r = run_chordctl("-c", cluster.config_path, "-o", "json", "ring", "show")
    doc = json.loads(r.stdout)
    nodes = doc if isinstance(doc, list) else doc["nodes"]
    assert (nodes[2]["address"], nodes[2]["config_address"], nodes[2]["epoch"]) == (
        new, cfg.nodes[2].address, 2), nodes[2]
    # Each node keeps it in its directory: node 0 started again from the old
    # config (which still names node 2's old port) routes to the new one.
    recorded = identity.read(cfg.node_dir(0))
    assert (recorded.epoch, recorded.addresses[2]) == (2, new)
    cluster.nodes[0].kill(signal.SIGKILL)
    cluster.nodes[0].start()
    assert status_view(cfg, cluster.address(0)).address(2) == new
    assert reads_as(cfg, cluster.address(0), k, b"two again")
    assert "update the config to match" in cluster.nodes[0].log()


def test_a_node_down_while_another_moved_learns_where_it_went_when_it_starts(
        make_cluster) -> None:
    cluster, cfg, k = ring_with_key(make_cluster, 2, b"two")
    cluster.nodes[1].stop()
    cluster.nodes[2].stop()
    moved = start_moved(cluster, 2)
    wait_until(lambda: status_view(cfg, cluster.address(0)).epoch == 2, timeout=15,
               what="node 0 learns where node 2 went")
    cluster.nodes[1].start()             # with the config of before the move
    wait_until(lambda: reads_as(cfg, cluster.address(1), k, b"two"), timeout=15,
               what="node 1 reaches node 2 at its new address")
    assert status_view(cfg, cluster.address(1)).address(2) == moved.address


def test_a_replica_that_moves_takes_part_in_its_groups_at_its_new_address(
        make_cluster) -> None:
    """R = 3 on 3 nodes: node 2 moves; with node 0 then killed, every arc's
    majority is nodes 1 and 2, so every write through node 1 commits only
    because node 1's Raft streams reach node 2 where it is now."""
    cluster = make_cluster(3, bits=BITS, replicas=3, timeout=3).settled()
    cfg = cluster.config
    keys = [key_of(3, i) for i in range(3)]
    cluster.nodes[2].stop()
    moved = start_moved(cluster, 2)
    wait_until(lambda: status_view(cfg, cluster.address(1)).address(2) == moved.address,
               timeout=15, what="node 1 learns where node 2 went")
    cluster.nodes[0].kill(signal.SIGKILL)

    wait_until(lambda: writes_all(cfg, cluster.address(1), keys, b"v"), timeout=20,
               interval=0.1, what="every arc commits on nodes 1 and 2")
    for k in keys:
        assert reads_as(cfg, moved.address, k, b"v%d" % k)


def test_a_peer_of_another_shape_is_told_so(make_cluster) -> None:
    cluster = make_cluster(2, bits=BITS)
    with grpc.insecure_channel(cluster.address(0)) as channel:
        with pytest.raises(grpc.RpcError) as e:
            pb_grpc.AdminStub(channel).Members(membership.to_pb(view(3)), timeout=5)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "number of nodes is 3 there but 2 here" in e.value.details()
    assert status_view(cluster.config, cluster.address(0)).epoch == 1


def test_a_second_process_for_a_running_node_is_refused_naming_it(make_cluster, tmp_path,
                                                                   run_cli) -> None:
    """Node 1 runs; another process started as node 1 at another port on
    another data_dir would take node 1's requests from the ring. It exits 2,
    naming the running one, and the ring goes on routing to node 1."""
    cluster = make_cluster(3, bits=BITS)
    cfg = cluster.config
    k = key_of(3, 1)
    with Client(cfg, target=cluster.address(0)) as c:
        c.create(str(k), b"one")
    other = moved_config(cluster.config_path, 1, data_dir=str(tmp_path / "elsewhere"))
    for attempt in range(2):      # the first refusal wrote nothing the second would trust
        r = run_chordctl("-c", other, "node", "serve", "--node", "1", timeout=60)
        err = r.stderr.decode()
        assert r.returncode == 2, (attempt, err)
        assert f"node 1 is already running at {cluster.address(1)} (pid " \
            f"{cluster.nodes[1].proc.pid})" in err, err
        assert "Traceback" not in err
    for i in range(3):
        assert status_view(cfg, cluster.address(i)).epoch == 1
    assert reads_as(cfg, cluster.address(0), k, b"one")


def test_a_replacement_at_a_new_address_on_an_empty_directory_takes_its_place(
        make_cluster) -> None:
    """R = 3: node 2 is lost for good (kill -9, directory deleted) and its
    replacement starts at another port on an empty directory. It takes the
    ring's membership with its own entry moved (the next epoch, not the
    config's epoch 1), catches up from its peers, and with node 0 then
    killed every arc commits on nodes 1 and 2."""
    cluster = make_cluster(3, bits=BITS, replicas=3, timeout=3).settled()
    cfg = cluster.config
    keys = [key_of(3, i) for i in range(3)]
    with Client(cfg, target=cluster.address(0)) as c:
        for k in keys:
            c.create(str(k), b"v%d" % k)
    cluster.nodes[2].kill(signal.SIGKILL)
    shutil.rmtree(cfg.node_dir(2))
    replacement = start_moved(cluster, 2)
    assert "took the ring's membership" in replacement.log()
    for i in (0, 1):
        wait_until(lambda: status_view(cfg, cluster.address(i)).address(2)
                   == replacement.address, timeout=15, what=f"node {i} learns node 2's place")
    assert status_view(cfg, replacement.address).epoch == 2
    wait_until(lambda: all(reads_as(cfg, replacement.address, k, b"v%d" % k) for k in keys),
               timeout=20, interval=0.1, what="the replacement caught up")

    def full() -> bool:      # a learner neither votes nor counts towards commits
        try:
            with Client(cfg, target=replacement.address, timeout=2) as c:
                groups = c.status(timeout=2).groups
            return len(groups) == 3 and not any(g.learning for g in groups)
        except ChordError:
            return False

    wait_until(full, timeout=20, interval=0.1, what="the replacement a full replica")
    cluster.nodes[0].kill(signal.SIGKILL)

    wait_until(lambda: writes_all(cfg, cluster.address(1), keys, b"w"), timeout=20,
               interval=0.1, what="every arc commits on nodes 1 and 2")
    for k in keys:
        assert reads_as(cfg, replacement.address, k, b"w%d" % k)


def test_a_library_client_of_the_old_config_follows_a_node_that_moved(make_cluster) -> None:
    """connect()'s direct route sends node 2's keys to node 2 itself. Node 2
    moves; the same clients (sync and asyncio), on the config of before,
    find it: the call to the old address never left, the client asks the
    other nodes where the ring has node 2, and sends it there."""
    import asyncio

    import chordctl
    from chordctl import aio
    cluster = make_cluster(3, bits=BITS)
    cfg = cluster.config
    k = key_of(3, 2)
    sync = chordctl.connect(cluster.config_path, coalesce=False)

    async def make():
        return await aio.connect(cluster.config_path)

    loop = asyncio.new_event_loop()
    try:
        db = loop.run_until_complete(make())
        assert sync.route == db.route == "direct"
        sync.create(k, b"two")
        assert loop.run_until_complete(db.read(k)).value == b"two"
        cluster.nodes[2].stop()
        moved = start_moved(cluster, 2)
        wait_until(lambda: status_view(cfg, cluster.address(0)).address(2) == moved.address,
                   timeout=15, what="node 0 learns where node 2 went")
        assert sync.read(k).value == b"two"
        assert sync.node_address(2) == moved.address
        loop.run_until_complete(db.update(k, b"two again"))
        assert db.node_address(2) == moved.address
        assert sync.read(k).value == b"two again"
    finally:
        sync.close()
        loop.run_until_complete(db.close())
        loop.close()


def test_a_move_from_an_address_that_takes_connections_and_never_answers_needs_take_over(
        make_cluster) -> None:
    """Node 2 stops; something holds its old port and never answers (a host
    cut off or stopped may still run node 2). Node 2 started at a new port
    is refused (exit 2, naming --take-over), and with --take-over it takes
    its place."""
    import socket
    cluster, cfg, k = ring_with_key(make_cluster, 2, b"two")
    cluster.nodes[2].stop()
    host, port = cfg.nodes[2].host, cfg.nodes[2].port
    silent = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    silent.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # its connections' TIME_WAIT
    try:
        silent.bind((host, port))
        silent.listen(16)           # takes connections (the kernel's), never answers
        moved_path = moved_config(cluster.config_path, 2)
        r = run_chordctl("-c", moved_path, "node", "serve", "--node", "2", timeout=60)
        err = r.stderr.decode()
        assert r.returncode == 2, err
        assert "nothing refuses the connection either" in err and "--take-over" in err, err
        assert identity.read(cfg.node_dir(2)).addresses[2] == cfg.nodes[2].address
        moved = NodeProc(moved_path, 2, args=("--take-over",)).start()
        cluster.nodes[2] = moved
        assert "taking its place (--take-over)" in moved.log()
        wait_until(lambda: reads_as(cfg, cluster.address(0), k, b"two"), timeout=15,
                   what="node 0 reaches node 2 at its new address")
    finally:
        silent.close()


def test_ring_show_finds_two_nodes_that_swapped_addresses(make_cluster) -> None:
    """Nodes 1 and 2 swap ports (each stopped, then started on the other's):
    at each old address the other node answers. `ring show` on the config
    of before does not take one for the other: it asks each where the ring
    has it."""
    cluster, cfg, k = ring_with_key(make_cluster, 2, b"two")
    with open(cluster.config_path) as f:
        doc = yaml.safe_load(f)
    doc["nodes"][1]["port"], doc["nodes"][2]["port"] = (doc["nodes"][2]["port"],
                                                        doc["nodes"][1]["port"])
    swapped = cluster.config_path.replace(".yaml", "-swapped.yaml")
    with open(swapped, "w") as f:
        yaml.safe_dump(doc, f)
    cluster.nodes[1].stop()
    cluster.nodes[2].stop()
    for i in (1, 2):
        cluster.nodes[i] = NodeProc(swapped, i).start()
    wait_until(lambda: status_view(cfg, cluster.address(0)).epoch >= 3, timeout=15,
               what="node 0 learns both moves")
    r = run_chordctl("-c", cluster.config_path, "-o", "json", "ring", "show")
    assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()
    nodes = json.loads(r.stdout)
    nodes = nodes if isinstance(nodes, list) else nodes["nodes"]
    assert [(n["index"], n["state"], n["address"]) for n in nodes[1:]] == [
        (1, "up", cluster.nodes[1].address), (2, "up", cluster.nodes[2].address)], nodes
    assert reads_as(cfg, cluster.address(0), k, b"two")
