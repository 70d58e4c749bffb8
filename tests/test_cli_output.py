"""What the one-shot commands print: short table cells, -o json details."""

from __future__ import annotations

import json

from conftest import run_chordctl, write_config

WIDEST_ROW = 120      # a table row must fit a wide terminal


def test_snapshot_list_with_the_ring_down_keeps_rows_short(tmp_path):
    path = write_config(tmp_path, 3)          # never started
    p = run_chordctl("-c", path, "snapshot", "list")
    assert p.returncode == 3, p.stderr
    lines = p.stdout.decode().splitlines()
    assert len(lines) == 2 + 3, lines
    assert max(len(line) for line in lines) <= WIDEST_ROW, lines
    assert all(line.rstrip().endswith("down: unreachable") for line in lines[2:]), lines
    p = run_chordctl("-c", path, "-o", "json", "snapshot", "list")
    docs = json.loads(p.stdout)
    assert [d["state"] for d in docs] == ["down"] * 3
    assert all("cannot connect" in d["error"] and "is the ring up?" in d["error"] for d in docs)
