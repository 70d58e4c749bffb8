"""Tests for chordctl.core.store: operation semantics, copy-on-write freeze, re-bucketing."""

from __future__ import annotations

import random

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from chordctl.core.store import (
    ALREADY_EXISTS,
    INVALID_ARGUMENT,
    NOT_FOUND,
    OK,
    Store,
)
from chordctl.protocol import OP_CREATE, OP_DELETE, OP_READ, OP_UPDATE

BIG = 10**60 + 7


def merged(chunks: list[dict[int, bytes]]) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    for c in chunks:
        out.update(c)
    return out


def deep_copy(chunks: list[dict[int, bytes]]) -> list[dict[int, bytes]]:
    return [dict(c) for c in chunks]


# -- operation semantics ---------------------------------------------------------


def test_create_then_read_returns_value() -> None:
    s = Store(chunks=8)
    assert s.apply(OP_CREATE, 10, b"ten") == (OK, None)
    assert s.apply(OP_READ, 10) == (OK, b"ten")
    assert dict(s.items()).get(10) == b"ten"
    assert len(s) == 1


def test_create_twice_fails_already_exists_and_keeps_first_value() -> None:
    s = Store(chunks=8)
    s.apply(OP_CREATE, 10, b"first")
    assert s.apply(OP_CREATE, 10, b"second") == (ALREADY_EXISTS, None)
    assert s.apply(OP_READ, 10) == (OK, b"first")
    assert len(s) == 1


@pytest.mark.parametrize("op", [OP_READ, OP_UPDATE, OP_DELETE])
def test_missing_key_fails_not_found(op: int) -> None:
    s = Store(chunks=8)
    s.apply(OP_CREATE, 1, b"one")
    before = dict(s.items())
    assert s.apply(op, 2, b"x") == (NOT_FOUND, None)
    assert dict(s.items()) == before
    assert len(s) == 1


def test_update_replaces_value() -> None:
    s = Store(chunks=8)
    s.apply(OP_CREATE, 5, b"a")
    assert s.apply(OP_UPDATE, 5, b"b") == (OK, None)
    assert s.apply(OP_READ, 5) == (OK, b"b")
    assert len(s) == 1


def test_delete_removes_key_and_allows_create_again() -> None:
    s = Store(chunks=8)
    s.apply(OP_CREATE, 5, b"a")
    assert s.apply(OP_DELETE, 5) == (OK, None)
    assert s.apply(OP_READ, 5) == (NOT_FOUND, None)
    assert dict(s.items()).get(5) is None
    assert len(s) == 0
    assert s.apply(OP_CREATE, 5, b"again") == (OK, None)
    assert s.apply(OP_READ, 5) == (OK, b"again")


def test_empty_value_is_a_value_not_absence() -> None:
    s = Store(chunks=8)
    s.apply(OP_CREATE, 3, b"")
    assert s.apply(OP_READ, 3) == (OK, b"")
    assert s.apply(OP_CREATE, 3, b"x") == (ALREADY_EXISTS, None)


def test_reads_change_nothing() -> None:
    s = Store(chunks=4)
    for k in range(50):
        s.apply(OP_CREATE, k, str(k).encode())
    frozen = s.freeze()
    before = deep_copy(frozen)
    for k in range(-5, 60):
        s.apply(OP_READ, abs(k) * 3)
    assert dict(s.items()) == merged(before)
    assert len(s) == 50
    # Reads never copy a shared chunk: the live chunks are still the frozen ones.
    assert all(a is b for a, b in zip(s._chunks, frozen))


def test_len_tracks_creates_deletes_and_failures() -> None:
    s = Store(chunks=16)
    expected = 0
    for k in range(200):
        assert s.apply(OP_CREATE, k, b"v")[0] == OK
        expected += 1
    for k in range(0, 200, 3):
        assert s.apply(OP_CREATE, k, b"dup")[0] == ALREADY_EXISTS
        assert s.apply(OP_UPDATE, k, b"u")[0] == OK
    for k in range(0, 200, 2):
        assert s.apply(OP_DELETE, k)[0] == OK
        expected -= 1
        assert s.apply(OP_DELETE, k)[0] == NOT_FOUND
    assert len(s) == expected == 100
    assert len(dict(s.items())) == expected
    assert sorted(k for k, _ in s.items()) == list(range(1, 200, 2))


def test_big_int_keys_are_distinct_from_their_low_bits() -> None:
    s = Store(chunks=4)
    s.apply(OP_CREATE, BIG, b"big")
    s.apply(OP_CREATE, BIG & 3, b"small")
    s.apply(OP_CREATE, BIG + 4, b"big+4")   # same chunk as BIG
    assert s.apply(OP_READ, BIG) == (OK, b"big")
    assert s.apply(OP_READ, BIG & 3) == (OK, b"small")
    assert s.apply(OP_READ, BIG + 4) == (OK, b"big+4")
    assert len(s) == 3


@pytest.mark.parametrize("op", [0, 2**8, -1, 99])
def test_unknown_op_is_invalid_and_changes_nothing(op: int) -> None:
    s = Store(chunks=4)
    s.apply(OP_CREATE, 1, b"a")
    assert s.apply(op, 1, b"b") == (INVALID_ARGUMENT, None)
    assert s.apply(op, 2, b"b") == (INVALID_ARGUMENT, None)
    assert dict(s.items()) == {1: b"a"}
    assert len(s) == 1


@pytest.mark.parametrize("chunks", [0, -4, 3, 6, 1000])
def test_chunk_count_must_be_power_of_two(chunks: int) -> None:
    with pytest.raises(ValueError, match="power of two"):
        Store(chunks=chunks)


# -- copy-on-write ------------------------------------------------------------------


def filled(nchunks: int = 8, keys: int = 400) -> Store:
    s = Store(chunks=nchunks)
    for k in range(keys):
        s.apply(OP_CREATE, k, b"v%d" % k)
    return s


def test_writes_after_freeze_leave_frozen_chunks_unchanged() -> None:
    s = filled()
    frozen = s.freeze()
    at_freeze = deep_copy(frozen)
    # Every kind of write, several times per chunk (the second write to a chunk
    # hits the private copy, which must not be the frozen dict either).
    for k in range(0, 400, 3):
        assert s.apply(OP_UPDATE, k, b"updated")[0] == OK
    for k in range(1, 400, 5):
        assert s.apply(OP_DELETE, k)[0] == OK
    for k in range(400, 480):
        assert s.apply(OP_CREATE, k, b"new")[0] == OK
    assert frozen == at_freeze
    assert merged(frozen) == {k: b"v%d" % k for k in range(400)}
    # And the live map did change.
    live = dict(s.items())
    assert live[0] == b"updated" and 1 not in live and live[479] == b"new"


@pytest.mark.parametrize("op", [OP_CREATE, OP_UPDATE, OP_DELETE])
def test_first_write_after_freeze_copies_only_its_chunk(op: int) -> None:
    s = filled(nchunks=8, keys=64)
    frozen = s.freeze()
    at_freeze = deep_copy(frozen)
    key = 1000 if op == OP_CREATE else 13
    assert s.apply(op, key, b"w")[0] == OK
    assert frozen == at_freeze
    i = key & 7
    assert s._chunks[i] is not frozen[i]
    assert all(s._chunks[j] is frozen[j] for j in range(8) if j != i)


def test_failed_write_after_freeze_does_not_touch_frozen_chunk() -> None:
    s = filled(nchunks=4, keys=20)
    frozen = s.freeze()
    at_freeze = deep_copy(frozen)
    assert s.apply(OP_CREATE, 5, b"dup")[0] == ALREADY_EXISTS
    assert s.apply(OP_UPDATE, 999, b"x")[0] == NOT_FOUND
    assert s.apply(OP_DELETE, 998)[0] == NOT_FOUND
    assert frozen == at_freeze
    assert len(s) == 20


def test_each_freeze_is_an_exact_copy_of_its_moment() -> None:
    s = Store(chunks=4)
    rng = random.Random(7)
    model: dict[int, bytes] = {}
    captures: list[tuple[list[dict[int, bytes]], dict[int, bytes]]] = []
    for step in range(3000):
        k = rng.randrange(64)
        if k in model and rng.random() < 0.4:
            s.apply(OP_DELETE, k)
            del model[k]
        elif k in model:
            v = b"u%d" % step
            s.apply(OP_UPDATE, k, v)
            model[k] = v
        else:
            v = b"c%d" % step
            s.apply(OP_CREATE, k, v)
            model[k] = v
        if step % 250 == 0:
            captures.append((s.freeze(), dict(model)))
    assert dict(s.items()) == model
    for frozen, expected in captures:
        assert merged(frozen) == expected


def test_freeze_returns_a_new_list() -> None:
    s = filled(nchunks=4, keys=10)
    frozen = s.freeze()
    frozen.append({12345: b"mine"})
    frozen[0] = {}
    assert dict(s.items()) == {k: b"v%d" % k for k in range(10)}


# -- load_chunks -------------------------------------------------------------------


@pytest.mark.parametrize(("source", "target"), [(8, 8), (8, 2), (2, 16), (1, 1024), (1024, 1)])
def test_load_chunks_rebuckets_to_own_chunk_count(source: int, target: int) -> None:
    src = Store(chunks=source)
    data = {k: b"%d" % k for k in list(range(300)) + [BIG, BIG + 1, 2**200]}
    for k, v in data.items():
        src.apply(OP_CREATE, k, v)
    dst = Store(chunks=target)
    dst.apply(OP_CREATE, 77777, b"replaced")
    dst.load_chunks(deep_copy(src.freeze()))
    assert dst.nchunks == target
    assert len(dst) == len(data)
    assert dict(dst.items()) == data
    # Every key is where apply() looks for it.
    for k, v in data.items():
        assert dst.apply(OP_READ, k) == (OK, v)
    assert dst.apply(OP_READ, 77777) == (NOT_FOUND, None)
    assert dst.apply(OP_CREATE, 5, b"x") == (ALREADY_EXISTS, None)
    assert dst.apply(OP_DELETE, BIG) == (OK, None)
    assert len(dst) == len(data) - 1


def test_load_chunks_then_freeze_keeps_copy_on_write() -> None:
    src = filled(nchunks=8, keys=40)
    dst = Store(chunks=8)
    dst.load_chunks(deep_copy(src.freeze()))
    frozen = dst.freeze()
    at_freeze = deep_copy(frozen)
    for k in range(40):
        dst.apply(OP_UPDATE, k, b"changed")
    assert frozen == at_freeze


def test_load_empty_chunks_empties_store() -> None:
    s = filled(nchunks=4, keys=10)
    s.load_chunks([{} for _ in range(4)])
    assert len(s) == 0 and dict(s.items()) == {}
    s.load_chunks([])
    assert len(s) == 0 and dict(s.items()) == {}


# -- model check -----------------------------------------------------------------

keys = st.one_of(st.integers(0, 40), st.integers(0, 2**130))
values = st.binary(max_size=8)


class StoreMachine(RuleBasedStateMachine):
    """Store vs a plain dict, with freezes whose captures must never change."""

    known = Bundle("known")

    @initialize(chunks=st.sampled_from([1, 2, 4, 16]))
    def setup(self, chunks: int) -> None:
        self.store = Store(chunks=chunks)
        self.model: dict[int, bytes] = {}
        self.captures: list[tuple[list[dict[int, bytes]], dict[int, bytes]]] = []

    @rule(target=known, key=keys)
    def remember(self, key: int) -> int:
        return key

    @rule(key=st.one_of(keys, known), value=values)
    def create(self, key: int, value: bytes) -> None:
        code, _ = self.store.apply(OP_CREATE, key, value)
        if key in self.model:
            assert code == ALREADY_EXISTS
        else:
            assert code == OK
            self.model[key] = value

    @rule(key=st.one_of(keys, known))
    def read(self, key: int) -> None:
        code, value = self.store.apply(OP_READ, key)
        if key in self.model:
            assert (code, value) == (OK, self.model[key])
        else:
            assert (code, value) == (NOT_FOUND, None)

    @rule(key=st.one_of(keys, known), value=values)
    def update(self, key: int, value: bytes) -> None:
        code, _ = self.store.apply(OP_UPDATE, key, value)
        if key in self.model:
            assert code == OK
            self.model[key] = value
        else:
            assert code == NOT_FOUND

    @rule(key=st.one_of(keys, known))
    def delete(self, key: int) -> None:
        code, _ = self.store.apply(OP_DELETE, key)
        if key in self.model:
            assert code == OK
            del self.model[key]
        else:
            assert code == NOT_FOUND

    @rule()
    def freeze(self) -> None:
        self.captures.append((self.store.freeze(), dict(self.model)))

    @precondition(lambda self: self.captures)
    @rule(data=st.data())
    def reload(self, data) -> None:
        # Recovery: a new store of any chunk count loaded from a frozen capture.
        frozen, expected = data.draw(st.sampled_from(self.captures))
        store = Store(chunks=data.draw(st.sampled_from([1, 2, 8])))
        store.load_chunks(deep_copy(frozen))
        assert dict(store.items()) == expected
        assert len(store) == len(expected)

    @invariant()
    def matches_model(self) -> None:
        assert len(self.store) == len(self.model)
        assert dict(self.store.items()) == self.model

    @invariant()
    def captures_unchanged(self) -> None:
        for frozen, expected in self.captures:
            assert merged(frozen) == expected


StoreMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40,
                                          deadline=None)
TestStoreAgainstDict = StoreMachine.TestCase
