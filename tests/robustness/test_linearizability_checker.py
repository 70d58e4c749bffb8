"""The linearizability checker: histories it must accept, and anomalies it must reject."""

from __future__ import annotations

import itertools
import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chordctl.errors import (AlreadyExistsError, DeadlineExceededError, InternalError,
                             InvalidInputError, NotFoundError, UnavailableError)
from robustness.history import (ALREADY_EXISTS, FAILED, NOT_FOUND, OK, UNKNOWN, History, Op,
                                classify)
from robustness.linearizability import check, check_key

KEY = 7
_ids = itertools.count()


def op(kind: str, start: float, end: float | None, outcome: str = OK, value: bytes | None = None,
       result: bytes | None = None, key: int = KEY, client: int = 0) -> Op:
    """An operation over [start, end] (milliseconds); end None for an unknown outcome."""
    return Op(next(_ids), client, kind, key, value, int(start * 1e6),
              None if end is None else int(end * 1e6), outcome, result)


def create(s, e, v, outcome=OK, **kw):
    return op("create", s, e, outcome, value=v, **kw)


def update(s, e, v, outcome=OK, **kw):
    return op("update", s, e, outcome, value=v, **kw)


def delete(s, e, outcome=OK, **kw):
    return op("delete", s, e, outcome, **kw)


def read(s, e, v=None, outcome=None, **kw):
    return op("read", s, e, outcome or (OK if v is not None else NOT_FOUND), result=v, **kw)


def assert_linearizable(ops, initial=None):
    res = check(ops, {KEY: initial} if initial is not None else None)
    assert res.ok, str(res)
    return res


def assert_not_linearizable(ops, initial=None):
    res = check(ops, {KEY: initial} if initial is not None else None)
    assert not res.ok, "the checker accepted an anomaly:\n" + "\n".join(map(str, ops))
    assert not any(r.exhausted for r in res.failures), str(res)
    return res


# -- histories it must accept -------------------------------------------------

def test_accepts_sequential_history():
    assert_linearizable([
        read(0, 1),
        create(2, 3, b"a"),
        create(4, 5, b"b", ALREADY_EXISTS),
        read(6, 7, b"a"),
        update(8, 9, b"c"),
        read(10, 11, b"c"),
        delete(12, 13),
        delete(14, 15, NOT_FOUND),
        update(16, 17, b"d", NOT_FOUND),
        read(18, 19),
        create(20, 21, b"e"),
        read(22, 23, b"e"),
    ])


def test_accepts_read_of_concurrent_update_before_it_completes():
    # The update is linearized inside its interval, before the read that overlaps it.
    assert_linearizable([create(0, 1, b"a"), update(2, 10, b"b"), read(3, 4, b"b"),
                         read(5, 6, b"b")])


def test_accepts_concurrent_creates_where_one_wins():
    assert_linearizable([
        create(0, 10, b"a", client=1),
        create(1, 9, b"b", ALREADY_EXISTS, client=2),
        create(2, 8, b"c", ALREADY_EXISTS, client=3),
        read(11, 12, b"a"),
    ])


def test_accepts_reads_that_order_overlapping_writes_differently_when_they_overlap():
    # Writes a and b overlap each other and both reads; a, b or b, a both fit.
    assert_linearizable([
        create(0, 1, b"0"),
        update(2, 20, b"a", client=1), update(2, 20, b"b", client=2),
        read(3, 19, b"b", client=3), read(3, 19, b"a", client=4),
    ])


def test_accepts_known_initial_value():
    assert_linearizable([read(0, 1, b"x"), create(2, 3, b"y", ALREADY_EXISTS)], initial=b"x")


def test_accepts_empty_value_as_present():
    assert_linearizable([create(0, 1, b""), read(2, 3, b""), update(4, 5, b"z")])


def test_every_key_is_checked_on_its_own():
    a = [create(0, 1, b"a", key=1), read(2, 3, b"a", key=1)]
    b = [read(0, 1, key=2), create(2, 3, b"b", key=2)]
    res = check(a + b)
    assert res.ok and set(res.keys) == {1, 2} and res.ops_checked == 4


def test_returns_a_linearization_in_real_time_order():
    ops = [create(0, 10, b"a"), read(5, 6, b"a"), update(20, 30, b"b"), read(31, 32, b"b")]
    res = check_key(ops)
    assert res.ok
    assert [o.id for o in res.order] == [o.id for o in ops]


# -- anomalies it must reject -------------------------------------------------

def test_rejects_stale_read_after_completed_update():
    res = assert_not_linearizable([create(0, 1, b"a"), update(2, 3, b"b"), read(4, 5, b"a")])
    assert "NOT linearizable" in str(res)


def test_rejects_read_of_value_never_written():
    assert_not_linearizable([create(0, 1, b"a"), read(2, 3, b"zzz")])


def test_rejects_read_of_value_on_absent_key():
    assert_not_linearizable([read(0, 1, b"a")])


def test_rejects_create_succeeding_twice_without_delete():
    assert_not_linearizable([create(0, 1, b"a"), create(2, 3, b"b")])


def test_rejects_concurrent_creates_that_both_succeed():
    assert_not_linearizable([create(0, 10, b"a", client=1), create(1, 9, b"b", client=2)])


def test_rejects_lost_acknowledged_update():
    # The update completed; a read started after it returns the older value.
    assert_not_linearizable([create(0, 1, b"v1"), update(2, 3, b"v2"), read(4, 5, b"v2"),
                             read(6, 7, b"v1")])


def test_rejects_not_found_read_after_completed_create():
    assert_not_linearizable([create(0, 1, b"a"), read(2, 3)])


def test_rejects_delete_acknowledged_then_value_reappears():
    assert_not_linearizable([create(0, 1, b"a"), delete(2, 3), read(4, 5, b"a")])


def test_rejects_update_of_absent_key_that_succeeds():
    assert_not_linearizable([update(0, 1, b"a")])


def test_rejects_not_found_update_of_present_key():
    assert_not_linearizable([create(0, 1, b"a"), update(2, 3, b"b", NOT_FOUND)])


def test_rejects_already_exists_on_absent_key():
    assert_not_linearizable([create(0, 1, b"a", ALREADY_EXISTS)])


def test_rejects_reads_that_see_overlapping_writes_in_opposite_orders():
    # Two readers, each reading twice in sequence, disagree on the order of a and b.
    assert_not_linearizable([
        create(0, 1, b"0"),
        update(2, 50, b"a", client=1), update(2, 50, b"b", client=2),
        read(3, 4, b"a", client=3), read(5, 6, b"b", client=3),
        read(3, 4, b"b", client=4), read(5, 6, b"a", client=4),
    ])


def test_rejects_read_that_sees_a_write_before_it_was_invoked():
    assert_not_linearizable([create(0, 1, b"a"), read(2, 3, b"b"), update(4, 5, b"b")])


def test_rejects_wrong_initial_value():
    assert_not_linearizable([read(0, 1, b"x")], initial=b"y")


def test_report_names_the_operations_that_cannot_go_next():
    res = assert_not_linearizable([create(0, 1, b"v1"), update(2, 3, b"v2"),
                                   read(4, 5, b"v2"), read(6, 7, b"v1")])
    text = str(res)
    assert f"key {KEY}" in text
    assert "none of these can be linearized next" in text
    assert "read 7: ok -> b'v1'" in text
    assert "state b'v2'" in text


# -- unknown outcomes ---------------------------------------------------------

def test_unknown_update_may_have_taken_effect():
    assert_linearizable([create(0, 1, b"a"), update(2, None, b"b", UNKNOWN), read(5, 6, b"b")])


def test_unknown_update_may_never_have_taken_effect():
    assert_linearizable([create(0, 1, b"a"), update(2, None, b"b", UNKNOWN), read(5, 6, b"a")])


def test_unknown_write_may_take_effect_long_after_the_client_gave_up():
    # A request stuck in a paused node, applied after later acknowledged writes.
    assert_linearizable([create(0, 1, b"a"), update(2, None, b"late", UNKNOWN),
                         update(10, 11, b"b"), read(12, 13, b"b"), read(20, 21, b"late")])


def test_unknown_create_either_way_decides_a_later_create():
    assert_linearizable([create(0, None, b"a", UNKNOWN), create(5, 6, b"b")])
    assert_linearizable([create(0, None, b"a", UNKNOWN), create(5, 6, b"b", ALREADY_EXISTS),
                         read(7, 8, b"a")])


def test_unknown_delete_either_way():
    assert_linearizable([create(0, 1, b"a"), delete(2, None, UNKNOWN), read(5, 6)])
    assert_linearizable([create(0, 1, b"a"), delete(2, None, UNKNOWN), read(5, 6, b"a")])


def test_unknown_op_spent_on_one_path_is_still_available_on_another():
    # Found by comparing with brute force: reaching "absent after the delete"
    # by spending create(a) first must not hide the path that spends create(b)
    # and keeps create(a) for the read.
    assert_linearizable([create(0, None, b"a", UNKNOWN), create(3, None, b"b", UNKNOWN),
                         delete(3, 4), read(8, 13, b"a")])


def test_rejects_unknown_write_seen_before_its_invocation():
    assert_not_linearizable([create(0, 1, b"a"), read(2, 3, b"b"),
                             update(4, None, b"b", UNKNOWN)])


def test_rejects_unknown_write_taking_effect_twice():
    assert_not_linearizable([create(0, 1, b"a"), update(2, None, b"b", UNKNOWN),
                             read(5, 6, b"b"), update(7, 8, b"c"), read(9, 10, b"b")])


def test_rejects_anomaly_that_unknown_ops_cannot_explain():
    # An unknown write of another value does not excuse a read of a value never written.
    assert_not_linearizable([create(0, 1, b"a"), update(2, None, b"b", UNKNOWN),
                             delete(3, None, UNKNOWN), read(5, 6, b"c")])


def test_unknown_create_whose_value_nobody_read_still_makes_the_key_present():
    assert_linearizable([create(0, None, b"a", UNKNOWN), update(5, 6, b"b"), read(7, 8, b"b")])
    assert_linearizable([create(0, None, b"a", UNKNOWN), delete(5, 6), read(7, 8)])


def test_rejects_unknown_update_as_explanation_for_a_present_key():
    # An update never makes an absent key present, whatever became of it.
    assert_not_linearizable([update(0, None, b"a", UNKNOWN), update(5, 6, b"b")])
    assert_not_linearizable([update(0, None, b"a", UNKNOWN), read(5, 6, b"a")])


def test_each_unknown_delete_explains_at_most_one_disappearance():
    ops = [create(0, 1, b"a"), delete(2, None, UNKNOWN, client=1), read(3, 4),
           create(5, 6, b"b"), read(7, 8, b"b"), read(9, 10)]
    assert_not_linearizable(ops)
    assert_linearizable(ops + [delete(2, None, UNKNOWN, client=2)])


def test_rejects_read_of_a_value_only_an_unknown_update_of_an_absent_key_wrote():
    assert_not_linearizable([create(0, 1, b"a"), delete(2, 3), update(4, None, b"b", UNKNOWN),
                             read(10, 11, b"b")])


def test_unknown_reads_and_failed_ops_are_dropped():
    res = assert_linearizable([create(0, 1, b"a"), read(2, None, b"junk", UNKNOWN),
                               create(3, 4, b"x", FAILED), update(3, 4, b"y", FAILED),
                               read(5, 6, b"a")])
    assert res.ops_checked == 2 and res.ops_total == 5


def test_classify_maps_client_errors_to_outcomes():
    assert classify(NotFoundError("x")) == NOT_FOUND
    assert classify(AlreadyExistsError("x")) == ALREADY_EXISTS
    assert classify(InvalidInputError("x")) == FAILED
    assert classify(UnavailableError("client: cannot connect to 127.0.0.1:1; is ...")) == FAILED
    assert classify(UnavailableError("node 0 (id 1) could not reach node 2")) == UNKNOWN
    assert classify(DeadlineExceededError("client: no reply")) == UNKNOWN
    assert classify(InternalError("boom")) == UNKNOWN


def test_history_leaves_out_operations_still_in_flight():
    h = History()
    a = h.invoke(0, "create", 1, b"a")
    h.invoke(1, "read", 1)                      # never completes
    h.complete(a, OK)
    assert [o.id for o in h.ops] == [a.id]
    assert check(h.ops).ok


# -- generated histories ------------------------------------------------------

class _Register:
    def __init__(self):
        self.state = None

    def apply(self, kind: str, value: bytes | None) -> tuple[str, bytes | None]:
        s = self.state
        if kind == "read":
            return (OK, s) if s is not None else (NOT_FOUND, None)
        if kind == "create":
            if s is not None:
                return ALREADY_EXISTS, None
            self.state = value
            return OK, None
        if s is None:
            return NOT_FOUND, None
        self.state = value if kind == "update" else None
        return OK, None


def generated_history(seed: int, n: int, clients: int, unknown_rate: float) -> list[Op]:
    """Ops on one key, each with its linearization point inside [invoke, complete].

    Clients are sequential (an op starts after the client's previous one
    completed), overlapping each other at random; some outcomes are unknown,
    taking effect at their point or not at all.
    """
    rng = random.Random(seed)
    reg = _Register()
    free_at = [0.0] * clients
    events = []
    t = 0.0
    for i in range(n):
        t += rng.uniform(0.0, 1.0)
        c = rng.randrange(clients)
        start = max(free_at[c], t - rng.uniform(0.0, 3.0))
        point = max(t, start + 0.01)
        end = point + rng.uniform(0.01, 3.0)
        free_at[c] = end + 0.01
        kind = rng.choice(["create", "read", "read", "update", "update", "delete"])
        events.append((point, start, end, c, kind, f"v{i}".encode()))
    ops = []
    for point, start, end, c, kind, value in sorted(events):
        if rng.random() < unknown_rate:
            if rng.random() < 0.5:
                reg.apply(kind, value)          # it happened; the client never learned
            ops.append(op(kind, start, None, UNKNOWN, value=value, client=c))
            continue
        outcome, result = reg.apply(kind, value)
        ops.append(op(kind, start, end, outcome, value=value, result=result, client=c))
    return ops


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32), n=st.integers(1, 60), clients=st.integers(1, 6),
       unknown_rate=st.sampled_from([0.0, 0.05, 0.2, 0.5]))
def test_histories_of_a_real_register_are_always_accepted(seed, n, clients, unknown_rate):
    ops = generated_history(seed, n, clients, unknown_rate)
    res = check(ops)
    assert res.ok, str(res)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32), n=st.integers(2, 40), clients=st.integers(1, 5),
       data=st.data())
def test_a_read_of_a_value_never_written_is_always_rejected(seed, n, clients, data):
    ops = generated_history(seed, n, clients, 0.1)
    reads = [o for o in ops if o.kind == "read" and o.outcome != UNKNOWN]
    if not reads:
        return
    victim = data.draw(st.sampled_from(reads))
    victim.outcome, victim.result = OK, b"never-written"
    assert not check(ops).ok


def brute_force_linearizable(ops: list[Op], initial=None) -> bool:
    """Every subset of the unknown ops, every order that respects real time."""
    unknown = [o for o in ops if o.outcome == UNKNOWN]
    known = [o for o in ops if o.outcome not in (UNKNOWN, FAILED)]

    def ret(o):
        return float("inf") if o.outcome == UNKNOWN else o.complete

    def runs(order) -> bool:
        state = initial
        for o in order:
            k = o.kind
            if o.outcome == UNKNOWN:
                if k == "create" and state is None or k == "update" and state is not None:
                    state = o.value
                elif k == "delete":
                    state = None
                continue
            if k == "read":
                if (o.outcome == OK) != (state is not None) or \
                        (o.outcome == OK and state != o.result):
                    return False
            elif k == "create":
                if (o.outcome == OK) != (state is None):
                    return False
                if o.outcome == OK:
                    state = o.value
            else:
                if (o.outcome == OK) != (state is not None):
                    return False
                if o.outcome == OK:
                    state = o.value if k == "update" else None
        return True

    for r in range(len(unknown) + 1):
        for chosen in itertools.combinations(unknown, r):
            for order in itertools.permutations(known + list(chosen)):
                if all(not (ret(b) < a.invoke) for i, a in enumerate(order)
                       for b in order[i + 1:]) and runs(order):
                    return True
    return False


_OUTCOMES = {"read": [OK, NOT_FOUND, UNKNOWN], "create": [OK, ALREADY_EXISTS, UNKNOWN],
             "update": [OK, NOT_FOUND, UNKNOWN], "delete": [OK, NOT_FOUND, UNKNOWN]}


@st.composite
def small_histories(draw):
    """Arbitrary (mostly not linearizable) histories of a few ops on one key."""
    ops = []
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(sorted(_OUTCOMES)))
        outcome = draw(st.sampled_from(_OUTCOMES[kind]))
        start = draw(st.integers(0, 8))
        end = None if outcome == UNKNOWN else start + draw(st.integers(1, 5))
        value = draw(st.sampled_from([b"a", b"b", b"c"]))
        if kind == "read":
            ops.append(read(start, end, value if outcome == OK else None, outcome=outcome))
        else:
            ops.append(op(kind, start, end, outcome,
                          value=value if kind in ("create", "update") else None))
    initial = draw(st.sampled_from([None, b"a", b"z"]))
    return ops, initial


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small_histories())
def test_agrees_with_brute_force_on_small_histories(history):
    ops, initial = history
    expected = brute_force_linearizable(ops, initial)
    res = check(ops, {KEY: initial})
    assert res.ok == expected, f"brute force says {expected}:\n" + "\n".join(map(str, ops)) \
        + f"\ninitial {initial!r}\n{res}"


def test_checks_hundreds_of_concurrent_ops_per_key_quickly():
    ops = generated_history(seed=12345, n=400, clients=8, unknown_rate=0.05)
    res = check_key(ops)
    assert res.ok, str(res)
    assert res.ops > 300
