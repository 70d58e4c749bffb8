"""The router (F4): forwarded batches the next node accepts; a peer's refusal named as one.

Unit tests drive Router.forward with a fake event loop (the calls it would
start are captured, not sent) and Router._call with a fake stub; one
integration test forwards more operations at once than one Batch may carry.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time

import grpc
import pytest

from chordctl import config as config_mod
from chordctl.client import Client, Result
from chordctl.core.node import Replies
from chordctl.core.request import Request
from chordctl.core.membership import Members, Membership
from chordctl.core.ring import Ring
from chordctl.core.router import Router, message_limit
from chordctl.pb import chord_pb2 as pb
from chordctl.protocol import INTERNAL, OP_CREATE, OP_READ, RESOURCE_EXHAUSTED, UNAVAILABLE
from conftest import Cluster, write_config

BITS = 16


class FakeLoop:
    """Captures what the router hands to the event loop."""

    def __init__(self):
        self.scheduled = []

    def call_soon_threadsafe(self, fn, *args):
        self.scheduled.append((fn, args))


def make_config(n: int = 4, **limits) -> config_mod.Config:
    return config_mod.from_dict({
        "ring": {"bits": BITS},
        "nodes": [{"host": "127.0.0.1", "port": 50000 + i} for i in range(n)],
        "limits": limits})


def key_of(ring: Ring, owner: int) -> int:
    low, high = ring.arc(owner)
    return (low + ((high - low) % ring.size) // 2 + 1) % ring.size


def requests_for(ring: Ring, owner: int, count: int, value: bytes = b"") -> list[Request]:
    base = key_of(ring, owner)
    deadline = time.monotonic() + 30
    out = []
    for i in range(count):
        k = base + i * ring.size    # same ring position (direct placement): same owner
        op = OP_CREATE if value else OP_READ
        out.append(Request(op, k, str(k).encode(), value, deadline))
    return out


def forwarded(cfg: config_mod.Config, reqs: list[Request]) -> list[tuple[int, list, pb.BatchRequest]]:
    ring = Ring(cfg.ring.bits, len(cfg.nodes), cfg.ring.placement, cfg.ring.routing)
    loop = FakeLoop()
    done: list[Request] = []
    router = Router(cfg, 0, Members(Membership.from_config(cfg)), loop, Replies(done.extend, done.extend))
    router.forward(reqs)
    assert not done, [r.message for r in done]
    calls = [c for fn, args in loop.scheduled for c in args[0]]
    return calls


def test_forward_over_max_batch_ops_is_split_into_batches_the_next_node_accepts() -> None:
    cfg = make_config(max_batch_ops=10_000, max_value_bytes=4096)
    ring = Ring(BITS, 4, "direct", "fingers")
    reqs = requests_for(ring, 3, 30_001)
    calls = forwarded(cfg, reqs)
    assert len(calls) == 4
    assert all(len(batch.ops) <= 10_000 for _nh, _run, batch in calls)
    # Every request once, in order, each batch matching its requests.
    sent = [r for _nh, run, _b in calls for r in run]
    assert sent == reqs
    for _nh, run, batch in calls:
        assert [o.key for o in batch.ops] == [r.key_text.decode() for r in run]


def test_forward_over_message_size_limit_is_split() -> None:
    mib = 1024 * 1024
    cfg = make_config(max_value_bytes=mib)
    ring = Ring(BITS, 4, "direct", "fingers")
    reqs = requests_for(ring, 3, 60, value=b"x" * mib)   # 60 MiB for one next hop
    calls = forwarded(cfg, reqs)
    assert len(calls) > 1
    assert sum(len(b.ops) for _nh, _r, b in calls) == 60
    for _nh, _run, batch in calls:
        assert batch.ByteSize() <= message_limit(cfg)


def test_forwarded_reads_are_split_so_that_their_reply_fits_too() -> None:
    """A read answers with its value, up to limits.max_value_bytes: a forward
    of reads never asks for a reply past what a node sends (REPLY_LIMIT)."""
    from chordctl.protocol import REPLY_LIMIT
    mib = 1024 * 1024
    cfg = make_config(max_value_bytes=mib)
    ring = Ring(BITS, 4, "direct", "fingers")
    calls = forwarded(cfg, requests_for(ring, 3, 600))
    assert len(calls) == 3 and sum(len(b.ops) for _nh, _r, b in calls) == 600
    for _nh, _run, batch in calls:
        assert len(batch.ops) * mib < REPLY_LIMIT


def test_small_forward_stays_one_batch() -> None:
    cfg = make_config()
    ring = Ring(BITS, 4, "direct", "fingers")
    calls = forwarded(cfg, requests_for(ring, 3, 100, value=b"v"))
    assert len(calls) == 1 and len(calls[0][2].ops) == 100


class RefusingStub:
    def __init__(self, code: grpc.StatusCode, details: str):
        self.code, self.details = code, details

    async def Batch(self, batch, timeout):
        raise grpc.aio.AioRpcError(self.code, grpc.aio.Metadata(), grpc.aio.Metadata(),
                                   details=self.details)


@pytest.mark.parametrize("code, details, expect", [
    (grpc.StatusCode.INVALID_ARGUMENT,
     "batch of 10001 operations is over the limit of 10000 (limits.max_batch_ops); split it",
     INTERNAL),
    (grpc.StatusCode.RESOURCE_EXHAUSTED,
     "node 3 (id 16383) has 99990 requests in flight (limits.max_in_flight); retry later",
     RESOURCE_EXHAUSTED),
    (grpc.StatusCode.UNAVAILABLE, "node 3 (id 16383) is recovering", UNAVAILABLE),
])
def test_peer_refusal_is_reported_as_refusal_not_as_unreachable(code, details, expect) -> None:
    cfg = make_config()
    ring = Ring(BITS, 4, "direct", "fingers")

    async def run() -> list[Request]:
        loop = asyncio.get_running_loop()
        done: list[Request] = []
        router = Router(cfg, 0, Members(Membership.from_config(cfg)), loop, Replies(done.extend, done.extend))
        router._stubs[3] = RefusingStub(code, details)
        group = requests_for(ring, 3, 3)
        await router._call(3, group, pb.BatchRequest(), 1.0, may_retry=True)
        return done

    done = asyncio.run(run())
    assert len(done) == 3
    for r in done:
        assert r.code == expect
        assert "could not reach" not in r.message, r.message
        assert "refused" in r.message and details in r.message, r.message
        assert r.message.startswith("node 0 (id 65535) forwarded to node 3"), r.message


def test_unreachable_peer_is_still_reported_as_unreachable() -> None:
    cfg = make_config()
    ring = Ring(BITS, 4, "direct", "fingers")

    async def run() -> list[Request]:
        done: list[Request] = []
        router = Router(cfg, 0, Members(Membership.from_config(cfg)), asyncio.get_running_loop(), Replies(done.extend, done.extend))
        router._stubs[3] = RefusingStub(grpc.StatusCode.UNAVAILABLE, "Socket closed")
        await router._call(3, requests_for(ring, 3, 1), pb.BatchRequest(), 1.0,
                           may_retry=True)
        return done

    [r] = asyncio.run(run())
    assert r.code == UNAVAILABLE and "could not reach node 3" in r.message, r.message


def test_concurrent_batches_forwarded_together_all_succeed(tmp_path) -> None:
    """Many full Batch calls and unary reads at once, all for another node's keys:
    the router merges what it takes from F4 and must still split it."""
    batch_ops = 200
    path = write_config(tmp_path, 2, bits=BITS, limits={"max_batch_ops": batch_ops})
    cluster = Cluster(path).start()
    try:
        cfg = config_mod.load(path)
        ring = Ring(BITS, 2, "direct", "fingers")
        base = key_of(ring, 1)
        keys = [str(base + i * ring.size) for i in range(8 * batch_ops)]
        with Client(cfg, target=cluster.address(0), timeout=30) as c:
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                futures = [pool.submit(c.batch, [("create", k, b"v") for k in
                                                 keys[j * batch_ops:(j + 1) * batch_ops]])
                           for j in range(8)]
                reads = []
                for k in keys[:500]:
                    f = concurrent.futures.Future()
                    c.submit("read", k, callback=f.set_result)
                    reads.append(f)
                results = [r for f in futures for r in f.result(timeout=60)]
            bad = [r for r in results if not isinstance(r, Result)]
            assert not bad, bad[:3]
            outcomes = [f.result(timeout=60) for f in reads]
            # A read may come before or after its create; never a refused batch.
            assert not [o for o in outcomes if not isinstance(o, Result)
                        and "not found" not in str(o)], outcomes[:3]
    finally:
        cluster.stop()
