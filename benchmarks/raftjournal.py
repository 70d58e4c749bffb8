"""The Raft journal's costs (issue 14): add alone, add+sync, batched rounds.

    python benchmarks/raftjournal.py [--dir DIR] [--seconds S]

Runs in a temporary directory under --dir (default: the system's temp dir;
point it at the disk the nodes use). Prints one markdown table:

- ``add`` alone: the cost of GroupJournal.add (encode + CRC, no syscall),
  per call, for each command size;
- ``add+sync``: one add then one sync (one write, one fdatasync), the
  latency floor of one entry made durable;
- ``round of 64``: 64 adds spread over 4 groups, one sync: what one tick
  round of a busy node pays, as entries per second.

MemoryJournal.add is given for scale.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pysyncobj.journal import MemoryJournal  # noqa: E402

from chordctl.core.storage.raftjournal import RaftJournal  # noqa: E402

SIZES = (100, 64 * 1024)


def timed(fn, seconds: float) -> tuple[int, float]:
    n = 0
    t0 = time.perf_counter()
    end = t0 + seconds
    while True:
        n += fn()
        t = time.perf_counter()
        if t >= end:
            return n, t - t0


def bench(directory: str, size: int, seconds: float) -> dict[str, float]:
    command = os.urandom(size)
    out = {}
    with tempfile.TemporaryDirectory(dir=directory) as d:
        j = RaftJournal(d, rewrite_threshold=64 * 1024 * 1024)
        g = j.group(0)
        idx = [0]

        def adds():          # 1000 adds, then drop them so memory stays flat
            add = g.add
            i = idx[0]
            for k in range(i + 1, i + 1001):
                add(command, k, 1)
            idx[0] = i + 1000
            g.clear()
            j._parts.clear()          # never written: this measures add alone
            return 1000

        n, t = timed(adds, seconds)
        out["add"] = t / n * 1e6
        m = MemoryJournal()

        def madds():
            add = m.add
            for k in range(1000):
                add(command, k, 1)
            m.clear()
            return 1000

        n, t = timed(madds, seconds)
        out["memory"] = t / n * 1e6

        def add_sync():
            idx[0] += 1
            g.add(command, idx[0], 1)
            j.sync()
            if len(g) > 1000:
                g.deleteEntriesTo(len(g) - 100)
            return 1

        n, t = timed(add_sync, seconds)
        out["add+sync"] = n / t
        groups = [j.group(k) for k in range(4)]

        def round64():
            for k in range(64):
                idx[0] += 1
                groups[k % 4].add(command, idx[0], 1)
            j.sync()
            for grp in groups:
                if len(grp) > 2000:
                    grp.deleteEntriesTo(len(grp) - 100)
            return 64

        n, t = timed(round64, seconds)
        out["round"] = n / t
        out["rewrites"] = j.rewrites
        j.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default=tempfile.gettempdir())
    ap.add_argument("--seconds", type=float, default=2.0)
    args = ap.parse_args()
    print("| command | add alone (µs) | MemoryJournal.add (µs) | add+sync (/s) "
          "| round of 64 adds + 1 sync (entries/s) | rewrites |")
    print("|---|---|---|---|---|---|")
    for size in SIZES:
        r = bench(args.dir, size, args.seconds)
        label = f"{size} B" if size < 1024 else f"{size // 1024} KiB"
        print(f"| {label} | {r['add']:.2f} | {r['memory']:.2f} | {r['add+sync']:,.0f} "
              f"| {r['round']:,.0f} | {r['rewrites']} |")


if __name__ == "__main__":
    main()
