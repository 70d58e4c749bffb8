"""The public Python API under attack (issue #13 review): values of the wrong
type, a caller interrupted while it waits in a lane, close under load, a
node killed and restarted, many threads mixing call and submit.

Every wait is bounded: a stranded caller fails its test, it never hangs it.
"""

from __future__ import annotations

import asyncio
import time
import signal
import threading

import pytest

import chordctl
import chordctl.aio
from chordctl import ChordError, InvalidInputError, NotFoundError, Result, UnavailableError
from conftest import wait_until

JOIN = 10.0     # seconds any thread of a test may take


def run_bounded(fn, *args) -> list:
    """fn(*args) on a thread; its outcome in a list, or AssertionError if it hangs."""
    box: list = []

    def work():
        try:
            box.append(fn(*args))
        except BaseException as e:      # noqa: BLE001 - the outcome is what we test
            box.append(e)
    t = threading.Thread(target=work, daemon=True)
    t.start()
    t.join(JOIN)
    assert not t.is_alive(), f"{fn} did not return within {JOIN}s: a stranded caller"
    return box


@pytest.fixture(scope="module")
def ring(tmp_path_factory):
    from conftest import Cluster, write_config
    d = tmp_path_factory.mktemp("adversarial")
    c = Cluster(write_config(d, 2, limits={"max_batch_ops": 5}))
    c.start()
    yield c
    c.stop()


# -- values of the wrong type ------------------------------------------------------

@pytest.mark.parametrize("value", ["text", bytearray(b"x"), memoryview(b"x"), 7])
@pytest.mark.parametrize("route", ["direct", "entry"])
@pytest.mark.parametrize("coalesce", [True, False])
def test_value_that_is_not_bytes_is_invalid_input_not_typeerror(ring, value, route, coalesce):
    with chordctl.connect(ring.config_path, route=route, coalesce=coalesce) as db:
        with pytest.raises(InvalidInputError, match="give bytes"):
            db.create(10**9 + 1, value)
        with pytest.raises(InvalidInputError, match="give bytes"):
            db.call("read", 10**9 + 1, value)


def test_submit_with_str_value_does_not_wedge_the_lane(ring):
    """A str value used to raise TypeError out of the lane's send with its
    slot taken: every later call to that node hung forever."""
    with chordctl.connect(ring.config_path, route="direct") as db:
        got = []
        raised = None
        try:
            db.submit("create", 10**9 + 2, "text", callback=got.append)
        except Exception as e:      # noqa: BLE001
            raised = e
        [out] = run_bounded(db.read, 10**9 + 2)     # the same node's lane
        assert isinstance(out, NotFoundError), out
        assert isinstance(raised, InvalidInputError) and "give bytes" in str(raised), raised
        assert got == []


def test_aio_value_that_is_not_bytes_is_invalid_input(ring):
    async def main():
        async with await chordctl.aio.connect(ring.config_path) as db:
            with pytest.raises(InvalidInputError, match="give bytes"):
                await db.create(10**9 + 3, "text")
            with pytest.raises(NotFoundError):
                await db.read(10**9 + 3)
    asyncio.run(asyncio.wait_for(main(), JOIN))


# -- a caller interrupted while it waits ---------------------------------------------

HELD_KEY = 5


def test_interrupted_waiter_does_not_strand_the_callers_behind_it(make_cluster):
    """Ctrl-C in a thread waiting in a lane (behind a call in flight) used to
    leave its operation queued; the next batch was then handed to it to send,
    and nobody did: every caller of that batch, and the lane, hung forever."""
    cluster = make_cluster(1, hold=f"{HELD_KEY}:1.0")
    with chordctl.connect(cluster.config_path, route="direct") as db:   # depth 1
        leader = threading.Thread(target=lambda: pytest.raises(NotFoundError, db.read,
                                                               HELD_KEY), daemon=True)
        leader.start()
        wait_until(lambda: db._lanes.get(0) is not None and db._lanes[0].senders == 1,
                   what="the held read in flight")

        def interrupt(signum, frame):
            raise KeyboardInterrupt
        old = signal.signal(signal.SIGALRM, interrupt)
        try:
            signal.setitimer(signal.ITIMER_REAL, 0.2)
            with pytest.raises(KeyboardInterrupt):
                db.read(HELD_KEY + 1)       # waits behind the held read
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
        [out] = run_bounded(db.read, HELD_KEY + 2)    # queued behind the interrupted one
        assert isinstance(out, NotFoundError), out
        leader.join(JOIN)
        assert not leader.is_alive()
        assert db._lanes[0].senders == 0 and db._lanes[0].pending == []


# -- many threads, mixed call and submit, batches past max_batch_ops ---------------

@pytest.mark.parametrize("depth", [1, 2])
def test_mixed_call_and_submit_each_get_exactly_their_own_outcome(ring, depth):
    from chordctl.client import Client
    threads, per = 48, 12
    base = 10**10 + depth * 10**6
    with Client(ring.config, coalesce=True, coalesce_depth=depth, route="direct") as db:
        db.connect()
        outcomes: dict[int, list] = {}
        lock = threading.Lock()
        done = threading.Semaphore(0)
        submitted = [0]

        def record(k):
            def cb(out):
                with lock:
                    outcomes.setdefault(k, []).append(out)
                done.release()
            return cb

        def work(t):
            for i in range(per):
                k = base + t * 1000 + i
                if (t + i) % 3 == 0:
                    with lock:
                        submitted[0] += 1
                    db.submit("create", k, b"%d" % k, callback=record(k))
                elif (t + i) % 3 == 1:
                    with lock:
                        submitted[0] += 1
                    db.submit_ordered("create", str(k), b"%d" % k, record(k))
                else:
                    out = db.create(k, b"%d" % k)
                    with lock:
                        outcomes.setdefault(k, []).append(out)
        ts = [threading.Thread(target=work, args=(t,), daemon=True) for t in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(JOIN)
            assert not t.is_alive(), "a caller hung"
        for _ in range(submitted[0]):
            assert done.acquire(timeout=JOIN), "a submit callback never came"
        assert len(outcomes) == threads * per
        for k, outs in outcomes.items():
            assert len(outs) == 1, (k, outs)
            assert isinstance(outs[0], Result) and outs[0].key == str(k), (k, outs)
        reads = db.batch([("read", k, None) for k in outcomes])
        assert all(r.value == b"%s" % r.key.encode() for r in reads)
        assert db.lane_stats()["operations"] >= threads * per


def test_raising_submit_callback_strands_no_one(ring):
    with chordctl.connect(ring.config_path, route="direct") as db:
        def bad(_out):
            raise RuntimeError("a caller's bug")
        for i in range(20):
            db.submit("read", 10**11 + i, callback=bad)
        outs = []
        ts = [threading.Thread(target=lambda i=i: outs.append(
            pytest.raises(NotFoundError, db.read, 10**11 + 100 + i)), daemon=True)
            for i in range(16)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(JOIN)
            assert not t.is_alive()
        assert len(outs) == 16


# -- close and a node killed, under load -------------------------------------------

def test_close_from_another_thread_mid_load_returns_everyone(ring):
    db = chordctl.connect(ring.config_path, route="direct")
    stop = threading.Event()
    errors: list = []

    def work(t):
        i = 0
        while not stop.is_set():
            try:
                db.call("read", 10**12 + t * 10**6 + i)
            except NotFoundError:
                pass
            except ChordError as e:
                errors.append(e)
                return
            i += 1
    ts = [threading.Thread(target=work, args=(t,), daemon=True) for t in range(16)]
    for t in ts:
        t.start()
    wait_until(lambda: db.lane_stats()["operations"] > 200, what="load")
    db.close()
    for t in ts:
        t.join(JOIN)
        assert not t.is_alive(), "a caller hung after close()"
    stop.set()
    assert len(errors) == 16
    assert all(isinstance(e, (InvalidInputError, UnavailableError)) for e in errors), errors


def test_killed_node_fails_callers_then_the_same_client_works_after_restart(make_cluster):
    cluster = make_cluster(1, timeout=3)
    with chordctl.connect(cluster.config_path, route="direct") as db:
        db.create(1, b"a")
        cluster.nodes[0].kill()
        outs = []
        ts = [threading.Thread(target=lambda: outs.append(run_bounded(db.read, 1)[0]),
                               daemon=True) for _ in range(8)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(JOIN + 1)
        assert len(outs) == 8 and all(isinstance(o, UnavailableError) for o in outs), outs
        cluster.nodes[0].start()
        [out] = run_bounded(db.read, 1)
        assert isinstance(out, Result) and out.value == b"a", out


# -- timeouts -------------------------------------------------------------------------

@pytest.mark.parametrize("timeout", [float("inf"), 1e12, 10**400])
@pytest.mark.parametrize("coalesce", [True, False])
def test_huge_or_infinite_timeout_waits_instead_of_failing_at_once(ring, timeout, coalesce):
    """gRPC's deadline overflows past ~9.2e9 s: such a call failed at once with
    "no reply ... within infs"."""
    with chordctl.connect(ring.config_path, coalesce=coalesce) as db:
        with pytest.raises(NotFoundError):
            db.call("read", 10**9 + 7, timeout=timeout)
    with chordctl.connect(ring.config_path, timeout=timeout, coalesce=coalesce) as db:
        with pytest.raises(NotFoundError):
            db.read(10**9 + 7)
        assert db.batch([("read", 10**9 + 7, None)])[0].__class__ is NotFoundError


@pytest.mark.parametrize("timeout", [0, -1, float("nan"), "1", True])
def test_bad_call_timeout_is_invalid_input(ring, timeout):
    """A per-call timeout of 0, -1 or nan was sent as is ("no reply within
    nans"); a str raised TypeError."""
    with chordctl.connect(ring.config_path) as db:
        with pytest.raises(InvalidInputError, match="timeout must be"):
            db.call("read", 10**9 + 7, timeout=timeout)
        with pytest.raises(InvalidInputError, match="timeout must be"):
            db.submit("read", 10**9 + 7, callback=lambda _o: None, timeout=timeout)
        with pytest.raises(InvalidInputError, match="timeout must be"):
            db.batch([("read", 10**9 + 7, None)], timeout=timeout)
    with pytest.raises(InvalidInputError, match="timeout must be"):
        chordctl.connect(ring.config_path, timeout=timeout)


def test_aio_timeouts_checked_and_capped(ring):
    async def main():
        async with await chordctl.aio.connect(ring.config_path) as db:
            with pytest.raises(NotFoundError):
                await db.call("read", 10**9 + 7, timeout=float("inf"))
            for bad in (0, -1, float("nan")):
                with pytest.raises(InvalidInputError, match="timeout must be"):
                    await db.call("read", 10**9 + 7, timeout=bad)
    asyncio.run(asyncio.wait_for(main(), JOIN))


# -- a stuck node: the caller's timeout bounds its whole wait ------------------------

@pytest.mark.parametrize("route", ["direct", "entry"])
def test_stuck_node_fails_every_queued_caller_within_its_timeout(make_cluster, route):
    """Callers queued behind calls in flight to a stopped node waited for each
    batch ahead of them in turn, each with a full timeout: with 16 callers and
    max_batch_ops 5 the last one failed after 4 timeouts, not one."""
    timeout = 0.5
    cluster = make_cluster(1, timeout=timeout, limits={"max_batch_ops": 5})
    node = cluster.nodes[0]
    with chordctl.connect(cluster.config_path, route=route) as db:
        with pytest.raises(NotFoundError):
            db.read(1)      # the channel is up
        elapsed: list = []
        outcomes: list = []

        def work(i):
            t0 = time.monotonic()
            try:
                db.read(100 + i)
            except ChordError as e:
                outcomes.append(e)
            elapsed.append(time.monotonic() - t0)
        node.kill(signal.SIGSTOP)
        try:
            ts = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(16)]
            for t in ts:
                t.start()
            for t in ts:
                t.join(JOIN)
                assert not t.is_alive()
        finally:
            node.kill(signal.SIGCONT)
        assert len(outcomes) == 16
        assert all(isinstance(e, chordctl.DeadlineExceededError) for e in outcomes), outcomes
        assert max(elapsed) < 2.5 * timeout, sorted(elapsed)
        # and the lane works again once the node does
        [out] = run_bounded(db.read, 2)
        assert isinstance(out, NotFoundError), out


def test_aio_stuck_node_fails_every_queued_caller_within_its_timeout(make_cluster):
    timeout = 0.5
    cluster = make_cluster(1, timeout=timeout, limits={"max_batch_ops": 5})
    node = cluster.nodes[0]

    async def one(db, k):
        t0 = time.monotonic()
        try:
            await db.read(k)
        except ChordError as e:
            return e, time.monotonic() - t0
        return None, time.monotonic() - t0

    async def main():
        async with await chordctl.aio.connect(cluster.config_path, route="direct") as db:
            with pytest.raises(NotFoundError):
                await db.read(1)
            node.kill(signal.SIGSTOP)
            try:
                outs = await asyncio.wait_for(
                    asyncio.gather(*(one(db, 100 + i) for i in range(16))), JOIN)
            finally:
                node.kill(signal.SIGCONT)
            assert all(isinstance(e, chordctl.DeadlineExceededError) for e, _ in outs), outs
            assert max(t for _, t in outs) < 2.5 * timeout, sorted(t for _, t in outs)
            with pytest.raises(NotFoundError):
                await db.read(2)
    asyncio.run(main())


@pytest.mark.parametrize("coalesce", [True, False])
def test_trace_that_is_not_a_bool_is_invalid_input_and_does_not_wedge_the_lane(ring, coalesce):
    """trace="yes" raised protobuf's TypeError; from submit it left the lane's
    sender slot taken, and every later call to that node hung."""
    with chordctl.connect(ring.config_path, route="direct", coalesce=coalesce) as db:
        for bad in ("yes", 1.5, []):
            with pytest.raises(InvalidInputError, match="trace must be"):
                db.read(10**9 + 8, trace=bad)
            raised = None
            try:
                db.submit("read", 10**9 + 8, trace=bad, callback=lambda _o: None)
            except Exception as e:      # noqa: BLE001
                raised = e
            [out] = run_bounded(db.read, 10**9 + 8)
            assert isinstance(out, NotFoundError), out
            assert isinstance(raised, InvalidInputError), raised


@pytest.mark.parametrize("route", ["entry", "direct"])
def test_aio_client_used_on_another_event_loop_says_so(ring, route):
    """It raised RuntimeError('Event loop is closed') from grpc.aio's internals
    (entry), or opened channels and lanes bound to the new loop (direct)."""
    db = asyncio.run(chordctl.aio.connect(ring.config_path, route=route))

    async def elsewhere():
        for attempt in (lambda: db.read(10**9 + 9), lambda: db.batch([("read", 1, None)]),
                        lambda: db.count()):
            with pytest.raises(InvalidInputError, match="belongs to the event loop"):
                await asyncio.wait_for(attempt(), JOIN)
    asyncio.run(elsewhere())
    db._closed = True       # its loop is gone: nothing left to close there


def test_readme_names_connects_real_parameters():
    """README said ``connect(config_or_path=None, ...)``; the parameter is *config*."""
    import inspect
    import pathlib
    import re
    readme = (pathlib.Path(__file__).parent.parent / "README.md").read_text()
    section = readme.split("## Python API", 1)[1].split("\n## ", 1)[0]
    for fn in (chordctl.connect, chordctl.aio.connect):
        names = set(inspect.signature(fn).parameters)
        [shown] = re.findall(r"`chordctl\.connect\(([^`]*)\)`", section)
        documented = {p.split("=")[0].strip() for p in shown.replace("\n", " ").split(",")}
        assert documented - {"*"} == names, (documented, names)


def test_leader_interrupted_in_its_send_strands_no_follower(ring, monkeypatch):
    """A BaseException (Ctrl-C) in the thread sending a batch: the batch's
    callers get an error, the callers queued behind get the slot."""
    from chordctl import client as client_mod
    real = client_mod._call
    gate = threading.Event()
    entered = threading.Event()
    calls = [0]

    def flaky(kv, batch, timeout, future=False):
        calls[0] += 1
        if calls[0] == 1:
            entered.set()
            gate.wait(JOIN)
            raise KeyboardInterrupt
        return real(kv, batch, timeout, future)
    with chordctl.connect(ring.config_path, route="direct") as db:
        key = 10**9 + 10
        lane_index = db._ring.owner(key)
        monkeypatch.setattr(client_mod, "_call", flaky)
        lead = run_bounded_async(db.read, key)
        assert entered.wait(JOIN)
        followers = [run_bounded_async(db.read, key + 65536 * i) for i in range(1, 13)]
        wait_until(lambda: len(db._lanes[lane_index].pending) == 12, what="12 queued")
        gate.set()
        assert isinstance(lead(), KeyboardInterrupt)
        outs = [f() for f in followers]
        assert all(isinstance(o, NotFoundError) for o in outs), outs


def run_bounded_async(fn, *args):
    """Start fn(*args) on a thread; returns a function giving its outcome
    (AssertionError if it does not end within JOIN)."""
    box: list = []

    def work():
        try:
            box.append(fn(*args))
        except BaseException as e:      # noqa: BLE001
            box.append(e)
    t = threading.Thread(target=work, daemon=True)
    t.start()

    def result():
        t.join(JOIN)
        assert not t.is_alive(), f"{fn} did not return within {JOIN}s"
        return box[0]
    return result


def test_node_killed_under_mixed_load_then_restarted(make_cluster):
    cluster = make_cluster(2, timeout=2, limits={"max_batch_ops": 5})
    with chordctl.connect(cluster.config_path, route="direct") as db:
        stop = threading.Event()
        seen: list = []
        lock = threading.Lock()
        pending = threading.Semaphore(64)

        def work(t):
            i = 0
            while not stop.is_set():
                k = 10**6 * (t + 1) + i
                if i % 2:
                    pending.acquire()

                    def cb(out):
                        with lock:
                            seen.append(out)
                        pending.release()
                    db.submit("read", k, callback=cb)
                else:
                    try:
                        db.read(k)
                    except ChordError as e:
                        with lock:
                            seen.append(e)
                i += 1
        ts = [threading.Thread(target=work, args=(t,), daemon=True) for t in range(24)]
        for t in ts:
            t.start()
        wait_until(lambda: db.lane_stats()["operations"] > 300, what="load")
        cluster.nodes[0].kill()
        wait_until(lambda: any(isinstance(o, UnavailableError) for o in list(seen)),
                   what="a caller told the node is gone")
        cluster.nodes[0].start()
        mark = len(seen)
        wait_until(lambda: sum(isinstance(o, NotFoundError) for o in list(seen)[mark:]) > 300,
                   what="both nodes answering again")
        stop.set()
        for t in ts:
            t.join(JOIN)
            assert not t.is_alive(), "a caller hung"
        for _ in range(64):
            assert pending.acquire(timeout=JOIN), "a submit callback never came"
        kinds = {type(o) for o in seen}
        assert kinds <= {NotFoundError, UnavailableError, chordctl.DeadlineExceededError}, kinds
        for k in (1, 65535, 32768):
            with pytest.raises(NotFoundError):
                db.read(k)


@pytest.mark.parametrize("route", ["direct", "entry"])
def test_close_returns_callers_stuck_on_a_stopped_node_at_once(make_cluster, route):
    cluster = make_cluster(1, timeout=8, limits={"max_batch_ops": 5})
    node = cluster.nodes[0]
    db = chordctl.connect(cluster.config_path, route=route)
    with pytest.raises(NotFoundError):
        db.read(1)
    node.kill(signal.SIGSTOP)
    try:
        calls = [run_bounded_async(db.read, 100 + i) for i in range(16)]
        wait_until(lambda: sum(len(lane.pending) for lane in db._lanes.values()) >= 10,
                   what="callers queued")
        t0 = time.monotonic()
        db.close()
        outs = [c() for c in calls]
        assert time.monotonic() - t0 < 2.0
    finally:
        node.kill(signal.SIGCONT)
    assert all(isinstance(o, ChordError) for o in outs), outs
    assert not any(isinstance(o, chordctl.DeadlineExceededError) for o in outs), outs
    assert all(str(o).startswith("client: ") for o in outs), outs     # ours, not gRPC's


def test_submit_ordered_queue_on_one_key_all_answered_after_close(make_cluster):
    """Operations queued behind one key's call in flight are sent one by one,
    each from the previous one's callback; after close() each failed at once
    inside the previous one's callback -- a recursion as deep as the queue."""
    cluster = make_cluster(1, timeout=8)
    node = cluster.nodes[0]
    db = chordctl.connect(cluster.config_path, route="direct")
    with pytest.raises(NotFoundError):
        db.read(1)
    n = 3000
    got: list = []
    done = threading.Event()

    def cb(out):
        got.append(out)
        if len(got) == n:
            done.set()
    node.kill(signal.SIGSTOP)
    try:
        for _ in range(n):
            db.submit_ordered("read", "5", None, cb)
        db.close()
        assert done.wait(JOIN), f"{len(got)} of {n} callbacks came"
    finally:
        node.kill(signal.SIGCONT)
    assert all(isinstance(o, ChordError) for o in got)


def test_many_submits_queued_in_a_lane_all_answered_after_close(make_cluster):
    """After close() each queued batch failed at once inside the previous
    one's failure (_next -> _send_async -> _next ...): a recursion as deep as
    the queue's batches, and a RecursionError stranded the rest."""
    cluster = make_cluster(1, timeout=8, limits={"max_batch_ops": 5})
    node = cluster.nodes[0]
    db = chordctl.connect(cluster.config_path, route="direct")
    with pytest.raises(NotFoundError):
        db.read(1)
    n = 5000
    got: list = []
    done = threading.Event()

    def cb(out):
        got.append(out)
        if len(got) == n:
            done.set()
    node.kill(signal.SIGSTOP)
    try:
        for i in range(n):
            db.submit("read", 10 + i, callback=cb)
        db.close()
        assert done.wait(JOIN), f"{len(got)} of {n} callbacks came"
    finally:
        node.kill(signal.SIGCONT)
    assert all(isinstance(o, ChordError) for o in got)


def test_aio_killed_node_fails_callers_then_the_same_client_works_after_restart(make_cluster):
    cluster = make_cluster(1, timeout=3)

    async def main():
        async with await chordctl.aio.connect(cluster.config_path, route="direct") as db:
            await db.create(1, b"a")
            cluster.nodes[0].kill()
            outs = await asyncio.wait_for(asyncio.gather(
                *(db.read(1) for _ in range(8)), return_exceptions=True), JOIN)
            assert all(isinstance(o, UnavailableError) for o in outs), outs
            await asyncio.get_running_loop().run_in_executor(None, cluster.nodes[0].start)
            assert (await asyncio.wait_for(db.read(1), JOIN)).value == b"a"
            outs = await asyncio.wait_for(asyncio.gather(*(db.read(1) for _ in range(50))),
                                          JOIN)
            assert {o.value for o in outs} == {b"a"}
    asyncio.run(main())


def test_leading_zero_key_is_the_same_key(ring):
    with chordctl.connect(ring.config_path) as db:
        db.create("0001000000020", b"z")
        try:
            assert db.read(1000000020).value == b"z"
            assert db.read("01000000020").value == b"z"
            with pytest.raises(chordctl.AlreadyExistsError):
                db.create(1000000020, b"again")
        finally:
            db.delete("1000000020")


@pytest.mark.parametrize("via", ["submit", "call-leader"])
def test_blocking_call_from_a_submit_callback_does_not_wait_for_its_own_slot(ring, via):
    """A callback runs on the thread that holds the lane's slot; a blocking
    call on the same node from it waited for that slot: forever (later:
    until its timeout)."""
    with chordctl.connect(ring.config_path, route="direct", timeout=3) as db:
        key = 10**9 + 30
        res: list = []
        done = threading.Event()

        def cb(_out):
            t0 = time.monotonic()
            try:
                db.read(key + 65536 * 4)        # another key, maybe the same node
            except ChordError as e:
                res.append(e)
            res.append(time.monotonic() - t0)
            done.set()
        db.submit("read", key, callback=cb)
        if via == "call-leader":
            with pytest.raises(NotFoundError):
                db.read(key + 1)
        assert done.wait(JOIN)
        assert isinstance(res[0], NotFoundError), res
        assert res[1] < 1.0, res


def test_caller_interrupted_just_as_it_is_handed_the_slot_passes_it_on(make_cluster,
                                                                        monkeypatch):
    """Ctrl-C landing right as a waiting caller is handed the slot and the
    next batch: the batch goes on without it, the callers in it are answered."""
    from chordctl import client as client_mod
    real_lock = client_mod._allocate_lock
    doomed = threading.local()

    class LandsCtrlC:
        def __init__(self):
            self.lock = real_lock()
            self.acquires = 0
            self.doomed = getattr(doomed, "on", False)

        def acquire(self, *args):
            self.acquires += 1
            got = self.lock.acquire(*args)
            if self.doomed and self.acquires == 2:
                raise KeyboardInterrupt     # after the hand-off woke it
            return got

        def release(self):
            self.lock.release()
    monkeypatch.setattr(client_mod, "_allocate_lock", LandsCtrlC)
    cluster = make_cluster(1, hold=f"{HELD_KEY}:0.5")
    with chordctl.connect(cluster.config_path, route="direct") as db:
        lead = run_bounded_async(db.read, HELD_KEY)
        wait_until(lambda: db._lanes.get(0) is not None and db._lanes[0].senders == 1,
                   what="the held read in flight")

        def doomed_read():
            doomed.on = True
            return db.read(HELD_KEY + 1)
        gone = run_bounded_async(doomed_read)
        wait_until(lambda: len(db._lanes[0].pending) == 1, what="the doomed caller queued")
        behind = run_bounded_async(db.read, HELD_KEY + 2)
        wait_until(lambda: len(db._lanes[0].pending) == 2, what="a caller behind it")
        assert isinstance(lead(), NotFoundError)
        assert isinstance(gone(), KeyboardInterrupt)
        assert isinstance(behind(), NotFoundError)
        wait_until(lambda: db._lanes[0].senders == 0, what="the slot freed")


@pytest.mark.parametrize("depth", [1, 2])
def test_callers_timing_out_in_the_queue_leak_no_slot(ring, depth):
    """Half the callers give up in the queue (a 1 ms timeout) while the rest
    go on: nobody hangs, nobody gets another's result, the lane ends idle."""
    from chordctl.client import Client
    with Client(ring.config, coalesce=True, coalesce_depth=depth, route="direct") as db:
        db.connect()
        bad: list = []

        def work(t):
            for i in range(40):
                k = 10**13 * depth + t * 1000 + i
                try:
                    r = db.call("create", k, b"%d" % k, timeout=0.001 if i % 2 else 5)
                    if r.key != str(k):
                        bad.append((k, r))
                except chordctl.DeadlineExceededError:
                    pass
                except ChordError as e:
                    bad.append((k, e))
        ts = [threading.Thread(target=work, args=(t,), daemon=True) for t in range(32)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(JOIN)
            assert not t.is_alive(), "a caller hung"
        assert bad == []
        wait_until(lambda: all(lane.senders == 0 and not lane.pending
                               for lane in db._lanes.values()), what="every lane idle")
        for i in range(0, 40, 2):       # every 5 s create was applied, once
            assert db.read(10**13 * depth + i).value == b"%d" % (10**13 * depth + i)
