"""CPU pinning: the cpulist syntax, round robin, and a real pinned process."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chordctl import cpulist
from chordctl.core import affinity

pytestmark = pytest.mark.skipif(not hasattr(os, "sched_setaffinity"),
                                reason="CPU pinning needs Linux")


@pytest.mark.parametrize(("text", "cpus"), [
    ("0", {0}), ("3", {3}), ("0-3", {0, 1, 2, 3}), ("0,2", {0, 2}),
    ("0, 2-3 ,5", {0, 2, 3, 5}), ("1-1", {1}), ("7,7", {7}),
])
def test_parse_cpulist(text, cpus):
    assert cpulist.parse_cpulist(text) == frozenset(cpus)


@pytest.mark.parametrize(("text", "reason"), [
    ("", "empty"), ("  ", "empty"), ("a", "not a CPU number"), ("-1", "not a CPU number"),
    ("1-", "not a CPU number"), ("0,,1", "not a CPU number"), ("3-1", "backwards"),
    ("0-99999999", "too long"), ("1.5", "not a CPU number"),
])
def test_parse_cpulist_refuses_with_the_reason(text, reason):
    with pytest.raises(ValueError, match=reason):
        cpulist.parse_cpulist(text)


@given(st.sets(st.integers(min_value=0, max_value=300), min_size=1))
def test_format_then_parse_is_identity(cpus):
    text = cpulist.format_cpulist(cpus)
    assert cpulist.parse_cpulist(text) == frozenset(cpus)
    assert " " not in text


def test_format_uses_ranges():
    assert cpulist.format_cpulist({0, 1, 2, 3, 5, 7, 8}) == "0-3,5,7-8"


def test_round_robin_gives_each_node_one_cpu_in_turn():
    assert affinity.round_robin(5, [0, 1]) == [frozenset({0}), frozenset({1}), frozenset({0}),
                                               frozenset({1}), frozenset({0})]
    assert affinity.round_robin(2, [2, 5, 6]) == [frozenset({2}), frozenset({5})]
    assert affinity.round_robin(4, [0]) is None        # one CPU: nothing to pin


def _pinned_child(cpus: str) -> subprocess.CompletedProcess:
    """A child that starts threads, pins itself, starts more, reports every thread's mask."""
    code = f"""
import os, threading, time
from chordctl import cpulist
from chordctl.core import affinity
ev = threading.Event()
early = threading.Thread(target=ev.wait, daemon=True); early.start()
affinity.pin_process(cpulist.parse_cpulist({cpus!r}))
late = threading.Thread(target=ev.wait, daemon=True); late.start()
tids = [int(t) for t in os.listdir('/proc/self/task')]
masks = {{cpulist.format_cpulist(os.sched_getaffinity(t)) for t in tids}}
batch = all(os.sched_getscheduler(t) == os.SCHED_BATCH for t in tids)
freed = []
def writer():
    affinity.unpin_this_thread()
    freed.append(cpulist.format_cpulist(os.sched_getaffinity(0)))
w = threading.Thread(target=writer); w.start(); w.join()
ev.set()
print(sorted(masks), batch, freed[0])
"""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)


def test_pin_process_pins_threads_started_before_and_after():
    cpu = affinity.available()[-1]
    r = _pinned_child(str(cpu))
    assert r.returncode == 0, r.stderr
    # Pinned, SCHED_BATCH, and a thread that asks (the log writer) runs anywhere.
    assert r.stdout.strip() == (f"{[str(cpu)]} True "
                                f"{cpulist.format_cpulist(affinity.available())}")


def test_pin_process_refuses_a_cpu_it_may_not_use():
    missing = max(affinity.available()) + 1
    r = _pinned_child(str(missing))
    assert r.returncode != 0
    assert f"CPU {missing} is not available to this process" in r.stderr
