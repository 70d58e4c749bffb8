"""ring.replicas > 1 against real node processes: every arc on R nodes, kept
readable and writable through every surviving node when one is killed for
good, and a replacement on an empty directory catching up by itself."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time

import grpc
import pytest

from chordctl.client import Client
from chordctl.core.ring import Ring
from chordctl.errors import AlreadyExistsError, ChordError, NotFoundError, UnavailableError
from conftest import wait_until

BITS = 16


def keys_on_every_arc(n: int, per_arc: int = 4) -> list[int]:
    ring = Ring(BITS, n)
    keys = []
    for i in range(n):
        low, high = ring.arc(i)
        for k in range(per_arc):
            keys.append((low + 1 + k * 97) % (1 << BITS))
    assert sorted({ring.owner(k) for k in keys}) == list(range(n))
    return keys


def held_keys(config, address) -> int:
    with Client(config, target=address, timeout=5) as c:
        return c.status(timeout=5).keys


def reads_as(config, address, key: int, value: bytes, timeout: float = 2) -> bool:
    """Whether *key* read through *address* is *value* now (False on any error)."""
    try:
        with Client(config, target=address, timeout=timeout) as c:
            return c.read(str(key)).value == value
    except ChordError:
        return False


def read_all(config, address, expect: dict[int, bytes], timeout: float = 5) -> None:
    with Client(config, target=address, timeout=timeout) as c:
        for k, v in expect.items():
            assert c.read(str(k)).value == v, f"key {k} through {address}"


def writes_all(config, address, keys: list[int], prefix: bytes) -> bool:
    """Whether every key could be written (created or updated) as prefix + key
    through *address* now (False on any error)."""
    try:
        with Client(config, target=address, timeout=2) as c:
            for k in keys:
                try:
                    c.create(str(k), prefix + b"%d" % k)
                except AlreadyExistsError:
                    c.update(str(k), prefix + b"%d" % k)
        return True
    except ChordError:
        return False


def test_three_replicas_hold_every_key_and_answer_through_every_node(make_cluster):
    cluster = make_cluster(3, bits=BITS, replicas=3).settled()
    cfg = cluster.config
    keys = keys_on_every_arc(3)
    with Client(cfg, target=cluster.address(0)) as c:
        for k in keys:
            c.create(str(k), b"v%d" % k)
    expect = {k: b"v%d" % k for k in keys}
    for i in range(3):
        read_all(cfg, cluster.address(i), expect)
        # R = n: every node holds a copy of every arc.
        wait_until(lambda: held_keys(cfg, cluster.address(i)) == len(keys),
                   timeout=10, what=f"node {i} holds every key")
    with Client(cfg, target=cluster.address(2)) as c:
        c.update(str(keys[0]), b"new")
        c.delete(str(keys[1]))
        with pytest.raises(NotFoundError) as e:
            c.read(str(keys[1]))
        # The replica that answered is named as such, not as the key's owner.
        assert "a replica of its arc" in str(e.value) and "owner" not in str(e.value)
        for batch in (False, True):
            if batch:
                [err] = c.batch([("create", keys[0], b"again")])
            else:
                with pytest.raises(ChordError) as e:
                    c.create(str(keys[0]), b"again")
                err = e.value
            assert "already exists (answered by node" in str(err), err
    with Client(cfg, target=cluster.address(1)) as c:
        assert c.read(str(keys[0])).value == b"new"


def test_five_nodes_lose_one_for_good_and_every_key_stays_served_within_10s(make_cluster):
    cluster = make_cluster(5, bits=BITS, replicas=3, timeout=2).settled()
    cfg = cluster.config
    keys = keys_on_every_arc(5)
    with Client(cfg, target=cluster.address(0)) as c:
        for k in keys:
            c.create(str(k), b"v%d" % k)
    victim = 2
    cluster.nodes[victim].kill(signal.SIGKILL)
    shutil.rmtree(cfg.node_dir(victim))
    killed = time.monotonic()
    survivors = [i for i in range(5) if i != victim]
    expect = {k: b"v%d" % k for k in keys}

    def served() -> bool:
        try:
            for i in survivors:
                read_all(cfg, cluster.address(i), expect, timeout=2)
            with Client(cfg, target=cluster.address(survivors[0]), timeout=2) as c:
                for k in keys:
                    c.update(str(k), b"after%d" % k)
            return True
        except ChordError:
            return False

    wait_until(served, timeout=10, interval=0.1, what="every key served by every survivor")
    took = time.monotonic() - killed
    assert took < 10, took
    expect = {k: b"after%d" % k for k in keys}
    for i in survivors:
        read_all(cfg, cluster.address(i), expect)

    # The replacement: an empty directory, the same config; it catches up alone.
    cluster.nodes[victim].start()
    mine = Ring(BITS, 5).groups_of(victim, 3)
    should_hold = sum(1 for k in keys if Ring(BITS, 5).owner(k) in mine)
    wait_until(lambda: held_keys(cfg, cluster.address(victim)) == should_hold, timeout=20,
               what="the replacement caught up")
    # Full in every group: its directory no longer says it is learning.
    wait_until(lambda: not os.path.exists(os.path.join(cfg.node_dir(victim), "LEARNING")),
               timeout=20, what="the replacement a full replica (LEARNING removed)")
    # What it holds is the acknowledged data: take the other two replicas of
    # one of its arcs away and read that arc from it.
    read_all(cfg, cluster.address(victim),
             {k: v for k, v in expect.items() if Ring(BITS, 5).owner(k) in mine})


def test_a_new_ring_restarted_before_its_last_node_first_started_serves_again(make_cluster):
    """Node 4 of a new 5-node R = 3 ring never starts: arcs 2 and 3 (replicas
    2,1,0 and 3,2,1) serve, the others wait for it (a new replica cannot tell
    it from a member holding what it forgot). The four are killed and started
    again: each is still learning the groups with node 4, but a full replica
    of arcs 2 and 3, and must come back as one there (were it a learner in
    every group again, no member of arcs 2 and 3 would vote: never a leader)."""
    cluster = make_cluster(5, bits=BITS, replicas=3, timeout=2, start=False)
    cfg = cluster.config
    four = cluster.nodes[:4]
    for n in four:
        n.start(wait=False)
    for n in four:
        n.wait_ready()
    ring = Ring(BITS, 5)
    keys = [k for k in keys_on_every_arc(5) if ring.owner(k) in (2, 3)]

    def write(value: bytes):
        return lambda: writes_all(cfg, cluster.address(1), keys, value)

    wait_until(write(b"v"), timeout=20, interval=0.1, what="arcs 2 and 3 take writes")
    assert os.path.exists(os.path.join(cfg.node_dir(0), "LEARNING"))   # arcs 0, 1 wait
    for n in four:
        n.kill(signal.SIGKILL)
    for n in four:
        n.start(wait=False)
    for n in four:
        n.wait_ready()
    wait_until(write(b"w"), timeout=20, interval=0.1, what="arcs 2 and 3 take writes again")
    for i in range(4):
        read_all(cfg, cluster.address(i), {k: b"w%d" % k for k in keys})


def test_a_new_ring_started_with_new_ring_serves_every_arc_before_its_last_node_starts(
        make_cluster):
    """`node serve --new-ring` (what `cluster up` passes to a new ring): node
    4 of a new 5-node R = 3 ring never starts, and every arc serves anyway,
    those with node 4 among their replicas (0, 1 and 4) on the other two:
    each replica is a full one once a majority of its arc says it is new
    (nobody voted or acknowledged anything before), not only once all of
    it does. Node 4 then starts on its empty directory without the flag, a
    replacement as any other: it learns its arcs and catches up."""
    cluster = make_cluster(5, bits=BITS, replicas=3, timeout=2, start=False)
    cfg = cluster.config
    four = cluster.nodes[:4]
    for n in four:
        n.args = ("--new-ring",)
        n.start(wait=False)
    for n in four:
        n.wait_ready()
    keys = keys_on_every_arc(5)
    wait_until(lambda: writes_all(cfg, cluster.address(1), keys, b"v"), timeout=20,
               interval=0.1, what="every arc takes writes with node 4 never started")
    for i in range(4):       # a full replica of every group (LEARNING gone)
        wait_until(lambda: not os.path.exists(os.path.join(cfg.node_dir(i), "LEARNING")),
                   timeout=10, what=f"node {i} a full replica")
    for i in range(4):
        read_all(cfg, cluster.address(i), {k: b"v%d" % k for k in keys})

    late = cluster.nodes[4]
    late.start()
    ring = Ring(BITS, 5)
    mine = ring.groups_of(4, 3)
    should_hold = sum(1 for k in keys if ring.owner(k) in mine)
    wait_until(lambda: held_keys(cfg, cluster.address(4)) == should_hold, timeout=20,
               what="node 4 caught up")
    wait_until(lambda: not os.path.exists(os.path.join(cfg.node_dir(4), "LEARNING")),
               timeout=20, what="node 4 a full replica (LEARNING removed)")


def test_a_node_routes_an_arc_to_its_owner_again_once_the_owner_is_back(make_cluster):
    """Node 1 is no replica of arc 0 (nodes 0, 4, 3): it forwards arc 0's
    requests to the owner, to the next replica while the owner is down, and
    to the owner again a while after it is back (it leads its arc again; a
    request through another replica would cost that replica a hop)."""
    cluster = make_cluster(5, bits=BITS, replicas=3, timeout=2).settled()
    cfg = cluster.config
    ring = Ring(BITS, 5)
    key = next(k for k in keys_on_every_arc(5) if ring.owner(k) == 0)
    owner_id = str(ring.ids[0])

    def answered_by() -> str | None:
        try:
            with Client(cfg, target=cluster.address(1), timeout=2) as c:
                return c.read(str(key), trace=True).route[-1]
        except ChordError:
            return None

    with Client(cfg, target=cluster.address(1)) as c:
        c.create(str(key), b"v")
    assert answered_by() == owner_id
    cluster.nodes[0].kill(signal.SIGKILL)
    wait_until(lambda: answered_by() not in (None, owner_id), timeout=10, interval=0.1,
               what="arc 0 answered by another replica")
    cluster.nodes[0].start()
    cluster.settled()
    wait_until(lambda: answered_by() == owner_id, timeout=10,     # router.PREFER_FOR: 2 s
               interval=0.2, what="arc 0 routed to its owner again")


def test_an_owner_that_takes_calls_and_never_answers_is_passed_over(make_cluster):
    """Node 0, owner of arc 0, is stopped (SIGSTOP: its kernel still takes
    connections, so nothing is refused; a partition looks the same). Node 1,
    no replica of arc 0, forwards there: a read waits part of its time, then
    goes to the next replica, and once one call found node 0 silent, the
    arc's next calls, writes too, go to the other replicas (the majority
    elected one of them)."""
    cluster = make_cluster(5, bits=BITS, replicas=3, timeout=3).settled()
    cfg = cluster.config
    ring = Ring(BITS, 5)
    key = next(k for k in keys_on_every_arc(5) if ring.owner(k) == 0)
    with Client(cfg, target=cluster.address(1)) as c:
        c.create(str(key), b"v")
    stopped = cluster.nodes[0]
    stopped.kill(signal.SIGSTOP)
    try:
        wait_until(lambda: reads_as(cfg, cluster.address(1), key, b"v", timeout=3),
                   timeout=15, interval=0.1, what="a read of arc 0 through node 1")

        def write_ok() -> bool:
            try:
                with Client(cfg, target=cluster.address(1), timeout=3) as c:
                    c.update(str(key), b"w")
                    return c.read(str(key)).value == b"w"
            except ChordError:
                return False
        wait_until(write_ok, timeout=15, interval=0.1, what="a write of arc 0 through node 1")
    finally:
        stopped.kill(signal.SIGCONT)


def test_a_client_moves_a_read_on_from_a_node_that_takes_it_and_never_answers(make_cluster):
    """Node 0, owner of arc 0 and the entry node, is stopped (SIGSTOP: it takes
    connections and never answers). A client's own route -- direct to the
    owner, or through its entry node -- gave a read all its time there and
    failed at its deadline. Now a read gets half its time there and the
    rest at the next node (the arc's next replica, or another entry node),
    the one-by-one, coalesced and submitted flavours alike, and the next
    read does not wait on the stopped node again."""
    import asyncio
    import threading

    import chordctl
    from chordctl import aio
    timeout = 3
    cluster = make_cluster(5, bits=BITS, replicas=3, timeout=timeout).settled()
    cfg = cluster.config
    ring = Ring(BITS, 5)
    key = next(k for k in keys_on_every_arc(5) if ring.owner(k) == 0)
    with Client(cfg, target=cluster.address(1)) as c:
        c.create(str(key), b"v")

    def submitted(c) -> bytes:
        got: list = []
        done = threading.Event()
        c.submit("read", str(key), callback=lambda outcome: (got.append(outcome), done.set()))
        assert done.wait(timeout + 5), "no outcome"
        if isinstance(got[0], ChordError):
            raise got[0]
        return got[0].value

    flavours = {
        "direct": (lambda: Client(cfg, route="direct"), lambda c: c.read(str(key)).value),
        "direct, coalesced": (lambda: chordctl.connect(cluster.config_path),
                              lambda c: c.read(key).value),
        "direct, submitted": (lambda: Client(cfg, route="direct"), submitted),
        "direct, coalesced, submitted": (lambda: chordctl.connect(cluster.config_path),
                                         submitted),
        "entry, coalesced, submitted": (
            lambda: chordctl.connect(cluster.config_path, route="entry"), submitted),
        "entry": (lambda: Client(cfg, route="entry"), lambda c: c.read(str(key)).value),
        "entry, submitted": (lambda: Client(cfg, route="entry"), submitted),
    }
    # chordctl.aio's clients, on a loop of their own in another thread.
    loop = asyncio.new_event_loop()
    looper = threading.Thread(target=loop.run_forever, daemon=True)
    looper.start()

    def on_loop(coro):
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout + 10)

    async def aread(db) -> bytes:
        return (await db.read(key)).value

    for route in ("direct", "entry"):
        for coalesce in (False, True):
            flavours[f"aio {route}" + (", coalesced" if coalesce else "")] = (
                lambda route=route, coalesce=coalesce: on_loop(aio.connect(
                    cluster.config_path, route=route, coalesce=coalesce)),
                lambda db: on_loop(aread(db)))
    clients = {name: make() for name, (make, _read) in flavours.items()}
    stopped = cluster.nodes[0]
    try:
        for name, c in clients.items():       # channels open before the stop
            assert flavours[name][1](c) == b"v", name
            if name.startswith("entry"):
                assert c.address == cluster.address(0), name
        stopped.kill(signal.SIGSTOP)
        for name, c in clients.items():
            read = flavours[name][1]
            t0 = time.monotonic()
            try:
                assert read(c) == b"v", name
            except ChordError as e:
                raise AssertionError(f"{name}: {e} after {time.monotonic() - t0:.2f}s")
            assert time.monotonic() - t0 < timeout, name
            t0 = time.monotonic()
            assert read(c) == b"v", name      # the stopped node passed over: no wait there
            assert time.monotonic() - t0 < timeout * 0.4, (name, time.monotonic() - t0)
    finally:
        stopped.kill(signal.SIGCONT)
        for name, c in clients.items():
            if name.startswith("aio"):
                on_loop(c.close())
            else:
                c.close()
        loop.call_soon_threadsafe(loop.stop)
        looper.join(10)


def test_a_stream_batch_of_reads_moves_on_from_a_node_that_never_answers(make_cluster):
    """A coalesced lane's BatchStream message (the aio client's default; the
    sync client's with stream=True) of reads only, at an arc's owner that is
    stopped (SIGSTOP: it takes the message and never answers), gets half its
    time there and the rest at the arc's next replica, as a Batch call's
    reads do; the next batch goes there at once. Three batches in flight
    at once pass over the stopped node only, not the replica the first one
    moved to. (Before, each waited its whole time and failed.)"""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    import chordctl
    from chordctl import aio
    from chordctl.client import _Op
    from chordctl.pb import chord_pb2 as pb
    from chordctl.protocol import OPS
    timeout = 3
    cluster = make_cluster(5, bits=BITS, replicas=3, timeout=timeout).settled()
    ring = Ring(BITS, 5)
    keys = [k for k in keys_on_every_arc(5) if ring.owner(k) == 0][:2]
    with Client(cluster.config, target=cluster.address(1)) as c:
        for k in keys:
            c.create(str(k), b"v%d" % k)
    want = [b"v%d" % k for k in keys]
    loop = asyncio.new_event_loop()
    sync_db = chordctl.connect(cluster.config_path, route="direct", stream=True)
    aio_db = loop.run_until_complete(aio.connect(cluster.config_path, route="direct"))
    assert aio_db.stream

    def sync_batches(n):
        lane = sync_db._lane(str(keys[0]))
        with ThreadPoolExecutor(n) as pool:
            return list(pool.map(lambda _: lane._send_stream(
                [_Op("read", str(k), None, False, timeout) for k in keys]), range(n)))

    async def aio_send():      # on the client's loop: its lane's channel is made there
        batch = [aio._Op(pb.Operation(op=OPS["read"], key=str(k)), "read", str(k), timeout,
                         None) for k in keys]
        return await aio_db._lane(str(keys[0]))._send_stream(batch)

    async def aio_gather(n):
        return await asyncio.wait_for(asyncio.gather(*(aio_send() for _ in range(n))),
                                      timeout + 5)

    def aio_batches(n):
        return loop.run_until_complete(aio_gather(n))

    flavours = (("sync", sync_batches, sync_db), ("aio", aio_batches, aio_db))
    stopped = cluster.nodes[0]
    try:
        for name, batches, _db in flavours:       # its streams to node 0 open
            assert [[o.value for o in outs] for outs in batches(3)] == [want] * 3, name
        stopped.kill(signal.SIGSTOP)
        for name, batches, db in flavours:
            t0 = time.monotonic()
            got = batches(3)
            took = time.monotonic() - t0
            assert [[getattr(o, "value", o) for o in outs] for outs in got] == [want] * 3, \
                (name, got, took)
            assert timeout * 0.4 < took < timeout, (name, took)
            assert sorted(db._passed) == [0], (name, db._passed)
            t0 = time.monotonic()
            assert [[o.value for o in outs] for outs in batches(1)] == [want], name
            assert time.monotonic() - t0 < timeout * 0.4, (name, time.monotonic() - t0)
    finally:
        stopped.kill(signal.SIGCONT)
        sync_db.close()
        loop.run_until_complete(aio_db.close())
        loop.close()


def test_two_replicas_replaced_at_once_say_the_arc_cannot_elect(make_cluster):
    """Two of three replicas start on empty directories: both learners, they
    answer but cannot vote, and the one full replica is no majority. A
    request says so (not "fewer than a majority answer"), and the arc serves
    again once one of them is back on its old directory."""
    cluster = make_cluster(3, bits=BITS, replicas=3, timeout=2).settled()
    cfg = cluster.config
    key = keys_on_every_arc(3)[0]
    with Client(cfg, target=cluster.address(0)) as c:
        c.create(str(key), b"v")
    for i in (1, 2):
        cluster.nodes[i].kill(signal.SIGKILL)
    kept = str(cluster.config.node_dir(1)) + ".kept"
    shutil.move(cfg.node_dir(1), kept)
    shutil.rmtree(cfg.node_dir(2))
    for i in (1, 2):
        cluster.nodes[i].start()
    said = []

    def told() -> bool:
        try:
            with Client(cfg, target=cluster.address(0), timeout=2) as c:
                c.read(str(key))
        except ChordError as e:
            said.append(str(e))
            return "are learning" in str(e)
        return False
    wait_until(told, timeout=20, interval=0.2, what="the arc says its replicas are learning")
    assert "node 1, node 2 are learning" in said[-1] and "cannot elect" in said[-1], said[-1]
    cluster.nodes[1].kill(signal.SIGKILL)
    shutil.rmtree(cfg.node_dir(1))
    shutil.move(kept, cfg.node_dir(1))
    cluster.nodes[1].start()
    wait_until(lambda: reads_as(cfg, cluster.address(0), key, b"v"), timeout=20,
               interval=0.2, what="the arc served again")


def test_ring_show_exits_3_naming_arcs_whose_learners_cannot_elect(make_cluster):
    """Two of three replicas replaced at once: every node is up and answers,
    but no arc can elect. `ring show` says so (exit 3, each arc named, with
    what brings it back), not exit 0 for a ring that serves nothing."""
    from conftest import run_chordctl
    cluster = make_cluster(3, bits=BITS, replicas=3, timeout=2).settled()
    cfg = cluster.config
    with Client(cfg, target=cluster.address(0)) as c:      # every arc holds entries
        for k in keys_on_every_arc(3, per_arc=1):
            c.create(str(k), b"v")
    for i in (1, 2):
        cluster.nodes[i].kill(signal.SIGKILL)
        shutil.rmtree(cfg.node_dir(i))
    for i in (1, 2):
        cluster.nodes[i].start()
    shown = []

    def refused() -> bool:
        shown.append(run_chordctl("-c", cluster.config_path, "ring", "show", timeout=30))
        return shown[-1].returncode != 0 and "arcs 0, 1, 2 cannot" in shown[-1].stderr.decode()
    wait_until(refused, timeout=20, interval=0.2, what="ring show refusing every arc")
    p = shown[-1]
    out, err = p.stdout.decode(), p.stderr.decode()
    assert p.returncode == 3, (out, err)
    assert "not up" not in err, err               # every node is up: it is the arcs
    assert err == ("chordctl: ring: arcs 0, 1, 2 cannot serve (cannot elect: nodes 1, 2 are "
                   "learning (started on empty directories) and the full replicas are no "
                   "majority; start one of its lost replicas on its old directory (or one "
                   "restored from a backup))\n"), err
    assert out.count("cannot elect") == 3 and "1 learning" in out and "2 learning" in out, out


def test_every_acknowledged_write_survives_a_kill_9_of_every_node(make_cluster):
    cluster = make_cluster(3, bits=BITS, replicas=3).settled()
    cfg = cluster.config
    keys = keys_on_every_arc(3, per_arc=20)
    with Client(cfg, target=cluster.address(1)) as c:
        for k in keys:
            c.create(str(k), b"v%d" % k)
        for k in keys[::2]:
            c.update(str(k), b"u%d" % k)
        for k in keys[1::5]:
            c.delete(str(k))
    expect = {k: (b"u%d" % k if i % 2 == 0 else b"v%d" % k)
              for i, k in enumerate(keys) if (i - 1) % 5 != 0}
    cluster.restart().settled()
    for i in range(3):
        read_all(cfg, cluster.address(i), expect)
        with Client(cfg, target=cluster.address(i)) as c:
            for i2, k in enumerate(keys):
                if (i2 - 1) % 5 == 0:
                    with pytest.raises(NotFoundError):
                        c.read(str(k))


def test_a_replicated_directory_refuses_a_config_without_replicas(make_cluster, tmp_path):
    cluster = make_cluster(3, bits=BITS, replicas=3)
    with Client(cluster.config, target=cluster.address(0)) as c:
        c.create("5", b"x")
    cluster.stop()
    import yaml
    path = cluster.config_path
    doc = yaml.safe_load(open(path))
    doc["ring"].pop("replicas")
    doc.pop("replication")
    with open(path, "w") as f:
        yaml.safe_dump(doc, f)
    from conftest import run_chordctl
    p = run_chordctl("-c", path, "node", "serve", "--node", "0", timeout=30)
    err = p.stderr.decode()
    assert p.returncode == 2, err
    assert "ring.replicas is 3 there but 1 in the config" in err
    assert "kv export keys.jsonl" in err and "ring migrate --from" not in err   # a way that works
    assert "Traceback" not in err


def test_the_copy_a_refusal_names_moves_a_ring_to_another_ring_replicas(tmp_path):
    """What a node refused for a changed ring.replicas tells the operator to
    do (README, Replication, "Not yet"): export the old ring to JSON lines
    and load them into the new one, binary values included."""
    from conftest import Cluster, run_chordctl, write_config
    clusters = []
    (tmp_path / "r1").mkdir()
    (tmp_path / "r3").mkdir()
    try:
        old = Cluster(write_config(tmp_path / "r1", 3, bits=BITS))
        clusters.append(old.start())
        expect = {k: b"v%d" % k for k in keys_on_every_arc(3)}
        expect[7] = b"\x00\xff not text"
        with Client(old.config, target=old.address(0)) as c:
            for k, v in expect.items():
                c.create(str(k), v)
        jsonl = tmp_path / "keys.jsonl"
        p = run_chordctl("-c", old.config_path, "kv", "export", str(jsonl))
        assert p.returncode == 0, p.stderr
        old.stop()
        new = Cluster(write_config(tmp_path / "r3", 3, bits=BITS, replicas=3))
        clusters.append(new.start())
        p = run_chordctl("-c", new.config_path, "kv", "load", str(jsonl))
        assert p.returncode == 0, p.stdout + p.stderr
        read_all(new.config, new.address(1), expect)
    finally:
        for c in clusters:
            c.stop()


def test_ring_show_lists_each_arc_with_its_leader_and_replicas(make_cluster):
    from conftest import run_chordctl
    import json as jsonlib
    cluster = make_cluster(3, bits=BITS, replicas=3)
    cfg = cluster.config

    def owners_lead() -> bool:
        p = run_chordctl("-c", cluster.config_path, "-o", "json", "ring", "show")
        docs = jsonlib.loads(p.stdout)
        return all(d["replication"]["leader"] == d["index"] for d in docs)

    # Leadership moves to each arc's owner once it is caught up.
    wait_until(owners_lead, timeout=15, interval=0.2, what="every owner leads its arc")
    p = run_chordctl("-c", cluster.config_path, "ring", "show")
    out = p.stdout.decode()
    assert p.returncode == 0, p.stderr
    assert "replicas (state, entries behind)" in out
    assert "0 leader, 2 up, 1 up" in out
    with Client(cfg, target=cluster.address(0)) as c:
        wait_until(lambda: all(c.health(service=f"arc/{g}") == "SERVING" for g in range(3)),
                   timeout=10, what="every arc SERVING on node 0")
    cluster.nodes[1].kill(signal.SIGKILL)
    cluster.nodes[2].kill(signal.SIGKILL)
    with Client(cfg, target=cluster.address(0)) as c:
        # Alone, node 0 cannot commit anything: no arc is served.
        wait_until(lambda: all(c.health(service=f"arc/{g}") == "NOT_SERVING" for g in range(3)),
                   timeout=10, what="every arc NOT_SERVING on a lone node 0")
        assert c.health() == "SERVING"       # the node itself still answers
    p = run_chordctl("-c", cluster.config_path, "ring", "show")
    assert p.returncode == 3
    assert "1 down" in p.stdout.decode() and "2 down" in p.stdout.decode()


def test_arc_rows_say_catching_up_for_a_replica_far_behind():
    from chordctl import config as configmod
    from chordctl.pb import chord_pb2 as pb
    from chordctl.status import arc_rows
    cfg = configmod.from_dict({"ring": {"bits": 8, "replicas": 3},
                               "nodes": [{"host": "127.0.0.1", "port": 7000 + i}
                                         for i in range(3)]})
    members = Ring(8, 3).replicas(0, 3)

    def view(g, state, applied, commit=500):
        return pb.GroupStatus(group=g, members=Ring(8, 3).replicas(g, 3), state=state,
                              term=4, commit_index=commit, last_applied=applied, log_index=500)

    statuses = [pb.NodeStatus(groups=[view(0, "leader", 500)]),
                pb.NodeStatus(groups=[view(0, "follower", 40, commit=40)]),
                ChordError("down")]
    rows, docs = arc_rows(cfg, statuses)
    assert docs[0]["leader"] == 0 and docs[0]["term"] == 4
    by_index = {r["index"]: r for r in docs[0]["replicas"]}
    assert by_index[0]["state"] == "leader"
    assert by_index[1] == {"index": 1, "state": "catching up", "behind": 460}
    assert by_index[2]["state"] == "down"
    assert "1 catching up 460" in rows[0][4]
    assert members[0] == 0


def _views(statuses_of: dict[int, list[tuple]], n: int = 3):
    """NodeStatus answers from {node: [(group, state, learning), ...]}; others down."""
    from chordctl.pb import chord_pb2 as pb
    out = []
    for i in range(n):
        if i not in statuses_of:
            out.append(ChordError("down"))
            continue
        out.append(pb.NodeStatus(groups=[
            pb.GroupStatus(group=g, members=Ring(8, n).replicas(g, 3), state=state, term=2,
                           commit_index=10, last_applied=10, log_index=10, learning=learning)
            for g, state, learning in statuses_of[i]]))
    return out


def test_arc_rows_tell_an_arc_serving_degraded_leaderless_or_unable_to_elect():
    from chordctl import config as configmod
    from chordctl.status import arc_rows, unserved_arcs
    cfg = configmod.from_dict({"ring": {"bits": 8, "replicas": 3},
                               "nodes": [{"host": "127.0.0.1", "port": 7000 + i}
                                         for i in range(3)]})

    def state(statuses_of):
        rows, docs = arc_rows(cfg, _views(statuses_of))
        assert rows[0][-1] == docs[0]["state"]
        return docs[0]["state"], unserved_arcs(docs[:1])

    assert state({0: [(0, "leader", False)], 1: [(0, "follower", False)],
                  2: [(0, "follower", False)]}) == ("serving", "")
    # A leader and a majority: it serves, one replica down or learning.
    assert state({0: [(0, "leader", False)], 1: [(0, "follower", False)]}) == ("degraded", "")
    assert state({0: [(0, "leader", False)], 1: [(0, "follower", False)],
                  2: [(0, "follower", True)]}) == ("degraded", "")
    said, line = state({0: [(0, "follower", False)]})
    assert said == "no leader"
    assert line.startswith("arc 0 cannot serve (no leader: nodes 1, 2 are not up"), line
    assert "takes 2 of its 3 replicas" in line and "cluster up" in line, line
    said, line = state({0: [(0, "follower", False)], 1: [(0, "follower", True)],
                        2: [(0, "follower", True)]})
    assert said == "cannot elect"
    assert "nodes 1, 2 are learning" in line and "its old directory" in line, line
    said, line = state({0: [(0, "candidate", False)], 1: [(0, "follower", False)]})
    assert said == "no leader" and "1 of its 3" not in line and "2 of its 3 replicas are up" \
        in line, line


def test_ring_show_exits_0_for_a_degraded_arc_and_3_for_one_without_a_leader(
        tmp_path, monkeypatch):
    """Every node up (so nothing else makes it exit 3): an arc whose leader
    has a replica catching up is shown degraded and the ring serves (exit 0);
    an arc whose learners cannot elect serves nothing (exit 3, named)."""
    from click.testing import CliRunner

    from chordctl.cli import ring as ring_cli
    from chordctl.cli.main import cli
    from conftest import write_config
    path = write_config(tmp_path, 3, bits=8, replicas=3)
    up = [[(g, "follower", False) for g in range(3)] for _ in range(3)]
    for g in range(3):
        up[g][g] = (g, "leader", False)
    statuses = _views(dict(enumerate(up)))
    statuses[1].groups[0].last_applied = 0          # 10 behind arc 0's leader: catching up
    statuses[1].groups[0].commit_index = 0
    monkeypatch.setattr(ring_cli, "poll_nodes", lambda cfg, timeout: statuses)
    ok = CliRunner().invoke(cli, ["-c", path, "ring", "show"])
    assert ok.exit_code == 0, ok.output
    arc0 = next(line for line in ok.output.splitlines() if "catching up" in line)
    assert "1 catching up 10" in arc0 and arc0.rstrip().endswith("degraded"), ok.output
    learners = [[(g, "follower", i != 0) for g in range(3)] for i in range(3)]
    monkeypatch.setattr(ring_cli, "poll_nodes",
                        lambda cfg, timeout: _views(dict(enumerate(learners))))
    bad = CliRunner().invoke(cli, ["-c", path, "ring", "show"])
    assert bad.exit_code == 3, bad.output
    assert "not up" not in bad.output
    assert "chordctl: ring: arcs 0, 1, 2 cannot serve (cannot elect: nodes 1, 2 are " \
        "learning" in bad.output, bad.output


def test_scan_and_count_list_every_key_once_and_survive_a_lost_owner(make_cluster):
    import asyncio
    from chordctl import aio
    cluster = make_cluster(3, bits=BITS, replicas=3).settled()
    cfg = cluster.config
    keys = sorted(keys_on_every_arc(3, per_arc=5))
    with Client(cfg, target=cluster.address(0)) as c:
        for k in keys:
            c.create(str(k), b"v%d" % k)
    with Client(cfg) as c:
        assert [e.key for e in c.scan(limit=0)] == keys          # once each, not R times
        assert sum(n.keys for n in c.count()) == len(keys)
        assert [e.key for e in c.scan(start=keys[2], end=keys[-2], limit=0)] == keys[2:-2]
    cluster.nodes[0].kill(signal.SIGKILL)
    with Client(cfg) as c:
        # Arc 0's owner is gone: its other replicas answer for it.
        entries = list(c.scan(limit=0))
        assert [e.key for e in entries] == keys
        assert {e.value for e in entries} == {b"v%d" % k for k in keys}
        counts = c.count()
        assert sum(n.keys for n in counts) == len(keys) and all(n.error is None for n in counts)
        # One row per arc, saying which replica answered for it.
        assert [n.arc for n in counts] == [0, 1, 2] and counts[0].index != 0
    from conftest import run_chordctl
    out = run_chordctl("-c", cluster.config_path, "kv", "count")
    assert out.returncode == 0, out.stderr
    header, *rows = [line.split() for line in out.stdout.decode().splitlines()
                     if line.strip() and not set(line.strip()) <= set("-+ ")]
    assert header[:3] == ["arc", "answered", "by"]
    assert [r[0] for r in rows[:3]] == ["0", "1", "2"] and rows[3][0] == "total"
    doc = json.loads(run_chordctl("-c", cluster.config_path, "-o", "json", "kv", "count").stdout)
    assert [n["arc"] for n in doc["nodes"]] == [0, 1, 2] and doc["total"] == len(keys)

    async def via_aio():
        db = await aio.connect(cfg)
        try:
            listed = [e.key async for e in await db.scan(limit=0)]
            counted = sum(n.keys for n in await db.count())
        finally:
            await db.close()
        return listed, counted

    assert asyncio.run(via_aio()) == (keys, len(keys))


def test_a_scan_of_one_arc_sees_every_write_committed_before_it(make_cluster):
    """Through a follower too: the view is taken after a barrier entry of the arc's log."""
    from chordctl.pb import chord_pb2 as pb
    cluster = make_cluster(3, bits=BITS, replicas=3).settled()
    cfg = cluster.config
    arc0 = [k for k in keys_on_every_arc(3, per_arc=30) if Ring(BITS, 3).owner(k) == 0]
    follower = Ring(BITS, 3).replicas(0, 3)[1]
    with Client(cfg, target=cluster.address(0)) as writer, \
            Client(cfg, target=cluster.address(follower)) as reader:
        for n, k in enumerate(arc0):
            writer.create(str(k), b"x")
            stub = reader._node_stub(follower)
            reply = stub.Count(pb.CountRequest(arc=0), timeout=5)
            assert reply.keys == n + 1, f"after {n + 1} acknowledged creates"
        with pytest.raises(ChordError, match="holds no copy of arc"):
            from chordctl.client import error_for
            import grpc
            try:
                stub.Count(pb.CountRequest(arc=7 % 3 + 10), timeout=5)
            except grpc.RpcError as e:
                raise error_for(e.code(), e.details(), cluster.address(follower)) from None


def _written_then_killed(make_cluster, victim: int):
    """A settled 3-node R=3 ring, 10 keys per arc created and 5 updated, then
    *victim* killed -9 once it applied them: (cluster, keys, expected values)."""
    cluster = make_cluster(3, bits=BITS, replicas=3).settled()
    cfg = cluster.config
    keys = keys_on_every_arc(3, per_arc=10)
    with Client(cfg, target=cluster.address(0)) as c:
        for k in keys:
            c.create(str(k), b"v%d" % k)
        for k in keys[:5]:
            c.update(str(k), b"u%d" % k)
    wait_until(lambda: held_keys(cfg, cluster.address(victim)) == len(keys), timeout=10,
               what="the victim applied everything")
    cluster.nodes[victim].kill(signal.SIGKILL)
    expect = {k: (b"u%d" % k if i < 5 else b"v%d" % k) for i, k in enumerate(keys)}
    return cluster, keys, expect


def test_a_replica_whose_log_lost_its_tail_gets_it_back_from_its_journal(make_cluster):
    """log.X of a replicated node is written behind raft.journal (no fsync per
    answer): an OS crash may take its tail. Cut the tail at an entry's end and
    restart: the node applies those entries again from its journal, once."""
    from chordctl.core.storage import files, records
    victim = 2
    cluster, keys, expect = _written_then_killed(make_cluster, victim)
    cfg = cluster.config
    d = cfg.node_dir(victim)
    newest = max(files.list_counters(d)[0])
    path = os.path.join(d, files.log_name(newest))
    buf = open(path, "rb").read()
    ends = [off for off, _s, op, _k, _v in records.iter_records(buf, path, True, records.Tail())
            if op == 8]
    assert len(ends) > 10
    cut = ends[len(ends) // 2]          # the start of a raft record: cut inside that entry
    with open(path, "r+b") as f:
        f.truncate(cut)
    cluster.nodes[victim].start()
    wait_until(lambda: held_keys(cfg, cluster.address(victim)) == len(keys), timeout=15,
               what="the victim holds every key again")
    read_all(cfg, cluster.address(victim), expect)


def test_a_replica_whose_journal_lost_its_tail_gets_the_entries_again_from_the_leader(
        make_cluster):
    """A replica applies a committed entry before its round's fdatasync: a
    kill between the two leaves the map (log.X) ahead of raft.journal. The
    node starts, the leader sends those entries again, they apply once. A
    journal that is gone altogether (the votes it cast with it) is refused."""
    from chordctl.core.storage import raftjournal
    from conftest import run_chordctl
    victim = 1
    cluster, keys, expect = _written_then_killed(make_cluster, victim)
    cfg = cluster.config
    d = cfg.node_dir(victim)
    with raftjournal.RaftJournal(d) as j:
        for g in j.groups():
            log = j.group(g)
            assert len(log) > 8
            log.deleteEntriesFrom(len(log) - 8)
        j.sync()
    cluster.nodes[victim].start()
    wait_until(lambda: held_keys(cfg, cluster.address(victim)) == len(keys), timeout=15,
               what="the victim serves again")
    with Client(cfg, target=cluster.address(0)) as c:
        c.update(str(keys[6]), b"after")
    expect[keys[6]] = b"after"
    wait_until(lambda: all(g.last_applied == g.commit_index
                           for g in groups_of(cfg, cluster.address(victim)).values()),
               timeout=10, what="the victim applied everything again")
    read_all(cfg, cluster.address(victim), expect)
    # Without its journal the replica would forget its votes: refused.
    cluster.nodes[victim].kill(signal.SIGKILL)
    os.unlink(os.path.join(d, raftjournal.FILE_NAME))
    p = run_chordctl("-c", cluster.config_path, "node", "serve", "--node", str(victim),
                     timeout=30)
    err = p.stderr.decode()
    assert p.returncode == 1 and "Traceback" not in err, err
    assert "its journal (raft.journal) ends at 0" in err, err


def test_two_of_three_replicas_lost_serve_nothing_until_a_majority_is_back(make_cluster):
    """With two of an arc's three replicas down, the survivor answers no read
    and no write of it (an error, never a stale value); with one back, every
    acknowledged write is served again."""
    cluster = make_cluster(3, bits=BITS, replicas=3, timeout=1.5).settled()
    cfg = cluster.config
    keys = keys_on_every_arc(3)
    with Client(cfg, target=cluster.address(0)) as c:
        for k in keys:
            c.create(str(k), b"v%d" % k)
        for k in keys[::2]:
            c.update(str(k), b"u%d" % k)
    expect = {k: (b"u%d" % k if i % 2 == 0 else b"v%d" % k) for i, k in enumerate(keys)}
    cluster.nodes[1].kill(signal.SIGKILL)
    cluster.nodes[2].kill(signal.SIGKILL)
    tried = keys[::4]                        # one key of each arc
    with Client(cfg, target=cluster.address(0), timeout=1.5) as c:
        for k in tried:
            # The node says why, before the client's own deadline: the arc
            # has no leader (at first its commands wait for one and are
            # answered just before their deadline; once the group has had no
            # leader for 3 election timeouts, at once).
            with pytest.raises(ChordError) as e:
                c.read(str(k))
            assert not isinstance(e.value, NotFoundError)
            assert "nothing was changed" in str(e.value) or "has had no leader" in str(e.value)
            # Not acknowledged, and said to be in doubt (the entry may still
            # commit once a majority is back), or refused before it was
            # submitted.
            with pytest.raises(ChordError) as e:
                c.update(str(k), b"maybe")
            assert "may still be applied" in str(e.value) or \
                "not applied -- safe to retry" in str(e.value), e.value
        wait_until(lambda: all(c.health(service=f"arc/{g}") == "NOT_SERVING" for g in range(3)),
                   timeout=10, what="every arc NOT_SERVING on the survivor")
        wait_until(lambda: "has had no leader" in _failure(c, keys[1]), timeout=10,
                   what="a write refused at once")
        t0 = time.monotonic()
        with pytest.raises(UnavailableError) as e:      # never submitted: never applied
            c.update(str(keys[1]), b"never")
        assert time.monotonic() - t0 < 1.0
        assert "fewer than a majority of its replicas" in str(e.value)
    cluster.nodes[1].start()
    wait_until(lambda: all(g.leader >= 0 for g in groups_of(cfg, cluster.address(0)).values()),
               timeout=15, what="every arc led again")
    for i in (0, 1):
        with Client(cfg, target=cluster.address(i), timeout=5) as c:
            for k in keys:
                v = c.read(str(k)).value
                assert v == expect[k] or (k in tried and v == b"maybe"), (i, k, v)
    with Client(cfg, target=cluster.address(1)) as c:
        c.update(str(keys[1]), b"after")
        assert c.read(str(keys[1])).value == b"after"


def _failure(c: Client, key: int) -> str:
    try:
        c.read(str(key))
    except ChordError as e:
        return str(e)
    return ""


def test_a_replica_whose_journal_disk_fills_fail_stops_and_the_others_go_on(make_cluster,
                                                                            tmp_path):
    """raft.journal writes on node 2 fail with ENOSPC from some point on: node
    2 fail-stops (its health NOT_SERVING, its status says why), the other two
    serve every arc, nothing acknowledged is lost, and node 2, restarted on a
    disk with room again, catches up."""
    from conftest import NodeProc
    cluster = make_cluster(3, bits=BITS, replicas=3, timeout=5, start=False)
    cfg = cluster.config
    trigger = str(tmp_path / "disk-full")
    cluster.nodes[2] = NodeProc(cluster.config_path, 2, journal_fault=trigger)
    cluster.start().settled()
    keys = keys_on_every_arc(3)
    with Client(cfg, target=cluster.address(0)) as c:
        for k in keys:
            c.create(str(k), b"v%d" % k)
    open(trigger, "w").close()
    with Client(cfg, target=cluster.address(0), timeout=5) as c:
        for k in keys:
            c.update(str(k), b"u%d" % k)     # arc 2's leader is gone: the others elect
    expect = {k: b"u%d" % k for k in keys}
    with Client(cfg, target=cluster.address(2), timeout=5) as c:
        wait_until(lambda: c.status(timeout=5).failed, timeout=10,
                   what="node 2 fail-stopped")
        failed = c.status(timeout=5).failed
        assert "raft.journal" in failed and "free space" in failed, failed
        assert c.health() == "NOT_SERVING"
    read_all(cfg, cluster.address(0), expect)
    read_all(cfg, cluster.address(1), expect)
    # Room again: restarted, node 2 cuts what the failed write left and catches up.
    cluster.nodes[2].kill(signal.SIGKILL)
    os.unlink(trigger)
    cluster.nodes[2].start()
    wait_until(lambda: held_keys(cfg, cluster.address(2)) == len(keys), timeout=15,
               what="node 2 holds every key")
    wait_until(lambda: all(g.last_applied == g.commit_index
                           for g in groups_of(cfg, cluster.address(2)).values()),
               timeout=15, what="node 2 applied everything")
    read_all(cfg, cluster.address(2), expect)


def groups_of(cfg, address) -> dict:
    with Client(cfg, target=address, timeout=5) as c:
        return {g.group: g for g in c.status(timeout=5).groups}


def test_snapshots_compact_the_logs_and_a_replacement_gets_the_arc_as_a_dump(make_cluster):
    """Each node's snapshot is its groups' snapshot: the logs are dropped before
    it. A replacement on an empty directory, whose arcs' logs now start past
    its (empty) end, receives each arc from its leader as a dump (chunks over
    the same gRPC streams), installs it, then applies the entries after it --
    and a restart of it afterwards keeps what it installed."""
    cluster = make_cluster(3, bits=BITS, replicas=3).settled()
    cfg = cluster.config
    keys = keys_on_every_arc(3, per_arc=30)
    big = b"x" * 20_000                # a dump of several chunks
    with Client(cfg, target=cluster.address(0)) as c:
        for k in keys:
            c.create(str(k), b"v%d" % k + big)
        for k in keys[::3]:
            c.delete(str(k))
    victim = 2
    wait_until(lambda: held_keys(cfg, cluster.address(victim)) == len(keys) - len(keys[::3]),
               timeout=10, what="the victim applied everything")
    cluster.nodes[victim].kill(signal.SIGKILL)
    shutil.rmtree(cfg.node_dir(victim))
    with Client(cfg, target=cluster.address(0)) as c:
        for k in keys[1::3]:
            # The victim led its own arc: until the others elect, a write may
            # fail (its deadline); an update to the same value is safe again.
            wait_until(lambda: _wrote(c, k, b"u%d" % k), timeout=10, interval=0.1,
                       what=f"update of {k} after the kill")
    expect = {k: (b"u%d" % k if i % 3 == 1 else b"v%d" % k + big)
              for i, k in enumerate(keys) if i % 3 != 0}
    for i in (0, 1):
        with Client(cfg, target=cluster.address(i), timeout=30) as c:
            c.take_snapshot()
    for i in (0, 1):
        # The dump is renamed into place on the replicator's thread, after
        # the snapshot's reply: wait for the compaction it makes.
        wait_until(lambda: all(g.log_start > 1 and g.compactions >= 1
                               for g in groups_of(cfg, cluster.address(i)).values()),
                   timeout=10, what=f"node {i}'s logs compacted")
        d = cfg.node_dir(i)
        assert all(os.path.exists(os.path.join(d, f"raft-{g}.dump")) for g in range(3))
        # Each names its newest commands, for a leader that has only the dump.
        from chordctl.core.replication import dump as dump_file
        assert all(dump_file.read_recent(os.path.join(d, f"raft-{g}.dump")) for g in range(3))
    cluster.nodes[victim].start()
    wait_until(lambda: held_keys(cfg, cluster.address(victim)) == len(expect), timeout=30,
               what="the replacement caught up")
    # (its status is a summary the engine refreshes every 50 ms)
    wait_until(lambda: all(g.installs >= 1
                           for g in groups_of(cfg, cluster.address(victim)).values()),
               timeout=5, what="every arc reached the replacement as a dump")
    read_all(cfg, cluster.address(victim), expect)
    # Writes after the install reach it as entries; a kill -9 right after
    # keeps everything (the installed arc is in its log.X, or again from its
    # dump), and it answers alone for its copy once the others are gone.
    with Client(cfg, target=cluster.address(0)) as c:
        c.update(str(keys[1]), b"after")
    expect[keys[1]] = b"after"
    wait_until(lambda: groups_of(cfg, cluster.address(victim))[0].last_applied
               >= groups_of(cfg, cluster.address(0))[0].commit_index, timeout=10,
               what="the replacement applied the last write")
    cluster.nodes[victim].kill(signal.SIGKILL)
    cluster.nodes[victim].start()
    wait_until(lambda: held_keys(cfg, cluster.address(victim)) == len(expect), timeout=20,
               what="the replacement restarted")
    # An OS crash that took its log.X and snapshots (fsynced at most once a
    # second behind the journal): the journal starts past the map's end, and
    # the node installs its dumps again, then applies the journal after them.
    cluster.nodes[victim].kill(signal.SIGKILL)
    d = cfg.node_dir(victim)
    for name in os.listdir(d):
        if name.startswith(("log.", "snap.")):
            os.remove(os.path.join(d, name))
    cluster.nodes[victim].start()
    wait_until(lambda: held_keys(cfg, cluster.address(victim)) == len(expect), timeout=20,
               what="the replacement installed its dumps again")
    # Every node killed and restarted on compacted logs: each starts its
    # groups where its files end and the ring goes on.
    with Client(cfg, target=cluster.address(1)) as c:
        c.update(str(keys[2]), b"before the restart")
    expect[keys[2]] = b"before the restart"
    cluster.restart().settled()
    for i in range(3):
        read_all(cfg, cluster.address(i), expect)
    for i in (0, 1):
        cluster.nodes[i].kill(signal.SIGKILL)
    cluster.nodes[victim].kill(signal.SIGKILL)
    from chordctl.core.storage import recovery
    from chordctl.core.store import Store
    store = Store()
    recovery.recover(cfg.node_dir(victim), store, replicated=True)
    assert dict(store.items()) == expect


def _wrote(c, k, v) -> bool:
    try:
        c.update(str(k), v)
        return True
    except ChordError:
        return False


def test_sigterm_of_a_replicated_node_does_not_wait_out_the_grace(make_cluster):
    """The peers' Raft.Push streams stay open while both nodes run: a stop
    must end them once its requests are answered, not wait the server's whole
    grace on them (it did: every SIGTERM of an R > 1 node took 5 s)."""
    from chordctl.core.server import SHUTDOWN_GRACE
    cluster = make_cluster(3, bits=BITS, replicas=3).settled()
    cfg = cluster.config
    keys = keys_on_every_arc(3)
    with Client(cfg, target=cluster.address(1)) as c:
        for k in keys:
            c.create(str(k), b"v%d" % k)
    t0 = time.monotonic()
    code = cluster.nodes[1].stop()
    took = time.monotonic() - t0
    assert code == 0, cluster.nodes[1].log()
    assert took < SHUTDOWN_GRACE / 2, f"SIGTERM took {took:.2f}s\n{cluster.nodes[1].log()}"
    assert "refused our stream" not in cluster.nodes[0].log()
    read_all(cfg, cluster.address(0), {k: b"v%d" % k for k in keys})
    cluster.nodes[1].start()
    read_all(cfg, cluster.address(1), {k: b"v%d" % k for k in keys})


def test_writes_in_flight_when_the_leader_dies_are_applied_once_without_an_error(make_cluster):
    """Updates of one key through a follower, one after another, while the
    arc's leader is killed: the follower submits what the leader change left
    in doubt again, marked, and the new leader attaches it to its first copy
    if it has one -- so every update succeeds and none lands twice (a
    duplicate applied late would leave an older value behind)."""
    import threading
    cluster = make_cluster(3, bits=BITS, replicas=3, timeout=8).settled()
    cfg = cluster.config
    key = keys_on_every_arc(3)[0]                       # on arc 0: node 0 leads it
    errors, done = [], []
    with Client(cfg, target=cluster.address(0)) as c:
        c.create(str(key), b"0")

    def writer():
        with Client(cfg, target=cluster.address(1), timeout=8) as c:
            for i in range(1, 301):
                try:
                    c.update(str(key), b"%d" % i)
                    done.append(i)
                except ChordError as e:
                    errors.append((i, str(e)))
                    return

    t = threading.Thread(target=writer)
    t.start()
    wait_until(lambda: len(done) >= 50 or errors, timeout=30, what="updates before the kill")
    cluster.nodes[0].kill(signal.SIGKILL)
    t.join(120)
    assert not t.is_alive()
    assert errors == [] and done == list(range(1, 301))
    for i in (1, 2):
        with Client(cfg, target=cluster.address(i)) as c:
            assert c.read(str(key)).value == b"300"


def test_a_client_whose_entry_node_dies_goes_on_through_another(make_cluster):
    """The shell's client (entry routing, operations submitted without
    waiting): its entry node killed, the next operations reach another node
    and are answered. Before, the retry ran on the dead channel's own thread
    and closed that channel there, which never returns: the client hung."""
    import threading
    cluster = make_cluster(3, bits=BITS, replicas=3)
    keys = keys_on_every_arc(3, per_arc=2)
    c = Client(cluster.config)
    try:
        assert c.connect() == cluster.address(0)
        c.create(str(keys[0]), b"before")
        cluster.nodes[0].kill(signal.SIGKILL)
        # Until the client's channel has seen the connection end, a call may
        # still go out on it and be lost with it: a write's outcome is then
        # unknown and said so ("lost the connection ... may still be
        # applied"), which is right, and not what this test is about.
        gone = threading.Event()

        def watch(state):
            if state != grpc.ChannelConnectivity.READY:
                gone.set()

        c._channel.subscribe(watch)
        assert gone.wait(10), "the client's channel never saw node 0 go"
        c._channel.unsubscribe(watch)
        outcomes: list = []
        done = threading.Event()

        def got(outcome):
            outcomes.append(outcome)
            if len(outcomes) == 2 * len(keys):
                done.set()

        for k in keys:
            c.submit_ordered("update" if k == keys[0] else "create", str(k), b"after", got)
            c.submit_ordered("read", str(k), None, got)
        assert done.wait(20), f"{len(outcomes)} of {2 * len(keys)} answered"
        failed = [o for o in outcomes if isinstance(o, ChordError)]
        assert not failed, failed
        assert c.address != cluster.address(0)
        assert {o.value for o in outcomes if o.op == "read"} == {b"after"}
    finally:
        closer = threading.Thread(target=c.close, daemon=True)   # a hung client stays behind
        closer.start()
        closer.join(10)
    assert not closer.is_alive(), "the client did not close"


def test_the_direct_route_sends_a_dead_owners_operations_to_the_next_replica(make_cluster):
    """connect()'s default route sends each operation to its key's owner. With
    the owner killed, every flavour (unary, coalesced, asyncio; one by one
    and many in flight) reaches the arc through its next replica: its call
    never left, the owner is passed over, and nothing fails. Before, a
    single operation retried the dead owner and failed."""
    import asyncio
    import threading

    import chordctl
    from chordctl import aio
    cluster = make_cluster(3, bits=BITS, replicas=3).settled()
    cfg = cluster.config
    ring = Ring(BITS, 3)
    keys = keys_on_every_arc(3, per_arc=3)
    with Client(cfg, target=cluster.address(1)) as c:
        for k in keys:
            c.create(str(k), b"before")
    dead = 0
    clients = [chordctl.connect(cluster.config_path, coalesce=False),
               chordctl.connect(cluster.config_path)]              # coalesced lanes
    try:
        for c in clients:       # channels open to every owner before the kill
            assert c.route == "direct"
            for k in keys:
                assert c.read(k).value == b"before"
        cluster.nodes[dead].kill(signal.SIGKILL)
        assert any(ring.owner(k) == dead for k in keys)
        for n, c in enumerate(clients):
            for k in keys:
                c.update(k, b"sync%d" % n)
                assert c.read(k).value == b"sync%d" % n, f"key {k}"
        # Many in flight at once on the coalesced client's lanes.
        errors: list = []

        def worker(k: int) -> None:
            try:
                clients[1].update(k, b"threads")
            except ChordError as e:
                errors.append(e)

        threads = [threading.Thread(target=worker, args=(k,)) for k in keys]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert errors == []
    finally:
        for c in clients:
            c.close()

    async def via_aio() -> list[bytes]:
        async with await aio.connect(cluster.config_path) as db:
            assert db.route == "direct"
            await asyncio.gather(*(db.update(k, b"aio") for k in keys))
            return [(await db.read(k)).value for k in keys]

    assert asyncio.run(via_aio()) == [b"aio"] * len(keys)


def test_a_passed_over_node_is_tried_again_after_a_while():
    """ClientBase.serving: a node that could not be reached gives its arcs to
    their next replica for PASS_OVER seconds, only with direct routing and
    R > 1; then it is the owner again."""
    from chordctl import client as client_mod
    from chordctl import config as config_mod

    def cfg(route, replicas):
        return config_mod.from_dict({
            "ring": {"bits": 8, "replicas": replicas},
            "nodes": [{"host": "127.0.0.1", "port": 1 + i} for i in range(5)],
            "client": {"route": route}})

    ring = Ring(8, 5)
    owner = ring.owner(7)
    first, second, third = ring.replicas(owner, 3)
    with Client(cfg("direct", 3)) as c:
        assert c.serving(owner) == owner
        c.pass_over(owner)
        assert c.serving(owner) == second
        assert c.stub_for("7")[1] == f"127.0.0.1:{1 + second}"
        c.pass_over(second)
        assert c.serving(owner) == third
        c.pass_over(third)
        assert c.serving(owner) == owner        # all passed over: the owner
        c._passed[owner] = time.monotonic() - 1  # its time is up
        assert c.serving(owner) == owner and owner not in c._passed
        assert 0 < c._passed[second] - time.monotonic() <= client_mod.PASS_OVER
    for route, replicas in (("direct", 1), ("entry", 3)):
        with Client(cfg(route, replicas)) as c:
            c.pass_over(owner)
            assert c._passed == {}


def test_a_replica_directory_of_another_ring_of_the_same_shape_is_refused(make_cluster,
                                                                        tmp_path):
    """A node directory copied from another R = 3 ring of the same shape: its
    keys all lie in the right arcs, and with a longer log and higher terms it
    would win its groups' elections and overwrite this ring's acknowledged
    writes. It is refused (exit 2), naming where that ring's nodes were, and
    this ring keeps serving every key."""
    from conftest import Cluster, write_config
    (tmp_path / "a").mkdir()
    a = Cluster(write_config(tmp_path / "a", 3, bits=BITS, replicas=3)).start()
    try:
        with Client(a.config, target=a.address(0)) as c:
            for k in range(100, 400):
                c.create(str(k), b"ring A")
    finally:
        a.stop()
    b = make_cluster(3, bits=BITS, replicas=3).settled()
    keys = keys_on_every_arc(3)
    with Client(b.config, target=b.address(0)) as c:
        for k in keys:
            c.create(str(k), b"ring B")
    b.nodes[2].kill(signal.SIGKILL)
    shutil.rmtree(b.config.node_dir(2))
    shutil.copytree(a.config.node_dir(2), b.config.node_dir(2))
    node = b.nodes[2]
    node.start(wait=False)
    assert node.proc.wait(timeout=30) == 2
    out = node.log()
    assert "another ring's directory" in out and a.address(0) in out, out
    read_all(b.config, b.address(0), {k: b"ring B" for k in keys})


def test_count_and_scan_of_an_arc_without_a_majority_say_why_at_once(make_cluster):
    """Two of an arc's three replicas down: `kv count` and `kv scan` report
    the surviving replica's own words (the arc has no leader), not the
    failure to reach the last dead replica they tried, and do not wait out
    a timeout per replica."""
    from conftest import run_chordctl
    cluster = make_cluster(5, bits=BITS, replicas=3, timeout=3).settled()
    cluster.nodes[3].kill(signal.SIGKILL)
    cluster.nodes[4].kill(signal.SIGKILL)       # arcs 0 (0, 4, 3) and 4 (4, 3, 2)
    with Client(cluster.config, target=cluster.address(1)) as c:
        wait_until(lambda: "has had no leader" in _failure(c, Ring(BITS, 5).arc(4)[1]),
                   timeout=15, what="arc 4 refused at once")
    t0 = time.monotonic()
    p = run_chordctl("-c", cluster.config_path, "-o", "json", "kv", "count")
    took = time.monotonic() - t0
    doc = json.loads(p.stdout)
    assert p.returncode == 3, p.stderr
    errors = {n["arc"]: n.get("error", "") for n in doc["nodes"] if n.get("keys") is None}
    assert sorted(errors) == [0, 4], doc
    for arc, error in errors.items():
        assert "has had no leader" in error and "cannot connect" not in error, (arc, error)
    assert took < 3, took
    p = run_chordctl("-c", cluster.config_path, "kv", "scan")
    err = p.stderr.decode()
    assert p.returncode == 3 and "has had no leader" in err and "--partial" in err, err


def test_count_shows_a_leaderless_arc_as_its_own_not_as_another_node_down(make_cluster):
    """Nodes 3 and 4 killed: arcs 0 (0, 4, 3) and 4 (4, 3, 2) have no leader.
    Before, `kv count` showed arc 4 as node 2 DOWN (node 2 is up: it said
    the arc has no leader) and arc 0 as node 0 DOWN; each is now its own
    owner's row, NO LEADER, and the count still exits 3 (incomplete).
    `ring show` names the same arcs as serving nothing, and arcs 1 and 3
    (a leader, one replica down) as degraded."""
    import asyncio

    from chordctl import aio
    from conftest import run_chordctl
    cluster = make_cluster(5, bits=BITS, replicas=3, timeout=3).settled()
    ring = Ring(BITS, 5)
    with Client(cluster.config, target=cluster.address(0)) as c:
        for k in keys_on_every_arc(5, per_arc=1):
            c.create(str(k), b"v")
    cluster.nodes[3].kill(signal.SIGKILL)
    cluster.nodes[4].kill(signal.SIGKILL)
    with Client(cluster.config, target=cluster.address(1)) as c:
        for g in (0, 4):
            wait_until(lambda: "no leader" in _failure(c, ring.arc(g)[1]), timeout=15,
                       what=f"arc {g} refused for want of a leader")
    p = run_chordctl("-c", cluster.config_path, "-o", "json", "kv", "count")
    assert p.returncode == 3, p.stderr
    doc = json.loads(p.stdout)
    assert doc["complete"] is False and doc["total"] == 3, doc
    rows = {n["arc"]: n for n in doc["nodes"]}
    for g in (0, 4):
        assert rows[g]["index"] == g and rows[g]["state"] == "no leader", rows[g]
        assert rows[g]["address"] == cluster.address(g) and rows[g]["keys"] is None
    assert {rows[g]["state"] for g in (1, 2, 3)} == {"up"}
    p = run_chordctl("-c", cluster.config_path, "kv", "count")
    assert p.returncode == 3, p.stderr
    table = [line.split() for line in p.stdout.decode().splitlines()]
    by_arc = {r[0]: r for r in table if r and r[0] in "01234"}
    assert by_arc["4"][1] == "4" and by_arc["4"][-2:] == ["NO", "LEADER"], table
    assert by_arc["0"][1] == "0" and by_arc["0"][-2:] == ["NO", "LEADER"], table
    assert "DOWN" not in p.stdout.decode()

    async def via_aio():
        async with await aio.connect(cluster.config_path) as db:
            return await db.count()
    counts = {n.arc: n for n in asyncio.run(via_aio())}
    assert [(counts[g].index, counts[g].state) for g in (0, 4)] == [(0, "no leader"),
                                                                    (4, "no leader")]
    p = run_chordctl("-c", cluster.config_path, "-o", "json", "ring", "show")
    err = p.stderr.decode()
    assert p.returncode == 3 and "2 of 5 node(s) not up" in err, err
    assert "arcs 0, 4 cannot serve (no leader: nodes 3, 4 are not up" in err, err
    states = {d["replication"]["arc"]: d["replication"]["state"] for d in json.loads(p.stdout)}
    assert states == {0: "no leader", 1: "degraded", 2: "serving", 3: "degraded",
                      4: "no leader"}, states


def test_asyncio_streams_open_to_an_owner_that_dies_go_on_through_the_next_replica(
        make_cluster):
    """chordctl.aio coalesces onto BatchStream calls. With streams open to an
    owner when it is killed, the next batches reach the arc through its next
    replica (a stream found ended is retried on a fresh one, then on a fresh
    channel, which passes the dead owner over)."""
    import asyncio

    from chordctl import aio
    cluster = make_cluster(3, bits=BITS, replicas=3).settled()
    keys = keys_on_every_arc(3, per_arc=8)
    with Client(cluster.config, target=cluster.address(1)) as c:
        for k in keys:
            c.create(str(k), b"before")

    async def main() -> list:
        async with await aio.connect(cluster.config_path) as db:
            assert db.stream and db.coalesce
            for _ in range(3):      # concurrent: batches of several, on streams
                assert {r.value for r in await asyncio.gather(*(db.read(k) for k in keys))} \
                    == {b"before"}
            cluster.nodes[0].kill(signal.SIGKILL)
            out = await asyncio.gather(*(db.update(k, b"after") for k in keys),
                                       return_exceptions=True)
            out += await asyncio.gather(*(db.read(k) for k in keys), return_exceptions=True)
            return out

    out = asyncio.run(main())
    failed = [o for o in out if isinstance(o, BaseException)]
    assert not failed, failed[:3]
    assert {o.value for o in out[len(keys):]} == {b"after"}
