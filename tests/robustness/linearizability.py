"""Linearizability checker for per-key register histories (Wing & Gong, porcupine style).

Model, per key: the state is ABSENT or a value (bytes).

    create(v)  ok: ABSENT -> v        already-exists: present, unchanged
    update(v)  ok: present -> v       not-found: ABSENT, unchanged
    delete     ok: present -> ABSENT  not-found: ABSENT, unchanged
    read       ok -> v: state == v    not-found: state is ABSENT

A history is linearizable if each operation can be placed at one instant
between its invocation and its completion so that the sequence, run against
the model from the key's initial state, gives every recorded outcome. Keys are
independent (each operation touches one key), so each key is checked alone.

Operations with an *unknown* outcome may take effect at any instant after
their invocation, or never: their completion is taken as infinity and any
outcome is accepted. Unknown reads constrain nothing and are dropped; so are
*failed* operations (certainly no effect).

The search is depth-first over "which operation is linearized next", with a
memo of visited (linearized operations, state) pairs, as in porcupine. Only
operations that no pending operation's completion precedes are candidates
(real-time order). The search succeeds once every operation with a known
outcome is linearized (unknown ones left over go after everything, where no
outcome is checked). Reductions, each keeping the answer exact:

- A value no read ever returned is only "some value": all such values are one
  state, UNSEEN. An unknown update to UNSEEN can only hide a readable value,
  never explain anything, so it is dropped.
- An unknown operation is linearized only where it changes the state (where
  it changes nothing it can as well go last), and of several interchangeable
  ones (same kind and value, all already invoked) only the first is tried.
- Dominance: from the same known operations and state, having used fewer
  unknown operations leaves more choices, so a node whose used unknown
  operations are a superset of a visited node's is skipped.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections import defaultdict
from typing import Any, Iterable, Mapping

ABSENT = None
INF = float("inf")
DEFAULT_BUDGET = 500_000        # nodes visited per key before giving up

_REJECT = object()


class _Unseen:
    """The state "present, holding a value that no read returned"."""

    def __repr__(self) -> str:
        return "<a value no read returned>"


UNSEEN = _Unseen()


@dataclasses.dataclass
class KeyResult:
    key: Any
    ok: bool
    ops: int                          # operations the search had to place
    explored: int                     # search nodes visited
    exhausted: bool = False           # gave up on the budget: neither proven nor refuted
    order: list | None = None         # a linearization (op objects), when ok
    report: str = ""                  # why not, with a history excerpt

    def __str__(self) -> str:
        return self.report or f"key {self.key}: linearizable ({self.ops} ops)"


@dataclasses.dataclass
class CheckResult:
    ok: bool
    keys: dict                        # key -> KeyResult
    ops_checked: int                  # operations placed by the search, over all keys
    ops_total: int                    # every operation given, dropped ones included

    @property
    def failures(self) -> list[KeyResult]:
        return [r for r in self.keys.values() if not r.ok]

    def __str__(self) -> str:
        head = (f"{'linearizable' if self.ok else 'NOT linearizable'}: {self.ops_checked} "
                f"operations checked on {len(self.keys)} keys ({self.ops_total} recorded)")
        return "\n\n".join([head] + [r.report for r in self.failures])


def step(state: Any, kind: str, outcome: str, value: Any, result: Any) -> Any:
    """The state after the operation, or _REJECT if the model forbids its outcome."""
    if outcome == "unknown":
        if kind == "create":
            return value if state is ABSENT else state
        if kind == "update":
            return state if state is ABSENT else value
        if kind == "delete":
            return ABSENT
        return state
    if kind == "read":
        if outcome == "ok":
            return state if (state is not ABSENT and state == result) else _REJECT
        return state if (outcome == "not-found" and state is ABSENT) else _REJECT
    if kind == "create":
        if outcome == "ok":
            return value if state is ABSENT else _REJECT
        return state if (outcome == "already-exists" and state is not ABSENT) else _REJECT
    if outcome == "not-found":
        return state if state is ABSENT else _REJECT
    if outcome != "ok" or state is ABSENT:
        return _REJECT
    return value if kind == "update" else ABSENT


def check_key(ops: Iterable, initial: Any = ABSENT, key: Any = None,
              budget: int = DEFAULT_BUDGET) -> KeyResult:
    """Check one key's operations (objects with kind, value, invoke, complete, outcome, result)."""
    ops = list(ops)
    if key is None and ops:
        key = ops[0].key
    for o in ops:
        if o.outcome not in ("unknown", "failed") and (o.complete is None
                                                     or o.complete < o.invoke):
            raise ValueError(f"linearizability: {o} has no completion after its invocation")
    readable = {o.result for o in ops if o.kind == "read" and o.outcome == "ok"}

    def canon(v: Any) -> Any:
        return v if (v is ABSENT or v in readable) else UNSEEN

    def relevant(o) -> bool:
        if o.outcome == "failed":
            return False
        if o.outcome == "unknown":
            return o.kind == "delete" or (o.kind == "create") or \
                (o.kind == "update" and o.value in readable)
        return True

    entries = sorted((o for o in ops if relevant(o)), key=lambda o: (o.invoke, o.id))
    n = len(entries)
    initial = canon(initial)
    calls = [o.invoke for o in entries]
    unknown = [o.outcome == "unknown" for o in entries]
    rets = [INF if unknown[i] else entries[i].complete for i in range(n)]
    args = [(o.kind, o.outcome, canon(o.value), o.result) for o in entries]
    known_all = 0
    for i in range(n):
        if not unknown[i]:
            known_all |= 1 << i
    unknown_all = ((1 << n) - 1) ^ known_all
    # by_return[ptr]: the earliest-completing known op not yet linearized (-1: none).
    by_return = sorted((i for i in range(n) if not unknown[i]), key=lambda i: rets[i])
    total_known = len(by_return)
    by_return.append(-1)
    rets.append(INF)
    bit = [1 << i for i in range(n)]

    root = (0, initial)
    seen: dict = {root: [0]}          # (known part, state) -> used-unknown sets visited
    parent: dict = {root: None}
    explored = 1
    stack = [(0, initial, 0)]
    best = (0, root)                  # most known ops linearized, and where
    while stack:
        mask, state, ptr = stack.pop()
        node = (mask, state)
        while by_return[ptr] >= 0 and mask & bit[by_return[ptr]]:
            ptr += 1
        if by_return[ptr] < 0:
            return KeyResult(key, True, n, explored, order=_order(parent, node, entries))
        done = (mask & known_all).bit_count()
        if done > best[0]:
            best = (done, node)
        # Real time: the earliest completion among unlinearized known ops
        # bounds which invocations may go next.
        hi = bisect.bisect_right(calls, rets[by_return[ptr]])
        free = ~mask & ((1 << hi) - 1)
        known_children = []
        unknown_children = []
        tried = set()
        while free:
            low = free & -free
            free ^= low
            i = low.bit_length() - 1
            a = args[i]
            if unknown[i]:
                if a[:3] in tried:
                    continue
                tried.add(a[:3])
            new = step(state, *a)
            if new is _REJECT or (unknown[i] and new == state):
                continue
            child_mask = mask | low
            memo_key = (child_mask & known_all, new)
            used = child_mask & unknown_all
            prior = seen.get(memo_key)
            if prior is None:
                seen[memo_key] = [used]
            elif any(u & ~used == 0 for u in prior):
                continue
            else:
                prior.append(used)
            explored += 1
            parent[(child_mask, new)] = (node, i)
            (unknown_children if unknown[i] else known_children).append((child_mask, new, ptr))
        if explored > budget:
            return KeyResult(key, False, n, explored, exhausted=True,
                             report=f"key {key}: checker gave up after {explored} search "
                                    f"nodes ({n} ops); neither proven nor refuted\n"
                                    + _excerpt(entries, best, rets, total_known, parent))
        # Pushed last = explored first: operations with a known outcome, in
        # invocation order, before unknown ones.
        stack.extend(reversed(unknown_children))
        stack.extend(reversed(known_children))
    return KeyResult(key, False, n, explored,
                     report=f"key {key}: NOT linearizable (initial state "
                            f"{_show(initial)}, {n} ops)\n"
                            + _excerpt(entries, best, rets, total_known, parent))


def _bits(mask: int):
    while mask:
        low = mask & -mask
        mask ^= low
        yield low.bit_length() - 1


def _order(parent: dict, node, entries: list) -> list:
    out = []
    while parent[node] is not None:
        node, i = parent[node]
        out.append(entries[i])
    out.reverse()
    return out


def _show(state: Any) -> str:
    return "absent" if state is ABSENT else repr(state)


def _excerpt(entries, best, rets, total_known, parent) -> str:
    """Where the search got furthest: the state, what could not go next, the ops around it."""
    done, (mask, state) = best
    prefix = _order(parent, (mask, state), entries)
    pending = [i for i in range(len(entries)) if not mask >> i & 1]
    min_ret = min((rets[i] for i in pending), default=INF)
    stuck = [i for i in pending if entries[i].invoke <= min_ret]
    t0 = entries[0].invoke if entries else 0
    lines = [f"  furthest point: {done} of {total_known} ops with a known outcome "
             f"linearized, state {_show(state)}"]
    if prefix:
        lines.append("  last ops linearized there (in that order):")
        lines += [f"    {_line(o, t0)}" for o in prefix[-5:]]
    lines.append("  none of these can be linearized next:")
    lines += [f"    {_line(entries[i], t0)}" for i in stuck[:12]]
    if stuck:
        lo = min(entries[i].invoke for i in stuck)
        hi = max([entries[i].complete or lo for i in stuck if rets[i] != INF] + [lo])
        around = [o for o in entries if o.invoke <= hi and (o.complete or INF) >= lo - 5 * 10**8]
        lines.append("  history around it (times in ms from this key's first op):")
        lines += [f"    {_line(o, t0)}" for o in around[-30:]]
    return "\n".join(lines)


def _line(o, t0: int) -> str:
    end = "?" if o.outcome == "unknown" or o.complete is None \
        else f"{(o.complete - t0) / 1e6:9.1f}"
    return f"[{(o.invoke - t0) / 1e6:9.1f} .. {end:>9}] {o}" + \
        (f"  ({o.detail[:80]})" if getattr(o, "detail", "") and o.outcome == "unknown" else "")


def check(ops: Iterable, initial: Mapping | None = None,
          budget: int = DEFAULT_BUDGET) -> CheckResult:
    """Check a whole history, key by key; *initial* maps keys to their starting value."""
    initial = initial or {}
    groups: dict = defaultdict(list)
    total = 0
    for o in ops:
        groups[o.key].append(o)
        total += 1
    results = {k: check_key(g, initial.get(k, ABSENT), k, budget) for k, g in groups.items()}
    return CheckResult(all(r.ok for r in results.values()), results,
                       sum(r.ops for r in results.values()), total)
