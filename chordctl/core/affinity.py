"""CPU pinning of a node process (Linux ``sched_setaffinity``).

A node is one Python process whose threads take turns on the GIL; its
pipeline hands every request from thread to thread (F1 -> F3 -> event loop).
When those threads may run on any CPU, each hand-off wakes the next thread on
whichever CPU is idle, and on a virtual machine waking an idle virtual CPU
costs tens of microseconds. Pinning the whole process to one CPU keeps the
hand-offs on that CPU's run queue (measured: 40 -> 11 us for F1, 50 -> 10 us
for the reply; see BENCHMARKS.md). ``cluster up`` pins each node to one CPU
of those it may use, round robin, the way ScyllaDB gives each shard a core
and Redis offers ``server_cpulist``.

A pinned node also runs its threads under ``SCHED_BATCH``: a thread woken
by another of the node's threads does not preempt it, it runs when that one
blocks. Only the thread holding the GIL can run Python anyway, and the
holder gives it up when it blocks, so preempting it only costs two context
switches (measured: 4-5% of a sequential request).

The log writer is the exception: it spends its time in fdatasync, outside
the GIL, and the disk's completion interrupt lands on whichever CPU the
device's queue is bound to. Pinned elsewhere, it waits for a wake-up of its
idle CPU after every fsync (measured: fdatasync 360 us on the pinned CPU,
210 us unpinned), so it runs on every CPU the process had before pinning.

CPU lists use the Linux cpulist syntax of ``taskset -c`` (chordctl/cpulist.py).
"""

from __future__ import annotations

import os

from chordctl.cpulist import format_cpulist

_before_pin: frozenset[int] | None = None   # the process's CPUs before pin_process


def available() -> list[int]:
    """The CPUs this process may run on, in order."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def round_robin(count: int, cpus: list[int] | None = None) -> list[frozenset[int]] | None:
    """One CPU per node, round robin over *cpus*; None when there is only one CPU."""
    cpus = available() if cpus is None else cpus
    if len(cpus) < 2:
        return None
    return [frozenset({cpus[i % len(cpus)]}) for i in range(count)]


def can_pin() -> bool:
    """Whether this system lets a process set its CPU affinity (some sandboxes refuse)."""
    try:
        os.sched_setaffinity(0, os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return False
    return True


def pin_process(cpus: frozenset[int]) -> None:
    """Pin every thread of this process to *cpus*, under SCHED_BATCH; OSError/ValueError.

    Call it before the process starts threads: threads created later inherit
    the calling thread's mask and policy. Threads that already exist are
    pinned too, by their ids from /proc/self/task.
    """
    if not hasattr(os, "sched_setaffinity"):
        raise OSError("CPU pinning needs Linux (os.sched_setaffinity)")
    allowed = set(available())
    missing = sorted(set(cpus) - allowed)
    if missing:
        raise ValueError(f"CPU {format_cpulist(missing)} is not available to this process "
                         f"(available: {format_cpulist(allowed)})")
    global _before_pin
    if _before_pin is None:
        _before_pin = frozenset(allowed)
    os.sched_setaffinity(0, cpus)
    _batch(0)
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        return
    for tid in tids:
        try:
            os.sched_setaffinity(tid, cpus)
        except OSError:   # a thread that ended meanwhile
            continue
        _batch(tid)


def unpin_this_thread() -> None:
    """Let the calling thread run on every CPU the process had before pin_process."""
    if _before_pin is not None:
        try:
            os.sched_setaffinity(0, _before_pin)
        except OSError:
            pass


def _batch(tid: int) -> None:
    """SCHED_BATCH for one thread, where the system allows it (any user may)."""
    try:
        os.sched_setscheduler(tid, os.SCHED_BATCH, os.sched_param(0))
    except (AttributeError, OSError):
        pass

