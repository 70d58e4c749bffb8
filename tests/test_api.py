"""The public Python API (`chordctl.connect`, README "Python API"), against real nodes.

Every error class, int and string keys, per-key order across threads,
coalescing that never changes a result, both routings, close, batch.
"""

from __future__ import annotations

import importlib.resources
import threading

import pytest

import chordctl
from chordctl import (AlreadyExistsError, ChordError, InvalidInputError, NotFoundError,
                      UnavailableError)
from conftest import write_config

THREADS = 16
BARRIER_TIMEOUT = 30


@pytest.fixture(scope="module")
def ring(tmp_path_factory):
    """A 4-node ring with a small batch limit, shared by this module's tests."""
    from conftest import Cluster
    d = tmp_path_factory.mktemp("api")
    c = Cluster(write_config(d, 4, limits={"max_value_bytes": 4096, "max_batch_ops": 50}))
    c.start()
    yield c
    c.stop()


@pytest.fixture(params=["direct", "entry"])
def db(ring, request):
    with chordctl.connect(ring.config_path, route=request.param) as c:
        yield c


def spread(i: int) -> int:
    """Key i of a test, spread over the 16-bit ring (all four nodes)."""
    return (i * 40503 + 7) % 65536 + 65536 * (i + 1)


def test_package_exports_connect_client_and_every_error():
    for name in chordctl.__all__:
        assert getattr(chordctl, name) is not None, name
    assert issubclass(chordctl.NotFoundError, chordctl.ChordError)
    assert chordctl.Client.__module__ == "chordctl.client"
    with pytest.raises(AttributeError):
        chordctl.no_such_thing     # noqa: B018


def test_package_is_typed():
    assert importlib.resources.files("chordctl").joinpath("py.typed").is_file()


def test_crud_with_int_and_string_keys(db):
    base = 10**12 + (0 if db.route == "direct" else 10**6)
    r = db.create(base, b"one")
    assert (r.op, r.key, r.value) == ("create", str(base), None)
    assert db.read(str(base)).value == b"one"
    db.update(base, b"two")
    assert db.read(base).value == b"two"
    db.delete(str(base))
    with pytest.raises(NotFoundError, match=rf"key {base} not found"):
        db.read(base)


def test_every_error_class(db):
    k = 2 * 10**12 + (0 if db.route == "direct" else 10**6)
    db.create(k, b"x")
    with pytest.raises(AlreadyExistsError, match="already exists"):
        db.create(k, b"y")
    with pytest.raises(NotFoundError):
        db.update(k + 1, b"y")
    with pytest.raises(NotFoundError):
        db.delete(k + 1)
    for bad in (-1, True, 1.5, b"7", None, "12a", ""):
        with pytest.raises(InvalidInputError):
            db.read(bad)
    with pytest.raises(InvalidInputError, match="max_value_bytes"):
        db.update(k, b"v" * 4097)
    with pytest.raises(InvalidInputError, match="needs a value"):
        db.create(k + 2, None)
    with pytest.raises(InvalidInputError, match="unknown operation"):
        db.call("upsert", k, b"v")
    assert db.read(k).value == b"x"     # nothing above changed it
    db.delete(k)


def test_connect_to_a_ring_that_is_down_fails_at_connect(tmp_path):
    path = write_config(tmp_path, 2)
    with pytest.raises(UnavailableError, match="no node of the config answered"):
        chordctl.connect(path)


def test_connect_refuses_bad_arguments(ring, tmp_path):
    with pytest.raises(InvalidInputError, match="route"):
        chordctl.connect(ring.config_path, route="sideways")
    with pytest.raises(InvalidInputError, match="timeout"):
        chordctl.connect(ring.config_path, timeout=0)
    with pytest.raises(chordctl.ConfigError, match="not found"):
        chordctl.connect(tmp_path / "missing.yaml")
    with pytest.raises(InvalidInputError, match="needs the config"):
        chordctl.connect(target=ring.address(0), route="direct")


def test_target_only_talks_to_one_node(ring):
    with chordctl.connect(target=ring.address(2)) as c:
        assert c.route == "entry"
        c.create(3 * 10**12, b"via node 2")
        r = c.read(3 * 10**12, trace=True)
        assert r.value == b"via node 2"
        assert r.route[0] == str(2**16 - 1 - 2 * 2**14)     # entered at node 2
        c.delete(3 * 10**12)


def test_the_library_routes_directly_by_default_with_a_config(ring):
    with chordctl.connect(ring.config_path) as c:
        assert c.route == "direct"                  # the config says nothing: entry for the CLI
    with chordctl.connect(ring.config_path, target=ring.address(1)) as c:
        assert c.route == "entry"
    with chordctl.connect(ring.config_path, route="entry") as c:
        assert c.route == "entry"


def test_close_then_use_raises_and_close_is_idempotent(ring):
    c = chordctl.connect(ring.config_path)
    c.create(4 * 10**12, b"x")
    c.close()
    c.close()
    assert c.closed
    with pytest.raises(InvalidInputError, match="closed"):
        c.read(4 * 10**12)
    with chordctl.connect(ring.config_path) as again:
        assert again.read(4 * 10**12).value == b"x"
        again.delete(4 * 10**12)


def test_threads_keep_per_key_order_and_get_their_own_results(db):
    """16 threads share one client; each runs create/update/read/delete on its
    own keys while the others do the same: every result is that thread's."""
    base = 5 * 10**12 + (0 if db.route == "direct" else 10**6)
    barrier = threading.Barrier(THREADS, timeout=BARRIER_TIMEOUT)
    failures: list[str] = []

    def worker(t: int) -> None:
        try:
            barrier.wait()
            for j in range(20):
                k = base + spread(t * 100 + j)
                mine = b"t%d-j%d" % (t, j)
                db.create(k, mine)
                assert db.read(k).value == mine
                db.update(k, mine + b"!")
                assert db.read(k).value == mine + b"!"
                with pytest.raises(AlreadyExistsError):
                    db.create(k, b"again")
                db.delete(k)
                with pytest.raises(NotFoundError):
                    db.read(k)
        except BaseException as e:      # reported below, not lost in the thread
            failures.append(f"thread {t}: {e!r}")

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not failures, failures[:3]
    assert all(not t.is_alive() for t in threads)


def test_concurrent_calls_coalesce_into_batches(ring):
    """Many threads' single calls travel as fewer Batch calls than operations."""
    with chordctl.connect(ring.config_path, route="entry") as c:
        base = 6 * 10**12
        barrier = threading.Barrier(THREADS, timeout=BARRIER_TIMEOUT)
        errors: list[BaseException] = []

        def worker(t: int) -> None:
            try:
                barrier.wait()
                for j in range(25):
                    c.create(base + spread(t * 100 + j), b"v")
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors[:3]
        stats = c.lane_stats()
        assert stats["operations"] == THREADS * 25
        assert stats["batches"] < stats["operations"], stats
        assert c.count(base, base + 10**9)[0].keys >= 0
        total = sum(n.keys for n in c.count(base, base + 10**10))
        assert total == THREADS * 25


def test_coalescing_never_changes_a_result(ring):
    """The same mixed sequence, one call at a time, with and without
    coalescing: the same results and the same errors, in order."""
    def run(client, base):
        out = []
        for i in range(30):
            k = base + spread(i % 7)
            for op, value in (("create", b"a%d" % i), ("read", None), ("update", b"b"),
                              ("delete", None), ("read", None)):
                try:
                    r = client.call(op, k, value)
                    out.append((op, r.value, r.node_index))
                except ChordError as e:
                    out.append((op, type(e).__name__, str(e)))
        return out

    with chordctl.connect(ring.config_path, coalesce=True) as a, \
            chordctl.connect(ring.config_path, coalesce=False) as b:
        assert run(a, 7 * 10**12) == run(b, 7 * 10**12)


def test_batch_applies_in_order_and_splits_past_the_batch_limit(db):
    base = 9 * 10**12 + (0 if db.route == "direct" else 10**6)
    ops = [("create", base + spread(i), b"v%d" % i) for i in range(120)]    # limit is 50
    ops += [("read", base + spread(5), None), ("create", base + spread(5), b"dup"),
            ("update", str(base + spread(5)), b"new"), ("read", base + spread(5), None),
            ("delete", base + spread(121), None)]
    out = db.batch(ops)
    assert len(out) == len(ops)
    assert all(r.op == "create" for r in out[:120])
    assert out[120].value == b"v5"
    assert isinstance(out[121], AlreadyExistsError)
    assert out[123].value == b"new"
    assert isinstance(out[124], NotFoundError)
    assert db.batch([]) == []
    bad = db.batch([("read", base + spread(0), None), ("read", -3, None),
                    ("create", "12x", b"v"), ("create", base, "text")])
    assert bad[0].value == b"v0"
    assert [type(r) for r in bad[1:]] == [InvalidInputError] * 3
    with pytest.raises(InvalidInputError, match="operation 0"):
        db.batch([("read", base)])
    with pytest.raises(InvalidInputError, match="operation 1.*unknown operation"):
        db.batch([("read", base, None), ("upsert", base, b"v")])
    db.batch([("delete", base + spread(i), None) for i in range(120)])


def test_scan_and_count_take_int_bounds(db):
    base = 11 * 10**12 + (0 if db.route == "direct" else 10**6)
    db.batch([("create", base + i, b"s%d" % i) for i in range(10)])
    got = [(int(e.key), e.value) for e in db.scan(base, base + 10)]
    assert got == [(base + i, b"s%d" % i) for i in range(10)]
    assert sum(n.keys for n in db.count(base, base + 5)) == 5
    db.batch([("delete", base + i, None) for i in range(10)])


def readme_python_blocks() -> list[str]:
    import pathlib
    import re
    text = (pathlib.Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = text.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_readme_python_api_examples_run(ring):
    """README "Python API": both examples, as written, against a real ring."""
    import subprocess
    import sys
    blocks = readme_python_blocks()
    assert len(blocks) == 2
    expected = [["b'hello'", "key 42 already exists", "1600", "b'v' NotFoundError",
                 "[1000, 1001, 1002]"],
                ["b'hello'", "key 42 already exists", "[1000, 1001, 1002]"]]
    for block, wanted in zip(blocks, expected):
        assert "examples/configs/ring4.yaml" in block
        code = block.replace("examples/configs/ring4.yaml", ring.config_path)
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        for want, line in zip(wanted, lines):
            assert want in line, (want, done.stdout)
        assert len(lines) == len(wanted), done.stdout


def test_from_chordctl_import_aio_works_in_a_fresh_interpreter():
    import subprocess
    import sys
    p = subprocess.run([sys.executable, "-c",
                        "import chordctl; from chordctl import aio; "
                        "print(aio.connect.__module__, chordctl.aio is aio)"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["chordctl.aio", "True"]
