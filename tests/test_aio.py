"""The asyncio flavour of the Python API (`chordctl.aio.connect`), against real nodes.

Each test runs its coroutine with asyncio.run (no pytest-asyncio): CRUD and
every error class on both routings, connect failures and bad arguments,
close, 200 concurrent coroutines getting their own results, coalescing
(that it happens, and that it never changes a result), batch, count, the
retry of a call that never left, and callers cancelled while queued.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest

import chordctl
import chordctl.aio
from chordctl import (AlreadyExistsError, ChordError, InvalidInputError, NotFoundError,
                      UnavailableError)
from chordctl.client import Result
from conftest import write_config

COROUTINES = 200
ROUTES = ["direct", "entry"]


@pytest.fixture(scope="module")
def ring(tmp_path_factory):
    """A 4-node ring with a small batch limit, shared by this module's tests."""
    from conftest import Cluster
    d = tmp_path_factory.mktemp("aio")
    c = Cluster(write_config(d, 4, timeout=3,
                             limits={"max_value_bytes": 4096, "max_batch_ops": 50}))
    c.start()
    yield c
    c.stop()


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def spread(i: int) -> int:
    """Key i of a test, spread over the 16-bit ring (all four nodes)."""
    return (i * 40503 + 7) % 65536 + 65536 * (i + 1)


def base_for(n: int, route: str, coalesce: bool = True) -> int:
    """Each test's own key range, apart per route and coalescing."""
    return n * 10**12 + (0 if route == "direct" else 10**6) + (0 if coalesce else 10**9)


def test_aio_is_reachable_from_the_package():
    assert chordctl.aio is chordctl.aio
    assert asyncio.iscoroutinefunction(chordctl.aio.connect)
    assert issubclass(chordctl.aio.AsyncClient, chordctl.client.ClientBase)


@pytest.mark.parametrize("coalesce", [True, False])
@pytest.mark.parametrize("route", ROUTES)
def test_crud_with_int_and_string_keys(ring, route, coalesce):
    async def main():
        base = base_for(1, route, coalesce)
        async with await chordctl.aio.connect(ring.config_path, route=route,
                                              coalesce=coalesce) as db:
            assert db.route == route
            r = await db.create(base, b"one")
            assert isinstance(r, Result)
            assert (r.op, r.key, r.value) == ("create", str(base), None)
            assert (await db.read(str(base))).value == b"one"
            await db.update(base, b"two")
            got = await db.read(base)
            assert (got.op, got.key, got.value) == ("read", str(base), b"two")
            await db.call("delete", str(base))
            with pytest.raises(NotFoundError, match=rf"key {base} not found"):
                await db.read(base)
    run(main())


@pytest.mark.parametrize("route", ROUTES)
def test_every_error_class(ring, route):
    async def main():
        k = base_for(2, route)
        async with await chordctl.aio.connect(ring.config_path, route=route) as db:
            await db.create(k, b"x")
            with pytest.raises(AlreadyExistsError, match="already exists"):
                await db.create(k, b"y")
            with pytest.raises(NotFoundError):
                await db.update(k + 1, b"y")
            with pytest.raises(NotFoundError):
                await db.delete(k + 1)
            for bad in (-1, True, 1.5, b"7", None, "12a", ""):
                with pytest.raises(InvalidInputError):
                    await db.read(bad)
            with pytest.raises(InvalidInputError, match="max_value_bytes"):
                await db.update(k, b"v" * 4097)
            with pytest.raises(InvalidInputError, match="needs a value"):
                await db.create(k + 2, None)
            with pytest.raises(InvalidInputError, match="unknown operation"):
                await db.call("upsert", k, b"v")
            assert (await db.read(k)).value == b"x"     # nothing above changed it
            await db.delete(k)
    run(main())


def test_connect_to_a_ring_that_is_down_fails_at_connect(tmp_path):
    path = write_config(tmp_path, 2)
    with pytest.raises(UnavailableError, match="no node of the config answered"):
        run(chordctl.aio.connect(path))


def test_connect_refuses_bad_arguments(ring, tmp_path):
    async def main():
        with pytest.raises(InvalidInputError, match="route"):
            await chordctl.aio.connect(ring.config_path, route="sideways")
        with pytest.raises(InvalidInputError, match="timeout"):
            await chordctl.aio.connect(ring.config_path, timeout=0)
        with pytest.raises(chordctl.ConfigError, match="not found"):
            await chordctl.aio.connect(tmp_path / "missing.yaml")
        with pytest.raises(InvalidInputError, match="needs the config"):
            await chordctl.aio.connect(target=ring.address(0), route="direct")
        with pytest.raises(InvalidInputError, match="no node to talk to"):
            await chordctl.aio.connect()
    run(main())


def test_target_talks_to_that_node(ring):
    async def main():
        k = 3 * 10**12
        async with await chordctl.aio.connect(target=ring.address(2)) as db:
            assert db.address == ring.address(2)
            await db.create(k, b"via node 2")
            assert (await db.read(k)).value == b"via node 2"
            await db.delete(k)
    run(main())


def test_close_then_use_raises_and_close_is_idempotent(ring):
    async def main():
        k = 4 * 10**12
        db = await chordctl.aio.connect(ring.config_path, route="direct")
        await db.create(k, b"x")
        await db.close()
        await db.close()
        assert db.closed
        with pytest.raises(InvalidInputError, match=r"closed; open a new one \(chordctl.aio"):
            await db.read(k)
        with pytest.raises(InvalidInputError, match="closed"):
            await db.batch([("read", k, None)])
        with pytest.raises(InvalidInputError, match="closed"):
            await db.count()
        async with await chordctl.aio.connect(ring.config_path, coalesce=False) as again:
            assert (await again.read(k)).value == b"x"
            await again.delete(k)
        assert again.closed
    run(main())


def test_close_with_calls_in_flight_fails_them_without_hanging(ring):
    async def main():
        db = await chordctl.aio.connect(ring.config_path, route="entry")
        reads = [asyncio.ensure_future(db.call("read", spread(i))) for i in range(100)]
        await asyncio.sleep(0)          # let them start: some in flight, the rest queued
        await db.close()
        outcomes = await asyncio.gather(*reads, return_exceptions=True)
        assert all(isinstance(o, (NotFoundError, UnavailableError, InvalidInputError))
                   for o in outcomes), {type(o) for o in outcomes}
    run(main())


@pytest.mark.parametrize("route", ROUTES)
def test_concurrent_coroutines_get_their_own_results(ring, route):
    """200 coroutines share one client, each doing create/read/update/read/delete
    on its own keys while the others do the same: every result is its own."""
    base = base_for(5, route)

    async def worker(db, t: int) -> None:
        for j in range(2):
            k = base + spread(t * 10 + j)
            mine = b"c%d-j%d" % (t, j)
            assert (await db.create(k, mine)).key == str(k)
            assert (await db.read(k)).value == mine
            await db.update(k, mine + b"!")
            assert (await db.read(str(k))).value == mine + b"!"
            with pytest.raises(AlreadyExistsError):
                await db.create(k, b"again")
            await db.delete(k)
            with pytest.raises(NotFoundError):
                await db.read(k)

    async def main():
        async with await chordctl.aio.connect(ring.config_path, route=route) as db:
            await asyncio.gather(*(worker(db, t) for t in range(COROUTINES)))
            stats = db.lane_stats()
            assert stats["operations"] == COROUTINES * 2 * 7
            assert stats["batches"] < stats["operations"] / 4, stats    # they coalesced
    run(main())


def test_an_idle_lane_sends_at_once_one_batch_per_call(ring):
    async def main():
        async with await chordctl.aio.connect(ring.config_path, route="entry") as db:
            for i in range(5):
                with pytest.raises(NotFoundError):
                    await db.read(base_for(6, "entry") + i)
            assert db.lane_stats() == {"batches": 5, "operations": 5}
    run(main())


def test_coalescing_never_changes_a_result(ring):
    """The same mixed sequences, run concurrently by 20 coroutines, with and
    without coalescing: the same results and the same errors, in order."""
    async def sequence(db, base, c):
        out = []
        for i in range(6):
            k = base + spread(c * 10 + i % 3)
            for op, value in (("create", b"a%d" % i), ("read", None), ("update", b"b"),
                              ("read", None), ("delete", None), ("read", None)):
                try:
                    r = await db.call(op, k, value)
                    out.append((op, r.key, r.value, r.node_index, r.message))
                except ChordError as e:
                    out.append((op, type(e).__name__, str(e)))
        return out

    async def main(coalesce):
        async with await chordctl.aio.connect(ring.config_path, coalesce=coalesce) as db:
            return await asyncio.gather(*(sequence(db, 7 * 10**12, c) for c in range(20)))

    assert run(main(True)) == run(main(False))


@pytest.mark.parametrize("route", ROUTES)
def test_batch_applies_in_order_and_splits_past_the_batch_limit(ring, route):
    async def main():
        base = base_for(9, route)
        async with await chordctl.aio.connect(ring.config_path, route=route) as db:
            ops = [("create", base + spread(i), b"v%d" % i) for i in range(120)]   # limit 50
            ops += [("read", base + spread(5), None), ("create", base + spread(5), b"dup"),
                    ("update", str(base + spread(5)), b"new"), ("read", base + spread(5), None),
                    ("delete", base + spread(121), None)]
            out = await db.batch(ops)
            assert len(out) == len(ops)
            assert all(r.op == "create" for r in out[:120])
            assert out[120].value == b"v5"
            assert isinstance(out[121], AlreadyExistsError)
            assert out[123].value == b"new"
            assert isinstance(out[124], NotFoundError)
            assert await db.batch([]) == []
            bad = await db.batch([("read", base + spread(0), None), ("read", -3, None),
                                  ("create", "12x", b"v"), ("create", base, "text")])
            assert bad[0].value == b"v0"
            assert [type(r) for r in bad[1:]] == [InvalidInputError] * 3
            with pytest.raises(InvalidInputError, match="operation 0"):
                await db.batch([("read", base)])
            with pytest.raises(InvalidInputError, match="operation 1.*unknown operation"):
                await db.batch([("read", base, None), ("upsert", base, b"v")])
            assert sum(n.keys for n in await db.count(base, base + 10**11)) == 120
            await db.batch([("delete", base + spread(i), None) for i in range(120)])
            assert sum(n.keys for n in await db.count(base, base + 10**11)) == 0
            with pytest.raises(InvalidInputError, match="--from"):
                await db.count("x")
    run(main())


class _FailOnce:
    """A stub whose first call fails as gRPC does when it could not connect
    (or with *details*), then hands over to the real stub."""

    def __init__(self, real, details: str):
        self.real = real
        self.details = details
        self.calls = 0

    def __getattr__(self, name):
        method = getattr(self.real, name)

        def call(request, timeout=None):
            self.calls += 1
            if self.calls == 1:
                return self._fail()
            return method(request, timeout=timeout)
        return call

    async def _fail(self):
        raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(),
                                   grpc.aio.Metadata(), details=self.details)


@pytest.mark.parametrize("coalesce", [True, False])
def test_a_call_that_never_left_is_sent_again_on_a_fresh_channel(ring, coalesce):
    async def main():
        async with await chordctl.aio.connect(ring.config_path, route="entry",
                                              coalesce=coalesce) as db:
            failing = db._kv = _FailOnce(db._kv, "failed to connect to all addresses; "
                                                 "last error: UNAVAILABLE: Connection refused")
            with pytest.raises(NotFoundError):      # a reply: the retry reached the node
                await db.read(8 * 10**12)
            assert failing.calls == 1 and db._kv is not failing
            # A node's relayed "... failed to connect" is its answer: not sent again.
            relayed = db._kv = _FailOnce(db._kv, "node 0 (id 0) could not reach node 3 "
                                                 "(failed to connect)")
            if coalesce:
                db._lanes[None].stub = relayed
            with pytest.raises(UnavailableError, match="could not reach node 3"):
                await db.read(8 * 10**12)
            assert relayed.calls == 1
    run(main())


def test_cancelled_callers_leave_the_queue_and_the_rest_get_their_results(ring):
    async def main():
        base = base_for(10, "entry")
        async with await chordctl.aio.connect(ring.config_path, route="entry") as db:
            await db.batch([("create", base + i, b"v%d" % i) for i in range(60)])
            calls = [asyncio.ensure_future(db.read(base + i)) for i in range(60)]
            await asyncio.sleep(0)              # two in flight, the rest queued
            for c in calls[10::2]:
                c.cancel()
            done = await asyncio.gather(*calls, return_exceptions=True)
            for i, outcome in enumerate(done):
                if i >= 10 and i % 2 == 0:
                    assert isinstance(outcome, asyncio.CancelledError)
                else:
                    assert outcome.value == b"v%d" % i
            assert db.lane_stats()["operations"] == 60 - len(calls[10::2])
            await db.batch([("delete", base + i, None) for i in range(60)])
    run(main())


@pytest.mark.parametrize("route", ROUTES)
def test_scan_lists_in_key_order_like_the_sync_scan(ring, route):
    base = base_for(11, route)
    keys = sorted(base + spread(i) for i in range(40))

    async def main():
        async with await chordctl.aio.connect(ring.config_path, route=route) as db:
            await db.batch([("create", k, b"s%d" % k) for k in keys])
            try:
                every = await db.scan(base, base + 10**11, limit=0, page_size=7)
                got = [(e.key, e.value) async for e in every]
                assert len(every.nodes) == 4 and every.count == 40 and not every.truncated
                first = await db.scan(str(base), base + 10**11, limit=10, keys_only=True)
                head = [(e.key, e.value) async for e in first]
                assert first.truncated and first.count == 10
                return got, head
            finally:
                await db.batch([("delete", k, None) for k in keys])

    got, head = run(main())
    assert got == [(k, b"s%d" % k) for k in keys]
    assert head == [(k, b"") for k in keys[:10]]
    with chordctl.connect(ring.config_path, route=route) as sync:   # same as sync, now empty
        assert [e.key for e in sync.scan(base, base + 10**11)] == []


def test_scan_of_a_node_that_is_down_fails_or_skips_it_with_partial(ring):
    from conftest import free_ports
    down = f"127.0.0.1:{free_ports(1)[0]}"

    async def main():
        async with chordctl.aio.AsyncClient(target=down, timeout=2) as db:
            await db.connect()
            with pytest.raises(UnavailableError, match="nothing listed.*--partial"):
                await db.scan()
            partial = await db.scan(partial=True)
            assert [e async for e in partial] == []
            assert len(partial.skipped) == 1 and partial.nodes == []
            with pytest.raises(InvalidInputError, match="--to"):
                await db.scan(end="12x")
    run(main())
